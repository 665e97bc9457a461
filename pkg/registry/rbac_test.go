package registry

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/switchyard/switchyard/internal/embedetcd"
	"github.com/switchyard/switchyard/pkg/auth"
)

// TestEnableRBAC: on an etcd with client certificates, EnableRBAC turns
// authentication on with a role per Switchyard role: each writes only its
// own keys, and a worker waits for the coordinator's gossip key instead of
// creating it.
func TestEnableRBAC(t *testing.T) {
	dir := t.TempDir()
	if err := auth.WriteDevCA(dir, auth.DevCA{Workers: 1, Frontends: 1}); err != nil {
		t.Fatal(err)
	}
	files := func(name string) auth.Files {
		return auth.Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), CA: filepath.Join(dir, "ca.crt")}
	}
	cfg := embedetcd.TestConfig(t.TempDir())
	cfg.ClientURL, cfg.PeerURL, cfg.TLS = "https://127.0.0.1:0", "https://127.0.0.1:0", files("coordinator")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := embedetcd.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	reg := func(name string) *Registry {
		c, err := auth.Load(files(name))
		if err != nil {
			t.Fatal(err)
		}
		cli, err := DialTLS(ctx, srv.Endpoints(), c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() { cli.Close() })
		r, err := New(cli, "c1")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	coord := reg("coordinator")
	if err := coord.EnableRBAC(ctx); err != nil {
		t.Fatal(err)
	}
	if err := coord.EnableRBAC(ctx); err != nil {
		t.Fatalf("EnableRBAC is not idempotent: %v", err)
	}
	worker, fe, client := reg("w1"), reg("fe1"), reg("client")

	// A worker asking for the gossip key before the coordinator made it
	// waits for it (it may not create it).
	got := make(chan []byte, 1)
	go func() {
		k, err := worker.GossipKey(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- k
	}()
	// Whatever the machine's speed, the worker cannot have a key before
	// the coordinator made one.
	time.Sleep(300 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("the worker got a gossip key before any coordinator made one")
	default:
	}
	want, err := coord.GossipKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if k := <-got; string(k) != string(want) {
		t.Fatal("the worker got another gossip key than the coordinator's")
	}

	put := func(r *Registry, key string) error {
		_, err := r.Client().Put(ctx, key, "x")
		return err
	}
	for _, c := range []struct {
		who  string
		r    *Registry
		key  string
		okay bool
	}{
		{"coordinator", coord, "/c1/placement/m", true},
		{"coordinator", coord, "/c1/leader/x", true},
		{"worker", worker, "/c1/workers/w1", true},
		{"worker", worker, "/c1/stats/w1", true},
		{"worker", worker, "/c1/jobs/j/status", true},
		{"worker", worker, "/c1/placement/m", false},
		{"worker", worker, "/c1/placement-status/m", false},
		{"worker", worker, "/c1/models/m", false},
		{"worker", worker, "/c1/gossip-key", false},
		{"frontend", fe, "/c1/models/m", true},
		{"frontend", fe, "/c1/placement/m", false},
		{"frontend", fe, "/c1/workers/w9", false},
		{"client", client, "/c1/jobs/j/spec", true},
		{"client", client, "/c1/placement/m", false},
		{"client", client, "/c2/jobs/j/spec", false}, // another cluster's keys
	} {
		err := put(c.r, c.key)
		switch {
		case c.okay && err != nil:
			t.Errorf("%s writing %s: %v", c.who, c.key, err)
		case !c.okay && !errors.Is(err, rpctypes.ErrPermissionDenied):
			t.Errorf("%s writing %s: %v, want permission denied", c.who, c.key, err)
		}
	}
	// Everyone reads the cluster's keys (watches of placements, workers).
	for _, r := range []*Registry{worker, fe, client} {
		if _, err := r.Client().Get(ctx, "/c1/placement/m"); err != nil {
			t.Errorf("read: %v", err)
		}
	}
}
