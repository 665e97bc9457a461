package simcal

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// shareChildEnv makes this test binary MeasureSharing's child (TestMain):
// the real child protocol and kernel in a process of its own, as
// `switchyard simulate calibrate --share-child` runs it.
const shareChildEnv = "SIMCAL_TEST_SHARE_CHILD"

// shareExitEnv makes this test binary a child that exits at once.
const shareExitEnv = "SIMCAL_TEST_SHARE_EXIT"

// shareTestShape is a small expert (hidden x inter) for the tests.
var shareTestShape = [2]int{128, 256}

func TestMain(m *testing.M) {
	if os.Getenv(shareExitEnv) != "" { // a child that fails at once
		os.Exit(3)
	}
	if addr := os.Getenv(shareChildEnv); addr != "" {
		if err := ShareChild(addr, shareTestShape[0], shareTestShape[1]); err != nil {
			fmt.Fprintln(os.Stderr, "share child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func shareChildCmd(addr string) *exec.Cmd {
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), shareChildEnv+"="+addr)
	return c
}

// TestMeasureSharing runs three real child processes of one thread each
// and checks what it measures: products that took core time, every round
// answered, and the wake's core time split.
func TestMeasureSharing(t *testing.T) {
	o := ShareOptions{Procs: 3, Hidden: shareTestShape[0], Inter: shareTestShape[1], Rows: 2, Products: 3, Gap: time.Millisecond, Rounds: 8,
		Command: shareChildCmd}
	s, err := MeasureSharing(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v (x%.3f, wake %v)", s, s.Factor(), s.WakeWork())
	if s.Procs != 3 || s.Rows != 2 || s.Products != 3 || s.Gap != time.Millisecond || s.Cores < 1 {
		t.Errorf("options not kept: %+v", s)
	}
	if s.Product <= 0 || s.Shared <= 0 {
		t.Errorf("products took no core time: %+v", s)
	}
	// A product of 2 rows of a 128 x 256 expert is about 0.4 MFLOP: well
	// under 50 ms of core time on any machine, however busy.
	if s.Product > 50*time.Millisecond || s.Shared > 50*time.Millisecond {
		t.Errorf("a product took %v / %v of core time", s.Product, s.Shared)
	}
	if s.WakeIdle <= 0 || s.WakeBusy <= 0 {
		t.Errorf("a round's handling took no core time: %+v", s)
	}
	if s.WakeWork() < 0 || s.Factor() <= 0 {
		t.Errorf("derived: wake work %v, factor %v", s.WakeWork(), s.Factor())
	}
}

// TestMeasureSharingChildFails: children that exit before they are
// ready (a wrong command) give an error at once, not a wait on them.
func TestMeasureSharingChildFails(t *testing.T) {
	start := time.Now()
	_, err := MeasureSharing(context.Background(), ShareOptions{Procs: 2, Hidden: 8, Inter: 8,
		Command: func(string) *exec.Cmd {
			c := exec.Command(os.Args[0])
			c.Env = append(os.Environ(), shareExitEnv+"=1")
			return c
		}})
	if err == nil || !strings.Contains(err.Error(), "exited early") {
		t.Fatalf("want a child's early exit, got %v", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("the failure took %v", d)
	}
	if _, err := MeasureSharing(context.Background(), ShareOptions{Procs: 1, Hidden: 8, Inter: 8, Command: shareChildCmd}); err == nil {
		t.Error("one process: want an error")
	}
	if err := ShareChild("127.0.0.1:1", 0, 8); err == nil {
		t.Error("ShareChild of an empty shape: want an error")
	}
}
