// Package authflags adds the TLS flags every daemon and client shares. It is
// a package of its own so that daemons link it without the CLI's rendering
// (plots, progress bars) in internal/cli.
package authflags

import (
	"github.com/spf13/pflag"

	"github.com/switchyard/switchyard/pkg/auth"
)

// Register adds --tls-cert, --tls-key and --tls-ca to f (the same names on
// every daemon and client), bound to files; auth.Load reads them (nil
// credentials when none is given).
func Register(f *pflag.FlagSet, files *auth.Files) {
	f.StringVar(&files.Cert, "tls-cert", "", "this process's certificate (PEM; its URI SAN spiffe://switchyard/<role>/<name> is its identity); with --tls-key and --tls-ca every connection is mutual TLS and plaintext is refused")
	f.StringVar(&files.Key, "tls-key", "", "the private key of --tls-cert (PEM)")
	f.StringVar(&files.CA, "tls-ca", "", "the cluster's CA certificate (PEM): peers must present certificates it signed")
}
