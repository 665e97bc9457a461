// Package jobs is the control plane of training jobs on a Switchyard
// cluster: the job store in etcd and the scheduler.
//
// A job is submitted (by `switchyard train --workers N` or any client) as a
// Spec under /<cluster>/jobs/<id> in etcd. The scheduler (Scheduler, run by
// the coordinators; its pure core is Decide) assigns it to N live workers,
// which become its ranks 0..N-1 in the Spec's order. Each assigned worker's
// job runner (internal/jobrunner, started by internal/worker) prepares the job,
// loads the dense replica and the experts it owns for the job, opens an
// expert-exchange server and a collective-group listener, publishes their
// addresses under the job's attempt (PutRank), waits for every rank
// (WaitRanks), and trains. Rank 0 publishes progress under
// /<cluster>/jobs/<id>/status. A rank that fails marks the attempt failed
// (first writer wins); the other ranks see it and stop. The scheduler then
// retries the job on the live workers, resuming from its last checkpoint,
// until MaxAttempts.
//
// Every state change of a Spec is a compare-and-swap on its etcd mod
// revision, so concurrent schedulers and ranks never overwrite each other.
//
// The package holds no trainer code (a Spec's Job is a
// trainconf.JobConfig, plain data), so the coordinator links the job
// control plane without the trainer.
package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/train/trainconf"
)

// State of a job.
type State string

const (
	Submitted State = "submitted" // waiting for workers
	Assigned  State = "assigned"  // ranks chosen; workers are starting
	Running   State = "running"   // every rank joined; steps are running
	Done      State = "done"
	Failed    State = "failed" // this attempt failed; the scheduler may retry
	Abandoned State = "abandoned"
)

// Terminal reports whether no more work happens for a job in state s.
func (s State) Terminal() bool { return s == Done || s == Abandoned }

// DefaultMaxAttempts bounds automatic retries of a failed job.
const DefaultMaxAttempts = 3

// Spec is a job as stored in etcd.
type Spec struct {
	ID      string              `json:"id"`
	Job     trainconf.JobConfig `json:"job"`     // paths are relative to each worker's data root (ResolvePaths)
	Workers int                 `json:"workers"` // ranks of an attempt at most (and at least, unless MinWorkers)
	// MinWorkers makes the job elastic (TorchElastic's --nnodes MIN:MAX,
	// with Workers the maximum): an attempt starts on every eligible idle
	// live worker, up to Workers, once at least MinWorkers are; after a
	// worker's death the job re-forms on the survivors. The global batch
	// and the loss normalization do not depend on the count. 0 means
	// Workers (a fixed size).
	MinWorkers  int                `json:"min_workers,omitempty"`
	MaxAttempts int                `json:"max_attempts"`
	State       State              `json:"state"`
	Attempt     int                `json:"attempt"`  // 1 for the first assignment
	Assigned    []cluster.WorkerID `json:"assigned"` // ranks, in order
	Error       string             `json:"error,omitempty"`
	History     []string           `json:"history,omitempty"` // one line per failed attempt
	// Suspects are the workers blamed for the last failed attempt (the
	// peers a failing rank found unresponsive, or a rank that left the
	// cluster), with the etcd lease each held then (filled in by the
	// scheduler; 0 until it has): the next attempts avoid a suspect while
	// it holds that lease, so a dead worker whose lease has not expired yet
	// is not picked again, and a restarted one (a new lease) is.
	Suspects []Suspect `json:"suspects,omitempty"`
	// Permanent marks the failure of the attempt as one retrying cannot fix
	// (no space left, permission denied): the scheduler abandons the job
	// at once instead of recomputing the steps since the last checkpoint.
	Permanent bool `json:"permanent,omitempty"`
	// Grow asks the ranks of a running elastic job to stop at the next
	// step, checkpoint, and come back as a new attempt on more workers
	// (set by the scheduler when eligible idle workers exist and the job
	// has fewer than Workers ranks). A growth does not use up MaxAttempts.
	Grow bool `json:"grow,omitempty"`
	// Golden, if set, makes this a verification job instead of training:
	// the ranks recompute a golden file's gradients and AdamW losses.
	Golden    *GoldenTask `json:"golden,omitempty"`
	Submitted time.Time   `json:"submitted"`
	Updated   time.Time   `json:"updated"`
}

// Suspect is a worker blamed for a failed attempt, with the lease of the
// registration it had then (0: not known yet).
type Suspect struct {
	Worker cluster.WorkerID `json:"worker"`
	Lease  int64            `json:"lease,omitempty"`
	// Since is when the scheduler pinned the lease (zero until then).
	Since time.Time `json:"since,omitempty"`
}

// SuspectFor bounds how long a suspect is avoided under the same lease:
// a dead worker's lease lapses within its TTL (5 s by default), so one
// whose lease is still renewed this long after the failure is alive (a
// rank that only aborted its group looks dead to its peers' pings) and
// may be given ranks again: a job never waits forever for workers it
// wrongly blamed.
const SuspectFor = 10 * time.Second

// Min is the fewest ranks an attempt may start with: MinWorkers, or
// Workers for a fixed-size job.
func (sp *Spec) Min() int {
	if sp.MinWorkers > 0 {
		return sp.MinWorkers
	}
	return sp.Workers
}

// GoldenTask is what a verification job recomputes (see
// train.RunGoldenRank): the gradients and AdamW trajectory of the batch in
// a golden file, data- and expert-parallel over the job's ranks.
type GoldenTask struct {
	ModelDir string            `json:"model_dir"` // relative to each worker's data root, as Out
	IDs      [][]int32         `json:"ids"`       // the golden batch
	AdamW    optim.AdamWConfig `json:"adamw"`
	Steps    int               `json:"steps"`
	Out      string            `json:"out"` // result directory (shared filesystem)
}

// Status is the progress rank 0 publishes.
type Status struct {
	Attempt    int       `json:"attempt"`
	Step       int       `json:"step"`
	Steps      int       `json:"steps"`
	Loss       float64   `json:"loss"`
	EvalLoss   float64   `json:"eval_loss,omitempty"`
	TokensPerS float64   `json:"tokens_per_s"`
	Checkpoint string    `json:"checkpoint,omitempty"`
	Updated    time.Time `json:"updated"`
}

// RankInfo is what a rank publishes for its peers.
type RankInfo struct {
	Worker     cluster.WorkerID `json:"worker"`
	ExpertAddr string           `json:"expert_addr"`     // its job expert-exchange server
	GroupAddr  string           `json:"collective_addr"` // its collective-group listener
}

// Store reads and writes jobs in etcd under one cluster prefix.
type Store struct {
	cli     *clientv3.Client
	cluster string
}

// NewStore returns a store for the cluster prefix.
func NewStore(cli *clientv3.Client, clusterName string) *Store {
	return &Store{cli: cli, cluster: clusterName}
}

func (s *Store) prefix() string           { return "/" + s.cluster + "/jobs/" }
func (s *Store) specKey(id string) string { return s.prefix() + id + "/spec" }
func (s *Store) statusKey(id string) string {
	return s.prefix() + id + "/status"
}
func (s *Store) rankPrefix(id string, attempt int) string {
	return s.prefix() + id + "/ranks/" + strconv.Itoa(attempt) + "/"
}

// ErrConflict is returned when a compare-and-swap lost to another writer.
var ErrConflict = errors.New("jobs: the job changed concurrently")

// ErrNotFound is returned for an unknown job.
var ErrNotFound = errors.New("jobs: no such job")

// SubmitRetry is how long Submit retries a write that failed in etcd
// (a member cut off, a leader change: up to about 10 s in the chaos runs)
// before it returns the error.
const SubmitRetry = 30 * time.Second

// Submit stores a new job (state Submitted) once it validates (Validate:
// every number in range, paths well formed). The ID must be new. A write
// that fails in etcd is retried (Retry, for SubmitRetry): the spec is
// created only if its key is absent, and a retry that finds the key
// holding exactly this spec takes it as the earlier try's (its reply
// lost), so a job is stored once. Before, one failed write ended the
// submission: the chaos run's job loop stopped at "jobs: submit
// chaos-run-2: ... connection timed out" while etcd's leader was cut off.
func (s *Store) Submit(ctx context.Context, sp Spec) error {
	if sp.MaxAttempts == 0 {
		sp.MaxAttempts = DefaultMaxAttempts
	}
	sp.State, sp.Attempt, sp.Assigned = Submitted, 0, nil
	if err := sp.Validate(); err != nil {
		return err
	}
	now := time.Now()
	sp.Submitted, sp.Updated = now, now
	b, err := json.Marshal(sp)
	if err != nil {
		return err
	}
	k := s.specKey(sp.ID)
	var exists, uncertain bool // the key held another spec; a try failed after it may have written
	err = Retry(ctx, RetryConfig{Total: SubmitRetry}, func(ctx context.Context) error {
		resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).Then(clientv3.OpPut(k, string(b))).Commit()
		if err != nil {
			uncertain = true
			return err
		}
		if resp.Succeeded {
			return nil
		}
		if uncertain {
			g, err := s.cli.Get(ctx, k)
			if err != nil {
				return err
			}
			if len(g.Kvs) == 1 && string(g.Kvs[0].Value) == string(b) {
				return nil // stored by a try whose reply was lost
			}
		}
		exists = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("jobs: submit %s: %w", sp.ID, err)
	}
	if exists {
		return fmt.Errorf("jobs: job %s already exists", sp.ID)
	}
	return nil
}

// Get returns a job and the mod revision of its spec. Get and List only
// decode specs: whoever can write etcd can store any spec, so the
// scheduler abandons one whose scheduling fields are out of range
// (Decide), and a worker validates a spec (Validate) and confines its
// paths to its data root (ResolvePaths) before it runs a rank of it.
func (s *Store) Get(ctx context.Context, id string) (*Spec, int64, error) {
	resp, err := s.cli.Get(ctx, s.specKey(id))
	if err != nil {
		return nil, 0, fmt.Errorf("jobs: get %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	var sp Spec
	if err := json.Unmarshal(resp.Kvs[0].Value, &sp); err != nil {
		return nil, 0, fmt.Errorf("jobs: job %s: %w", id, err)
	}
	return &sp, resp.Kvs[0].ModRevision, nil
}

// List returns every job, by submission time.
func (s *Store) List(ctx context.Context) ([]*Spec, map[string]int64, int64, error) {
	resp, err := s.cli.Get(ctx, s.prefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, nil, 0, fmt.Errorf("jobs: list: %w", err)
	}
	var out []*Spec
	revs := map[string]int64{}
	for _, kv := range resp.Kvs {
		if path.Base(string(kv.Key)) != "spec" {
			continue
		}
		var sp Spec
		if json.Unmarshal(kv.Value, &sp) != nil {
			continue
		}
		out = append(out, &sp)
		revs[sp.ID] = kv.ModRevision
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Submitted.Before(out[j].Submitted) })
	return out, revs, resp.Header.Revision, nil
}

// Update writes sp if the stored spec still has mod revision rev.
func (s *Store) Update(ctx context.Context, sp *Spec, rev int64) (int64, error) {
	sp.Updated = time.Now()
	b, err := json.Marshal(sp)
	if err != nil {
		return 0, err
	}
	k := s.specKey(sp.ID)
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).Then(clientv3.OpPut(k, string(b))).Commit()
	if err != nil {
		return 0, fmt.Errorf("jobs: update %s: %w", sp.ID, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("%w: %s", ErrConflict, sp.ID)
	}
	return resp.Header.Revision, nil
}

// Transition applies change to the current spec and writes it, retrying on
// conflicts while change keeps returning true (false: leave it alone).
func (s *Store) Transition(ctx context.Context, id string, change func(*Spec) bool) (*Spec, error) {
	for {
		sp, rev, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if !change(sp) {
			return sp, nil
		}
		if _, err := s.Update(ctx, sp, rev); err == nil {
			return sp, nil
		} else if !errors.Is(err, ErrConflict) {
			return nil, err
		}
	}
}

// PutStatus publishes rank 0's progress.
func (s *Store) PutStatus(ctx context.Context, id string, st Status) error {
	st.Updated = time.Now()
	b, _ := json.Marshal(st)
	_, err := s.cli.Put(ctx, s.statusKey(id), string(b))
	return err
}

// Status returns a job's last published progress (zero Status if none).
func (s *Store) Status(ctx context.Context, id string) (Status, error) {
	var st Status
	resp, err := s.cli.Get(ctx, s.statusKey(id))
	if err != nil || len(resp.Kvs) == 0 {
		return st, err
	}
	err = json.Unmarshal(resp.Kvs[0].Value, &st)
	return st, err
}

// PutRank publishes one rank's endpoints for an attempt.
func (s *Store) PutRank(ctx context.Context, id string, attempt, rank int, ri RankInfo) error {
	b, _ := json.Marshal(ri)
	_, err := s.cli.Put(ctx, s.rankPrefix(id, attempt)+strconv.Itoa(rank), string(b))
	return err
}

// WaitRanks waits until all n ranks of an attempt published their
// endpoints and returns them by rank.
func (s *Store) WaitRanks(ctx context.Context, id string, attempt, n int) ([]RankInfo, error) {
	p := s.rankPrefix(id, attempt)
	for {
		resp, err := s.cli.Get(ctx, p, clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("jobs: ranks of %s: %w", id, err)
		}
		out := make([]RankInfo, n)
		have := 0
		for _, kv := range resp.Kvs {
			r, err := strconv.Atoi(path.Base(string(kv.Key)))
			if err != nil || r < 0 || r >= n {
				continue
			}
			if json.Unmarshal(kv.Value, &out[r]) == nil {
				have++
			}
		}
		if have == n {
			return out, nil
		}
		wctx, cancel := context.WithCancel(ctx)
		wch := s.cli.Watch(wctx, p, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		select {
		case <-ctx.Done():
			cancel()
			var missing []int
			for r := range out {
				if out[r].Worker == "" {
					missing = append(missing, r)
				}
			}
			return nil, fmt.Errorf("jobs: job %s attempt %d: ranks %v did not join: %w", id, attempt, missing, ctx.Err())
		case <-wch:
		}
		cancel()
	}
}

// Watch sends the list of jobs every time one changes (the current list
// first). The channel closes when ctx ends.
func (s *Store) Watch(ctx context.Context) <-chan []*Spec {
	ch := make(chan []*Spec, 1)
	go func() {
		defer close(ch)
		for ctx.Err() == nil {
			list, _, rev, err := s.List(ctx)
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond):
					continue
				}
			}
			select {
			case ch <- list:
			case <-ctx.Done():
				return
			}
			wctx, cancel := context.WithCancel(ctx)
			wch := s.cli.Watch(wctx, s.prefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
			select {
			case <-ctx.Done():
			case <-wch:
			}
			cancel()
		}
	}()
	return ch
}
