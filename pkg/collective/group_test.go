package collective

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/allreduce"
)

// tagged is rank r's input: r+1 everywhere plus a position tag, so a
// misplaced chunk changes the sum. Sums stay exact in float32.
func tagged(r, L int) []float32 {
	x := make([]float32, L)
	for i := range x {
		x[i] = float32(r+1) + 16*float32(i%1021)
	}
	return x
}

func wantTagged(n, i int) float32 { return float32(n*(n+1)/2) + float32(n)*16*float32(i%1021) }

func TestAllReduceTagged(t *testing.T) {
	checkLeaks(t)
	const chunk = 4 << 10 // 1024 float32: sizes below cross chunk boundaries
	for _, n := range []int{2, 3, 4, 5, 8} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			c := newCluster(t, n, func(c *Config) { c.ChunkBytes = chunk })
			sizes := []int{1, n - 1, n + 1, 1000, 1024*n + 3, 5*1024*n - 1, 70_001}
			for _, L := range sizes {
				for _, alg := range []allreduce.Algorithm{allreduce.Auto, allreduce.Ring, allreduce.RecursiveDoubling, allreduce.Tree} {
					if L == 0 {
						continue
					}
					c.each(t, func(r int, g *Group) error {
						return reduceTagged(g, L, ReduceOptions{Algorithm: alg})
					})
				}
			}
		})
	}
}

func TestAllReduceBF16(t *testing.T) {
	checkLeaks(t)
	for _, n := range []int{3, 4} {
		c := newCluster(t, n, func(c *Config) { c.ChunkBytes = 4 << 10; c.Format = allreduce.BF16 })
		for _, L := range []int{100, 10_007} { // recursive doubling, ring
			inputs := make([][]float32, n)
			exact, mag := make([]float64, L), make([]float64, L)
			rng := rand.New(rand.NewSource(int64(L)))
			for r := range n {
				inputs[r] = make([]float32, L)
				for i := range inputs[r] {
					v := float32(rng.NormFloat64())
					inputs[r][i] = v
					exact[i] += float64(v)
					mag[i] += math.Abs(float64(v))
				}
			}
			c.each(t, func(r int, g *Group) error { return g.AllReduce(context.Background(), inputs[r]) })
			for i := range L {
				tol := float64(2*n) * math.Ldexp(1, -9) * mag[i]
				if d := math.Abs(float64(inputs[0][i]) - exact[i]); d > tol {
					t.Fatalf("n=%d L=%d element %d: %v, exact %v, |diff| %g > %g", n, L, i, inputs[0][i], exact[i], d, tol)
				}
				for r := 1; r < n; r++ {
					if math.Float32bits(inputs[r][i]) != math.Float32bits(inputs[0][i]) {
						t.Fatalf("n=%d L=%d element %d: rank %d has %v, rank 0 %v", n, L, i, r, inputs[r][i], inputs[0][i])
					}
				}
			}
		}
	}
}

// blockTag fills the block from r to s with (r, s, index) records.
func blockTag(r, s, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		word := uint32(r)<<24 | uint32(s)<<16 | uint32(j/4)&0xffff
		b[j] = byte(word >> (8 * (j % 4)))
	}
	return b
}

func TestAllToAllTagged(t *testing.T) {
	checkLeaks(t)
	const chunk = 4 << 10
	for _, n := range []int{2, 3, 4, 5, 8} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			c := newCluster(t, n, func(c *Config) { c.ChunkBytes = chunk })
			recvs := make([][][]byte, n)
			for round := range 3 { // reuses the receive buffers
				size := func(r, s int) int { return ((r*7 + s*3 + round) % 5) * (chunk*3/2 + 1) } // 0 .. ~6 chunks
				c.each(t, func(r int, g *Group) error {
					send := make([][]byte, n)
					for s := range n {
						send[s] = blockTag(r, s, size(r, s))
					}
					var err error
					recvs[r], err = g.AllToAll(context.Background(), send, recvs[r])
					if err != nil {
						return err
					}
					for s := range n {
						if want := blockTag(s, r, size(s, r)); string(recvs[r][s]) != string(want) {
							return fmt.Errorf("round %d: block from %d: %d bytes, want %d (tagged %d->%d)", round, s, len(recvs[r][s]), len(want), s, r)
						}
					}
					return nil
				})
			}
		})
	}
}

// TestMixedOperations interleaves both operations on one group.
func TestMixedOperations(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, 4, func(c *Config) { c.ChunkBytes = 4 << 10 })
	c.each(t, func(r int, g *Group) error {
		for i := range 5 {
			buf := tagged(r, 3000+i)
			if err := g.AllReduce(context.Background(), buf); err != nil {
				return err
			}
			if buf[2999] != wantTagged(4, 2999) {
				return fmt.Errorf("iteration %d: wrong sum %v", i, buf[2999])
			}
			send := [][]byte{blockTag(r, 0, 10), blockTag(r, 1, 10000), blockTag(r, 2, 0), blockTag(r, 3, 5)}
			if _, err := g.AllToAll(context.Background(), send, nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestStalledPeer freezes rank 2's network in the middle of an all-reduce:
// every member's operation fails within its deadline, with an error that
// names rank 2 (as the peer it waited for, or as not answering pings), and
// the group stays broken afterwards.
func TestStalledPeer(t *testing.T) {
	checkLeaks(t)
	const n, stalled = 4, 2
	c := newCluster(t, n, func(c *Config) { c.ChunkBytes = 64 << 10; c.ProbeTimeout = 200 * time.Millisecond })
	c.nets[stalled].PauseAfter(300 << 10) // of a 4 MiB all-reduce: ~6 MiB in per member
	const timeout = 2 * time.Second
	start := time.Now()
	errs := c.try(func(r int, g *Group) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return g.AllReduce(ctx, tagged(r, 1<<20))
	})
	elapsed := time.Since(start)
	select {
	case <-c.nets[stalled].paused:
	default:
		t.Fatal("rank 2 never paused: the operation finished first")
	}
	if elapsed > timeout+time.Second {
		t.Errorf("operations returned after %v, deadline %v", elapsed, timeout)
	}
	name := fmt.Sprintf("rank %d (%s)", stalled, c.groups[stalled].cfg.Peers[stalled])
	for r, err := range errs {
		if err == nil {
			t.Fatalf("rank %d: no error", r)
		}
		t.Logf("rank %d: %v", r, err)
		var oe *OpError
		if !errors.As(err, &oe) {
			t.Fatalf("rank %d: %T is not an *OpError", r, err)
		}
		if r == stalled {
			continue // it cannot tell who is at fault; it only must not hang
		}
		named := oe.Peer == stalled
		for _, p := range oe.Unresponsive {
			named = named || p.Rank == stalled
		}
		if !named {
			t.Errorf("rank %d: error blames neither rank %d nor lists it as unresponsive", r, stalled)
		}
		if !strings.Contains(err.Error(), name) {
			t.Errorf("rank %d: error does not name %s", r, name)
		}
	}
	c.nets[stalled].Resume()
	for r, g := range c.groups {
		if err := g.AllReduce(context.Background(), make([]float32, 10)); !errors.Is(err, ErrBroken) {
			t.Errorf("rank %d: after a failure got %v, want ErrBroken", r, err)
		}
	}
}

// TestPeerCrash closes one member mid-operation: the others fail at once
// (long before their deadline), naming it.
func TestPeerCrash(t *testing.T) {
	checkLeaks(t)
	const n, crashed = 3, 1
	c := newCluster(t, n, func(c *Config) { c.ChunkBytes = 64 << 10 })
	c.nets[crashed].PauseAfter(200 << 10)
	go func() {
		<-c.nets[crashed].paused
		c.nets[crashed].CloseAll() // the process dies: the kernel closes its sockets
		c.groups[crashed].Close()
	}()
	start := time.Now()
	errs := c.try(func(r int, g *Group) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return g.AllReduce(ctx, tagged(r, 1<<20))
	})
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v: peers waited for the deadline instead of failing fast", d)
	}
	for r, err := range errs {
		t.Logf("rank %d: %v", r, err)
		if err == nil {
			t.Fatalf("rank %d: no error", r)
		}
		if r != crashed && !strings.Contains(err.Error(), fmt.Sprintf("rank %d", crashed)) {
			t.Errorf("rank %d: error does not name rank %d", r, crashed)
		}
	}
}

// TestCancel cancels an operation that cannot finish (rank 0 never joins):
// the others return promptly with context.Canceled.
func TestCancel(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, 3, nil)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 2)
	go func() {
		<-started
		<-started
		cancel()
	}()
	start := time.Now()
	errs := c.try(func(r int, g *Group) error {
		if r == 0 {
			return nil
		}
		started <- struct{}{}
		return g.AllReduce(ctx, make([]float32, 1<<20))
	})
	for r, err := range errs[1:] {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("rank %d: %v, want context.Canceled", r+1, err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancellation took %v", d)
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := New(Config{Rank: 3, Peers: []string{"a", ""}, ChunkBytes: 10, Window: 1, Format: 9}, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"Group is empty", "Rank 3", "Peers[1]", "ChunkBytes = 10", "Window = 1", "Format"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not mention %q", err, want)
		}
	}
}

func TestConnectRefusesOtherGroup(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, 2, nil)
	// A stranger claiming rank 1 of another group cannot attach to rank 0.
	addrs := []string{c.groups[0].cfg.Peers[0], "127.0.0.1:1"}
	lis := mustListen(t)
	g, err := New(Config{Group: "other", Rank: 1, Peers: addrs}, lis)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = g.Connect(ctx)
	if err == nil || !strings.Contains(err.Error(), "rank 0") || !strings.Contains(err.Error(), `group "other"`) {
		t.Fatalf("Connect: %v", err)
	}
}

// TestShutdown: members that shut down right after their last operation
// do not cut off a peer still waiting for acknowledgements, and every
// member's Shutdown returns once all have called it.
func TestShutdown(t *testing.T) {
	checkLeaks(t)
	for range 3 {
		c := newCluster(t, 3, nil)
		c.each(t, func(r int, g *Group) error {
			if err := g.AllReduce(context.Background(), make([]float32, 1)); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return g.Shutdown(ctx)
		})
	}
}

// TestStalledPeerSmall stops rank 1 before a small (recursive-doubling)
// all-reduce and an all-to-all of small blocks: both fail by the deadline
// on every other member, naming rank 1.
func TestStalledPeerSmall(t *testing.T) {
	checkLeaks(t)
	for _, op := range []string{"allreduce", "alltoall"} {
		const n, stalled = 5, 1
		c := newCluster(t, n, func(c *Config) { c.ProbeTimeout = 100 * time.Millisecond })
		c.nets[stalled].Pause()
		const timeout = time.Second
		start := time.Now()
		errs := c.try(func(r int, g *Group) error {
			if r == stalled {
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if op == "alltoall" {
				_, err := g.AllToAll(ctx, make([][]byte, n), nil)
				return err
			}
			return g.AllReduce(ctx, make([]float32, 1024))
		})
		if d := time.Since(start); d > timeout+time.Second {
			t.Errorf("%s: returned after %v, deadline %v", op, d, timeout)
		}
		name := fmt.Sprintf("rank %d (%s)", stalled, c.groups[0].cfg.Peers[stalled])
		for r, err := range errs {
			if r == stalled {
				continue
			}
			if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(fmt.Sprint(err), "aborted") {
				t.Errorf("%s rank %d: %v, want a timeout (or a peer's abort)", op, r, err)
			}
			if !strings.Contains(fmt.Sprint(err), name) {
				t.Errorf("%s rank %d: %v does not name %s", op, r, err, name)
			}
		}
		t.Logf("%s rank 0: %v", op, errs[0])
		c.close()
	}
}
