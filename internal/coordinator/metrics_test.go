package coordinator

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

func placementOf(epoch cluster.Epoch, owners ...[]cluster.WorkerID) *cluster.Placement {
	return &cluster.Placement{Model: "m", Epoch: epoch, Owners: [][][]cluster.WorkerID{owners}}
}

func TestChangeReason(t *testing.T) {
	w := func(ids ...cluster.WorkerID) []cluster.WorkerID { return ids }
	a := placementOf(1, w("w1", "w2"), w("w2", "w3"))
	for _, c := range []struct {
		prev, next   *cluster.Placement
		transitional bool
		want         string
	}{
		{nil, a, false, "initial"},
		{a, placementOf(2, w("w1", "w2"), w("w2", "w1")), false, "worker_left"},
		{a, placementOf(2, w("w1", "w4"), w("w2", "w3")), false, "worker_joined"},
		{a, placementOf(2, w("w4", "w1", "w2"), w("w2", "w3")), true, "migration"},
		{placementOf(2, w("w4", "w1", "w2"), w("w2", "w3")), placementOf(3, w("w4", "w1"), w("w2", "w3")), false, "migration_done"},
		{a, placementOf(2, w("w2", "w1"), w("w3", "w2")), false, "rebalance"},
	} {
		if got := changeReason(c.prev, c.next, c.transitional); got != c.want {
			t.Errorf("%v -> %v (transitional %v): %s, want %s", c.prev, c.next, c.transitional, got, c.want)
		}
	}
}

// TestRecoveryClock: a lost worker's clock ends only when a final
// placement without it, with R copies of every expert, is applied by all
// its owners.
func TestRecoveryClock(t *testing.T) {
	m := newMetrics(&Coordinator{changed: make(chan struct{})})
	m.awaitLoads = true
	t0 := time.Unix(100, 0)
	info := func(ids ...cluster.WorkerID) []cluster.WorkerInfo {
		var out []cluster.WorkerInfo
		for _, id := range ids {
			out = append(out, cluster.WorkerInfo{ID: id})
		}
		return out
	}
	w := func(ids ...cluster.WorkerID) []cluster.WorkerID { return ids }
	m.workers(info("w1", "w2", "w3"), t0)
	m.wrote(placementOf(1, w("w1", "w2"), w("w2", "w3")), false, 2, t0)
	m.workers(info("w1", "w2"), t0.Add(time.Second)) // w3 gone
	if n := testutil.ToFloat64(m.losses); n != 1 {
		t.Fatalf("losses %g, want 1", n)
	}
	// Still naming w3: no recovery.
	m.wrote(placementOf(2, w("w1", "w2"), w("w2", "w3")), false, 2, t0.Add(2*time.Second))
	// One copy short of R = 2: none either.
	m.wrote(placementOf(3, w("w1", "w2"), w("w2")), false, 2, t0.Add(3*time.Second))
	m.wrote(placementOf(4, w("w1", "w2"), w("w2", "w1")), false, 2, t0.Add(4*time.Second))
	stats := func(e1, e2 cluster.Epoch) []registry.WorkerStats {
		return []registry.WorkerStats{{Worker: "w1", Model: "m", Epoch: e1}, {Worker: "w2", Model: "m", Epoch: e2}}
	}
	m.applied(stats(4, 3), t0.Add(5*time.Second)) // w2 not loaded yet
	if histCount(t, m) != 0 {
		t.Fatalf("recovery observed before every owner applied the placement")
	}
	m.applied(stats(4, 4), t0.Add(6*time.Second))
	if c := histCount(t, m); c != 1 {
		t.Fatalf("recoveries %d, want 1", c)
	}
	if got := testutil.ToFloat64(m.changes.WithLabelValues("m", "worker_left")); got != 1 {
		t.Errorf("worker_left changes %g, want 1 (epoch 2 named w3 still: rebalance)", got)
	}
}

func histCount(t *testing.T, m *metrics) uint64 {
	t.Helper()
	var d dto.Metric
	if err := m.recovery.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.Histogram.GetSampleCount()
}
