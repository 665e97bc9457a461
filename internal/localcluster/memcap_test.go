package localcluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/workercmd"
)

// The test binary doubles as the worker binary: started with
// SWITCHYARD_LOCALCLUSTER_WORKER=1 it runs the worker command.
func TestMain(m *testing.M) {
	if os.Getenv("SWITCHYARD_LOCALCLUSTER_WORKER") == "1" {
		os.Exit(workercmd.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestWorkerMemCap starts a worker under a 160 MiB cap in a memory cgroup
// of its own: the worker finds the limit itself (--mem auto; its ready
// line ends with mem=<cap>), holds its experts under it, the cgroup's
// counters are readable while it runs and after Close, and Close removes
// the cgroup.
func TestWorkerMemCap(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a worker process")
	}
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		t.Skip("memory cgroups: needs root on Linux")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const limit = 160 << 20
	dir, _ := filepath.Abs("../../testdata/golden/qwen2_moe")
	lc, err := Start(ctx, Options{
		ModelDir: dir, Command: []string{os.Args[0]}, Env: []string{"SWITCHYARD_LOCALCLUSTER_WORKER=1", "GOMEMLIMIT="},
		Workers: 1, Cluster: "memcap", WorkerMemCap: limit, WorkerArgs: []string{"--no-jobs"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	if !strings.HasPrefix(lc.MemCapMode(), "cgroup v") {
		t.Skipf("no memory cgroups here: %s", lc.MemCapMode())
	}
	p := lc.Proc("w1")
	t.Logf("cap %s; ready line mem=%d", lc.MemCapMode(), p.Mem)
	if p.Mem != limit {
		t.Fatalf("worker's ready line says mem=%d, want the cgroup's %d:\n%s", p.Mem, limit, p.Log())
	}
	if !strings.Contains(p.Log(), `source="cgroup v`) {
		t.Errorf("worker did not log its limit's source as a cgroup:\n%s", p.Log())
	}
	if _, err := lc.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	u, err := p.MemUsage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("serving: %v", u)
	if u.Limit != limit || u.Usage <= 0 || u.OOMKilled() {
		t.Errorf("cgroup reading %+v: want limit %d, some usage, no OOM kill", u, limit)
	}
	cgDir := u.Dir
	if !strings.Contains(filepath.Base(cgDir), "switchyard-memcap-") {
		t.Errorf("cgroup %s is not named after the cluster", cgDir)
	}
	if err := lc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cgDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s still there after Close (%v)", cgDir, err)
	}
	peak, err := p.MemPeak()
	if err != nil || peak < u.Usage/2 || peak > limit {
		t.Errorf("after Close: peak %d, %v; want the last reading (<= %d)", peak, err, limit)
	}
}
