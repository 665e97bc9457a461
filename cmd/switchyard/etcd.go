package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/embedetcd"
)

// etcdCmd is `switchyard etcd`: an etcd member (the embedded server) in a
// process of its own, so that the control plane outlives any coordinator:
// scripts/local-cluster.sh --coordinators K runs one, or three with
// --etcd-members 3, beside K coordinators that use it with --etcd.
func etcdCmd() *cobra.Command {
	cfg := embedetcd.DefaultConfig()
	cfg.Name = "etcd"
	var tlsCert, tlsKey, tlsCA string
	cmd := &cobra.Command{
		Use:   "etcd [--name N --listen-client-urls URL --listen-peer-urls URL --initial-cluster N1=PEER1,...]",
		Short: "Run one etcd member (the embedded server) for coordinators and workers to share",
		Long: `etcd runs an etcd member: a single-node cluster, or one member of
--initial-cluster (start every member with the same list; peer ports fixed).
It prints one line "etcd: ready name=N client=URL" once it serves, and runs
until SIGINT or SIGTERM. Coordinators (coordinator --etcd URLS), workers and
clients then share it, so a coordinator's death does not take the cluster's
state with it. With --data-dir empty the data is temporary (removed on exit,
reclaimed by the next start after a crash).`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA = tlsCert, tlsKey, tlsCA
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			srv, err := embedetcd.Start(ctx, cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "etcd: ready name=%s client=%s dir=%s\n", cfg.Name, strings.Join(srv.Endpoints(), ","), srv.Dir())
			select {
			case <-ctx.Done():
			case err := <-srv.Err():
				return fmt.Errorf("etcd: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "member name (as in --initial-cluster)")
	f.StringVar(&cfg.Dir, "data-dir", "", "data directory (empty: temporary)")
	f.StringVar(&cfg.ClientURL, "listen-client-urls", cfg.ClientURL, "client URL (port 0: a free port, printed)")
	f.StringVar(&cfg.PeerURL, "listen-peer-urls", cfg.PeerURL, "raft peer URL")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", "", "members of a multi-member cluster: NAME=PEER_URL,... (empty: single node)")
	f.StringVar(&cfg.ClusterState, "initial-cluster-state", "new", `"new" to form --initial-cluster, "existing" to join a running one`)
	f.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, `etcd's own log on stderr: "debug", "info", "warn" or "error"`)
	f.StringVar(&tlsCert, "tls-cert", "", "serve clients and peers over TLS with this certificate (https:// URLs)")
	f.StringVar(&tlsKey, "tls-key", "", "the key of --tls-cert")
	f.StringVar(&tlsCA, "tls-ca", "", "require client and peer certificates signed by this CA")
	return cmd
}
