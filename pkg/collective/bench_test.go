package collective

import (
	"context"
	"fmt"
	"syscall"
	"testing"
)

// cpuTime is this process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// The benchmarks run n members in this process over loopback TCP: they
// measure the CPU cost of the runner and gRPC (no link is slow), so
// compare variants side by side within one run.

func BenchmarkAllReduce(b *testing.B) {
	for _, n := range []int{2, 4} {
		for _, size := range []int{4 << 10, 64 << 10, 1 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("n=%d/%dKiB", n, size>>10), func(b *testing.B) {
				c := newCluster(b, n, nil)
				bufs := make([][]float32, n)
				for r := range bufs {
					bufs[r] = make([]float32, size/4)
				}
				b.SetBytes(int64(size))
				b.ResetTimer()
				c.each(b, func(r int, g *Group) error {
					for range b.N {
						if err := g.AllReduce(context.Background(), bufs[r]); err != nil {
							return err
						}
					}
					return nil
				})
			})
		}
	}
}

func BenchmarkAllToAll(b *testing.B) {
	const n = 4
	for _, size := range []int{4 << 10, 1 << 20, 16 << 20} {
		b.Run(fmt.Sprintf("n=%d/%dKiB", n, size>>10), func(b *testing.B) {
			c := newCluster(b, n, nil)
			b.SetBytes(int64(size))
			b.ResetTimer()
			c.each(b, func(r int, g *Group) error {
				send := make([][]byte, n)
				for s := range send {
					send[s] = make([]byte, size/n)
				}
				var recv [][]byte
				for range b.N {
					var err error
					if recv, err = g.AllToAll(context.Background(), send, recv); err != nil {
						return err
					}
				}
				return nil
			})
		})
	}
}

// BenchmarkSmallAllReduceRunners compares, side by side on the same 4 KiB
// recursive-doubling all-reduce: runSteps over the lanes (the default),
// runSteps over gRPC (SmallOverGRPC) and the general runner (over gRPC).
func BenchmarkSmallAllReduceRunners(b *testing.B) {
	const n = 4
	c := newCluster(b, n, nil)
	variants := []struct {
		name            string
		steps, overGRPC bool
	}{
		{"lanes", true, false},
		{"grpc-steps", true, true},
		{"grpc-general", false, true},
	}
	for range 2 {
		for _, v := range variants {
			b.Run(v.name, func(b *testing.B) {
				useRunSteps = v.steps
				defer func() { useRunSteps = true }()
				cpu0 := cpuTime()
				c.each(b, func(r int, g *Group) error {
					buf := make([]float32, 1024)
					for range b.N {
						if err := g.AllReduceWith(context.Background(), buf, ReduceOptions{SmallOverGRPC: v.overGRPC}); err != nil {
							return err
						}
					}
					return nil
				})
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*n), "cpu-ns/member-op")
			})
		}
	}
}
