package embedetcd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/internal/leakcheck"
)

func TestStartServeClose(t *testing.T) {
	leakcheck.Check(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	srv, err := Start(ctx, TestConfig(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %v at %v", time.Since(start), srv.Endpoints())
	eps := srv.Endpoints()
	if len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") || strings.HasSuffix(eps[0], ":0") {
		t.Fatalf("endpoints %v: want the real bound address", eps)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	// A watch is open when the client closes: Close must still be quick.
	wch := cli.Watch(ctx, "/k")
	if _, err := cli.Put(ctx, "/k", "v2"); err != nil {
		t.Fatal(err)
	}
	if ev := <-wch; len(ev.Events) != 1 || string(ev.Events[0].Kv.Value) != "v2" {
		t.Fatalf("watch event %+v", ev)
	}
	resp, err := cli.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("get: %v %v", resp, err)
	}
	cli.Close()
	closeStart := time.Now()
	srv.Close()
	srv.Close() // idempotent
	if d := time.Since(closeStart); d > 3*time.Second {
		t.Errorf("Close took %v", d)
	}
}

func TestTempDirRemoved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := Start(ctx, TestConfig(""))
	if err != nil {
		t.Fatal(err)
	}
	dir := srv.Dir()
	srv.Close()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("temporary data dir %s left behind (%v)", d, err)
		}
	}
}

func TestBadConfig(t *testing.T) {
	c := TestConfig("")
	c.Name = ""
	c.ClientURL = "nonsense"
	c.TickMs = 0
	_, err := Start(context.Background(), c)
	for _, want := range []string{"empty Name", `ClientURL "nonsense"`, "TickMs 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v lacks %q", err, want)
		}
	}
}

// TestRestartKeepsData restarts on the same data dir (new free ports): the
// control state (e.g. the placement and its epoch) survives.
func TestRestartKeepsData(t *testing.T) {
	leakcheck.Check(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	for i, want := range []string{"", "kept"} {
		srv, err := Start(ctx, TestConfig(dir))
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := cli.Get(ctx, "/k")
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(resp.Kvs) > 0 {
			got = string(resp.Kvs[0].Value)
		}
		if got != want {
			t.Fatalf("start %d: /k = %q, want %q", i, got, want)
		}
		if _, err := cli.Put(ctx, "/k", "kept"); err != nil {
			t.Fatal(err)
		}
		cli.Close()
		srv.Close()
	}
}
