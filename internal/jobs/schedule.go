package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Worker is a live worker as the scheduler sees it.
type Worker struct {
	ID    cluster.WorkerID
	Lease int64 // the etcd lease of its registration (0: not known)
	// Dying: its lease has gone unrefreshed for longer than its keep-alive
	// period (the process is most likely dead; etcd will drop it within
	// the lease's TTL). It is given no new ranks.
	Dying bool
}

// Decide is DecideWorkers for workers known only by ID.
func Decide(jobs []*Spec, live []cluster.WorkerID) []*Spec {
	ws := make([]Worker, len(live))
	for i, id := range live {
		ws[i] = Worker{ID: id}
	}
	return DecideWorkers(jobs, ws)
}

// DecideWorkers is the scheduler's pure core: given every job and the live
// workers, it returns the jobs to rewrite (modified copies):
//   - a Submitted job gets its ranks from the idle live workers (sorted by
//     ID) that are not Dying and not a Suspect of its last failure under
//     the same lease: all of them up to Workers, once at least Min() are
//     (a fixed-size job: exactly Workers); a new attempt number, and state
//     Assigned;
//   - an Assigned or Running job whose ranks include a worker that left the
//     cluster fails ("worker X left"), X its suspect;
//   - a Running elastic job (MinWorkers set) with fewer than Workers ranks
//     is asked to Grow when an eligible idle worker is left over;
//   - a Failed job is resubmitted, resuming from its last checkpoint, with
//     its suspects' current leases recorded, until MaxAttempts; then, or at
//     once when the failure is Permanent, it is Abandoned;
//   - a job not yet ended whose ID, worker count, attempts, state or ranks
//     are out of range (a spec written into etcd by hand) is Abandoned,
//     the problems in its Error.
func DecideWorkers(jobs []*Spec, live []Worker) []*Spec {
	lease := map[cluster.WorkerID]int64{}
	for _, w := range live {
		lease[w.ID] = w.Lease
	}
	busy := map[cluster.WorkerID]bool{}
	for _, j := range jobs {
		if j.State == Assigned || j.State == Running {
			for _, w := range j.Assigned {
				busy[w] = true
			}
		}
	}
	var out []*Spec
	for _, j := range jobs {
		if !j.State.Terminal() {
			if err := errors.Join(j.validateScheduling()...); err != nil {
				c := *j
				c.State = Abandoned
				c.Error = fmt.Sprintf("invalid job spec: %v", strings.ReplaceAll(err.Error(), "\n", "; "))
				out = append(out, &c)
				continue
			}
		}
		switch j.State {
		case Assigned, Running:
			var lost []string
			var suspects []Suspect
			for _, w := range j.Assigned {
				if _, ok := lease[w]; !ok {
					lost = append(lost, string(w))
					suspects = append(suspects, Suspect{Worker: w})
				}
			}
			if len(lost) > 0 {
				c := *j
				c.State = Failed
				c.Error = fmt.Sprintf("attempt %d: worker %s left the cluster", j.Attempt, strings.Join(lost, ", "))
				c.Suspects, c.Permanent = suspects, false
				out = append(out, &c)
			}
		case Failed:
			c := *j
			c.History = append(slices.Clone(j.History), j.Error)
			switch {
			case j.Permanent:
				c.State = Abandoned
				c.Error = fmt.Sprintf("not retried (retrying cannot fix it): %s", j.Error)
			case j.Attempt >= j.MaxAttempts:
				c.State = Abandoned
				c.Error = fmt.Sprintf("gave up after %d attempts; last: %s", j.Attempt, j.Error)
			default:
				c.State = Submitted
				c.Job.Resume = true
				// Pin each suspect to the lease it holds now: a dead worker
				// keeps its lease until the TTL runs out, and must not be
				// chosen meanwhile; once it re-registers it is eligible.
				c.Suspects = nil
				for _, sw := range j.Suspects {
					if l, ok := lease[sw.Worker]; ok {
						if sw.Lease == 0 {
							sw.Lease = l
						}
						if sw.Since.IsZero() {
							sw.Since = time.Now()
						}
						c.Suspects = append(c.Suspects, sw)
					}
				}
			}
			out = append(out, &c)
		}
	}
	// Assign submitted jobs, oldest first, to idle eligible workers.
	idle := map[cluster.WorkerID]bool{}
	var order []Worker
	for _, w := range live {
		if !busy[w.ID] && !w.Dying {
			idle[w.ID] = true
			order = append(order, w)
		}
	}
	slices.SortFunc(order, func(a, b Worker) int { return strings.Compare(string(a.ID), string(b.ID)) })
	for _, j := range jobs {
		for _, o := range out { // use this round's version (a failed job just resubmitted)
			if o.ID == j.ID {
				j = o
			}
		}
		if j.State != Submitted {
			continue
		}
		var pick []cluster.WorkerID
		for _, w := range order {
			if len(pick) == j.Workers {
				break
			}
			if idle[w.ID] && !suspected(j, w) {
				pick = append(pick, w.ID)
			}
		}
		if len(pick) < j.Min() {
			continue
		}
		for _, w := range pick {
			delete(idle, w)
		}
		c := *j
		c.Assigned = pick
		c.Attempt++
		c.State, c.Error, c.Permanent, c.Grow = Assigned, "", false, false
		out = replace(out, &c)
	}
	// Grow running elastic jobs onto idle eligible workers left over (the
	// submitted jobs came first): their ranks stop at the next step,
	// checkpoint and come back as a bigger attempt.
	for _, j := range jobs {
		if j.State != Running || j.MinWorkers == 0 || len(j.Assigned) >= j.Workers || j.Grow {
			continue
		}
		if slices.ContainsFunc(out, func(o *Spec) bool { return o.ID == j.ID }) {
			continue
		}
		for _, w := range order {
			if idle[w.ID] && !suspected(j, w) {
				c := *j
				c.Grow = true
				out = append(out, &c)
				break
			}
		}
	}
	return out
}

// suspected reports whether w is blamed for j's last failure under the
// lease it holds now (a suspect whose lease is not known yet counts), for
// at most SuspectFor after the blame was pinned: by then a dead worker's
// lease has lapsed, so a suspect still holding it is alive.
func suspected(j *Spec, w Worker) bool {
	for _, s := range j.Suspects {
		if s.Worker == w.ID && (s.Lease == 0 || w.Lease == 0 || s.Lease == w.Lease) &&
			(s.Since.IsZero() || time.Since(s.Since) < SuspectFor) {
			return true
		}
	}
	return false
}

func replace(list []*Spec, s *Spec) []*Spec {
	for i, o := range list {
		if o.ID == s.ID {
			list[i] = s
			return list
		}
	}
	return append(list, s)
}

// Scheduler applies DecideWorkers whenever jobs or workers change, and
// every Tick (a dying worker's lease only shows in time). Several may run
// (one per coordinator): every write is a compare-and-swap.
type Scheduler struct {
	Jobs     *Store
	Registry *registry.Registry
	Log      *slog.Logger
	// Tick is how often jobs are re-judged without a change (default 1 s).
	Tick time.Duration
}

// Run schedules until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	lg := s.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	tick := s.Tick
	if tick <= 0 {
		tick = time.Second
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	jobsCh := s.Jobs.Watch(ctx)
	workersCh := s.Registry.WatchWorkers(ctx)
	var set registry.WorkerSet
	haveWorkers := false // never judge jobs before the first worker list
	for {
		select {
		case <-ctx.Done():
			return nil
		case ws, ok := <-workersCh:
			if !ok {
				return nil
			}
			set, haveWorkers = ws, true
		case _, ok := <-jobsCh:
			if !ok {
				return nil
			}
		case <-t.C:
		}
		if !haveWorkers {
			continue
		}
		list, revs, _, err := s.Jobs.List(ctx)
		if err != nil {
			continue
		}
		pending := false
		for _, j := range list {
			pending = pending || !j.State.Terminal()
		}
		if !pending {
			continue
		}
		for _, c := range DecideWorkers(list, s.workers(ctx, set)) {
			if _, err := s.Jobs.Update(ctx, c, revs[c.ID]); err != nil && !errors.Is(err, ErrConflict) {
				lg.Warn("job update failed", "job", c.ID, "err", err)
				continue
			}
			lg.Info("job", "id", c.ID, "state", c.State, "attempt", c.Attempt, "ranks", c.Assigned, "error", c.Error)
		}
	}
}

// workers describes set for DecideWorkers: each worker's lease, and
// whether it is dying: the lease's remaining TTL (whole seconds, as etcd
// reports it) is under half the granted TTL, i.e. more than one keep-alive
// period (a third of the TTL) was missed. A worker whose lease cannot be
// read is not judged dying (etcd stays the authority on who is live).
func (s *Scheduler) workers(ctx context.Context, set registry.WorkerSet) []Worker {
	out := make([]Worker, len(set.Workers))
	for i, w := range set.Workers {
		out[i] = Worker{ID: w.ID}
		if i >= len(set.Leases) || set.Leases[i] == 0 {
			continue
		}
		out[i].Lease = int64(set.Leases[i])
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := s.Registry.Client().TimeToLive(tctx, set.Leases[i])
		cancel()
		if err == nil && r.GrantedTTL > 0 && r.TTL >= 0 && 2*r.TTL < r.GrantedTTL {
			out[i].Dying = true
		}
	}
	return out
}
