package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/membership"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Config configures a Worker. Start from DefaultConfig and set at least
// ID and ModelDir; zero durations and the empty Cluster take the defaults
// below.
type Config struct {
	// Etcd lists the etcd client endpoints (default: the embedded etcd of a
	// local coordinator, http://127.0.0.1:2379).
	Etcd []string
	// Cluster is the etcd key prefix (default registry.DefaultCluster).
	Cluster string
	// ID names the worker in the cluster; required, no '/' or spaces.
	ID cluster.WorkerID

	// ListenAddr is where the Worker gRPC service listens (default
	// 127.0.0.1:0: loopback, a free port; Worker.Info reports the real one).
	ListenAddr string
	// AdvertiseAddr is the gRPC address peers dial, registered in etcd.
	// Empty means the listener's address, or, when it listens on an
	// unspecified host (0.0.0.0, ::), this host's name with the port.
	AdvertiseAddr string
	// GossipAddr is where memberlist binds, UDP and TCP (default
	// 127.0.0.1:0). Empty disables gossip: etcd remains the authority, the
	// cluster only loses its early failure hints.
	GossipAddr string
	// Gossip, if set, is the memberlist timing to use (its Name, Meta and
	// bind address are overwritten). Nil means membership.LocalConfig for a
	// loopback GossipAddr and membership.DefaultConfig (LAN) otherwise.
	Gossip *membership.Config

	// ModelDir is the model folder (config.json, *.safetensors) whose
	// experts the worker serves. Only its config and the owned experts are
	// read from it: a worker holds no dense weights (front ends do). Empty
	// makes a jobs-only worker: it registers with no model, is given no
	// experts, and runs the training jobs the scheduler assigns to it.
	ModelDir string
	// KeepBF16 keeps bf16 weights as bf16 in memory, widened inside the
	// kernels (DefaultConfig: true; halves the memory of a bf16 model).
	KeepBF16 bool
	// Quantize is the format the worker holds routed experts in
	// (tensor.QNone: as the checkpoint, per KeepBF16). It must be the
	// format of the cluster's model record (registry.ModelRecord.Quantize),
	// which sized the placement: a worker of another format is refused at
	// registration.
	Quantize tensor.QFormat
	// MemBytes is the memory limit of the worker (its process's, e.g. the
	// cgroup limit; workercmd's --mem). The worker registers
	// ExpertBudget(MemBytes) = MemBytes - RuntimeReserve as
	// WorkerInfo.MemBytes, the expert bytes the placement may give it, and
	// never holds more expert bytes than that: an apply that would is
	// refused (and retried). 0 means unlimited. The worker does not set the
	// Go runtime's soft limit itself (several workers may share a process);
	// a daemon does (see SoftLimit).
	MemBytes int64
	// Cores is registered as WorkerInfo.Cores (informational); 0 means
	// runtime.NumCPU().
	Cores int

	// LeaseTTL is the etcd lease TTL of the registration (default 10 s,
	// registry.DefaultTTL): a killed worker leaves the cluster within it,
	// if the leader's health probes have not evicted it first. etcd grants
	// whole seconds, at least 1.5 x its election timeout.
	LeaseTTL time.Duration
	// StatsInterval is how often per-expert token counts are written to
	// etcd when they changed (default 2 s).
	StatsInterval time.Duration
	// DrainTimeout bounds the graceful drain of in-flight requests at
	// shutdown (default 5 s); connections still open then are closed.
	DrainTimeout time.Duration

	// ConnectTimeout bounds how long Run tries to reach etcd at start
	// (default 30 s, DefaultConnectTimeout): then it fails with an error
	// naming the endpoints and the last dial error (ErrGaveUp,
	// ErrEtcdUnreachable). Ignored with Wait.
	ConnectTimeout time.Duration
	// RegisterTimeout bounds how long Run, once etcd answers, tries to
	// register for the first time (default 60 s, DefaultRegisterTimeout):
	// a cluster that serves no model by then (a wrong Cluster name, or
	// no coordinator --model nor front end registered one) fails Run
	// (ErrGaveUp, registry.ErrNoModel) saying which clusters this etcd
	// has; so does any other transient failure that lasts that long (with
	// TLS, the wait for the cluster's gossip key included). An ID held by
	// another lease is waited for up to that lease's TTL plus
	// DuplicateIDMargin instead (a killed predecessor's key expires by
	// then; a live one's does not: ErrGaveUp, registry.ErrWorkerExists).
	// Ignored with Wait. Once registered, a worker that loses its lease
	// registers again until ctx ends, unbounded.
	RegisterTimeout time.Duration
	// Wait makes Run retry all of the above until ctx ends (for
	// deployments that start workers before etcd or before the coordinator
	// registers the model).
	Wait bool

	// NoJobs disables running training jobs (the worker only serves).
	NoJobs bool
	// JobStepTimeout bounds every collective of a job's training step: a
	// rank that stops answering fails the step within it (default 60 s).
	JobStepTimeout time.Duration
	// DataRoot confines the training jobs: every path a job spec names
	// (text, tokenizer, model, output) is resolved relative to it, and one
	// that leads outside it (.., an absolute path elsewhere, a symbolic
	// link out) fails the job's rank before anything is read or written
	// (jobrunner.Config.DataRoot). Empty: the process's working directory.
	DataRoot string

	// TLS, when set, secures every connection of the worker: its gRPC
	// server (mutual TLS only; callers authorized by their certificates),
	// its etcd client (https:// endpoints), its training ranks' groups and
	// exchanges, and gossip (encrypted with the cluster's key from etcd).
	// The certificate must be worker/<ID>: a worker cannot present itself
	// as another. Nil: plaintext (the embedded default on loopback).
	TLS *auth.Credentials

	// Protocol is the wire protocol version the worker announces; 0 means
	// cluster.ProtocolVersion. Only tests set another (to be refused).
	Protocol int
	// Logger receives the worker's log lines (nil discards them).
	Logger *slog.Logger
}

// DefaultConfig returns a worker on loopback with free ports (gRPC and
// gossip), the local etcd, bf16 kept as bf16, a 10 s lease, stats every 2 s,
// 30 s to reach etcd and 60 s to register.
func DefaultConfig() Config {
	return Config{
		Etcd:          []string{"http://127.0.0.1:2379"},
		Cluster:       registry.DefaultCluster,
		ListenAddr:    "127.0.0.1:0",
		GossipAddr:    "127.0.0.1:0",
		KeepBF16:      true,
		LeaseTTL:      registry.DefaultTTL,
		StatsInterval: 2 * time.Second,
		DrainTimeout:  5 * time.Second,

		ConnectTimeout:  DefaultConnectTimeout,
		RegisterTimeout: DefaultRegisterTimeout,
	}
}

// withDefaults fills zero fields and validates, reporting every problem.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Cluster == "" {
		c.Cluster = d.Cluster
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = d.LeaseTTL
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = d.StatsInterval
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = d.DrainTimeout
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = d.ConnectTimeout
	}
	if c.RegisterTimeout == 0 {
		c.RegisterTimeout = d.RegisterTimeout
	}
	if c.Protocol == 0 {
		c.Protocol = cluster.ProtocolVersion
	}
	var errs []error
	if len(c.Etcd) == 0 {
		errs = append(errs, errors.New("no etcd endpoints"))
	}
	if c.ID == "" || strings.ContainsAny(string(c.ID), "/ \t\n") {
		errs = append(errs, fmt.Errorf("ID %q: must be non-empty without '/' or spaces", c.ID))
	}
	if _, _, err := net.SplitHostPort(c.ListenAddr); err != nil {
		errs = append(errs, fmt.Errorf("ListenAddr %q: %v", c.ListenAddr, err))
	}
	if c.GossipAddr != "" {
		if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
			errs = append(errs, fmt.Errorf("GossipAddr %q: %v", c.GossipAddr, err))
		}
	}
	if c.TLS != nil {
		if want := (auth.Identity{Role: auth.RoleWorker, Name: string(c.ID)}); c.TLS.Self != want {
			errs = append(errs, fmt.Errorf("ID %q: the TLS certificate is for %s, want %s", c.ID, c.TLS.Self, want))
		}
	}
	if c.MemBytes < 0 || c.Cores < 0 {
		errs = append(errs, fmt.Errorf("MemBytes %d, Cores %d: must not be negative", c.MemBytes, c.Cores))
	}
	if c.LeaseTTL < 0 || c.StatsInterval < 0 || c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("LeaseTTL %v, StatsInterval %v, DrainTimeout %v: must not be negative", c.LeaseTTL, c.StatsInterval, c.DrainTimeout))
	}
	if c.ConnectTimeout < 0 || c.RegisterTimeout < 0 {
		errs = append(errs, fmt.Errorf("ConnectTimeout %v, RegisterTimeout %v: must not be negative", c.ConnectTimeout, c.RegisterTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("worker: config: %w", err)
	}
	return c, nil
}
