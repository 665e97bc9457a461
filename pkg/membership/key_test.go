package membership

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
)

// startKeyed starts a node with the given gossip key (nil: plaintext); it
// drains its events so the node never blocks on them.
func startKeyed(t *testing.T, name string, key []byte) *Node {
	t.Helper()
	cfg := LocalConfig(name)
	cfg.Meta = Meta{Worker: cluster.WorkerID(name), Addr: "127.0.0.1:1", Protocol: cluster.ProtocolVersion}
	cfg.SecretKey = key
	nd, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range nd.Events() {
		}
	}()
	t.Cleanup(func() { nd.Shutdown() })
	return nd
}

// TestGossipKeyKeepsStrangersOut: nodes sharing the cluster's key form a
// cluster; a node without the key, or with another key, can neither join
// it nor be joined by it.
func TestGossipKeyKeepsStrangersOut(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	a := startKeyed(t, "a", key)
	b := startKeyed(t, "b", key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := b.Join(ctx, []string{a.Addr()}); err != nil || n != 1 {
		t.Fatalf("keyed join: %d, %v", n, err)
	}
	for i, k := range [][]byte{nil, bytes.Repeat([]byte{8}, 32)} {
		s := startKeyed(t, fmt.Sprintf("stranger%d", i), k)
		sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
		if n, err := s.Join(sctx, []string{a.Addr()}); err == nil && n > 0 {
			t.Errorf("stranger %d (key %x) joined the keyed cluster", i, k)
		}
		scancel()
		sctx, scancel = context.WithTimeout(context.Background(), 3*time.Second)
		if n, err := a.Join(sctx, []string{s.Addr()}); err == nil && n > 0 {
			t.Errorf("the keyed cluster joined stranger %d", i)
		}
		scancel()
	}
	// Whatever the strangers sent, the cluster is its two keyed members.
	time.Sleep(300 * time.Millisecond) // a few gossip rounds (LocalConfig: 20 ms)
	for _, nd := range []*Node{a, b} {
		if got := names(nd.Members()); got != "[a b]" {
			t.Fatalf("%s sees members %s, want [a b]", nd.Addr(), got)
		}
	}
}
