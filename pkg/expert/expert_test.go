package expert

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

func randMat(r *rand.Rand, rows, cols int, bf16 bool) tensor.Mat {
	v := make([]float32, rows*cols)
	for i := range v {
		v[i] = float32(r.NormFloat64() * 0.1)
	}
	m := tensor.Mat{Rows: rows, Cols: cols}
	if bf16 {
		m.BF16 = make([]uint16, len(v))
		tensor.F32ToBF16(m.BF16, v)
	} else {
		m.F32 = v
	}
	return m
}

// ffnRef computes one row in float64, the obvious way.
func ffnRef(f *FFN, x []float32) []float64 {
	d, F := f.Dims()
	g, u, dn := f.Gate.ToF32(), f.Up.ToF32(), f.Down.ToF32()
	h := make([]float64, F)
	for j := 0; j < F; j++ {
		var a, b float64
		for k := 0; k < d; k++ {
			a += float64(g[j*d+k]) * float64(x[k])
			b += float64(u[j*d+k]) * float64(x[k])
		}
		h[j] = a / (1 + math.Exp(-a)) * b
	}
	y := make([]float64, d)
	for i := 0; i < d; i++ {
		for j := 0; j < F; j++ {
			y[i] += float64(dn[i*F+j]) * h[j]
		}
	}
	return y
}

func setup(t *testing.T, E, D, F int, bf16 bool) (*Store, []*FFN) {
	r := rand.New(rand.NewPCG(1, uint64(E)))
	s := NewStore()
	ffns := make([]*FFN, E)
	for e := range ffns {
		ffns[e] = &FFN{Gate: randMat(r, F, D, bf16), Up: randMat(r, F, D, bf16), Down: randMat(r, D, F, bf16)}
		s.Put(ID{Layer: 3, Expert: e}, ffns[e])
	}
	return s, ffns
}

func route(t *testing.T, T, E, K int, seed uint64) *router.Plan {
	r := rand.New(rand.NewPCG(seed, 9))
	logits := make([]float32, T*E)
	for i := range logits {
		logits[i] = float32(r.NormFloat64())
	}
	c := router.Config{NumExperts: E, TopK: K, Scoring: router.Softmax, Renormalize: true}
	var rt router.Routing
	c.Route(logits, T, nil, &rt)
	var p router.Plan
	p.Build(&rt)
	return &p
}

func TestStoreComputeAndCombineMatchPerTokenReference(t *testing.T) {
	for _, tc := range []struct {
		T, E, K, D, F int
		bf16          bool
	}{{1, 8, 2, 32, 24, false}, {5, 8, 2, 32, 24, true}, {64, 16, 4, 48, 40, false}, {200, 4, 1, 16, 8, false}} {
		s, ffns := setup(t, tc.E, tc.D, tc.F, tc.bf16)
		p := route(t, tc.T, tc.E, tc.K, uint64(tc.T))
		r := rand.New(rand.NewPCG(2, 3))
		x := make([]float32, tc.T*tc.D)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		y := make([]float32, p.Len()*tc.D)
		if err := s.Compute(context.Background(), 3, p, x, tc.D, y); err != nil {
			t.Fatal(err)
		}
		out := make([]float32, tc.T*tc.D)
		Combine(out, tc.D, p, y)
		want := make([]float64, tc.T*tc.D)
		for e := 0; e < tc.E; e++ {
			lo, hi := p.Rows(e)
			for row := lo; row < hi; row++ {
				tok := int(p.Token[row])
				ref := ffnRef(ffns[e], x[tok*tc.D:(tok+1)*tc.D])
				for i, v := range ref {
					if d := math.Abs(float64(y[row*tc.D+i]) - v); d > 1e-4*math.Max(1, math.Abs(v)) {
						t.Fatalf("%+v: row %d elem %d = %g, want %g", tc, row, i, y[row*tc.D+i], v)
					}
					want[tok*tc.D+i] += float64(p.Weight[row]) * v
				}
			}
		}
		for i := range out {
			if d := math.Abs(float64(out[i]) - want[i]); d > 1e-4*math.Max(1, math.Abs(want[i])) {
				t.Fatalf("%+v: combined elem %d = %g, want %g", tc, i, out[i], want[i])
			}
		}
	}
}

func TestComputeRefusesExpertsItDoesNotHold(t *testing.T) {
	s, _ := setup(t, 8, 16, 8, false)
	s.Delete(ID{Layer: 3, Expert: 5})
	p := route(t, 40, 8, 2, 1) // 40 tokens x 2 choices touch every expert
	y := make([]float32, p.Len()*16)
	err := s.Compute(context.Background(), 3, p, make([]float32, 40*16), 16, y)
	if !errors.Is(err, ErrNotOwned) {
		t.Fatalf("err = %v, want ErrNotOwned", err)
	}
	if err := s.Compute(context.Background(), 4, p, make([]float32, 40*16), 16, y); !errors.Is(err, ErrNotOwned) {
		t.Fatalf("wrong layer: err = %v, want ErrNotOwned", err)
	}
}

func TestStoreConcurrentComputeAndPlacementChanges(t *testing.T) {
	s, ffns := setup(t, 8, 16, 8, false)
	p := route(t, 16, 8, 2, 4)
	x := make([]float32, 16*16)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			y := make([]float32, p.Len()*16)
			for i := 0; i < 50; i++ {
				err := s.Compute(context.Background(), 3, p, x, 16, y)
				if err != nil && !errors.Is(err, ErrNotOwned) {
					t.Error(err)
				}
			}
		}()
	}
	for i := 0; i < 50; i++ {
		s.Delete(ID{Layer: 3, Expert: i % 8})
		s.Put(ID{Layer: 3, Expert: i % 8}, ffns[i%8])
	}
	wg.Wait()
	if len(s.IDs()) != 8 || s.Bytes() != 8*ffns[0].Bytes() {
		t.Fatalf("store holds %d experts, %d bytes", len(s.IDs()), s.Bytes())
	}
}

// TestComputeSameBitsAnyThreads: a prefill-sized plan (many rows per expert,
// uneven across experts) gives the same bits with one thread (experts one
// after the other) as with two and four (experts drawn by the free worker,
// largest first, each GEMM also split where a worker is idle).
func TestComputeSameBitsAnyThreads(t *testing.T) {
	const T, E, K, D, F = 300, 12, 3, 40, 56
	s, _ := setup(t, E, D, F, true)
	p := route(t, T, E, K, 17)
	if p.Len() <= 4*E {
		t.Fatalf("plan of %d rows over %d experts is in the decode regime", p.Len(), E)
	}
	r := rand.New(rand.NewPCG(4, 5))
	x := make([]float32, T*D)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	var got [][]float32
	for _, procs := range []int{1, 2, 4} {
		prev := runtime.GOMAXPROCS(procs)
		y := make([]float32, p.Len()*D)
		err := s.Compute(context.Background(), 3, p, x, D, y)
		runtime.GOMAXPROCS(prev)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, y)
	}
	for i := 1; i < len(got); i++ {
		for j := range got[0] {
			if math.Float32bits(got[0][j]) != math.Float32bits(got[i][j]) {
				t.Fatalf("element %d: %v with 1 thread, %v with more", j, got[0][j], got[i][j])
			}
		}
	}
}
