package worker

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
)

// applyRig is a worker set up on a real checkpoint and store (no etcd, no
// gRPC serving) whose loads are observed: before each load it records what
// the store will hold once the expert is in, and which experts it holds.
type applyRig struct {
	t    *testing.T
	w    *Worker
	size int64 // bytes of one expert of the tiny model

	peak   int64         // most expert bytes held at any point
	atLoad [][]expert.ID // the store's IDs at each load
	epoch  cluster.Epoch
}

// newApplyRig makes worker "w" with room for budgetExperts experts of the
// tiny model (0: unlimited) above the runtime reserve.
func newApplyRig(t *testing.T, budgetExperts int) *applyRig {
	t.Helper()
	dir := tinyModel(t, 64)
	ck, err := model.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	f, err := model.LoadExpert(ck.Config, ck.Source, expert.ID{Layer: 0, Expert: 0}, model.LoadOptions{KeepBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	r := &applyRig{t: t, size: f.Bytes()}
	cfg := DefaultConfig()
	cfg.ID, cfg.ModelDir = "w", dir
	if budgetExperts > 0 {
		cfg.MemBytes = RuntimeReserve + int64(budgetExperts)*r.size
	}
	if r.w, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	srv, err := r.w.serveModel(ck)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	if got := r.w.sizeOf(expert.ID{Layer: 1, Expert: 7}); got != r.size {
		t.Fatalf("expertSizes says %d bytes, a loaded expert has %d", got, r.size)
	}
	load := r.w.loadExpert
	r.w.loadExpert = func(id expert.ID) (*expert.FFN, error) {
		r.peak = max(r.peak, r.w.store.Bytes()+r.w.sizeOf(id))
		held := r.w.store.IDs()
		slices.SortFunc(held, expert.Compare)
		r.atLoad = append(r.atLoad, held)
		return load(id)
	}
	return r
}

// apply applies a placement of the 2-layer, 8-expert model in which
// worker w owns mine ("layer/expert" names) and worker x the rest.
func (r *applyRig) apply(mine ...string) error {
	r.t.Helper()
	r.epoch++
	owns := map[expert.ID]bool{}
	for _, s := range mine {
		l, e, _ := strings.Cut(s, "/")
		li, _ := strconv.Atoi(l)
		ei, _ := strconv.Atoi(e)
		owns[expert.ID{Layer: li, Expert: ei}] = true
	}
	p := &cluster.Placement{Epoch: r.epoch, Owners: make([][][]cluster.WorkerID, 2)}
	for l := range 2 {
		p.Owners[l] = make([][]cluster.WorkerID, 8)
		for e := range 8 {
			p.Owners[l][e] = []cluster.WorkerID{"x"}
			if owns[expert.ID{Layer: l, Expert: e}] {
				p.Owners[l][e] = []cluster.WorkerID{"w"}
			}
		}
	}
	r.atLoad, r.peak = nil, r.w.store.Bytes()
	err := r.w.apply(context.Background(), p)
	if err == nil {
		if got, want := r.w.Held(), p.Owned("w"); !slices.Equal(got, want) {
			r.t.Fatalf("epoch %d: holds %v, placement gives %v", r.epoch, got, want)
		}
		if r.w.Epoch() != r.epoch || r.w.srv.Epoch() != r.epoch {
			r.t.Fatalf("applied epoch %d, server epoch %d, want %d", r.w.Epoch(), r.w.srv.Epoch(), r.epoch)
		}
	}
	return err
}

// TestApplyWithinBudget: a worker with room for 4 experts moves through
// placements that exchange, shrink, grow and overflow its share, and never
// holds more than its budget; it loads before dropping whenever old and
// new fit together, drops first otherwise, and refuses a share that does
// not fit, naming the expert, the budget and what it holds.
func TestApplyWithinBudget(t *testing.T) {
	r := newApplyRig(t, 4)
	budget := 4 * r.size
	if r.w.Budget() != budget {
		t.Fatalf("budget %d, want %d", r.w.Budget(), budget)
	}
	id := func(l, e int) expert.ID { return expert.ID{Layer: l, Expert: e} }
	within := func(step string) {
		t.Helper()
		if r.peak > budget || r.w.store.Bytes() > budget {
			t.Fatalf("%s: held up to %d expert bytes (%d now), budget %d", step, r.peak, r.w.store.Bytes(), budget)
		}
	}

	if err := r.apply("0/0", "0/1", "0/2", "0/3"); err != nil {
		t.Fatal(err)
	}
	within("first share")

	// Two stay, two move away, two arrive: 4 + 2 would not fit, so the two
	// leaving are dropped before anything loads.
	if err := r.apply("0/2", "0/3", "1/0", "1/1"); err != nil {
		t.Fatal(err)
	}
	within("exchange")
	if want := []expert.ID{id(0, 2), id(0, 3)}; len(r.atLoad) != 2 || !slices.Equal(r.atLoad[0], want) {
		t.Fatalf("exchange: held %v at the first load, want the dropped ones gone: %v", r.atLoad, want)
	}

	if err := r.apply("1/0", "1/1"); err != nil {
		t.Fatal(err)
	}
	within("shrink")

	// Growing within the budget loads first (nothing to drop anyway).
	if err := r.apply("1/0", "1/1", "1/2", "1/3"); err != nil {
		t.Fatal(err)
	}
	within("grow")

	// Room for two of one kind and two of another, exactly the budget: a
	// load-first exchange would need 6.
	if err := r.apply("1/0", "1/1", "0/6", "0/7"); err != nil {
		t.Fatal(err)
	}
	within("exchange at the limit")

	// Five experts do not fit four: the apply fails at the fifth, the
	// epoch stays, and the error says why.
	before := r.w.Epoch()
	err := r.apply("0/0", "0/1", "0/2", "0/3", "0/4")
	if !errors.Is(err, ErrOverBudget) {
		t.Fatalf("overflow: err = %v", err)
	}
	t.Logf("overflow: %v", err)
	for _, s := range []string{"L0/E4", "budget " + strconv.FormatInt(budget, 10), strconv.FormatInt(4*r.size, 10) + " expert bytes held"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("overflow error lacks %q", s)
		}
	}
	if r.w.Epoch() != before || r.w.srv.Epoch() != before {
		t.Fatalf("overflow: applied epoch %d, server %d, want %d kept", r.w.Epoch(), r.w.srv.Epoch(), before)
	}
	within("overflow")

	// The next placement that fits is applied (what is held already stays).
	if err := r.apply("0/0", "0/1", "0/2", "0/3"); err != nil {
		t.Fatal(err)
	}
	within("after overflow")
	if len(r.atLoad) != 0 {
		t.Fatalf("reloaded %d experts already held", len(r.atLoad))
	}
}

// TestApplyUnlimitedLoadsFirst: without a budget the old copies serve
// until the new epoch is in force: every load happens while they are
// still held, and they are dropped after.
func TestApplyUnlimitedLoadsFirst(t *testing.T) {
	r := newApplyRig(t, 0)
	if r.w.Budget() != 0 {
		t.Fatalf("budget %d, want 0 (unlimited)", r.w.Budget())
	}
	if err := r.apply("0/0", "0/1", "0/2", "0/3"); err != nil {
		t.Fatal(err)
	}
	if err := r.apply("1/0", "1/1", "1/2", "1/3"); err != nil {
		t.Fatal(err)
	}
	old := []expert.ID{{Layer: 0, Expert: 0}, {Layer: 0, Expert: 1}, {Layer: 0, Expert: 2}, {Layer: 0, Expert: 3}}
	for i, held := range r.atLoad {
		if !slices.Equal(held[:4], old) {
			t.Fatalf("load %d: held %v, want the old share still there", i, held)
		}
	}
	if r.peak != 8*r.size {
		t.Fatalf("peak %d bytes, want old and new together, %d", r.peak, 8*r.size)
	}
}
