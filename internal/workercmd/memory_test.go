package workercmd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/switchyard/switchyard/internal/coordinator"
	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
)

// The test binary doubles as the worker binary: started with
// SWITCHYARD_WORKERCMD_WORKER=1 it runs Main on its arguments.
func TestMain(m *testing.M) {
	if os.Getenv("SWITCHYARD_WORKERCMD_WORKER") == "1" {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestMemLimit(t *testing.T) {
	cg := fstest.MapFS{
		"proc/self/cgroup": {Data: []byte("4:memory:/w\n0::/\n")},
		"sys/fs/cgroup/memory/w/memory.limit_in_bytes": {Data: []byte("1677721600\n")},
	}
	for _, c := range []struct {
		flag string
		fs   fstest.MapFS
		want worker.MemLimit
	}{
		{"auto", cg, worker.MemLimit{Bytes: 1677721600, Source: "cgroup v1", File: "sys/fs/cgroup/memory/w/memory.limit_in_bytes"}},
		{"auto", fstest.MapFS{}, worker.MemLimit{Source: "none"}},
		{"0", cg, worker.MemLimit{Source: "flag"}},
		{"300MiB", cg, worker.MemLimit{Bytes: 300 << 20, Source: "flag"}},
	} {
		got, err := MemLimit(c.flag, c.fs)
		if err != nil || got != c.want {
			t.Errorf("MemLimit(%q) = %+v, %v; want %+v", c.flag, got, err, c.want)
		}
	}
	if _, err := MemLimit("plenty", cg); err == nil {
		t.Error(`MemLimit("plenty") accepted`)
	}
}

// proc is a worker process started by the test.
type proc struct {
	cmd   *exec.Cmd
	ready map[string]string // fields of the ready line
	mu    sync.Mutex
	log   strings.Builder // stderr
	exit  chan error
}

func (p *proc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// rss reads the process's resident set (VmRSS) in bytes.
func (p *proc) rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", p.cmd.Process.Pid)
	return 0
}

// startWorker runs the worker command as a child process (in cgroup dir
// when not empty) and waits for its ready line.
func startWorker(t *testing.T, ctx context.Context, cgroupDir string, args ...string) *proc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if cgroupDir != "" {
		// The shell joins the cgroup, then becomes the worker: the worker
		// starts inside it and reads its limit.
		cmd = exec.Command("/bin/sh", append([]string{"-c", `echo $$ > "$CG/cgroup.procs" && exec "$0" "$@"`, self}, args...)...)
		cmd.Env = append(os.Environ(), "CG="+cgroupDir)
	} else {
		cmd = exec.Command(self, args...)
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "SWITCHYARD_WORKERCMD_WORKER=1", "GOMEMLIMIT=")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errp, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exit: make(chan error, 1)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(errp)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		wg.Wait()
		p.exit <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exit:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-p.exit
		}
	})
	select {
	case l := <-lines:
		rest, ok := strings.CutPrefix(l, "worker: ")
		if !ok {
			t.Fatalf("first stdout line %q", l)
		}
		p.ready = map[string]string{}
		for _, kv := range strings.Fields(rest) {
			k, v, _ := strings.Cut(kv, "=")
			p.ready[k] = v
		}
		return p
	case err := <-p.exit:
		p.exit <- err
		t.Fatalf("worker %v exited before ready: %v\n%s", args, err, p.stderr())
	case <-ctx.Done():
		t.Fatalf("worker %v not ready\n%s", args, p.stderr())
	}
	return nil
}

// memCgroup makes a cgroup v1 memory cgroup with the given limit, removed
// when the test ends; "" when this machine does not let the test do that
// (not root, no writable cgroup v1 memory hierarchy).
func memCgroup(t *testing.T, limit int64) string {
	root := "/sys/fs/cgroup/memory"
	if os.Geteuid() != 0 {
		return ""
	}
	if _, err := os.Stat(filepath.Join(root, "memory.limit_in_bytes")); err != nil {
		return ""
	}
	// Under our own memory cgroup (a child's limit binds wherever that is).
	parent := root
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.SplitN(l, ":", 3); len(f) == 3 && slices.Contains(strings.Split(f[1], ","), "memory") {
				parent = filepath.Join(root, f[2])
			}
		}
	}
	dir := filepath.Join(parent, fmt.Sprintf("switchyard-workercmd-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Logf("no cgroup: %v", err)
		return ""
	}
	t.Cleanup(func() {
		// Runs after the worker's cleanup (registered later, run earlier):
		// the cgroup is empty by then.
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Logf("no cgroup limit: %v", err)
		return ""
	}
	return dir
}

// TestWorkerProcessMemory runs two worker processes on a model with 144 MiB
// of routed experts (48 x 3 MiB, float32) and measures what they hold:
//
//   - "empty" (--mem 1: room for no expert) holds none; its RSS is the
//     runtime's own overhead and must stay under worker.RuntimeReserve;
//   - "full" runs with --mem auto inside a 256 MiB cgroup v1 memory cgroup
//     when the test may make one (root), --mem 256MiB otherwise. It must
//     report mem=268435456, register 256 MiB - RuntimeReserve for experts,
//     get all 48 experts, and settle at an RSS of at most the expert bytes
//     it holds + RuntimeReserve: no dense weights, no load garbage kept.
func TestWorkerProcessMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes on a 144 MiB model (seconds)")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/<pid>/status")
	}
	if raceEnabled {
		t.Skip("RSS is meaningless under the race detector")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	dir := t.TempDir()
	hf := map[string]any{
		"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 512, "intermediate_size": 256,
		"moe_intermediate_size": 512, "shared_expert_intermediate_size": 256,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": 24, "num_experts_per_tok": 2, "norm_topk_prob": false,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
	if _, err := model.Synthesize(dir, hf, model.SynthOptions{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	etcd := etcdtest.Start(t)
	reg, err := registry.New(etcd.Client(t), "memtest")
	if err != nil {
		t.Fatal(err)
	}
	rec, err := registry.ModelRecordFromDir(dir, 4)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.PutModel(ctx, rec); err != nil {
		t.Fatal(err)
	}
	nExperts := int64(len(rec.MoELayers) * rec.Experts)
	all := nExperts * rec.ExpertBytes
	if all != 144<<20 {
		t.Fatalf("model has %d bytes of experts, want 144 MiB", all)
	}
	co, err := coordinator.New(coordinator.Config{Registry: reg, Name: "c", SessionTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(context.Background())
	cdone := make(chan error, 1)
	go func() { cdone <- co.Run(cctx) }()
	t.Cleanup(func() { stop(); <-cdone })

	common := []string{"--model", dir, "--etcd", strings.Join(etcd.Endpoints, ","), "--cluster", "memtest",
		"--lease-ttl", "1s", "--stats-interval", "100ms", "--no-jobs", "--log-level", "info"}
	const limit = 256 << 20
	empty := startWorker(t, ctx, "", append([]string{"--id", "empty", "--mem", "1"}, common...)...)
	cg, mem := memCgroup(t, limit), "256MiB"
	if cg != "" {
		mem = "auto"
	}
	full := startWorker(t, ctx, cg, append([]string{"--id", "full", "--mem", mem}, common...)...)
	if got := full.ready["mem"]; got != strconv.Itoa(limit) {
		t.Fatalf("full: ready line mem=%s, want %d (%v)", got, limit, full.ready)
	}
	if empty.ready["mem"] != "1" {
		t.Fatalf("empty: ready line %v", empty.ready)
	}
	wantSource := `source=flag`
	if cg != "" {
		wantSource = `source="cgroup v1"`
	}
	if !strings.Contains(full.stderr(), wantSource) {
		t.Fatalf("full: stderr does not log %s:\n%s", wantSource, full.stderr())
	}

	set, err := reg.WaitWorkers(ctx, func(s registry.WorkerSet) bool { return len(s.Workers) == 2 })
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range set.Workers {
		want := map[cluster.WorkerID]int64{"empty": 1, "full": limit - worker.RuntimeReserve}[w.ID]
		if w.MemBytes != want {
			t.Fatalf("%s registered MemBytes %d, want %d", w.ID, w.MemBytes, want)
		}
	}
	p, _, err := reg.WaitPlacement(ctx, rec.Fingerprint, func(p *cluster.Placement) bool {
		return registry.OnWorkers("empty", "full")(p) && placement.Counts(p)["full"] == int(nExperts)
	})
	if err != nil {
		t.Fatal(err)
	}
	// Wait until "full" reports the epoch applied (loaded, dropped, memory
	// returned to the OS).
	for applied := false; !applied; {
		st, err := reg.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			applied = applied || (s.Worker == "full" && s.Epoch >= p.Epoch)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("full has not applied epoch %d:\n%s", p.Epoch, full.stderr())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if c := placement.Counts(p)["empty"]; c != 0 {
		t.Fatalf("the worker with no room holds %d experts", c)
	}

	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	idle, rss := empty.rss(t), full.rss(t)
	t.Logf("empty (no experts): RSS %s (reserve %s); full: %d experts, %s held, RSS %s = held + %s (cgroup: %v)",
		mib(idle), mib(worker.RuntimeReserve), nExperts, mib(all), mib(rss), mib(rss-all), cg != "")
	if idle > worker.RuntimeReserve {
		t.Errorf("an idle worker's RSS %s exceeds the runtime reserve %s", mib(idle), mib(worker.RuntimeReserve))
	}
	if rss > all+worker.RuntimeReserve {
		t.Errorf("full: RSS %s exceeds its experts %s + the runtime reserve %s", mib(rss), mib(all), mib(worker.RuntimeReserve))
	}
	if rss < all {
		t.Errorf("full: RSS %s below the %s of experts it holds: measuring the wrong process?", mib(rss), mib(all))
	}
	if t.Failed() {
		t.Logf("full's log:\n%s", full.stderr())
	}
}
