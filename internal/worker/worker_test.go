package worker

import (
	"context"
	"errors"
	"github.com/prometheus/client_golang/prometheus"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/coordinator"
	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/internal/verify"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
)

func TestReconcile(t *testing.T) {
	id := func(l, e int) expert.ID { return expert.ID{Layer: l, Expert: e} }
	p := &cluster.Placement{Owners: [][][]cluster.WorkerID{
		nil,
		{{"a"}, {"b"}, {"a", "b"}, {"b"}},
	}}
	for _, tc := range []struct {
		name       string
		self       cluster.WorkerID
		held       []expert.ID
		load, drop []expert.ID
	}{
		{"empty worker loads its share", "a", nil, []expert.ID{id(1, 0), id(1, 2)}, nil},
		{"nothing to do", "a", []expert.ID{id(1, 2), id(1, 0)}, nil, nil},
		{"moved away and in", "b", []expert.ID{id(1, 0), id(1, 3)}, []expert.ID{id(1, 1), id(1, 2)}, []expert.ID{id(1, 0)}},
		{"not in the placement drops everything", "c", []expert.ID{id(1, 3), id(1, 1)}, nil, []expert.ID{id(1, 1), id(1, 3)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			load, drop := Reconcile(tc.held, p, tc.self)
			if !slices.Equal(load, tc.load) || !slices.Equal(drop, tc.drop) {
				t.Errorf("load %v drop %v, want %v %v", load, drop, tc.load, tc.drop)
			}
		})
	}
}

// tinyModel synthesizes a 2-layer Qwen2-MoE with 8 experts per layer.
func tinyModel(t *testing.T, vocab int) string {
	t.Helper()
	dir := t.TempDir()
	hf := map[string]any{
		"model_type": "qwen2_moe", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 48,
		"moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": false,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
	if _, err := model.Synthesize(dir, hf, model.SynthOptions{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// harness is etcd, a coordinator and in-process workers of one model.
type harness struct {
	t    *testing.T
	ctx  context.Context
	etcd *etcdtest.Cluster
	reg  *registry.Registry
	dir  string
	fp   string
}

func newHarness(t *testing.T) *harness {
	leakcheck.Check(t)
	h := &harness{t: t, etcd: etcdtest.Start(t), dir: tinyModel(t, 64)}
	var cancel context.CancelFunc
	h.ctx, cancel = context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	var err error
	if h.reg, err = registry.New(h.etcd.Client(t), "wt"); err != nil {
		t.Fatal(err)
	}
	rec, err := registry.ModelRecordFromDir(h.dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	h.fp = rec.Fingerprint
	if err := h.reg.PutModel(h.ctx, rec); err != nil {
		t.Fatal(err)
	}
	c, err := coordinator.New(coordinator.Config{Registry: h.reg, Name: "c", SessionTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("coordinator: %v", err)
		}
	})
	return h
}

type running struct {
	w    *Worker
	stop context.CancelFunc
	done chan error
}

// start runs a worker until the test ends (or stop is called) and, unless
// wantErr, waits until it is ready.
func (h *harness) start(id cluster.WorkerID, mutate func(*Config)) *running {
	h.t.Helper()
	cfg := DefaultConfig()
	cfg.Etcd = h.etcd.Endpoints
	cfg.Cluster = "wt"
	cfg.ID = id
	cfg.ModelDir = h.dir
	cfg.LeaseTTL = time.Second
	cfg.StatsInterval = 50 * time.Millisecond
	if mutate != nil {
		mutate(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	r := &running{w: w, stop: stop, done: make(chan error, 1)}
	go func() { r.done <- w.Run(ctx) }()
	h.t.Cleanup(func() { r.stop(); <-r.done })
	return r
}

func (h *harness) ready(r *running) {
	h.t.Helper()
	select {
	case <-r.w.Ready():
	case err := <-r.done:
		h.t.Fatalf("worker exited before ready: %v", err)
	case <-h.ctx.Done():
		h.t.Fatal("worker not ready")
	}
}

// applied waits until the workers report epoch e fully applied (the
// server accepts an epoch just before the drops of its apply finish).
func (h *harness) applied(e cluster.Epoch, rs ...*running) {
	h.t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for _, r := range rs {
		for r.w.Epoch() < e {
			select {
			case <-tick.C:
			case <-h.ctx.Done():
				h.t.Fatalf("worker %s at epoch %d, want %d", r.w.Info().ID, r.w.Epoch(), e)
			}
		}
	}
}

func (h *harness) client() (*transport.Pool, *EtcdPlacement, *transport.RemoteExecutor) {
	h.t.Helper()
	pool, err := transport.NewPool(transport.ClientConfig{Worker: "test", Model: h.fp, MaxStaleRetries: 10})
	if err != nil {
		h.t.Fatal(err)
	}
	src := NewEtcdPlacement(h.reg, h.fp, 50*time.Millisecond)
	h.t.Cleanup(func() { src.Close(); pool.Close() })
	return pool, src, transport.NewRemoteExecutor(src, pool)
}

// forward runs the model's dense layers here and its experts on ex, and
// compares the logits with the all-local run.
func (h *harness) forward(ex expert.Executor) {
	h.t.Helper()
	ck, err := model.Open(h.dir)
	if err != nil {
		h.t.Fatal(err)
	}
	defer ck.Close()
	local, err := ck.Load(model.LoadOptions{KeepBF16: true})
	if err != nil {
		h.t.Fatal(err)
	}
	remote, err := ck.Load(model.LoadOptions{KeepBF16: true, Experts: func(expert.ID) bool { return false }})
	if err != nil {
		h.t.Fatal(err)
	}
	remote.Experts = ex
	ids := [][]int32{{1, 5, 9, 13, 17, 21, 25, 29}, {2, 4, 8, 16, 32, 63}}
	run := func(m *model.Model) []float32 {
		seqs := []*model.Seq{m.NewSeq(), m.NewSeq()}
		out, err := m.Forward(h.ctx, seqs, ids, model.Options{AllLogits: true})
		if err != nil {
			h.t.Fatal(err)
		}
		return out.Logits
	}
	want, got := run(local), run(remote)
	if e := verify.RelL2(got, want); !(e <= 1e-5) {
		h.t.Fatalf("remote logits rel_l2 %.3e vs local", e)
	}
}

// settled is registry.OnWorkers(ids...) for a final placement: one copy of
// each expert (the coordinator's make-before-break writes transitional
// placements that keep a moving expert's old copy too).
func settled(ids ...cluster.WorkerID) func(*cluster.Placement) bool {
	on := registry.OnWorkers(ids...)
	return func(p *cluster.Placement) bool {
		if !on(p) {
			return false
		}
		for _, row := range p.Owners {
			for _, ws := range row {
				if len(ws) > 1 {
					return false
				}
			}
		}
		return true
	}
}

// TestWorkersFollowPlacement runs in-process workers against real etcd,
// gRPC and gossip: they register, get every expert between them, serve a
// forward pass; a third joins and takes its share; one leaves gracefully
// and its experts move at once (its lease is revoked, not left to expire).
func TestWorkersFollowPlacement(t *testing.T) {
	h := newHarness(t)
	w1, w2 := h.start("w1", nil), h.start("w2", nil)
	h.ready(w1)
	h.ready(w2)
	pool, src, ex := h.client()
	p, err := WaitServing(h.ctx, h.reg, pool, h.fp, settled("w1", "w2"))
	if err != nil {
		t.Fatal(err)
	}
	h.applied(p.Epoch, w1, w2)
	if n1, n2 := len(w1.w.Held()), len(w2.w.Held()); n1 != 8 || n2 != 8 || w1.w.Epoch() != p.Epoch {
		t.Fatalf("held %d and %d experts at epoch %d, placement epoch %d", n1, n2, w1.w.Epoch(), p.Epoch)
	}
	h.forward(ex)

	w3 := h.start("w3", nil)
	h.ready(w3)
	p, err = WaitServing(h.ctx, h.reg, pool, h.fp, settled("w1", "w2", "w3"))
	if err != nil {
		t.Fatal(err)
	}
	counts := placement.Counts(p)
	if counts["w3"] < 5 || counts["w1"]+counts["w2"]+counts["w3"] != 16 {
		t.Fatalf("after w3 joined: %v", counts)
	}
	h.applied(p.Epoch, w1, w2, w3)
	if got := w3.w.Held(); !slices.Equal(got, p.Owned("w3")) {
		t.Fatalf("w3 holds %v, placement gives it %v", got, p.Owned("w3"))
	}
	h.forward(ex)
	if st := w3.w.Stats(); len(st.Tokens) == 0 || st.Epoch != p.Epoch {
		t.Fatalf("w3 stats %+v after serving", st)
	}

	start := time.Now()
	w1.stop()
	if err := <-w1.done; err != nil {
		t.Fatalf("w1 Run: %v", err)
	}
	w1.done <- nil // for the cleanup
	if _, err := h.reg.WaitWorkers(h.ctx, func(s registry.WorkerSet) bool { return !slices.Contains(s.IDs(), "w1") }); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitServing(h.ctx, h.reg, pool, h.fp, settled("w2", "w3")); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful leave re-placed in %v", time.Since(start).Round(time.Millisecond))
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("graceful leave took %v, the 1 s lease should not have had to expire", d)
	}
	h.forward(ex)
	if src.Current().Epoch < p.Epoch+1 {
		t.Errorf("executor's placement at epoch %d", src.Current().Epoch)
	}
}

// TestRefused: a worker with another model or protocol version is refused
// for good, with an error naming both sides.
func TestRefused(t *testing.T) {
	h := newHarness(t)
	other := tinyModel(t, 96)
	r := h.start("stranger", func(c *Config) { c.ModelDir = other })
	err := <-r.done
	r.done <- nil
	if !errors.Is(err, ErrRefused) || !errors.Is(err, registry.ErrModelMismatch) || !strings.Contains(err.Error(), h.fp) {
		t.Fatalf("other model: %v", err)
	}
	t.Logf("other model: %v", err)
	r = h.start("future", func(c *Config) { c.Protocol = cluster.ProtocolVersion + 1 })
	err = <-r.done
	r.done <- nil
	if !errors.Is(err, ErrRefused) || !errors.Is(err, registry.ErrProtocolMismatch) {
		t.Fatalf("other protocol: %v", err)
	}
	t.Logf("other protocol: %v", err)
}

// TestRefreshWaits: Refresh returns a newer placement at once and
// otherwise waits its RefreshWait (an owner still loading).
func TestRefreshWaits(t *testing.T) {
	h := newHarness(t)
	w1 := h.start("w1", nil)
	h.ready(w1)
	pool, src, _ := h.client()
	p, err := WaitServing(h.ctx, h.reg, pool, h.fp, registry.OnWorkers("w1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.WaitPlacement(h.ctx, func(q *cluster.Placement) bool { return q.Epoch >= p.Epoch }); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	q, err := src.Refresh(h.ctx)
	if err != nil || q.Epoch != p.Epoch {
		t.Fatalf("refresh: %v %v", q, err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("refresh without a newer placement returned after %v, want the 50 ms wait", d)
	}
	if src.Refreshes() != 1 {
		t.Errorf("%d refreshes", src.Refreshes())
	}
}

// TestReRegistersAfterLeaseLoss: when etcd drops the worker's lease (here
// revoked behind its back, as after a partition longer than the TTL), the
// worker registers again under a new lease and gets experts again.
func TestReRegistersAfterLeaseLoss(t *testing.T) {
	h := newHarness(t)
	w1 := h.start("w1", nil)
	h.ready(w1)
	pool, _, ex := h.client()
	if _, err := WaitServing(h.ctx, h.reg, pool, h.fp, registry.OnWorkers("w1")); err != nil {
		t.Fatal(err)
	}
	set, err := h.reg.Workers(h.ctx)
	if err != nil || len(set.Leases) != 1 {
		t.Fatalf("workers %+v: %v", set, err)
	}
	old := set.Leases[0]
	if _, err := h.reg.Client().Revoke(h.ctx, old); err != nil {
		t.Fatal(err)
	}
	set, err = h.reg.WaitWorkers(h.ctx, func(s registry.WorkerSet) bool { return len(s.Leases) == 1 && s.Leases[0] != old })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lease %x revoked; w1 registered again under lease %x", int64(old), int64(set.Leases[0]))
	if _, err := WaitServing(h.ctx, h.reg, pool, h.fp, registry.OnWorkers("w1")); err != nil {
		t.Fatal(err)
	}
	// Its metrics count both registrations and the loss.
	for name, want := range map[string]float64{"switchyard_worker_registrations_total": 2, "switchyard_worker_lease_losses_total": 1, "switchyard_worker_lease_resumes_total": 0} {
		got := counterValue(t, w1.w.Metrics(), name)
		for got < want && h.ctx.Err() == nil { // counted just after the registration etcd shows
			time.Sleep(10 * time.Millisecond)
			got = counterValue(t, w1.w.Metrics(), name)
		}
		if got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	h.forward(ex)
}

// counterValue reads a counter without labels from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}
