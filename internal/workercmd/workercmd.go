// Package workercmd is the `worker` command shared by cmd/worker (the
// daemon binary) and `switchyard worker` (the CLI's subcommand): it maps
// flags onto worker.Config and runs a worker until SIGINT or SIGTERM.
//
// Stdout carries one machine-readable line (scripts and tests parse it),
// printed once the worker serves and is registered in etcd:
//
//	worker: id=<id> grpc=<host:port> gossip=<host:port or -> model=<fingerprint>
//
// Logs go to stderr. A refusal by the cluster (another model or protocol
// version) exits with status 1 and the reason on stderr; SIGINT or SIGTERM
// leaves gracefully (lease revoked, gossip left, requests drained) and
// exits 0.
package workercmd

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/worker"
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
		etcd, id, gossip, mem, logLevel string
		cfg                             = d
	)
	cmd := &cobra.Command{
		Use:   "worker --model DIR [--etcd URLS] [--id ID]",
		Short: "Run a worker: serve the experts the placement gives it",
		Long: `worker loads the dense weights of --model, registers in etcd under a lease,
joins the workers' gossip, and serves over gRPC the routed experts the
coordinator places on it, loading and dropping experts as the placement
changes. It prints one line when ready:

  worker: id=<id> grpc=<host:port> gossip=<host:port or -> model=<fingerprint>

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
			cfg.GossipAddr = gossip
			if gossip == "off" || gossip == "-" {
				cfg.GossipAddr = ""
			}
			var err error
			if cfg.MemBytes, err = ParseBytes(mem); err != nil {
				return fmt.Errorf("--mem: %w", err)
			}
			w, err := worker.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			done := make(chan error, 1)
			go func() { done <- w.Run(ctx) }()
			select {
			case <-w.Ready():
				info := w.Info()
				g := info.GossipAddr
				if g == "" {
					g = "-"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "worker: id=%s grpc=%s gossip=%s model=%s\n", info.ID, info.Addr, g, info.Model)
				return <-done
			case err := <-done:
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&etcd, "etcd", strings.Join(d.Etcd, ","), "etcd endpoints, comma-separated (a coordinator prints its own)")
	f.StringVar(&cfg.Cluster, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix)")
	f.StringVar(&id, "id", fmt.Sprintf("%s-%d", host, os.Getpid()), "worker ID, unique in the cluster")
	f.StringVar(&cfg.ListenAddr, "listen", d.ListenAddr, "gRPC listen address (port 0 picks a free port)")
	f.StringVar(&cfg.AdvertiseAddr, "advertise", "", "gRPC address peers dial (default: the listen address)")
	f.StringVar(&gossip, "gossip", d.GossipAddr, `gossip (memberlist) bind address; "off" disables gossip`)
	f.StringVar(&cfg.ModelDir, "model", "", "model folder (config.json, *.safetensors)")
	f.BoolVar(&cfg.KeepBF16, "keep-bf16", d.KeepBF16, "keep bf16 weights as bf16 in memory")
	f.StringVar(&mem, "mem", "0", "memory for weights, dense + experts (e.g. 8GiB, 512MiB; 0: unlimited)")
	f.IntVar(&cfg.Cores, "cores", 0, "cores to announce (0: all of this machine's)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", d.LeaseTTL, "etcd lease TTL: a killed worker leaves the cluster within it")
	f.DurationVar(&cfg.StatsInterval, "stats-interval", d.StatsInterval, "how often token counts are written to etcd")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", d.DrainTimeout, "how long in-flight requests may take at shutdown")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.IntVar(&cfg.Protocol, "protocol", 0, "protocol version to announce (tests only; 0: this binary's)")
	f.BoolVar(&cfg.NoJobs, "no-jobs", false, "only serve; do not run training jobs")
	f.DurationVar(&cfg.JobStepTimeout, "job-step-timeout", 60*time.Second, "bound on every collective of a training step: a rank that stops answering fails the step within it")
	_ = f.MarkHidden("protocol")
	_ = cmd.MarkFlagRequired("model")
	return cmd
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
