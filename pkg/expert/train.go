package expert

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Trainer is an Executor that also runs the expert part of a training step.
// A forward saves what the backward needs, keyed by layer: each layer's
// ForwardTrain must be followed by exactly one BackwardTrain of that layer
// before the next ForwardTrain of the same layer (one micro-batch in flight
// per layer, as in a plain forward-then-backward step).
type Trainer interface {
	Executor
	// ForwardTrain is Compute, saving activations for BackwardTrain.
	ForwardTrain(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error
	// BackwardTrain takes dy [rows, D], the gradient of the loss with respect
	// to the unweighted expert outputs of the layer's last ForwardTrain (in
	// plan row order), writes dx [rows, D], the gradient with respect to each
	// row's input, and accumulates the experts' weight gradients where the
	// experts live.
	BackwardTrain(ctx context.Context, layer int, dy, dx []float32) error
}

// ErrNotFloat32 is returned when training is asked of bfloat16 weights.
var ErrNotFloat32 = errors.New("training needs float32 weights (load with KeepBF16 false)")

// FFNActs holds what FFN.Backward needs from a forward over n rows.
type FFNActs struct {
	X []float32 // [n, D] input rows
	G []float32 // [n, F] gate pre-activation
	U []float32 // [n, F] up projection
	A []float32 // [n, F] silu(G) * U
}

// grow resizes the buffers for n rows.
func (a *FFNActs) grow(n, d, f int) {
	a.X = growF(a.X, n*d)
	a.G = growF(a.G, n*f)
	a.U = growF(a.U, n*f)
	a.A = growF(a.A, n*f)
}

func growF(s []float32, n int) []float32 {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]float32, n)
}

// ForwardSave computes y = FFN(x) for n rows like Forward, keeping the
// activations in acts (x is copied).
func (f *FFN) ForwardSave(y, x []float32, n int, acts *FFNActs) {
	d, F := f.Dims()
	acts.grow(n, d, F)
	copy(acts.X, x[:n*d])
	tensor.Linear(acts.G, acts.X, n, &f.Gate, 0)
	tensor.Linear(acts.U, acts.X, n, &f.Up, 0)
	tensor.SwiGLU(acts.A, acts.G, acts.U)
	tensor.Linear(y, acts.A, n, &f.Down, 0)
}

// Backward takes dy [n, D] and the forward's activations, writes dx [n, D]
// (overwritten) and adds the weight gradients into grad (a float32 FFN of
// the same shape). scratch holds at least 3*n*F floats (nil allocates).
func (f *FFN) Backward(dx, dy []float32, n int, acts *FFNActs, grad *FFN, scratch []float32) {
	d, F := f.Dims()
	if f.Gate.F32 == nil || grad.Gate.F32 == nil {
		panic(ErrNotFloat32)
	}
	if len(scratch) < 3*n*F {
		scratch = make([]float32, 3*n*F)
	}
	dA, dG, dU := scratch[:n*F], scratch[n*F:2*n*F], scratch[2*n*F:3*n*F]
	// y = A Down^T: dA = dy Down, dDown += dy^T A
	tensor.Gemm(false, false, n, F, d, 1, dy, d, f.Down.F32, F, 0, dA, F)
	tensor.Gemm(true, false, d, F, n, 1, dy, d, acts.A, F, 1, grad.Down.F32, F)
	SwiGLUBackward(dG, dU, dA, acts.G, acts.U)
	tensor.Gemm(true, false, F, d, n, 1, dG, F, acts.X, d, 1, grad.Gate.F32, d)
	tensor.Gemm(true, false, F, d, n, 1, dU, F, acts.X, d, 1, grad.Up.F32, d)
	tensor.Gemm(false, false, n, d, F, 1, dG, F, f.Gate.F32, d, 0, dx, d)
	tensor.Gemm(false, false, n, d, F, 1, dU, F, f.Up.F32, d, 1, dx, d)
}

// SwiGLUBackward: a = silu(g)*u. Given da, writes dg and du.
func SwiGLUBackward(dg, du, da, g, u []float32) {
	for i, v := range g {
		s := tensor.Sigmoid(v)
		silu := v * s
		du[i] = da[i] * silu
		dg[i] = da[i] * u[i] * s * (1 + v*(1-s))
	}
}

// NewFFNLike returns a zeroed float32 FFN with f's shapes (a gradient buffer).
func NewFFNLike(f *FFN) *FFN {
	z := func(m *tensor.Mat) tensor.Mat {
		return tensor.Mat{Rows: m.Rows, Cols: m.Cols, F32: make([]float32, m.Rows*m.Cols)}
	}
	return &FFN{Gate: z(&f.Gate), Up: z(&f.Up), Down: z(&f.Down)}
}

// storeLayerTrain is what a Store saves for one layer between ForwardTrain
// and BackwardTrain.
type storeLayerTrain struct {
	offsets []int32
	tokens  []int32
	ffns    []*FFN
	acts    []FFNActs // [E]
}

// trainKey names one saved forward: the caller (a worker ID, "" for the
// local model) and the layer.
type trainKey struct {
	caller string
	layer  int
}

// trainState is the training side of a Store.
type trainState struct {
	mu     sync.Mutex
	layers map[trainKey]*storeLayerTrain
	grads  map[ID]*FFN // the gradients Grad returns (stable buffers)
	// parts holds each caller's contribution to an expert's gradient since
	// the last ZeroGrad; FinishGrads adds them into grads in caller order,
	// so the sum does not depend on the order the callers' backward calls
	// arrived in (bitwise reproducible distributed training).
	parts   map[ID]map[string]*FFN
	dirty   map[ID]bool        // parts changed since grads was last summed
	gradMu  map[ID]*sync.Mutex // serializes accumulation into one (expert, caller) part
	touched map[ID]bool        // received rows since the last ZeroGrad
}

func (s *Store) ts() *trainState {
	s.trainOnce.Do(func() {
		s.train = &trainState{layers: map[trainKey]*storeLayerTrain{}, grads: map[ID]*FFN{}, parts: map[ID]map[string]*FFN{},
			dirty: map[ID]bool{}, gradMu: map[ID]*sync.Mutex{}, touched: map[ID]bool{}}
	})
	return s.train
}

// Grad returns the accumulated gradient of an expert the store holds (a
// zero gradient if it received no rows since the last ZeroGrad), or nil if
// the store does not hold it. Every held expert always has a gradient, as
// in transformers 5.x, where a layer's experts are one fused parameter:
// AdamW then decays and moves every expert each step, including experts no
// token reached (their momentum keeps moving them).
func (s *Store) Grad(id ID) *FFN {
	f := s.Get(id)
	if f == nil {
		return nil
	}
	g := s.grad(id, f)
	t := s.ts()
	t.mu.Lock()
	t.finish(id)
	t.mu.Unlock()
	return g
}

// Touched reports whether an expert received rows since the last ZeroGrad.
func (s *Store) Touched(id ID) bool {
	t := s.ts()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.touched[id]
}

// ZeroGrad clears every accumulated expert gradient (keeping the buffers).
func (s *Store) ZeroGrad() {
	t := s.ts()
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, g := range t.grads {
		zeroFFN(g)
		delete(t.touched, id)
		delete(t.dirty, id)
	}
	for _, ps := range t.parts {
		for _, p := range ps {
			zeroFFN(p)
		}
	}
}

func zeroFFN(g *FFN) {
	clear(g.Gate.F32)
	clear(g.Up.F32)
	clear(g.Down.F32)
}

// FinishGrads makes the gradient buffers (those Grad returns, which
// optimizers hold on to) the sum of every caller's contribution since the
// last ZeroGrad, added in caller order (sorted caller names; the local
// model's "" first), so the result does not depend on the order in which
// the callers' backward calls arrived: call it once all backward calls of
// a step have returned, before the buffers are read. Grad does the same
// for its expert. The first caller's part is copied and the others added,
// so a single caller's gradient is exactly what its backward computed.
func (s *Store) FinishGrads() {
	t := s.ts()
	t.mu.Lock()
	defer t.mu.Unlock()
	ids := make([]ID, 0, len(t.dirty))
	for id := range t.dirty {
		ids = append(ids, id)
	}
	// Experts are independent: sum them in parallel (each id's grads and
	// parts are touched by one goroutine; t.mu is held throughout, so no
	// backward call changes them meanwhile).
	tensor.ParallelFor(len(ids), 1, func(lo, hi int) {
		for _, id := range ids[lo:hi] {
			t.sum(id)
		}
	})
	for _, id := range ids {
		delete(t.dirty, id)
	}
}

// finish sums id's parts into its gradient if they changed; t.mu held.
func (t *trainState) finish(id ID) {
	if t.dirty[id] {
		t.sum(id)
		delete(t.dirty, id)
	}
}

// sum sets id's gradient to its parts added in caller order; t.mu held
// (the maps are only read).
func (t *trainState) sum(id ID) {
	g, ps := t.grads[id], t.parts[id]
	if g == nil {
		return
	}
	callers := make([]string, 0, len(ps))
	for c := range ps {
		callers = append(callers, c)
	}
	slices.Sort(callers)
	for i, c := range callers {
		p := ps[c]
		for _, m := range [][2][]float32{{g.Gate.F32, p.Gate.F32}, {g.Up.F32, p.Up.F32}, {g.Down.F32, p.Down.F32}} {
			if i == 0 {
				copy(m[0], m[1])
			} else {
				tensor.Add(m[0], m[1])
			}
		}
	}
}

// part returns (creating, zeroed) caller's gradient part of an expert.
func (t *trainState) part(id ID, caller string, f *FFN) *FFN {
	ps := t.parts[id]
	if ps == nil {
		ps = map[string]*FFN{}
		t.parts[id] = ps
	}
	p := ps[caller]
	if p == nil {
		p = NewFFNLike(f)
		ps[caller] = p
	}
	return p
}

// grad returns (creating) the gradient buffer of an expert.
func (s *Store) grad(id ID, f *FFN) *FFN {
	t := s.ts()
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.grads[id]
	if g == nil {
		g = NewFFNLike(f)
		t.grads[id] = g
		t.gradMu[id] = new(sync.Mutex)
	}
	return g
}

// ForwardTrain implements Trainer for the local model (caller "").
func (s *Store) ForwardTrain(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	return s.ForwardTrainFor(ctx, "", layer, plan, x, d, y)
}

// BackwardTrain implements Trainer for the local model (caller "").
func (s *Store) BackwardTrain(ctx context.Context, layer int, dy, dx []float32) error {
	return s.BackwardTrainFor(ctx, "", layer, dy, dx)
}

// TrainerFor returns a Trainer whose saved activations are kept apart from
// every other caller's: several models (in-process workers, or remote
// workers served by one owner) can train through one store at once.
// Gradients of an expert accumulate over all callers.
func (s *Store) TrainerFor(caller string) Trainer { return callerTrainer{s, caller} }

type callerTrainer struct {
	s      *Store
	caller string
}

func (c callerTrainer) Compute(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	return c.s.Compute(ctx, layer, plan, x, d, y)
}
func (c callerTrainer) ForwardTrain(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	return c.s.ForwardTrainFor(ctx, c.caller, layer, plan, x, d, y)
}
func (c callerTrainer) BackwardTrain(ctx context.Context, layer int, dy, dx []float32) error {
	return c.s.BackwardTrainFor(ctx, c.caller, layer, dy, dx)
}

// ForwardTrainFor is ForwardTrain on behalf of caller.
func (s *Store) ForwardTrainFor(ctx context.Context, caller string, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	E := plan.NumExperts
	st := &storeLayerTrain{
		offsets: append([]int32(nil), plan.Offsets[:E+1]...),
		tokens:  append([]int32(nil), plan.Token[:plan.Len()]...),
		ffns:    make([]*FFN, E),
		acts:    make([]FFNActs, E),
	}
	s.mu.RLock()
	for e := 0; e < E; e++ {
		if lo, hi := plan.Rows(e); hi > lo {
			st.ffns[e] = s.experts[ID{layer, e}]
			if st.ffns[e] == nil {
				s.mu.RUnlock()
				return fmt.Errorf("layer %d expert %d: %w", layer, e, ErrNotOwned)
			}
			if st.ffns[e].Gate.F32 == nil {
				s.mu.RUnlock()
				return fmt.Errorf("layer %d expert %d: %w", layer, e, ErrNotFloat32)
			}
		}
	}
	s.mu.RUnlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	tensor.ParallelFor(E, 1, func(a, b int) {
		buf := []float32(nil)
		for e := a; e < b; e++ {
			lo, hi := plan.Rows(e)
			if hi == lo {
				continue
			}
			n := hi - lo
			buf = growF(buf, n*d)
			for i, t := range plan.Token[lo:hi] {
				copy(buf[i*d:(i+1)*d], x[int(t)*d:int(t+1)*d])
			}
			st.ffns[e].ForwardSave(y[lo*d:hi*d], buf, n, &st.acts[e])
		}
	})
	t := s.ts()
	t.mu.Lock()
	t.layers[trainKey{caller, layer}] = st
	t.mu.Unlock()
	return nil
}

// BackwardTrainFor is BackwardTrain on behalf of caller.
func (s *Store) BackwardTrainFor(ctx context.Context, caller string, layer int, dy, dx []float32) error {
	t := s.ts()
	t.mu.Lock()
	st := t.layers[trainKey{caller, layer}]
	delete(t.layers, trainKey{caller, layer})
	t.mu.Unlock()
	if st == nil {
		return fmt.Errorf("expert: backward of layer %d for %q without a forward", layer, caller)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	E := len(st.ffns)
	grads := make([]*FFN, E)
	locks := make([]*sync.Mutex, E)
	for e, f := range st.ffns {
		if f != nil {
			s.grad(ID{layer, e}, f) // the buffer Grad returns exists
			t.mu.Lock()
			grads[e] = t.part(ID{layer, e}, caller, f)
			t.touched[ID{layer, e}] = true
			t.dirty[ID{layer, e}] = true
			locks[e] = t.gradMu[ID{layer, e}]
			t.mu.Unlock()
		}
	}
	d := 0
	for _, f := range st.ffns {
		if f != nil {
			d, _ = f.Dims()
			break
		}
	}
	tensor.ParallelFor(E, 1, func(a, b int) {
		var scratch []float32
		for e := a; e < b; e++ {
			f := st.ffns[e]
			if f == nil {
				continue
			}
			lo, hi := int(st.offsets[e]), int(st.offsets[e+1])
			n := hi - lo
			_, F := f.Dims()
			scratch = growF(scratch, 3*n*F)
			locks[e].Lock() // one caller's calls for a layer do not overlap; be safe
			f.Backward(dx[lo*d:hi*d], dy[lo*d:hi*d], n, &st.acts[e], grads[e], scratch)
			locks[e].Unlock()
		}
	})
	return nil
}
