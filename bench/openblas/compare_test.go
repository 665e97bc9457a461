//go:build openblas && cgo

package openblas

import (
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// shape is one benchmarked call, identical for both implementations. For
// bf16 shapes Switchyard reads bfloat16 B (GemmBF16/GemvTBF16) while
// OpenBLAS, which has no f32 x bf16 routine, runs sgemm/sgemv on the same
// values stored as float32: the comparison is "our bf16 weights" against
// "OpenBLAS with f32 weights".
type shape struct {
	name           string
	m, n, k        int
	transA, transB bool
	bf16           bool
}

var shapes = []shape{
	{name: "1024x1024x1024_NN", m: 1024, n: 1024, k: 1024},
	{name: "1024x1024x1024_NT", m: 1024, n: 1024, k: 1024, transB: true},
	{name: "64x2816x1024_NT", m: 64, n: 2816, k: 1024, transB: true},
	{name: "64x2816x1024_NT_bf16", m: 64, n: 2816, k: 1024, transB: true, bf16: true},
	{name: "1x2816x1024_NT", m: 1, n: 2816, k: 1024, transB: true},
	{name: "1x2816x1024_NT_bf16", m: 1, n: 2816, k: 1024, transB: true, bf16: true},
}

type operands struct {
	shape
	lda, ldb int
	a, b     []float32
	b16      []uint16
	c        []float32
}

func newOperands(s shape) *operands {
	rng := rand.New(rand.NewPCG(1, 1))
	o := &operands{shape: s, lda: s.k, ldb: s.n}
	if s.transA {
		o.lda = s.m
	}
	if s.transB {
		o.ldb = s.k
	}
	o.a = make([]float32, s.m*s.k)
	o.b = make([]float32, s.k*s.n)
	for i := range o.a {
		o.a[i] = rng.Float32() - 0.5
	}
	for i := range o.b {
		o.b[i] = rng.Float32() - 0.5
	}
	o.b16 = make([]uint16, len(o.b))
	tensor.F32ToBF16(o.b16, o.b)
	tensor.BF16ToF32(o.b, o.b16) // both sides see the same values
	o.c = make([]float32, s.m*s.n)
	return o
}

func (o *operands) ours() {
	s := o.shape
	switch {
	case s.m == 1 && s.transB && s.bf16:
		tensor.GemvTBF16(s.n, s.k, o.b16, o.ldb, o.a, o.c, 0)
	case s.m == 1 && s.transB:
		tensor.GemvT(s.n, s.k, o.b, o.ldb, o.a, o.c, 0)
	case s.bf16:
		tensor.GemmBF16(s.transA, s.transB, s.m, s.n, s.k, 1, o.a, o.lda, o.b16, o.ldb, 0, o.c, s.n)
	default:
		tensor.Gemm(s.transA, s.transB, s.m, s.n, s.k, 1, o.a, o.lda, o.b, o.ldb, 0, o.c, s.n)
	}
}

func (o *operands) openblas() {
	s := o.shape
	if s.m == 1 && s.transB {
		SgemvT(s.n, s.k, o.b, o.ldb, o.a, o.c, 0)
		return
	}
	Sgemm(s.transA, s.transB, s.m, s.n, s.k, 1, o.a, o.lda, o.b, o.ldb, 0, o.c, s.n)
}

func bench(b *testing.B, s shape, f func(*operands)) {
	o := newOperands(s)
	SetThreads(runtime.GOMAXPROCS(0))
	f(o)
	for b.Loop() {
		f(o)
	}
	b.ReportMetric(2*float64(s.m)*float64(s.n)*float64(s.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkCompare runs every shape with Switchyard ("ours") and OpenBLAS
// back to back, so machine noise hits both alike. GOMAXPROCS sets both
// thread counts (tensor.Threads and openblas_set_num_threads). Set
// GEMM_BENCH_OPENBLAS_FIRST=1 to run OpenBLAS first in each pair.
func BenchmarkCompare(b *testing.B) {
	b.Logf("OpenBLAS: %s", Config())
	b.Logf("Switchyard kernels: %s", tensor.KernelConfig())
	impls := []struct {
		name string
		f    func(*operands)
	}{{"ours", (*operands).ours}, {"openblas", (*operands).openblas}}
	if os.Getenv("GEMM_BENCH_OPENBLAS_FIRST") == "1" {
		impls[0], impls[1] = impls[1], impls[0]
	}
	for _, s := range shapes {
		for _, impl := range impls {
			b.Run(s.name+"/"+impl.name, func(b *testing.B) { bench(b, s, impl.f) })
		}
	}
}

// BenchmarkPaired times the two implementations call by call: each
// iteration runs one call of each, in alternating order, so a slow stretch
// of a shared machine (another tenant on the vCPU, a cache flushed by a
// neighbour) hits both sides of a pair alike. It reports the median
// GFLOP/s of each side and the median of the per-pair ratios (ours /
// OpenBLAS), which is what bench-gemm.sh's paired table prints. GOMAXPROCS
// sets both thread counts, as in BenchmarkCompare.
func BenchmarkPaired(b *testing.B) {
	for _, s := range shapes {
		b.Run(s.name, func(b *testing.B) {
			SetThreads(runtime.GOMAXPROCS(0))
			o := newOperands(s)
			impls := [2]func(*operands){(*operands).ours, (*operands).openblas}
			for _, f := range impls {
				f(o) // warm: pack buffers, OpenBLAS's threads
			}
			var secs [2][]float64
			var ratios []float64
			for i := 0; b.Loop(); i++ {
				var t [2]float64
				for j := range 2 {
					w := (i + j) % 2
					t0 := time.Now()
					impls[w](o)
					t[w] = time.Since(t0).Seconds()
				}
				secs[0] = append(secs[0], t[0])
				secs[1] = append(secs[1], t[1])
				ratios = append(ratios, t[1]/t[0])
			}
			flop := 2 * float64(s.m) * float64(s.n) * float64(s.k)
			b.ReportMetric(flop/median(secs[0])/1e9, "ours-GFLOP/s")
			b.ReportMetric(flop/median(secs[1])/1e9, "openblas-GFLOP/s")
			b.ReportMetric(median(ratios), "ratio")
			b.ReportMetric(float64(len(ratios)), "pairs")
		})
	}
}

// median of v (sorted in place); v is not empty.
func median(v []float64) float64 {
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// TestAgree checks the two implementations compute the same thing, so the
// benchmark compares like with like.
func TestAgree(t *testing.T) {
	for _, s := range shapes {
		if s.m*s.n*s.k > 1<<26 {
			s.m, s.n, s.k = 100, 130, 170
		}
		o := newOperands(s)
		o.ours()
		got := append([]float32(nil), o.c...)
		o.openblas()
		for i, want := range o.c {
			if d := math.Abs(float64(got[i] - want)); d > 1e-4*(1+math.Abs(float64(want))) {
				t.Fatalf("%s: C[%d] ours %g, OpenBLAS %g", s.name, i, got[i], want)
			}
		}
	}
}
