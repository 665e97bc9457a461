package registry

import (
	"errors"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/expert"
)

// TestPlacementStatus: the leader publishes its verdict under its fence; a
// watcher sees absent, then each version; a deposed leader's write is
// refused.
func TestPlacementStatus(t *testing.T) {
	e := setup(t)
	fp := e.rec.Fingerprint
	if s, err := e.reg.PlacementStatus(e.ctx, fp); s != nil || err != nil {
		t.Fatalf("absent status: %+v %v", s, err)
	}
	watch := e.reg.WatchPlacementStatus(e.ctx, fp)
	if s := <-watch; s != nil {
		t.Fatalf("first watched status %+v, want nil", s)
	}

	cli := e.etcd.Client(t)
	sess, el := campaign(t, e.ctx, cli, e.reg, "a")
	fence := FenceOf(el)
	bad := PlacementStatus{Model: fp, Error: "placement: short", NeedBytes: 3 << 30, HaveBytes: 2 << 30,
		Unplaced: []expert.ID{{Layer: 1, Expert: 2}}, Epoch: 4, Time: time.Unix(100, 0).UTC()}
	if err := e.reg.PutPlacementStatus(e.ctx, fence, bad); err != nil {
		t.Fatal(err)
	}
	good := PlacementStatus{Model: fp, OK: true, Epoch: 5, Time: time.Unix(200, 0).UTC()}
	if err := e.reg.PutPlacementStatus(e.ctx, fence, good); err != nil {
		t.Fatal(err)
	}
	for _, want := range []PlacementStatus{bad, good} {
		got := <-watch
		if got == nil || !got.SameVerdict(want) || !got.Time.Equal(want.Time) {
			t.Fatalf("watched %+v, want %+v", got, want)
		}
	}
	s, err := e.reg.PlacementStatus(e.ctx, fp)
	if err != nil || s == nil || !s.SameVerdict(good) {
		t.Fatalf("read %+v %v", s, err)
	}
	if err := e.reg.PutPlacementStatus(e.ctx, Fence{Key: e.reg.LeaderPrefix() + "/bogus", Rev: 1}, bad); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("bogus fence: %v", err)
	}
	sess.Close()
	if err := e.reg.PutPlacementStatus(e.ctx, fence, bad); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("resigned leader: %v", err)
	}
	if s, _ := e.reg.PlacementStatus(e.ctx, fp); !s.SameVerdict(good) {
		t.Fatalf("refused write landed: %+v", s)
	}
}

// TestWatchStats: the applied epochs workers report are seen as they change
// and vanish with the worker's lease.
func TestWatchStats(t *testing.T) {
	e := setup(t)
	watch := e.reg.WatchStats(e.ctx)
	if set := <-watch; len(set) != 0 {
		t.Fatalf("initial stats %+v", set)
	}
	g, err := e.reg.Register(e.ctx, e.worker("w1"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.PutStats(e.ctx, WorkerStats{Model: e.rec.Fingerprint, Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	set := <-watch
	if len(set) != 1 || set[0].Worker != "w1" || set[0].Epoch != 1 {
		t.Fatalf("stats %+v", set)
	}
	if err := g.PutStats(e.ctx, WorkerStats{Model: e.rec.Fingerprint, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if set := <-watch; len(set) != 1 || set[0].Epoch != 2 {
		t.Fatalf("stats %+v", set)
	}
	g.Close()
	if set := <-watch; len(set) != 0 {
		t.Fatalf("stats after leaving %+v", set)
	}
}
