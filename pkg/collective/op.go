package collective

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// OpError is the error of a failed operation. It names the peer the
// operation was waiting for when it failed and, after a timeout, the peers
// that did not answer a ping.
type OpError struct {
	Op   string // e.g. "allreduce #7 (ring, f32, 1048576 elements)"
	Rank int    // this member
	// Peer is the member whose data, acknowledgement or stream failed the
	// operation (the first such failure), or -1 if none was involved
	// (e.g. the caller cancelled).
	Peer     int
	PeerAddr string
	// Unresponsive lists the members that did not answer a ping within
	// Config.ProbeTimeout after the operation failed, with why (not
	// probed when the caller cancelled or closed the group).
	Unresponsive []PeerStatus
	Err          error
}

// PeerStatus is one member's answer (or not) to a probe.
type PeerStatus struct {
	Rank int
	Addr string
	Err  error
}

func (e *OpError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "collective rank %d: %s: ", e.Rank, e.Op)
	if e.Peer >= 0 {
		fmt.Fprintf(&b, "rank %d (%s): ", e.Peer, e.PeerAddr)
	}
	b.WriteString(e.Err.Error())
	if len(e.Unresponsive) > 0 {
		b.WriteString("; not answering pings:")
		for _, p := range e.Unresponsive {
			fmt.Fprintf(&b, " rank %d (%s): %v;", p.Rank, p.Addr, p.Err)
		}
	}
	return strings.TrimSuffix(b.String(), ";")
}

func (e *OpError) Unwrap() error { return e.Err }

// peerError is what an operation's goroutine returns: which peer, what it
// was doing.
type peerError struct {
	peer    int
	waiting bool // waiting for the peer's data (the most telling kind)
	err     error
}

func (e *peerError) Error() string { return e.err.Error() }
func (e *peerError) Unwrap() error { return e.err }

func errPeer(peer int, waiting bool, format string, args ...any) error {
	return &peerError{peer: peer, waiting: waiting, err: fmt.Errorf(format, args...)}
}

// op is one running operation: its goroutines (spawn), the state they
// share (guarded by mu, waited on with waitFor and changed with update)
// and the errors they returned.
type op struct {
	g    *Group
	seq  uint64
	name string
	ctx  context.Context // the wait context (deadline minus the probe reserve)

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every state change
	pending int           // sent chunks not yet acknowledged
	errs    []error
	cancel  context.CancelCauseFunc
	wg      sync.WaitGroup
	after   func() // runs once the operation succeeded, if set
}

// do runs body as operation name under the group's lock, with the
// deadline, failure and abort rules of the package documentation. body
// starts the operation's goroutines (spawn) or does all the work itself.
func (g *Group) do(ctx context.Context, name func(seq uint64) string, body func(o *op) error) error {
	g.opMu.Lock()
	defer g.opMu.Unlock()
	g.seq++
	o := &op{g: g, seq: g.seq, name: name(g.seq), changed: make(chan struct{})}
	if err := g.usable(); err != nil {
		return &OpError{Op: o.name, Rank: g.rank, Peer: -1, Err: err}
	}
	deadline := time.Now().Add(g.cfg.OpTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// Reserve ProbeTimeout at the end to name unresponsive peers, unless
	// that would eat most of a short deadline.
	wait := deadline
	if probe := g.cfg.ProbeTimeout; time.Until(deadline) > 4*probe {
		wait = deadline.Add(-probe)
	}
	dctx, cancelDeadline := context.WithDeadline(ctx, wait)
	defer cancelDeadline()
	var cancel context.CancelCauseFunc
	o.ctx, cancel = context.WithCancelCause(dctx)
	o.cancel = cancel
	defer cancel(nil)
	// When the operation's context ends for any reason before it
	// completes, tear the streams down so that no goroutine stays blocked
	// in a send.
	stopAbort := context.AfterFunc(o.ctx, g.cancelStream)

	err := body(o)
	if err == nil {
		o.wg.Wait()
		err = o.waitFor(func() bool { return o.pending == 0 }) // every payload released
	} else {
		cancel(errOpFailed)
		o.wg.Wait()
	}
	if err == nil {
		err = o.firstErr()
	}
	if err == nil && stopAbort() {
		if o.after != nil {
			o.after()
		}
		return nil
	}
	if err == nil { // the deadline hit just as the operation completed
		err = context.Cause(o.ctx)
	}
	cancel(err)
	oe := g.opError(o.name, o.bestErr(err))
	// Unless the caller gave up or closed the group, find out who is not
	// answering: the peer we waited for may itself be waiting for (or have
	// aborted because of) another one.
	g.mu.Lock()
	closed := g.isClosed
	g.mu.Unlock()
	if !errors.Is(ctx.Err(), context.Canceled) && !closed {
		oe.Unresponsive = g.probe(ctx)
	}
	g.abort(oe)
	return oe
}

// spawn runs f in the operation's goroutine group; f's error cancels the
// operation.
func (o *op) spawn(f func() error) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		if err := f(); err != nil {
			o.mu.Lock()
			o.errs = append(o.errs, err)
			o.mu.Unlock()
			o.cancel(errOpFailed)
		}
	}()
}

// update runs f under the operation's lock and wakes every waiter.
func (o *op) update(f func()) {
	o.mu.Lock()
	f()
	close(o.changed)
	o.changed = make(chan struct{})
	o.mu.Unlock()
}

// waitFor blocks until cond (evaluated under the lock) holds or the
// operation ends.
func (o *op) waitFor(cond func() bool) error {
	for {
		o.mu.Lock()
		if cond() {
			o.mu.Unlock()
			return nil
		}
		ch := o.changed
		o.mu.Unlock()
		select {
		case <-ch:
		case <-o.ctx.Done():
			return context.Cause(o.ctx)
		}
	}
}

func (o *op) firstErr() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.errs) > 0 {
		return o.errs[0]
	}
	return nil
}

// bestErr picks the most telling of the goroutines' errors: a peer's
// failure that is not just the operation's own context ending, then a wait
// for a peer's data, then any error naming a peer, then fallback.
func (o *op) bestErr(fallback error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	rank := func(err error) int {
		var pe *peerError
		switch {
		case !errors.As(err, &pe):
			return 4
		case !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && !errors.Is(err, errOpFailed):
			return 0
		case pe.waiting:
			return 1
		}
		return 2
	}
	best, br := fallback, 3
	if _, ok := fallback.(*peerError); ok {
		br = rank(fallback)
	}
	for _, e := range o.errs {
		if r := rank(e); r < br {
			best, br = e, r
		}
	}
	return best
}

// errOpFailed is the cause given to goroutines stopped because another one
// failed.
var errOpFailed = errors.New("operation failed")

func (g *Group) opError(name string, err error) *OpError {
	oe := &OpError{Op: name, Rank: g.rank, Peer: -1, Err: err}
	var pe *peerError
	if errors.As(err, &pe) {
		oe.Peer, oe.PeerAddr = pe.peer, g.cfg.Peers[pe.peer]
	}
	return oe
}

// probe pings every peer and returns those that do not answer within
// ProbeTimeout.
func (g *Group) probe(ctx context.Context) []PeerStatus {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.ProbeTimeout)
	defer cancel()
	var mu sync.Mutex
	var out []PeerStatus
	var wg sync.WaitGroup
	for r := range g.n {
		if r == g.rank {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := g.Ping(pctx, r); err != nil {
				mu.Lock()
				out = append(out, PeerStatus{Rank: r, Addr: g.cfg.Peers[r], Err: err})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Rank < out[j].Rank })
	return out
}

// link returns the stream to peer r, or an error if Connect has not
// opened it.
func (g *Group) link(r int) (*outLink, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if o := g.out[r]; o != nil && o.stream != nil {
		return o, nil
	}
	return nil, errPeer(r, false, "not connected (call Connect first)")
}
