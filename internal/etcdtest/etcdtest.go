// Package etcdtest starts a real embedded etcd for a test and hands out
// clients, cleaning up in the order etcd needs: clients (and their watches)
// close before the server, or the server's Close stalls for seconds.
package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/internal/embedetcd"
)

// Cluster is a single-node etcd owned by one test.
type Cluster struct {
	Server    *embedetcd.Server
	Endpoints []string
}

// Start runs an embedded etcd with embedetcd.TestConfig (free ports, fast
// raft timing allowing 1 s lease TTLs) in a test temp dir, closed when the
// test ends.
func Start(t testing.TB) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := embedetcd.Start(ctx, embedetcd.TestConfig(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close) // registered first: runs after every client cleanup
	return &Cluster{Server: srv, Endpoints: srv.Endpoints()}
}

// Client returns a new client, closed at the end of the test (before the
// server). Tests that simulate a dead process close it earlier themselves;
// closing twice is harmless.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
