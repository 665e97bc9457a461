// Package coordinator is the leader-elected placement service. It is
// written like etcd's raft library: Core is a pure state machine (no etcd,
// no clock, no goroutines) that turns events into actions, and Coordinator
// is the thin runner that campaigns for leadership, feeds Core what etcd
// shows, and carries out its actions with fenced writes.
//
//	events  -> Core.Step -> actions
//	LeadershipChanged, WorkersChanged,        WritePlacement (fenced, revision-checked)
//	ModelsChanged, PlacementObserved,         Report (placement impossible, e.g. memory)
//	WriteDone, WriteFailed
//
// Only the leader acts. A placement is recomputed (pkg/placement, with the
// stored placement as the previous one) whenever the workers, the models or
// the stored placement change; it is written only when the table differs,
// so a quiet cluster writes nothing and its epoch stays put.
package coordinator

import (
	"fmt"
	"sort"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Event is an input to Core.Step.
type Event interface{ isEvent() }

// LeadershipChanged: this coordinator won (true) or lost (false) the election.
type LeadershipChanged struct{ Leader bool }

// WorkersChanged: the registered workers are now Workers (all models).
type WorkersChanged struct {
	Workers []cluster.WorkerInfo
	Rev     int64
}

// ModelsChanged: the cluster's model records are now Models.
type ModelsChanged struct{ Models []registry.ModelRecord }

// PlacementObserved: etcd holds Placement (nil: none) for Model at
// ModRevision Rev.
type PlacementObserved struct {
	Model     string
	Placement *cluster.Placement
	Rev       int64
}

// WriteDone: a WritePlacement action succeeded at ModRevision Rev.
type WriteDone struct {
	Placement cluster.Placement
	Rev       int64
}

// WriteFailed: a WritePlacement action for Model did not land (conflict or
// transient error); Core waits for the next observation before retrying.
type WriteFailed struct {
	Model string
	Err   error
}

func (LeadershipChanged) isEvent() {}
func (WorkersChanged) isEvent()    {}
func (ModelsChanged) isEvent()     {}
func (PlacementObserved) isEvent() {}
func (WriteDone) isEvent()         {}
func (WriteFailed) isEvent()       {}

// Action is an output of Core.Step for the runner to carry out.
type Action interface{ isAction() }

// WritePlacement: store Placement if the placement key's ModRevision is
// still ExpectRev (and this coordinator still leads); feed back WriteDone
// or WriteFailed.
type WritePlacement struct {
	Placement cluster.Placement
	ExpectRev int64
	Change    placement.Change // copies added/dropped against the stored placement
}

// Report: Model cannot be placed (Err says why, e.g. wrapping
// placement.ErrInsufficientMemory). Reported once per distinct error.
type Report struct {
	Model string
	Err   error
}

func (WritePlacement) isAction() {}
func (Report) isAction()         {}

// CoreConfig holds the placement policy.
type CoreConfig struct {
	// Replicas is R, the copies of each expert on distinct workers; 0 means 1.
	Replicas int
}

// Core decides placements. It is not safe for concurrent use: one runner
// goroutine owns it.
type Core struct {
	cfg          CoreConfig
	leader       bool
	workers      []cluster.WorkerInfo
	workersKnown bool
	models       map[string]*modelState
}

type modelState struct {
	rec       registry.ModelRecord
	placement *cluster.Placement // as stored in etcd (nil: none)
	rev       int64              // its ModRevision (0: absent)
	observed  bool               // placement/rev reflect a read of etcd
	pending   bool               // a write is in flight
	lastErr   string             // last Report, to report each error once
}

// NewCore returns a follower Core with no knowledge of the cluster.
func NewCore(cfg CoreConfig) *Core {
	return &Core{cfg: cfg, models: map[string]*modelState{}}
}

// Leader reports whether Core believes it leads.
func (c *Core) Leader() bool { return c.leader }

// Placement returns the stored placement of model as Core last saw it.
func (c *Core) Placement(model string) (*cluster.Placement, int64) {
	if st := c.models[model]; st != nil {
		return st.placement, st.rev
	}
	return nil, 0
}

// Step applies one event and returns the actions it calls for.
func (c *Core) Step(ev Event) []Action {
	switch ev := ev.(type) {
	case LeadershipChanged:
		// A term starts from fresh reads of etcd: what a follower (or a
		// previous term) saw may be stale, and a write based on it would be
		// refused by the revision fence anyway.
		c.leader = ev.Leader
		c.workersKnown = false
		for _, st := range c.models {
			st.pending = false
			st.observed = false
			st.lastErr = ""
		}
	case WorkersChanged:
		c.workers = append([]cluster.WorkerInfo(nil), ev.Workers...)
		c.workersKnown = true
	case ModelsChanged:
		seen := map[string]bool{}
		for _, rec := range ev.Models {
			seen[rec.Fingerprint] = true
			if st := c.models[rec.Fingerprint]; st != nil {
				st.rec = rec
			} else {
				c.models[rec.Fingerprint] = &modelState{rec: rec}
			}
		}
		for fp := range c.models {
			if !seen[fp] {
				delete(c.models, fp)
			}
		}
	case PlacementObserved:
		st := c.models[ev.Model]
		if st == nil {
			return nil
		}
		// Watches deliver in revision order, but a write's own result may
		// arrive (WriteDone) before the watch shows it: never go back.
		if !st.observed || ev.Rev >= st.rev || ev.Placement == nil {
			st.placement, st.rev = ev.Placement, ev.Rev
		}
		st.observed = true
	case WriteDone:
		st := c.models[ev.Placement.Model]
		if st == nil {
			return nil
		}
		st.pending = false
		if ev.Rev >= st.rev {
			p := ev.Placement
			st.placement, st.rev = &p, ev.Rev
		}
	case WriteFailed:
		st := c.models[ev.Model]
		if st == nil {
			return nil
		}
		st.pending = false
		// Wait for a fresh observation (the watch shows the winner's write,
		// or the runner re-reads) instead of retrying on stale knowledge.
		st.observed = false
		return nil
	default:
		panic(fmt.Sprintf("coordinator: unknown event %T", ev))
	}
	return c.decide()
}

// decide computes each model's placement and writes those that changed.
func (c *Core) decide() []Action {
	if !c.leader || !c.workersKnown {
		return nil
	}
	fps := make([]string, 0, len(c.models))
	for fp := range c.models {
		fps = append(fps, fp)
	}
	sort.Strings(fps)
	var acts []Action
	for _, fp := range fps {
		st := c.models[fp]
		if !st.observed || st.pending {
			continue
		}
		var ws []cluster.WorkerInfo
		for _, w := range c.workers {
			if w.Model == fp {
				ws = append(ws, w)
			}
		}
		if len(ws) == 0 {
			// Keep the last placement: with no worker left there is nothing
			// better to say, and the first worker back takes it over.
			continue
		}
		next, err := placement.Place(placement.Input{
			Model:      fp,
			Layers:     st.rec.Layers,
			Experts:    st.rec.PlacementExperts(),
			DenseBytes: st.rec.DenseBytes,
			Workers:    ws,
			Replicas:   c.cfg.Replicas,
			Prev:       st.placement,
		})
		if err != nil {
			if msg := err.Error(); msg != st.lastErr {
				st.lastErr = msg
				acts = append(acts, Report{Model: fp, Err: err})
			}
			continue
		}
		st.lastErr = ""
		if st.placement != nil && next.Epoch == st.placement.Epoch {
			continue // nothing changed
		}
		st.pending = true
		acts = append(acts, WritePlacement{Placement: next, ExpectRev: st.rev, Change: placement.Diff(st.placement, &next)})
	}
	return acts
}
