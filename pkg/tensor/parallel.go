package tensor

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
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
// The ranges run on the caller and on a pool of Threads()-1 persistent
// worker goroutines that spin briefly (workerSpin) after their last range
// before parking: a decode step forks about a hundred small GEMVs a token,
// and waking a parked thread for each cost ~25 us per fork on the 2-vCPU
// VM this was measured on (a fork-join of two 20 us halves took 45 us
// with fresh goroutines, ~22 us with the pool; BenchmarkForkJoin).
//
// A closure passed as fn escapes to the heap (the workers see it), one
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
// nothing in steady state (the call's job is pooled), so a call whose r
// points to a struct that already lives on the heap (pooled, or kept in a
// caller's workspace) allocates nothing, where a capturing closure given
// to ParallelFor allocates once.
//
// The caller publishes the call as a job, wakes parked workers, and claims
// ranges itself like any worker until none are left; then it waits for the
// ranges workers took (spinning up to callerSpin, then blocking). A nested
// call from inside a range works the same way: whatever no idle worker
// takes, its caller runs, so nesting cannot deadlock.
func ParallelRange(n, grain int, r Ranger) {
	chunk, count := split(n, grain)
	if count == 0 {
		return
	}
	if count == 1 {
		r.Range(0, n)
		return
	}
	startWorkers(Threads() - 1)
	j := jobPool.Get().(*job)
	j.r, j.n, j.chunk = r, n, chunk
	j.next.Store(0)
	j.wg.Add(count)
	j.count.Store(int32(count)) // last: a worker attaches only to a job with spans left
	slot := publish(j)
	if slot >= 0 {
		wakeWorkers(count - 1)
	}
	j.run()
	if slot >= 0 {
		slots[slot].CompareAndSwap(j, nil)
	}
	j.wait()
	j.r = nil
	jobPool.Put(j)
}

// job is one ParallelRange call as the workers see it.
type job struct {
	r        Ranger
	n, chunk int
	count    atomic.Int32 // ranges; 0 while the job is being set up
	next     atomic.Int32 // next range to claim
	refs     atomic.Int32 // workers attached (they may claim ranges)
	wg       sync.WaitGroup
}

var jobPool = sync.Pool{New: func() any { return new(job) }}

// run claims and runs ranges until none are left.
func (j *job) run() {
	count := int(j.count.Load())
	for {
		i := int(j.next.Add(1)) - 1
		if i >= count {
			return
		}
		lo := i * j.chunk
		j.r.Range(lo, min(lo+j.chunk, j.n))
		j.wg.Done()
	}
}

// callerSpin is how long a caller whose ranges are done polls for the
// workers' before blocking: ranges are equal, so the wait is usually
// shorter than one range, and blocking would cost a wake-up. SetSpin
// changes it.
var callerSpin atomic.Int64 // nanoseconds; DefaultSpin * 5 / 3 unless set

// wait returns when every range has run and no worker holds j.
func (j *job) wait() {
	start, spin := time.Now(), time.Duration(callerSpin.Load())
	for i := 0; j.refs.Load() != 0; i++ {
		if (spin == 0 || i%64 == 63) && time.Since(start) >= spin {
			j.wg.Wait()
			for j.refs.Load() != 0 { // a worker between its last Done and detaching
				runtime.Gosched()
			}
			return
		}
		runtime.Gosched()
	}
	// Every range was claimed (the caller ran out), and every claimer has
	// detached: all Done calls have happened.
}

// slots holds the published jobs workers look for; nested calls can have
// several at once. A call that finds no free slot runs all its ranges
// itself.
var slots [64]atomic.Pointer[job]

func publish(j *job) int {
	for i := range slots {
		if slots[i].CompareAndSwap(nil, j) {
			return i
		}
	}
	return -1
}

// The worker pool: started lazily, never stopped (its goroutines are
// parked when idle; leakcheck ignores them).
var (
	workersMu sync.Mutex
	workers   int          // started
	parked    atomic.Int32 // workers blocked on wake
	wake      = make(chan struct{}, 1024)
)

// workerSpin is how long an idle worker keeps looking for jobs before it
// parks (yielding its P between looks, so other goroutines still run).
// SetSpin changes it.
var workerSpin atomic.Int64 // nanoseconds; DefaultSpin unless set

// DefaultSpin is how long the kernels' idle pool workers poll for the
// next parallel call before parking (callers whose share is done poll 5/3
// of it for the workers'). Polling saves a wake-up (~25 us) per fork when
// the process has its cores to itself; where more runnable threads than
// cores share a host (several workers on one machine), every poll takes
// CPU time from a process that has real work, and SetSpin(0) is better.
const DefaultSpin = 300 * time.Microsecond

// SpinEnv names the environment variable that sets the spin at start-up
// (a Go duration, e.g. "0" or "300us"); an invalid value is ignored with
// the default kept.
const SpinEnv = "SWITCHYARD_SPIN"

func init() {
	d := DefaultSpin
	if v, ok := os.LookupEnv(SpinEnv); ok {
		if e, err := time.ParseDuration(v); err == nil && e >= 0 {
			d = e
		}
	}
	SetSpin(d)
}

// SetSpin sets how long idle pool workers poll before parking (d) and how
// long a caller polls for its workers' ranges before blocking (d * 5/3).
// 0 parks and blocks at once. Safe to call at any time.
func SetSpin(d time.Duration) {
	d = max(d, 0)
	workerSpin.Store(int64(d))
	callerSpin.Store(int64(d * 5 / 3))
}

// Spin reports the pool workers' spin set by SetSpin.
func Spin() time.Duration { return time.Duration(workerSpin.Load()) }

func startWorkers(want int) {
	if workersStarted.Load() >= int32(want) {
		return
	}
	workersMu.Lock()
	for workers < want {
		workers++
		go poolWorker()
	}
	workersStarted.Store(int32(workers))
	workersMu.Unlock()
}

var workersStarted atomic.Int32

// wakeWorkers hands up to k parked workers a wake-up.
func wakeWorkers(k int) {
	for p := int(parked.Load()); p > 0 && k > 0; p, k = p-1, k-1 {
		select {
		case wake <- struct{}{}:
		default:
			return
		}
	}
}

func poolWorker() {
	for {
		start, spin := time.Now(), time.Duration(workerSpin.Load())
		for i := 0; ; i++ {
			if findWork() {
				start = time.Now()
				continue
			}
			if (spin == 0 || i%64 == 63) && time.Since(start) >= spin {
				break
			}
			runtime.Gosched()
		}
		parked.Add(1)
		if !findWork() { // a job published before parked was raised sent no wake-up
			<-wake
		}
		parked.Add(-1)
	}
}

// findWork attaches to a published job with ranges left and runs them; it
// reports whether it found one.
func findWork() bool {
	for i := range slots {
		j := slots[i].Load()
		if j == nil || j.next.Load() >= j.count.Load() {
			continue
		}
		j.refs.Add(1)
		if slots[i].Load() != j { // finished (and maybe reused) meanwhile
			j.refs.Add(-1)
			continue
		}
		j.run()
		j.refs.Add(-1)
		return true
	}
	return false
}
