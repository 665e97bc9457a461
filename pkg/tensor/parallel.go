package tensor

import (
	"runtime"
	"sync"
)

// Threads reports how many goroutines the parallel kernels split work over:
// runtime.GOMAXPROCS(0). Set GOMAXPROCS (or the environment variable) to pin
// the kernels to fewer cores, e.g. for single-thread benchmarks.
func Threads() int { return runtime.GOMAXPROCS(0) }

// ParallelFor calls fn(lo, hi) over disjoint ranges covering [0, n), using up
// to Threads() goroutines. Each range holds at least grain items (except
// possibly the last), so tiny loops run inline on the caller's goroutine.
// fn must be safe to call concurrently on disjoint ranges. ParallelFor
// returns after every call has returned. Calls may nest.
//
// Each call starts fresh goroutines rather than feeding a persistent pool:
// on this machine class a pool measured no faster (~3 us either way for a
// two-way split, dominated by waking an idle thread, not by creating the
// goroutine), and fresh goroutines leave nothing running between calls for
// leak checks to trip on. Kernels size grain so a split is worth ~3 us.
func ParallelFor(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	if grain < 1 {
		grain = 1
	}
	workers := Threads()
	if max := (n + grain - 1) / grain; workers > max {
		workers = max
	}
	if workers <= 1 {
		fn(0, n)
		return
	}
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := chunk; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, hi)
	}
	fn(0, min(chunk, n))
	wg.Wait()
}
