package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

// supportedArchs lists every kernel family this CPU can run, best last.
func supportedArchs() []gemmArch {
	var out []gemmArch
	for a := archGeneric; a < numArchs; a++ {
		if archSupported(a) {
			out = append(out, a)
		}
	}
	return out
}

// forEachArch runs f once per supported kernel family with Gemm forced to
// it, the AVX-512 family twice: as on Intel (A broadcast embedded, shallow
// slabs) and as on AMD (register broadcast, deep slabs). The two choices
// are independent (one is the micro-kernel, the other the blocking
// around it), so each way of each is run.
func forEachArch(t *testing.T, f func(t *testing.T)) {
	for _, a := range supportedArchs() {
		t.Run(a.String(), func(t *testing.T) {
			defer forceArch(a)()
			if a != archAVX512 {
				f(t)
				return
			}
			for _, amd := range []bool{false, true} {
				t.Run(map[bool]string{false: "embedded-shallow", true: "register-deep"}[amd], func(t *testing.T) {
					defer forceGemmBroadcast(amd)()
					defer forceGemmSlabs(amd)()
					f(t)
				})
			}
		})
	}
}

// forEachGemvOrder runs f under every supported kernel family with the
// single-token kernels reading W in each order (gemvSequential).
func forEachGemvOrder(t *testing.T, f func(t *testing.T)) {
	for _, seq := range []bool{false, true} {
		t.Run(map[bool]string{false: "interleaved", true: "sequential"}[seq], func(t *testing.T) {
			defer forceGemvOrder(seq)()
			forEachArch(t, f)
		})
	}
}

// gemmCase is one Gemm call: shapes, transposes, scalars and padding of the
// leading dimensions beyond their minimum.
type gemmCase struct {
	m, n, k        int
	transA, transB bool
	alpha, beta    float32
	padA, padB     int
	padC           int
}

func (c gemmCase) String() string {
	t := func(b bool) string {
		if b {
			return "T"
		}
		return "N"
	}
	return fmt.Sprintf("m%d_n%d_k%d_%s%s_a%g_b%g_pad%d.%d.%d", c.m, c.n, c.k, t(c.transA), t(c.transB), c.alpha, c.beta, c.padA, c.padB, c.padC)
}

// gemmOperands holds the inputs of one case and the reference result.
type gemmOperands struct {
	gemmCase
	lda, ldb, ldc int
	a, b          []float32 // b holds bf16-representable values when bf16
	b16           []uint16
	c0            []float32 // C before the call (NaN where beta == 0)
	want, mag     []float32 // GemmRef result and |alpha||A||B| + |beta||C0|
}

const padSentinel = -12345.5 // C between rows (ldc > n) must keep this

func newOperands(rng *rand.Rand, gc gemmCase, bf16 bool) *gemmOperands {
	o := &gemmOperands{gemmCase: gc}
	ar, ac := gc.m, gc.k
	if gc.transA {
		ar, ac = gc.k, gc.m
	}
	br, bc := gc.k, gc.n
	if gc.transB {
		br, bc = gc.n, gc.k
	}
	o.lda, o.ldb, o.ldc = ac+gc.padA, bc+gc.padB, gc.n+gc.padC
	fill := func(rows, cols, ld int) []float32 {
		s := make([]float32, max(rows*ld, 0))
		for i := range s {
			s[i] = float32(rng.NormFloat64())
		}
		return s
	}
	o.a = fill(ar, ac, o.lda)
	o.b = fill(br, bc, o.ldb)
	if bf16 {
		o.b16 = make([]uint16, len(o.b))
		F32ToBF16(o.b16, o.b)
		BF16ToF32(o.b, o.b16)
	}
	o.c0 = make([]float32, max(gc.m*o.ldc, 0))
	for i := range o.c0 {
		switch {
		case i%o.ldc >= gc.n:
			o.c0[i] = padSentinel
		case gc.beta == 0:
			o.c0[i] = float32(math.NaN())
		default:
			o.c0[i] = float32(rng.NormFloat64())
		}
	}
	o.want = append([]float32(nil), o.c0...)
	GemmRef(gc.transA, gc.transB, gc.m, gc.n, gc.k, gc.alpha, o.a, o.lda, o.b, o.ldb, gc.beta, o.want, o.ldc)
	abs := func(s []float32) []float32 {
		r := make([]float32, len(s))
		for i, v := range s {
			r[i] = float32(math.Abs(float64(v)))
		}
		return r
	}
	o.mag = abs(o.c0)
	for i := range o.mag {
		if i%o.ldc >= gc.n || gc.beta == 0 {
			o.mag[i] = 0
		}
	}
	GemmRef(gc.transA, gc.transB, gc.m, gc.n, gc.k, abs([]float32{gc.alpha})[0], abs(o.a), o.lda, abs(o.b), o.ldb, abs([]float32{gc.beta})[0], o.mag, o.ldc)
	return o
}

// gemmTol bounds |got - want| relative to the element's magnitude sum
// |alpha| sum_p |a||b| + |beta||c0|. Float32 rounding of the blocked sums
// measures about 1e-7 of it on these shapes; 2e-6 leaves margin for longer
// sums while a misplaced element (an error of order 1) cannot hide in it.
const gemmTol = 2e-6

// check compares got against the reference within gemmTol, and checks that
// the padding between rows of C is untouched.
func (o *gemmOperands) check(t *testing.T, got []float32) {
	t.Helper()
	bad := 0
	for i := range got {
		if i%o.ldc >= o.n {
			if got[i] != padSentinel {
				t.Errorf("%v: C[%d] (padding, ldc=%d) = %g, want untouched", o.gemmCase, i, o.ldc, got[i])
				return
			}
			continue
		}
		tol := gemmTol*float64(o.mag[i]) + 1e-30
		if d := math.Abs(float64(got[i] - o.want[i])); !(d <= tol) {
			if bad < 5 {
				t.Errorf("%v: C[%d,%d] = %g, want %g (diff %.3g, tol %.3g)", o.gemmCase, i/o.ldc, i%o.ldc, got[i], o.want[i], d, tol)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%v: %d of %d elements wrong", o.gemmCase, bad, o.m*o.n)
	}
}

func (o *gemmOperands) run(bf16 bool) []float32 {
	got := append([]float32(nil), o.c0...)
	if bf16 {
		GemmBF16(o.transA, o.transB, o.m, o.n, o.k, o.alpha, o.a, o.lda, o.b16, o.ldb, o.beta, got, o.ldc)
	} else {
		Gemm(o.transA, o.transB, o.m, o.n, o.k, o.alpha, o.a, o.lda, o.b, o.ldb, o.beta, got, o.ldc)
	}
	return got
}

// gemmShapes are the (m, n, k) triples of the table test: empty and unit
// dimensions, GEMV shapes, primes, and sizes straddling the register tiles
// (AVX-512 14 x 32, AVX2 6 x 16, generic 4 x 4), the 16- and 8-wide
// transposes, the depth slab (kc = 256) and the column chunk (nc = 256).
var gemmShapes = [][3]int{
	{0, 5, 7}, {5, 0, 7}, {5, 7, 0}, {0, 0, 0}, {1, 1, 1}, {2, 3, 1},
	{1, 37, 1}, {1, 33, 17}, {1, 65, 33}, {1, 300, 129}, {1, 1, 64}, {1, 5, 1000},
	{37, 1, 29}, {64, 1, 300}, {3, 1, 16},
	{13, 31, 15}, {14, 32, 16}, {15, 33, 17}, {28, 64, 255}, {29, 65, 257},
	{6, 16, 8}, {7, 17, 9}, {5, 15, 7}, {12, 48, 3}, {42, 96, 33},
	{97, 101, 103}, {61, 127, 131}, {2, 2, 513}, {17, 40, 600},
	{1009, 33, 17}, {20, 300, 40}, {64, 320, 64},
}

func gemmCases(rng *rand.Rand) []gemmCase {
	alphas := []float32{1, -0.5, 2, 0}
	betas := []float32{0, 1, -0.75}
	var cases []gemmCase
	add := func(m, n, k int) {
		for t := 0; t < 4; t++ {
			i := len(cases)
			cases = append(cases, gemmCase{
				m: m, n: n, k: k,
				transA: t&1 != 0, transB: t&2 != 0,
				alpha: alphas[i%4], beta: betas[(i/4)%3],
				padA: (i / 2) % 3, padB: (i / 5) % 4, padC: (i / 7) % 3,
			})
		}
	}
	for _, s := range gemmShapes {
		add(s[0], s[1], s[2])
	}
	for i := 0; i < 12; i++ {
		add(1+rng.IntN(70), 1+rng.IntN(200), 1+rng.IntN(300))
	}
	return cases
}

func TestGemmMatchesRef(t *testing.T) {
	for _, bf16 := range []bool{false, true} {
		name := "f32"
		if bf16 {
			name = "bf16"
		}
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			cases := gemmCases(rng)
			ops := make([]*gemmOperands, len(cases))
			for i, gc := range cases {
				ops[i] = newOperands(rng, gc, bf16)
			}
			forEachArch(t, func(t *testing.T) {
				for _, o := range ops {
					o.check(t, o.run(bf16))
				}
			})
		})
	}
}

// TestGemmLargeShapes covers shapes big enough to split over workers and
// over several depth slabs: the expert shape scaled down in n, one with
// enough row chunks, one split into row blocks (m*k > packABudget), a
// tall A (m >= tallRows; wide column chunks on the families without a
// rowBlock), and depths beyond the deep blocking's slab (avx512Deep), for
// a small and a tall A.
func TestGemmLargeShapes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var ops []*gemmOperands
	for i, s := range [][3]int{{64, 2816 / 8, 1024}, {130, 260, 300}, {200, 33, 520}, {2100, 20, 1001}, {300, 1100, 70}, {40, 100, 4500}, {270, 75, 2300}} {
		ops = append(ops, newOperands(rng, gemmCase{m: s[0], n: s[1], k: s[2], transB: i != 1, transA: i == 2, alpha: 1, beta: float32(i % 2), padC: i}, i == 0))
	}
	if m, k := ops[3].m, ops[3].k; m*k <= packABudget {
		t.Fatalf("shape %dx%d no longer exceeds packABudget", m, k)
	}
	forEachArch(t, func(t *testing.T) {
		for i, o := range ops {
			o.check(t, o.run(i == 0))
		}
	})
}

func TestGemvT(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	shapes := [][2]int{{1, 1}, {3, 5}, {4, 16}, {5, 17}, {7, 8}, {9, 33}, {64, 64}, {65, 100}, {130, 1024}, {67, 1000},
		{6, 32}, {5, 48}, {9, 63}, {3, 80}, {70, 1040}} // k % 32 == 16: the bf16 kernel's plain tail
	forEachGemvOrder(t, func(t *testing.T) {
		for i, s := range shapes {
			n, k := s[0], s[1]
			ldw := k + i%3
			for _, bf16 := range []bool{false, true} {
				beta := []float32{0, 1, 0.5}[i%3]
				o := newOperands(rng, gemmCase{m: 1, n: n, k: k, transB: true, alpha: 1, beta: beta, padB: ldw - k}, bf16)
				got := append([]float32(nil), o.c0...)
				if bf16 {
					GemvTBF16(n, k, o.b16, o.ldb, o.a, got, beta)
				} else {
					GemvT(n, k, o.b, o.ldb, o.a, got, beta)
				}
				o.check(t, got)
			}
		}
	})
}

// TestGemmConcurrent calls Gemm from several goroutines at once on disjoint
// outputs (each call itself parallel), as the expert workers do.
func TestGemmConcurrent(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var ops []*gemmOperands
	for i := 0; i < 8; i++ {
		ops = append(ops, newOperands(rng, gemmCase{m: 1 + 20*i, n: 100 + 7*i, k: 90 + 13*i, transB: i%2 == 0, alpha: 1, beta: float32(i % 3)}, i%3 == 0))
	}
	var wg sync.WaitGroup
	results := make([][]float32, len(ops))
	for i, o := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < 3; r++ {
				results[i] = o.run(i%3 == 0)
			}
		}()
	}
	wg.Wait()
	for i, o := range ops {
		o.check(t, results[i])
	}
}

func TestGemmPanicsOnShortSlices(t *testing.T) {
	expectPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s: no panic", name)
			}
		}()
		f()
	}
	a, b, c := make([]float32, 6), make([]float32, 6), make([]float32, 4)
	expectPanic("short A", func() { Gemm(false, false, 2, 2, 4, 1, a, 4, b, 2, 0, c, 2) })
	expectPanic("short C", func() { Gemm(false, false, 2, 3, 3, 1, a, 3, b, 3, 0, c, 3) })
	expectPanic("negative", func() { Gemm(false, false, -1, 2, 2, 1, a, 2, b, 2, 0, c, 2) })
	expectPanic("short W", func() { GemvT(3, 3, a, 3, b, c, 0) })
}

// TestGemmSteadyStateAllocs checks pooled pack buffers: repeated calls
// allocate at most a few small closures, never panel-sized buffers.
func TestGemmSteadyStateAllocs(t *testing.T) {
	m, n, k := 64, 256, 300
	a, b, c := make([]float32, m*k), make([]float32, n*k), make([]float32, m*n)
	Gemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n)
	allocs := testing.AllocsPerRun(20, func() { Gemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n) })
	if allocs > 8 {
		t.Errorf("Gemm allocates %.1f times per call in steady state, want <= 8", allocs)
	}
}

// TestGemmTileOrdersAgreeBitwise: the two loop orders over a chunk's
// tiles (gemmParams.rowBlock: A-panel-outer, and B-panel-outer with row
// blocks of 1, 3 and 16 micro-panels) give every element of C the same
// bits, on every kernel family, for shapes with edge tiles on both sides,
// several depth slabs, several row blocks, tall A (wide column chunks),
// both transposes, bf16 B and beta 0 and 1. So the order is a speed
// choice only, and each tile is computed exactly once.
func TestGemmTileOrdersAgreeBitwise(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	shapes := []gemmCase{
		{m: 100, n: 70, k: 600, transB: true, alpha: 1.5, beta: 1},
		{m: 37, n: 300, k: 257, alpha: 1, beta: 0},
		{m: 300, n: 530, k: 90, transA: true, transB: true, alpha: 1, beta: 1, padC: 3},
		{m: 7, n: 33, k: 5, alpha: -1, beta: 0},
	}
	for _, a := range supportedArchs() {
		t.Run(a.String(), func(t *testing.T) {
			defer forceArch(a)()
			saved := archParams[a].rowBlock
			defer func() { archParams[a].rowBlock = saved }()
			for i, gc := range shapes {
				bf16 := i%2 == 0
				o := newOperands(rng, gc, bf16)
				var first []float32
				for _, rb := range []int{0, 1, 3, 16} {
					archParams[a].rowBlock = rb
					got := o.run(bf16)
					if first == nil {
						o.check(t, got)
						first = got
						continue
					}
					for j := range got {
						if math.Float32bits(got[j]) != math.Float32bits(first[j]) {
							t.Fatalf("%dx%dx%d rowBlock %d: C[%d] = %v, A-panel-outer gave %v", gc.m, gc.n, gc.k, rb, j, got[j], first[j])
						}
					}
				}
			}
		})
	}
}
