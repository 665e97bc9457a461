package localcluster

import (
	"context"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
)

// leaseOf is the etcd lease worker id is registered under in lc, 0 if it
// is not registered.
func leaseOf(t *testing.T, ctx context.Context, lc *Cluster, id cluster.WorkerID) int64 {
	t.Helper()
	set, err := lc.Registry.Workers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range set.Workers {
		if w.ID == id {
			return int64(set.Leases[i])
		}
	}
	return 0
}

// waitUntil polls cond every 20 ms until it holds, failing the test
// (naming what) when ctx ends first.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
