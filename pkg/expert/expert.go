// Package expert holds the routed experts of MoE layers and computes them
// over tokens grouped by expert (a grouped GEMM: one GEMM per expert over all
// of its rows, never one per token).
//
// The model never calls an expert directly: it routes (pkg/router), builds a
// router.Plan, and hands the plan to an Executor, which fills one output row
// per plan row. Store is the in-process Executor; the cluster's remote
// executor implements the same interface by sending each destination worker
// its rows in one exchange, so the model code is the same on one machine or
// many.
package expert

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// ID names a routed expert of a model: MoE layer index (the decoder layer
// number) and expert index within the layer.
type ID struct {
	Layer, Expert int
}

func (id ID) String() string { return fmt.Sprintf("L%d/E%d", id.Layer, id.Expert) }

// Compare orders experts by (layer, expert), for slices.SortFunc: the order
// placements, stores and checkpoints list experts in.
func Compare(a, b ID) int {
	if a.Layer != b.Layer {
		return a.Layer - b.Layer
	}
	return a.Expert - b.Expert
}

// ErrNotOwned is returned (wrapped) when a plan routes rows to an expert the
// executor does not hold, e.g. because the caller's placement is stale.
var ErrNotOwned = errors.New("expert not held here")

// ErrUnavailable is wrapped by an Executor's error when some routed experts
// have no copy that can compute them now (every owner is gone or failed):
// the request cannot succeed until the placement is repaired. Servers
// answer it with 503, not 500.
var ErrUnavailable = errors.New("experts unavailable")

// FFN is one SwiGLU feed-forward block: y = Down(silu(Gate x) * Up x).
// It is used for routed experts, shared experts and dense MLP layers.
type FFN struct {
	Gate tensor.Mat // [F, D]
	Up   tensor.Mat // [F, D]
	Down tensor.Mat // [D, F]
}

// Quantize replaces the three matrices with their q-format copies (see
// tensor.Quantize); the originals are dropped. QNone leaves f as it is.
// A quantized FFN serves inference only.
func (f *FFN) Quantize(q tensor.QFormat) error {
	if q == tensor.QNone {
		return nil
	}
	for _, m := range []*tensor.Mat{&f.Gate, &f.Up, &f.Down} {
		qm, err := tensor.Quantize(m, q)
		if err != nil {
			return err
		}
		*m = tensor.Mat{Rows: m.Rows, Cols: m.Cols, Q: qm}
	}
	return nil
}

// Dims returns D (model width) and F (intermediate width).
func (f *FFN) Dims() (d, ff int) { return f.Gate.Cols, f.Gate.Rows }

// Bytes is the memory held by the three matrices.
func (f *FFN) Bytes() int64 { return f.Gate.Bytes() + f.Up.Bytes() + f.Down.Bytes() }

// Forward computes y = FFN(x) for n rows: x [n, D], y [n, D]. h is scratch
// of at least 2*n*F floats (nil allocates).
func (f *FFN) Forward(y, x []float32, n int, h []float32) {
	_, F := f.Dims()
	if len(h) < 2*n*F {
		h = make([]float32, 2*n*F)
	}
	g, u := h[:n*F], h[n*F:2*n*F]
	tensor.Linear(g, x, n, &f.Gate, 0)
	tensor.Linear(u, x, n, &f.Up, 0)
	tensor.SwiGLU(g, g, u)
	tensor.Linear(y, g, n, &f.Down, 0)
}

// Executor computes routed experts for a dispatch plan.
type Executor interface {
	// Compute fills y [plan.Len(), D] with FFN_e(x[plan.Token[r]]) for every
	// plan row r routed to expert e of layer `layer` (unweighted: Combine
	// applies the weights). x is [T, D]. It returns an error, leaving y
	// undefined, if an expert is unavailable or ctx ends. Implementations
	// must be safe for concurrent calls, and must not touch plan, x or y
	// once Compute has returned (callers reuse them: model.Workspace).
	Compute(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error
}

// Combine accumulates out[Token[r]] += Weight[r] * y[r] over all plan rows,
// in plan order (so every executor yields bit-identical sums). out: [T, D].
func Combine(out []float32, d int, plan *router.Plan, y []float32) {
	for r, t := range plan.Token[:plan.Len()] {
		tensor.Axpy(plan.Weight[r], y[r*d:(r+1)*d], out[int(t)*d:int(t+1)*d])
	}
}

// Store is an in-memory set of routed experts and the local Executor.
// It is safe for concurrent use; experts can be added and dropped while
// computations run (a computation sees each expert as present or absent).
type Store struct {
	mu      sync.RWMutex
	experts map[ID]*FFN

	trainOnce sync.Once
	train     *trainState
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{experts: make(map[ID]*FFN)} }

// Put adds or replaces an expert.
func (s *Store) Put(id ID, f *FFN) {
	s.mu.Lock()
	s.experts[id] = f
	s.mu.Unlock()
}

// Delete drops an expert (its memory is freed once no computation uses it).
func (s *Store) Delete(id ID) {
	s.mu.Lock()
	delete(s.experts, id)
	s.mu.Unlock()
}

// Get returns an expert, or nil.
func (s *Store) Get(id ID) *FFN {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.experts[id]
}

// IDs lists the experts held, in no particular order.
func (s *Store) IDs() []ID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]ID, 0, len(s.experts))
	for id := range s.experts {
		ids = append(ids, id)
	}
	return ids
}

// Bytes is the weight memory of all experts held.
func (s *Store) Bytes() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var n int64
	for _, f := range s.experts {
		n += f.Bytes()
	}
	return n
}

// Compute implements Executor: for each expert with rows, gather its rows of
// x, run one FFN over all of them, and write results in plan order. Experts
// run in parallel, and so does each expert's GEMM where workers are idle
// (nested tensor.ParallelRange): with few rows per expert (decode) split
// evenly over the workers; with many (prefill, batches) drawn one at a time
// by whichever worker is free, largest first. Running whole experts side
// by side, rather than one after the other with each GEMM split between
// the cores, keeps each expert's activations and packed panels on one core
// and has no join per GEMM: a 512-token prefill's experts on the 2-vCPU
// AMD EPYC took 931-1030 ms against 1122-1315 (exact) and 544-588 against
// 584-682 (--compute bf16; bench/decode -brief -prefill 512, 3 interleaved
// runs each). The results are the same bits either way: every row's
// arithmetic is the same whichever core runs it. Once warm it allocates
// nothing.
func (s *Store) Compute(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	E := plan.NumExperts
	t := computePool.Get().(*computeTask)
	defer t.release()
	if cap(t.ffns) < E {
		t.ffns = make([]*FFN, E)
	}
	ffns := t.ffns[:E]
	s.mu.RLock()
	for e := 0; e < E; e++ {
		ffns[e] = nil
		if lo, hi := plan.Rows(e); hi > lo {
			ffns[e] = s.experts[ID{layer, e}]
			if ffns[e] == nil {
				s.mu.RUnlock()
				return fmt.Errorf("layer %d expert %d: %w", layer, e, ErrNotOwned)
			}
		}
	}
	s.mu.RUnlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	t.s, t.plan, t.x, t.d, t.y = s, plan, x, d, y
	t.active = t.active[:0]
	for e := 0; e < E; e++ {
		if ffns[e] != nil {
			t.active = append(t.active, e)
		}
	}
	switch {
	case plan.Len() <= 4*E: // few rows per expert (decode): parallel over the experts that have rows
		tensor.ParallelRange(len(t.active), 1, t)
	case tensor.Threads() > 1 && len(t.active) > 1:
		// Largest first, each drawn by the next free worker (LPT), so
		// that the last to finish is a small one.
		slices.SortStableFunc(t.active, func(a, b int) int {
			la, ha := plan.Rows(a)
			lb, hb := plan.Rows(b)
			return (hb - lb) - (ha - la)
		})
		t.next.Store(0)
		tensor.ParallelRange(tensor.Threads(), 1, (*drawExperts)(t))
	default:
		t.Range(0, len(t.active))
	}
	return nil
}

// drawExperts is a computeTask run by drawing: each Range call (one per
// worker) takes active experts one at a time from next until none are left.
type drawExperts computeTask

func (d *drawExperts) Range(_, _ int) {
	t := (*computeTask)(d)
	for {
		i := int(t.next.Add(1) - 1)
		if i >= len(t.active) {
			return
		}
		t.Range(i, i+1)
	}
}

// computeTask is one Compute call: the experts with rows (active, indices
// into ffns) and the ParallelRange body over them. Pooled, so that Compute
// allocates nothing once warm.
type computeTask struct {
	s      *Store
	ffns   []*FFN // [E] the expert of each index that has rows, else nil
	active []int  // experts with rows (ascending; by rows, descending, when drawn)
	plan   *router.Plan
	x, y   []float32
	d      int
	next   atomic.Int64 // next index of active to draw (drawExperts)
}

var computePool = sync.Pool{New: func() any { return new(computeTask) }}

// Range runs experts active[a:b].
func (t *computeTask) Range(a, b int) {
	for _, e := range t.active[a:b] {
		lo, hi := t.plan.Rows(e)
		t.s.ComputeRows(t.ffns[e], t.plan.Token[lo:hi], t.x, t.d, t.y[lo*t.d:hi*t.d])
	}
}

// release drops t's references to the caller's data and pools it.
func (t *computeTask) release() {
	clear(t.ffns)
	t.s, t.plan, t.x, t.y = nil, nil, nil, nil
	computePool.Put(t)
}

// ComputeRows runs expert f over the rows x[tokens[i]] (x is [T, D]) and
// writes y [len(tokens), D]. A nil tokens slice means x already holds the
// len(y)/D rows in order (the remote-owner case).
func (s *Store) ComputeRows(f *FFN, tokens []int32, x []float32, d int, y []float32) {
	n := len(y) / d
	_, F := f.Dims()
	need := n*d + 2*n*F
	// Scratch from tensor's size-class pools: experts' row counts vary
	// from call to call, and a pool of mixed sizes allocated afresh
	// whenever it handed a smaller buffer to a larger expert.
	sb := tensor.GetScratch(need)
	buf := sb.Floats()
	in := x
	if tokens != nil {
		in = buf[:n*d]
		for i, t := range tokens {
			copy(in[i*d:(i+1)*d], x[int(t)*d:int(t+1)*d])
		}
	}
	f.Forward(y, in, n, buf[n*d:])
	tensor.PutScratch(sb)
}
