// Package coordinator is the leader-elected placement service. It is
// written like etcd's raft library: Core is a pure state machine (no etcd,
// no clock, no goroutines) that turns events into actions, and Coordinator
// is the thin runner that campaigns for leadership, feeds Core what etcd
// shows, and carries out its actions with fenced writes.
//
//	events  -> Core.Step -> actions
//	LeadershipChanged, WorkersChanged,        WritePlacement (fenced, revision-checked)
//	ModelsChanged, PlacementObserved,         Report (the verdict changed: publish
//	WriteDone, WriteFailed, GraceExpired,       it as registry.PlacementStatus)
//	StatsChanged, MigrationTimedOut,
//	ReportFailed
//
// Only the leader acts. A placement is recomputed (pkg/placement, with the
// stored placement as the previous one) whenever the workers, the models or
// the stored placement change; it is written only when the table differs,
// so a quiet cluster writes nothing and its epoch stays put.
//
// Start-up grace: a model with no stored placement yet is first placed
// once CoreConfig.ExpectWorkers of its workers are registered or the runner
// says the grace period is over (GraceExpired), so the first worker to
// register is not handed every expert. Once a placement exists, changes are
// written at once.
//
// Make-before-break (CoreConfig.MakeBeforeBreak): when a new placement
// gives a live worker copies it must load, Core first writes a
// transitional placement: the new table plus the old copies of the moving
// experts on live workers, listed after the new owners and only where the
// old owner's memory budget allows. Once every loading worker reports that
// epoch applied (StatsChanged), or the runner's wait runs out
// (MigrationTimedOut), or the worker left, the final table is written with
// the next epoch and the old copies go. A dead worker's copies are never
// kept. See migrate.go.
//
// Verdicts: after each decision Core reports (Report) whether the stored
// placement is what it wants, or why the model cannot be placed, with the
// experts whose every stored owner has left; only changes are reported.
package coordinator

import (
	"errors"
	"fmt"
	"sort"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
)

// ErrAwaitingWorkers is the verdict (wrapped, with the counts) on a model
// not placed yet while Core waits for CoreConfig.ExpectWorkers.
var ErrAwaitingWorkers = errors.New("waiting for the expected workers (or the end of the start-up grace) before the first placement")

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

// GraceExpired: the start-up grace of this term is over; models not placed
// yet are placed on the workers there are.
type GraceExpired struct{}

// StatsChanged: the workers' reported counters are now Stats (all
// workers); Core reads from them the placement epoch each has applied.
type StatsChanged struct{ Stats []registry.WorkerStats }

// MigrationTimedOut: the runner's wait for the workers loading the copies
// of transitional placement Epoch of Model is over; the final placement is
// written whether they loaded or not.
type MigrationTimedOut struct {
	Model string
	Epoch cluster.Epoch
}

// ReportFailed: the status of a Report for Model was not stored; Core
// reports again at its next decision.
type ReportFailed struct{ Model string }

func (LeadershipChanged) isEvent() {}
func (WorkersChanged) isEvent()    {}
func (ModelsChanged) isEvent()     {}
func (PlacementObserved) isEvent() {}
func (WriteDone) isEvent()         {}
func (WriteFailed) isEvent()       {}
func (GraceExpired) isEvent()      {}
func (StatsChanged) isEvent()      {}
func (MigrationTimedOut) isEvent() {}
func (ReportFailed) isEvent()      {}

// Action is an output of Core.Step for the runner to carry out.
type Action interface{ isAction() }

// WritePlacement: store Placement if the placement key's ModRevision is
// still ExpectRev (and this coordinator still leads); feed back WriteDone
// or WriteFailed.
type WritePlacement struct {
	Placement cluster.Placement
	ExpectRev int64
	Change    placement.Change // copies added/dropped against the stored placement
	// Await, when not empty, marks Placement as transitional: these workers
	// must load copies before the old ones are dropped. After a successful
	// write the runner starts its migration wait and then feeds back
	// MigrationTimedOut{Model, Placement.Epoch}.
	Await []cluster.WorkerID
}

// Report: the leader's verdict on Model changed; the runner stamps
// Status.Time, stores Status (feeding back ReportFailed if that fails) and
// logs it. Err is why the model cannot be placed (nil when Status.OK),
// e.g. wrapping placement.ErrInsufficientMemory (a *placement.MemoryError)
// or placement.ErrNoWorkers. Only changes are reported: each distinct error
// once, and OK once per stored epoch.
type Report struct {
	Model  string
	Err    error
	Status registry.PlacementStatus
}

func (WritePlacement) isAction() {}
func (Report) isAction()         {}

// CoreConfig holds the placement policy.
type CoreConfig struct {
	// Replicas is R, the copies of each expert on distinct workers; 0 means 1.
	Replicas int
	// ExpectWorkers: a model with no stored placement is first placed once
	// at least this many of its workers are registered, or after
	// GraceExpired. 0 places at once, on the first worker.
	ExpectWorkers int
	// MakeBeforeBreak writes a transitional placement (new owners plus the
	// old copies on live workers) before dropping moved copies; false
	// drops them in the same write that adds the new ones.
	MakeBeforeBreak bool
}

// Core decides placements. It is not safe for concurrent use: one runner
// goroutine owns it.
type Core struct {
	cfg          CoreConfig
	leader       bool
	workers      []cluster.WorkerInfo
	workersKnown bool
	graceOver    bool                              // this term's start-up grace has passed
	applied      map[cluster.WorkerID]appliedEpoch // from the workers' stats
	models       map[string]*modelState
}

// appliedEpoch is the placement epoch a worker reports having applied.
type appliedEpoch struct {
	model string
	epoch cluster.Epoch
}

type modelState struct {
	rec       registry.ModelRecord
	placement *cluster.Placement        // as stored in etcd (nil: none)
	rev       int64                     // its ModRevision (0: absent)
	observed  bool                      // placement/rev reflect a read of etcd
	pending   bool                      // a write is in flight
	status    *registry.PlacementStatus // last verdict reported this term
	mig       *migration                // the stored placement is transitional (nil: final)
	nextMig   *migration                // mig of the write in flight
}

// NewCore returns a follower Core with no knowledge of the cluster.
func NewCore(cfg CoreConfig) *Core {
	return &Core{cfg: cfg, models: map[string]*modelState{}, applied: map[cluster.WorkerID]appliedEpoch{}}
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
		c.graceOver = false
		for _, st := range c.models {
			st.pending = false
			st.observed = false
			st.status = nil
			st.mig, st.nextMig = nil, nil
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
		st.mig, st.nextMig = st.nextMig, nil
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
		st.nextMig = nil
		// Wait for a fresh observation (the watch shows the winner's write,
		// or the runner re-reads) instead of retrying on stale knowledge.
		st.observed = false
		return nil
	case GraceExpired:
		c.graceOver = true
	case StatsChanged:
		clear(c.applied)
		for _, s := range ev.Stats {
			c.applied[s.Worker] = appliedEpoch{model: s.Model, epoch: s.Epoch}
		}
		migrating := false
		for _, st := range c.models {
			migrating = migrating || st.mig != nil
		}
		if !migrating {
			return nil // only a migration waits on applied epochs
		}
	case MigrationTimedOut:
		st := c.models[ev.Model]
		if st == nil || st.mig == nil || st.mig.epoch != ev.Epoch {
			return nil // finished or superseded meanwhile
		}
		st.mig.timedOut = true
	case ReportFailed:
		if st := c.models[ev.Model]; st != nil {
			st.status = nil
		}
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
		live := map[cluster.WorkerID]bool{}
		for _, w := range c.workers {
			if w.Model == fp {
				ws = append(ws, w)
				live[w.ID] = true
			}
		}
		if len(ws) == 0 {
			// Keep the last placement: with no worker left there is nothing
			// better to say, and the first worker back takes it over.
			acts = c.report(acts, fp, st, live, placement.ErrNoWorkers)
			continue
		}
		if st.placement == nil && len(ws) < c.cfg.ExpectWorkers && !c.graceOver {
			// Start-up grace: wait for more workers before the first placement.
			acts = c.report(acts, fp, st, live, fmt.Errorf("%w: %d of %d registered", ErrAwaitingWorkers, len(ws), c.cfg.ExpectWorkers))
			continue
		}
		in := placement.Input{
			Model:    fp,
			Layers:   st.rec.Layers,
			Experts:  st.rec.PlacementExperts(),
			Workers:  ws,
			Replicas: c.cfg.Replicas,
			Prev:     st.placement,
		}
		next, err := placement.Place(in)
		if err != nil {
			// The stored placement stays: survivors are never loaded beyond
			// their budgets; the verdict names the experts lost meanwhile.
			acts = c.report(acts, fp, st, live, err)
			continue
		}
		want, mig := next, (*migration)(nil)
		if c.cfg.MakeBeforeBreak {
			want, mig = c.transition(fp, st, &next, in, live)
		}
		if st.placement != nil && placement.Equal(st.placement, &want) {
			if st.mig != nil && mig == nil {
				st.mig = nil // the stored placement is final
			} else if st.mig != nil {
				st.mig.loading = mig.loading // still waiting for these loads
			}
			acts = c.report(acts, fp, st, live, nil)
			continue // nothing to write
		}
		want.Epoch = 1
		if st.placement != nil {
			want.Epoch = st.placement.Epoch + 1
		}
		st.pending = true
		w := WritePlacement{Placement: want, ExpectRev: st.rev, Change: placement.Diff(st.placement, &want)}
		if mig != nil {
			mig.epoch = want.Epoch
			w.Await = mig.workers()
		}
		st.nextMig = mig
		acts = append(acts, w)
	}
	return acts
}

// report appends a Report when the verdict on fp differs from the last
// one reported (err nil: the stored placement is what Core wants).
func (c *Core) report(acts []Action, fp string, st *modelState, live map[cluster.WorkerID]bool, err error) []Action {
	s := registry.PlacementStatus{Model: fp, OK: err == nil}
	if st.placement != nil {
		s.Epoch = st.placement.Epoch
		s.Unplaced = st.placement.Unowned(func(w cluster.WorkerID) bool { return live[w] })
	}
	if err != nil {
		s.Error = err.Error()
		s.Awaiting = errors.Is(err, ErrAwaitingWorkers)
		var me *placement.MemoryError
		if errors.As(err, &me) {
			s.NeedBytes, s.HaveBytes = me.Need, me.Have
		}
	}
	if st.status != nil && st.status.SameVerdict(s) {
		return acts
	}
	st.status = &s
	return append(acts, Report{Model: fp, Err: err, Status: s})
}

// Migration returns, while model's stored placement is transitional, its
// epoch and the workers whose loads it still waits for (sorted).
func (c *Core) Migration(model string) (cluster.Epoch, []cluster.WorkerID) {
	st := c.models[model]
	if st == nil || st.mig == nil {
		return 0, nil
	}
	return st.mig.epoch, st.mig.workers()
}
