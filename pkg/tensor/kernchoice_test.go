package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

// BenchmarkGemvStream times GemvTBF16 over a 1 GiB bfloat16 matrix
// (1024 columns), far beyond any cache: decode's regime, where the kernel
// is a read of W from memory. It runs in each order (gemvSequential), so
// `-cpu 1,2` gives the four cells of scripts/bench-gemv-order.sh; MB/s is
// the weight bandwidth.
func BenchmarkGemvStream(b *testing.B) {
	const k = 1024
	rows := (1 << 30) / (2 * k)
	w := make([]uint16, rows*k)
	for i := range w {
		w[i] = uint16(0x3f80 + i%64) // 1.0 .. 1.49: finite sums
	}
	x := make([]float32, k)
	for i := range x {
		x[i] = float32(i%7) - 3
	}
	y := make([]float32, rows)
	for _, seq := range []bool{false, true} {
		b.Run(fmt.Sprintf("order=%s", map[bool]string{false: "interleaved", true: "sequential"}[seq]), func(b *testing.B) {
			defer forceGemvOrder(seq)()
			b.SetBytes(int64(2 * len(w)))
			for b.Loop() {
				GemvTBF16(rows, k, w, k, x, y, 0)
			}
		})
	}
}

// TestGemvOrderName: without GemvOrderEnv the order follows the CPU's
// vendor (sequential on AMD), and GemvOrder names it
// (scripts/bench-gemv-order.sh reads this test's log line).
func TestGemvOrderName(t *testing.T) {
	t.Logf("GemvOrder() = %s (vendor %q)", GemvOrder(), cpuVendor())
	checkVendorDefault(t, &gemvSequential)
}

// checkVendorDefault: unless c's environment variable is set, c holds
// c.yes on AMD and c.no elsewhere, and force changes it until restored.
func checkVendorDefault(t *testing.T, c *kernelChoice) {
	t.Helper()
	if os.Getenv(c.env) != "" {
		return
	}
	want := c.no
	if cpuVendor() == "AuthenticAMD" {
		want = c.yes
	}
	if got := c.name(); got != want {
		t.Errorf("%s: %q on vendor %q, want %q", c.env, got, cpuVendor(), want)
	}
	restore := c.force(want == c.no)
	if c.name() == want {
		t.Errorf("%s: force did not change the choice", c.env)
	}
	restore()
	if c.name() != want {
		t.Errorf("%s: restore left %q, want %q", c.env, c.name(), want)
	}
}

// TestGemvOrdersAgreeBitwise: the row-sequential kernels give every row the
// four-row kernels' sum bit for bit (the same accumulators, products and
// reduction), on AVX-512 and on AVX2, for float32 and bfloat16 rows, every
// tail of k (whole 4-line steps, 2- and 1-line rests, bf16's 16-weight
// tail; AVX2's 16-column blocks and last 8 columns; a rest of k below the
// vector width, which goes through gemvAddTail) and row counts that
// leave the four-row kernel a 1-3 row tail. So a machine's choice of order
// never changes a result: decode on AMD and Intel computes the same logits,
// and a training step's rows agree however the rows are split.
func TestGemvOrdersAgreeBitwise(t *testing.T) {
	if gemmArch(activeArch.Load()) != archAVX512 {
		t.Log("generic kernels here: both orders run the same code")
	}
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{1, 3, 4, 7, 9, 64} {
		for _, k := range []int{8, 16, 24, 32, 40, 48, 64, 80, 112, 128, 144, 176, 1024, 1040, 1048, 1051, 2096} {
			w := make([]float32, n*k)
			for i := range w {
				w[i] = float32(rng.NormFloat64())
			}
			w16 := make([]uint16, len(w))
			F32ToBF16(w16, w)
			x := make([]float32, k)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			for _, bf16 := range []bool{false, true} {
				var got [2][]float32
				for i, seq := range []bool{false, true} {
					restore := forceGemvOrder(seq)
					got[i] = make([]float32, n)
					if bf16 {
						GemvTBF16(n, k, w16, k, x, got[i], 0)
					} else {
						GemvT(n, k, w, k, x, got[i], 0)
					}
					restore()
				}
				for r := range got[0] {
					if math.Float32bits(got[0][r]) != math.Float32bits(got[1][r]) {
						t.Fatalf("n=%d k=%d bf16=%v row %d: interleaved %v, sequential %v", n, k, bf16, r, got[0][r], got[1][r])
					}
				}
			}
		}
	}
}

// TestGemmBroadcastName: the AVX-512 GEMM micro-kernels broadcast A into a
// register by default on AMD and inside the FMA elsewhere, GemmBroadcast
// names the choice, and ComputeBF16 prefers VDPBF16PS on AMD only.
func TestGemmBroadcastName(t *testing.T) {
	t.Logf("GemmBroadcast() = %s (vendor %q)", GemmBroadcast(), cpuVendor())
	checkVendorDefault(t, &gemmRegBroadcast)
	checkVendorDefault(t, &bf16DotPreferred)
}

// TestGemmBroadcastsAgreeBitwise: the register-broadcast micro-kernels give
// every element of C the embedded kernels' bits, for every tile height
// (m = 1..15 and a tall m), depths that leave the 4-step loop every
// remainder and span several slabs, beta 0 and 1, right-edge tiles, and
// both the float32 and the VDPBF16PS kernels (ComputeBF16). So the choice
// of broadcast never changes a result.
func TestGemmBroadcastsAgreeBitwise(t *testing.T) {
	if gemmArch(activeArch.Load()) != archAVX512 {
		t.Log("no AVX-512 here: both choices run the same kernels")
	}
	rng := rand.New(rand.NewPCG(13, 14))
	modes := []Compute{ComputeExact}
	if bf16DotSupported(gemmArch(activeArch.Load())) {
		modes = append(modes, ComputeBF16)
	}
	for _, mode := range modes {
		for _, m := range []int{1, 2, 5, 13, 14, 15, 29, 200} {
			for _, k := range []int{1, 3, 4, 6, 257, 600} {
				n := 32*(1+m%3) + m%7
				a := make([]float32, m*k)
				b := make([]float32, n*k)
				for i := range a {
					a[i] = float32(rng.NormFloat64())
				}
				for i := range b {
					b[i] = float32(rng.NormFloat64())
				}
				c0 := make([]float32, m*n)
				for i := range c0 {
					c0[i] = float32(rng.NormFloat64())
				}
				for _, beta := range []float32{0, 1} {
					var got [2][]float32
					for i, reg := range []bool{false, true} {
						restore := forceGemmBroadcast(reg)
						prev := SetCompute(mode)
						got[i] = append([]float32(nil), c0...)
						Gemm(false, true, m, n, k, 1.5, a, k, b, k, beta, got[i], n)
						SetCompute(prev)
						restore()
					}
					for j := range got[0] {
						if math.Float32bits(got[0][j]) != math.Float32bits(got[1][j]) {
							t.Fatalf("%v m=%d n=%d k=%d beta=%v C[%d]: embedded %v, register %v", mode, m, n, k, beta, j, got[0][j], got[1][j])
						}
					}
				}
			}
		}
	}
}

// BenchmarkGemmBroadcast runs the square GEMM, a 512-token prefill of one
// expert layer (bf16 weights) in both compute modes, and the bare
// micro-kernels with A broadcast each way (gemmRegBroadcast), the two
// choices back to back per shape so that machine noise hits both alike.
// GOMAXPROCS sets the threads (use the environment variable, not -cpu:
// the worker pool is sized once).
func BenchmarkGemmBroadcast(b *testing.B) {
	prefill := benchShape{name: "512x2816x1024_NT_bf16", m: 512, n: 2816, k: 1024, transB: true, bf16: true}
	cases := []struct {
		name string
		mode Compute
		run  func(b *testing.B)
	}{
		{"micro", ComputeExact, func(b *testing.B) {
			if gemmArch(activeArch.Load()) != archAVX512 {
				b.Skip("no AVX-512")
			}
			benchMicroKernel(b, archAVX512)
		}},
		{"micro-dot", ComputeBF16, BenchmarkMicroKernelDot},
		{benchShapes[0].name, ComputeExact, func(b *testing.B) { benchGemm(b, benchShapes[0]) }},
		{benchShapes[1].name, ComputeExact, func(b *testing.B) { benchGemm(b, benchShapes[1]) }},
		{prefill.name + "/exact", ComputeExact, func(b *testing.B) { benchGemm(b, prefill) }},
		{prefill.name + "/bf16", ComputeBF16, func(b *testing.B) { benchGemm(b, prefill) }},
	}
	for _, c := range cases {
		for _, reg := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/%s", c.name, map[bool]string{false: "embedded", true: "register"}[reg]), func(b *testing.B) {
				defer forceGemmBroadcast(reg)()
				defer SetCompute(SetCompute(c.mode))
				c.run(b)
			})
		}
	}
}
