package membership

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/pkg/cluster"
)

func startNodes(t *testing.T, n int) []*Node {
	t.Helper()
	var nodes []*Node
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("w%d", i)
		cfg := LocalConfig(name)
		cfg.Meta = Meta{Worker: cluster.WorkerID(name), Addr: fmt.Sprintf("127.0.0.1:%d", 9000+i), Protocol: cluster.ProtocolVersion}
		nd, err := Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Shutdown() })
		nodes = append(nodes, nd)
	}
	// Everyone joins through the first node, as workers join through the
	// gossip addresses they find in etcd.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, nd := range nodes[1:] {
		if k, err := nd.Join(ctx, []string{nodes[0].Addr()}); err != nil || k != 1 {
			t.Fatalf("join: %d %v", k, err)
		}
	}
	return nodes
}

// waitEvent reads events of nd until one matches or the deadline passes.
func waitEvent(t *testing.T, nd *Node, d time.Duration, match func(Event) bool) Event {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-nd.Events():
			if !ok {
				t.Fatal("events closed")
			}
			if match(ev) {
				return ev
			}
		case <-timer.C:
			t.Fatalf("no matching event within %v", d)
		}
	}
}

func names(ms []Member) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	sort.Strings(s)
	return fmt.Sprint(s)
}

func TestSeeEachOtherAndDetectFailure(t *testing.T) {
	leakcheck.Check(t)
	nodes := startNodes(t, 3)
	for i, nd := range nodes {
		for k := 0; k < 3; k++ { // join events for all three members
			waitEvent(t, nd, 5*time.Second, func(ev Event) bool { return ev.Kind == Join })
		}
		if got := names(nd.Members()); got != "[w0 w1 w2]" {
			t.Fatalf("node %d sees %s", i, got)
		}
	}
	for _, m := range nodes[0].Members() {
		if m.Meta.Worker != cluster.WorkerID(m.Name) || m.Meta.Protocol != cluster.ProtocolVersion || m.Meta.Addr == "" {
			t.Fatalf("meta of %s: %+v", m.Name, m.Meta)
		}
	}

	// w2 dies without a word: the others declare it failed.
	start := time.Now()
	nodes[2].Shutdown()
	for _, nd := range nodes[:2] {
		ev := waitEvent(t, nd, 10*time.Second, func(ev Event) bool { return ev.Member.Name == "w2" })
		if ev.Kind != Failed {
			t.Fatalf("event %v for w2, want failed", ev.Kind)
		}
	}
	t.Logf("abrupt shutdown detected as failure after %v", time.Since(start))

	// w1 leaves gracefully: w0 gets a leave event, not a failure.
	nodes[1].SetMeta(Meta{Worker: "w1", Addr: "127.0.0.1:9999", Protocol: cluster.ProtocolVersion}, time.Second)
	ev := waitEvent(t, nodes[0], 5*time.Second, func(ev Event) bool { return ev.Member.Name == "w1" })
	if ev.Kind != Update || ev.Member.Meta.Addr != "127.0.0.1:9999" {
		t.Fatalf("meta update: %+v", ev)
	}
	if err := nodes[1].Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	ev = waitEvent(t, nodes[0], 5*time.Second, func(ev Event) bool { return ev.Member.Name == "w1" })
	if ev.Kind != Leave {
		t.Fatalf("event %v for w1, want leave", ev.Kind)
	}
	if got := names(nodes[0].Members()); got != "[w0]" {
		t.Fatalf("w0 sees %s", got)
	}
}

func TestJoinErrors(t *testing.T) {
	leakcheck.Check(t)
	nd, err := Start(LocalConfig("solo"))
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := nd.Join(ctx, []string{"127.0.0.1:1"}); err == nil {
		t.Fatal("join of nothing succeeded")
	}
	if k, err := nd.Join(ctx, nil); k != 0 || err != nil {
		t.Fatalf("empty join: %d %v", k, err)
	}
	if _, err := Start(Config{}); err == nil {
		t.Fatal("nameless node started")
	}
}
