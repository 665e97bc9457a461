package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// tinyConfig is a 2-layer Qwen2-MoE with 4 experts of F=16 over D=32.
func tinyConfig(t testing.TB, experts int) *model.Config {
	t.Helper()
	hf := map[string]any{
		"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
		"moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": experts, "num_experts_per_tok": 2, "norm_topk_prob": false,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
	b, _ := json.Marshal(hf)
	cfg, err := model.ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type env struct {
	etcd *etcdtest.Cluster
	reg  *Registry
	rec  ModelRecord
	ctx  context.Context
}

func setup(t *testing.T) *env {
	t.Helper()
	leakcheck.Check(t)
	e := &env{etcd: etcdtest.Start(t)}
	var cancel context.CancelFunc
	e.ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	e.reg = e.registry(t)
	e.rec = NewModelRecord(tinyConfig(t, 4), "/models/tiny", 0)
	if err := e.reg.PutModel(e.ctx, e.rec); err != nil {
		t.Fatal(err)
	}
	return e
}

// registry returns a registry on a client of its own (a separate process).
func (e *env) registry(t *testing.T) *Registry {
	r, err := New(e.etcd.Client(t), "test")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (e *env) worker(id string) cluster.WorkerInfo {
	return cluster.WorkerInfo{ID: cluster.WorkerID(id), Addr: "127.0.0.1:1", Protocol: cluster.ProtocolVersion, Model: e.rec.Fingerprint, MemBytes: 1 << 30}
}

func TestModelRecordSizes(t *testing.T) {
	cfg := tinyConfig(t, 4)
	rec := NewModelRecord(cfg, "/x/tiny", 0)
	// One expert: gate, up [16, 32] and down [32, 16], float32.
	if want := int64(3 * 16 * 32 * 4); rec.ExpertBytes != want {
		t.Errorf("ExpertBytes %d, want %d", rec.ExpertBytes, want)
	}
	var total int64
	for _, s := range cfg.Tensors() {
		total += s.Elems() * 4
	}
	if got := rec.DenseBytes + int64(len(rec.MoELayers)*rec.Experts)*rec.ExpertBytes; got != total {
		t.Errorf("dense + experts = %d bytes, checkpoint holds %d", got, total)
	}
	if len(rec.PlacementExperts()) != 8 || rec.Name != "tiny" || rec.Protocol != cluster.ProtocolVersion {
		t.Errorf("record %+v", rec)
	}
	if bf := NewModelRecord(cfg, "", 2); bf.ExpertBytes != rec.ExpertBytes/2 {
		t.Errorf("bf16 expert bytes %d", bf.ExpertBytes)
	}
}

// TestLeaseExpiry registers two workers with a 1 s TTL; one stops renewing
// (Abandon), the other's process "dies" (its client closes without
// revoking). Both keys must vanish within the TTL plus etcd's expiry check;
// a worker that closes gracefully disappears at once.
func TestLeaseExpiry(t *testing.T) {
	e := setup(t)
	w1, err := e.registry(t).Register(e.ctx, e.worker("w1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cli2 := e.etcd.Client(t)
	r2, _ := New(cli2, "test")
	w2, err := r2.Register(e.ctx, e.worker("w2"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	w3, err := e.registry(t).Register(e.ctx, e.worker("w3"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if w3.TTL() != DefaultTTL {
		t.Errorf("default TTL %v", w3.TTL())
	}
	leases, err := e.reg.WorkerLeases(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 3 || leases[0].Info.ID != "w1" || leases[0].GrantedTTL != time.Second || leases[0].TTL > time.Second || leases[0].Lease != int64(w1.Lease()) {
		t.Fatalf("leases %+v", leases)
	}
	// Kept alive past several TTLs.
	watch := e.reg.WatchWorkers(e.ctx)
	set := <-watch
	if fmt.Sprint(set.IDs()) != "[w1 w2 w3]" {
		t.Fatalf("workers %v", set.IDs())
	}
	timer := time.NewTimer(2500 * time.Millisecond)
	select {
	case s := <-watch:
		t.Fatalf("workers changed while alive: %v", s.IDs())
	case <-timer.C:
	}

	start := time.Now()
	w1.Abandon()
	cli2.Close()
	for s := range watch {
		if fmt.Sprint(s.IDs()) == "[w3]" {
			break
		}
	}
	took := time.Since(start)
	t.Logf("abandoned leases (TTL 1s) expired after %v", took)
	if took > 4*time.Second { // TTL + etcd's 500 ms expiry scan + slack for a loaded machine
		t.Errorf("expiry took %v for a 1 s TTL", took)
	}
	select {
	case <-w1.Done():
	default:
		t.Error("abandoned registration not Done")
	}
	_ = w2
	if err := w3.Close(); err != nil {
		t.Fatal(err)
	}
	if s := <-watch; len(s.Workers) != 0 {
		t.Fatalf("after graceful close: %v", s.IDs())
	}
	if _, err := e.reg.WaitWorkers(e.ctx, func(s WorkerSet) bool { return len(s.Workers) == 0 }); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(e.ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := e.reg.WaitWorkers(short, func(s WorkerSet) bool { return len(s.Workers) == 5 }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitWorkers timeout: %v", err)
	}
}

func TestRegisterRefused(t *testing.T) {
	e := setup(t)
	bad := e.worker("w1")
	bad.Protocol = cluster.ProtocolVersion + 1
	_, err := e.reg.Register(e.ctx, bad, time.Second)
	if !errors.Is(err, ErrProtocolMismatch) || !strings.Contains(err.Error(), fmt.Sprintf("speaks protocol %d, this cluster protocol %d", bad.Protocol, cluster.ProtocolVersion)) {
		t.Fatalf("protocol: %v", err)
	}
	t.Logf("protocol refusal: %v", err)

	other := NewModelRecord(tinyConfig(t, 8), "/models/other", 0)
	bad = e.worker("w1")
	bad.Model = other.Fingerprint
	_, err = e.reg.Register(e.ctx, bad, time.Second)
	if !errors.Is(err, ErrModelMismatch) || !strings.Contains(err.Error(), other.Fingerprint) || !strings.Contains(err.Error(), e.rec.Fingerprint) {
		t.Fatalf("model: %v", err)
	}
	t.Logf("model refusal: %v", err)

	// A worker holding its experts in another format than the record's:
	// the placement was sized for the record's, so it is refused, and the
	// error says which flag to set.
	bad = e.worker("w1")
	bad.Quantize = "int8"
	_, err = e.reg.Register(e.ctx, bad, time.Second)
	if !errors.Is(err, ErrModelMismatch) || !strings.Contains(err.Error(), "as int8, the cluster serves them as none") || !strings.Contains(err.Error(), "--quantize none") {
		t.Fatalf("quantize: %v", err)
	}
	t.Logf("quantize refusal: %v", err)
	q4 := e.rec
	q4.Fingerprint = "q4-model"
	cfg := tinyConfig(t, 8)
	q4.SetQuantize(cfg, tensor.QQ4)
	if q4.Quantize != "q4" || q4.ExpertBytes >= e.rec.ExpertBytes {
		t.Fatalf("SetQuantize(q4): %q, %d expert bytes (unquantized %d)", q4.Quantize, q4.ExpertBytes, e.rec.ExpertBytes)
	}
	if err := e.reg.PutModel(e.ctx, q4); err != nil {
		t.Fatal(err)
	}
	good := e.worker("wq")
	good.Model, good.Quantize = "q4-model", "q4"
	if g, err := e.reg.Register(e.ctx, good, time.Second); err != nil {
		t.Fatalf("matching quantization refused: %v", err)
	} else {
		g.Close()
	}

	// The coordinator that registered the model speaks another protocol.
	old := e.rec
	old.Fingerprint = "old-model"
	old.Protocol = cluster.ProtocolVersion - 1
	if err := e.reg.PutModel(e.ctx, old); err != nil {
		t.Fatal(err)
	}
	bad = e.worker("w1")
	bad.Model = "old-model"
	if _, err = e.reg.Register(e.ctx, bad, time.Second); !errors.Is(err, ErrProtocolMismatch) {
		t.Fatalf("record protocol: %v", err)
	}

	// Same ID twice while the first lease lives.
	w, err := e.reg.Register(e.ctx, e.worker("w1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.registry(t).Register(e.ctx, e.worker("w1"), time.Second)
	if !errors.Is(err, ErrWorkerExists) {
		t.Fatalf("duplicate: %v", err)
	}
	t.Logf("duplicate refusal: %v", err)
	w.Close()

	// Nothing registered: a cluster with no model refuses with ErrNoModel.
	empty, _ := New(e.reg.Client(), "empty")
	// A jobs-only worker (no model) registers even there.
	if g, err := empty.Register(e.ctx, cluster.WorkerInfo{ID: "jobs-only", Protocol: cluster.ProtocolVersion}, time.Second); err != nil {
		t.Fatalf("jobs-only worker: %v", err)
	} else if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := empty.Register(e.ctx, e.worker("w1"), time.Second); !errors.Is(err, ErrNoModel) {
		t.Fatalf("no model: %v", err)
	}
	if _, err := New(e.reg.Client(), "a/b"); err == nil {
		t.Fatal("cluster name with '/' accepted")
	}
	set, err := e.reg.Workers(e.ctx)
	if err != nil || len(set.Workers) != 0 {
		t.Fatalf("refused workers left keys: %v %v", set.IDs(), err)
	}
}

// placementFor builds a valid placement of the tiny model on workers.
func (e *env) placementFor(t *testing.T, epoch cluster.Epoch, ids ...string) *cluster.Placement {
	var ws []cluster.WorkerInfo
	for _, id := range ids {
		ws = append(ws, e.worker(id))
	}
	p, err := placement.Place(placement.Input{Model: e.rec.Fingerprint, Layers: e.rec.Layers, Experts: e.rec.PlacementExperts(), Workers: ws})
	if err != nil {
		t.Fatal(err)
	}
	p.Epoch = epoch
	return &p
}

func campaign(t *testing.T, ctx context.Context, cli *clientv3.Client, r *Registry, name string) (*concurrency.Session, *concurrency.Election) {
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(1))
	if err != nil {
		t.Fatal(err)
	}
	el := concurrency.NewElection(s, r.LeaderPrefix())
	if err := el.Campaign(ctx, name); err != nil {
		t.Fatal(err)
	}
	return s, el
}

func TestPlacementFencing(t *testing.T) {
	e := setup(t)
	fp := e.rec.Fingerprint
	updates := e.reg.WatchPlacement(e.ctx, fp)
	if u := <-updates; u.Placement != nil {
		t.Fatalf("initial placement %+v", u)
	}

	cliA := e.etcd.Client(t)
	sA, elA := campaign(t, e.ctx, cliA, e.reg, "a")
	fenceA := FenceOf(elA)
	rev1, err := e.reg.WritePlacement(e.ctx, fenceA, e.placementFor(t, 1, "w1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// A racing writer that read before rev1 is refused.
	if _, err := e.reg.WritePlacement(e.ctx, fenceA, e.placementFor(t, 2, "w2"), 0); !errors.Is(err, ErrPlacementConflict) {
		t.Fatalf("stale revision: %v", err)
	} else {
		t.Logf("stale write refused: %v", err)
	}
	rev2, err := e.reg.WritePlacement(e.ctx, fenceA, e.placementFor(t, 2, "w1", "w2"), rev1)
	if err != nil {
		t.Fatal(err)
	}
	// An invalid table is refused before any write.
	bad := e.placementFor(t, 3, "w1")
	bad.Owners[1][0] = nil
	if _, err := e.reg.WritePlacement(e.ctx, fenceA, bad, rev2); err == nil || !strings.Contains(err.Error(), "has no owner") {
		t.Fatalf("invalid placement: %v", err)
	}
	// A non-leader's made-up fence is refused.
	if _, err := e.reg.WritePlacement(e.ctx, Fence{Key: e.reg.LeaderPrefix() + "bogus", Rev: rev2}, e.placementFor(t, 3, "w3"), rev2); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("bogus fence: %v", err)
	}

	// A campaigns and B waits; A's session dies without resigning (its
	// client closes). B takes over; A's fence no longer writes.
	cliB := e.etcd.Client(t)
	sB, err := concurrency.NewSession(cliB, concurrency.WithTTL(1))
	if err != nil {
		t.Fatal(err)
	}
	elB := concurrency.NewElection(sB, e.reg.LeaderPrefix())
	bLeads := make(chan error, 1)
	go func() { bLeads <- elB.Campaign(e.ctx, "b") }()
	cliA.Close()
	<-sA.Done()
	if err := <-bLeads; err != nil {
		t.Fatal(err)
	}
	fenceB := FenceOf(elB)
	if fenceB.Key == fenceA.Key {
		t.Fatal("same fence key for two leaders")
	}
	writer, _ := New(e.etcd.Client(t), "test") // A's writes, sent by a live client
	if _, err := writer.WritePlacement(e.ctx, fenceA, e.placementFor(t, 3, "w1"), rev2); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader: %v", err)
	} else {
		t.Logf("deposed leader refused: %v", err)
	}
	rev3, err := e.reg.WritePlacement(e.ctx, fenceB, e.placementFor(t, 3, "w2"), rev2)
	if err != nil {
		t.Fatal(err)
	}

	// The watcher saw epochs 1, 2, 3 in order with their revisions.
	for i, want := range []int64{rev1, rev2, rev3} {
		u := <-updates
		if u.Rev != want || u.Placement.Epoch != cluster.Epoch(i+1) {
			t.Fatalf("update %d: epoch %d rev %d, want epoch %d rev %d", i, u.Placement.Epoch, u.Rev, i+1, want)
		}
	}
	p, rev, err := e.reg.WaitPlacement(e.ctx, fp, OnWorkers("w2"))
	if err != nil || rev != rev3 || p.Epoch != 3 {
		t.Fatalf("wait: %v %d %v", p, rev, err)
	}
	short, cancel := context.WithTimeout(e.ctx, 50*time.Millisecond)
	defer cancel()
	if _, _, err := e.reg.WaitPlacement(short, fp, AtLeastEpoch(9)); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "epoch 3") {
		t.Fatalf("wait timeout: %v", err)
	}
}

func TestStats(t *testing.T) {
	e := setup(t)
	w, err := e.reg.Register(e.ctx, e.worker("w1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	counts := make(chan []TokenCount)
	calls := make(chan struct{}, 100)
	cur := []TokenCount{{Layer: 1, Expert: 0, Tokens: 5}}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.ReportStats(ctx, 10*time.Millisecond, func() WorkerStats {
			select {
			case c := <-counts:
				cur = c
			default:
			}
			select {
			case calls <- struct{}{}:
			default:
			}
			return WorkerStats{Model: e.rec.Fingerprint, Epoch: 1, Tokens: cur}
		})
	}()
	waitStats := func(want uint64) int64 {
		t.Helper()
		for {
			resp, err := e.reg.Client().Get(e.ctx, e.reg.StatsKey("w1"))
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) == 1 {
				var s WorkerStats
				json.Unmarshal(resp.Kvs[0].Value, &s)
				if s.Tokens[0].Tokens == want {
					return resp.Kvs[0].Version
				}
			}
			select {
			case <-calls:
			case <-e.ctx.Done():
				t.Fatalf("stats %d never written", want)
			}
		}
	}
	v1 := waitStats(5)
	for i := 0; i < 5; i++ { // several unchanged snapshots
		<-calls
	}
	if v := waitStats(5); v != v1 {
		t.Fatalf("unchanged stats rewritten: version %d -> %d", v1, v)
	}
	counts <- []TokenCount{{Layer: 1, Expert: 0, Tokens: 9}}
	if v := waitStats(9); v != v1+1 {
		t.Fatalf("version %d after one change from %d", v, v1)
	}
	all, err := e.reg.Stats(e.ctx)
	if err != nil || len(all) != 1 || all[0].Worker != "w1" {
		t.Fatalf("stats %+v %v", all, err)
	}
	cancel()
	<-done
	w.Close()
	if all, _ := e.reg.Stats(e.ctx); len(all) != 0 {
		t.Fatalf("stats outlived the lease: %+v", all)
	}
}
