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
	// Wait (on the condition, not a fixed sleep: the machine may be busy)
	// until etcd shows its lease past the dying mark.
	for {
		r, err := e.Client(t).TimeToLive(ctx, regs[1].Lease())
		if err != nil {
			t.Fatal(err)
		}
		if 2*r.TTL < r.GrantedTTL {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("w2's lease never ran down")
		}
		time.Sleep(100 * time.Millisecond)
	}
	js := NewStore(e.Client(t), "sched")
	go (&Scheduler{Jobs: js, Registry: reg, Tick: 200 * time.Millisecond}).Run(ctx)
	if err := js.Submit(ctx, Spec{ID: "j", Workers: 3, MinWorkers: 2, Job: validJob()}); err != nil {
		t.Fatal(err)
	}
	for {
		sp, _, err := js.Get(ctx, "j")
		if err != nil {
			t.Fatal(err)
		}
		if sp.State == Assigned {
			if !slices.Equal(sp.Assigned, ids("w1", "w3")) {
				t.Fatalf("assigned %v, want [w1 w3] (w2 is dying)", sp.Assigned)
			}
			// The check meant something only if w2 was still registered.
			r, err := e.Client(t).TimeToLive(ctx, regs[1].Lease())
			if err != nil || r.TTL <= 0 {
				t.Fatalf("w2's lease expired before the job was assigned (%v, %+v): the test proves nothing on a machine this slow", err, r)
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("job never assigned: %+v", sp)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
