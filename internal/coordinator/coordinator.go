package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/membership"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
)

// DefaultSessionTTL is the lease TTL of a coordinator's election session:
// when a leader process dies, another takes over within about this time.
// etcd's client renews the lease every third of it; a leader whose
// renewals went unanswered for the whole TTL asks etcd whether the lease
// still lives (registry.LeaseKeeper), leads on if it does (renewals held
// by an etcd member while etcd's own raft leader changed), and otherwise
// (a starved or cut-off process whose lease ran out) ends its term and
// campaigns again. Fenced writes keep the time in between safe, and the
// health probes evict nobody while the answer is pending.
const DefaultSessionTTL = 3 * time.Second

// DefaultPlacementGrace is how long a new leader waits for ExpectWorkers
// before placing a model that has no placement yet on the workers there are.
const DefaultPlacementGrace = 10 * time.Second

// DefaultMigrationWait bounds make-before-break: how long a transitional
// placement waits for the workers loading new copies to report them
// applied before the old copies are dropped anyway. Loading an expert is
// reading its three matrices from the checkpoint: seconds for large models.
const DefaultMigrationWait = 60 * time.Second

// Config configures a Coordinator.
type Config struct {
	// Registry is the cluster's control state (required).
	Registry *registry.Registry
	// Name identifies this coordinator in the election (its value) and logs.
	Name string
	// SessionTTL is the election lease TTL (whole seconds; 0 means
	// DefaultSessionTTL).
	SessionTTL time.Duration
	// Replicas is R, copies of each expert on distinct workers (0 means 1).
	Replicas int
	// ExpectWorkers is the start-up grace: a model with no stored placement
	// yet is first placed once at least this many of its workers are
	// registered, or PlacementGrace after this coordinator became leader,
	// whichever comes first; so the first worker to register is not handed
	// every expert. 0 places at once, on the first worker. Once a placement
	// exists, changes are written at once.
	ExpectWorkers int
	// PlacementGrace bounds the wait for ExpectWorkers (0 means
	// DefaultPlacementGrace; unused when ExpectWorkers is 0).
	PlacementGrace time.Duration
	// MigrationWait bounds make-before-break: when a new placement gives
	// live workers copies to load, a transitional placement keeping the old
	// copies is written first, and the final one (dropping them) once the
	// loading workers report the epoch applied (in their stats) or after
	// MigrationWait. 0 means DefaultMigrationWait; negative turns
	// make-before-break off (old copies drop in the same write).
	MigrationWait time.Duration
	// Gossip, if set, is a running membership node of this coordinator.
	// While leading, the coordinator joins the gossip addresses of the
	// registered workers, and treats failure and leave events as hints to
	// re-read the workers from etcd at once. etcd stays the authority: a
	// hint never removes a worker whose lease is alive.
	Gossip *membership.Node
	// Probe, if set, makes the leader probe every registered worker every
	// ProbeInterval (each probe bounded by ProbeTimeout) and revoke the
	// lease of a worker that answered none for EvictAfter while others
	// answered (see probe.go; NewHealthProbe makes one). Nil: no probes,
	// a worker is gone when its lease runs out.
	Probe Prober
	// ProbeInterval, ProbeTimeout and EvictAfter tune Probe (0 means
	// DefaultProbeInterval, DefaultProbeTimeout, DefaultEvictAfter).
	ProbeInterval, ProbeTimeout, EvictAfter time.Duration
	// Logger receives one line per decision (nil discards).
	Logger *slog.Logger
}

// errStepDown is returned inside the runner when a fenced write shows the
// leadership is gone.
var errStepDown = errors.New("coordinator: leadership lost")

// Coordinator campaigns for leadership and, while leading, keeps every
// registered model's placement up to date. Several may run against one
// cluster; only the leader writes.
type Coordinator struct {
	cfg Config
	reg *registry.Registry
	log *slog.Logger

	mu      sync.Mutex
	leading bool
	changed chan struct{} // closed and replaced on every leadership change

	recheck chan struct{} // coalesced gossip hints

	terms, writes, rechecks, transitions, migrationTimeouts, evictions, leaseResumes atomic.Int64

	term atomic.Pointer[registry.LeaseKeeper] // the election lease while leading, else nil

	met *metrics
}

// Counters are a coordinator's activity since it started.
type Counters struct {
	Terms             int64 // times it became leader
	Writes            int64 // placements written
	Rechecks          int64 // worker re-reads triggered by gossip hints
	Transitions       int64 // of Writes, transitional (make-before-break) placements
	MigrationTimeouts int64 // migration waits that ran out before the loads were reported
	Evictions         int64 // worker leases revoked after failed health probes (Config.Probe)
	LeaseResumes      int64 // terms kept through renewals unanswered for a TTL (etcd held the lease)
}

// Counters returns the activity counters.
func (c *Coordinator) Counters() Counters {
	return Counters{Terms: c.terms.Load(), Writes: c.writes.Load(), Rechecks: c.rechecks.Load(),
		Transitions: c.transitions.Load(), MigrationTimeouts: c.migrationTimeouts.Load(), Evictions: c.evictions.Load(),
		LeaseResumes: c.leaseResumes.Load()}
}

// New validates cfg and returns a coordinator; Run starts it.
func New(cfg Config) (*Coordinator, error) {
	var errs []error
	if cfg.Registry == nil {
		errs = append(errs, errors.New("nil Registry"))
	}
	if cfg.Name == "" {
		errs = append(errs, errors.New("empty Name"))
	}
	if cfg.ProbeInterval < 0 || cfg.ProbeTimeout < 0 || cfg.EvictAfter < 0 {
		errs = append(errs, fmt.Errorf("ProbeInterval %v, ProbeTimeout %v, EvictAfter %v: must not be negative", cfg.ProbeInterval, cfg.ProbeTimeout, cfg.EvictAfter))
	}
	if cfg.SessionTTL < 0 || cfg.Replicas < 0 || cfg.ExpectWorkers < 0 || cfg.PlacementGrace < 0 {
		errs = append(errs, fmt.Errorf("SessionTTL %v, Replicas %d, ExpectWorkers %d, PlacementGrace %v: must not be negative",
			cfg.SessionTTL, cfg.Replicas, cfg.ExpectWorkers, cfg.PlacementGrace))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.PlacementGrace == 0 {
		cfg.PlacementGrace = DefaultPlacementGrace
	}
	if cfg.MigrationWait == 0 {
		cfg.MigrationWait = DefaultMigrationWait
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.EvictAfter == 0 {
		cfg.EvictAfter = DefaultEvictAfter
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Coordinator{
		cfg:     cfg,
		reg:     cfg.Registry,
		log:     lg.With("coordinator", cfg.Name),
		changed: make(chan struct{}),
		recheck: make(chan struct{}, 1),
	}
	c.met = newMetrics(c)
	c.met.awaitLoads = cfg.MigrationWait > 0 // the leader then watches the workers' stats
	return c, nil
}

// Leading reports whether this coordinator leads now, and a channel closed
// at the next change of that.
func (c *Coordinator) Leading() (bool, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading, c.changed
}

// WaitLeading blocks until this coordinator leads (want true) or follows
// (want false), or ctx ends.
func (c *Coordinator) WaitLeading(ctx context.Context, want bool) error {
	for {
		now, ch := c.Leading()
		if now == want {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("coordinator %s: wait for leading=%v: %w", c.cfg.Name, want, ctx.Err())
		}
	}
}

func (c *Coordinator) setLeading(v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leading != v {
		c.leading = v
		close(c.changed)
		c.changed = make(chan struct{})
	}
}

// Run campaigns and leads until ctx ends, then resigns (so another
// coordinator takes over at once) and returns nil. If the etcd client is
// closed under it (the process is going away), Run returns an error
// without resigning; the leader lease then expires after SessionTTL.
func (c *Coordinator) Run(ctx context.Context) error {
	cli := c.reg.Client()
	if c.cfg.Gossip != nil {
		gctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go c.drainGossip(gctx)
	}
	ttl := int(math.Ceil(c.cfg.SessionTTL.Seconds()))
	retry := time.Duration(0)
	for {
		if ctx.Err() != nil {
			return nil
		}
		if cli.Ctx().Err() != nil {
			return fmt.Errorf("coordinator %s: etcd client closed", c.cfg.Name)
		}
		if retry > 0 {
			t := time.NewTimer(retry)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
		}
		retry = min(max(2*retry, 100*time.Millisecond), 2*time.Second)
		sess, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
		if err != nil {
			c.log.Warn("election session", "err", err)
			continue
		}
		el := concurrency.NewElection(sess, c.reg.LeaderPrefix())
		// Campaign until won, the session dies, or ctx ends.
		cctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(sess.Ctx(), cancel)
		err = el.Campaign(cctx, c.cfg.Name)
		stop()
		cancel()
		if err != nil {
			c.closeSession(sess)
			if ctx.Err() == nil {
				c.log.Warn("campaign", "err", err)
			}
			continue
		}
		retry = 0
		c.log.Info("leading", "key", el.Key(), "rev", el.Rev())
		c.terms.Add(1)
		c.setLeading(true)
		keep := registry.KeepLease(cli, sess, time.Duration(ttl)*time.Second)
		c.term.Store(keep)
		err = c.lead(ctx, keep, el)
		c.term.Store(nil)
		c.setLeading(false)
		c.log.Info("stopped leading", "err", err)
		c.resign(keep, el)
	}
}

// closeSession revokes a session's lease (bounded by its TTL), or leaves
// it to expire when the client is gone.
func (c *Coordinator) closeSession(sess *concurrency.Session) {
	if c.reg.Client().Ctx().Err() != nil {
		sess.Orphan()
		return
	}
	sess.Close()
}

// resign ends a term: it deletes the leader key (when the client works;
// bounded so shutdown cannot hang) and revokes the session's lease.
func (c *Coordinator) resign(keep *registry.LeaseKeeper, el *concurrency.Election) {
	if c.reg.Client().Ctx().Err() != nil {
		keep.Abandon() // client gone: the lease expires on its own
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := el.Resign(ctx); err != nil {
		c.log.Warn("resign", "err", err)
	}
	keep.Close()
}

func (c *Coordinator) drainGossip(ctx context.Context) {
	for {
		select {
		case ev, ok := <-c.cfg.Gossip.Events():
			if !ok {
				return
			}
			if ev.Kind == membership.Failed || ev.Kind == membership.Leave {
				select {
				case c.recheck <- struct{}{}:
				default:
				}
			}
		case <-ctx.Done():
			return
		}
	}
}

// lead runs one term: it feeds Core from watches and executes its actions
// until ctx ends, the election lease is lost, or a fenced write is
// refused.
func (c *Coordinator) lead(ctx context.Context, keep *registry.LeaseKeeper, el *concurrency.Election) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(keep.Ctx(), cancel)
	defer stop()

	fence := registry.FenceOf(el)
	defer c.met.follow()
	mbb := c.cfg.MigrationWait > 0
	core := NewCore(CoreConfig{Replicas: c.cfg.Replicas, ExpectWorkers: c.cfg.ExpectWorkers, MakeBeforeBreak: mbb})
	workers := c.reg.WatchWorkers(lctx)
	models := c.reg.WatchModels(lctx)
	var stats <-chan []registry.WorkerStats // applied epochs, for make-before-break
	if mbb {
		stats = c.reg.WatchStats(lctx)
	}
	var grace <-chan time.Time
	if c.cfg.ExpectWorkers > 0 {
		t := time.NewTimer(c.cfg.PlacementGrace)
		defer t.Stop()
		grace = t.C
	}
	placements := make(chan PlacementObserved)
	timeouts := make(chan MigrationTimedOut)
	watching := map[string]context.CancelFunc{}
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	joined := map[string]bool{}
	var applied map[cluster.WorkerID]appliedEpoch // last sent to Core
	var probes *prober
	if c.cfg.Probe != nil {
		probes = newProber(lctx, c, keep)
		defer probes.stop()
	}

	queue := []Event{LeadershipChanged{Leader: true}}
	for {
		for len(queue) > 0 {
			ev := queue[0]
			queue = queue[1:]
			for _, act := range core.Step(ev) {
				next, err := c.act(lctx, fence, act)
				if err != nil {
					return err
				}
				if w, ok := act.(WritePlacement); ok && len(w.Await) > 0 && wrote(next) {
					c.transitions.Add(1)
					c.migrationTimer(lctx, &wg, MigrationTimedOut{Model: w.Placement.Model, Epoch: w.Placement.Epoch}, timeouts)
				}
				queue = append(queue, next...)
			}
		}
		select {
		case <-lctx.Done():
			if ctx.Err() != nil {
				return nil
			}
			return errors.New("election lease lost")
		case d := <-keep.Resumed():
			c.leaseResumes.Add(1)
			c.log.Warn("election lease: renewals went unanswered, but etcd kept the lease; leading on", "without_renewal", d.Round(time.Millisecond))
		case set, ok := <-workers:
			if !ok {
				return errors.New("worker watch closed")
			}
			queue = append(queue, WorkersChanged{Workers: set.Workers, Rev: set.Rev})
			c.met.workers(set.Workers, time.Now())
			c.joinGossip(lctx, &wg, set, joined)
			if probes != nil {
				probes.update(set)
			}
		case recs, ok := <-models:
			if !ok {
				return errors.New("model watch closed")
			}
			for _, rec := range recs {
				if watching[rec.Fingerprint] != nil {
					continue
				}
				wctx, wcancel := context.WithCancel(lctx)
				watching[rec.Fingerprint] = wcancel
				wg.Add(1)
				go func(fp string) {
					defer wg.Done()
					for u := range c.reg.WatchPlacement(wctx, fp) {
						select {
						case placements <- PlacementObserved{Model: fp, Placement: u.Placement, Rev: u.Rev}:
						case <-wctx.Done():
							return
						}
					}
				}(rec.Fingerprint)
			}
			queue = append(queue, ModelsChanged{Models: recs})
		case ev := <-placements:
			c.met.observed(ev.Placement)
			queue = append(queue, ev)
		case <-grace:
			grace = nil
			c.log.Info("placement grace over", "expect_workers", c.cfg.ExpectWorkers, "grace", c.cfg.PlacementGrace)
			queue = append(queue, GraceExpired{})
		case set, ok := <-stats:
			if !ok {
				return errors.New("stats watch closed")
			}
			// Token counters change every few seconds; Core only needs the
			// applied epochs, so only their changes reach it.
			c.met.applied(set, time.Now())
			now := make(map[cluster.WorkerID]appliedEpoch, len(set))
			for _, s := range set {
				now[s.Worker] = appliedEpoch{model: s.Model, epoch: s.Epoch}
			}
			if applied == nil || !maps.Equal(now, applied) {
				applied = now
				queue = append(queue, StatsChanged{Stats: set})
			}
		case ev := <-timeouts:
			if epoch, waiting := core.Migration(ev.Model); epoch == ev.Epoch && len(waiting) > 0 {
				c.migrationTimeouts.Add(1)
				c.log.Warn("migration wait over; dropping old copies anyway", "model", ev.Model, "epoch", ev.Epoch,
					"wait", c.cfg.MigrationWait, "not_loaded", waiting)
			}
			queue = append(queue, ev)
		case <-c.recheck:
			set, err := c.reg.Workers(lctx)
			if err == nil {
				c.rechecks.Add(1)
				c.log.Info("gossip hint: re-read workers", "workers", set.IDs())
				queue = append(queue, WorkersChanged{Workers: set.Workers, Rev: set.Rev})
				c.met.workers(set.Workers, time.Now())
			}
		}
	}
}

// wrote reports whether a WritePlacement's events say it landed.
func wrote(evs []Event) bool {
	for _, ev := range evs {
		if _, ok := ev.(WriteDone); ok {
			return true
		}
	}
	return false
}

// migrationTimer feeds ev back after MigrationWait (unless the term ends).
func (c *Coordinator) migrationTimer(ctx context.Context, wg *sync.WaitGroup, ev MigrationTimedOut, out chan<- MigrationTimedOut) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTimer(c.cfg.MigrationWait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		select {
		case out <- ev:
		case <-ctx.Done():
		}
	}()
}

// act carries out one action and returns the events it produced.
func (c *Coordinator) act(ctx context.Context, fence registry.Fence, a Action) ([]Event, error) {
	switch a := a.(type) {
	case Report:
		return c.report(ctx, fence, a)
	case WritePlacement:
		p := a.Placement
		rev, err := c.reg.WritePlacement(ctx, fence, &p, a.ExpectRev)
		switch {
		case err == nil:
			c.writes.Add(1)
			c.met.wrote(&p, len(a.Await) > 0, c.cfg.Replicas, time.Now())
			if len(a.Await) > 0 {
				c.log.Info("transitional placement written", "model", p.Model, "epoch", p.Epoch, "workers", p.WorkerIDs(),
					"added", len(a.Change.Added), "removed", len(a.Change.Removed), "loading", a.Await, "rev", rev)
			} else {
				c.log.Info("placement written", "model", p.Model, "epoch", p.Epoch, "workers", p.WorkerIDs(),
					"added", len(a.Change.Added), "removed", len(a.Change.Removed), "rev", rev)
			}
			return []Event{WriteDone{Placement: p, Rev: rev}}, nil
		case errors.Is(err, registry.ErrNotLeader):
			return nil, fmt.Errorf("%w: %v", errStepDown, err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		c.log.Warn("placement write failed; re-reading", "model", p.Model, "epoch", p.Epoch, "err", err)
		// Re-read (the watch may also show the winner's write; Core keeps
		// the newest). A transient error is retried after a pause.
		if !errors.Is(err, registry.ErrPlacementConflict) {
			t := time.NewTimer(500 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			}
		}
		evs := []Event{WriteFailed{Model: p.Model, Err: err}}
		if cur, curRev, rerr := c.reg.Placement(ctx, p.Model); rerr == nil {
			evs = append(evs, PlacementObserved{Model: p.Model, Placement: cur, Rev: curRev})
		}
		return evs, nil
	}
	return nil, fmt.Errorf("coordinator: unknown action %T", a)
}

// report logs a verdict and stores it as the model's placement status.
func (c *Coordinator) report(ctx context.Context, fence registry.Fence, a Report) ([]Event, error) {
	s := a.Status
	s.Time = time.Now().UTC()
	switch {
	case a.Err == nil:
		c.log.Info("placement ok", "model", a.Model, "epoch", s.Epoch)
	case errors.Is(a.Err, ErrAwaitingWorkers):
		c.log.Info("placement waits for workers", "model", a.Model, "err", a.Err)
	case errors.Is(a.Err, placement.ErrNoWorkers):
		c.log.Warn("cannot place model: no workers", "model", a.Model, "epoch", s.Epoch, "unplaced", len(s.Unplaced))
	default:
		c.log.Error("cannot place model", "model", a.Model, "need_bytes", s.NeedBytes, "have_bytes", s.HaveBytes,
			"epoch", s.Epoch, "unplaced", s.Unplaced, "err", a.Err)
	}
	err := c.reg.PutPlacementStatus(ctx, fence, s)
	switch {
	case err == nil:
		return nil, nil
	case errors.Is(err, registry.ErrNotLeader):
		return nil, fmt.Errorf("%w: %v", errStepDown, err)
	case ctx.Err() != nil:
		return nil, ctx.Err()
	}
	c.log.Warn("placement status write failed; retrying", "model", a.Model, "err", err)
	t := time.NewTimer(500 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return []Event{ReportFailed{Model: a.Model}}, nil
}

// joinGossip joins, in the background, the gossip addresses of workers not
// joined before (best effort: gossip only gives hints).
func (c *Coordinator) joinGossip(ctx context.Context, wg *sync.WaitGroup, set registry.WorkerSet, joined map[string]bool) {
	if c.cfg.Gossip == nil {
		return
	}
	var peers []string
	for _, w := range set.Workers {
		if w.GossipAddr != "" && !joined[w.GossipAddr] {
			joined[w.GossipAddr] = true
			peers = append(peers, w.GossipAddr)
		}
	}
	if len(peers) == 0 {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := c.cfg.Gossip.Join(ctx, peers); err != nil {
			c.log.Warn("gossip join", "peers", peers, "err", err)
		}
	}()
}
