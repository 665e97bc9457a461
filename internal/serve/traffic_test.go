package serve

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestBucketsQuantile compares the interpolation with the histogram of
// known observations, as Prometheus' histogram_quantile computes it.
func TestBucketsQuantile(t *testing.T) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Buckets: []float64{1, 2, 4}})
	for _, v := range []float64{0.5, 1.5, 1.5, 3, 10} { // buckets: <=1: 1, <=2: 3, <=4: 4, +Inf: 5
		h.Observe(v)
	}
	b := bucketsOf(h)
	for _, c := range []struct{ q, want float64 }{
		{0.2, 1},    // rank 1 = the whole first bucket: its upper bound
		{0.5, 1.75}, // rank 2.5: second bucket (1, 2], 1.5 of its 2 -> 1 + 0.75
		{0.8, 4},    // rank 4: the third bucket's upper bound
		{0.99, 4},   // in +Inf: the highest finite bound
	} {
		if got := b.Quantile(c.q); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("q%.2f = %g, want %g", c.q, got, c.want)
		}
	}
	if !math.IsNaN((Buckets{}).Quantile(0.5)) {
		t.Error("empty histogram: want NaN")
	}
}

// TestTrafficWindow: rates and percentiles cover only the window's
// observations, not those before it.
func TestTrafficWindow(t *testing.T) {
	up := []float64{.01, .1, 1}
	t0 := time.Unix(1000, 0)
	snap := func(at time.Duration, gen uint64, ttft []uint64) Traffic {
		return Traffic{Time: t0.Add(at), GeneratedTokens: gen, TTFT: Buckets{Upper: up, Counts: ttft, Count: ttft[len(ttft)-1]}}
	}
	w := &TrafficWindow{Span: 10 * time.Second}
	if s := w.Add(snap(0, 100, []uint64{50, 50, 50})); s.TokensPerS != 0 || s.Window != 0 {
		t.Fatalf("first snapshot: %+v; want nothing to compare yet", s)
	}
	// 5 s later: 50 more tokens, 4 more TTFTs, all in (0.1, 1].
	s := w.Add(snap(5*time.Second, 150, []uint64{50, 50, 54}))
	if s.TokensPerS != 10 || s.Window != 5*time.Second {
		t.Errorf("tokens/s %g over %v; want 10 over 5s", s.TokensPerS, s.Window)
	}
	if s.TTFTP50 <= 100 || s.TTFTP50 > 1000 {
		t.Errorf("TTFT p50 %g ms; want within the (100, 1000] ms bucket (the 50 fast ones are older than the window)", s.TTFTP50)
	}
	// 20 s later the oldest snapshot leaves the window.
	s = w.Add(snap(25*time.Second, 190, []uint64{50, 50, 54}))
	if s.Window != 20*time.Second || s.TokensPerS != 2 || s.TTFTP50 != 0 {
		t.Errorf("%+v; want a 20 s window from the 5 s snapshot: 2 tokens/s, no TTFT sample (0)", s)
	}
}
