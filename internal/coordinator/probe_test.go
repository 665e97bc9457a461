package coordinator

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// TestProbeEvictsASilentWorker: the leader revokes the lease of a worker
// that answers no health probe for EvictAfter while the others answer (its
// lease's own 30 s TTL is far off), keeps the others, and evicts nobody
// when no worker answers at all (the coordinator may be the one cut off).
// The probe is the fault injection point here; TestStoppedWorkerIsEvicted
// (internal/localcluster) SIGSTOPs a real worker process.
func TestProbeEvictsASilentWorker(t *testing.T) {
	h := newHarness(t)
	var mu sync.Mutex
	silent := map[cluster.WorkerID]bool{}
	probe := probeFunc(func(ctx context.Context, w cluster.WorkerInfo) error {
		mu.Lock()
		s := silent[w.ID]
		mu.Unlock()
		if s {
			<-ctx.Done() // a stopped process: the connection stays, no answer
			return ctx.Err()
		}
		return nil
	})
	setSilent := func(ids ...cluster.WorkerID) {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			silent[id] = true
		}
	}
	leases := map[cluster.WorkerID]int64{}
	for _, id := range []cluster.WorkerID{"w1", "w2", "w3"} {
		cli := h.etcd.Client(t)
		g, err := h.registry(cli).Register(h.ctx, cluster.WorkerInfo{ID: id, Addr: string(id) + ":7000", Protocol: cluster.ProtocolVersion, Model: h.rec.Fingerprint, MemBytes: 1 << 30}, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		leases[id] = int64(g.Lease())
	}
	const evictAfter = 300 * time.Millisecond
	c := h.startWith(Config{Name: "c", SessionTTL: time.Second, Probe: probe,
		ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, EvictAfter: evictAfter})
	if err := c.c.WaitLeading(h.ctx, true); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	setSilent("w2")
	set, err := h.reg.WaitWorkers(h.ctx, func(s registry.WorkerSet) bool { return !slices.Contains(s.IDs(), "w2") })
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("w2 evicted %v after it fell silent (EvictAfter %v)", took.Round(time.Millisecond), evictAfter)
	if took < evictAfter {
		t.Errorf("evicted after %v, before EvictAfter %v", took, evictAfter)
	}
	if !slices.Equal(set.IDs(), []cluster.WorkerID{"w1", "w3"}) {
		t.Fatalf("workers after the eviction: %v, want w1 w3", set.IDs())
	}
	for i, w := range set.Workers {
		if int64(set.Leases[i]) != leases[w.ID] {
			t.Errorf("%s's lease changed: %x, was %x", w.ID, int64(set.Leases[i]), leases[w.ID])
		}
	}
	for c.c.Counters().Evictions != 1 { // the Revoke call returns after etcd's watchers see it
		if h.ctx.Err() != nil {
			t.Fatalf("Evictions = %d, want 1", c.c.Counters().Evictions)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Nobody answers: the fault may be the coordinator's; nobody is evicted.
	setSilent("w1", "w3")
	deadline := time.Now().Add(10 * evictAfter)
	for time.Now().Before(deadline) {
		set, err := h.reg.Workers(h.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(set.Workers) != 2 {
			t.Fatalf("workers %v while none answered: a worker was evicted", set.IDs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := c.c.Counters().Evictions; n != 1 {
		t.Errorf("Evictions = %d after every worker fell silent, want still 1", n)
	}
}

// probeFunc is a Prober with nothing to forget.
type probeFunc func(ctx context.Context, w cluster.WorkerInfo) error

func (f probeFunc) Probe(ctx context.Context, w cluster.WorkerInfo) error { return f(ctx, w) }
func (probeFunc) Forget(cluster.WorkerInfo)                               {}
