package worker

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Bounds of the join tests: short timeouts, generous limits on how late
// the worker may give up (busy machines).
const (
	joinTimeout = 2 * time.Second
	lateBy      = 20 * time.Second
)

// deadEndpoint is an etcd URL on a loopback port nothing listens on.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// gaveUp waits for r to end and checks that it did so with an error
// wrapping ErrGaveUp and want, no sooner than min after start and not much
// later than max.
func gaveUp(t *testing.T, r *running, start time.Time, lo, hi time.Duration, want error) error {
	t.Helper()
	var err error
	select {
	case err = <-r.done:
		r.done <- nil
	case <-time.After(hi + lateBy):
		t.Fatalf("worker still running %v after start; want it to give up after %v", time.Since(start), hi)
	}
	took := time.Since(start)
	t.Logf("gave up after %v: %v", took.Round(time.Millisecond), err)
	if !errors.Is(err, ErrGaveUp) || !errors.Is(err, want) {
		t.Fatalf("error %v, want ErrGaveUp and %v", err, want)
	}
	if took < lo {
		t.Errorf("gave up after %v, before %v", took, lo)
	}
	return err
}

// TestGivesUpUnreachableEtcd: a wrong etcd address ends in one error
// after ConnectTimeout naming the endpoint and why it does not answer.
func TestGivesUpUnreachableEtcd(t *testing.T) {
	leakcheck.Check(t)
	dead := deadEndpoint(t)
	h := &harness{t: t, dir: tinyModel(t, 64), etcd: &etcdtest.Cluster{Endpoints: []string{dead}}}
	start := time.Now()
	r := h.start("w1", func(c *Config) { c.ConnectTimeout = joinTimeout })
	err := gaveUp(t, r, start, joinTimeout, joinTimeout, ErrEtcdUnreachable)
	for _, s := range []string{dead, "not reachable within 2s", "connection refused", "--connect-timeout"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q", s)
		}
	}
}

// TestGivesUpWrongCluster: a cluster name nobody uses ends in one error
// after RegisterTimeout saying it serves no model and listing the
// clusters that exist.
func TestGivesUpWrongCluster(t *testing.T) {
	h := newHarness(t) // cluster "wt": a model and a coordinator
	start := time.Now()
	r := h.start("w1", func(c *Config) { c.Cluster = "wrong"; c.RegisterTimeout = joinTimeout })
	err := gaveUp(t, r, start, joinTimeout, joinTimeout, registry.ErrNoModel)
	for _, s := range []string{`cluster "wrong" serves no model`, "wrong --cluster?", `clusters in this etcd: "wt"`, "--register-timeout"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q", s)
		}
	}
}

// TestGivesUpDuplicateID: an ID held by a live worker ends in one error
// after that worker's lease TTL (1 s) plus DuplicateIDMargin, naming the
// holder's address.
func TestGivesUpDuplicateID(t *testing.T) {
	h := newHarness(t)
	w1 := h.start("w1", nil)
	h.ready(w1)
	start := time.Now()
	r := h.start("w1", func(c *Config) { c.RegisterTimeout = time.Hour })
	limit := time.Second + DuplicateIDMargin
	err := gaveUp(t, r, start, limit, limit, registry.ErrWorkerExists)
	for _, s := range []string{`another live worker uses ID "w1"`, w1.w.Info().Addr} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q", s)
		}
	}
	select {
	case err := <-w1.done:
		t.Fatalf("the live worker stopped: %v", err)
	default:
	}
}

// TestRestartUnderSameID: a predecessor killed without revoking its lease
// (a 3 s TTL, longer than the newcomer's RegisterTimeout) still holds the
// ID; the restarted worker waits for the lease to expire and registers.
func TestRestartUnderSameID(t *testing.T) {
	h := newHarness(t)
	cli := h.etcd.Client(t)
	reg, err := registry.New(cli, "wt")
	if err != nil {
		t.Fatal(err)
	}
	g, err := reg.Register(h.ctx, cluster.WorkerInfo{ID: "w1", Addr: "127.0.0.1:1", Protocol: cluster.ProtocolVersion, Model: h.fp}, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cli.Close() // "SIGKILL": no revoke, the lease runs out
	_ = g
	start := time.Now()
	r := h.start("w1", func(c *Config) { c.RegisterTimeout = time.Second })
	h.ready(r)
	t.Logf("registered %v after start (the predecessor's lease had 3 s)", time.Since(start).Round(time.Millisecond))
}

// TestWaitKeepsRetrying: with Wait, a worker whose cluster has no model,
// or whose etcd does not answer, keeps trying past both timeouts, and
// registers once the model is registered.
func TestWaitKeepsRetrying(t *testing.T) {
	h := newHarness(t)
	r := h.start("w1", func(c *Config) {
		c.Cluster = "late"
		c.Wait = true
		c.ConnectTimeout, c.RegisterTimeout = 500*time.Millisecond, 500*time.Millisecond
	})
	dead := deadEndpoint(t)
	r2 := h.start("w2", func(c *Config) {
		c.Etcd = []string{dead}
		c.Wait = true
		c.ConnectTimeout, c.RegisterTimeout = 500*time.Millisecond, 500*time.Millisecond
	})
	select {
	case err := <-r.done:
		t.Fatalf("worker w1 ended: %v", err)
	case err := <-r2.done:
		t.Fatalf("worker w2 ended: %v", err)
	case <-r.w.Ready():
		t.Fatal("worker ready in a cluster with no model")
	case <-time.After(3 * time.Second):
	}
	late, err := registry.New(h.reg.Client(), "late")
	if err != nil {
		t.Fatal(err)
	}
	rec, _, err := h.reg.Model(h.ctx, h.fp)
	if err != nil {
		t.Fatal(err)
	}
	if err := late.PutModel(h.ctx, rec); err != nil {
		t.Fatal(err)
	}
	h.ready(r)
	select {
	case err := <-r2.done:
		t.Fatalf("worker w2 ended: %v", err)
	default:
	}
}

// TestListClusters: one key name read per cluster, at most maxClusters.
func TestListClusters(t *testing.T) {
	e := etcdtest.Start(t)
	cli := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, k := range []string{"/a/x", "/a/y/z", "/a-b/x", "/b", "/c/workers/1", "/c/workers/2", "plain"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	names, more, err := listClusters(ctx, cli)
	if err != nil || more || strings.Join(names, ",") != "a,a-b,b,c" {
		t.Fatalf("listClusters = %v, %v, %v", names, more, err)
	}
	for i := range maxClusters + 2 {
		if _, err := cli.Put(ctx, "/many"+string(rune('a'+i))+"/k", "v", clientv3.WithPrevKV()); err != nil {
			t.Fatal(err)
		}
	}
	names, more, err = listClusters(ctx, cli)
	if err != nil || !more || len(names) != maxClusters {
		t.Fatalf("listClusters = %v, %v, %v", names, more, err)
	}
}

// TestGivesUpRejoining: a worker that lost its lease after registering
// (revoked here) and cannot register again (its model record is gone) ends
// in one error after RegisterTimeout, saying it lost its lease, instead of
// retrying forever.
func TestGivesUpRejoining(t *testing.T) {
	h := newHarness(t)
	r := h.start("w1", func(c *Config) { c.RegisterTimeout = joinTimeout })
	h.ready(r)
	set, err := h.reg.Workers(h.ctx)
	if err != nil || len(set.Leases) != 1 {
		t.Fatalf("workers %+v: %v", set, err)
	}
	if _, err := h.reg.Client().Delete(h.ctx, h.reg.ModelKey(h.fp)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := h.reg.Client().Revoke(h.ctx, set.Leases[0]); err != nil {
		t.Fatal(err)
	}
	err = gaveUp(t, r, start, joinTimeout, joinTimeout, registry.ErrNoModel)
	if !strings.Contains(err.Error(), "serves no model") {
		t.Errorf("error does not say why: %v", err)
	}
	// With Wait, the same worker keeps trying.
	h2 := newHarness(t)
	r2 := h2.start("w1", func(c *Config) { c.RegisterTimeout = joinTimeout; c.Wait = true })
	h2.ready(r2)
	set, err = h2.reg.Workers(h2.ctx)
	if err != nil || len(set.Leases) != 1 {
		t.Fatalf("workers %+v: %v", set, err)
	}
	if _, err := h2.reg.Client().Delete(h2.ctx, h2.reg.ModelKey(h2.fp)); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.reg.Client().Revoke(h2.ctx, set.Leases[0]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r2.done:
		t.Fatalf("worker with Wait ended: %v", err)
	case <-time.After(2*joinTimeout + time.Second):
	}
}

// TestGivesUpUnplaceable: a worker whose memory holds no expert (so the
// leader's verdict is a shortfall) ends in one error after RegisterTimeout
// quoting the verdict; with Wait it keeps waiting.
func TestGivesUpUnplaceable(t *testing.T) {
	h := newHarness(t)
	start := time.Now()
	r := h.start("w1", func(c *Config) { c.MemBytes = RuntimeReserve + 1; c.RegisterTimeout = joinTimeout })
	h.ready(r)
	err := gaveUp(t, r, start, joinTimeout, joinTimeout+5*time.Second, ErrUnplaceable)
	for _, s := range []string{"cannot be placed", "holds none of its experts", "--register-timeout"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error lacks %q", s)
		}
	}
	h2 := newHarness(t)
	r2 := h2.start("w1", func(c *Config) { c.MemBytes = RuntimeReserve + 1; c.RegisterTimeout = joinTimeout; c.Wait = true })
	h2.ready(r2)
	select {
	case err := <-r2.done:
		t.Fatalf("worker with Wait ended: %v", err)
	case <-time.After(2*joinTimeout + 2*time.Second):
	}
}

// TestRestartOnSameAddressTakesOver: a predecessor killed without revoking
// its lease (30 s TTL) registered the very IP:port the restarted worker
// listens on: no live process can hold that address, so the newcomer
// revokes the predecessor's lease and registers at once instead of
// waiting for the TTL.
func TestRestartOnSameAddressTakesOver(t *testing.T) {
	h := newHarness(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cli := h.etcd.Client(t)
	reg, err := registry.New(cli, "wt")
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 30 * time.Second
	if _, err := reg.Register(h.ctx, cluster.WorkerInfo{ID: "w1", Addr: addr, Protocol: cluster.ProtocolVersion, Model: h.fp}, ttl); err != nil {
		t.Fatal(err)
	}
	cli.Close() // "SIGKILL": no revoke
	start := time.Now()
	r := h.start("w1", func(c *Config) { c.ListenAddr = addr })
	h.ready(r)
	took := time.Since(start)
	t.Logf("registered %v after start (the predecessor's lease had %v)", took.Round(time.Millisecond), ttl)
	if took >= ttl {
		t.Fatalf("registered only after %v: it waited for the predecessor's lease", took)
	}
	if got := r.w.Info().Addr; got != addr {
		t.Fatalf("registered address %s, want %s", got, addr)
	}
}
