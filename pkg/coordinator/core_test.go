package coordinator

import (
	"errors"
	"fmt"
	"testing"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
)

var testModel = registry.ModelRecord{
	Fingerprint: "m1", Layers: 3, MoELayers: []int{1, 2}, Experts: 4,
	ExpertBytes: 100, DenseBytes: 1000, ElemBytes: 4, Protocol: cluster.ProtocolVersion,
}

func ws(ids ...string) []cluster.WorkerInfo {
	var out []cluster.WorkerInfo
	for _, id := range ids {
		out = append(out, cluster.WorkerInfo{ID: cluster.WorkerID(id), Addr: id + ":1", Model: "m1", Protocol: cluster.ProtocolVersion})
	}
	return out
}

// one expects exactly one WritePlacement among acts and returns it.
func one(t *testing.T, acts []Action) WritePlacement {
	t.Helper()
	if len(acts) != 1 {
		t.Fatalf("actions %+v, want one write", acts)
	}
	w, ok := acts[0].(WritePlacement)
	if !ok {
		t.Fatalf("action %T, want WritePlacement", acts[0])
	}
	return w
}

func none(t *testing.T, acts []Action) {
	t.Helper()
	if len(acts) != 0 {
		t.Fatalf("unexpected actions %+v", acts)
	}
}

// TestCoreNarrative walks a leader through a cluster's life, one event at a
// time, checking the actions it asks for.
func TestCoreNarrative(t *testing.T) {
	c := NewCore(CoreConfig{Replicas: 1})

	// A follower learns everything but never acts.
	none(t, c.Step(ModelsChanged{Models: []registry.ModelRecord{testModel}}))
	none(t, c.Step(WorkersChanged{Workers: ws("a", "b"), Rev: 5}))
	none(t, c.Step(PlacementObserved{Model: "m1", Rev: 0}))

	// Leading: a fresh term waits for its own reads before acting.
	none(t, c.Step(LeadershipChanged{Leader: true}))
	none(t, c.Step(WorkersChanged{Workers: ws("a", "b"), Rev: 6}))
	none(t, c.Step(ModelsChanged{Models: []registry.ModelRecord{testModel}}))
	w := one(t, c.Step(PlacementObserved{Model: "m1", Rev: 0}))
	if w.Placement.Epoch != 1 || w.ExpectRev != 0 || len(w.Change.Added) != 8 {
		t.Fatalf("first write: epoch %d rev %d change %+v", w.Placement.Epoch, w.ExpectRev, w.Change)
	}
	// While the write is in flight nothing else is written.
	none(t, c.Step(WorkersChanged{Workers: ws("a", "b", "c"), Rev: 7}))
	// Its completion lets the pending join through: c takes its share.
	w = one(t, c.Step(WriteDone{Placement: w.Placement, Rev: 10}))
	if w.Placement.Epoch != 2 || w.ExpectRev != 10 {
		t.Fatalf("join write: epoch %d rev %d", w.Placement.Epoch, w.ExpectRev)
	}
	if got := placement.Counts(&w.Placement); got["c"] != 2 || got["a"] != 3 || got["b"] != 3 {
		t.Fatalf("counts after join %v", got)
	}
	none(t, c.Step(WriteDone{Placement: w.Placement, Rev: 11}))
	// The watch echoes our own writes: nothing to do.
	p2 := w.Placement
	none(t, c.Step(PlacementObserved{Model: "m1", Placement: &p2, Rev: 11}))
	none(t, c.Step(WorkersChanged{Workers: ws("a", "b", "c"), Rev: 8}))

	// b's lease expires: only its copies move, epoch 3.
	w = one(t, c.Step(WorkersChanged{Workers: ws("a", "c"), Rev: 9}))
	if w.Placement.Epoch != 3 || len(w.Change.Added) != 3 || len(w.Change.Removed) != 3 {
		t.Fatalf("leave write: epoch %d change %+v", w.Placement.Epoch, w.Change)
	}
	for _, cp := range w.Change.Removed {
		if cp.Worker != "b" {
			t.Fatalf("leave moved a survivor's copy: %+v", w.Change)
		}
	}
	// Someone else wrote first (conflict): wait for a fresh read, then
	// recompute against it.
	none(t, c.Step(WriteFailed{Model: "m1", Err: registry.ErrPlacementConflict}))
	none(t, c.Step(WorkersChanged{Workers: ws("a", "c"), Rev: 10}))
	theirs := p2
	theirs.Epoch = 7
	w = one(t, c.Step(PlacementObserved{Model: "m1", Placement: &theirs, Rev: 20}))
	if w.Placement.Epoch != 8 || w.ExpectRev != 20 {
		t.Fatalf("after conflict: epoch %d rev %d", w.Placement.Epoch, w.ExpectRev)
	}
	none(t, c.Step(WriteDone{Placement: w.Placement, Rev: 21}))

	// All workers gone: the last placement stays.
	none(t, c.Step(WorkersChanged{Workers: nil, Rev: 12}))

	// Losing leadership: silence, whatever happens.
	none(t, c.Step(LeadershipChanged{Leader: false}))
	none(t, c.Step(WorkersChanged{Workers: ws("x"), Rev: 13}))
	if c.Leader() {
		t.Fatal("still leader")
	}
}

func TestCoreOnlyOwnModelsWorkers(t *testing.T) {
	c := NewCore(CoreConfig{})
	c.Step(LeadershipChanged{Leader: true})
	c.Step(ModelsChanged{Models: []registry.ModelRecord{testModel}})
	c.Step(PlacementObserved{Model: "m1"})
	other := ws("z")
	other[0].Model = "m2"
	none(t, c.Step(WorkersChanged{Workers: other}))
	w := one(t, c.Step(WorkersChanged{Workers: append(other, ws("a")...)}))
	if ids := fmt.Sprint(w.Placement.WorkerIDs()); ids != "[a]" {
		t.Fatalf("placed on %s", ids)
	}
}

func TestCoreReportsMemoryOnce(t *testing.T) {
	c := NewCore(CoreConfig{Replicas: 2})
	c.Step(LeadershipChanged{Leader: true})
	c.Step(ModelsChanged{Models: []registry.ModelRecord{testModel}})
	c.Step(PlacementObserved{Model: "m1"})
	small := ws("a", "b")
	for i := range small {
		small[i].MemBytes = 1000 + 300 // room for 3 experts each
	}
	acts := c.Step(WorkersChanged{Workers: small})
	if len(acts) != 1 {
		t.Fatalf("actions %+v", acts)
	}
	r, ok := acts[0].(Report)
	if !ok || !errors.Is(r.Err, placement.ErrInsufficientMemory) {
		t.Fatalf("action %+v", acts[0])
	}
	t.Logf("report: %v", r.Err)
	none(t, c.Step(WorkersChanged{Workers: small}))
	// More memory: placed.
	for i := range small {
		small[i].MemBytes = 1000 + 800
	}
	if w := one(t, c.Step(WorkersChanged{Workers: small})); len(w.Change.Added) != 16 {
		t.Fatalf("R=2 copies %d", len(w.Change.Added))
	}
}
