package status

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/pkg/registry"
)

// DefaultEndpoint is where `switchyard status` looks for etcd by default:
// the embedded etcd of a local coordinator.
const DefaultEndpoint = "http://127.0.0.1:2379"

// StatusCmd is `switchyard status`: workers with their leases, the leader,
// each model's placement and per-expert token counts, as text or --json.
func StatusCmd() *cobra.Command {
	var (
		endpoints string
		clusterN  string
		asJSON    bool
		timeout   time.Duration
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
			cli, err := registry.Dial(ctx, registry.SplitEndpoints(endpoints))
			if err != nil {
				return err
			}
			defer cli.Close()
			reg, err := registry.New(cli, clusterN)
			if err != nil {
				return err
			}
			snap, err := Take(ctx, reg)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if asJSON {
				return snap.WriteJSON(cmd.OutOrStdout())
			}
			return snap.WriteText(cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&endpoints, "etcd", DefaultEndpoint, "etcd endpoints, comma-separated (a coordinator prints its own)")
	f.StringVar(&clusterN, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix)")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of text")
	f.DurationVar(&timeout, "timeout", 10*time.Second, "give up after this long")
	return cmd
}
