package leakcheck

import (
	"testing"
	"time"
)

// TestDetects leaks a goroutine under a fake test and expects a failure.
func TestDetects(t *testing.T) {
	grace = 100 * time.Millisecond
	defer func() { grace = 5 * time.Second }()
	inner := &fakeTB{TB: t}
	Check(inner)
	stop := make(chan struct{})
	go func() { <-stop }()
	for _, f := range inner.cleanups {
		f()
	}
	if !inner.failed {
		t.Fatal("leaked goroutine not detected")
	}
	close(stop)
}

type fakeTB struct {
	testing.TB
	cleanups []func()
	failed   bool
}

func (f *fakeTB) Cleanup(fn func())              { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Errorf(format string, a ...any) { f.failed = true }
func (f *fakeTB) Helper()                        {}
