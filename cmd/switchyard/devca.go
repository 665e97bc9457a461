package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/pkg/auth"
)

// devCACmd is `switchyard dev-ca DIR` (scripts/dev-ca.sh runs it): a
// development CA and certificates for a local cluster.
func devCACmd() *cobra.Command {
	var (
		d     auth.DevCA
		hosts string
	)
	cmd := &cobra.Command{
		Use:   "dev-ca DIR",
		Short: "Make a development CA and certificates for a local cluster (scripts/dev-ca.sh)",
		Long: `dev-ca writes into DIR a certificate authority and one certificate per process
of a local cluster, each naming its identity in a URI SAN
spiffe://switchyard/<role>/<name>:

  ca.crt ca.key                    the CA (ca.key stays with whoever issues)
  coordinator.crt coordinator.key  coordinator/coordinator; also etcd's server
                                   certificate (localhost, 127.0.0.1, ::1, --hosts)
  w1.crt w1.key ... wN             worker/w1 ... worker/wN (--workers)
  fe1.crt fe1.key ... feN          frontend/fe1 ... (--frontends)
  client.crt client.key            client/admin: the CLI (status, train, wait)

Pass them as --tls-cert, --tls-key and --tls-ca. An existing CA in DIR is kept,
so running it again with more workers adds certificates the cluster trusts.
Keys are written 0600. For development only: production clusters issue
certificates from their own CA (cert-manager; see deploy/k8s/README.md).`,
		Args:         cobra.ExactArgs(1),
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, h := range strings.Split(hosts, ",") {
				if h = strings.TrimSpace(h); h != "" {
					d.Hosts = append(d.Hosts, h)
				}
			}
			if err := auth.WriteDevCA(args[0], d); err != nil {
				return fmt.Errorf("dev-ca: %w", err)
			}
			abs, _ := filepath.Abs(args[0])
			fmt.Fprintf(cmd.OutOrStdout(), "dev-ca: dir=%s workers=%d frontends=%d\n", abs, d.Workers, d.Frontends)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&d.Workers, "workers", 8, "worker certificates w1..wN")
	f.IntVar(&d.Frontends, "frontends", 2, "front-end certificates fe1..feN")
	f.StringVar(&hosts, "hosts", "", "extra host names or IPs (comma-separated) on the coordinator's and workers' certificates")
	return cmd
}
