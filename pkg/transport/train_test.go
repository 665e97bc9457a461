package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/train"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// trainConfig is the dsv3-micro training preset (3 layers, the first dense,
// 8 experts, top-2 of 2 groups, a shared expert).
func trainConfig(t *testing.T) *model.Config {
	t.Helper()
	hf, err := train.Preset("dsv3-micro", 256)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(hf)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// textBatches returns `steps` global batches of B rows of T byte tokens
// cut from a repeated sentence (learnable, so the loss falls).
func textBatches(steps, B, T int) [][][]int32 {
	const text = "Switchyard routes every token to the experts that own it, and the experts send the rows back in order. "
	var out [][][]int32
	pos := 0
	for s := 0; s < steps; s++ {
		var b [][]int32
		for r := 0; r < B; r++ {
			row := make([]int32, T)
			for i := range row {
				row[i] = int32(text[pos%len(text)])
				pos++
			}
			pos += 7 // rows start at different phases of the sentence
			b = append(b, row)
		}
		out = append(out, b)
	}
	return out
}

// A data- and expert-parallel group of n ranks (goroutines, train.LocalGroup)
// whose experts live on n ExpertServers reached over gRPC reproduces the
// loss curve of one process training on the same global batches, and the
// owners' experts end where the single process's do. Rank r optimizes the
// experts of server r (its DistStepper's owned store is that server's
// store), as a worker optimizes the experts it serves.
func TestRemoteTrainingReproducesSingleProcess(t *testing.T) {
	cfg := trainConfig(t)
	fp := cfg.Fingerprint()
	sc := train.DefaultJobConfig().Step
	sc.Schedule.Warmup, sc.Schedule.Total = 3, 12
	sc.BiasUpdateSpeed, sc.Loss.ZCoef = 1e-3, 1e-3
	const steps, B, T = 12, 4, 24
	batches := textBatches(steps, B, T)
	ctx := context.Background()
	initOpt := model.InitOptions{Seed: 3}

	// One process: every expert in one store.
	refModel, refStore, err := model.NewRandom(cfg, initOpt)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := train.NewStepper(refModel, refStore, sc)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float64, steps)
	for i, gb := range batches {
		out, err := ref.TrainStep(ctx, gb)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = out.Loss
	}

	E := cfg.MoE.Router.NumExperts
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d ranks", n), func(t *testing.T) {
			owner := func(id expert.ID) int { return (id.Layer*E + id.Expert) % n }
			workers := make([]*testWorker, n)
			for s := range workers {
				opt := initOpt
				opt.Experts = func(id expert.ID) bool { return owner(id) == s }
				_, store, err := model.NewRandom(cfg, opt)
				if err != nil {
					t.Fatal(err)
				}
				workers[s] = startWorker(t, cluster.WorkerID(fmt.Sprintf("w%d", s)), store, ServerConfig{Model: fp, Hidden: cfg.Hidden}, nil)
			}
			// Each expert lists a second "replica" that does not hold it: a
			// trainer that used any owner but the first would be refused.
			pl := &cluster.Placement{Model: fp, Epoch: 1, Owners: make([][][]cluster.WorkerID, cfg.Layers), Workers: map[cluster.WorkerID]cluster.WorkerInfo{}}
			for _, w := range workers {
				pl.Workers[w.id] = cluster.WorkerInfo{ID: w.id, Addr: w.addr}
			}
			for l, isMoE := range cfg.LayerIsMoE {
				if isMoE {
					pl.Owners[l] = make([][]cluster.WorkerID, E)
					for e := range E {
						o := owner(expert.ID{Layer: l, Expert: e})
						pl.Owners[l][e] = []cluster.WorkerID{workers[o].id, workers[(o+1)%n].id}
					}
				}
			}
			src := NewStaticPlacement(pl)
			comms := train.LocalGroup(n)
			steppers := make([]*train.DistStepper, n)
			for r := range steppers {
				m, _, err := model.NewRandom(cfg, model.InitOptions{Seed: initOpt.Seed, Experts: func(expert.ID) bool { return false }})
				if err != nil {
					t.Fatal(err)
				}
				tr, err := NewRemoteTrainer(src, newPool(t, ClientConfig{Model: fp, Worker: cluster.WorkerID(fmt.Sprintf("rank%d", r))}), "equivalence")
				if err != nil {
					t.Fatal(err)
				}
				m.Experts = tr
				if steppers[r], err = train.NewDistStepper(m, workers[r].store, comms[r], sc); err != nil {
					t.Fatal(err)
				}
			}
			got := make([]float64, steps)
			for i, gb := range batches {
				errs := make([]error, n)
				var wg sync.WaitGroup
				for r := range steppers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						lo, hi := train.RankRows(len(gb), n, r)
						out, err := steppers[r].TrainStep(ctx, gb[lo:hi])
						if err != nil {
							errs[r] = fmt.Errorf("rank %d step %d: %w", r, i+1, err)
							return
						}
						if r == 0 {
							got[i] = out.Loss
						}
					}()
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					t.Fatal(err)
				}
			}
			worst := 0.0
			for i := range want {
				d := math.Abs(got[i] - want[i])
				worst = max(worst, d)
				if d > 1e-4 {
					t.Errorf("step %d: loss %.6f over gRPC, %.6f in one process", i+1, got[i], want[i])
				}
			}
			if got[steps-1] >= got[0] {
				t.Errorf("loss did not fall: %.4f -> %.4f", got[0], got[steps-1])
			}
			// The owners' experts (optimized by their ranks) match the
			// single process's.
			worstW, nExperts := 0.0, 0
			for _, w := range workers {
				for _, id := range w.store.IDs() {
					g, r := w.store.Get(id), refStore.Get(id)
					for k, pair := range [][2][]float32{{g.Gate.F32, r.Gate.F32}, {g.Up.F32, r.Up.F32}, {g.Down.F32, r.Down.F32}} {
						d := relDiff(pair[0], pair[1])
						worstW = max(worstW, d)
						if d > 1e-5 {
							t.Errorf("expert %v matrix %d on %s: relative difference %.3g from one process", id, k, w.id, d)
						}
					}
					nExperts++
				}
				if st := w.srv.Snapshot(); st.Requests == 0 {
					t.Errorf("worker %s served no training requests", w.id)
				}
			}
			if nExperts != cfg.NumMoELayers()*E {
				t.Fatalf("owners hold %d experts, want %d", nExperts, cfg.NumMoELayers()*E)
			}
			t.Logf("%d ranks x %d owners, %d steps: worst |loss - 1 process| = %.2g (%.3f -> %.3f); worst expert weight rel. diff %.2g",
				n, n, steps, worst, got[0], got[steps-1], worstW)
		})
	}
}

// trainTagHooks replaces a server's training computation with one that
// tags rows like tagHook: the forward copies each row and writes
// layer*1000+expert and the owner's tag in columns 2 and 3; the backward
// does the same to each dy row, using the layout its forward saved.
func trainTagHooks(s *ExpertServer, owner int) {
	var mu sync.Mutex
	saved := map[forwardKey][]int32{} // plan offsets of the saved forward
	tag := func(layer int, offsets []int32, in, out []float32, d int) {
		for e := 0; e+1 < len(offsets); e++ {
			for r := int(offsets[e]); r < int(offsets[e+1]); r++ {
				row := out[r*d : (r+1)*d]
				copy(row, in[r*d:(r+1)*d])
				row[colExpert] = float32(layer*1000 + e)
				row[colOwner] = float32(owner)
			}
		}
	}
	s.trainForward = func(_ context.Context, caller string, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
		for i, tok := range plan.Token[:plan.Len()] {
			if int(tok) != i {
				return fmt.Errorf("plan row %d has token %d: the owner's plan must be the identity", i, tok)
			}
		}
		mu.Lock()
		saved[forwardKey{caller, layer}] = append([]int32(nil), plan.Offsets...)
		mu.Unlock()
		tag(layer, plan.Offsets, x, y, d)
		return nil
	}
	s.trainBackward = func(_ context.Context, caller string, layer int, dy, dx []float32) error {
		mu.Lock()
		off := saved[forwardKey{caller, layer}]
		delete(saved, forwardKey{caller, layer})
		mu.Unlock()
		if off == nil {
			return fmt.Errorf("hook: no forward for %s layer %d", caller, layer)
		}
		tag(layer, off, dy, dx, len(dy)/int(off[len(off)-1]))
		return nil
	}
}

// Three owners hold the experts of MoE layers 1 and 3 (layer 3 lists a
// replica second); two callers train concurrently, with chunks cut
// mid-value. Every forward row comes back for its token from its expert's
// FIRST owner, and every backward row (tagged with its caller and plan
// row) comes back to the same plan row from the same owner.
func TestTaggedTrainingRowsReturnToTheirPlanRows(t *testing.T) {
	const (
		layers, E, K, D = 4, 8, 2, 24
		chunk           = 1002 // not a multiple of 4
	)
	moe := func(l int) bool { return l == 1 || l == 3 }
	owners := func(l, e int) []int {
		if l == 1 {
			return []int{e % 3}
		}
		return []int{e % 3, (e + 1) % 3}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var workers []*testWorker
	for w := 0; w < 3; w++ {
		store := expert.NewStore()
		for _, l := range []int{1, 3} {
			for e := 0; e < E; e++ {
				for _, o := range owners(l, e) {
					if o == w {
						store.Put(expert.ID{Layer: l, Expert: e}, randomFFN(rng, D, 4))
					}
				}
			}
		}
		tw := startWorker(t, cluster.WorkerID(fmt.Sprintf("w%d", w)), store, ServerConfig{Hidden: D, ChunkBytes: chunk}, nil)
		trainTagHooks(tw.srv, w)
		workers = append(workers, tw)
	}
	src := NewStaticPlacement(placement(1, layers, E, moe, workers, owners))
	primary := func(l int) func(e int) []int { return func(e int) []int { return owners(l, e)[:1] } }

	var wg sync.WaitGroup
	for c := 0; c < 2; c++ {
		tr, err := NewRemoteTrainer(src, newPool(t, ClientConfig{Worker: cluster.WorkerID(fmt.Sprintf("c%d", c)), ChunkBytes: chunk}), "tagged")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for it := 0; it < 3; it++ {
				T := 30 + 11*it + c
				plans := map[int]*router.Plan{}
				for _, l := range []int{1, 3} { // forward, layer by layer
					plan := route(T, E, K, uint64(100*c+10*it+l))
					x := taggedInput(c, T, D, uint64(it))
					y := make([]float32, plan.Len()*D)
					if err := tr.ForwardTrain(ctx, l, plan, x, D, y); err != nil {
						t.Error(err)
						return
					}
					checkTagged(t, c, l, plan, x, y, D, primary(l))
					plans[l] = plan
				}
				for _, l := range []int{3, 1} { // backward, in reverse
					plan := plans[l]
					// dy row r carries the caller in column 0 and r in column 1.
					dy := taggedInput(c, plan.Len(), D, uint64(1000+it))
					dx := make([]float32, len(dy))
					if err := tr.BackwardTrain(ctx, l, dy, dx); err != nil {
						t.Error(err)
						return
					}
					for e := 0; e < E; e++ {
						lo, hi := plan.Rows(e)
						for r := lo; r < hi; r++ {
							row, in := dx[r*D:(r+1)*D], dy[r*D:(r+1)*D]
							if int(row[colClient]) != c || int(row[colToken]) != r || int(row[colExpert]) != l*1000+e || int(row[colOwner]) != owners(l, e)[0] {
								t.Errorf("caller %d layer %d: dx of plan row %d (expert %d) came back as caller %v row %v expert-tag %v owner %v",
									c, l, r, e, row[colClient], row[colToken], row[colExpert], row[colOwner])
								return
							}
							for j := colData; j < D; j++ {
								if row[j] != in[j] {
									t.Errorf("caller %d layer %d plan row %d column %d = %v, sent %v", c, l, r, j, row[j], in[j])
									return
								}
							}
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	// One request per (caller, iteration, layer, phase) per owner at most.
	for _, w := range workers {
		if st := w.srv.Snapshot(); st.Requests == 0 || st.Requests > 2*3*2*2 {
			t.Errorf("worker %s answered %d requests, want 1..%d", w.id, st.Requests, 2*3*2*2)
		}
	}
}

// trainOwner is one real owner of layer 0's E experts (D 16, F 8) and a
// local store holding the same experts, for reference results.
func trainOwner(t *testing.T, id cluster.WorkerID, E int) (*testWorker, *expert.Store) {
	t.Helper()
	const D, F = 16, 8
	rng := rand.New(rand.NewPCG(7, 8))
	store, local := expert.NewStore(), expert.NewStore()
	for e := 0; e < E; e++ {
		f := randomFFN(rng, D, F)
		store.Put(expert.ID{Layer: 0, Expert: e}, f)
		local.Put(expert.ID{Layer: 0, Expert: e}, f)
	}
	return startWorker(t, id, store, ServerConfig{Hidden: D}, nil), local
}

// A backward needs the forward it differentiates: without one, a second
// time (duplicate), or after a newer forward replaced it (stale), the
// owner refuses it with ErrNoForward (FAILED_PRECONDITION) and a message
// that says which, and the refused request adds no gradient.
func TestTrainingBackwardWithoutItsForwardIsRefused(t *testing.T) {
	const E, D, T, layer = 4, 16, 12, 0
	w, local := trainOwner(t, "w0", E)
	pl := placement(1, 1, E, func(int) bool { return true }, []*testWorker{w}, func(int, int) []int { return []int{0} })
	pool := newPool(t, ClientConfig{Worker: "c0"})
	tr, err := NewRemoteTrainer(NewStaticPlacement(pl), pool, "job-a")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	plan := route(T, E, 2, 5)
	x := taggedInput(0, T, D, 1)
	dy := taggedInput(1, plan.Len(), D, 2)
	forward := func(tr *RemoteTrainer) *remoteForward {
		t.Helper()
		y := make([]float32, plan.Len()*D)
		if err := tr.ForwardTrain(ctx, layer, plan, x, D, y); err != nil {
			t.Fatal(err)
		}
		want := make([]float32, len(y))
		if err := local.Compute(ctx, layer, plan, x, D, want); err != nil {
			t.Fatal(err)
		}
		if d := relDiff(y, want); d > 1e-6 {
			t.Fatalf("training forward differs from local compute by %.3g", d)
		}
		return tr.saved[layer]
	}
	refused := func(err error, why ...string) {
		t.Helper()
		if !errors.Is(err, ErrNoForward) || status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("err = %v (code %v), want ErrNoForward / FailedPrecondition", err, status.Code(err))
		}
		for _, m := range append(why, "layer 0", "w0", w.addr) {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("error %q does not mention %q", err, m)
			}
		}
	}

	// No forward at all: the trainer itself refuses.
	err = tr.BackwardTrain(ctx, layer, dy, make([]float32, len(dy)))
	if !errors.Is(err, ErrNoForward) || !strings.Contains(err.Error(), "layer 0") {
		t.Fatalf("backward before any forward: %v", err)
	}

	// A forward, its backward (checked against a local store), then the
	// same backward again.
	fw := forward(tr)
	dx := make([]float32, len(dy))
	if err := tr.BackwardTrain(ctx, layer, dy, dx); err != nil {
		t.Fatal(err)
	}
	if err := local.ForwardTrain(ctx, layer, plan, x, D, make([]float32, plan.Len()*D)); err != nil {
		t.Fatal(err)
	}
	want := make([]float32, len(dy))
	if err := local.BackwardTrain(ctx, layer, dy, want); err != nil {
		t.Fatal(err)
	}
	if d := relDiff(dx, want); d > 1e-6 {
		t.Fatalf("remote dx differs from local by %.3g", d)
	}
	tr.saved[layer] = fw // replay the request
	refused(tr.BackwardTrain(ctx, layer, dy, dx), "duplicate backward", fmt.Sprintf("forward seq %d", fw.seq))
	for e := 0; e < E; e++ {
		id := expert.ID{Layer: layer, Expert: e}
		g, r := w.store.Grad(id), local.Grad(id)
		if d := max(relDiff(g.Gate.F32, r.Gate.F32), relDiff(g.Up.F32, r.Up.F32), relDiff(g.Down.F32, r.Down.F32)); d > 1e-6 {
			t.Fatalf("expert %d: owner's gradient differs from one local backward by %.3g (did the refused duplicate count?)", e, d)
		}
	}

	// Two forwards, then a backward of the first: stale. The second's
	// backward still works.
	old := forward(tr)
	newer := forward(tr)
	tr.saved[layer] = old
	refused(tr.BackwardTrain(ctx, layer, dy, dx), "stale backward", fmt.Sprintf("forward seq %d replaced it", newer.seq))
	tr.saved[layer] = newer
	if err := tr.BackwardTrain(ctx, layer, dy, dx); err != nil {
		t.Fatalf("backward of the newer forward after a refused stale one: %v", err)
	}

	// Another job of the same worker has no forward on the owner: its
	// activations are kept apart.
	other, err := NewRemoteTrainer(NewStaticPlacement(pl), pool, "job-b")
	if err != nil {
		t.Fatal(err)
	}
	fw = forward(tr)
	other.saved[layer] = fw
	refused(other.BackwardTrain(ctx, layer, dy, dx), `worker "c0" job "job-b"`, "no forward of this caller and layer")
	if err := tr.BackwardTrain(ctx, layer, dy, dx); err != nil {
		t.Fatalf("job-a's backward after job-b's refusal: %v", err)
	}

	// A backward whose layout is not its forward's (one expert left out)
	// is a bad request, and leaves the forward to its real backward.
	fw = forward(tr)
	d0 := *fw.dests[0]
	d0.experts, d0.rows, d0.n = d0.experts[1:], d0.rows[1:], d0.n-int(d0.rows[0])
	d0.ranges = [][2]int{{int(fw.dests[0].rows[0]), d0.ranges[0][1]}}
	bad := *fw
	bad.dests = []*trainDest{&d0}
	tr.saved[layer] = &bad
	err = tr.BackwardTrain(ctx, layer, dy, dx)
	if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "differs from its forward's") {
		t.Fatalf("backward with another layout: %v, want ErrBadRequest", err)
	}
	tr.saved[layer] = fw
	if err := tr.BackwardTrain(ctx, layer, dy, dx); err != nil {
		t.Fatalf("backward after a refused malformed one: %v", err)
	}
}

// An owner that stops answering fails ForwardTrain and BackwardTrain within
// the call's deadline, naming the layer, the worker and its address; the
// replica listed second is not tried (training has one owner per expert).
func TestSilentTrainingOwnerFailsWithinDeadline(t *testing.T) {
	const E, D, T, layer = 4, 16, 12, 0
	w0, _ := trainOwner(t, "w0", E)
	w1, _ := trainOwner(t, "w1", E)
	var blockFwd, blockBwd atomic.Bool
	fwd, bwd := w1.srv.trainForward, w1.srv.trainBackward
	w1.srv.trainForward = func(ctx context.Context, caller string, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
		if blockFwd.Load() {
			<-ctx.Done() // silent until the caller gives up
			return ctx.Err()
		}
		return fwd(ctx, caller, layer, plan, x, d, y)
	}
	w1.srv.trainBackward = func(ctx context.Context, caller string, layer int, dy, dx []float32) error {
		if blockBwd.Load() {
			<-ctx.Done()
			return ctx.Err()
		}
		return bwd(ctx, caller, layer, dy, dx)
	}
	// Experts 1 and 3 belong to w1, with w0 listed as a replica.
	pl := placement(1, 1, E, func(int) bool { return true }, []*testWorker{w0, w1}, func(_, e int) []int { return []int{e % 2, (e + 1) % 2} })
	tr, err := NewRemoteTrainer(NewStaticPlacement(pl), newPool(t, ClientConfig{Worker: "c0", CallTimeout: 400 * time.Millisecond}), "job")
	if err != nil {
		t.Fatal(err)
	}
	plan := route(T, E, 2, 3)
	x := taggedInput(0, T, D, 1)
	y := make([]float32, plan.Len()*D)
	dy, dx := taggedInput(0, plan.Len(), D, 2), make([]float32, plan.Len()*D)
	failsInTime := func(what string, f func() error) {
		t.Helper()
		start := time.Now()
		err := f()
		took := time.Since(start)
		if !errors.Is(err, ErrPeerUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: err = %v, want a deadline error", what, err)
		}
		if took < 350*time.Millisecond || took > 400*time.Millisecond+2*time.Second {
			t.Fatalf("%s returned after %v, want about 400ms", what, took)
		}
		for _, m := range []string{"layer 0", "w1", w1.addr} {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: error %q does not name %q", what, err, m)
			}
		}
		if strings.Contains(err.Error(), w0.addr) {
			t.Errorf("%s: error %q blames w0, which answered", what, err)
		}
		t.Logf("%s failed after %v: %v", what, took.Round(time.Millisecond), err)
	}

	blockFwd.Store(true)
	failsInTime("forward", func() error { return tr.ForwardTrain(context.Background(), layer, plan, x, D, y) })
	if err := tr.BackwardTrain(context.Background(), layer, dy, dx); !errors.Is(err, ErrNoForward) {
		t.Fatalf("backward after a failed forward: %v, want ErrNoForward", err)
	}

	blockFwd.Store(false)
	blockBwd.Store(true)
	if err := tr.ForwardTrain(context.Background(), layer, plan, x, D, y); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	failsInTime("backward", func() error { return tr.BackwardTrain(ctx, layer, dy, dx) })
	// Two forwards and one backward of its own experts: w1's rows never
	// failed over to it.
	if st := w0.srv.Snapshot(); st.Requests != 3 {
		t.Errorf("w0 answered %d requests, want 3", st.Requests)
	}

	// A crashed owner fails the call at once: the exchange with the silent
	// one is abandoned rather than waited for, and only the crash is
	// reported.
	blockFwd.Store(true)
	w0.crash()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err = tr.ForwardTrain(ctx, layer, plan, x, D, y)
	if took := time.Since(start); !errors.Is(err, ErrPeerUnavailable) || took > 5*time.Second {
		t.Fatalf("forward with a crashed owner: %v after %v, want ErrPeerUnavailable at once", err, took)
	}
	if !strings.Contains(err.Error(), w0.addr) || strings.Contains(err.Error(), w1.addr) {
		t.Errorf("error %q should name the crashed w0 (%s) only", err, w0.addr)
	}
	t.Logf("forward with a crashed owner failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
}

// Training needs float32 experts: an owner holding bfloat16 weights (as
// loaded for serving) refuses training with expert.ErrNotFloat32, and
// still serves inference.
func TestBF16OwnerRefusesTraining(t *testing.T) {
	const E, D, F, T, layer = 2, 16, 8, 6, 0
	rng := rand.New(rand.NewPCG(3, 4))
	bf := func(m tensor.Mat) tensor.Mat {
		out := tensor.Mat{Rows: m.Rows, Cols: m.Cols, BF16: make([]uint16, len(m.F32))}
		tensor.F32ToBF16(out.BF16, m.F32)
		return out
	}
	store := expert.NewStore()
	for e := 0; e < E; e++ {
		f := randomFFN(rng, D, F)
		store.Put(expert.ID{Layer: layer, Expert: e}, &expert.FFN{Gate: bf(f.Gate), Up: bf(f.Up), Down: bf(f.Down)})
	}
	w := startWorker(t, "bf16", store, ServerConfig{Hidden: D}, nil)
	pl := placement(1, 1, E, func(int) bool { return true }, []*testWorker{w}, func(int, int) []int { return []int{0} })
	tr, err := NewRemoteTrainer(NewStaticPlacement(pl), newPool(t, ClientConfig{Worker: "c0"}), "job")
	if err != nil {
		t.Fatal(err)
	}
	plan := route(T, E, 1, 1)
	x := taggedInput(0, T, D, 1)
	y := make([]float32, plan.Len()*D)
	err = tr.ForwardTrain(context.Background(), layer, plan, x, D, y)
	if !errors.Is(err, expert.ErrNotFloat32) || status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("err = %v (code %v), want expert.ErrNotFloat32 / FailedPrecondition", err, status.Code(err))
	}
	for _, m := range []string{"bf16", w.addr, "training forward of layer 0", "float32"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
	if err := tr.Compute(context.Background(), layer, plan, x, D, y); err != nil {
		t.Fatalf("inference on the bf16 owner: %v", err)
	}
}

// An owner that predates training ignores the phase and answers as
// inference; the trainer notices (the response does not echo the phase)
// and fails with ErrIncompatible instead of using the result.
func TestTrainerRefusesAnOwnerWithoutTraining(t *testing.T) {
	const D, T = 8, 4
	old := startFake(t, &fakeWorker{experts: func(s pb.Worker_ExpertsServer) error {
		s.SetHeader(metadata.Pairs(MDProtocol, fmt.Sprint(cluster.ProtocolVersion), MDModel, testModel))
		f, err := s.Recv()
		if err != nil {
			return err
		}
		for g := f; !g.Last; {
			if g, err = s.Recv(); err != nil {
				return err
			}
		}
		if err := s.Send(&pb.ExpertFrame{RequestId: f.RequestId, Last: true, Layer: f.Layer, Experts: f.Experts, Rows: f.Rows,
			Shape: f.Shape, Dtype: pb.DType_DTYPE_F32, Payload: make([]byte, f.Shape[0]*f.Shape[1]*4)}); err != nil {
			return err
		}
		_, err = s.Recv()
		if err == io.EOF {
			return nil
		}
		return err
	}})
	pl := placement(1, 1, 1, func(int) bool { return true }, []*testWorker{old}, func(int, int) []int { return []int{0} })
	tr, err := NewRemoteTrainer(NewStaticPlacement(pl), newPool(t, ClientConfig{Worker: "c0"}), "job")
	if err != nil {
		t.Fatal(err)
	}
	plan := route(T, 1, 1, 1)
	err = tr.ForwardTrain(context.Background(), 0, plan, taggedInput(0, T, D, 1), D, make([]float32, plan.Len()*D))
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "does not support training") {
		t.Fatalf("err = %v, want ErrIncompatible saying the worker does not support training", err)
	}
}

func TestNewRemoteTrainerNeedsACallerID(t *testing.T) {
	_, err := NewRemoteTrainer(NewStaticPlacement(nil), newPool(t, ClientConfig{}), "job")
	if err == nil || !strings.Contains(err.Error(), "ClientConfig.Worker") {
		t.Fatalf("err = %v, want a refusal naming ClientConfig.Worker", err)
	}
}
