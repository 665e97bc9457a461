package transport

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// BenchmarkExchange measures one dispatch+combine round of one MoE layer:
// T tokens x D=1024 x top-4 of 16 experts spread over 4 loopback workers,
// whose "experts" copy rows (so the transport, not the GEMM, is timed).
// MB/s counts payload bytes both ways (T*K*D*4 out and back); tokens=1 is
// a decode step's latency per layer. The "ping" case, measured in the same
// run, is one unary gRPC round trip (Health) to one of the workers: the
// floor a layer's exchange (one round trip to each of 4 workers, all sent
// before any answer is read) is compared with. Each case runs over expert
// lanes (the default) and over gRPC streams (ClientConfig.GRPCOnly), in
// plaintext and mutual TLS.
func BenchmarkExchange(b *testing.B) {
	ca, err := auth.NewCA("bench")
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"plain", "tls"} {
		for _, tr := range []string{"lanes", "grpc"} {
			b.Run(mode+"/"+tr, func(b *testing.B) { benchExchange(b, ca, mode == "tls", tr == "grpc") })
		}
	}
}

// benchExchange is BenchmarkExchange over plaintext or mutual TLS (every
// worker and the caller with a certificate of ca), over lanes or gRPC.
func benchExchange(b *testing.B, ca *auth.CA, secure, grpcOnly bool) {
	const E, K, D = 16, 4, 1024
	creds := func(role auth.Role, name string) *auth.Credentials {
		if !secure {
			return nil
		}
		c, err := ca.Credentials(auth.Identity{Role: role, Name: name})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	copyRows := func(_ expert.ID, _ *expert.FFN, x []float32, _ int, y []float32) { copy(y, x) }
	var workers []*testWorker
	for w := 0; w < 4; w++ {
		var ids []expert.ID
		for e := w; e < E; e += 4 {
			ids = append(ids, expert.ID{Layer: 0, Expert: e})
		}
		id := fmt.Sprintf("w%d", w)
		workers = append(workers, startWorker(b, cluster.WorkerID(id), taggedStore(ids...), ServerConfig{Hidden: D, TLS: creds(auth.RoleWorker, id)}, copyRows))
	}
	pl := placement(1, 1, E, func(int) bool { return true }, workers, func(_, e int) []int { return []int{e % 4} })
	fe := creds(auth.RoleFrontend, "bench")
	ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(b, ClientConfig{Worker: "bench", TLS: fe, GRPCOnly: grpcOnly}))
	pool := newPool(b, ClientConfig{Worker: "bench-ping", TLS: fe})
	b.Run("ping", func(b *testing.B) {
		c, err := pool.Client(workers[0].id, workers[0].addr)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := c.Health(context.Background(), &pb.HealthRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, T := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("tokens=%d", T), func(b *testing.B) {
			plan := route(T, E, K, 1)
			x := taggedInput(0, T, D, 1)
			y := make([]float32, plan.Len()*D)
			b.SetBytes(int64(2 * plan.Len() * D * 4))
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				if err := ex.Compute(context.Background(), 0, plan, x, D, y); err != nil {
					b.Fatal(err)
				}
			}
			// CPU time of the whole process (caller and the 4 owners) per
			// exchange: what the transport costs the cores, whatever else
			// the machine runs.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}

// cpuTime is the process's user + system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
