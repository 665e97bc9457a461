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
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// exitError carries an exit status without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	stop := startCPUProfile(os.Getenv("SWITCHYARD_CPUPROFILE"), os.Stderr)
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// startCPUProfile writes a Go CPU profile of the whole command to path
// (SWITCHYARD_CPUPROFILE: for looking at where a worker's or a job's
// cores go, `go tool pprof`) until the returned stop is called; with an
// empty path it does nothing. "%p" in path is replaced by the process ID,
// so that the processes of one run (a front end and its workers, given
// the same environment) write a profile each.
func startCPUProfile(path string, stderr io.Writer) (stop func()) {
	if path == "" {
		return func() {}
	}
	path = strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid()))
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintln(stderr, "switchyard: SWITCHYARD_CPUPROFILE:", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

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
