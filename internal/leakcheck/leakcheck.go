// Package leakcheck fails a test that leaves goroutines behind. It records
// the goroutines alive when Check is called and, at cleanup, waits (up to a
// deadline, polling) until every goroutine started since has exited.
// Only the testing package's own goroutines (other tests and subtests) are
// ignored; etcd's embedded server and client, gRPC and memberlist stop all
// of theirs when closed, so no library allowance is needed so far.
package leakcheck

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// ignored lists substrings of stacks of goroutines that legitimately
// outlive a test. Add a library singleton here (with the reason) only when
// it truly cannot be stopped.
var ignored = []string{
	"testing.(*T).Run",
	"testing.Main(",
	"testing.(*M).",
	"testing.tRunner",
	// pkg/tensor's worker pool: Threads()-1 goroutines started on the
	// first parallel kernel and kept (parked when idle) for the process's
	// life, so a decode step does not pay a thread wake-up per fork.
	"tensor.poolWorker",
}

// grace is how long goroutines get to exit after the test.
var grace = 5 * time.Second

// Check registers a cleanup on t that fails the test when goroutines
// started after Check are still running 5 s after the test (and its other
// cleanups registered after Check) finished. Call it first in a test.
func Check(t testing.TB) {
	t.Helper()
	before := map[string]bool{}
	for _, g := range goroutines() {
		before[id(g)] = true
	}
	t.Cleanup(func() {
		deadline := time.NewTimer(grace)
		defer deadline.Stop()
		poll := time.NewTicker(20 * time.Millisecond)
		defer poll.Stop()
		var left []string
	wait:
		for {
			left = left[:0]
			for _, g := range goroutines() {
				if !before[id(g)] && interesting(g) {
					left = append(left, g)
				}
			}
			if len(left) == 0 {
				break
			}
			select {
			case <-poll.C:
			case <-deadline.C:
				break wait
			}
		}
		if len(left) > 0 {
			t.Errorf("leakcheck: %d goroutines left behind:\n\n%s", len(left), strings.Join(left, "\n\n"))
		}
	})
}

func goroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return strings.Split(string(buf), "\n\n")
}

func id(g string) string {
	// "goroutine 123 [running]:"
	f := strings.Fields(g)
	if len(f) < 2 {
		return g
	}
	return f[1]
}

func interesting(g string) bool {
	if strings.Contains(g, "leakcheck.goroutines") {
		return false
	}
	for _, s := range ignored {
		if strings.Contains(g, s) {
			return false
		}
	}
	return true
}
