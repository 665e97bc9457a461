package localcluster

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/tensor"
)

func TestSharedHostEnv(t *testing.T) {
	t.Setenv(tensor.SpinEnv, "")
	os.Unsetenv(tensor.SpinEnv)
	for _, c := range []struct {
		workers int
		env     []string
		want    []string
	}{
		{1, nil, nil},
		{2, nil, []string{tensor.SpinEnv + "=0"}},
		{4, []string{"A=1"}, []string{tensor.SpinEnv + "=0"}},
		{4, []string{tensor.SpinEnv + "=50us"}, nil}, // the caller's choice stands
	} {
		if got := SharedHostEnv(c.workers, c.env); !slices.Equal(got, c.want) {
			t.Errorf("SharedHostEnv(%d, %q) = %q, want %q", c.workers, c.env, got, c.want)
		}
	}
	t.Setenv(tensor.SpinEnv, "300us") // set by whoever started us
	if got := SharedHostEnv(4, nil); got != nil {
		t.Errorf("SharedHostEnv with %s set in the environment = %q, want nothing", tensor.SpinEnv, got)
	}
}

// TestLocalWorkersDoNotSpin: the worker processes of a 2-worker local
// cluster run with SWITCHYARD_SPIN=0 (read from their /proc environ).
func TestLocalWorkersDoNotSpin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/PID/environ")
	}
	t.Setenv(tensor.SpinEnv, "")
	os.Unsetenv(tensor.SpinEnv)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Setenv("TMPDIR", t.TempDir())
	lc, err := Start(ctx, Options{Command: []string{os.Args[0]}, Env: []string{workerEnv + "=1"}, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	for _, p := range lc.Procs() {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(strings.Split(string(env), "\x00"), tensor.SpinEnv+"=0") {
			t.Errorf("worker %s runs without %s=0", p.ID, tensor.SpinEnv)
		}
	}
}
