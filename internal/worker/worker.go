package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchyard/switchyard/internal/backoff"
	"github.com/switchyard/switchyard/internal/jobrunner"
	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/membership"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/transport"
)

// Worker is one worker's runtime (see the package comment). Create it with
// New and call Run once; the other methods are safe for concurrent use
// while it runs.
type Worker struct {
	cfg Config
	log *slog.Logger

	started   atomic.Bool
	ready     chan struct{}
	readyOnce sync.Once
	fatal     chan error // a reason to stop for good found while registered (watchVerdict)
	ownsAddr  bool       // the registered address is the concrete IP:port this process listens on

	// budget is the expert bytes the worker may hold, ExpertBudget of
	// Config.MemBytes (0: unlimited); registered as WorkerInfo.MemBytes.
	budget int64

	// Set by Run before Ready is closed, read-only afterwards.
	info  cluster.WorkerInfo
	store *expert.Store
	srv   *transport.ExpertServer
	// loadExpert reads one expert from the checkpoint; sizeOf is the memory
	// it will take once loaded (see expertSizes).
	loadExpert func(expert.ID) (*expert.FFN, error)
	sizeOf     func(expert.ID) int64
	loadMu     sync.Mutex // one load at a time: budget check, read, Put

	applied atomic.Uint64                         // placement epoch applied last
	reg     atomic.Pointer[registry.Registration] // live registration, nil between leases
	met     *metrics
}

// New validates cfg (filling defaults) and returns a worker; Run starts it.
func New(cfg Config) (*Worker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w := &Worker{cfg: cfg, log: lg.With("worker", string(cfg.ID)), ready: make(chan struct{}), fatal: make(chan error, 1), budget: ExpertBudget(cfg.MemBytes)}
	w.met = newMetrics(w)
	return w, nil
}

// isReady reports whether Ready is closed.
func (w *Worker) isReady() bool {
	select {
	case <-w.ready:
		return true
	default:
		return false
	}
}

// Ready is closed once the worker has opened its model, serves gRPC and is
// registered in etcd for the first time.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Info is what the worker registered (addresses with real ports, model
// fingerprint). Valid once Ready is closed.
func (w *Worker) Info() cluster.WorkerInfo { return w.info }

// Budget is the expert bytes the worker may hold (ExpertBudget of
// Config.MemBytes, registered as WorkerInfo.MemBytes); 0 means unlimited.
func (w *Worker) Budget() int64 { return w.budget }

// Epoch is the placement epoch the worker applied last (0: none yet).
func (w *Worker) Epoch() cluster.Epoch { return cluster.Epoch(w.applied.Load()) }

// Held lists the experts the worker holds, in (layer, expert) order.
func (w *Worker) Held() []expert.ID {
	if w.store == nil {
		return nil
	}
	ids := w.store.IDs()
	slices.SortFunc(ids, expert.Compare)
	return ids
}

// ErrRefused is wrapped by Run's error when the cluster refuses the worker
// for good (another model or protocol version); the registry's reason is
// wrapped too (registry.ErrModelMismatch, registry.ErrProtocolMismatch).
var ErrRefused = errors.New("worker refused by the cluster")

// Run opens the model, serves, registers, follows the placement and
// reports statistics until ctx ends; then it leaves gracefully and returns
// nil. It returns an error when the model cannot be opened, a listener
// cannot be bound, or the cluster refuses the worker
// (ErrRefused), or it gives up joining the cluster (ErrGaveUp: etcd not
// reachable within Config.ConnectTimeout, no model or another failure for
// Config.RegisterTimeout, the ID held by another live worker); with
// Config.Wait it keeps retrying those until ctx ends.
func (w *Worker) Run(ctx context.Context) (err error) {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("worker: Run called twice")
	}
	cfg, lg := w.cfg, w.log

	defer func() { lg.Debug("worker stopped", "err", err) }()
	t0 := time.Now()
	var fp string // the served model's fingerprint; "" for a jobs-only worker
	var srv *transport.ExpertServer
	if cfg.ModelDir != "" {
		// Checksums of a Switchyard checkpoint are verified before any
		// expert is read from it.
		if err := train.VerifyCheckpoint(cfg.ModelDir); err != nil {
			return fmt.Errorf("worker %s: %w", cfg.ID, err)
		}
		ck, err := model.Open(cfg.ModelDir)
		if err != nil {
			return fmt.Errorf("worker %s: %w", cfg.ID, err)
		}
		defer ck.Close()
		// No weights are read here: the worker holds only the experts the
		// placement gives it, each read when it is placed here.
		fp = ck.Config.Fingerprint()
		if srv, err = w.serveModel(ck); err != nil {
			return fmt.Errorf("worker %s: %w", cfg.ID, err)
		}
		debug.FreeOSMemory() // the size table's garbage; RSS should show what is held
		lg.Info("model opened", "model", fp, "dir", cfg.ModelDir, "mem_limit", cfg.MemBytes,
			"expert_budget", w.budget, "took", time.Since(t0).Round(time.Millisecond))
	} else {
		// Jobs only: the expert server has no serving model (callers of
		// one are refused as another model); training jobs add their own
		// scopes to it.
		if srv, err = w.serveNoModel(); err != nil {
			return fmt.Errorf("worker %s: %w", cfg.ID, err)
		}
		lg.Info("no model: this worker runs training jobs only", "mem_limit", cfg.MemBytes)
	}
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		_ = srv.Shutdown(ctx) // stops its batcher
		return fmt.Errorf("worker %s: gRPC listen: %w", cfg.ID, err)
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(lis) }()
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		t := time.Now()
		if derr := srv.Shutdown(dctx); derr != nil {
			lg.Warn("drain cut short", "err", derr)
		}
		lg.Debug("shutdown: gRPC drained", "took", time.Since(t).Round(time.Millisecond))
		if serr := <-serveDone; serr != nil && err == nil {
			err = fmt.Errorf("worker %s: gRPC serve: %w", cfg.ID, serr)
		}
	}()
	addr := advertise(cfg.AdvertiseAddr, lis.Addr().String())
	w.ownsAddr = cfg.AdvertiseAddr == "" && addr == lis.Addr().String() && concreteIP(addr)

	cli, err := w.dialEtcd(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // ctx ended before etcd answered: a normal stop
		}
		return err
	}
	defer cli.Close() // after every goroutine using it has stopped (below)
	reg, err := registry.New(cli, cfg.Cluster)
	if err != nil {
		return fmt.Errorf("worker %s: %w", cfg.ID, err)
	}

	var gossip *membership.Node
	var gwg sync.WaitGroup
	if cfg.GossipAddr != "" {
		var key []byte
		if cfg.TLS != nil {
			// Gossip under TLS is encrypted with the cluster's key, which
			// only holders of the CA's certificates can read from etcd.
			slow := time.AfterFunc(5*time.Second, func() {
				lg.Warn("waiting for a coordinator to create the cluster's gossip key in etcd (is a coordinator running with TLS?)")
			})
			kctx, cancel := ctx, context.CancelFunc(func() {})
			if !cfg.Wait {
				kctx, cancel = context.WithTimeout(ctx, cfg.RegisterTimeout)
			}
			key, err = reg.GossipKey(kctx)
			cancel()
			slow.Stop()
			if err != nil {
				if ctx.Err() != nil {
					return nil // stopped while starting: a normal stop
				}
				if kctx.Err() != nil {
					return fmt.Errorf("worker %s: no coordinator created cluster %q's gossip key in etcd within %v (is a coordinator of this cluster running with TLS? --register-timeout; --wait keeps waiting): %w: %w",
						cfg.ID, cfg.Cluster, cfg.RegisterTimeout, err, ErrGaveUp)
				}
				return fmt.Errorf("worker %s: %w", cfg.ID, err)
			}
		}
		if gossip, err = startGossip(cfg, addr, key); err != nil {
			return fmt.Errorf("worker %s: %w", cfg.ID, err)
		}
		gwg.Add(1)
		go func() {
			defer gwg.Done()
			for ev := range gossip.Events() {
				lg.Debug("gossip", "event", ev.Kind.String(), "member", ev.Member.Name, "addr", ev.Member.Addr)
			}
		}()
		defer func() {
			// Leave first, so peers see a departure, not a failure. Each of
			// its two broadcasts waits at most this long.
			t := time.Now()
			if lerr := gossip.Leave(500 * time.Millisecond); lerr != nil {
				lg.Debug("gossip leave", "err", lerr)
			}
			gossip.Shutdown()
			gwg.Wait()
			lg.Debug("shutdown: gossip left", "took", time.Since(t).Round(time.Millisecond))
		}()
	}

	cores := cfg.Cores
	if cores == 0 {
		cores = runtime.NumCPU()
	}
	w.info = cluster.WorkerInfo{
		ID: cfg.ID, Addr: addr, Cores: cores, MemBytes: w.budget,
		Protocol: cfg.Protocol, Model: fp, Version: version(),
	}
	if gossip != nil {
		w.info.GossipAddr = gossip.Addr()
	}
	if fp != "" && cfg.Quantize != tensor.QNone {
		w.info.Quantize = cfg.Quantize.String()
	}

	fctx, stopFollow := context.WithCancel(ctx)
	var fwg sync.WaitGroup
	if fp != "" {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			w.followPlacement(fctx, reg, fp)
		}()
	}
	defer func() {
		t := time.Now()
		stopFollow()
		fwg.Wait()
		lg.Debug("shutdown: placement watch stopped", "took", time.Since(t).Round(time.Millisecond))
	}()
	if fp != "" && !cfg.Wait {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			w.watchVerdict(fctx, reg, fp)
		}()
	}
	// Training jobs the scheduler assigns to this worker.
	if !cfg.NoJobs {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			host, _, _ := net.SplitHostPort(w.info.Addr)
			r := &jobrunner.Runner{Jobs: jobs.NewStore(cli, reg.Cluster()), Cfg: jobrunner.Config{
				Self: cfg.ID, Server: srv, ExpertAddr: w.info.Addr, Host: host, StepTimeout: cfg.JobStepTimeout, Log: lg, TLS: cfg.TLS, DataRoot: cfg.DataRoot,
				OnStep: w.met.step,
			}}
			if err := r.Run(fctx); err != nil {
				lg.Error("job runner stopped", "err", err)
			}
		}()
	}

	return w.registerLoop(ctx, reg, gossip)
}

// noModel is the serving scope's model fingerprint on a jobs-only worker:
// no real model has it, so serving callers are refused as another model.
const noModel = "none"

// serveNoModel sets a jobs-only worker up: an empty serving store that
// never loads anything, and the expert server its jobs add scopes to.
func (w *Worker) serveNoModel() (*transport.ExpertServer, error) {
	w.store = expert.NewStore()
	w.sizeOf = func(expert.ID) int64 { return 0 }
	w.loadExpert = func(id expert.ID) (*expert.FFN, error) {
		return nil, fmt.Errorf("worker %s serves no model: cannot load expert %v", w.cfg.ID, id)
	}
	return w.newServer(noModel, 1)
}

// newServer makes the worker's expert server over its store for a model
// (fingerprint, hidden size). What it holds changes only through the
// placement follower (apply), never through a peer's call.
func (w *Worker) newServer(fp string, hidden int) (*transport.ExpertServer, error) {
	srv, err := transport.NewExpertServer(w.store, transport.ServerConfig{
		Worker: w.cfg.ID, Model: fp, Protocol: w.cfg.Protocol, Hidden: hidden, TLS: w.cfg.TLS,
		Observer: w.met.observer(),
	})
	if err != nil {
		return nil, err
	}
	w.srv = srv
	return srv, nil
}

// serveModel sets the worker up to hold experts of ck: an empty store,
// the expert loader and sizes, and the expert server (not serving yet).
func (w *Worker) serveModel(ck *model.Checkpoint) (*transport.ExpertServer, error) {
	lo := model.LoadOptions{KeepBF16: w.cfg.KeepBF16, Quantize: w.cfg.Quantize}
	sizes := expertSizes(ck.Config, ck.Source, lo)
	w.store = expert.NewStore()
	w.sizeOf = func(id expert.ID) int64 { return sizes[id] }
	w.loadExpert = func(id expert.ID) (*expert.FFN, error) {
		return model.LoadExpert(ck.Config, ck.Source, id, lo)
	}
	return w.newServer(ck.Config.Fingerprint(), ck.Config.Hidden)
}

// registerLoop keeps the worker registered until ctx ends (then it revokes
// the lease and returns nil) or the cluster refuses it for good.
func (w *Worker) registerLoop(ctx context.Context, reg *registry.Registry, gossip *membership.Node) error {
	lg := w.log
	bo := backoff.New(100*time.Millisecond, 2*time.Second)
	rl := newRetryLog(lg)
	var join *joinState // until the first registration
	if !w.isReady() {
		join = &joinState{w: w, reg: reg, start: rl.start}
	}
	for {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if join != nil && !w.cfg.Wait {
			// One attempt may not hang past the bounds (etcd gone).
			actx, cancel = context.WithTimeout(ctx, 5*time.Second)
		}
		g, err := reg.Register(actx, w.info, w.cfg.LeaseTTL)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, registry.ErrModelMismatch) || errors.Is(err, registry.ErrProtocolMismatch) {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
			// No model registered yet, or a killed predecessor's lease still
			// holds the ID (it expires within its TTL), or etcd trouble.
			if join != nil {
				if gerr := join.failed(ctx, err); gerr != nil {
					return gerr
				}
			}
			kind := "other"
			switch {
			case errors.Is(err, registry.ErrNoModel):
				kind = "no-model"
			case errors.Is(err, registry.ErrWorkerExists):
				kind = "id-held"
			}
			rl.note(kind, "not registered yet; retrying", "err", err)
			if !bo.Wait(ctx) {
				return nil
			}
			continue
		}
		bo.Reset()
		if len(rl.seen) > 0 {
			lg.Info("registered after retrying", "after", time.Since(rl.start).Round(100*time.Millisecond))
		}
		rl.reset()
		join = nil
		w.reg.Store(g)
		w.met.registrations.Inc()
		lg.Info("registered", "lease", strconv.FormatInt(int64(g.Lease()), 16), "ttl", g.TTL(), "addr", w.info.Addr, "gossip", w.info.GossipAddr)
		w.readyOnce.Do(func() { close(w.ready) })

		sctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.ReportStats(sctx, w.cfg.StatsInterval, w.Stats)
		}()
		if gossip != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.joinGossip(sctx, reg, gossip)
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-sctx.Done():
					return
				case d := <-g.Resumed():
					w.met.leaseResumes.Inc()
					lg.Warn("lease renewals went unanswered for a TTL while etcd kept the lease alive (a raft leader change); renewing the same lease again", "unanswered", d.Round(time.Millisecond))
				}
			}
		}()
		select {
		case <-ctx.Done():
			stop()
			wg.Wait()
			w.reg.Store(nil)
			if err := g.Close(); err != nil {
				lg.Warn("deregister", "err", err)
			} else {
				lg.Info("deregistered (lease revoked)")
			}
			return nil
		case err := <-w.fatal:
			stop()
			wg.Wait()
			w.reg.Store(nil)
			if cerr := g.Close(); cerr != nil {
				lg.Warn("deregister", "err", cerr)
			}
			return err
		case <-g.Done():
			stop()
			wg.Wait()
			w.reg.Store(nil)
			w.met.leaseLosses.Inc()
			lg.Warn("lease lost (etcd unreachable for longer than the TTL, or revoked by the leader after failed health probes); registering again")
			// Registering again is bounded like the first join (unless
			// Config.Wait): the worker keeps serving what it holds
			// meanwhile, but a cluster it cannot rejoin ends it.
			join = &joinState{w: w, reg: reg, start: time.Now(), rejoin: true}
			rl.reset()
		}
	}
}

// joinGossip joins the gossip of the registered workers (best effort:
// gossip only gives hints).
func (w *Worker) joinGossip(ctx context.Context, reg *registry.Registry, gossip *membership.Node) {
	set, err := reg.Workers(ctx)
	if err != nil {
		return
	}
	peers := set.GossipAddrs(w.cfg.ID)
	if len(peers) == 0 {
		return
	}
	n, err := gossip.Join(ctx, peers)
	w.log.Debug("gossip join", "peers", peers, "answered", n, "err", err)
}

// followPlacement applies every new placement of the model until ctx ends.
// A reader goroutine keeps only the newest placement, so a slow apply
// (loading many experts) skips placements superseded meanwhile. A failed
// apply is retried with backoff until it succeeds or a newer one arrives.
func (w *Worker) followPlacement(ctx context.Context, reg *registry.Registry, fp string) {
	var (
		mu     sync.Mutex
		latest *cluster.Placement
		wake   = make(chan struct{}, 1)
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		for u := range reg.WatchPlacement(ctx, fp) {
			if u.Placement == nil {
				continue // deleted: keep serving what is held
			}
			mu.Lock()
			latest = u.Placement
			mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	defer func() { <-done }()

	bo := backoff.New(200*time.Millisecond, 5*time.Second)
	var applied *cluster.Placement
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-retry:
		}
		retry = nil
		mu.Lock()
		p := latest
		mu.Unlock()
		if p == nil || p == applied {
			continue
		}
		if err := w.apply(ctx, p); err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.Next()
			w.log.Error("apply placement failed; retrying", "epoch", p.Epoch, "in", d, "err", err)
			retry = time.After(d)
			continue
		}
		bo.Reset()
		applied = p
	}
}

// apply makes the store hold exactly what p gives this worker, never more
// expert bytes than the budget:
//
//   - when the held experts plus the new ones fit the budget (or it is
//     unlimited), load the new experts, then raise the server's epoch
//     (requests routed with older epochs are refused as stale from then
//     on), then drop the experts no longer owned: the old copies serve
//     until the new epoch is in force;
//   - otherwise drop the experts no longer owned first (requests for them
//     are answered NOT_OWNED and move to their new owners), return their
//     memory to the OS, then load, then raise the epoch.
//
// Each load is checked against the budget first (loadWithin); one that
// does not fit fails the apply, which followPlacement retries with
// backoff (the leader's next placement may fit).
func (w *Worker) apply(ctx context.Context, p *cluster.Placement) error {
	t0 := time.Now()
	load, drop := Reconcile(w.store.IDs(), p, w.cfg.ID)
	var need int64
	for _, id := range load {
		need += w.sizeOf(id)
	}
	held := w.store.Bytes()
	dropFirst := w.budget > 0 && held+need > w.budget
	dropAll := func() {
		for _, id := range drop {
			w.store.Delete(id)
		}
	}
	if dropFirst {
		dropAll()
		debug.FreeOSMemory() // make room before loading
	}
	for _, id := range load {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := w.loadWithin(id); err != nil {
			return fmt.Errorf("worker %s: placement epoch %d: %w", w.cfg.ID, p.Epoch, err)
		}
	}
	w.srv.SetEpoch(p.Epoch)
	if !dropFirst {
		dropAll()
	}
	if len(load)+len(drop) > 0 {
		// Expert matrices are megabytes each: return dropped ones and
		// loading garbage to the OS now, so RSS shows what is held.
		debug.FreeOSMemory()
	}
	w.applied.Store(uint64(p.Epoch))
	w.log.Info("placement applied", "epoch", p.Epoch, "loaded", len(load), "dropped", len(drop), "drop_first", dropFirst,
		"held", len(w.store.IDs()), "expert_bytes", w.store.Bytes(), "budget", w.budget, "took", time.Since(t0).Round(time.Millisecond))
	if g := w.reg.Load(); g != nil {
		// Report the new epoch at once (watchers wait for it).
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_ = g.PutStats(sctx, w.Stats())
		cancel()
	}
	return nil
}

// ErrOverBudget is wrapped by the error of a load that would take the
// worker's experts over its budget.
var ErrOverBudget = errors.New("expert memory budget exceeded")

// loadWithin loads expert id into the store unless it is held already,
// after checking that it fits the budget: held bytes + its size <= budget.
// Placement applies and the Control RPC both load through it.
func (w *Worker) loadWithin(id expert.ID) (*expert.FFN, error) {
	w.loadMu.Lock()
	defer w.loadMu.Unlock()
	if f := w.store.Get(id); f != nil {
		return f, nil
	}
	size := w.sizeOf(id)
	if held := w.store.Bytes(); w.budget > 0 && held+size > w.budget {
		return nil, fmt.Errorf("load expert %v (%d bytes): %d expert bytes held (%d experts), budget %d (memory limit %d - runtime reserve %d): %w",
			id, size, held, len(w.store.IDs()), w.budget, w.cfg.MemBytes, RuntimeReserve, ErrOverBudget)
	}
	f, err := w.loadExpert(id)
	if err != nil {
		return nil, fmt.Errorf("load expert %v: %w", id, err)
	}
	w.store.Put(id, f)
	return f, nil
}

// expertSizes is the memory each routed expert of cfg takes once loaded
// from src with opts (model.ExpertBytes).
func expertSizes(cfg *model.Config, src model.Source, opts model.LoadOptions) map[expert.ID]int64 {
	sizes := map[expert.ID]int64{}
	for _, t := range cfg.Tensors() {
		if t.Role == model.RoleExpert {
			if _, ok := sizes[t.Expert]; !ok {
				sizes[t.Expert] = model.ExpertBytes(cfg, src, t.Expert, opts)
			}
		}
	}
	return sizes
}

// Reconcile compares the experts a worker holds with what placement p
// gives worker self, and returns the experts to load and to drop, each in
// (layer, expert) order. Unlike placement.Diff between two placements, it
// compares with what the store really holds, so an expert whose load failed
// under an earlier epoch is loaded again.
func Reconcile(held []expert.ID, p *cluster.Placement, self cluster.WorkerID) (load, drop []expert.ID) {
	want := map[expert.ID]bool{}
	for _, id := range p.Owned(self) {
		want[id] = true
	}
	have := map[expert.ID]bool{}
	for _, id := range held {
		have[id] = true
		if !want[id] {
			drop = append(drop, id)
		}
	}
	for _, id := range p.Owned(self) {
		if !have[id] {
			load = append(load, id)
		}
	}
	slices.SortFunc(load, expert.Compare)
	slices.SortFunc(drop, expert.Compare)
	return load, drop
}

// Stats returns the worker's per-expert token counts (experts that saw
// tokens since the worker started) and the placement epoch it has fully
// applied (experts loaded and dropped, memory returned to the OS; the
// server accepts that epoch slightly earlier, before the drops).
func (w *Worker) Stats() registry.WorkerStats {
	s := registry.WorkerStats{Worker: w.cfg.ID, Model: w.info.Model, Epoch: w.Epoch()}
	if w.srv == nil {
		return s
	}
	snap := w.srv.Snapshot()
	for _, e := range snap.Experts {
		if e.Tokens > 0 {
			s.Tokens = append(s.Tokens, registry.TokenCount{Layer: int(e.Layer), Expert: int(e.Expert), Tokens: e.Tokens})
		}
	}
	return s
}

// advertise returns the gRPC address to register: the configured one, or
// the listener's, with this host's name for an unspecified host.
func advertise(configured, bound string) string {
	if configured != "" {
		return configured
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			return net.JoinHostPort(h, port)
		}
	}
	return bound
}

// concreteIP reports whether addr is IP:port with a specific (not
// unspecified) IP: an address that only one live process can listen on.
func concreteIP(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && !ip.IsUnspecified()
}

// startGossip starts memberlist on cfg.GossipAddr with the worker's meta.
func startGossip(cfg Config, grpcAddr string, key []byte) (*membership.Node, error) {
	host, p, err := net.SplitHostPort(cfg.GossipAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", cfg.GossipAddr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", cfg.GossipAddr, err)
	}
	var gc membership.Config
	switch {
	case cfg.Gossip != nil:
		gc = *cfg.Gossip
	case isLoopback(host):
		gc = membership.LocalConfig(string(cfg.ID))
	default:
		gc = membership.DefaultConfig(string(cfg.ID))
	}
	gc.Name = string(cfg.ID)
	gc.BindAddr, gc.BindPort = host, port
	gc.Meta = membership.Meta{Worker: cfg.ID, Addr: grpcAddr, Protocol: cfg.Protocol, Role: "worker"}
	gc.SecretKey = key
	return membership.Start(gc)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// version is the build's module version or VCS revision (informational).
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	if v := bi.Main.Version; v != "" {
		return v
	}
	return "devel"
}

// ErrUnplaceable is wrapped (with ErrGaveUp) when the worker stopped
// because the leader's verdict said its model cannot be placed, for
// longer than Config.RegisterTimeout, while the worker held no expert.
var ErrUnplaceable = errors.New("model cannot be placed")

// watchVerdict follows the leader's verdict on the model (unless
// Config.Wait): when it has said for RegisterTimeout that the model cannot
// be placed (e.g. the workers' memory falls short; not the start-up wait
// for the expected workers) and this worker holds no expert, it sends one
// clear error to w.fatal, which ends Run. A worker that holds experts
// keeps serving them: the cluster serves what it can (503 naming the
// missing experts) and is not made worse by its leaving.
func (w *Worker) watchVerdict(ctx context.Context, reg *registry.Registry, fp string) {
	var since time.Time
	var why string
	t := time.NewTicker(time.Second)
	defer t.Stop()
	ch := reg.WatchPlacementStatus(ctx, fp)
	for {
		select {
		case <-ctx.Done():
			return
		case st, ok := <-ch:
			if !ok {
				return
			}
			if st != nil && st.Error != "" && !st.Awaiting {
				if since.IsZero() {
					since = time.Now()
					w.log.Warn("the leader says the model cannot be placed", "verdict", st.Error)
				}
				why = st.Error
			} else {
				since = time.Time{}
			}
		case <-t.C:
		}
		if since.IsZero() || time.Since(since) < w.cfg.RegisterTimeout || (w.store != nil && len(w.store.IDs()) > 0) {
			continue
		}
		select {
		case w.fatal <- fmt.Errorf("worker %s: the leader has said for %v that model %s cannot be placed, and this worker holds none of its experts (--register-timeout; --wait keeps waiting): %s: %w: %w",
			w.cfg.ID, time.Since(since).Round(100*time.Millisecond), fp, why, ErrUnplaceable, ErrGaveUp):
		default:
		}
		return
	}
}
