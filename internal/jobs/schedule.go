package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Decide is the scheduler's pure core: given every job and the live
// workers, it returns the jobs to rewrite (modified copies):
//   - a Submitted job gets the first Workers idle live workers (sorted by
//     ID) as its ranks, a new attempt number, and state Assigned;
//   - an Assigned or Running job whose ranks include a worker that left the
//     cluster fails ("worker X left");
//   - a Failed job is resubmitted, resuming from its last checkpoint, until
//     MaxAttempts; then it is Abandoned;
//   - a job not yet ended whose ID, worker count, attempts, state or ranks
//     are out of range (a spec written into etcd by hand) is Abandoned,
//     the problems in its Error.
func Decide(jobs []*Spec, live []cluster.WorkerID) []*Spec {
	isLive := map[cluster.WorkerID]bool{}
	for _, w := range live {
		isLive[w] = true
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
			for _, w := range j.Assigned {
				if !isLive[w] {
					lost = append(lost, string(w))
				}
			}
			if len(lost) > 0 {
				c := *j
				c.State = Failed
				c.Error = fmt.Sprintf("attempt %d: worker %s left the cluster", j.Attempt, strings.Join(lost, ", "))
				out = append(out, &c)
			}
		case Failed:
			c := *j
			c.History = append(slices.Clone(j.History), j.Error)
			if j.Attempt >= j.MaxAttempts {
				c.State = Abandoned
				c.Error = fmt.Sprintf("gave up after %d attempts; last: %s", j.Attempt, j.Error)
			} else {
				c.State = Submitted
				c.Job.Resume = true
			}
			out = append(out, &c)
		}
	}
	// Assign submitted jobs, oldest first, to idle workers.
	var idle []cluster.WorkerID
	for _, w := range live {
		if !busy[w] {
			idle = append(idle, w)
		}
	}
	slices.Sort(idle)
	for _, j := range jobs {
		for _, o := range out { // use this round's version (a failed job just resubmitted)
			if o.ID == j.ID {
				j = o
			}
		}
		if j.State != Submitted || len(idle) < j.Workers {
			continue
		}
		c := *j
		c.Assigned = slices.Clone(idle[:j.Workers])
		idle = idle[j.Workers:]
		c.Attempt++
		c.State, c.Error = Assigned, ""
		out = replace(out, &c)
	}
	return out
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

// Scheduler applies Decide whenever jobs or workers change. Several may
// run (one per coordinator): every write is a compare-and-swap.
type Scheduler struct {
	Jobs     *Store
	Registry *registry.Registry
	Log      *slog.Logger
}

// Run schedules until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	lg := s.Log
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	jobsCh := s.Jobs.Watch(ctx)
	workersCh := s.Registry.WatchWorkers(ctx)
	var live []cluster.WorkerID
	haveWorkers := false // never judge jobs before the first worker list
	for {
		select {
		case <-ctx.Done():
			return nil
		case ws, ok := <-workersCh:
			if !ok {
				return nil
			}
			live, haveWorkers = ws.IDs(), true
		case _, ok := <-jobsCh:
			if !ok {
				return nil
			}
		}
		if !haveWorkers {
			continue
		}
		list, revs, _, err := s.Jobs.List(ctx)
		if err != nil {
			continue
		}
		for _, c := range Decide(list, live) {
			if _, err := s.Jobs.Update(ctx, c, revs[c.ID]); err != nil && !errors.Is(err, ErrConflict) {
				lg.Warn("job update failed", "job", c.ID, "err", err)
				continue
			}
			lg.Info("job", "id", c.ID, "state", c.State, "attempt", c.Attempt, "ranks", c.Assigned, "error", c.Error)
		}
	}
}
