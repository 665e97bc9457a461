package tensor

import (
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestParallelForCovers checks the contract: ranges are disjoint, cover
// [0, n) exactly, hold at least grain items (except possibly the last), and
// number at most Threads().
func TestParallelForCovers(t *testing.T) {
	for _, procs := range []int{1, 2, 3, 8} {
		old := runtime.GOMAXPROCS(procs)
		for _, tc := range []struct{ n, grain int }{
			{0, 1}, {-3, 1}, {1, 1}, {2, 1}, {7, 1}, {7, 3}, {7, 100}, {100, 0}, {1000, 7}, {1001, 1},
		} {
			var mu sync.Mutex
			var ranges [][2]int
			hits := make([]int32, max(tc.n, 0))
			ParallelFor(tc.n, tc.grain, func(lo, hi int) {
				for i := lo; i < hi; i++ {
					atomic.AddInt32(&hits[i], 1)
				}
				mu.Lock()
				ranges = append(ranges, [2]int{lo, hi})
				mu.Unlock()
			})
			for i, h := range hits {
				if h != 1 {
					t.Fatalf("procs=%d n=%d grain=%d: item %d visited %d times", procs, tc.n, tc.grain, i, h)
				}
			}
			if len(ranges) > procs {
				t.Errorf("procs=%d n=%d grain=%d: %d ranges, want <= Threads()", procs, tc.n, tc.grain, len(ranges))
			}
			sort.Slice(ranges, func(i, j int) bool { return ranges[i][0] < ranges[j][0] })
			for i, r := range ranges {
				if r[1]-r[0] < max(tc.grain, 1) && i != len(ranges)-1 {
					t.Errorf("procs=%d n=%d grain=%d: range %v smaller than grain", procs, tc.n, tc.grain, r)
				}
			}
		}
		runtime.GOMAXPROCS(old)
	}
}

// TestParallelForNested runs ParallelFor inside ParallelFor (as Gemm inside
// a parallel expert loop does): it must neither deadlock nor lose items.
func TestParallelForNested(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	var total atomic.Int64
	ParallelFor(8, 1, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			ParallelFor(100, 1, func(lo, hi int) { total.Add(int64(hi - lo)) })
		}
	})
	if got := total.Load(); got != 800 {
		t.Fatalf("nested ParallelFor visited %d items, want 800", got)
	}
}

// TestParallelRangeBlockingSpan: a range that blocks longer than the
// caller's spin (here on a channel the caller's own range closes late) is
// waited for, not lost.
func TestParallelRangeBlockingSpan(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	var done atomic.Int32
	release := make(chan struct{})
	ParallelFor(2, 1, func(lo, hi int) {
		if lo == 0 {
			time.Sleep(2 * time.Duration(callerSpin.Load()))
			close(release)
		} else {
			<-release
		}
		done.Add(1)
	})
	if done.Load() != 2 {
		t.Fatalf("%d ranges done at return, want 2", done.Load())
	}
}

// TestParallelRangeConcurrentCallers: many goroutines forking at once
// (serving's concurrent requests) each get all their ranges run exactly
// once, with more calls than job slots.
func TestParallelRangeConcurrentCallers(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	var wg sync.WaitGroup
	for g := 0; g < 100; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := 0; it < 50; it++ {
				hits := make([]int32, 37)
				ParallelFor(len(hits), 1, func(lo, hi int) {
					for i := lo; i < hi; i++ {
						atomic.AddInt32(&hits[i], 1)
					}
				})
				for i, h := range hits {
					if h != 1 {
						t.Errorf("item %d visited %d times", i, h)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkForkJoin is one ParallelFor of two ~20 us halves after a serial
// gap: the fork-join overhead a decode step pays per parallel GEMV.
func BenchmarkForkJoin(b *testing.B) {
	spin := func(d time.Duration) {
		for t := time.Now(); time.Since(t) < d; {
		}
	}
	for _, gap := range []time.Duration{0, 5 * time.Microsecond, 50 * time.Microsecond} {
		b.Run(gap.String(), func(b *testing.B) {
			for b.Loop() {
				spin(gap)
				ParallelFor(2, 1, func(lo, hi int) { spin(20 * time.Microsecond) })
			}
		})
	}
}

// TestParallelRangeNoSpin: with SetSpin(0) (workers park at once, callers
// block at once) every range still runs exactly once, nested and from
// many callers at once.
func TestParallelRangeNoSpin(t *testing.T) {
	defer SetSpin(Spin())
	SetSpin(0)
	if Spin() != 0 {
		t.Fatalf("Spin() = %v after SetSpin(0)", Spin())
	}
	t.Run("nested", TestParallelForNested)
	t.Run("blocking", TestParallelRangeBlockingSpan)
	t.Run("concurrent", TestParallelRangeConcurrentCallers)
	t.Run("covers", TestParallelForCovers)
}
