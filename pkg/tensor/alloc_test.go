package tensor

import (
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"unsafe"
)

// countRanger counts the items it is handed.
type countRanger struct{ n atomic.Int64 }

func (c *countRanger) Range(lo, hi int) { c.n.Add(int64(hi - lo)) }

// TestKernelsAllocateNothing checks that once warm (pools filled, worker
// goroutines recycled) the kernels a decode step calls allocate nothing,
// also when they split over goroutines: ParallelRange, Gemm and GemmBF16 in
// each of their paths (GEMV, GEMV of the other orientation, one column,
// skinny in one group of rows and in two, packed and parallel, and both
// under ComputeBF16), RMSNormRows, SwiGLU over a
// batch (split over the workers) and Softmax.
func TestKernelsAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	r := rand.New(rand.NewPCG(1, 2))
	randn := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	// packed: 2*m*n*k = 32 MFLOP, split over all workers; skinny: up to
	// skinnyMaxM rows.
	const m, n, k = 16, 2048, 512
	a, b, c := randn(m*k), randn(n*k), make([]float32, m*n)
	b16 := make([]uint16, n*k)
	F32ToBF16(b16, b)
	w := randn(k)
	var cnt countRanger
	cases := []struct {
		name string
		f    func()
	}{
		{"ParallelRange", func() { ParallelRange(1000, 1, &cnt) }},
		{"gemvT", func() { Gemm(false, true, 1, n, k, 1, a, k, b, k, 0, c, n) }},
		{"gemvT-bf16", func() { GemmBF16(false, true, 1, n, k, 1, a, k, b16, k, 0, c, n) }},
		{"gemvN", func() { Gemm(false, false, 1, n, k, 1, a, k, b, n, 0, c, n) }},
		{"gemvN-transA", func() { Gemm(true, false, 1, n, k, 1, a, 1, b, n, 0, c, n) }},
		{"column", func() { Gemm(false, true, m, 1, k, 1, a, k, b, k, 0, c, n) }},
		{"skinny", func() { Gemm(false, true, 8, n, k, 1, a, k, b, k, 0, c, n) }},
		{"skinny-bf16", func() { GemmBF16(false, true, 8, n, k, 1, a, k, b16, k, 0, c, n) }},
		{"skinny-two-groups", func() { GemmBF16(false, true, skinnyMaxM, n, k, 1, a, k, b16, k, 0, c, n) }},
		{"skinny-compute-bf16", func() {
			defer SetCompute(SetCompute(ComputeBF16))
			GemmBF16(false, true, 8, n, k, 1, a, k, b16, k, 0, c, n)
		}},
		{"packed", func() { Gemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n) }},
		{"packed-bf16", func() { GemmBF16(false, true, m, n, k, 1, a, k, b16, k, 0, c, n) }},
		{"RMSNormRows", func() { RMSNormRows(c, c, w, m*n/k, k, 1e-6) }},
		{"SwiGLU-parallel", func() { SwiGLU(c, c, c) }},
		{"Softmax", func() { Softmax(c[:n]) }},
		{"packed-compute-bf16", func() {
			defer SetCompute(SetCompute(ComputeBF16))
			GemmBF16(false, true, m, n, k, 1, a, k, b16, k, 0, c, n)
		}},
	}
	for _, tc := range cases {
		for range 10 {
			tc.f()
		}
		if got := testing.AllocsPerRun(50, tc.f); got != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tc.name, got)
		}
	}
	if cnt.n.Load()%1000 != 0 {
		t.Errorf("ParallelRange visited %d items, not a multiple of 1000", cnt.n.Load())
	}
}

// TestParallelRangeCovers checks ParallelRange against Splits: disjoint
// ranges covering [0, n), as many as Splits says.
func TestParallelRangeCovers(t *testing.T) {
	for _, procs := range []int{1, 2, 5} {
		old := runtime.GOMAXPROCS(procs)
		for _, tc := range []struct{ n, grain int }{{0, 1}, {1, 1}, {7, 1}, {7, 3}, {100, 0}, {1001, 7}} {
			hits := make([]int32, tc.n)
			var ranges atomic.Int32
			ParallelRange(tc.n, tc.grain, funcRanger(func(lo, hi int) {
				ranges.Add(1)
				for i := lo; i < hi; i++ {
					atomic.AddInt32(&hits[i], 1)
				}
			}))
			for i, h := range hits {
				if h != 1 {
					t.Fatalf("procs=%d n=%d grain=%d: item %d visited %d times", procs, tc.n, tc.grain, i, h)
				}
			}
			if got, want := int(ranges.Load()), Splits(tc.n, tc.grain); got != want {
				t.Errorf("procs=%d n=%d grain=%d: %d ranges, Splits says %d", procs, tc.n, tc.grain, got, want)
			}
		}
		runtime.GOMAXPROCS(old)
	}
}

// TestPackBufsReuseBySize checks the packing buffers' pools: a buffer has
// the length asked for, 64-byte aligned, in the smallest class that holds
// it, and once the sizes have been seen, gets and puts of them in any
// order allocate nothing, a large request never taking a small buffer put
// back after it (the page faults that one pool of mixed sizes cost are in
// packPools' comment).
func TestPackBufsReuseBySize(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops pooled items at random")
	}
	for _, n := range []int{1, 1000, 1008, 1009, 5000, 1 << 20} {
		pb := getPackBuf(n)
		if len(pb.f) != n {
			t.Errorf("getPackBuf(%d): len %d", n, len(pb.f))
		}
		if p := uintptr(unsafe.Pointer(&pb.f[0])); p&63 != 0 {
			t.Errorf("getPackBuf(%d): %#x not 64-byte aligned", n, p)
		}
		if c := packClass(n); packClassFloats(c) < n+16 || (c > 0 && packClassFloats(c-1) >= n+16) {
			t.Errorf("packClass(%d) = %d (%d floats): not the smallest class holding n+16", n, c, packClassFloats(c))
		}
		putPackBuf(pb)
	}
	cycle := func() {
		large := getPackBuf(300_000)
		small := getPackBuf(3_000)
		large.f[len(large.f)-1] = 1 // both usable to their full length
		small.f[len(small.f)-1] = 1
		putPackBuf(small)
		putPackBuf(large)
	}
	cycle()
	if a := testing.AllocsPerRun(100, cycle); a != 0 {
		t.Errorf("a large and a small packing buffer, got and put back: %v allocations a cycle, want 0", a)
	}
	scratch := func() {
		for _, n := range []int{70_000, 9_000, 130_000} {
			s := GetScratch(n)
			if len(s.Floats()) != n {
				t.Fatalf("GetScratch(%d): len %d", n, len(s.Floats()))
			}
			PutScratch(s)
		}
	}
	scratch()
	if a := testing.AllocsPerRun(100, scratch); a != 0 {
		t.Errorf("GetScratch/PutScratch of three sizes: %v allocations a cycle, want 0", a)
	}
}
