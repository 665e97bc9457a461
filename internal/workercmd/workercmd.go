// Package workercmd is the `worker` command shared by cmd/worker (the
// daemon binary) and `switchyard worker` (the CLI's subcommand): it maps
// flags onto worker.Config and runs a worker until SIGINT or SIGTERM.
//
// Stdout carries one machine-readable line (scripts and tests parse it),
// printed once the worker serves and is registered in etcd:
//
//	worker: id=<id> grpc=<host:port> gossip=<host:port or -> model=<fingerprint, or - for a jobs-only worker> mem=<bytes or 0>
//
// mem is the process's memory limit (--mem, or its cgroup's with the
// default --mem auto; 0: unlimited). The worker registers that minus
// worker.RuntimeReserve as the expert bytes the placement may give it, and
// sets the Go runtime's soft memory limit to worker.SoftLimit of it
// (unless GOMEMLIMIT is set), so the collector works hard before the
// kernel's OOM killer would.
//
// Logs go to stderr. A refusal by the cluster (another model or protocol
// version) exits with status 1 and the reason on stderr; SIGINT or SIGTERM
// leaves gracefully (lease revoked, gossip left, requests drained) and
// exits 0.
//
// Joining the cluster is bounded unless --wait: no etcd answer within
// --connect-timeout (default 30s), no registration within
// --register-timeout (default 60s; the usual cause is a --cluster that
// serves no model, and the error lists the clusters etcd has), or an --id
// still held by another live worker after that worker's lease TTL plus
// worker.DuplicateIDMargin, each exit with status 1 and one error (see
// worker.Config.ConnectTimeout, RegisterTimeout, Wait). Deployments that
// start workers before etcd or before the coordinator registers the model
// pass --wait.
package workercmd

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/authflags"
	"github.com/switchyard/switchyard/internal/computeflag"
	"github.com/switchyard/switchyard/internal/quantflag"
	"github.com/switchyard/switchyard/internal/tracing"
	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Main runs the command as a program with args and returns its exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	cmd := Command()
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SilenceErrors = true
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(stderr, "worker:", err)
		return 1
	}
	return 0
}

// Command returns the `worker` cobra command.
func Command() *cobra.Command {
	d := worker.DefaultConfig()
	host, _ := os.Hostname()
	var (
		etcd, id, gossip, mem, logLevel, metricsAddr string
		cfg                                          = d
		tlsFiles                                     = new(auth.Files)
		traceCfg                                     tracing.Config
	)
	cmd := &cobra.Command{
		Use:   "worker [--model DIR] [--etcd URLS] [--id ID]",
		Short: "Run a worker: serve the experts the placement gives it",
		Long: `worker opens --model (its config; no weights are read yet), registers in
etcd under a lease, joins the workers' gossip, and serves over gRPC the routed
experts the coordinator places on it, loading and dropping experts as the
placement changes. It holds no dense weights: its memory is the runtime plus
its experts.

--mem is the process's memory limit: "auto" (the default) reads the cgroup's
(v1 or v2; unlimited if none), 0 means unlimited. The worker offers the
limit minus a runtime reserve of ` + fmt.Sprint(worker.RuntimeReserve>>20) + ` MiB to the placement for experts, never
holds more, and sets the Go soft memory limit ` + fmt.Sprint(worker.SoftLimitMargin>>20) + ` MiB below the limit (unless
GOMEMLIMIT is set). It prints one line when ready:

  worker: id=<id> grpc=<host:port> gossip=<host:port or -> model=<fingerprint, or - for a jobs-only worker> mem=<bytes or 0>

Joining is bounded: the worker exits with status 1 and one error when no
etcd endpoint answers within --connect-timeout (default ` + worker.DefaultConnectTimeout.String() + `), when
its --cluster serves no model within --register-timeout (default ` + worker.DefaultRegisterTimeout.String() + `; the
error lists the clusters this etcd has: a wrong --cluster shows), or when
its --id stays held by another live worker for longer than that worker's
lease TTL + ` + worker.DuplicateIDMargin.String() + ` (a killed predecessor's lease expires within its TTL, so a
restarted worker under the same ID still registers). With --wait it keeps
retrying instead, for deployments that start workers before etcd or before
the coordinator registers the model. While retrying it logs each new
failure at once and then one line every ` + worker.RetryLogInterval.String() + ` with the time elapsed. A
worker of another model, protocol or quantization is refused at once.

SIGINT or SIGTERM leaves the cluster gracefully.`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			cfg.Etcd = registry.SplitEndpoints(etcd)
			cfg.ID = cluster.WorkerID(id)
			creds, err := auth.Load(*tlsFiles)
			if err != nil {
				return err
			}
			if creds != nil {
				// The certificate names the worker: --id defaults to it and
				// may not differ from it.
				if !cmd.Flags().Changed("id") {
					cfg.ID = cluster.WorkerID(creds.Self.Name)
				}
				cfg.TLS = creds
			}
			cfg.GossipAddr = gossip
			if gossip == "off" || gossip == "-" {
				cfg.GossipAddr = ""
			}
			lim, err := MemLimit(mem, os.DirFS("/"))
			if err != nil {
				return fmt.Errorf("--mem %s: %w", mem, err)
			}
			cfg.MemBytes = lim.Bytes
			w, err := worker.New(cfg)
			if err != nil {
				return err
			}
			setSoftLimit(cfg.Logger, lim)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			stopTracing, err := tracing.Setup(ctx, traceCfg, "switchyard-worker", string(cfg.ID))
			if err != nil {
				return err
			}
			defer func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = stopTracing(sctx) // flush the spans still buffered
			}()
			if metricsAddr != "" {
				url, closeMetrics, err := ServeMetrics(metricsAddr, w.Metrics())
				if err != nil {
					return fmt.Errorf("--metrics %s: %w", metricsAddr, err)
				}
				defer closeMetrics()
				fmt.Fprintf(cmd.OutOrStdout(), "worker: metrics=%s\n", url)
			}
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			select {
			case <-w.Ready():
				info := w.Info()
				g := info.GossipAddr
				if g == "" {
					g = "-"
				}
				m := info.Model
				if m == "" {
					m = "-" // jobs only
				}
				fmt.Fprintf(cmd.OutOrStdout(), "worker: id=%s grpc=%s gossip=%s model=%s mem=%d\n", info.ID, info.Addr, g, m, lim.Bytes)
				return <-done
			case err := <-done:
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&etcd, "etcd", strings.Join(d.Etcd, ","), "etcd endpoints, comma-separated (a coordinator prints its own)")
	f.StringVar(&cfg.Cluster, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix)")
	f.StringVar(&id, "id", fmt.Sprintf("%s-%d", host, os.Getpid()), "worker ID, unique in the cluster (with TLS: the name in the certificate, the default then)")
	f.StringVar(&cfg.ListenAddr, "listen", d.ListenAddr, "gRPC listen address (port 0 picks a free port)")
	f.StringVar(&cfg.AdvertiseAddr, "advertise", "", "gRPC address peers dial (default: the listen address)")
	f.StringVar(&gossip, "gossip", d.GossipAddr, `gossip (memberlist) bind address; "off" disables gossip`)
	f.StringVar(&cfg.ModelDir, "model", "", "model folder (config.json, *.safetensors) whose experts this worker serves; empty: a jobs-only worker (it runs training jobs, serves no model)")
	f.BoolVar(&cfg.KeepBF16, "keep-bf16", d.KeepBF16, "keep bf16 weights as bf16 in memory")
	f.Var(quantflag.Value(&cfg.Quantize), "quantize", "hold routed experts quantized: int8 or q4 (must be the model record's, as the coordinator or serve registered it)")
	computeflag.Register(f)
	f.StringVar(&mem, "mem", "auto", `the process's memory limit (e.g. 8GiB, 512MiB; "auto": the cgroup's; 0: unlimited); experts get it minus a runtime reserve`)
	f.IntVar(&cfg.Cores, "cores", 0, "cores to announce (0: all of this machine's)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", d.LeaseTTL, "etcd lease TTL: a killed worker leaves the cluster within it (the leader's health probes evict it sooner); keep it above etcd's failover time")
	f.DurationVar(&cfg.ConnectTimeout, "connect-timeout", d.ConnectTimeout, "give up (exit 1) when no etcd endpoint answers within this time at start, naming the endpoints and the last dial error")
	f.DurationVar(&cfg.RegisterTimeout, "register-timeout", d.RegisterTimeout, "give up (exit 1) when the worker cannot register within this time once etcd answers: its --cluster serves no model (the error lists the clusters this etcd has), or etcd keeps failing; an --id held by another live worker gives up after that worker's lease TTL + "+worker.DuplicateIDMargin.String())
	f.BoolVar(&cfg.Wait, "wait", false, "keep retrying forever instead of giving up after --connect-timeout, --register-timeout or a held --id (for deployments that start workers before etcd or the coordinator)")
	f.DurationVar(&cfg.StatsInterval, "stats-interval", d.StatsInterval, "how often token counts are written to etcd")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", d.DrainTimeout, "how long in-flight requests may take at shutdown")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	tracing.Register(f, &traceCfg)
	f.StringVar(&metricsAddr, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. :9100; port 0 picks one; empty: none)")
	authflags.Register(f, tlsFiles)
	f.IntVar(&cfg.Protocol, "protocol", 0, "protocol version to announce (tests only; 0: this binary's)")
	f.BoolVar(&cfg.NoJobs, "no-jobs", false, "only serve; do not run training jobs")
	f.StringVar(&cfg.DataRoot, "data-root", "", "directory that training jobs' paths are relative to and confined to (default: the current directory)")
	f.DurationVar(&cfg.JobStepTimeout, "job-step-timeout", 60*time.Second, "bound on every collective of a training step: a rank that stops answering fails the step within it")
	_ = f.MarkHidden("protocol")
	return cmd
}

// MemLimit resolves --mem: "auto" reads the memory limit of this
// process's cgroup from root (the file system root, os.DirFS("/"); see
// worker.CgroupMemLimit), anything else is a byte count (ParseBytes; 0
// means unlimited) with Source "flag".
func MemLimit(flag string, root fs.FS) (worker.MemLimit, error) {
	if strings.TrimSpace(flag) == "auto" {
		return worker.CgroupMemLimit(root)
	}
	n, err := ParseBytes(flag)
	if err != nil {
		return worker.MemLimit{}, err
	}
	return worker.MemLimit{Bytes: n, Source: "flag"}, nil
}

// setSoftLimit logs the memory limit and its source and, when there is a
// limit and GOMEMLIMIT does not set one already, makes worker.SoftLimit of
// it the Go runtime's soft memory limit (process-wide: one worker per
// process here).
func setSoftLimit(lg *slog.Logger, lim worker.MemLimit) {
	args := []any{"limit", lim.Bytes, "source", lim.Source, "expert_budget", worker.ExpertBudget(lim.Bytes), "runtime_reserve", worker.RuntimeReserve}
	if lim.File != "" {
		args = append(args, "file", "/"+lim.File)
	}
	switch {
	case lim.Bytes == 0:
		lg.Info("memory: unlimited", args...)
	case os.Getenv("GOMEMLIMIT") != "":
		lg.Info("memory limit (GOMEMLIMIT sets the Go soft limit)", append(args, "gomemlimit", os.Getenv("GOMEMLIMIT"))...)
	default:
		soft := worker.SoftLimit(lim.Bytes)
		debug.SetMemoryLimit(soft)
		lg.Info("memory limit", append(args, "go_soft_limit", soft)...)
	}
}

// ParseBytes reads a byte count: a plain integer or one with a unit (B,
// KB/MB/GB/TB powers of 1000, KiB/MiB/GiB/TiB powers of 1024).
func ParseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1},
	}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a byte count (e.g. 8GiB)", s)
	}
	return int64(v * float64(mult)), nil
}
