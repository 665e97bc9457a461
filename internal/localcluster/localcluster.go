// Package localcluster runs a whole Switchyard cluster on this machine, for
// `switchyard verify --workers N` and end-to-end tests: an embedded etcd
// and a coordinator inside the calling process, and worker processes
// started from any binary that runs the worker command (e.g.
// `switchyard worker`, or a test binary that dispatches to it), each on
// loopback with free ports, in a process group of its own.
//
// No orphans: Close stops every worker (SIGTERM to its process group, then
// SIGKILL after a grace period), and on Linux each worker also gets
// SIGKILL if the launching process dies first (PR_SET_PDEATHSIG).
package localcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/coordinator"
	"github.com/switchyard/switchyard/internal/embedetcd"
	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/membership"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/transport"
)

// Options configures a local cluster.
type Options struct {
	// ModelDir is the model folder the coordinator registers and the
	// workers serve; a Switchyard checkpoint's checksums are verified
	// first (train.VerifyCheckpoint). Empty starts jobs-only workers (no
	// model: they run training jobs only) and registers no model.
	ModelDir string
	// Command is the argv prefix that runs the worker command, e.g.
	// {"/path/to/switchyard", "worker"} (required).
	Command []string
	// Env is added to the workers' environment. Unless it or this
	// process's environment sets tensor.SpinEnv, a cluster of 2 or more
	// workers gives them SWITCHYARD_SPIN=0 (SharedHostEnv): they share
	// this machine's cores, and a kernel thread polling for work would
	// take CPU time from another worker's GEMM.
	Env []string
	// Workers is the number of worker processes Start launches (w1..wN);
	// more can be added with StartWorker.
	Workers int
	// WorkerArgs are extra flags for every worker.
	WorkerArgs []string
	// DataRoot is every worker's --data-root: the paths of the training
	// jobs they run are resolved relative to it and must lie inside it
	// (jobrunner.Config.DataRoot). Callers that know what their jobs name
	// set it to the narrowest folder holding those paths
	// (dataroot.Cover), as `train --workers N` and quickstart do. Empty
	// means DefaultDataRoot.
	DataRoot string
	// Cluster is the etcd key prefix (default "local").
	Cluster string
	// LeaseTTL is the workers' lease TTL (default 5 s).
	LeaseTTL time.Duration
	// StatsInterval is how often workers write token counts (default 2 s).
	StatsInterval time.Duration
	// Replicas is the coordinator's R (default 1).
	Replicas int
	// ExpectWorkers is how many workers the coordinator waits for before
	// it first places the model (or until its placement grace passes), so
	// the first worker to register is not given every expert (0: place at
	// once).
	ExpectWorkers int
	// WidenBF16 makes workers widen bf16 weights to float32 (by default
	// they keep bf16); it also sets the element size in the model record,
	// so memory budgets are computed right.
	WidenBF16 bool
	// Quantize makes workers hold routed experts in this format (and the
	// model record say so, sizing the placement for it).
	Quantize tensor.QFormat
	// WorkerMemCap, when > 0, is a hard memory limit in bytes for each
	// worker process: every worker starts inside a memory cgroup of its
	// own with that limit (cgroup v1 or v2, a child of this process's
	// cgroup where possible; see memcap_linux.go) and reads the limit
	// itself (--mem auto), so the kernel OOM-kills a worker that goes over
	// it. Proc.MemUsage reads the cgroup's peak and OOM kills; Close
	// removes the cgroups. If no cgroup can be made (not root, no memory
	// controller), the cap is passed as --mem instead, which the worker
	// keeps its experts under but the kernel does not enforce; the
	// Logger and Logs say so, and so does MemCapMode.
	WorkerMemCap int64
	// Logs, if set, receives every worker's stderr, each line prefixed with
	// the worker ID. Each Proc keeps its own log too.
	Logs io.Writer
	// Logger receives the coordinator's log (nil discards it), and the
	// supervisor's restarts (Restart).
	Logger *slog.Logger
	// Restart makes the cluster supervise its worker processes: a worker
	// that exits unexpectedly (for any reason other than Proc.Stop or
	// Cluster.Close: a crash, an OOM kill, a SIGKILL, Proc.Kill) is
	// started again with the same ID and arguments, as a new Proc (see
	// Cluster.Proc; its new gRPC port and etcd lease are its own), after
	// a backoff of RestartBackoffMin doubling with every restart up to
	// RestartBackoffMax; the backoff falls back to RestartBackoffMin once
	// a process stayed up RestartResetAfter. A process is supervised once
	// it printed its ready line (a worker that cannot start at all fails
	// StartWorker instead) or if it is itself a restart. Each restart is
	// logged (Logger) with the exit cause; Cluster.Restarts counts them.
	Restart bool
}

// The supervisor's backoff (Options.Restart).
const (
	// RestartBackoffMin is the wait before the first restart of a worker.
	RestartBackoffMin = 200 * time.Millisecond
	// RestartBackoffMax caps the wait, which doubles with each restart.
	RestartBackoffMax = 5 * time.Second
	// RestartResetAfter is how long a worker must stay up for its next
	// restart to wait only RestartBackoffMin again.
	RestartResetAfter = 30 * time.Second
)

// DefaultDataRoot is the workers' data root when Options.DataRoot is
// empty: the whole filesystem, as before workers had data roots. It keeps
// callers whose jobs name both temporary and source folders (`verify
// --workers`, the end-to-end tests) working; the workers are this user's
// processes on this machine, taking jobs from this process's own etcd on
// loopback, so they reach no file this user could not.
const DefaultDataRoot = "/"

// Cluster is a running local cluster.
type Cluster struct {
	opts Options

	Etcd        *embedetcd.Server
	Endpoints   []string
	Client      *clientv3.Client
	Registry    *registry.Registry
	Model       registry.ModelRecord
	Coordinator *coordinator.Coordinator
	// Pool is a client connection pool for the model (Health and Stats
	// calls, WaitServing).
	Pool *transport.Pool

	gossip     *membership.Node
	probes     io.Closer // the coordinator's health-probe connections
	stopCoord  context.CancelFunc
	coordDone  chan error
	closeOnce  sync.Once
	mu         sync.Mutex
	procs      []*Proc
	nextWorker int
	cgParent   cgroupParent
	capMode    string // see MemCapMode
	cgStarts   map[cluster.WorkerID]int
	closed     bool          // Close began: start no more workers (under mu)
	done       chan struct{} // closed when Close begins
	restarts   map[cluster.WorkerID]int
	backoff    map[cluster.WorkerID]time.Duration // the next restart's wait
	supervisor sync.WaitGroup                     // pending restarts
}

// Start launches etcd, the coordinator (registering the model) and
// opts.Workers workers, and waits until each worker printed its ready
// line. It does not wait for the placement: see WaitServing. On error
// everything started is stopped again.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if len(opts.Command) == 0 {
		return nil, errors.New("localcluster: Command is required")
	}
	if opts.Cluster == "" {
		opts.Cluster = "local"
	}
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = registry.DefaultTTL
	}
	if opts.StatsInterval == 0 {
		opts.StatsInterval = 2 * time.Second
	}
	if opts.DataRoot == "" {
		opts.DataRoot = DefaultDataRoot
	}
	elem := 4
	if opts.ModelDir != "" {
		abs, err := filepath.Abs(opts.ModelDir)
		if err != nil {
			return nil, err
		}
		opts.ModelDir = abs
		// A Switchyard checkpoint's files must match its checksums before
		// the workers serve it.
		if err := train.VerifyCheckpoint(opts.ModelDir); err != nil {
			return nil, err
		}
		ck, err := model.Open(opts.ModelDir)
		if err != nil {
			return nil, err
		}
		elem = ElemBytes(ck, !opts.WidenBF16)
		ck.Close()
	}

	c := &Cluster{opts: opts, done: make(chan struct{})}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if opts.WorkerMemCap > 0 {
		c.setupMemCap()
	}
	ecfg := embedetcd.TestConfig("") // free ports, fast raft timing, temporary data
	ecfg.Name = "switchyard-local"
	if c.Etcd, err = embedetcd.Start(ctx, ecfg); err != nil {
		return nil, err
	}
	if r := c.Etcd.Reclaimed(); len(r) > 0 && opts.Logger != nil {
		opts.Logger.Info("removed embedded etcd data left by killed processes", "dirs", r)
	}
	c.Endpoints = c.Etcd.Endpoints()
	if c.Client, err = registry.Dial(ctx, c.Endpoints); err != nil {
		return nil, err
	}
	if c.Registry, err = registry.New(c.Client, opts.Cluster); err != nil {
		return nil, err
	}
	if opts.ModelDir != "" {
		if c.Model, err = registry.ModelRecordFromDir(opts.ModelDir, elem); err != nil {
			return nil, err
		}
		if opts.Quantize != tensor.QNone {
			cfg, err := model.LoadConfig(opts.ModelDir)
			if err != nil {
				return nil, err
			}
			c.Model.SetQuantize(cfg, opts.Quantize)
		}
		if err = c.Registry.PutModel(ctx, c.Model); err != nil {
			return nil, err
		}
	}
	gcfg := membership.LocalConfig("coordinator/local")
	gcfg.Meta = membership.Meta{Protocol: cluster.ProtocolVersion, Role: "coordinator"}
	if c.gossip, err = membership.Start(gcfg); err != nil {
		return nil, err
	}
	probe := coordinator.NewHealthProbe(nil)
	c.probes = probe
	if c.Coordinator, err = coordinator.New(coordinator.Config{
		Registry: c.Registry, Name: "local", SessionTTL: 2 * time.Second,
		Replicas: opts.Replicas, Gossip: c.gossip, Logger: opts.Logger, ExpectWorkers: opts.ExpectWorkers,
		Probe: probe, // a stopped or hung worker is evicted in ~2 s, not after its lease TTL
	}); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	c.stopCoord = cancel
	c.coordDone = make(chan error, 1)
	go func() { c.coordDone <- c.Coordinator.Run(cctx) }()
	// The job scheduler runs beside the placement coordinator.
	go (&jobs.Scheduler{Jobs: jobs.NewStore(c.Client, opts.Cluster), Registry: c.Registry, Log: opts.Logger}).Run(cctx)
	if opts.ModelDir != "" {
		if c.Pool, err = transport.NewPool(transport.ClientConfig{Worker: "localcluster", Model: c.Model.Fingerprint}); err != nil {
			return nil, err
		}
	}

	// Start the workers together; wait for every ready line.
	type result struct {
		p   *Proc
		err error
	}
	res := make(chan result, opts.Workers)
	for i := 0; i < opts.Workers; i++ {
		id := c.nextID()
		go func() {
			p, err := c.StartWorker(ctx, id)
			res <- result{p, err}
		}()
	}
	var errs []error
	for i := 0; i < opts.Workers; i++ {
		if r := <-res; r.err != nil {
			errs = append(errs, r.err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// ElemBytes is the element size workers hold the model's experts at: 2
// for bf16 experts kept as bf16, else 4.
func ElemBytes(ck *model.Checkpoint, keepBF16 bool) int {
	cfg := ck.Config
	for l, moe := range cfg.LayerIsMoE {
		if moe {
			dtype, _, ok := ck.Source.Info(model.ExpertTensorNames(cfg.Family, l, 0)[0])
			if ok && dtype == "BF16" && keepBF16 {
				return 2
			}
			break
		}
	}
	return 4
}

func (c *Cluster) nextID() cluster.WorkerID {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextWorker++
	return cluster.WorkerID("w" + strconv.Itoa(c.nextWorker))
}

// NextID returns a fresh worker ID (w<n>) for StartWorker.
func (c *Cluster) NextID() cluster.WorkerID { return c.nextID() }

// Proc is one worker process.
type Proc struct {
	ID     cluster.WorkerID
	GRPC   string // gRPC address from the ready line
	Gossip string // gossip address ("-" when off)
	Model  string // fingerprint from the ready line
	// Mem is the memory limit the worker found (mem= of the ready line;
	// 0: unlimited): with Options.WorkerMemCap, its cgroup's.
	Mem int64
	// Metrics is the URL of its Prometheus metrics (worker --metrics,
	// on a free loopback port), from the line it prints before the ready
	// line.
	Metrics string
	Cmd     *exec.Cmd
	// Restart is how many restarts of this worker ID came before this
	// process (0: the first start; Options.Restart).
	Restart int

	extra    []string    // StartWorker's extra flags, kept for restarts
	started  time.Time   // when the process started
	stopping atomic.Bool // Stop was called: an exit is expected
	cg       *memCgroup  // nil: no memory cgroup of its own
	log      *syncBuffer
	ready    chan struct{}
	exited   chan struct{}
	err      error // Wait's result, once exited is closed
}

// Pid is the worker's process ID.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Log returns everything the worker wrote so far (stdout and stderr).
func (p *Proc) Log() string { return p.log.String() }

// Exited is closed when the process has exited; Err then holds its status.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error (nil for status 0); valid after Exited.
func (p *Proc) Err() error { return p.err }

// Signal sends sig to the worker's process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	return syscall.Kill(-p.Cmd.Process.Pid, sig)
}

// Kill sends SIGKILL to the process group and waits for the exit.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.exited
}

// Stop sends SIGTERM (SIGCONT first, in case it was stopped), waits up to
// grace for a clean exit, then kills.
//
// The exit is expected: with Options.Restart the worker is not restarted.
func (p *Proc) Stop(grace time.Duration) {
	p.stopping.Store(true)
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	_ = p.Signal(syscall.SIGCONT)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		p.Kill()
	}
}

// errClosed is launch's error once Close began.
var errClosed = errors.New("localcluster: the cluster is closed")

// StartWorker launches worker id (extra flags override the defaults) and
// waits for its ready line. If the worker exits first, the error holds
// its exit status and log, and the Proc is returned too.
func (c *Cluster) StartWorker(ctx context.Context, id cluster.WorkerID, extra ...string) (*Proc, error) {
	p, err := c.launch(id, extra, 0)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.ready:
		return p, nil
	case <-p.exited:
		return p, fmt.Errorf("localcluster: worker %s exited before it was ready (%v):\n%s", id, p.err, tail(p.Log(), 20))
	case <-ctx.Done():
		p.stopping.Store(true) // the caller gave up on it: no restart
		p.Kill()
		return p, fmt.Errorf("localcluster: worker %s not ready: %w\n%s", id, ctx.Err(), tail(p.Log(), 20))
	}
}

// launch starts worker id's process (restart: how many restarts of id
// came before) and returns without waiting for its ready line. It fails
// with errClosed once Close began.
func (c *Cluster) launch(id cluster.WorkerID, extra []string, restart int) (*Proc, error) {
	o := c.opts
	args := append([]string{}, o.Command[1:]...)
	args = append(args,
		"--id", string(id), "--model", o.ModelDir, "--etcd", strings.Join(c.Endpoints, ","), "--cluster", o.Cluster,
		"--listen", "127.0.0.1:0", "--gossip", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
		"--lease-ttl", o.LeaseTTL.String(), "--stats-interval", o.StatsInterval.String(),
		"--keep-bf16="+strconv.FormatBool(!o.WidenBF16), "--quantize", o.Quantize.String(), "--data-root", o.DataRoot,
	)
	if o.WorkerMemCap > 0 && c.cgParent.dir == "" {
		args = append(args, "--mem", strconv.FormatInt(o.WorkerMemCap, 10))
	}
	args = append(args, o.WorkerArgs...)
	args = append(args, extra...)
	argv := append([]string{o.Command[0]}, args...)
	var cg *memCgroup
	if o.WorkerMemCap > 0 && c.cgParent.dir != "" {
		var err error
		if cg, err = newMemCgroup(c.cgParent, c.cgroupName(id), o.WorkerMemCap); err != nil {
			return nil, fmt.Errorf("localcluster: worker %s: memory cgroup: %w", id, err)
		}
	}
	var cmd *exec.Cmd
	if cg != nil {
		cmd = cg.command(argv, sysProcAttr())
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = sysProcAttr()
	}
	cmd.Env = append(append(os.Environ(), SharedHostEnv(o.Workers, o.Env)...), o.Env...)
	p := &Proc{ID: id, Cmd: cmd, Restart: restart, extra: extra, cg: cg, log: &syncBuffer{}, ready: make(chan struct{}), exited: make(chan struct{})}
	var errOut io.Writer = p.log
	if o.Logs != nil {
		errOut = io.MultiWriter(p.log, &prefixWriter{w: o.Logs, prefix: string(id) + " | "})
	}
	cmd.Stderr = errOut
	var once sync.Once
	cmd.Stdout = &lineWriter{fn: func(line string) {
		p.log.Write([]byte(line + "\n"))
		if u, ok := strings.CutPrefix(line, "worker: metrics="); ok {
			p.Metrics = u // before the ready line, so before ready closes
		}
		if f, ok := parseReady(line); ok {
			once.Do(func() {
				p.GRPC, p.Gossip, p.Model = f["grpc"], f["gossip"], f["model"]
				p.Mem, _ = strconv.ParseInt(f["mem"], 10, 64)
				close(p.ready)
			})
		}
	}}
	// Start and record the process under mu, so that Close (which sets
	// closed under mu first) stops every process ever started.
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		if cg != nil {
			_ = cg.remove()
		}
		return nil, errClosed
	}
	err := cmd.Start()
	if cg != nil {
		cg.started()
	}
	if err != nil {
		c.mu.Unlock()
		if cg != nil {
			_ = cg.remove()
		}
		return nil, fmt.Errorf("localcluster: start worker %s: %w", id, err)
	}
	p.started = time.Now()
	c.procs = append(c.procs, p)
	if o.Restart {
		c.supervisor.Add(1) // for the exit handler below
	}
	c.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
		if o.Restart {
			defer c.supervisor.Done()
			c.supervise(p)
		}
	}()
	return p, nil
}

// supervise restarts p's worker after p exited, unless the exit was
// expected (Stop, Close) or p never got ready on its first start
// (Options.Restart).
func (c *Cluster) supervise(p *Proc) {
	select {
	case <-p.ready:
	default:
		if p.Restart == 0 {
			return // StartWorker reports it
		}
	}
	if p.stopping.Load() {
		return
	}
	up := time.Since(p.started)
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		if c.backoff == nil {
			c.backoff = map[cluster.WorkerID]time.Duration{}
			c.restarts = map[cluster.WorkerID]int{}
		}
		wait, next := restartBackoff(c.backoff[p.ID], up)
		c.backoff[p.ID] = next
		n := c.restarts[p.ID] + 1
		c.mu.Unlock()
		if lg := c.opts.Logger; lg != nil {
			lg.Warn("worker exited unexpectedly; restarting it", "worker", p.ID, "pid", p.Pid(), "cause", exitCause(p.err),
				"uptime", up.Round(time.Millisecond), "restart", n, "backoff", wait, "log", tail(p.Log(), 3))
		}
		t := time.NewTimer(wait)
		select {
		case <-c.done:
			t.Stop()
			return
		case <-t.C:
		}
		np, err := c.launch(p.ID, p.extra, n)
		if errors.Is(err, errClosed) {
			return
		}
		if err == nil {
			c.mu.Lock()
			c.restarts[p.ID] = n
			c.mu.Unlock()
			if lg := c.opts.Logger; lg != nil {
				lg.Info("worker restarted", "worker", p.ID, "pid", np.Pid(), "restart", n)
			}
			return // np's own exit handler supervises it
		}
		// Not even started (e.g. the binary is gone): try again later.
		if lg := c.opts.Logger; lg != nil {
			lg.Warn("worker restart failed", "worker", p.ID, "restart", n, "err", err)
		}
		up = 0
	}
}

// restartBackoff returns the wait before a restart and the wait to keep
// for the one after, given the kept wait (0: none yet) and how long the
// process was up.
func restartBackoff(kept, up time.Duration) (wait, next time.Duration) {
	wait = kept
	if wait == 0 || up >= RestartResetAfter {
		wait = RestartBackoffMin
	}
	return wait, min(2*wait, RestartBackoffMax)
}

// exitCause describes a process's exit status: "signal: killed", "exit
// status 2", or "exit status 0" for a clean exit.
func exitCause(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// Restarts is how many times the supervisor restarted worker id
// (Options.Restart); 0 without it.
func (c *Cluster) Restarts(id cluster.WorkerID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.restarts[id]
}

// parseReady parses "worker: id=... grpc=... gossip=... model=... mem=...".
func parseReady(line string) (map[string]string, bool) {
	rest, ok := strings.CutPrefix(line, "worker: ")
	if !ok {
		return nil, false
	}
	f := map[string]string{}
	for _, kv := range strings.Fields(rest) {
		k, v, _ := strings.Cut(kv, "=")
		f[k] = v
	}
	return f, f["id"] != "" && f["grpc"] != "" && f["model"] != ""
}

// Procs lists every worker process started, in start order.
func (c *Cluster) Procs() []*Proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Proc(nil), c.procs...)
}

// Proc returns the last process started as worker id, or nil.
func (c *Cluster) Proc(id cluster.WorkerID) *Proc {
	ps := c.Procs()
	for i := len(ps) - 1; i >= 0; i-- {
		if ps[i].ID == id {
			return ps[i]
		}
	}
	return nil
}

// LiveIDs lists the IDs of the worker processes that have not exited.
func (c *Cluster) LiveIDs() []cluster.WorkerID {
	var ids []cluster.WorkerID
	for _, p := range c.Procs() {
		select {
		case <-p.exited:
		default:
			ids = append(ids, p.ID)
		}
	}
	return ids
}

// WaitServing waits until the placement covers every expert over exactly
// the live worker processes, is settled (every expert has min(R, live)
// copies: not a live migration's transitional placement) and each worker
// serves it (see worker.WaitServing).
func (c *Cluster) WaitServing(ctx context.Context) (*cluster.Placement, error) {
	live := c.LiveIDs()
	on := registry.OnWorkers(live...)
	want := max(c.opts.Replicas, 1)
	want = min(want, len(live))
	settled := func(p *cluster.Placement) bool {
		if !on(p) {
			return false
		}
		// Settled: not a live migration's transitional placement, in
		// which moving experts have extra copies.
		for _, row := range p.Owners {
			for _, ws := range row {
				if len(ws) != want {
					return false
				}
			}
		}
		return true
	}
	if c.Pool == nil {
		return nil, errors.New("localcluster: the cluster serves no model (Options.ModelDir was empty)")
	}
	return worker.WaitServing(ctx, c.Registry, c.Pool, c.Model.Fingerprint, settled)
}

// Client is a RemoteExecutor over the cluster's etcd placement.
type Client struct {
	Pool      *transport.Pool
	Placement *worker.EtcdPlacement
	Executor  *transport.RemoteExecutor
}

// NewClient returns a client for the cluster's model; cfg.Model is filled
// in. Close it before the cluster.
func (c *Cluster) NewClient(cfg transport.ClientConfig, refreshWait time.Duration) (*Client, error) {
	cfg.Model = c.Model.Fingerprint
	pool, err := transport.NewPool(cfg)
	if err != nil {
		return nil, err
	}
	src := worker.NewEtcdPlacement(c.Registry, c.Model.Fingerprint, refreshWait)
	return &Client{Pool: pool, Placement: src, Executor: transport.NewRemoteExecutor(src, pool)}, nil
}

// Close releases the client's connections and watch.
func (cl *Client) Close() {
	cl.Placement.Close()
	cl.Pool.Close()
}

// Describe is a human summary of where everything listens.
func (c *Cluster) Describe() string {
	var b strings.Builder
	fmt.Fprintf(&b, "etcd %s cluster %s model %s;", strings.Join(c.Endpoints, ","), c.opts.Cluster, c.Model.Fingerprint)
	ps := c.Procs()
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].ID < ps[j].ID })
	for _, p := range ps {
		fmt.Fprintf(&b, " %s grpc=%s gossip=%s pid=%d;", p.ID, p.GRPC, p.Gossip, p.Pid())
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Close stops the workers (SIGTERM, SIGKILL after 5 s), removes their
// memory cgroups, and stops the coordinator, the clients and etcd, in that
// order. Safe to call more than once.
func (c *Cluster) Close() error {
	var err error
	c.closeOnce.Do(func() {
		// No worker starts after this (launch checks closed under mu),
		// and pending restarts are abandoned.
		c.mu.Lock()
		c.closed = true
		close(c.done)
		c.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range c.Procs() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.Stop(5 * time.Second)
			}()
		}
		wg.Wait()
		c.supervisor.Wait()
		for _, p := range c.Procs() {
			if p.cg != nil {
				if rerr := p.cg.remove(); rerr != nil && c.opts.Logger != nil {
					c.opts.Logger.Warn("worker memory cgroup left behind", "worker", p.ID, "err", rerr)
				}
			}
		}
		if c.stopCoord != nil {
			c.stopCoord()
			err = <-c.coordDone
		}
		if c.gossip != nil {
			c.gossip.Shutdown()
		}
		if c.probes != nil {
			c.probes.Close()
		}
		if c.Pool != nil {
			c.Pool.Close()
		}
		if c.Client != nil {
			c.Client.Close()
		}
		if c.Etcd != nil {
			c.Etcd.Close()
		}
	})
	return err
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lineWriter calls fn with each complete line written to it.
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func(string)
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.fn(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
}

// prefixWriter prefixes every line with a label.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	mid    bool // inside a line
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for _, c := range b {
		if !p.mid {
			out = append(out, p.prefix...)
			p.mid = true
		}
		out = append(out, c)
		if c == '\n' {
			p.mid = false
		}
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// SharedHostEnv is the environment a launcher adds for workers that share
// one machine's cores with `workers - 1` others: SWITCHYARD_SPIN=0 (the
// kernels' pool threads park at once instead of polling for the next
// parallel call; tensor.SetSpin) when workers >= 2, unless env or this
// process's environment sets tensor.SpinEnv already. Measured on 4
// emulated hosts sharing 2 cores (scripts/bench-serve.sh): 17.0 -> 21.9
// tokens/s at batch 1, the exchange's own cost per MoE layer 2.09 ->
// 1.27 ms.
func SharedHostEnv(workers int, env []string) []string {
	if workers < 2 || SpinSet(env) {
		return nil
	}
	return []string{tensor.SpinEnv + "=0"}
}

// SpinSet reports whether env or this process's environment sets
// tensor.SpinEnv.
func SpinSet(env []string) bool {
	if _, ok := os.LookupEnv(tensor.SpinEnv); ok {
		return true
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, tensor.SpinEnv+"=") {
			return true
		}
	}
	return false
}
