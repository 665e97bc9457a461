// Package backoff spaces the retries of a failing operation: a delay that
// starts at Lo and doubles up to Hi, reset after a success. One type for
// every retry loop of the control plane (etcd watches, registration,
// placement applies).
package backoff

import (
	"context"
	"time"
)

// Backoff is a doubling delay. The zero value is not usable: use New.
// Not safe for concurrent use (one retry loop owns it).
type Backoff struct{ d, lo, hi time.Duration }

// New returns a backoff from lo doubling to hi.
func New(lo, hi time.Duration) *Backoff { return &Backoff{d: lo, lo: lo, hi: hi} }

// Reset starts again from Lo (after a success).
func (b *Backoff) Reset() { b.d = b.lo }

// Next returns the delay to use now and doubles the following one.
func (b *Backoff) Next() time.Duration {
	d := b.d
	b.d = min(2*b.d, b.hi)
	return d
}

// Wait sleeps for the next delay; false if ctx ended first.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
