package localcluster

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
)

// workerEnv makes the test binary run the worker command (TestMain in
// memcap_test.go), so the supervisor test needs no other binary.
const workerEnv = "SWITCHYARD_LOCALCLUSTER_WORKER"

func TestRestartBackoff(t *testing.T) {
	var kept time.Duration
	var got []time.Duration
	for range 8 {
		var wait time.Duration
		wait, kept = restartBackoff(kept, time.Second)
		got = append(got, wait)
	}
	want := []time.Duration{200, 400, 800, 1600, 3200, 5000, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("waits %v, want %v ms", got, want)
		}
	}
	if wait, next := restartBackoff(kept, RestartResetAfter); wait != RestartBackoffMin || next != 2*RestartBackoffMin {
		t.Errorf("after a long run: wait %v next %v", wait, next)
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestSupervisorRestartsKilledWorker: a SIGKILLed worker comes back with
// the same ID and registers again with a new lease; a stopped one does
// not.
func TestSupervisorRestartsKilledWorker(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	// Generous: the machine may be busy (e.g. -race on 2 CPUs).
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Setenv("TMPDIR", t.TempDir()) // embedded etcd data of our own
	lc, err := Start(ctx, Options{
		Command: []string{os.Args[0]}, Env: []string{workerEnv + "=1"},
		Workers: 1, LeaseTTL: 2 * time.Second, Restart: true,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			lc.Close()
		}
		if t.Failed() {
			for _, p := range lc.Procs() {
				t.Logf("--- worker %s (pid %d, restart %d) log:\n%s", p.ID, p.Pid(), p.Restart, p.Log())
			}
		}
	}()
	const id = cluster.WorkerID("w1")
	lease := func() int64 { return leaseOf(t, ctx, lc, id) }
	waitFor := func(what string, cond func() bool) { t.Helper(); waitUntil(t, ctx, what, cond) }
	var first int64
	waitFor("w1 registered", func() bool { first = lease(); return first != 0 })
	p1 := lc.Proc(id)
	if n := lc.Restarts(id); n != 0 || p1.Restart != 0 {
		t.Fatalf("restarts %d / %d before any crash", n, p1.Restart)
	}

	if err := p1.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p1.Exited()
	var p2 *Proc
	waitFor("w1 restarted and ready", func() bool {
		p2 = lc.Proc(id)
		if p2 == p1 {
			return false
		}
		select {
		case <-p2.ready:
			return true
		default:
			return false
		}
	})
	waitFor("w1 registered with a new lease", func() bool { l := lease(); return l != 0 && l != first })
	if n := lc.Restarts(id); n != 1 || p2.Restart != 1 {
		t.Errorf("restarts %d, Proc.Restart %d; want 1", n, p2.Restart)
	}
	if p2.Pid() == p1.Pid() || !strings.Contains(p2.Log(), "worker: id=w1 ") {
		t.Errorf("new process pid %d (old %d), log:\n%s", p2.Pid(), p1.Pid(), p2.Log())
	}
	if ids := lc.LiveIDs(); len(ids) != 1 || ids[0] != id {
		t.Errorf("live %v", ids)
	}

	// An expected exit is not restarted. Close waits for the supervisor,
	// so a restart, had one been started, would show in Procs.
	p2.Stop(10 * time.Second)
	lc.Close()
	closed = true
	if n, procs := lc.Restarts(id), len(lc.Procs()); n != 1 || procs != 2 {
		t.Errorf("after Stop: %d restarts, %d processes; want 1, 2", n, procs)
	}
}
