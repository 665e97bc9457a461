package jobs

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/internal/etcdtest"
)

// TestSubmitRetriesAFailedWrite: a real etcd behind a client whose first
// Txn fails with Unavailable, once before it reaches etcd and once after
// etcd applied it (the reply lost, as when the member is cut off then).
// Submit stores the job either way, exactly once, and a second Submit of
// the same ID still reports that the job exists.
func TestSubmitRetriesAFailedWrite(t *testing.T) {
	e := etcdtest.Start(t)
	for _, c := range []struct {
		name         string
		afterApplied bool
	}{{"lost before etcd", false}, {"reply lost after etcd applied it", true}} {
		t.Run(c.name, func(t *testing.T) {
			var fail, txns atomic.Int32
			fail.Store(1)
			cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
				DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
					if !strings.HasSuffix(method, "/Txn") {
						return invoker(ctx, method, req, reply, cc, opts...)
					}
					txns.Add(1)
					if fail.Add(-1) >= 0 {
						if c.afterApplied {
							if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
								return err
							}
						}
						return status.Error(codes.Unavailable, "test: connection cut")
					}
					return invoker(ctx, method, req, reply, cc, opts...)
				})}})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			s := NewStore(cli, "c-"+strings.ReplaceAll(c.name, " ", "-"))
			sp := validSpec()
			sp.ID = "job-1"
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := s.Submit(ctx, sp); err != nil {
				t.Fatalf("Submit after one failed write: %v", err)
			}
			if n := txns.Load(); n != 2 {
				t.Errorf("%d Txn calls, want 2 (the failed one and its retry)", n)
			}
			got, _, err := s.Get(ctx, "job-1")
			if err != nil || got.State != Submitted {
				t.Fatalf("stored job: %+v, %v; want it Submitted", got, err)
			}
			if err := s.Submit(ctx, sp); err == nil || !strings.Contains(err.Error(), "already exists") {
				t.Errorf("second Submit of the same ID: %v, want already exists", err)
			}
		})
	}
}
