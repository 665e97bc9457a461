package registry

import (
	"context"
	"testing"
	"time"
)

// TestPublishFrontend: a front end's statistics appear under
// frontends/<name>, follow its snapshots, and vanish when it stops (the
// lease is revoked).
func TestPublishFrontend(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithCancel(e.ctx)
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.reg.PublishFrontend(ctx, "fe1", 20*time.Millisecond, 5*time.Second, func() FrontendStats {
			n++
			return FrontendStats{Model: e.rec.Fingerprint, Requests: uint64(n), TokensPerS: 12.5}
		}, t.Logf)
	}()
	reader := e.registry(t)
	var got []FrontendStats
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var err error
		if got, err = reader.Frontends(e.ctx); err != nil {
			t.Fatal(err)
		}
		if len(got) == 1 && got[0].Requests >= 3 {
			break
		}
		select {
		case <-tick.C:
		case <-e.ctx.Done():
			t.Fatalf("front-end statistics never updated 3 times: %+v", got)
		}
	}
	if len(got) != 1 || got[0].Name != "fe1" || got[0].Requests < 3 || got[0].TokensPerS != 12.5 || got[0].Model != e.rec.Fingerprint {
		t.Fatalf("frontends: %+v; want fe1 with requests >= 3 (updated), 12.5 tokens/s", got)
	}
	cancel()
	<-done
	if got, err := reader.Frontends(e.ctx); err != nil || len(got) != 0 {
		t.Fatalf("after the front end stopped: %+v, %v; want none (lease revoked)", got, err)
	}
}
