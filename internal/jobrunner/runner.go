// Package jobrunner runs, on a worker, the ranks of the training jobs the
// scheduler (internal/jobs) assigns to it: for each it loads the job's dense
// replica and the experts this rank owns, opens a scope for the job on the
// worker's own expert server (transport.ExpertServer.AddJob: the job's
// experts, model and hidden size beside the serving placement's, on the
// worker's one gRPC listener) and a collective-group listener, publishes
// the worker's gRPC address and the group's (jobs.Store.PutRank), waits for
// every rank, and runs train.RunRank (or train.RunGoldenRank for a
// verification job); rank 0 publishes progress in etcd. The rank's own
// experts are computed in process through its scope
// (transport.RemoteTrainer.SetLocal); the other ranks' over gRPC. internal/worker
// starts it; it is the only link from a worker to the trainer, and the
// coordinator, which only schedules, never imports it
// (docs/ARCHITECTURE.md, sections 1, Components, and 12, Packages).
//
// A spec in etcd is untrusted: before a rank reads or writes anything it
// validates the spec (jobs.Spec.Validate) and resolves every path it names
// inside the worker's data root (Config.DataRoot, jobs.Spec.ResolvePaths);
// a violation fails the rank, its reason in the spec's error.
package jobrunner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/collective"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/transport"
)

// Config configures a worker's job runner.
type Config struct {
	Self cluster.WorkerID
	// Server is the worker's expert server; each rank adds its job's scope
	// to it. Required.
	Server *transport.ExpertServer
	// ExpertAddr is the worker's advertised gRPC address (where Server
	// listens), published as every rank's RankInfo.ExpertAddr. Required.
	ExpertAddr string
	// Host is the address the collective-group listener binds and
	// advertises (the worker's reachable host, e.g. 127.0.0.1 or a pod
	// IP). Default 127.0.0.1.
	Host string
	// JoinTimeout bounds the wait for every rank of an attempt to publish
	// its endpoints and connect (default 60 s).
	JoinTimeout time.Duration
	// StepTimeout bounds each collective operation of a training step, so a
	// rank that stops answering fails the step instead of hanging
	// (default 60 s).
	StepTimeout time.Duration
	// TLS, when set, secures the ranks' connections: the collective group
	// and the expert exchanges are mutual TLS, and rank i must present the
	// certificate of the worker the scheduler assigned it (Spec.Assigned
	// in etcd), not merely claim rank i; the job's expert scope answers
	// only those workers. Nil: plaintext.
	TLS *auth.Credentials
	// DataRoot is the directory every path a job spec names is confined to
	// (jobs.Spec.ResolvePaths): relative paths are relative to it, and a
	// path that leads outside it, even through a symbolic link, fails the
	// rank with an error naming the path and the root, before anything is
	// read or written. Default: the working directory when Run starts.
	DataRoot string
	Log      *slog.Logger
	// OnStep, if set, is called by every rank of this worker after each
	// training step (the worker's metrics).
	OnStep func(job string, rank int, rep train.StepReport)
}

// Runner runs, one at a time, the job ranks the scheduler assigns to a
// worker.
type Runner struct {
	Jobs *jobs.Store
	Cfg  Config
}

// Run follows the job list until ctx ends. It fails at once without
// Cfg.Server or Cfg.ExpertAddr.
func (r *Runner) Run(ctx context.Context) error {
	cfg := r.Cfg
	var errs []error
	if cfg.Server == nil {
		errs = append(errs, errors.New("jobrunner: Config.Server (the worker's expert server) is required"))
	}
	if cfg.ExpertAddr == "" {
		errs = append(errs, errors.New("jobrunner: Config.ExpertAddr (the worker's gRPC address) is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout = 60 * time.Second
	}
	if cfg.StepTimeout == 0 {
		cfg.StepTimeout = 60 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DataRoot == "" {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("jobrunner: no data root given and no working directory: %w", err)
		}
		cfg.DataRoot = wd
	}
	r.Cfg = cfg
	type running struct {
		id      string
		attempt int
		cancel  context.CancelFunc
		done    chan struct{}
		grow    *atomic.Bool // the scheduler asked the job to grow
	}
	var cur *running
	defer func() {
		if cur != nil {
			cur.cancel()
			<-cur.done
		}
	}()
	// ran is the last attempt of each job this worker ran a rank of to its
	// end: a rank that finished (or failed) is not started again while the
	// spec still shows its attempt (rank 0 records the outcome a moment
	// later).
	ran := map[string]int{}
	watch := r.Jobs.Watch(ctx)
	var list []*jobs.Spec
	for {
		var ended <-chan struct{}
		if cur != nil {
			ended = cur.done
		}
		select {
		case l, ok := <-watch:
			if !ok {
				return nil
			}
			list = l
		case <-ended:
			// The running rank ended (e.g. cancelled because its attempt
			// was replaced): look at the latest specs again, where the new
			// attempt may already be waiting for this worker.
		}
		if cur != nil {
			select {
			case <-cur.done:
				ran[cur.id] = cur.attempt
				cur = nil
			default:
			}
		}
		for _, sp := range list {
			rank := indexOf(sp.Assigned, cfg.Self)
			active := sp.State == jobs.Assigned || sp.State == jobs.Running
			if cur != nil && cur.id == sp.ID && (!active || sp.Attempt != cur.attempt) {
				cur.cancel() // the attempt failed elsewhere or was replaced
			}
			if cur != nil && cur.id == sp.ID && sp.Attempt == cur.attempt && sp.Grow {
				cur.grow.Store(true) // vote to stop at the next step
			}
			if a, ok := ran[sp.ID]; ok && a == sp.Attempt {
				continue
			}
			if cur != nil || !active || rank < 0 {
				continue
			}
			rctx, cancel := context.WithCancel(ctx)
			c := &running{id: sp.ID, attempt: sp.Attempt, cancel: cancel, done: make(chan struct{}), grow: new(atomic.Bool)}
			c.grow.Store(sp.Grow)
			cur = c
			go func(sp jobs.Spec, rank int) {
				defer close(c.done)
				defer cancel()
				r.runRank(rctx, sp, rank, c.grow)
			}(*sp, rank)
		}
	}
}

// blame names the workers a failed rank's error points at (never self):
// the peers a collective operation found unresponsive when it failed
// (probed: they did not answer a ping), else the peer it was waiting for
// when the connection to it broke; or the worker an expert exchange could
// not reach. Nil when the error names no peer (the rank failed on its own,
// a timeout, or the cause is unknown): then nobody is excluded, and the
// scheduler's lease check still keeps a dead worker out.
func blame(err error, ranks []cluster.WorkerID, self cluster.WorkerID) []jobs.Suspect {
	var out []jobs.Suspect
	add := func(w cluster.WorkerID) {
		if w == "" || w == self {
			return
		}
		for _, s := range out {
			if s.Worker == w {
				return
			}
		}
		out = append(out, jobs.Suspect{Worker: w})
	}
	at := func(rank int) cluster.WorkerID {
		if rank >= 0 && rank < len(ranks) {
			return ranks[rank]
		}
		return ""
	}
	var op *collective.OpError
	if errors.As(err, &op) {
		for _, p := range op.Unresponsive {
			add(at(p.Rank))
		}
		if len(out) == 0 && !errors.Is(err, context.DeadlineExceeded) {
			add(at(op.Peer))
		}
	}
	var pe *transport.PeerError
	if len(out) == 0 && errors.As(err, &pe) && errors.Is(pe, transport.ErrPeerUnavailable) {
		add(pe.Worker)
	}
	return out
}

func indexOf(ws []cluster.WorkerID, w cluster.WorkerID) int {
	for i, x := range ws {
		if x == w {
			return i
		}
	}
	return -1
}

// runRank runs one rank of one attempt and records its outcome in etcd.
func (r *Runner) runRank(ctx context.Context, sp jobs.Spec, rank int, grow *atomic.Bool) {
	lg := r.Cfg.Log.With("job", sp.ID, "attempt", sp.Attempt, "rank", rank)
	lg.Info("starting rank")
	res, err := r.rank(ctx, sp, rank, lg, grow)
	if errors.Is(err, train.ErrStopped) {
		// The group stopped together after a checkpoint to grow: rank 0
		// hands the job back to the scheduler for a bigger attempt.
		lg.Info("rank stopped to grow", "steps", res.Steps)
		if rank == 0 {
			if werr := jobs.Retry(context.Background(), jobs.RetryConfig{}, func(ctx context.Context) error {
				_, err := r.Jobs.Transition(ctx, sp.ID, func(cur *jobs.Spec) bool {
					if cur.Attempt != sp.Attempt || (cur.State != jobs.Assigned && cur.State != jobs.Running) {
						return false
					}
					cur.History = append(cur.History, fmt.Sprintf("attempt %d: stopped after step %d to grow onto more workers", sp.Attempt, res.Steps))
					cur.State, cur.Error, cur.Grow, cur.Assigned = jobs.Submitted, "", false, nil
					cur.Job.Resume = true
					cur.MaxAttempts++ // a growth does not use up the failure budget
					return true
				})
				return err
			}); werr != nil {
				lg.Error("could not hand the job back to grow", "err", werr)
			}
		}
		return
	}
	if err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			lg.Info("rank stopped", "err", err)
			return
		}
		suspects := blame(err, sp.Assigned, r.Cfg.Self)
		permanent := train.Permanent(err)
		msg := fmt.Sprintf("attempt %d, rank %d (worker %s): %v", sp.Attempt, rank, r.Cfg.Self, err)
		if len(suspects) > 0 {
			names := make([]string, len(suspects))
			for i, s := range suspects {
				names[i] = string(s.Worker)
			}
			msg += fmt.Sprintf(" [not answering: worker %s]", strings.Join(names, ", "))
		}
		lg.Warn("rank failed", "err", err, "suspects", suspects, "permanent", permanent)
		// The final state must land even if etcd blinks right now (each
		// try bounded, retried with backoff): a job must never stay
		// "running" with no rank left to end it.
		if werr := jobs.Retry(context.Background(), jobs.RetryConfig{}, func(ctx context.Context) error {
			_, err := r.Jobs.Transition(ctx, sp.ID, func(cur *jobs.Spec) bool {
				if cur.Attempt != sp.Attempt || (cur.State != jobs.Assigned && cur.State != jobs.Running) {
					return false // someone else already recorded the failure
				}
				cur.State, cur.Error = jobs.Failed, msg
				cur.Suspects, cur.Permanent = suspects, permanent
				return true
			})
			return err
		}); werr != nil {
			lg.Error("could not record the failed attempt", "err", werr)
		}
		return
	}
	if rank == 0 {
		if werr := jobs.Retry(context.Background(), jobs.RetryConfig{}, func(ctx context.Context) error {
			st, err := r.Jobs.Status(ctx, sp.ID)
			if err != nil {
				return err
			}
			st.Checkpoint = res.Checkpoint
			if err := r.Jobs.PutStatus(ctx, sp.ID, st); err != nil {
				return err
			}
			_, err = r.Jobs.Transition(ctx, sp.ID, func(cur *jobs.Spec) bool {
				if cur.Attempt != sp.Attempt || cur.State.Terminal() {
					return false
				}
				cur.State, cur.Error = jobs.Done, ""
				return true
			})
			return err
		}); werr != nil {
			lg.Error("could not record the finished job", "err", werr)
		}
	}
	lg.Info("rank finished", "steps", res.Steps)
}

// holders deals routed experts round-robin over the ranks: expert g (in
// layer-major order) lives on ranks g, g+1, .., g+R-1 (mod n), the first
// being its primary.
func holders(id expert.ID, experts, ranks, replicas int) []int {
	g := id.Layer*experts + id.Expert
	h := make([]int, min(max(replicas, 1), ranks))
	for j := range h {
		h[j] = (g + j) % ranks
	}
	return h
}

func holds(id expert.ID, experts, ranks, replicas, rank int) bool {
	for _, r := range holders(id, experts, ranks, replicas) {
		if r == rank {
			return true
		}
	}
	return false
}

func (r *Runner) rank(ctx context.Context, sp jobs.Spec, rank int, lg *slog.Logger, grow *atomic.Bool) (*train.Result, error) {
	// The spec comes from etcd: check it, and from here on use only the
	// paths it names as resolved inside the data root.
	if err := sp.Validate(); err != nil {
		return nil, err
	}
	sp, err := sp.ResolvePaths(r.Cfg.DataRoot)
	if err != nil {
		return nil, err
	}
	n := len(sp.Assigned)
	var (
		p     *train.Prepared
		m     *model.Model
		owned *expert.Store
		mcfg  *model.Config
	)
	if g := sp.Golden; g != nil {
		if err := train.VerifyCheckpoint(g.ModelDir); err != nil {
			return nil, err
		}
		ck, err := model.Open(g.ModelDir)
		if err != nil {
			return nil, err
		}
		mcfg = ck.Config
		E := mcfg.MoE.Router.NumExperts
		m, owned, err = model.Load(mcfg, ck.Source, model.LoadOptions{Experts: func(id expert.ID) bool { return holds(id, E, n, 1, rank) }})
		ck.Close()
		if err != nil {
			return nil, err
		}
	} else {
		if p, err = train.Prepare(sp.Job, func(f string, a ...any) { lg.Info(fmt.Sprintf(f, a...)) }); err != nil {
			return nil, err
		}
		mcfg = p.Model
		E := mcfg.MoE.Router.NumExperts
		R := sp.Job.ExpertReplicas
		if m, owned, err = p.Load(func(id expert.ID) bool { return holds(id, E, n, R, rank) }); err != nil {
			return nil, err
		}
	}
	E := mcfg.MoE.Router.NumExperts
	replicas := 1
	if sp.Golden == nil {
		replicas = min(max(sp.Job.ExpertReplicas, 1), n)
	}
	var allExperts []expert.ID
	for l, moe := range mcfg.LayerIsMoE {
		for e := 0; moe && e < E; e++ {
			allExperts = append(allExperts, expert.ID{Layer: l, Expert: e})
		}
	}
	fp := mcfg.Fingerprint()
	self := r.Cfg.Self

	// The job's scope on the worker's expert server (peers reach it at the
	// worker's gRPC address) and the collective group's listener.
	job := fmt.Sprintf("%s/%d", sp.ID, sp.Attempt)
	scope, err := r.Cfg.Server.AddJob(job, owned, fp, mcfg.Hidden)
	if err != nil {
		return nil, err
	}
	defer scope.Close()
	glis, err := net.Listen("tcp", net.JoinHostPort(r.Cfg.Host, "0"))
	if err != nil {
		return nil, err
	}
	if err := r.Jobs.PutRank(ctx, sp.ID, sp.Attempt, rank, jobs.RankInfo{Worker: self, ExpertAddr: r.Cfg.ExpertAddr, GroupAddr: glis.Addr().String()}); err != nil {
		glis.Close()
		return nil, err
	}
	jctx, cancel := context.WithTimeout(ctx, r.Cfg.JoinTimeout)
	ranks, err := r.Jobs.WaitRanks(jctx, sp.ID, sp.Attempt, n)
	cancel()
	if err != nil {
		glis.Close()
		return nil, err
	}
	peers := make([]string, n)
	idents := make([]auth.Identity, n)
	members := make([]cluster.WorkerID, n)
	for i, ri := range ranks {
		// Who holds rank i is the scheduler's word (Spec.Assigned), not the
		// rank's own record: with TLS its certificate must say the same.
		if ri.Worker != sp.Assigned[i] {
			glis.Close()
			return nil, fmt.Errorf("rank %d is published by worker %s, but the scheduler assigned it to %s", i, ri.Worker, sp.Assigned[i])
		}
		peers[i] = ri.GroupAddr
		idents[i] = auth.Identity{Role: auth.RoleWorker, Name: string(sp.Assigned[i])}
		members[i] = sp.Assigned[i]
	}
	scope.SetMembers(members)
	gcfg := collective.Config{
		Group: fmt.Sprintf("job-%s/attempt-%d", sp.ID, sp.Attempt), Rank: rank, Peers: peers,
		OpTimeout: r.Cfg.StepTimeout,
	}
	if r.Cfg.TLS != nil {
		gcfg.TLS, gcfg.Identities = r.Cfg.TLS, idents
	}
	group, err := collective.New(gcfg, glis)
	if err != nil {
		return nil, err
	}
	defer group.Close()
	jctx, cancel = context.WithTimeout(ctx, r.Cfg.JoinTimeout)
	err = group.Connect(jctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("connect the collective group: %w", err)
	}

	// Every expert's owner (the round-robin holders), as a placement for
	// the remote trainer. Its epoch is the attempt: an attempt is a scope
	// of its own on every worker ("<job>/<attempt>"), fixed for its life,
	// and a re-formed job is a new attempt, a new scope and a new epoch,
	// so no request of an earlier attempt can reach it.
	pl := &cluster.Placement{Model: fp, Epoch: cluster.Epoch(sp.Attempt), Owners: make([][][]cluster.WorkerID, mcfg.Layers), Workers: map[cluster.WorkerID]cluster.WorkerInfo{}}
	for _, ri := range ranks {
		pl.Workers[ri.Worker] = cluster.WorkerInfo{ID: ri.Worker, Addr: ri.ExpertAddr, Protocol: cluster.ProtocolVersion, Model: fp}
	}
	for l, moe := range mcfg.LayerIsMoE {
		if !moe {
			continue
		}
		pl.Owners[l] = make([][]cluster.WorkerID, E)
		for e := 0; e < E; e++ {
			// This rank trains through copy (rank mod R): callers spread over
			// the copies (the remote trainer uses the first listed owner).
			h := holders(expert.ID{Layer: l, Expert: e}, E, n, replicas)
			k := rank % len(h)
			for j := range h {
				pl.Owners[l][e] = append(pl.Owners[l][e], ranks[h[(k+j)%len(h)]].Worker)
			}
		}
	}
	ccfg := transport.DefaultClientConfig()
	ccfg.Worker, ccfg.Model, ccfg.Job, ccfg.CallTimeout = self, fp, job, r.Cfg.StepTimeout
	ccfg.TLS = r.Cfg.TLS
	pool, err := transport.NewPool(ccfg)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	tr, err := transport.NewRemoteTrainer(transport.NewStaticPlacement(pl), pool, job)
	if err != nil {
		return nil, err
	}
	if err := tr.SetLocal(self, scope); err != nil {
		return nil, err
	}
	m.Experts = tr

	if rank == 0 {
		r.Jobs.Transition(ctx, sp.ID, func(cur *jobs.Spec) bool {
			if cur.Attempt != sp.Attempt || cur.State != jobs.Assigned {
				return false
			}
			cur.State = jobs.Running
			return true
		})
	}
	// After the last operation, leave the group gracefully: Close alone
	// could cut off a peer still receiving this rank's last chunks.
	shutdown := func(err error) error {
		if err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, r.Cfg.StepTimeout)
		defer cancel()
		return group.Shutdown(sctx)
	}
	if g := sp.Golden; g != nil {
		err := train.RunGoldenRank(ctx, train.GoldenRank{Comm: group, Model: m, Owned: owned, IDs: g.IDs, AdamW: g.AdamW, Steps: g.Steps, Out: g.Out})
		return &train.Result{Steps: g.Steps}, shutdown(err)
	}
	pub := &publisher{ctx: ctx, jobs: r.Jobs, id: sp.ID, log: lg, last: jobs.Status{Attempt: sp.Attempt, Steps: sp.Job.Steps}}
	rj := train.RankJob{Prepared: p, Comm: group, Model: m, Owned: owned, Progress: pub, Stop: grow.Load, Name: sp.ID}
	if f := r.Cfg.OnStep; f != nil {
		rj.OnStep = func(rep train.StepReport) { f(sp.ID, rank, rep) }
	}
	if replicas > 1 {
		rj.Replicas = &train.Replicas{Experts: allExperts, Holders: func(id expert.ID) []int { return holders(id, E, n, replicas) }}
	}
	res, err := train.RunRank(ctx, rj)
	return res, shutdown(err)
}

// publisher is rank 0's train.Progress: it publishes the job's status in
// etcd at most every 500 ms, and at once for the last step and every
// checkpoint.
type publisher struct {
	ctx     context.Context
	jobs    *jobs.Store
	id      string
	log     *slog.Logger
	last    jobs.Status
	lastPut time.Time
}

func (p *publisher) Logf(format string, args ...any) { p.log.Info(fmt.Sprintf(format, args...)) }

func (p *publisher) Observe(ev train.Event) {
	switch {
	case ev.Checkpoint != "":
		p.last.Checkpoint = ev.Checkpoint
	case ev.EvalLoss != 0:
		p.last.EvalLoss = ev.EvalLoss
	default:
		p.last.Step, p.last.Loss, p.last.TokensPerS = ev.Step, ev.Loss, ev.TokensPerS
	}
	if time.Since(p.lastPut) > 500*time.Millisecond || ev.Step == p.last.Steps || ev.Checkpoint != "" {
		p.lastPut = time.Now()
		p.jobs.PutStatus(p.ctx, p.id, p.last)
	}
}
