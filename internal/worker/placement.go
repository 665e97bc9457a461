package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
)

// DefaultRefreshWait is how long EtcdPlacement.Refresh waits for a newer
// placement when etcd holds none newer than the caller's.
const DefaultRefreshWait = 100 * time.Millisecond

// EtcdPlacement is a transport.PlacementSource over etcd: a watch keeps
// Current up to date (in epoch order, never going back), and Refresh
// re-reads the placement key itself.
//
// Refresh is called by a RemoteExecutor after an owner answered NOT_OWNED
// or STALE_PLACEMENT. When etcd holds a newer epoch than the one the caller
// routed with, Refresh returns it at once. When it does not, the owner is
// most likely still loading the experts of the current epoch (a placement
// is in force in etcd before every worker applied it), so Refresh waits up
// to RefreshWait for a newer one before returning the current placement:
// the executor's bounded retries then space themselves out instead of
// spinning.
type EtcdPlacement struct {
	reg  *registry.Registry
	fp   string
	wait time.Duration

	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	p         *cluster.Placement
	changed   chan struct{} // closed and replaced when p changes
	refreshes int
}

var _ transport.PlacementSource = (*EtcdPlacement)(nil)

// NewEtcdPlacement starts watching model fp's placement in reg's cluster.
// refreshWait 0 means DefaultRefreshWait. Close stops the watch (before
// the etcd client is closed).
func NewEtcdPlacement(reg *registry.Registry, fp string, refreshWait time.Duration) *EtcdPlacement {
	if refreshWait <= 0 {
		refreshWait = DefaultRefreshWait
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &EtcdPlacement{reg: reg, fp: fp, wait: refreshWait, cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
	go func() {
		defer close(s.done)
		for u := range reg.WatchPlacement(ctx, fp) {
			if u.Placement != nil {
				s.offer(u.Placement)
			}
		}
	}()
	return s
}

// Close stops the watch and waits for it to end.
func (s *EtcdPlacement) Close() {
	s.cancel()
	<-s.done
}

// offer installs p when it is newer than the current placement.
func (s *EtcdPlacement) offer(p *cluster.Placement) *cluster.Placement {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil || p.Epoch > s.p.Epoch {
		s.p = p
		close(s.changed)
		s.changed = make(chan struct{})
	}
	return s.p
}

// Current implements transport.PlacementSource.
func (s *EtcdPlacement) Current() *cluster.Placement {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p
}

// Refreshes counts Refresh calls.
func (s *EtcdPlacement) Refreshes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshes
}

// Refresh implements transport.PlacementSource (see the type comment).
func (s *EtcdPlacement) Refresh(ctx context.Context) (*cluster.Placement, error) {
	s.mu.Lock()
	s.refreshes++
	before := s.p
	changed := s.changed
	s.mu.Unlock()

	p, _, err := s.reg.Placement(ctx, s.fp)
	if err != nil {
		return nil, err
	}
	if p == nil {
		if before != nil {
			return before, nil
		}
		return nil, fmt.Errorf("worker: model %s has no placement in cluster %q yet", s.fp, s.reg.Cluster())
	}
	cur := s.offer(p)
	if before == nil || cur.Epoch > before.Epoch {
		return cur, nil // news for the caller
	}
	t := time.NewTimer(s.wait)
	defer t.Stop()
	select {
	case <-changed:
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Current(), nil
}

// WaitPlacement waits until the source's placement satisfies cond, or
// ctx ends.
func (s *EtcdPlacement) WaitPlacement(ctx context.Context, cond func(*cluster.Placement) bool) (*cluster.Placement, error) {
	for {
		s.mu.Lock()
		p, ch := s.p, s.changed
		s.mu.Unlock()
		if p != nil && (cond == nil || cond(p)) {
			return p, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			seen := "none"
			if p != nil {
				seen = fmt.Sprintf("epoch %d on %v", p.Epoch, p.WorkerIDs())
			}
			return nil, fmt.Errorf("worker: wait for placement of %s (last seen %s): %w", s.fp, seen, ctx.Err())
		}
	}
}
