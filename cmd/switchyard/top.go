package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/authflags"
	"github.com/switchyard/switchyard/internal/dashboard"
	"github.com/switchyard/switchyard/internal/top"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/registry"
)

// topCmd is `switchyard top`: the cluster dashboard as a refreshing
// terminal view (internal/top draws it), read from a dashboard API
// (--url) or straight from etcd.
func topCmd() *cobra.Command {
	var (
		url       string
		apiKey    string
		endpoints string
		clusterN  string
		tlsFiles  auth.Files
		cfg       top.Config
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch a cluster live in the terminal: workers, hottest experts, jobs, serving",
		Long: `Top redraws a cluster's live state in the terminal every --interval, like
top: a header (cluster, leading coordinator, time, healthy workers), the
workers (address, lease health, experts held, memory held/budget, placement
epoch, tokens/s), the hottest experts across models (L<layer>/E<expert> by
tokens/s, else by tokens, with their owners and how many are live), the
training jobs (state, attempt, step, loss, tokens/s and a sparkline of the
loss curve), the front ends' serving statistics (tokens/s, time to first
token and inter-token latency p50/p99, active and queued requests) and each
model's placement and token imbalance. It fits the terminal and follows
resizes; Ctrl-C ends it.

With --url it reads the dashboard API (GET /dashboard/api/state) of a
coordinator's --http address or of a serve address; otherwise it reads the
cluster straight from etcd (--etcd, --cluster, TLS flags). --once prints one
frame as plain text without escape codes, for scripts.`,
		Example: `  switchyard top --url http://127.0.0.1:8080
  switchyard top --etcd http://10.0.0.1:2379 --cluster prod --interval 5s
  switchyard top --url 127.0.0.1:8080 --once`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Interval <= 0 {
				return errors.New("--interval must be positive")
			}
			if cfg.Iterations < 0 {
				return errors.New("--iterations must be 0 (forever) or more")
			}
			f := cmd.Flags()
			if url != "" && (f.Changed("etcd") || f.Changed("cluster")) {
				return errors.New("--url reads a dashboard API; --etcd and --cluster read etcd: give one or the other")
			}
			if apiKey == "" {
				// The first of serve's keys, when this shell has them.
				apiKey, _, _ = strings.Cut(os.Getenv(apiKeyEnv), ",")
				apiKey = strings.TrimSpace(apiKey)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			creds, err := auth.Load(tlsFiles)
			if err != nil {
				return err
			}
			var src dashboard.Source
			if url != "" {
				client := &http.Client{Timeout: 10 * time.Second}
				if creds != nil {
					client.Transport = &http.Transport{TLSClientConfig: creds.ClientConfig(nil)}
				}
				src = top.URLSource{Base: url, Client: client, APIKey: apiKey}
			} else {
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				reg, closeEtcd, err := openRegistry(dctx, registry.SplitEndpoints(endpoints), clusterN, creds)
				cancel()
				if err != nil {
					return err
				}
				defer closeEtcd()
				col := dashboard.NewCollector(reg)
				if !cfg.Once {
					// Complete loss curves between frames; stopped
					// before etcd is closed.
					rctx, cancel := context.WithCancel(ctx)
					done := make(chan struct{})
					go func() { defer close(done); _ = col.Run(rctx) }()
					defer func() { cancel(); <-done }()
				}
				src = col
			}
			return top.Run(ctx, cmd.OutOrStdout(), src, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "", "read the dashboard API of this coordinator --http or serve address (e.g. http://127.0.0.1:8080) instead of etcd")
	f.StringVar(&apiKey, "api-key", "", "with --url: send \"Authorization: Bearer KEY\" (default: the first key of $"+apiKeyEnv+")")
	f.StringVar(&endpoints, "etcd", defaultEndpoint, "etcd endpoints, comma-separated (a coordinator prints its own)")
	f.StringVar(&clusterN, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix)")
	authflags.Register(f, &tlsFiles)
	f.DurationVar(&cfg.Interval, "interval", 2*time.Second, "time between frames")
	f.BoolVar(&cfg.Once, "once", false, "print one frame as plain text (no escape codes) and exit")
	f.IntVar(&cfg.Iterations, "iterations", 0, "exit after this many frames (0: until Ctrl-C)")
	return cmd
}
