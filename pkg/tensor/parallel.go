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
//
// A closure passed as fn escapes to the heap (the goroutines see it), one
// allocation per call when it captures variables; code that must not
// allocate uses ParallelRange with a body that already lives on the heap.
func ParallelFor(n, grain int, fn func(lo, hi int)) {
	ParallelRange(n, grain, funcRanger(fn))
}

// Ranger is a loop body for ParallelRange: Range(lo, hi) handles the items
// [lo, hi). It must be safe to call concurrently on disjoint ranges.
type Ranger interface {
	Range(lo, hi int)
}

// funcRanger adapts a closure (a func value is pointer-shaped, so the
// conversion to Ranger does not allocate).
type funcRanger func(lo, hi int)

func (f funcRanger) Range(lo, hi int) { f(lo, hi) }

// Splits is the number of ranges ParallelFor and ParallelRange cut [0, n)
// into for this grain: at most Threads(), 1 when the loop runs inline, 0
// when n <= 0. Bodies that keep per-range scratch size it with Splits.
func Splits(n, grain int) int {
	_, count := split(n, grain)
	return count
}

// split cuts [0, n) into count ranges of chunk items (the last may be
// shorter): count <= Threads() workers, each with at least grain items.
func split(n, grain int) (chunk, count int) {
	if n <= 0 {
		return 0, 0
	}
	workers := min(Threads(), (n+max(grain, 1)-1)/max(grain, 1))
	chunk = (n + workers - 1) / workers
	return chunk, (n + chunk - 1) / chunk
}

// ParallelRange is ParallelFor with the body held in r. It allocates
// nothing in steady state: the spans go to fresh goroutines through a
// package queue (a go statement with arguments would allocate a closure),
// and the join is pooled. So a call whose r points to a struct that already
// lives on the heap (pooled, or kept in a caller's workspace) allocates
// nothing, where a capturing closure given to ParallelFor allocates once.
func ParallelRange(n, grain int, r Ranger) {
	chunk, count := split(n, grain)
	if count == 0 {
		return
	}
	if count == 1 {
		r.Range(0, n)
		return
	}
	j := joinPool.Get().(*join)
	for lo := chunk; lo < n; lo += chunk {
		j.wg.Add(1)
		go runSpan() // started before the send: every queued span has a taker
		spans <- span{r: r, lo: lo, hi: min(lo+chunk, n), j: j}
	}
	r.Range(0, chunk)
	j.wg.Wait()
	joinPool.Put(j)
}

// span is one range of a ParallelRange call, handed to a fresh goroutine.
type span struct {
	r      Ranger
	lo, hi int
	j      *join
}

// join counts a call's spans still running.
type join struct{ wg sync.WaitGroup }

var joinPool = sync.Pool{New: func() any { return new(join) }}

// spans carries spans to the goroutines ParallelRange starts, one each. A
// goroutine may run another call's span (they are started and queued in
// pairs, so every span is taken); the buffer only saves the sender a wait.
var spans = make(chan span, 256)

func runSpan() {
	s := <-spans
	s.r.Range(s.lo, s.hi)
	s.j.wg.Done()
}
