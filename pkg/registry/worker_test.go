package registry

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/etcdtest"
)

// TestRegistrationOutlivesStalledRenewals: when the client gets no answer
// to its renewals for a TTL while etcd keeps the lease alive (a member
// holding renewals it forwards to a raft leader that was just cut off,
// while the new leader extends every lease), the registration renews the
// same lease again once etcd answers, instead of ending: Done stays open,
// the key keeps its lease, and Resumed says so. When etcd did let the lease
// expire, Done closes. The client reaches a real etcd through a loopback
// proxy that stalls every byte on demand; a second client renews the lease
// meanwhile in place of the new raft leader.
func TestRegistrationOutlivesStalledRenewals(t *testing.T) {
	e := setup(t)
	px := etcdtest.StartStallProxy(t, strings.TrimPrefix(e.etcd.Endpoints[0], "http://"))
	cli, err := DialTLS(e.ctx, []string{"http://" + px.Addr()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg, err := New(cli, "test")
	if err != nil {
		t.Fatal(err)
	}
	const ttl = time.Second
	g, err := reg.Register(e.ctx, e.worker("w1"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	direct := e.etcd.Client(t)

	// stall cuts the client off until its renewing session gives up and,
	// unless renew, until etcd has let the lease expire; with renew, direct
	// renews the lease meanwhile.
	stall := func(renew bool) {
		t.Helper()
		first := g.Session()
		stopRenewing := func() {}
		if renew {
			stopRenewing = etcdtest.RenewLease(t, direct, g.Lease(), ttl)
		}
		px.Stall(true)
		select {
		case <-first.Done():
		case <-time.After(20 * ttl):
			t.Fatalf("the client kept renewing through a stalled link for %v", 20*ttl)
		}
		for !renew { // wait for etcd to drop the lease (TTL -1)
			ctx, cancel := context.WithTimeout(e.ctx, ttl)
			r, err := direct.TimeToLive(ctx, g.Lease())
			cancel()
			if err == nil && r.TTL < 0 {
				break
			}
			select {
			case <-e.ctx.Done():
				t.Fatal("etcd kept a lease nobody renewed")
			case <-time.After(ttl / 10):
			}
		}
		px.Stall(false)
		stopRenewing()
	}

	stall(true)
	select {
	case d := <-g.Resumed():
		t.Logf("renewals resumed on the same lease after %v without an answer", d.Round(time.Millisecond))
	case <-g.Done():
		t.Fatal("the registration ended although etcd kept its lease alive")
	case <-e.ctx.Done():
		t.Fatal("renewals never resumed")
	}
	// The registration renews on its own again: the key keeps its lease
	// for 3 TTLs.
	etcdtest.Holds(t, 3*ttl, func() error {
		set, err := e.reg.Workers(e.ctx)
		if err != nil {
			return err
		}
		if len(set.Workers) != 1 || set.Leases[0] != g.Lease() {
			return fmt.Errorf("after the stall: workers %v, leases %v; want w1 under lease %x", set.IDs(), set.Leases, int64(g.Lease()))
		}
		return nil
	})
	select {
	case <-g.Done():
		t.Fatal("Done closed after renewals resumed")
	default:
	}

	// Nobody renews during the stall: etcd lets the lease expire, and Done
	// closes once the client can ask.
	stall(false) // etcd's lease expires during the stall
	select {
	case <-g.Done():
	case <-e.ctx.Done():
		t.Fatal("Done never closed after the lease expired")
	}
	set, err := e.reg.Workers(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Workers) != 0 {
		t.Fatalf("workers %v after the lease expired", set.IDs())
	}
}
