package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard/switchyard/internal/backoff"
	"github.com/switchyard/switchyard/pkg/cluster"
)

// Fence proves leadership to etcd: the leader's election key and the
// revision that created it (concurrency.Election's Key() and Rev()). A
// write made under a fence succeeds only while that exact key exists: once
// the leader resigns or its session lease expires the key is deleted, and a
// later leader's key has another create revision, so a deposed leader's
// delayed write cannot land (a lock or a "leader=true" flag alone would not
// guarantee that; see Jepsen's etcd analysis).
type Fence struct {
	Key string
	Rev int64
}

// FenceOf returns the fence of an election this process has won.
func FenceOf(e *concurrency.Election) Fence { return Fence{Key: e.Key(), Rev: e.Rev()} }

// Placement write refusals; errors.Is works on WritePlacement's error.
var (
	// ErrNotLeader: the fence key is gone or was re-created (leadership lost).
	ErrNotLeader = errors.New("not the leader")
	// ErrPlacementConflict: the placement changed since the writer read it
	// (its expected ModRevision is stale); re-read and recompute.
	ErrPlacementConflict = errors.New("placement changed since read")
)

// Placement reads a model's placement and the ModRevision of its key (the
// value WritePlacement expects next). Without a placement it returns nil,
// 0 and no error.
func (r *Registry) Placement(ctx context.Context, fp string) (*cluster.Placement, int64, error) {
	key := r.PlacementKey(fp)
	resp, err := r.cli.Get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("registry: get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	p, err := decodePlacement(resp.Kvs[0].Key, resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, err
	}
	return p, resp.Kvs[0].ModRevision, nil
}

func decodePlacement(key, val []byte) (*cluster.Placement, error) {
	var p cluster.Placement
	if err := json.Unmarshal(val, &p); err != nil {
		return nil, fmt.Errorf("registry: decode %s: %w", key, err)
	}
	return &p, nil
}

// WritePlacement stores p as its model's placement in one transaction that
// checks both fences: the leader's election key still exists with
// fence.Rev as its create revision, and the placement key's ModRevision is
// still expectModRev (0: the key must not exist). It returns the new
// ModRevision. A failed check returns ErrNotLeader or ErrPlacementConflict
// (wrapped, with the revisions seen); nothing is written then. p must pass
// Validate. (Epochs are the writer's business: it read the stored epoch at
// expectModRev.)
func (r *Registry) WritePlacement(ctx context.Context, fence Fence, p *cluster.Placement, expectModRev int64) (int64, error) {
	key := r.PlacementKey(p.Model)
	if err := checkID("model fingerprint", p.Model); err != nil {
		return 0, fmt.Errorf("registry: write placement: %w", err)
	}
	if fence.Key == "" || fence.Rev <= 0 {
		return 0, fmt.Errorf("registry: write %s: empty fence %+v: %w", key, fence, ErrNotLeader)
	}
	if err := p.Validate(); err != nil {
		return 0, fmt.Errorf("registry: write %s epoch %d: %w", key, p.Epoch, err)
	}
	val, err := json.Marshal(p)
	if err != nil {
		return 0, fmt.Errorf("registry: write %s: %w", key, err)
	}
	resp, err := r.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(fence.Key), "=", fence.Rev),
		clientv3.Compare(clientv3.ModRevision(key), "=", expectModRev),
	).Then(
		clientv3.OpPut(key, string(val)),
	).Else(
		clientv3.OpGet(fence.Key),
		clientv3.OpGet(key),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("registry: write %s epoch %d: %w", key, p.Epoch, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].CreateRevision != fence.Rev {
		seen := "absent"
		if len(kvs) > 0 {
			seen = fmt.Sprintf("created at revision %d", kvs[0].CreateRevision)
		}
		return 0, fmt.Errorf("registry: write %s epoch %d: leader key %s (revision %d) is %s: %w", key, p.Epoch, fence.Key, fence.Rev, seen, ErrNotLeader)
	}
	cur := int64(0)
	curEpoch := cluster.Epoch(0)
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		cur = kvs[0].ModRevision
		if q, err := decodePlacement(kvs[0].Key, kvs[0].Value); err == nil {
			curEpoch = q.Epoch
		}
	}
	return 0, fmt.Errorf("registry: write %s epoch %d: expected revision %d, found %d (epoch %d): %w", key, p.Epoch, expectModRev, cur, curEpoch, ErrPlacementConflict)
}

// PlacementUpdate is one observed state of a placement key.
type PlacementUpdate struct {
	Placement *cluster.Placement // nil when the key does not exist (deleted)
	Rev       int64              // ModRevision of the key (0 when absent)
}

// WatchPlacement sends a model's placement now (nil if none) and every
// later version in order, until ctx is done or the client closes; then it
// closes the channel. If the watch breaks (compaction, lost leader) it
// re-reads, skipping versions already superseded (never going backwards).
// The receiver must keep reading or cancel ctx.
func (r *Registry) WatchPlacement(ctx context.Context, fp string) <-chan PlacementUpdate {
	out := make(chan PlacementUpdate)
	key := r.PlacementKey(fp)
	go func() {
		defer close(out)
		send := func(u PlacementUpdate) bool {
			select {
			case out <- u:
				return true
			case <-ctx.Done():
				return false
			}
		}
		retry := backoff.New(50*time.Millisecond, 2*time.Second)
		last := int64(-1) // ModRevision of the last update sent
		for r.alive(ctx) {
			resp, err := r.cli.Get(ctx, key)
			if err != nil {
				retry.Wait(ctx)
				continue
			}
			u := PlacementUpdate{}
			if len(resp.Kvs) > 0 {
				p, err := decodePlacement(resp.Kvs[0].Key, resp.Kvs[0].Value)
				if err == nil {
					u = PlacementUpdate{Placement: p, Rev: resp.Kvs[0].ModRevision}
				}
			}
			retry.Reset()
			if u.Rev != last && !send(u) {
				return
			}
			last = u.Rev
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range r.cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					u := PlacementUpdate{}
					if ev.Type == clientv3.EventTypePut {
						p, err := decodePlacement(ev.Kv.Key, ev.Kv.Value)
						if err != nil {
							continue
						}
						u = PlacementUpdate{Placement: p, Rev: ev.Kv.ModRevision}
					}
					if !send(u) {
						cancel()
						return
					}
					last = u.Rev
				}
			}
			cancel()
			retry.Wait(ctx) // the watch broke: re-list shortly, never spin
		}
	}()
	return out
}

// WaitPlacement watches a model's placement until cond accepts one (nil
// cond: any placement exists) and returns it with its ModRevision. It
// fails when ctx ends first, with the last placement seen in the error.
func (r *Registry) WaitPlacement(ctx context.Context, fp string, cond func(*cluster.Placement) bool) (*cluster.Placement, int64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var last *cluster.Placement
	for u := range r.WatchPlacement(wctx, fp) {
		if u.Placement == nil {
			continue
		}
		last = u.Placement
		if cond == nil || cond(u.Placement) {
			return u.Placement, u.Rev, nil
		}
	}
	seen := "none"
	if last != nil {
		seen = fmt.Sprintf("epoch %d with workers %v", last.Epoch, last.WorkerIDs())
	}
	cause := context.Cause(ctx)
	if cause == nil {
		cause = errors.New("etcd client closed")
	}
	return nil, 0, fmt.Errorf("registry: wait for placement %s (last seen: %s): %w", r.PlacementKey(fp), seen, cause)
}

// AtLeastEpoch is a WaitPlacement condition: the epoch is at least e.
func AtLeastEpoch(e cluster.Epoch) func(*cluster.Placement) bool {
	return func(p *cluster.Placement) bool { return p.Epoch >= e }
}

// OnWorkers is a WaitPlacement condition: the placement's workers are
// exactly ids (in any order) and every expert has an owner.
func OnWorkers(ids ...cluster.WorkerID) func(*cluster.Placement) bool {
	return func(p *cluster.Placement) bool {
		if len(p.Workers) != len(ids) || p.Validate() != nil {
			return false
		}
		for _, id := range ids {
			if _, ok := p.Workers[id]; !ok {
				return false
			}
		}
		return true
	}
}
