package jobs

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// TestSchedulerSkipsDyingWorkers: with real etcd leases, a worker whose
// process died (its lease no longer renewed, not yet expired) is given no
// ranks: an elastic job submitted then starts on the two live workers.
func TestSchedulerSkipsDyingWorkers(t *testing.T) {
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg, err := registry.New(e.Client(t), "sched")
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 10 * time.Second
	var regs []*registry.Registration
	for _, id := range []string{"w1", "w2", "w3"} {
		g, err := reg.Register(ctx, cluster.WorkerInfo{ID: cluster.WorkerID(id), Addr: "127.0.0.1:1", Protocol: cluster.ProtocolVersion}, ttl)
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, g)
	}
	defer func() {
		for _, g := range regs {
			g.Close()
		}
	}()
	regs[1].Abandon() // w2's process "dies": nobody renews its lease
	cli := e.Client(t)
	ttl2 := func() (int64, int64) {
		r, err := cli.TimeToLive(ctx, regs[1].Lease())
		if err != nil {
			t.Fatal(err)
		}
		return r.TTL, r.GrantedTTL
	}
	// Wait (on the condition, bounded by ctx: the machine may be busy)
	// until etcd shows w2's lease past the dying mark.
	poll(t, ctx, "w2's lease running down", func() bool {
		left, granted := ttl2()
		return 2*left < granted
	})
	js := NewStore(cli, "sched")
	go (&Scheduler{Jobs: js, Registry: reg, Tick: 200 * time.Millisecond}).Run(ctx)
	if err := js.Submit(ctx, Spec{ID: "j", Workers: 3, MinWorkers: 2, Job: validJob()}); err != nil {
		t.Fatal(err)
	}
	var sp *Spec
	poll(t, ctx, "the job assigned", func() bool {
		var err error
		if sp, _, err = js.Get(ctx, "j"); err != nil {
			t.Fatal(err)
		}
		return sp.State == Assigned
	})
	if !slices.Equal(sp.Assigned, ids("w1", "w3")) {
		t.Fatalf("assigned %v, want [w1 w3] (w2 is dying)", sp.Assigned)
	}
	// The check meant something only if w2 was still registered.
	if left, _ := ttl2(); left <= 0 {
		t.Fatal("w2's lease expired before the job was assigned: the test proves nothing on a machine this slow")
	}
}

// poll checks cond every 50 ms until it holds, failing the test (naming
// what it waited for) when ctx ends first.
func poll(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
