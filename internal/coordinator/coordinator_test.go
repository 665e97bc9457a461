package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/membership"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
)

// tinyModel synthesizes a 2-layer Qwen2-MoE with 8 experts per layer (16
// logical experts) and returns its record.
func tinyModel(t *testing.T) registry.ModelRecord {
	t.Helper()
	dir := t.TempDir()
	hf := map[string]any{
		"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
		"moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": false,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
	if _, err := model.Synthesize(dir, hf, model.SynthOptions{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	rec, err := registry.ModelRecordFromDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

type harness struct {
	t    *testing.T
	ctx  context.Context
	etcd *etcdtest.Cluster
	reg  *registry.Registry // the test's own view ("admin")
	rec  registry.ModelRecord
}

func newHarness(t *testing.T) *harness {
	leakcheck.Check(t)
	h := &harness{t: t, etcd: etcdtest.Start(t), rec: tinyModel(t)}
	var cancel context.CancelFunc
	h.ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	h.reg = h.registry(h.etcd.Client(t))
	if err := h.reg.PutModel(h.ctx, h.rec); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) registry(cli *clientv3.Client) *registry.Registry {
	r, err := registry.New(cli, "test")
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

// running is a coordinator in its own "process": its own client.
type running struct {
	c    *Coordinator
	cli  *clientv3.Client
	stop context.CancelFunc
	done chan error
}

func (h *harness) startCoordinator(name string) *running {
	return h.startWith(Config{Name: name, SessionTTL: time.Second})
}

// startWith starts a coordinator with cfg (its Registry and Logger filled in).
func (h *harness) startWith(cfg Config) *running { return h.startOn(h.etcd.Client(h.t), cfg) }

// startOn is startWith on the client cli.
func (h *harness) startOn(cli *clientv3.Client, cfg Config) *running {
	cfg.Registry = h.registry(cli)
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	r := &running{c: c, cli: cli, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	h.t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// worker registers a fake worker on a client of its own; closing that
// client is a SIGKILL as far as etcd can tell. Like a real worker it
// reports every placement epoch as applied (at once: it loads nothing).
func (h *harness) worker(id string) *clientv3.Client {
	cli, g := h.workerWith(id, 1<<30)
	reg := h.registry(cli)
	go func() {
		for u := range reg.WatchPlacement(h.ctx, h.rec.Fingerprint) {
			if u.Placement != nil {
				g.PutStats(h.ctx, registry.WorkerStats{Model: h.rec.Fingerprint, Epoch: u.Placement.Epoch})
			}
		}
	}()
	return cli
}

// workerWith registers a fake worker offering mem bytes for experts that
// reports nothing by itself.
func (h *harness) workerWith(id string, mem int64) (*clientv3.Client, *registry.Registration) {
	cli := h.etcd.Client(h.t)
	info := cluster.WorkerInfo{ID: cluster.WorkerID(id), Addr: id + ":7000", Protocol: cluster.ProtocolVersion, Model: h.rec.Fingerprint, MemBytes: mem}
	g, err := h.registry(cli).Register(h.ctx, info, time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	return cli, g
}

func (h *harness) waitPlacement(ids ...cluster.WorkerID) *cluster.Placement {
	h.t.Helper()
	// A transitional placement (two owners of a moving expert) is passed
	// over: this waits for the final one.
	final := func(p *cluster.Placement) bool {
		for _, x := range h.rec.PlacementExperts() {
			if len(p.OwnersOf(x.ID)) != 1 {
				return false
			}
		}
		return registry.OnWorkers(ids...)(p)
	}
	p, _, err := h.reg.WaitPlacement(h.ctx, h.rec.Fingerprint, final)
	if err != nil {
		h.t.Fatal(err)
	}
	if len(p.Owned(ids[0])) == 0 {
		h.t.Fatalf("worker %s owns nothing", ids[0])
	}
	for _, x := range h.rec.PlacementExperts() {
		if len(p.OwnersOf(x.ID)) != 1 {
			h.t.Fatalf("expert %v owners %v", x.ID, p.OwnersOf(x.ID))
		}
	}
	return p
}

// waitOneLeader waits until exactly one of rs leads and returns it.
func waitOneLeader(t *testing.T, ctx context.Context, rs ...*running) *running {
	t.Helper()
	for {
		var leaders []*running
		var chans []<-chan struct{}
		for _, r := range rs {
			l, ch := r.c.Leading()
			if l {
				leaders = append(leaders, r)
			}
			chans = append(chans, ch)
		}
		if len(leaders) > 1 {
			t.Fatalf("%d leaders at once", len(leaders))
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		// Wait for any change (two coordinators here).
		select {
		case <-chans[0]:
		case <-chans[len(chans)-1]:
		case <-ctx.Done():
			t.Fatal("no leader elected")
		}
	}
}

func counts(p *cluster.Placement) string {
	c := placement.Counts(p)
	s := ""
	for _, id := range p.WorkerIDs() {
		s += fmt.Sprintf(" %s=%d", id, c[id])
	}
	return s
}

// TestFailoverJoinAndExpiry tells the story of the issue: two coordinators,
// one leads; workers join and get every expert; the leader dies and the
// other takes over; a worker joins and receives its share; a worker is
// killed and, within its lease TTL, its experts move to the survivors.
func TestFailoverJoinAndExpiry(t *testing.T) {
	h := newHarness(t)
	c1 := h.startCoordinator("c1")
	c2 := h.startCoordinator("c2")
	leader := waitOneLeader(t, h.ctx, c1, c2)
	other := c2
	if leader == c2 {
		other = c1
	}
	t.Logf("%s leads", leader.c.cfg.Name)

	w1 := h.worker("w1")
	h.worker("w2")
	p := h.waitPlacement("w1", "w2")
	t.Logf("epoch %d:%s", p.Epoch, counts(p))

	// The leader's process dies: no resign, its session lease expires.
	start := time.Now()
	leader.cli.Close()
	if err := other.c.WaitLeading(h.ctx, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s took over after %v", other.c.cfg.Name, time.Since(start))
	if err := <-leader.done; err == nil {
		t.Error("dead coordinator's Run returned nil")
	}
	leader.done <- nil // for the cleanup

	// A third worker joins: it receives a balanced share (16 = 6+5+5) and
	// nobody else gains anything.
	h.worker("w3")
	p3 := h.waitPlacement("w1", "w2", "w3")
	ch := placement.Diff(p, p3)
	t.Logf("epoch %d:%s (+%d -%d)", p3.Epoch, counts(p3), len(ch.Added), len(ch.Removed))
	if n := len(p3.Owned("w3")); n != 5 || p3.Epoch <= p.Epoch {
		t.Fatalf("w3 owns %d experts at epoch %d", n, p3.Epoch)
	}
	for _, cp := range ch.Added {
		if cp.Worker != "w3" {
			t.Fatalf("join moved %v to %s", cp.Expert, cp.Worker)
		}
	}

	// w1 is killed: its lease (1 s) expires and its experts move.
	lost := len(p3.Owned("w1"))
	start = time.Now()
	w1.Close()
	p4 := h.waitPlacement("w2", "w3")
	took := time.Since(start)
	ch = placement.Diff(p3, p4)
	t.Logf("w1 killed: re-placed after %v, epoch %d:%s (+%d -%d)", took, p4.Epoch, counts(p4), len(ch.Added), len(ch.Removed))
	if took > 5*time.Second { // TTL 1 s + expiry scan + watch + write, with slack
		t.Errorf("re-placement took %v with a 1 s lease", took)
	}
	if p4.Epoch != p3.Epoch+1 || len(ch.Added) != lost || len(ch.Removed) != lost {
		t.Fatalf("epoch %d -> %d, change +%d -%d for %d lost", p3.Epoch, p4.Epoch, len(ch.Added), len(ch.Removed), lost)
	}

	// Graceful stop: the leader resigns, leaving no election key.
	other.stop()
	if err := <-other.done; err != nil {
		t.Fatal(err)
	}
	other.done <- nil
	resp, err := h.reg.Client().Get(h.ctx, h.reg.LeaderPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("election keys left: %v %v", resp, err)
	}
	// Nothing changed meanwhile: the placement stayed at p4's epoch.
	cur, _, err := h.reg.Placement(h.ctx, h.rec.Fingerprint)
	if err != nil || cur.Epoch != p4.Epoch {
		t.Fatalf("placement moved on without changes: %v %v", cur, err)
	}
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// TestGossipHintsAreNotAuthority: the leader joins the workers' gossip; a
// worker whose gossip dies while its lease lives makes the leader re-read
// etcd, but the placement stays (etcd is the authority). Once the lease
// expires its experts move.
func TestGossipHintsAreNotAuthority(t *testing.T) {
	h := newHarness(t)
	gcfg := membership.LocalConfig("coordinator/c1")
	cg, err := membership.Start(gcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cg.Shutdown() })

	cli := h.etcd.Client(t)
	// Both workers are expected: the first is not placed alone (and its
	// fake worker, reporting no epochs, never holds up a migration).
	c, err := New(Config{Registry: h.registry(cli), Name: "c1", SessionTTL: time.Second, Gossip: cg, ExpectWorkers: 2})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	var clients []*clientv3.Client
	var gossip []*membership.Node
	for _, id := range []string{"w1", "w2"} {
		g, err := membership.Start(membership.LocalConfig(id))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Shutdown() })
		gossip = append(gossip, g)
		wcli := h.etcd.Client(t)
		info := cluster.WorkerInfo{ID: cluster.WorkerID(id), Addr: id + ":7000", GossipAddr: g.Addr(), Protocol: cluster.ProtocolVersion, Model: h.rec.Fingerprint}
		if _, err := h.registry(wcli).Register(h.ctx, info, time.Second); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, wcli)
	}
	p := h.waitPlacement("w1", "w2")
	waitFor(t, 5*time.Second, "coordinator gossip to see both workers", func() bool { return len(cg.Members()) == 3 })

	// w1's gossip dies; its lease lives on.
	gossip[0].Shutdown()
	waitFor(t, 10*time.Second, "a gossip-triggered re-read", func() bool { return c.Counters().Rechecks > 0 })
	cur, _, err := h.reg.Placement(h.ctx, h.rec.Fingerprint)
	if err != nil || cur.Epoch != p.Epoch {
		t.Fatalf("a gossip hint changed the placement: epoch %d -> %v (%v)", p.Epoch, cur, err)
	}
	// The process really dies: lease expiry moves its experts.
	clients[0].Close()
	p2 := h.waitPlacement("w2")
	if p2.Epoch != p.Epoch+1 || len(p2.Owned("w2")) != 16 {
		t.Fatalf("after expiry: epoch %d, w2 owns %d", p2.Epoch, len(p2.Owned("w2")))
	}
	// The placement is visible in etcd just before the runner counts its
	// write: wait for the count rather than read it once.
	waitFor(t, 5*time.Second, "the second write to be counted", func() bool { return c.Counters().Writes >= 2 })
	if n := c.Counters(); n.Terms != 1 {
		t.Fatalf("counters %+v", n)
	}
}

// waitStatus watches the model's placement status until cond accepts one.
func (h *harness) waitStatus(what string, cond func(*registry.PlacementStatus) bool) *registry.PlacementStatus {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	var last *registry.PlacementStatus
	for s := range h.reg.WatchPlacementStatus(ctx, h.rec.Fingerprint) {
		if s != nil && cond(s) {
			return s
		}
		last = s
	}
	h.t.Fatalf("no placement status %s; last %+v", what, last)
	return nil
}

// TestStartupGraceAndStatus: with --expect-workers 2 the first placement
// waits for the second worker; the leader publishes its verdict; when a
// worker dies and the survivor cannot hold its experts, the placement
// stays, nobody is overloaded, and the status says what is short and which
// experts are lost.
func TestStartupGraceAndStatus(t *testing.T) {
	h := newHarness(t)
	c := h.startWith(Config{Name: "c1", SessionTTL: time.Second, ExpectWorkers: 2, PlacementGrace: time.Minute})
	if err := c.c.WaitLeading(h.ctx, true); err != nil {
		t.Fatal(err)
	}
	eb := h.rec.ExpertBytes
	h.workerWith("w1", 10*eb) // room for 10 of the 16 experts
	_, g2 := h.workerWith("w2", 10*eb)
	p := h.waitPlacement("w1", "w2")
	if p.Epoch != 1 {
		t.Fatalf("first placement on both workers at epoch %d: the first worker was placed alone", p.Epoch)
	}
	s := h.waitStatus("ok at epoch 1", func(s *registry.PlacementStatus) bool { return s.OK && s.Epoch == 1 })
	t.Logf("status: %+v", s)

	lost := p.Owned("w2")
	g2.Abandon()
	s = h.waitStatus("short of memory", func(s *registry.PlacementStatus) bool { return !s.OK && s.NeedBytes > 0 })
	t.Logf("status after w2 died: %+v", s)
	if s.NeedBytes != 16*eb || s.HaveBytes != 10*eb || s.Epoch != 1 || fmt.Sprint(s.Unplaced) != fmt.Sprint(lost) ||
		!strings.Contains(s.Error, "insufficient worker memory") || s.Time.IsZero() {
		t.Fatalf("status %+v, lost %v", s, lost)
	}
	cur, _, err := h.reg.Placement(h.ctx, h.rec.Fingerprint)
	if err != nil || cur.Epoch != 1 {
		t.Fatalf("placement moved: %+v %v", cur, err)
	}
}

// TestMakeBeforeBreak: a joining worker is given its share in a
// transitional placement that keeps the old copies (after it as owner);
// the old copies go only once it reports the epoch applied, or, for a
// worker that never reports, once the migration wait runs out.
func TestMakeBeforeBreak(t *testing.T) {
	t.Run("loaded", func(t *testing.T) {
		h := newHarness(t)
		c := h.startCoordinator("c1")
		h.worker("w1")
		h.worker("w2")
		p := h.waitPlacement("w1", "w2")
		_, g3 := h.workerWith("w3", 1<<30)
		tr, _, err := h.reg.WaitPlacement(h.ctx, h.rec.Fingerprint, func(q *cluster.Placement) bool { return len(q.Owned("w3")) > 0 })
		if err != nil {
			t.Fatal(err)
		}
		moved := tr.Owned("w3")
		t.Logf("transitional epoch %d:%s", tr.Epoch, counts(tr))
		if tr.Epoch != p.Epoch+1 || len(moved) != 5 {
			t.Fatalf("transitional epoch %d, w3 owns %v", tr.Epoch, moved)
		}
		for _, x := range moved {
			if got := tr.OwnersOf(x); len(got) != 2 || got[0] != "w3" || got[1] != p.OwnersOf(x)[0] {
				t.Fatalf("expert %v owners %v, before %v", x, got, p.OwnersOf(x))
			}
		}
		// Nothing more happens until w3 reports (the wait is a minute).
		if err := g3.PutStats(h.ctx, registry.WorkerStats{Model: h.rec.Fingerprint, Epoch: tr.Epoch}); err != nil {
			t.Fatal(err)
		}
		fin := h.waitPlacement("w1", "w2", "w3")
		t.Logf("final epoch %d:%s", fin.Epoch, counts(fin))
		if fin.Epoch != tr.Epoch+1 || fmt.Sprint(fin.Owned("w3")) != fmt.Sprint(moved) {
			t.Fatalf("final epoch %d, w3 owns %v", fin.Epoch, fin.Owned("w3"))
		}
		if n := c.c.Counters(); n.Transitions < 1 || n.MigrationTimeouts != 0 {
			t.Fatalf("counters %+v", n)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		h := newHarness(t)
		c := h.startWith(Config{Name: "c1", SessionTTL: time.Second, MigrationWait: 300 * time.Millisecond})
		h.worker("w1")
		p := h.waitPlacement("w1")
		// The clock starts before w2 registers: the coordinator may publish
		// the transitional epoch, and so start its MigrationWait, before
		// workerWith returns (a start taken after it measured 299.8 ms once).
		start := time.Now()
		h.workerWith("w2", 1<<30) // never reports an epoch
		fin := h.waitPlacement("w1", "w2")
		t.Logf("final epoch %d after %v:%s", fin.Epoch, time.Since(start).Round(time.Millisecond), counts(fin))
		if fin.Epoch != p.Epoch+2 || time.Since(start) < 300*time.Millisecond {
			t.Fatalf("final epoch %d after %v", fin.Epoch, time.Since(start))
		}
		waitFor(t, 5*time.Second, "the timeout to be counted", func() bool { return c.c.Counters().MigrationTimeouts == 1 })
	})
}

// TestLeaderKeepsItsTermThroughStalledRenewals: a leader whose election
// renewals go unanswered for a TTL while etcd keeps its lease alive (an
// etcd member holding them while etcd's own raft leader changes,
// scripts/chaos.sh isolate-etcd-leader) keeps its term: it leads on under
// the same key, the other coordinator never leads, and LeaseResumes counts
// it. When etcd did let the lease expire meanwhile, the other coordinator
// takes over and the first steps down once it hears from etcd again.
// Coordinator a reaches a real etcd through a loopback proxy that stalls
// every byte on demand; a second client renews a's lease meanwhile.
func TestLeaderKeepsItsTermThroughStalledRenewals(t *testing.T) {
	h := newHarness(t)
	px := etcdtest.StartStallProxy(t, strings.TrimPrefix(h.etcd.Endpoints[0], "http://"))
	cli, err := registry.DialTLS(h.ctx, []string{"http://" + px.Addr()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	const ttl = time.Second
	a := h.startOn(cli, Config{Name: "a", SessionTTL: ttl})
	if err := a.c.WaitLeading(h.ctx, true); err != nil {
		t.Fatal(err)
	}
	b := h.startCoordinator("b")
	direct := h.etcd.Client(t)
	leader := func() *mvccpb.KeyValue {
		t.Helper()
		resp, err := direct.Get(h.ctx, h.reg.LeaderPrefix()+"/", clientv3.WithFirstCreate()...)
		if err != nil || len(resp.Kvs) == 0 {
			t.Fatalf("leader key: %v %v", resp, err)
		}
		return resp.Kvs[0]
	}
	first := leader()
	if string(first.Value) != "a" {
		t.Fatalf("leader key %s holds %q, want a", first.Key, first.Value)
	}
	lease := clientv3.LeaseID(first.Lease)
	waitFor(t, 10*time.Second, "b campaigning (its key under the prefix)", func() bool {
		resp, err := direct.Get(h.ctx, h.reg.LeaderPrefix()+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2
	})

	// Phase 1: stalled while direct renews the lease. a's client gives up
	// after a TTL (Stalled), the stall ends, and a finds its lease alive.
	stopRenewing := etcdtest.RenewLease(t, direct, lease, ttl)
	px.Stall(true)
	waitFor(t, 20*ttl, "a's renewals to stall", func() bool {
		k := a.c.term.Load()
		return k != nil && k.Stalled()
	})
	px.Stall(false)
	waitFor(t, 20*ttl, "a to resume its election lease", func() bool {
		if l, _ := a.c.Leading(); !l {
			t.Fatal("a stopped leading although etcd kept its lease")
		}
		return a.c.Counters().LeaseResumes == 1
	})
	stopRenewing()
	if n := a.c.Counters().Terms; n != 1 {
		t.Fatalf("a began %d terms, want 1", n)
	}
	if n := b.c.Counters().Terms; n != 0 {
		t.Fatalf("b led %d times while a's lease lived", n)
	}
	if now := leader(); string(now.Key) != string(first.Key) || now.CreateRevision != first.CreateRevision {
		t.Fatalf("leader key %s@%d, want a's %s@%d", now.Key, now.CreateRevision, first.Key, first.CreateRevision)
	}
	// a renews on its own again: it leads under the same key for 3 TTLs.
	etcdtest.Holds(t, 3*ttl, func() error {
		if l, _ := a.c.Leading(); !l || b.c.Counters().Terms != 0 || leader().CreateRevision != first.CreateRevision {
			return fmt.Errorf("after the stall: a leading %v, b terms %d", l, b.c.Counters().Terms)
		}
		return nil
	})

	// Phase 2: stalled until etcd drops the lease; b takes over, and a,
	// which cannot hear etcd, steps down once the stall ends.
	px.Stall(true)
	if err := b.c.WaitLeading(h.ctx, true); err != nil {
		t.Fatalf("b never took over from a cut-off leader: %v", err)
	}
	px.Stall(false)
	if err := a.c.WaitLeading(h.ctx, false); err != nil {
		t.Fatalf("a kept leading after etcd dropped its lease: %v", err)
	}
	if n := a.c.Counters().LeaseResumes; n != 1 {
		t.Fatalf("a resumed %d times, want 1 (the dropped lease is not resumed)", n)
	}
}
