package tensor

import (
	"fmt"
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
