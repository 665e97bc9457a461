package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// withCompute runs f with the compute mode set to c.
func withCompute(t *testing.T, c Compute, f func(t *testing.T)) {
	prev := SetCompute(c)
	defer SetCompute(prev)
	f(t)
}

// roundedOperands is newOperands with the reference computed as
// ComputeBF16 defines it: A and B rounded to bfloat16 (denormals to zero)
// when the call takes the packed path (m >= 2, and n >= 2 or transA),
// exact otherwise.
func roundedOperands(rng *rand.Rand, gc gemmCase, bf16 bool) *gemmOperands {
	o := newOperands(rng, gc, bf16)
	if gc.m < 2 || gc.n < 2 && !gc.transA {
		return o
	}
	ra := append([]float32(nil), o.a...)
	rb := append([]float32(nil), o.b...)
	roundBF16Slice(ra)
	roundBF16Slice(rb)
	o.want = append(o.want[:0], o.c0...)
	GemmRef(gc.transA, gc.transB, gc.m, gc.n, gc.k, gc.alpha, ra, o.lda, rb, o.ldb, gc.beta, o.want, o.ldc)
	return o
}

// TestComputeBF16MatchesRoundedRef: under ComputeBF16 every kernel family
// (VDPBF16PS pair panels on AVX-512 with AVX512_BF16, rounded float32
// panels elsewhere) computes the product of the bf16-rounded operands to
// float32 accuracy, on the table's shapes, with f32 and bf16 B, plus shapes
// of several pair slabs (k > 512), an odd k, and row blocks.
func TestComputeBF16MatchesRoundedRef(t *testing.T) {
	t.Logf("bf16 kernel: %s", BF16DotKernel())
	for _, bf16 := range []bool{false, true} {
		rng := rand.New(rand.NewPCG(5, 6))
		cases := gemmCases(rng)
		for i, s := range [][3]int{{64, 2816 / 8, 1024}, {30, 70, 1031}, {33, 65, 1537}, {2100, 20, 1001}} {
			cases = append(cases, gemmCase{m: s[0], n: s[1], k: s[2], transB: i != 1, transA: i == 2, alpha: 1, beta: float32(i % 2), padB: i % 2, padC: i})
		}
		var ops []*gemmOperands
		for _, gc := range cases {
			ops = append(ops, roundedOperands(rng, gc, bf16))
		}
		name := map[bool]string{false: "f32", true: "bf16"}[bf16]
		t.Run(name, func(t *testing.T) {
			withCompute(t, ComputeBF16, func(t *testing.T) {
				forEachArch(t, func(t *testing.T) {
					for _, dot := range []bool{false, true} {
						prev := bf16DotPreferred.Swap(dot)
						for _, o := range ops {
							o.check(t, o.run(bf16))
						}
						bf16DotPreferred.Store(prev)
					}
				})
			})
		})
	}
}

// TestComputeBF16Rounds: the mode changes the arithmetic. 1 + 2^-10 is not
// a bfloat16 (8 significant bits) and rounds to 1, so a 2 x 2 x 2 product
// of it with ones gives 2 under ComputeBF16 and 2 + 2^-9 exactly; a
// single-row product (the GEMV path) stays exact in both modes.
func TestComputeBF16Rounds(t *testing.T) {
	x := float32(1 + 1.0/1024)
	a := []float32{x, x, x, x}
	b := []float32{1, 1, 1, 1}
	forEachArch(t, func(t *testing.T) {
		for _, c := range []struct {
			mode Compute
			want float32
		}{{ComputeExact, 2 * x}, {ComputeBF16, 2}} {
			withCompute(t, c.mode, func(t *testing.T) {
				got := make([]float32, 4)
				Gemm(false, true, 2, 2, 2, 1, a, 2, b, 2, 0, got, 2)
				for i, v := range got {
					if v != c.want {
						t.Errorf("%v: C[%d] = %v, want %v", c.mode, i, v, c.want)
					}
				}
				row := make([]float32, 2)
				Gemm(false, true, 1, 2, 2, 1, a, 2, b, 2, 0, row, 2)
				if row[0] != 2*x {
					t.Errorf("%v: single-row product %v, want exact %v", c.mode, row[0], 2*x)
				}
			})
		}
	})
}

func TestParseCompute(t *testing.T) {
	for s, want := range map[string]Compute{"": ComputeExact, "exact": ComputeExact, "f32": ComputeExact, "bf16": ComputeBF16} {
		if got, err := ParseCompute(s); err != nil || got != want {
			t.Errorf("ParseCompute(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	if _, err := ParseCompute("fp8"); err == nil {
		t.Error("ParseCompute(fp8) accepted")
	}
}

// TestPairBF16Generic pins the pair layout and the rounding: nearest even
// on ties, NaN kept, denormals to zero.
func TestPairBF16Generic(t *testing.T) {
	tie := math.Float32frombits(0x3f808000)  // exactly between 0x3f80 and 0x3f81: even is 0x3f80
	tie2 := math.Float32frombits(0x3f818000) // between 0x3f81 and 0x3f82: even is 0x3f82
	src := []float32{tie, 1e-40, float32(math.NaN()), -2, tie2, -1e-40, float32(math.Inf(1)), 3}
	dst := make([]float32, 4)
	pairBF16Generic(dst, src, 4, 1)
	want := []uint32{0x3f823f80, 0x80000000, 0x7f807fc0, 0x4040c000}
	for j, w := range want {
		if got := math.Float32bits(dst[j]); got != w {
			t.Errorf("dword %d = %#08x, want %#08x", j, got, w)
		}
	}
}
