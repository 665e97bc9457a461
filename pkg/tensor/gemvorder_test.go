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
	got := GemvOrder()
	t.Logf("GemvOrder() = %s (vendor %q)", got, cpuVendor())
	if os.Getenv(GemvOrderEnv) != "" {
		return
	}
	want := "interleaved"
	if cpuVendor() == "AuthenticAMD" {
		want = "sequential"
	}
	if got != want {
		t.Errorf("GemvOrder() = %q on vendor %q, want %q", got, cpuVendor(), want)
	}
	defer forceGemvOrder(want == "interleaved")()
	if GemvOrder() == want {
		t.Errorf("forceGemvOrder did not change the order")
	}
}

// TestGemvOrdersAgreeBitwise: the row-sequential kernels give every row the
// four-row kernels' sum bit for bit (the same accumulators, products and
// reduction), for float32 and bfloat16 rows, every tail of k (whole 4-line
// steps, 2- and 1-line rests, bf16's 16-weight tail) and row counts that
// leave the four-row kernel a 1-3 row tail. So a machine's choice of order
// never changes a result: decode on AMD and Intel computes the same logits,
// and a training step's rows agree however the rows are split.
func TestGemvOrdersAgreeBitwise(t *testing.T) {
	if gemmArch(activeArch.Load()) != archAVX512 {
		t.Log("no AVX-512 here: both orders run the same kernels")
	}
	rng := rand.New(rand.NewPCG(11, 12))
	for _, n := range []int{1, 3, 4, 7, 9, 64} {
		for _, k := range []int{16, 32, 48, 64, 80, 112, 128, 144, 176, 1024, 1040, 2096} {
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
