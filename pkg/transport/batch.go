package transport

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/switchyard/switchyard/pkg/expert"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// job is one admitted expert request waiting for (or in) a batch.
type job struct {
	ctx     context.Context // the request's stream: a cancelled job is skipped
	scope   *scope          // the server scope the request addresses
	local   bool            // computed in process (serveLocal), not received on a stream
	phase   pb.Phase
	caller  string // training: the caller whose activations are kept (trainCaller)
	seq     uint64 // training: the forward's sequence number
	layer   int
	experts []int32       // ascending expert indices
	rows    []int32       // rows per expert
	ffns    []*expert.FFN // resolved at admission, so a concurrent drop cannot race
	x       []float32     // [n, D] input rows (dL/dy for a backward), pooled; owned by the batcher once submitted
	y       []float32     // [n, D] output rows (dL/dx for a backward)
	enq     time.Time     // when it was queued
	started time.Time     // when its batch started (set by runBatch)
	err     error         // set before done is closed
	done    chan struct{} // closed when y is filled or err set
}

// batcher runs queued jobs one batch at a time: whenever it is free it
// takes everything queued (after waiting for the optional window) and
// hands the batch to run, which computes one GEMM per expert over all the
// batch's rows for it (ExpertServer.runBatch).
//
// Without a window, a request that finds the batcher idle runs its batch
// on its own goroutine (the stream handler's): an uncontended request costs
// no goroutine hand-off. Requests that arrive while a batch runs queue up
// and run together as the next batch, on the batcher's goroutine.
type batcher struct {
	window  time.Duration // 0: never wait
	want    int           // with window: run once this many jobs of one layer are queued
	run     func(jobs []*job)
	release func(j *job) // returns j.x to its pool

	mu      sync.Mutex
	queue   []*job
	running bool // a batch is being computed (inline or on the loop)
	stopped bool
	wake    chan struct{} // capacity 1: "the queue changed"
	quit    chan struct{}
	exited  chan struct{}
}

func newBatcher(window time.Duration, want int, run func([]*job), release func(*job)) *batcher {
	b := &batcher{
		window: window, want: want, run: run, release: release,
		wake: make(chan struct{}, 1), quit: make(chan struct{}), exited: make(chan struct{}),
	}
	go b.loop()
	return b
}

// submit queues j and waits until it is computed or its context ends. On a
// stopped batcher it fails with ErrDraining. Either way the batcher owns
// j.x from now on.
func (b *batcher) submit(j *job) error {
	j.done = make(chan struct{})
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		b.release(j)
		return fmt.Errorf("%w: expert batcher stopped", ErrDraining)
	}
	j.enq = time.Now()
	b.queue = append(b.queue, j)
	if b.window == 0 && !b.running {
		if b.runQueued() {
			b.poke()
		}
	} else {
		b.mu.Unlock()
		b.poke()
	}
	select {
	case <-j.done:
		return j.err
	case <-j.ctx.Done():
		return j.ctx.Err()
	}
}

// runQueued runs everything queued as one batch. It is called with b.mu
// held and b.running false, and returns with b.mu released, reporting
// whether more was queued meanwhile.
func (b *batcher) runQueued() (pending bool) {
	b.running = true
	jobs := b.queue
	b.queue = nil
	b.mu.Unlock()
	b.run(jobs)
	b.mu.Lock()
	b.running = false
	pending = len(b.queue) > 0
	b.mu.Unlock()
	return pending
}

func (b *batcher) poke() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *batcher) loop() {
	defer close(b.exited)
	for {
		select {
		case <-b.wake:
		case <-b.quit:
			b.failQueued()
			return
		}
		if b.window > 0 && !b.waitForBatch() {
			b.failQueued()
			return
		}
		for {
			b.mu.Lock()
			if b.running || len(b.queue) == 0 {
				// An inline batch runs: it pokes us when it is done and
				// more is queued.
				b.mu.Unlock()
				break
			}
			b.runQueued()
		}
	}
}

// waitForBatch waits until `want` jobs of one layer are queued or the
// window since the oldest queued job has passed. It returns false if the
// batcher is stopping.
func (b *batcher) waitForBatch() bool {
	var timer *time.Timer
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.mu.Unlock()
			return true
		}
		full := false
		if b.want > 0 {
			per := map[int]int{}
			for _, j := range b.queue {
				per[j.layer]++
				full = full || per[j.layer] >= b.want
			}
		}
		wait := time.Until(b.queue[0].enq.Add(b.window))
		b.mu.Unlock()
		if full || wait <= 0 {
			return true
		}
		if timer == nil {
			timer = time.NewTimer(wait) // the oldest job, hence the deadline, stays fixed
			defer timer.Stop()
		}
		select {
		case <-b.wake:
		case <-timer.C:
			return true
		case <-b.quit:
			return false
		}
	}
}

// failQueued fails every queued job with ErrDraining.
func (b *batcher) failQueued() {
	b.mu.Lock()
	jobs := b.queue
	b.queue = nil
	b.mu.Unlock()
	for _, j := range jobs {
		j.err = fmt.Errorf("%w: expert batcher stopped", ErrDraining)
		b.release(j)
		close(j.done)
	}
}

// stop fails queued jobs, waits for a running batch and ends the goroutine.
// Later submits fail with ErrDraining. Idempotent. (A batch running inline
// on a request's goroutine is not waited for: the server waits for its
// requests while draining.)
func (b *batcher) stop() {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		<-b.exited
		return
	}
	b.stopped = true
	b.mu.Unlock()
	close(b.quit)
	<-b.exited
}
