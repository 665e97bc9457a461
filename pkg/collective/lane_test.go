package collective

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/pkg/allreduce"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// delivered sums, over every member, the chunks its gRPC inboxes and its
// lane inboxes received.
func (c *members) delivered() (grpc, lanes int64) {
	for _, g := range c.groups {
		for r := range g.n {
			if r != g.rank {
				grpc += g.in[r].delivered.Load()
				lanes += g.lin[r].delivered.Load()
			}
		}
	}
	return grpc, lanes
}

// reduceTagged all-reduces member g's tagged buffer of L elements and
// checks every sum.
func reduceTagged(g *Group, L int, opt ReduceOptions) error {
	buf := tagged(g.Rank(), L)
	if err := g.AllReduceWith(context.Background(), buf, opt); err != nil {
		return err
	}
	for i, v := range buf {
		if w := wantTagged(g.Size(), i); v != w {
			return fmt.Errorf("%+v L=%d: element %d = %v, want %v", opt, L, i, v, w)
		}
	}
	return nil
}

// TestSmallAllReducePath: step-by-step all-reduces (recursive doubling,
// tree, and a ring of one chunk a step) travel on the lanes by default and
// on the gRPC streams with SmallOverGRPC, with the same (exact) sums
// either way; a ring of several chunks a step always uses gRPC.
func TestSmallAllReducePath(t *testing.T) {
	checkLeaks(t)
	const n = 5
	for _, overGRPC := range []bool{false, true} {
		c := newCluster(t, n, func(c *Config) { c.SmallOverGRPC = overGRPC })
		g0, l0 := c.delivered()
		for _, alg := range []allreduce.Algorithm{allreduce.RecursiveDoubling, allreduce.Tree} {
			for _, L := range []int{1, 3, 1000} {
				c.each(t, func(r int, g *Group) error {
					return reduceTagged(g, L, ReduceOptions{Algorithm: alg})
				})
			}
		}
		// A ring whose shares fit one chunk (1 MiB): 4 MiB over 5 members
		// sends 0.8 MiB frames, larger than laneMaxPayload.
		for _, L := range []int{1000, 1 << 20} {
			c.each(t, func(r int, g *Group) error {
				return reduceTagged(g, L, ReduceOptions{Algorithm: allreduce.Ring})
			})
		}
		g1, l1 := c.delivered()
		if overGRPC && (g1 == g0 || l1 != l0) {
			t.Errorf("SmallOverGRPC: gRPC delivered %d, lanes %d; want all on gRPC", g1-g0, l1-l0)
		}
		if !overGRPC && (l1 == l0 || g1 != g0) {
			t.Errorf("lanes: gRPC delivered %d, lanes %d; want all on the lanes", g1-g0, l1-l0)
		}
		// A ring all-reduce of 8 MiB (1.6 MiB shares) pipelines several
		// chunks a step: gRPC only.
		c.each(t, func(r int, g *Group) error {
			return reduceTagged(g, 2<<20, ReduceOptions{Algorithm: allreduce.Ring})
		})
		if g2, l2 := c.delivered(); g2 == g1 || l2 != l1 {
			t.Errorf("ring of several chunks a step: gRPC delivered %d, lanes %d; want all on gRPC", g2-g1, l2-l1)
		}
		c.close()
	}
}

// TestLaneRawWrite: with plain TCP connections (no test wrapper) lanes
// write and read with raw, polling system calls on Linux. Frames larger
// than laneMaxPayload, up to the largest message (16 MiB here), are
// written beside the step's receives: two members exchanging 16 MiB at
// once, more than loopback's socket buffers hold, would each block in
// write(2) before reading if they were written first.
func TestLaneRawWrite(t *testing.T) {
	checkLeaks(t)
	const n = 3
	addrs := make([]string, n)
	liss := make([]net.Listener, n)
	for r := range n {
		liss[r] = mustListen(t)
		addrs[r] = liss[r].Addr().String()
	}
	c := &members{groups: make([]*Group, n), nets: make([]*faultNet, n)}
	for r := range n {
		g, err := New(Config{Group: t.Name(), Rank: r, Peers: addrs, ChunkBytes: 16 << 20}, liss[r])
		if err != nil {
			t.Fatal(err)
		}
		c.groups[r], c.nets[r] = g, newFaultNet()
	}
	defer c.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.each(t, func(r int, g *Group) error { return g.Connect(ctx) })
	for _, g := range c.groups {
		for r, l := range g.lanes {
			if r != g.rank && l.raw != (runtime.GOOS == "linux") {
				t.Errorf("rank %d -> %d: raw write %v on %s", g.rank, r, l.raw, runtime.GOOS)
			}
			if r != g.rank && l.raw && g.lin[r].rc == nil {
				t.Errorf("rank %d <- %d: no raw reads", g.rank, r)
			}
		}
	}
	// Up to laneMaxPayload (8192 float32) on the lanes.
	for _, L := range []int{1, 1000, laneMaxPayload / 4} {
		c.each(t, func(r int, g *Group) error {
			return reduceTagged(g, L, ReduceOptions{Algorithm: allreduce.RecursiveDoubling})
		})
	}
	g0, l0 := c.delivered()
	if l0 == 0 || g0 != 0 {
		t.Errorf("gRPC delivered %d, lanes %d; want all on the lanes", g0, l0)
	}
	// A forced recursive doubling of 16 MiB: 16 MiB frames both ways
	// between ranks 0 and 1 (the pair of 3 members' first step).
	c.each(t, func(r int, g *Group) error {
		return reduceTagged(g, 4<<20, ReduceOptions{Algorithm: allreduce.RecursiveDoubling})
	})
	if g1, l1 := c.delivered(); l1 == l0 || g1 != g0 {
		t.Errorf("16 MiB: gRPC delivered %d, lanes %d; want all on the lanes", g1-g0, l1-l0)
	}
}

// TestLaneDemux: strangers on the shared listener (garbage, a silent
// connection, a lane hello for another group or a taken rank) are turned
// away without disturbing the members, and get a reason when they spoke
// the lane protocol.
func TestLaneDemux(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, 3, nil)
	addr := c.groups[0].cfg.Peers[0]
	dial := func() net.Conn {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	dial() // silent: must not block other connections
	junk := dial()
	if _, err := junk.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	hello := func(h *pb.CollectiveHello) string {
		conn := dial()
		b, _ := proto.Marshal(h)
		if _, err := io.WriteString(conn, laneMagic); err != nil {
			t.Fatal(err)
		}
		if err := writeLaneMsg(conn, b); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		answer, err := readLaneMsg(conn)
		if err != nil {
			t.Fatalf("no answer to the lane hello: %v", err)
		}
		return string(answer)
	}
	h := c.groups[1].hello(0)
	h.Group = "other"
	if got := hello(h); !strings.Contains(got, `group "other"`) {
		t.Errorf("hello for another group: answer %q", got)
	}
	if got := hello(c.groups[1].hello(0)); !strings.Contains(got, "already has a lane") {
		t.Errorf("second lane from rank 1: answer %q", got)
	}
	h = c.groups[1].hello(0)
	h.Protocol++
	if got := hello(h); !strings.Contains(got, "protocol") {
		t.Errorf("hello with another protocol: answer %q", got)
	}
	// The members still work, small (lanes) and large (gRPC), and ping.
	for _, L := range []int{10, 300_000} {
		c.each(t, func(r int, g *Group) error {
			buf := tagged(r, L)
			if err := g.AllReduce(context.Background(), buf); err != nil {
				return err
			}
			if buf[7] != wantTagged(3, 7) {
				return fmt.Errorf("L=%d: got %v, want %v", L, buf[7], wantTagged(3, 7))
			}
			return nil
		})
	}
	if _, err := c.groups[1].Ping(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
}

// TestLanePeerCrash: a member that dies in the middle of a run of small
// all-reduces fails its peers' operations at once (not at the deadline),
// naming it.
func TestLanePeerCrash(t *testing.T) {
	checkLeaks(t)
	const n, crashed = 4, 2
	c := newCluster(t, n, nil)
	start := time.Now()
	errs := c.try(func(r int, g *Group) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := range 200 {
			if r == crashed && i == 50 {
				g.Close() // its lanes and streams close, as in a crash
				return nil
			}
			if err := g.AllReduce(ctx, tagged(r, 256)); err != nil {
				return err
			}
		}
		return nil
	})
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v: peers waited for the deadline instead of failing fast", d)
	}
	// Each survivor names the crashed member, or (when it never waited
	// on the crashed member directly: recursive doubling pairs rank 1
	// with ranks 0 and 3 only) the member it waited on, which itself
	// failed naming the crashed one: the cause is always traceable.
	name := fmt.Sprintf("rank %d", crashed)
	names := func(r int) bool { return errs[r] != nil && strings.Contains(errs[r].Error(), name) }
	direct := 0
	for r, err := range errs {
		if r == crashed {
			continue
		}
		t.Logf("rank %d: %v", r, err)
		if err == nil {
			t.Fatalf("rank %d: no error", r)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("rank %d: failed by the deadline, not at once: %v", r, err)
		}
		if names(r) {
			direct++
			continue
		}
		traced := false
		for q := range errs {
			if q != r && q != crashed && names(q) && strings.Contains(err.Error(), fmt.Sprintf("rank %d ", q)) {
				traced = true
			}
		}
		if !traced {
			t.Errorf("rank %d: its error names neither %s nor a member that failed because of it", r, name)
		}
	}
	if direct == 0 {
		t.Errorf("no member's error names %s", name)
	}
}

// readerConn is a connection that reads from r (writes are not used).
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// laneFrom returns an attached lane whose socket yields data.
func laneFrom(data []byte) *laneIn {
	l := newLaneIn(1)
	l.attach(readerConn{r: bytes.NewReader(data)})
	return l
}

// nextFrame reads one frame from a fresh lane over data.
func nextFrame(data []byte, limit int) (*pb.CollectiveChunk, bool, error) {
	return laneFrom(data).next(context.Background(), limit, 0)
}

// TestLaneFrameErrors: frames that lie about their size, carry unknown
// flags or end early are refused with a reason (laneIn.next, the reader
// the operations use).
func TestLaneFrameErrors(t *testing.T) {
	m := &pb.CollectiveChunk{Op: 7, Step: 2, Offset: 16, Total: 64, Format: pb.CollectiveFormat_COLLECTIVE_FORMAT_F32}
	frame := make([]byte, laneHeader+8)
	putLaneHeader(frame, 8, m, 0)
	copy(frame[laneHeader:], "abcdefgh")
	got, bye, err := nextFrame(frame, 1<<10)
	if err != nil || bye || got.Op != 7 || got.Step != 2 || got.Offset != 16 || got.Total != 64 || got.Format != m.Format || string(got.Payload) != "abcdefgh" {
		t.Fatalf("round trip: %v, %v, %v", got, bye, err)
	}
	cases := map[string]struct {
		frame []byte
		want  string
	}{
		"too large":  {frame, "limit is 4"},
		"truncated":  {frame[:laneHeader+3], "unexpected EOF"},
		"header cut": {frame[:10], "EOF"},
	}
	for name, tc := range cases {
		limit := 1 << 10
		if name == "too large" {
			limit = 4
		}
		if _, _, err := nextFrame(tc.frame, limit); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	flags := bytes.Clone(frame)
	binary.LittleEndian.PutUint32(flags[36:], 6)
	if _, _, err := nextFrame(flags, 1<<10); err == nil || !strings.Contains(err.Error(), "flags") {
		t.Errorf("unknown flags: %v", err)
	}
	bye0 := make([]byte, laneHeader)
	putLaneHeader(bye0, 0, &pb.CollectiveChunk{}, laneBye)
	if _, bye, err := nextFrame(bye0, 1<<10); err != nil || !bye {
		t.Errorf("goodbye: %v, %v", bye, err)
	}
	binary.LittleEndian.PutUint32(bye0, 3)
	if _, _, err := nextFrame(bye0, 1<<10); err == nil {
		t.Error("goodbye with a payload accepted")
	}
	if _, _, err := nextFrame(nil, 1<<10); !errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "aborted or died") {
		t.Errorf("empty stream: %v, want the peer's end (io.EOF)", err)
	}
	// Two frames back to back, then the end: both arrive whole, in order.
	l := laneFrom(append(bytes.Clone(frame), frame...))
	for i := range 2 {
		if got, _, err := l.next(context.Background(), 1<<10, 0); err != nil || string(got.Payload) != "abcdefgh" {
			t.Fatalf("frame %d: %v, %v", i, got, err)
		}
	}
	if _, _, err := l.next(context.Background(), 1<<10, 0); !errors.Is(err, io.EOF) {
		t.Errorf("after two frames: %v, want io.EOF", err)
	}
}

// FuzzLaneFrame: any byte stream gives frames, a goodbye or an error from
// laneIn.next, never a panic or a payload over the limit.
func FuzzLaneFrame(f *testing.F) {
	frame := make([]byte, laneHeader+4)
	putLaneHeader(frame, 4, &pb.CollectiveChunk{Op: 1, Step: 1, Total: 1}, 0)
	f.Add(frame)
	bye := make([]byte, laneHeader)
	putLaneHeader(bye, 0, &pb.CollectiveChunk{}, laneBye)
	f.Add(bye)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 10
		l := laneFrom(data)
		for {
			m, bye, err := l.next(context.Background(), limit, 0)
			if err != nil || bye {
				return
			}
			if len(m.Payload) > limit {
				t.Fatalf("payload of %d bytes over the limit", len(m.Payload))
			}
		}
	})
}
