package collective

import (
	"context"
	"math"
	"sync/atomic"
	"testing"
	"time"
)

// AllReduceFloat64 gives every member the bit-identical float64 sum in rank
// order, keeping what a float32 reduction would lose; Barrier holds every
// member until the last one arrives.
func TestAllReduceFloat64AndBarrier(t *testing.T) {
	checkLeaks(t)
	const n = 4
	c := newCluster(t, n, nil)
	defer c.close()
	// Values whose sum float32 cannot represent: 1e9 + small parts.
	vals := func(r int) []float64 { return []float64{1e9 + float64(r)*1e-3, float64(r) / 3, -float64(r) * 1e-12} }
	want := make([]float64, 3)
	for r := 0; r < n; r++ {
		for i, x := range vals(r) {
			want[i] += x
		}
	}
	got := make([][]float64, n)
	c.each(t, func(r int, g *Group) error {
		v := vals(r)
		if err := g.AllReduceFloat64(context.Background(), v); err != nil {
			return err
		}
		got[r] = v
		return nil
	})
	for r := 0; r < n; r++ {
		for i := range want {
			if math.Float64bits(got[r][i]) != math.Float64bits(want[i]) {
				t.Fatalf("member %d value %d: %v, want %v (rank-order float64 sum)", r, i, got[r][i], want[i])
			}
		}
	}

	var arrived atomic.Int32
	c.each(t, func(r int, g *Group) error {
		if r == n-1 {
			time.Sleep(200 * time.Millisecond) // the last member is late
		}
		arrived.Add(1)
		if err := g.Barrier(context.Background()); err != nil {
			return err
		}
		if a := arrived.Load(); a != n {
			t.Errorf("member %d left the barrier when %d of %d had arrived", r, a, n)
		}
		return nil
	})
}
