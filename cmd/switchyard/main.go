// Command switchyard is the user CLI of Switchyard (like etcdctl next to
// etcd): verify a model against a transformers reference, generate text,
// and (as the cluster grows) run and inspect jobs. It only turns flags into
// configuration and calls the packages that do the work.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries an exit status without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	root := &cobra.Command{
		Use:           "switchyard",
		Short:         "Distributed mixture-of-experts training and serving",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(verifyCmd(), generateCmd())
	if err := root.Execute(); err != nil {
		if e, ok := err.(exitError); ok {
			os.Exit(e.code)
		}
		fmt.Fprintln(os.Stderr, "switchyard:", err)
		os.Exit(1)
	}
}
