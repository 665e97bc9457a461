package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/backoff"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
)

// Keys added by this file (beside the key space in the package comment):
//
//	/<cluster>/placement-status/<fingerprint>  PlacementStatus JSON, written by the leader only

// PlacementStatus is the leader's verdict on a model's placement, at
// /<cluster>/placement-status/<fingerprint>.
type PlacementStatus struct {
	Model     string        `json:"model"`
	OK        bool          `json:"ok"`                   // the stored placement is what the leader wants
	Error     string        `json:"error,omitempty"`      // why the model cannot be placed (e.g. memory shortfall)
	Awaiting  bool          `json:"awaiting,omitempty"`   // Error is only the start-up wait for the expected workers (it ends by itself)
	NeedBytes int64         `json:"need_bytes,omitempty"` // expert bytes all copies need
	HaveBytes int64         `json:"have_bytes,omitempty"` // expert budget of the live workers (-1: some worker is unlimited)
	Unplaced  []expert.ID   `json:"unplaced,omitempty"`   // experts with no live copy in the stored placement (their owners all left)
	Epoch     cluster.Epoch `json:"epoch"`                // stored placement epoch when written
	Time      time.Time     `json:"time"`
}

// SameVerdict reports whether a and b say the same thing (Time aside).
func (s PlacementStatus) SameVerdict(o PlacementStatus) bool {
	return s.Model == o.Model && s.OK == o.OK && s.Error == o.Error && s.Awaiting == o.Awaiting && s.NeedBytes == o.NeedBytes &&
		s.HaveBytes == o.HaveBytes && slices.Equal(s.Unplaced, o.Unplaced) && s.Epoch == o.Epoch
}

// PlacementStatusKey is "/<cluster>/placement-status/<fingerprint>".
func (r *Registry) PlacementStatusKey(fp string) string { return r.key("placement-status") + "/" + fp }

// PutPlacementStatus stores s as its model's placement status, only while
// fence holds (the writer leads; see WritePlacement). A lost fence returns
// ErrNotLeader (wrapped) and writes nothing.
func (r *Registry) PutPlacementStatus(ctx context.Context, fence Fence, s PlacementStatus) error {
	if err := checkID("model fingerprint", s.Model); err != nil {
		return fmt.Errorf("registry: put placement status: %w", err)
	}
	key := r.PlacementStatusKey(s.Model)
	if fence.Key == "" || fence.Rev <= 0 {
		return fmt.Errorf("registry: put %s: empty fence %+v: %w", key, fence, ErrNotLeader)
	}
	val, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("registry: put %s: %w", key, err)
	}
	resp, err := r.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.CreateRevision(fence.Key), "=", fence.Rev),
	).Then(
		clientv3.OpPut(key, string(val)),
	).Commit()
	if err != nil {
		return fmt.Errorf("registry: put %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("registry: put %s: leader key %s (revision %d) is gone or re-created: %w", key, fence.Key, fence.Rev, ErrNotLeader)
	}
	return nil
}

// PlacementStatus reads a model's placement status; nil, nil when absent.
func (r *Registry) PlacementStatus(ctx context.Context, fp string) (*PlacementStatus, error) {
	key := r.PlacementStatusKey(fp)
	resp, err := r.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("registry: get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return decodeStatus(resp.Kvs[0].Key, resp.Kvs[0].Value)
}

func decodeStatus(key, val []byte) (*PlacementStatus, error) {
	var s PlacementStatus
	if err := json.Unmarshal(val, &s); err != nil {
		return nil, fmt.Errorf("registry: decode %s: %w", key, err)
	}
	return &s, nil
}

// WatchPlacementStatus sends a model's placement status now (nil if none)
// and every later version in order (nil when deleted), until ctx is done
// or the client closes; then it closes the channel. A broken watch is
// re-listed, skipping versions already sent. Values that do not decode are
// skipped. The receiver must keep reading or cancel ctx.
func (r *Registry) WatchPlacementStatus(ctx context.Context, fp string) <-chan *PlacementStatus {
	out := make(chan *PlacementStatus)
	key := r.PlacementStatusKey(fp)
	go func() {
		defer close(out)
		send := func(s *PlacementStatus) bool {
			select {
			case out <- s:
				return true
			case <-ctx.Done():
				return false
			}
		}
		retry := backoff.New(50*time.Millisecond, 2*time.Second)
		last := int64(-1) // ModRevision of the last value sent (0: absent)
		for r.alive(ctx) {
			resp, err := r.cli.Get(ctx, key)
			if err != nil {
				retry.Wait(ctx)
				continue
			}
			retry.Reset()
			var cur *PlacementStatus
			rev := int64(0)
			if len(resp.Kvs) > 0 {
				rev = resp.Kvs[0].ModRevision
				cur, _ = decodeStatus(resp.Kvs[0].Key, resp.Kvs[0].Value)
			}
			if rev != last && (cur != nil || rev == 0) {
				if !send(cur) {
					return
				}
			}
			last = rev
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range r.cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					var s *PlacementStatus
					rev := int64(0)
					if ev.Type == clientv3.EventTypePut {
						if s, err = decodeStatus(ev.Kv.Key, ev.Kv.Value); err != nil {
							continue
						}
						rev = ev.Kv.ModRevision
					}
					if !send(s) {
						cancel()
						return
					}
					last = rev
				}
			}
			cancel()
			retry.Wait(ctx) // the watch broke: re-list shortly, never spin
		}
	}()
	return out
}

// WatchStats sends every worker's counters (as Stats reads them) now and
// after every change, until ctx is done or the client closes; then it
// closes the channel. One set is sent per etcd watch response; a broken
// watch is re-listed. Values that do not decode are skipped. The receiver
// must keep reading or cancel ctx. (The coordinator watches the epochs
// workers report having applied.)
func (r *Registry) WatchStats(ctx context.Context) <-chan []WorkerStats {
	out := make(chan []WorkerStats)
	prefix := r.StatsPrefix()
	go func() {
		defer close(out)
		send := func(m map[string]WorkerStats) bool {
			set := make([]WorkerStats, 0, len(m))
			for _, s := range m {
				set = append(set, s)
			}
			slices.SortFunc(set, func(a, b WorkerStats) int {
				switch {
				case a.Worker < b.Worker:
					return -1
				case a.Worker > b.Worker:
					return 1
				}
				return 0
			})
			select {
			case out <- set:
				return true
			case <-ctx.Done():
				return false
			}
		}
		decode := func(v []byte) (WorkerStats, bool) {
			var s WorkerStats
			return s, json.Unmarshal(v, &s) == nil
		}
		retry := backoff.New(50*time.Millisecond, 2*time.Second)
		for r.alive(ctx) {
			resp, err := r.cli.Get(ctx, prefix, clientv3.WithPrefix())
			if err != nil {
				retry.Wait(ctx)
				continue
			}
			retry.Reset()
			m := map[string]WorkerStats{}
			for _, kv := range resp.Kvs {
				if s, ok := decode(kv.Value); ok {
					m[string(kv.Key)] = s
				}
			}
			if !send(m) {
				return
			}
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range r.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					k := string(ev.Kv.Key)
					delete(m, k)
					if ev.Type == clientv3.EventTypePut {
						if s, ok := decode(ev.Kv.Value); ok {
							m[k] = s
						}
					}
				}
				if len(wr.Events) > 0 && !send(m) {
					cancel()
					return
				}
			}
			cancel()
			retry.Wait(ctx)
		}
	}()
	return out
}
