package localcluster

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
)

// TestStoppedWorkerIsEvicted: a worker process stopped with SIGSTOP keeps
// its TCP connections but answers nothing; with a 30 s lease TTL, etcd
// would show it gone only after that. The leader's health probes revoke
// its lease instead (coordinator.DefaultEvictAfter, 1.5 s), and once
// SIGCONT resumes it the worker registers again under a new lease.
func TestStoppedWorkerIsEvicted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Setenv("TMPDIR", t.TempDir())
	const ttl = 30 * time.Second
	lc, err := Start(ctx, Options{Command: []string{os.Args[0]}, Env: []string{workerEnv + "=1"}, Workers: 3, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	lease := func(id cluster.WorkerID) int64 { return leaseOf(t, ctx, lc, id) }
	waitFor := func(what string, cond func() bool) { t.Helper(); waitUntil(t, ctx, what, cond) }
	const id = cluster.WorkerID("w2")
	var first int64
	waitFor("w2 registered", func() bool { first = lease(id); return first != 0 })
	p := lc.Proc(id)
	stopped := time.Now()
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer p.Signal(syscall.SIGCONT)
	waitFor("w2's lease revoked", func() bool { return lease(id) != first })
	took := time.Since(stopped)
	t.Logf("stopped worker's lease gone %v after SIGSTOP (its TTL %v)", took.Round(time.Millisecond), ttl)
	if took >= ttl {
		t.Fatalf("lease gone only after %v: it ran out, nobody evicted it", took)
	}
	// The prober counts an eviction once Revoke has returned, which can be
	// after the watch above saw the lease go: wait for the count (a
	// revocation by anyone else would leave it at 0 and fail here).
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	waitUntil(t, cctx, "the coordinator counts the eviction", func() bool { return lc.Coordinator.Counters().Evictions >= 1 })
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor("w2 registered again under a new lease", func() bool { l := lease(id); return l != 0 && l != first })
	if lc.Proc(id) != p {
		t.Errorf("w2 was restarted; want the same process to register again")
	}
}
