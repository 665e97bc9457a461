package coordinator

import (
	"errors"
	"fmt"
	"slices"
	"strings"
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

// split sorts acts into writes and reports (failing on anything else).
func split(t *testing.T, acts []Action) (writes []WritePlacement, reports []Report) {
	t.Helper()
	for _, a := range acts {
		switch a := a.(type) {
		case WritePlacement:
			writes = append(writes, a)
		case Report:
			reports = append(reports, a)
		default:
			t.Fatalf("action %T", a)
		}
	}
	return writes, reports
}

// one expects exactly one WritePlacement among acts (besides any
// reports) and returns it.
func one(t *testing.T, acts []Action) WritePlacement {
	t.Helper()
	w, _ := split(t, acts)
	if len(w) != 1 {
		t.Fatalf("actions %+v, want one write", acts)
	}
	return w[0]
}

// none expects no write among acts (reports are allowed).
func none(t *testing.T, acts []Action) {
	t.Helper()
	if w, _ := split(t, acts); len(w) != 0 {
		t.Fatalf("unexpected writes %+v", w)
	}
}

// silent expects no action at all.
func silent(t *testing.T, acts []Action) {
	t.Helper()
	if len(acts) != 0 {
		t.Fatalf("unexpected actions %+v", acts)
	}
}

// report expects exactly one Report among acts and returns it.
func report(t *testing.T, acts []Action) Report {
	t.Helper()
	_, r := split(t, acts)
	if len(r) != 1 {
		t.Fatalf("actions %+v, want one report", acts)
	}
	return r[0]
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
		small[i].MemBytes = 300 // room for 3 experts each
	}
	acts := c.Step(WorkersChanged{Workers: small})
	if len(acts) != 1 {
		t.Fatalf("actions %+v", acts)
	}
	r, ok := acts[0].(Report)
	if !ok || !errors.Is(r.Err, placement.ErrInsufficientMemory) {
		t.Fatalf("action %+v", acts[0])
	}
	if s := r.Status; s.OK || s.Awaiting || s.NeedBytes != 1600 || s.HaveBytes != 600 || s.Error != r.Err.Error() || s.Epoch != 0 || s.Unplaced != nil {
		t.Fatalf("status %+v", s)
	}
	t.Logf("report: %v", r.Err)
	silent(t, c.Step(WorkersChanged{Workers: small}))
	// More memory: placed; once stored, the verdict turns OK.
	for i := range small {
		small[i].MemBytes = 800
	}
	w := one(t, c.Step(WorkersChanged{Workers: small}))
	if len(w.Change.Added) != 16 {
		t.Fatalf("R=2 copies %d", len(w.Change.Added))
	}
	r = report(t, c.Step(WriteDone{Placement: w.Placement, Rev: 3}))
	if !r.Status.OK || r.Err != nil || r.Status.Epoch != 1 || r.Status.Error != "" {
		t.Fatalf("after the write: %+v", r)
	}
	silent(t, c.Step(PlacementObserved{Model: "m1", Placement: &w.Placement, Rev: 3}))
}

// TestCoreStartupGrace: with ExpectWorkers, a model without a placement
// waits for that many workers or for the grace to pass; once placed,
// changes are immediate.
func TestCoreStartupGrace(t *testing.T) {
	start := func() *Core {
		c := NewCore(CoreConfig{ExpectWorkers: 3})
		c.Step(LeadershipChanged{Leader: true})
		c.Step(ModelsChanged{Models: []registry.ModelRecord{testModel}})
		c.Step(PlacementObserved{Model: "m1"})
		return c
	}
	// Enough workers arrive in time: one placement, on all three.
	c := start()
	r := report(t, c.Step(WorkersChanged{Workers: ws("a")}))
	if !errors.Is(r.Err, ErrAwaitingWorkers) || r.Status.OK || !r.Status.Awaiting || !strings.Contains(r.Status.Error, "1 of 3 registered") {
		t.Fatalf("waiting: %+v", r)
	}
	none(t, c.Step(WorkersChanged{Workers: ws("a", "b")}))
	w := one(t, c.Step(WorkersChanged{Workers: ws("a", "b", "c")}))
	if got := fmt.Sprint(placement.Counts(&w.Placement)); w.Placement.Epoch != 1 || got != "map[a:3 b:3 c:2]" {
		t.Fatalf("epoch %d counts %s", w.Placement.Epoch, got)
	}

	// The grace passes first: placed on the two there are; the third
	// then joins at once, the placement existing.
	c = start()
	none(t, c.Step(WorkersChanged{Workers: ws("a", "b")}))
	w = one(t, c.Step(GraceExpired{}))
	if ids := fmt.Sprint(w.Placement.WorkerIDs()); ids != "[a b]" {
		t.Fatalf("placed on %s", ids)
	}
	c.Step(WriteDone{Placement: w.Placement, Rev: 4})
	if w = one(t, c.Step(WorkersChanged{Workers: ws("a", "b", "c")})); w.Placement.Epoch != 2 {
		t.Fatalf("join epoch %d", w.Placement.Epoch)
	}

	// A new term restarts the grace, but a stored placement is never held
	// back.
	c = start()
	c.Step(GraceExpired{})
	c.Step(LeadershipChanged{Leader: false})
	c.Step(LeadershipChanged{Leader: true})
	c.Step(PlacementObserved{Model: "m1"})
	none(t, c.Step(WorkersChanged{Workers: ws("a")}))
	p := w.Placement
	w = one(t, c.Step(PlacementObserved{Model: "m1", Placement: &p, Rev: 9}))
	if ids := fmt.Sprint(w.Placement.WorkerIDs()); ids != "[a]" || w.Placement.Epoch != 3 {
		t.Fatalf("placed on %s epoch %d", ids, w.Placement.Epoch)
	}
}

// TestCoreLostExperts: when the survivors cannot hold a dead worker's
// experts, the stored placement stays (no survivor is overloaded) and the
// verdict names the experts without a live copy; with no worker at all,
// every expert is lost.
func TestCoreLostExperts(t *testing.T) {
	c := NewCore(CoreConfig{})
	c.Step(LeadershipChanged{Leader: true})
	c.Step(ModelsChanged{Models: []registry.ModelRecord{testModel}})
	c.Step(PlacementObserved{Model: "m1"})
	three := ws("a", "b", "c")
	for i := range three {
		three[i].MemBytes = 300 // room for 3 experts each
	}
	w := one(t, c.Step(WorkersChanged{Workers: three}))
	r := report(t, c.Step(WriteDone{Placement: w.Placement, Rev: 2}))
	if !r.Status.OK || r.Status.Epoch != 1 {
		t.Fatalf("placed: %+v", r.Status)
	}
	lost := w.Placement.Owned("c")
	acts := c.Step(WorkersChanged{Workers: three[:2]})
	if len(acts) != 1 {
		t.Fatalf("after c died: %+v (want only a report)", acts)
	}
	r = report(t, acts)
	s := r.Status
	if s.OK || !errors.Is(r.Err, placement.ErrInsufficientMemory) || s.NeedBytes != 800 || s.HaveBytes != 600 ||
		s.Epoch != 1 || fmt.Sprint(s.Unplaced) != fmt.Sprint(lost) {
		t.Fatalf("status %+v, lost %v", s, lost)
	}
	if p, _ := c.Placement("m1"); p.Epoch != 1 {
		t.Fatalf("stored placement moved to epoch %d", p.Epoch)
	}
	r = report(t, c.Step(WorkersChanged{Workers: nil}))
	if !errors.Is(r.Err, placement.ErrNoWorkers) || len(r.Status.Unplaced) != 8 || r.Status.NeedBytes != 0 {
		t.Fatalf("no workers: %+v", r)
	}
	// c is back: nothing to write (its copies are where they were), OK.
	r = report(t, c.Step(WorkersChanged{Workers: three}))
	if !r.Status.OK || r.Status.Unplaced != nil {
		t.Fatalf("back: %+v", r.Status)
	}
}

// mbbCore returns a make-before-break leader with m1 placed on workers.
func mbbCore(t *testing.T, workers []cluster.WorkerInfo) (*Core, cluster.Placement) {
	t.Helper()
	c := NewCore(CoreConfig{MakeBeforeBreak: true})
	c.Step(LeadershipChanged{Leader: true})
	c.Step(ModelsChanged{Models: []registry.ModelRecord{testModel}})
	c.Step(PlacementObserved{Model: "m1"})
	w := one(t, c.Step(WorkersChanged{Workers: workers}))
	if len(w.Await) != 0 {
		t.Fatalf("first placement awaits %v", w.Await)
	}
	c.Step(WriteDone{Placement: w.Placement, Rev: 1})
	return c, w.Placement
}

func stats(epochs map[cluster.WorkerID]cluster.Epoch) StatsChanged {
	var ev StatsChanged
	for w, e := range epochs {
		ev.Stats = append(ev.Stats, registry.WorkerStats{Worker: w, Model: "m1", Epoch: e})
	}
	return ev
}

// TestCoreMakeBeforeBreak: a join first writes the new table plus the old
// copies (after the new owners); the final table drops them only once the
// loading worker reports the transitional epoch applied.
func TestCoreMakeBeforeBreak(t *testing.T) {
	c, p1 := mbbCore(t, ws("a", "b"))
	w := one(t, c.Step(WorkersChanged{Workers: ws("a", "b", "c")}))
	tr := w.Placement
	if tr.Epoch != 2 || fmt.Sprint(w.Await) != "[c]" || len(w.Change.Removed) != 0 || len(w.Change.Added) != 2 {
		t.Fatalf("transitional: epoch %d await %v change %+v", tr.Epoch, w.Await, w.Change)
	}
	for _, cp := range w.Change.Added {
		old := p1.OwnersOf(cp.Expert)
		if got := tr.OwnersOf(cp.Expert); fmt.Sprint(got) != fmt.Sprint([]cluster.WorkerID{"c", old[0]}) {
			t.Fatalf("expert %v owners %v, want c then %v", cp.Expert, got, old)
		}
	}
	r := report(t, c.Step(WriteDone{Placement: tr, Rev: 2}))
	if !r.Status.OK || r.Status.Epoch != 2 {
		t.Fatalf("transitional verdict %+v", r.Status)
	}
	if e, waiting := c.Migration("m1"); e != 2 || fmt.Sprint(waiting) != "[c]" {
		t.Fatalf("migration %d %v", e, waiting)
	}
	// The watch echo, other workers' epochs and an old epoch of c: wait on.
	silent(t, c.Step(PlacementObserved{Model: "m1", Placement: &tr, Rev: 2}))
	silent(t, c.Step(stats(map[cluster.WorkerID]cluster.Epoch{"a": 2, "b": 2, "c": 1})))
	// c has loaded: the final table, the old copies dropped.
	w = one(t, c.Step(stats(map[cluster.WorkerID]cluster.Epoch{"a": 2, "b": 2, "c": 2})))
	fin := w.Placement
	if fin.Epoch != 3 || len(w.Await) != 0 || len(w.Change.Added) != 0 || len(w.Change.Removed) != 2 {
		t.Fatalf("final: epoch %d await %v change %+v", fin.Epoch, w.Await, w.Change)
	}
	if got := fmt.Sprint(placement.Counts(&fin)); got != "map[a:3 b:3 c:2]" {
		t.Fatalf("final counts %s", got)
	}
	for _, x := range testModel.PlacementExperts() {
		if len(fin.OwnersOf(x.ID)) != 1 {
			t.Fatalf("final owners of %v: %v", x.ID, fin.OwnersOf(x.ID))
		}
	}
	if r := report(t, c.Step(WriteDone{Placement: fin, Rev: 3})); !r.Status.OK || r.Status.Epoch != 3 {
		t.Fatalf("final verdict %+v", r.Status)
	}
	if e, _ := c.Migration("m1"); e != 0 {
		t.Fatalf("still migrating at epoch %d", e)
	}
	silent(t, c.Step(stats(map[cluster.WorkerID]cluster.Epoch{"a": 3, "b": 3, "c": 3})))
}

// TestCoreMigrationBounds: the wait ends when it times out or when the
// loading worker dies; a dead worker's copies are never kept; an old
// owner keeps old copies only within its budget.
func TestCoreMigrationBounds(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		c, _ := mbbCore(t, ws("a", "b"))
		w := one(t, c.Step(WorkersChanged{Workers: ws("a", "b", "c")}))
		c.Step(WriteDone{Placement: w.Placement, Rev: 2})
		silent(t, c.Step(MigrationTimedOut{Model: "m1", Epoch: 1})) // stale
		w = one(t, c.Step(MigrationTimedOut{Model: "m1", Epoch: 2}))
		if w.Placement.Epoch != 3 || len(w.Change.Removed) != 2 || len(w.Await) != 0 {
			t.Fatalf("after timeout: epoch %d change %+v", w.Placement.Epoch, w.Change)
		}
	})
	t.Run("loader dies", func(t *testing.T) {
		c, p1 := mbbCore(t, ws("a", "b"))
		w := one(t, c.Step(WorkersChanged{Workers: ws("a", "b", "c")}))
		c.Step(WriteDone{Placement: w.Placement, Rev: 2})
		w = one(t, c.Step(WorkersChanged{Workers: ws("a", "b")}))
		if !placement.Equal(&w.Placement, &p1) || w.Placement.Epoch != 3 || len(w.Await) != 0 {
			t.Fatalf("after c died: epoch %d %v", w.Placement.Epoch, w.Placement.Owners)
		}
	})
	t.Run("dead owner", func(t *testing.T) {
		c, p1 := mbbCore(t, ws("a", "b"))
		// b dies as c joins: b's copies go to c and are not kept on b.
		w := one(t, c.Step(WorkersChanged{Workers: ws("a", "c")}))
		for _, x := range p1.Owned("b") {
			if got := w.Placement.OwnersOf(x); slices.Contains(got, "b") {
				t.Fatalf("dead b kept %v: %v", x, got)
			}
		}
		if _, ok := w.Placement.Workers["b"]; ok {
			t.Fatal("dead b in the placement")
		}
	})
	t.Run("budget", func(t *testing.T) {
		two := ws("a", "b")
		for i := range two {
			two[i].MemBytes = 400 // 4 experts each: full
		}
		c, _ := mbbCore(t, two)
		// c joins while a's memory shrinks to 2 experts: a cannot keep the
		// copies it gives up; b (room for 4, keeping 3) keeps one.
		three := append(slices.Clone(two), ws("c")...)
		three[0].MemBytes = 200
		three[2].MemBytes = 400
		w := one(t, c.Step(WorkersChanged{Workers: three}))
		tr := w.Placement
		for id, n := range placement.Counts(&tr) {
			if int64(n)*100 > tr.Workers[id].MemBytes {
				t.Fatalf("%s holds %d copies over its budget: %v", id, n, placement.Counts(&tr))
			}
		}
		if got := fmt.Sprint(placement.Counts(&tr)); got != "map[a:2 b:4 c:3]" || fmt.Sprint(w.Await) != "[c]" {
			t.Fatalf("transitional counts %s await %v", got, w.Await)
		}
	})
}
