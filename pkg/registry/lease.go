package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// LeaseKeeper keeps one etcd lease alive for as long as etcd holds it: a
// worker's registration, or a coordinator's election session once it
// leads. Its methods are safe for concurrent use.
//
// The etcd client renews a lease every TTL/3 and stops renewing once a TTL
// passes without an answer, but that alone does not end a LeaseKeeper:
// etcd is asked whether the lease still lives, and if it does, renewals
// start again on the same lease. A member forwards renewals to the raft
// leader, and when the leader's host is cut off it holds them for up to
// 5 s (etcd's peer read timeout) while the members left elect a new
// leader, which extends every lease: the lease is alive throughout, yet
// every client that talks to a follower sees a TTL without an answer
// (found by scripts/chaos.sh: workers left the cluster with the former 5 s
// worker TTL, and the leading coordinator on a healthy host lost its term).
type LeaseKeeper struct {
	cli     *clientv3.Client
	lease   clientv3.LeaseID
	ttl     time.Duration
	ctx     context.Context // canceled when the lease is gone or no longer renewed (Done)
	stopCtx context.Context // canceled by Close and Abandon
	cancel  context.CancelFunc
	resumed chan time.Duration // see Resumed
	stalled atomic.Bool        // see Stalled
	mu      sync.Mutex
	sess    *concurrency.Session // renewing the lease now
}

// KeepLease takes over sess (a session on cli, renewing its lease) and
// keeps its lease alive until Close, Abandon, or until etcd no longer has
// it.
func KeepLease(cli *clientv3.Client, sess *concurrency.Session, ttl time.Duration) *LeaseKeeper {
	k := &LeaseKeeper{cli: cli, lease: sess.Lease(), ttl: ttl, sess: sess, resumed: make(chan time.Duration, 1)}
	var ended context.CancelFunc
	k.ctx, ended = context.WithCancel(context.Background())
	k.stopCtx, k.cancel = context.WithCancel(context.Background())
	go func() {
		defer ended()
		k.keep()
	}()
	return k
}

// keep watches the renewing session until Close or Abandon; when the
// client gives up renewing, it asks etcd whether the lease still lives and
// renews it again if so, and otherwise returns.
func (k *LeaseKeeper) keep() {
	for {
		select {
		case <-k.stopCtx.Done():
			return
		case <-k.Session().Done():
		}
		gaveUp := time.Now()
		k.stalled.Store(true)
		if !k.leaseAlive() {
			return
		}
		next, err := concurrency.NewSession(k.cli, concurrency.WithLease(k.lease), concurrency.WithTTL(int(k.ttl/time.Second)))
		if err != nil {
			return
		}
		k.mu.Lock()
		if k.stopCtx.Err() != nil { // Close or Abandon came meanwhile (halt cancels under mu): they acted on the old session
			k.mu.Unlock()
			next.Orphan()
			return
		}
		k.sess = next
		k.mu.Unlock()
		k.stalled.Store(false)
		select {
		case k.resumed <- time.Since(gaveUp) + k.ttl:
		default:
		}
	}
}

// leaseAlive asks etcd whether the lease still lives. It keeps asking for
// up to two TTLs (three since the last answer the client saw: the lease is
// surely gone by then, as nothing else renews it), redialing etcd at once
// each time rather than after gRPC's reconnect backoff.
func (k *LeaseKeeper) leaseAlive() bool {
	deadline := time.Now().Add(2 * k.ttl)
	for {
		if k.stopCtx.Err() != nil {
			return false
		}
		ctx, cancel := context.WithTimeout(k.stopCtx, max(time.Until(deadline), 100*time.Millisecond))
		resp, err := k.cli.TimeToLive(ctx, k.lease)
		cancel()
		switch {
		case err == nil:
			return resp.TTL >= 0 // remaining whole seconds; -1: gone
		case k.stopCtx.Err() != nil || k.cli.Ctx().Err() != nil || errors.Is(err, rpctypes.ErrLeaseNotFound) || time.Now().After(deadline):
			return false
		}
		k.cli.ActiveConnection().ResetConnectBackoff()
		time.Sleep(250 * time.Millisecond)
	}
}

// Lease is the lease kept alive.
func (k *LeaseKeeper) Lease() clientv3.LeaseID { return k.lease }

// TTL is the lease's TTL.
func (k *LeaseKeeper) TTL() time.Duration { return k.ttl }

// Session is the session renewing the lease now (a new one after each
// resumption, on the same lease).
func (k *LeaseKeeper) Session() *concurrency.Session {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sess
}

// Done is closed when the lease is no longer kept alive: after Close or
// Abandon, when the client closes, when etcd let the lease expire or
// revoked it, or when etcd could not be asked for its TTL for two TTLs
// after the client gave up renewing.
func (k *LeaseKeeper) Done() <-chan struct{} { return k.ctx.Done() }

// Ctx is a context canceled when Done is closed.
func (k *LeaseKeeper) Ctx() context.Context { return k.ctx }

// Resumed delivers, each time renewals stalled for a TTL while etcd kept
// the lease alive and have started again, how long the lease went without
// a renewal that the client saw (the newest only, if not read in time).
func (k *LeaseKeeper) Resumed() <-chan time.Duration { return k.resumed }

// Stalled reports whether renewals have stalled for a TTL and etcd has not
// yet answered whether the lease lives: the holder may have lost it
// without knowing (a leader should then act on nothing it cannot fence).
func (k *LeaseKeeper) Stalled() bool { return k.stalled.Load() }

// halt stops the keeper and returns the session to end.
func (k *LeaseKeeper) halt() *concurrency.Session {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cancel()
	return k.sess
}

// Close stops renewing and revokes the lease, which deletes its keys at
// once (the revocation bounded by the TTL, as concurrency.Session.Close).
func (k *LeaseKeeper) Close() error {
	sess := k.halt()
	<-k.Done()
	if err := sess.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("registry: revoke lease %x: %w", int64(k.lease), err)
	}
	return nil
}

// Abandon stops renewing the lease without revoking it, as a crashed
// process would: its keys disappear when the TTL runs out.
func (k *LeaseKeeper) Abandon() {
	sess := k.halt()
	<-k.Done()
	sess.Orphan()
}
