package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/authflags"
	"github.com/switchyard/switchyard/internal/cli"
	"github.com/switchyard/switchyard/internal/status"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/registry"
)

// defaultEndpoint is where `switchyard status` (and `wait`) look for etcd
// by default: the embedded etcd of a local coordinator.
const defaultEndpoint = "http://127.0.0.1:2379"

// statusCmd is `switchyard status`: workers with their leases, the leader,
// each model's placement and per-expert token counts, and the training
// jobs, as text or --json (internal/status reads them, internal/cli renders).
func statusCmd() *cobra.Command {
	var (
		endpoints string
		clusterN  string
		asJSON    bool
		timeout   time.Duration
		tlsFiles  auth.Files
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a cluster's workers, leases, placement and per-expert token counts",
		Args:  cobra.NoArgs,
		// Runtime errors are not usage errors.
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			creds, err := auth.Load(tlsFiles)
			if err != nil {
				return err
			}
			reg, closeEtcd, err := openRegistry(ctx, registry.SplitEndpoints(endpoints), clusterN, creds)
			if err != nil {
				return err
			}
			defer closeEtcd()
			snap, err := status.Take(ctx, reg)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if asJSON {
				return cli.StatusJSON(cmd.OutOrStdout(), snap)
			}
			return cli.StatusText(cmd.OutOrStdout(), snap)
		},
	}
	f := cmd.Flags()
	f.StringVar(&endpoints, "etcd", defaultEndpoint, "etcd endpoints, comma-separated (a coordinator prints its own)")
	f.StringVar(&clusterN, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix)")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of text")
	authflags.Register(f, &tlsFiles)
	f.DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}

// openRegistry dials etcd at endpoints (mutual TLS with creds, when set)
// and returns the registry of cluster name and a func that closes the
// client.
func openRegistry(ctx context.Context, endpoints []string, name string, creds *auth.Credentials) (*registry.Registry, func(), error) {
	cli, err := registry.DialTLS(ctx, endpoints, creds)
	if err != nil {
		return nil, nil, err
	}
	reg, err := registry.New(cli, name)
	if err != nil {
		cli.Close()
		return nil, nil, err
	}
	return reg, func() { cli.Close() }, nil
}
