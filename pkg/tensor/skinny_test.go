package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestSkinnyRowsAreGemvRows checks products of 2 to skinnyMaxM rows of A
// through W^T (float32 W: packed; bfloat16 W: skinny) against a float64
// reference, and, where the skinny kernels run (AVX-512, bfloat16 W), that
// every row of C is bit for bit the GEMV of its row of A:
// a token's output does not depend on the batch it is in. Under every
// kernel family the CPU has (AVX-512 and AVX2 have skinny kernels of
// their own). Shapes cover k with and without the kernels' tails (k % 32
// == 16, k % 16 == 8, k % 8 != 0, k = 16), strides wider than the
// matrices, one and two groups of rows, and beta.
func TestSkinnyRowsAreGemvRows(t *testing.T) { forEachArch(t, testSkinnyRowsAreGemvRows) }

func testSkinnyRowsAreGemvRows(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, bf16 := range []bool{false, true} {
		for _, sh := range []struct{ m, n, k int }{
			{2, 70, 1024}, {3, 1, 48}, {5, 129, 1040}, {8, 64, 16}, {8, 33, 1000},
			{9, 100, 80}, {skinnyMaxM, 300, 517}, {7, 2, 31}, {6, 40, 24}, {4, 17, 1032},
		} {
			for _, beta := range []float32{0, 0.25} {
				name := fmt.Sprintf("bf16=%v/m%d_n%d_k%d/beta%v", bf16, sh.m, sh.n, sh.k, beta)
				m, n, k := sh.m, sh.n, sh.k
				lda, ldw, ldc := k+3, k+5, n+2
				a := make([]float32, m*lda)
				for i := range a {
					a[i] = float32(r.NormFloat64())
				}
				w32 := make([]float32, n*ldw)
				for i := range w32 {
					w32[i] = float32(r.NormFloat64()) / 8
				}
				w16 := make([]uint16, len(w32))
				F32ToBF16(w16, w32)
				if bf16 {
					BF16ToF32(w32, w16) // the reference multiplies what the kernel reads
				}
				c0 := make([]float32, m*ldc)
				for i := range c0 {
					c0[i] = float32(r.NormFloat64())
				}
				const alpha = 0.5
				gemm := func(mm int, a []float32, c []float32) {
					if bf16 {
						GemmBF16(false, true, mm, n, k, alpha, a, lda, w16, ldw, beta, c, ldc)
					} else {
						Gemm(false, true, mm, n, k, alpha, a, lda, w32, ldw, beta, c, ldc)
					}
				}
				c := append([]float32(nil), c0...)
				gemm(m, a, c)
				for i := 0; i < m; i++ {
					row := append([]float32(nil), c0[i*ldc:i*ldc+n]...)
					gemm(1, a[i*lda:], row)
					for j := 0; j < n; j++ {
						var ref float64
						var mag float64
						for p := 0; p < k; p++ {
							v := float64(a[i*lda+p]) * float64(w32[j*ldw+p])
							ref += v
							mag += math.Abs(v)
						}
						ref = alpha*ref + float64(beta)*float64(c0[i*ldc+j])
						got := c[i*ldc+j]
						if d := math.Abs(float64(got) - ref); d > 1e-5*(mag+1) {
							t.Fatalf("%s: C[%d,%d] = %g, reference %g", name, i, j, got, ref)
						}
						if useSkinny(gemmArch(activeArch.Load()), ComputeExact, false, true, m, n, k, wOf(bf16, w16)) &&
							math.Float32bits(got) != math.Float32bits(row[j]) {
							t.Fatalf("%s: C[%d,%d] = %g in the batch, %g alone", name, i, j, got, row[j])
						}
					}
				}
				// The padding columns of C are untouched.
				for i := 0; i < m; i++ {
					for j := n; j < ldc && i*ldc+j < len(c); j++ {
						if c[i*ldc+j] != c0[i*ldc+j] {
							t.Fatalf("%s: C[%d,%d] beyond n written", name, i, j)
						}
					}
				}
			}
		}
	}
}

// wOf is w16 for bf16 W, else nil (float32 W).
func wOf(bf16 bool, w16 []uint16) []uint16 {
	if bf16 {
		return w16
	}
	return nil
}

// TestSkinnyComputeBF16 checks the skinny path under ComputeBF16: each row
// is the exact GEMV of that row of A rounded to bfloat16 (the products of
// bf16-rounded operands, float32 sums, as the packed path's dotRound), so
// it stays batch-invariant there too; and it differs from the exact
// product (the rounding is applied).
func TestSkinnyComputeBF16(t *testing.T) { forEachArch(t, testSkinnyComputeBF16) }

func testSkinnyComputeBF16(t *testing.T) {
	if !useSkinny(gemmArch(activeArch.Load()), ComputeBF16, false, true, 4, 50, 96, []uint16{}) {
		t.Logf("no skinny kernels on this CPU (%v): checking the packed path's rounding instead", gemmArch(activeArch.Load()))
	}
	r := rand.New(rand.NewPCG(5, 6))
	const m, n, k = 4, 50, 96
	a := make([]float32, m*k)
	for i := range a {
		a[i] = float32(r.NormFloat64())
	}
	w32 := make([]float32, n*k)
	for i := range w32 {
		w32[i] = float32(r.NormFloat64())
	}
	w16 := make([]uint16, n*k)
	F32ToBF16(w16, w32)
	exact := make([]float32, m*n)
	GemmBF16(false, true, m, n, k, 1, a, k, w16, k, 0, exact, n)
	got := make([]float32, m*n)
	func() {
		defer SetCompute(SetCompute(ComputeBF16))
		GemmBF16(false, true, m, n, k, 1, a, k, w16, k, 0, got, n)
	}()
	rounded := append([]float32(nil), a...)
	roundBF16SliceGeneric(rounded)
	differ := 0
	for i := 0; i < m; i++ {
		want := make([]float32, n)
		GemmBF16(false, true, 1, n, k, 1, rounded[i*k:], k, w16, k, 0, want, n)
		for j := range want {
			g := got[i*n+j]
			if math.Abs(float64(g-want[j])) > 1e-4*(1+math.Abs(float64(want[j]))) {
				t.Fatalf("C[%d,%d] = %g, the GEMV of the rounded row %g", i, j, g, want[j])
			}
			if useSkinny(gemmArch(activeArch.Load()), ComputeBF16, false, true, m, n, k, w16) && g != want[j] {
				t.Fatalf("C[%d,%d] = %g, not the GEMV of the rounded row bit for bit (%g)", i, j, g, want[j])
			}
			if g != exact[i*n+j] {
				differ++
			}
		}
	}
	if differ == 0 {
		t.Error("ComputeBF16 gave the exact products: A was not rounded")
	}
}

// BenchmarkSkinny runs one expert's linear layer (2816 x 1024 bf16
// weights, eight experts in turn so that W comes from memory, as in
// serving) for a few rows of A, skinny and packed side by side: the
// measurement behind skinnyMaxM. GB/s counts W's bytes once per call.
func BenchmarkSkinny(b *testing.B) {
	arch := gemmArch(activeArch.Load())
	if arch != archAVX512 && arch != archAVX2 {
		b.Skip("the skinny kernels are AVX-512 and AVX2")
	}
	b.Logf("%v kernels", arch)
	const n, k, experts = 2816, 1024, 8
	r := rand.New(rand.NewPCG(1, 1))
	ws := make([][]uint16, experts)
	f := make([]float32, n*k)
	for e := range ws {
		for j := range f {
			f[j] = r.Float32() - 0.5
		}
		ws[e] = make([]uint16, n*k)
		F32ToBF16(ws[e], f)
	}
	for _, m := range []int{2, 4, 8, 12, 16} {
		a := make([]float32, m*k)
		for i := range a {
			a[i] = r.Float32()
		}
		c := make([]float32, m*n)
		for _, path := range []string{"skinny", "packed"} {
			if path == "skinny" && m > skinnyMaxM {
				continue
			}
			b.Run(fmt.Sprintf("m%d/%s", m, path), func(b *testing.B) {
				e := 0
				for b.Loop() {
					if path == "skinny" {
						gemmSkinny(arch, false, m, n, k, 1, a, k, ws[e%experts], k, 0, c, n)
					} else {
						gemmPacked(arch, dotOff, false, true, m, n, k, 1, a, k, nil, ws[e%experts], k, 0, c, n)
					}
					e++
				}
				b.ReportMetric(float64(n*k*2)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
			})
		}
	}
}
