// Command switchyard is the user CLI of Switchyard (like etcdctl next to
// etcd): verify a model against a transformers reference, generate text,
// and (as the cluster grows) run and inspect jobs. It only turns flags into
// configuration and calls the packages that do the work.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries an exit status without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run executes the CLI with args and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "switchyard",
		Short:         "Distributed mixture-of-experts training and serving",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(verifyCmd(), generateCmd(), trainCmd(), workerCmd(), statusCmd(), waitCmd(), serveCmd(), quickstartCmd(), devCACmd(), etcdCmd(), exportCmd(), topCmd(), simulateCmd())
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.Execute(); err != nil {
		var e exitError
		if errors.As(err, &e) {
			return e.code
		}
		fmt.Fprintln(stderr, "switchyard:", err)
		return 1
	}
	return 0
}
