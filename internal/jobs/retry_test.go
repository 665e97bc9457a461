package jobs

import (
	"context"
	"errors"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/embedetcd"
	"github.com/switchyard/switchyard/pkg/registry"
)

// A job's final write issued while etcd is down lands once etcd is back
// (same data, same address), and Retry returns nil; a write that never
// can land returns every distinct error after its budget.
func TestRetryLandsAcrossAnEtcdRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	cfg := embedetcd.TestConfig(dir)
	srv, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ep := srv.Endpoints()[0]
	cli, err := registry.Dial(ctx, []string{ep})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := NewStore(cli, "retry")
	if err := st.Submit(ctx, Spec{ID: "j1", Workers: 1, Job: validJob()}); err != nil {
		t.Fatal(err)
	}

	srv.Close() // etcd goes away as the job ends
	done := make(chan error, 1)
	var tries atomic.Int32
	go func() {
		done <- Retry(ctx, RetryConfig{Total: 45 * time.Second, Attempt: time.Second}, func(ctx context.Context) error {
			tries.Add(1)
			_, err := st.Transition(ctx, "j1", func(sp *Spec) bool {
				if sp.State.Terminal() {
					return false
				}
				sp.State = Done
				return true
			})
			return err
		})
	}()
	for tries.Load() < 3 { // a few failed tries while etcd is down
		select {
		case err := <-done:
			t.Fatalf("Retry returned while etcd was down: %v", err)
		case <-ctx.Done():
			t.Fatal("no retries while etcd was down")
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case err := <-done:
		t.Fatalf("Retry returned while etcd was down: %v", err)
	default:
	}
	u, _ := url.Parse(ep)
	cfg.ClientURL = "http://" + u.Host // the same address
	srv2, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		t.Skipf("cannot restart etcd on %s: %v", u.Host, err)
	}
	defer srv2.Close()
	if err := <-done; err != nil {
		t.Fatalf("the final write did not land after etcd came back: %v", err)
	}
	sp, _, err := st.Get(ctx, "j1")
	if err != nil || sp.State != Done {
		t.Fatalf("job state %v (%v), want done", sp, err)
	}

	// A write that cannot succeed gives up after its budget, naming why.
	boom := errors.New("boom")
	start := time.Now()
	err = Retry(ctx, RetryConfig{Total: 500 * time.Millisecond, Attempt: 100 * time.Millisecond}, func(context.Context) error { return boom })
	if !errors.Is(err, boom) || time.Since(start) > 5*time.Second {
		t.Fatalf("Retry = %v after %v, want boom within its budget", err, time.Since(start))
	}
}
