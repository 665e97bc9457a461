package transport

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/rawsock"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// laneWorkers starts two workers holding experts e%2 of one layer (tagged
// compute) and returns them with the placement over them.
func laneWorkers(t *testing.T, cfg func(id string) ServerConfig) ([]*testWorker, *cluster.Placement) {
	const L, E, layer = 2, 4, 1
	full := func() *expert.Store { return layerStore(layer, E) }
	w0 := startWorker(t, "w0", full(), cfg("w0"), tagHook(0))
	w1 := startWorker(t, "w1", full(), cfg("w1"), tagHook(1))
	ws := []*testWorker{w0, w1}
	return ws, placement(1, L, E, func(l int) bool { return l == layer }, ws, func(_, e int) []int { return []int{e % 2} })
}

// exchangeTagged runs n calls of a 16-token layer through ex and checks
// every row came back from its owner.
func exchangeTagged(t *testing.T, ex *RemoteExecutor, n int) {
	t.Helper()
	const E, D, layer = 4, 16, 1
	plan := route(16, E, 2, 5)
	x := taggedInput(0, 16, D, 9)
	y := make([]float32, plan.Len()*D)
	for i := 0; i < n; i++ {
		if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
			t.Fatal(err)
		}
		checkTagged(t, 0, layer, plan, x, y, D, func(e int) []int { return []int{e % 2} })
	}
}

// Expert requests go over lanes by default, one persistent lane per
// destination, and over gRPC streams with GRPCOnly; both give the same
// rows from the same owners.
func TestLanesCarryExchangesByDefault(t *testing.T) {
	ws, pl := laneWorkers(t, func(string) ServerConfig { return ServerConfig{Hidden: 16} })
	exchangeTagged(t, NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{})), 20)
	for _, w := range ws {
		if l, s := w.srv.LanesOpened(), w.srv.Streams(); l != 1 || s != 1 {
			t.Errorf("%s: 20 calls opened %d lanes and %d streams, want 1 lane (one persistent stream)", w.id, l, s)
		}
	}
	exchangeTagged(t, NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{GRPCOnly: true})), 20)
	for _, w := range ws {
		if l, s := w.srv.LanesOpened(), w.srv.Streams(); l != 1 || s != 2 {
			t.Errorf("%s: after a GRPCOnly pool: %d lanes and %d streams, want still 1 lane and one more (gRPC) stream", w.id, l, s)
		}
	}
	t.Setenv("SWITCHYARD_EXPERT_LANES", "0")
	p := newPool(t, ClientConfig{})
	if !p.Config().GRPCOnly {
		t.Error("SWITCHYARD_EXPERT_LANES=0 did not make the pool GRPCOnly")
	}
}

// A worker whose listener serves gRPC only (the service registered on a
// server of its own, as Register allows; or an older worker) gets gRPC
// streams: the lane's hello goes unanswered, and the pool remembers.
func TestLaneFallsBackToGRPCOnlyListener(t *testing.T) {
	const D = 16
	store := taggedStore()
	for e := 0; e < 4; e++ {
		store.Put(expert.ID{Layer: 1, Expert: e}, &expert.FFN{})
	}
	var ws []*testWorker
	for i, id := range []cluster.WorkerID{"w0", "w1"} {
		srv, err := NewExpertServer(store, ServerConfig{Worker: id, Model: testModel, Hidden: D})
		if err != nil {
			t.Fatal(err)
		}
		srv.compute = tagHook(i)
		g := grpc.NewServer(srv.ServerOptions()...)
		srv.Register(g)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go g.Serve(lis)
		t.Cleanup(func() { g.Stop(); srv.Stop() })
		ws = append(ws, &testWorker{id: id, addr: lis.Addr().String(), srv: srv})
	}
	pl := placement(1, 2, 4, func(l int) bool { return l == 1 }, ws, func(_, e int) []int { return []int{e % 2} })
	pool := newPool(t, ClientConfig{})
	exchangeTagged(t, NewRemoteExecutor(NewStaticPlacement(pl), pool), 5)
	for _, w := range ws {
		if l := w.srv.LanesOpened(); l != 0 {
			t.Errorf("%s: %d lanes on a gRPC-only listener", w.id, l)
		}
		pr, err := pool.peer(w.id, w.addr)
		if err != nil {
			t.Fatal(err)
		}
		if time.Until(time.Unix(0, pr.noLanesUntil.Load())) <= 0 {
			t.Errorf("%s: the pool did not remember that it serves no lanes", w.id)
		}
	}
}

// Over mutual TLS, lanes run inside TLS (ALPN switchyard-experts/1) and
// authorize like gRPC: a front end is served, a worker calling the
// serving experts is refused with PermissionDenied, a certificate from
// another CA fails the handshake.
func TestLaneOverMutualTLS(t *testing.T) {
	ca, err := auth.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	ws, pl := laneWorkers(t, func(id string) ServerConfig {
		return ServerConfig{Hidden: 16, TLS: tlsCreds(t, ca, auth.RoleWorker, id)}
	})
	fe := tlsCreds(t, ca, auth.RoleFrontend, "fe")
	exchangeTagged(t, NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{TLS: fe})), 5)
	for _, w := range ws {
		if l := w.srv.LanesOpened(); l != 1 {
			t.Errorf("%s: %d lanes over TLS, want 1", w.id, l)
		}
	}
	plan := route(4, 4, 2, 1)
	x := taggedInput(0, 4, 16, 1)
	y := make([]float32, plan.Len()*16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wrk := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{TLS: tlsCreds(t, ca, auth.RoleWorker, "w9")}))
	err = wrk.Compute(ctx, 1, plan, x, 16, y)
	if !strings.Contains(err.Error(), "may not call the serving experts") {
		t.Errorf("a worker calling the serving experts over a lane: %v, want a PermissionDenied naming the rule", err)
	}
	other, err := auth.NewCA("stranger")
	if err != nil {
		t.Fatal(err)
	}
	str := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{TLS: tlsCreds(t, other, auth.RoleFrontend, "fe")}))
	if err := str.Compute(ctx, 1, plan, x, 16, y); err == nil {
		t.Error("a front end of another CA was served")
	}
	for _, w := range ws {
		if l := w.srv.LanesOpened(); l > 3 {
			t.Errorf("%s: %d lanes opened; the stranger's must not count", w.id, l)
		}
	}
}

// laneDial opens a raw connection to w and sends raw after the magic.
func laneDial(t *testing.T, w *testWorker, raw []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", w.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(append([]byte(expertLaneMagic), raw...)); err != nil {
		t.Fatal(err)
	}
	return c
}

func laneMsgBytes(typ byte, meta, payload []byte) []byte {
	b := []byte{typ}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(meta)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(append(b, meta...), payload...)
}

// Malformed lanes end their connection (or their stream with a clear
// status) and cost the worker nothing else: oversized lengths, a first
// message that is not a hello, garbage where a frame should be, a hello
// with the wrong model; a good caller is served throughout.
func TestLaneRefusesMalformedInput(t *testing.T) {
	ws, pl := laneWorkers(t, func(string) ServerConfig { return ServerConfig{Hidden: 16} })
	w := ws[0]
	hello := laneMsgBytes(laneHello, encodeMD(metadata.Pairs(identity{protocol: cluster.ProtocolVersion, model: testModel}.pairs()...)), nil)
	closed := func(name string, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("%s: connection did not end cleanly: %v", name, err)
		}
	}
	// Lengths over the limits, before any allocation.
	huge := []byte{laneHello, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}
	closed("oversized hello", laneDial(t, w, huge))
	closed("frame before hello", laneDial(t, w, laneMsgBytes(laneFrame, nil, nil)))
	closed("malformed metadata", laneDial(t, w, laneMsgBytes(laneHello, []byte("key-without-value"), nil)))

	// After a good hello: garbage in a frame's header is a bad request.
	c := laneDial(t, w, append(append([]byte{}, hello...), laneMsgBytes(laneFrame, []byte{0xff, 0xff, 0xff}, nil)...))
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var codesSeen []codes.Code
	for {
		typ, meta, _, err := readLane(r, 1<<20, nil)
		if err != nil {
			break
		}
		if typ == laneStatus {
			st := &spb.Status{}
			if err := proto.Unmarshal(meta, st); err != nil {
				t.Fatal(err)
			}
			codesSeen = append(codesSeen, codes.Code(st.Code))
		}
	}
	if len(codesSeen) != 1 || codesSeen[0] == codes.OK {
		t.Errorf("garbage frame: statuses %v, want one error status", codesSeen)
	}

	// A hello for another model: the stream's first request is refused
	// with ErrIncompatible, over a real client.
	pool := newPool(t, ClientConfig{Model: "olmoe-ffffffffffff"})
	pr, err := pool.peer(w.id, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	l, err := pool.dialLane(context.Background(), pr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.conn.Close()
	if err := l.Send(&pb.ExpertFrame{RequestId: 1, Last: true, Experts: []int32{0}, Rows: []int32{1}, Dtype: pb.DType_DTYPE_F32, Shape: []int64{1, 16}, Payload: make([]byte, 64)}); err != nil {
		t.Fatal(err)
	}
	_, err = l.Recv()
	if err := fromRPCError(err); !errors.Is(err, ErrIncompatible) || status.Code(err) != codes.FailedPrecondition {
		t.Errorf("wrong model over a lane: %v (code %v), want ErrIncompatible / FailedPrecondition", err, status.Code(err))
	}
	exchangeTagged(t, NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{})), 3)
}

// A frame survives the lane's encoding: header fields and payload.
func TestLaneFrameRoundTrip(t *testing.T) {
	f := &pb.ExpertFrame{RequestId: 7, Layer: 3, Experts: []int32{1, 5}, Rows: []int32{2, 1}, Shape: []int64{3, 4},
		Dtype: pb.DType_DTYPE_F32, Source: "fe", Traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
		ServedMicros: 99, Last: true, Payload: []byte("0123456789abcdef0123456789abcdef0123456789ab")}
	var buf bytes.Buffer
	w := &laneWriter{conn: &bufConn{buf: &buf}}
	if err := writeFrame(w, f); err != nil {
		t.Fatal(err)
	}
	if len(f.Payload) == 0 {
		t.Fatal("writeFrame cleared the caller's payload")
	}
	typ, meta, payload, err := readLane(bufio.NewReader(&buf), 1<<10, nil)
	if err != nil || typ != laneFrame {
		t.Fatalf("read: type %d, %v", typ, err)
	}
	got, err := readFrame(meta, payload)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, f) {
		t.Errorf("round trip: %v, want %v", got, f)
	}
	md := metadata.Pairs("a", "1", "b", "2", "a", "3")
	back, err := decodeMD(encodeMD(md))
	if err != nil || !slices.Equal(back.Get("a"), []string{"1", "3"}) || !slices.Equal(back.Get("b"), []string{"2"}) {
		t.Errorf("metadata round trip: %v, %v", back, err)
	}
	if _, _, _, err := readLane(bufio.NewReader(bytes.NewReader(laneMsgBytes(laneFrame, nil, make([]byte, 2<<10)))), 1<<10, nil); err == nil {
		t.Error("a payload over the limit was read")
	}
}

// FuzzLaneMessages: whatever bytes arrive, the lane's reader and decoders
// return errors, never panic, and never allocate more than the limits.
func FuzzLaneMessages(f *testing.F) {
	f.Add(laneMsgBytes(laneHello, encodeMD(metadata.Pairs("k", "v")), nil))
	f.Add(laneMsgBytes(laneFrame, []byte{0x08, 0x01}, []byte("abcd")))
	f.Add([]byte{laneStatus, 1, 0, 0, 0, 0, 0, 0, 0, 0x08})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			typ, meta, payload, err := readLane(r, 1<<16, lanePayloads.get)
			if err != nil {
				return
			}
			if len(meta) > laneMaxMeta || len(payload) > 1<<16 {
				t.Fatalf("read %d + %d bytes past the limits", len(meta), len(payload))
			}
			switch typ {
			case laneHello, laneHeader:
				md, err := decodeMD(meta)
				if err == nil {
					if _, err := decodeMD(encodeMD(md)); err != nil {
						t.Fatalf("re-encoding decoded metadata: %v", err)
					}
				}
			case laneFrame:
				if fr, err := readFrame(meta, payload); err == nil && !bytes.Equal(fr.Payload, payload) {
					t.Fatal("frame payload differs from the message's")
				}
			}
		}
	})
}

// bufConn is a net.Conn writing into a buffer (for laneWriter in tests).
type bufConn struct {
	net.Conn
	buf *bytes.Buffer
}

func (c *bufConn) Write(p []byte) (int, error) { return c.buf.Write(p) }

// hungAndTagged starts two workers holding experts 0..experts-1 of layer
// (width d): w0 never answers (its compute blocks until the test ends),
// w1 answers with tagged rows.
func hungAndTagged(t *testing.T, layer, experts, d int) (w0, w1 *testWorker) {
	release := make(chan struct{})
	hung := func(expert.ID, *expert.FFN, []float32, int, []float32) { <-release }
	w0 = startWorker(t, "w0", layerStore(layer, experts), ServerConfig{Hidden: d}, hung)
	w1 = startWorker(t, "w1", layerStore(layer, experts), ServerConfig{Hidden: d}, tagHook(1))
	t.Cleanup(func() { close(release) }) // before the workers stop (cleanups run last first)
	return w0, w1
}

// An answer that arrived before its attempt's deadline is kept however
// late the caller reads it: here the first destination hangs until the
// shared attempt deadline, and only then is the second destination's
// answer (there for ~300 ms already, its lane aborted by the same
// deadline) read. Its rows must count, and the hung destination's rows
// go to the other copy. (chaos found this: SIGSTOP of one copy's worker
// failed requests whose other destination had answered.)
func TestAbortedLaneKeepsArrivedAnswer(t *testing.T) {
	const L, E, D, layer = 2, 2, 16, 1
	w0, w1 := hungAndTagged(t, layer, E, D)
	// Expert 0: w0 first (it hangs), expert 1: w1 first.
	pl := placement(1, L, E, func(l int) bool { return l == layer }, []*testWorker{w0, w1}, func(_, e int) []int { return []int{e, 1 - e} })
	for i := 0; i < 5; i++ {
		pool := newPool(t, ClientConfig{AttemptTimeout: 300 * time.Millisecond, Worker: cluster.WorkerID(fmt.Sprint("c", i))})
		ex := NewRemoteExecutor(NewStaticPlacement(pl), pool)
		plan := route(8, E, 2, uint64(i))
		x := taggedInput(0, 8, D, uint64(i))
		y := make([]float32, plan.Len()*D)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := ex.Compute(ctx, layer, plan, x, D, y)
		cancel()
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{1} })
	}
}

// polledReads sums the polling reads of the lanes' connections: the
// pool's idle lanes to ws and the workers' accepted lanes.
func polledReads(t *testing.T, pool *Pool, ws []*testWorker) (client, server uint64) {
	t.Helper()
	for _, w := range ws {
		pr, err := pool.peer(w.id, w.addr)
		if err != nil {
			t.Fatal(err)
		}
		pr.smu.Lock()
		for _, st := range pr.idle {
			if lc, ok := st.s.(*laneClient); ok {
				if pc := pollConn(lc.conn); pc != nil {
					p, _ := pc.Reads()
					client += p
				}
			}
		}
		pr.smu.Unlock()
		w.srv.lanes.mu.Lock()
		for c := range w.srv.lanes.conns {
			if pc := pollConn(c); pc != nil {
				p, _ := pc.Reads()
				server += p
			}
		}
		w.srv.lanes.mu.Unlock()
	}
	return client, server
}

// With LanePoll on both sides (from the environment here), the caller
// polls its lane for the answer and the owner's lane reader for the next
// request, plain and under mutual TLS, with the same rows as blocking
// lanes; an attempt's deadline still ends a caller's poll at once (the
// hung copy's rows go to the other copy long before the poll would end).
func TestPolledLanes(t *testing.T) {
	if !rawsock.OK {
		t.Skip("lanes poll only on Linux")
	}
	t.Setenv(LanePollEnv, "1m")
	ca, err := auth.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"plain", false}, {"mutual TLS", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ws, pl := laneWorkers(t, func(id string) ServerConfig {
				cfg := ServerConfig{Hidden: 16}
				if tc.tls {
					cfg.TLS = tlsCreds(t, ca, auth.RoleWorker, id)
				}
				return cfg
			})
			cc := ClientConfig{}
			if tc.tls {
				cc.TLS = tlsCreds(t, ca, auth.RoleFrontend, "fe")
			}
			pool := newPool(t, cc)
			if got := pool.Config().LanePoll; got != time.Minute {
				t.Fatalf("pool LanePoll %v from %s=1m", got, LanePollEnv)
			}
			exchangeTagged(t, NewRemoteExecutor(NewStaticPlacement(pl), pool), 20)
			cl, sv := polledReads(t, pool, ws)
			// Each of 20 calls reads at least one answer from each
			// destination; each owner reads at least one request a call.
			if cl < 40 || sv < 40 {
				t.Errorf("reads that found data while polling: caller %d, owners %d; want >= 40 each", cl, sv)
			}
		})
	}
	t.Run("deadline ends the poll", func(t *testing.T) {
		const E, D, layer = 2, 16, 1
		w0, w1 := hungAndTagged(t, layer, E, D)
		pl := placement(1, 2, E, func(l int) bool { return l == layer }, []*testWorker{w0, w1}, func(_, e int) []int { return []int{0, 1} })
		ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{AttemptTimeout: 200 * time.Millisecond}))
		plan := route(8, E, 2, 3)
		x := taggedInput(0, 8, D, 3)
		y := make([]float32, plan.Len()*D)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		if err := ex.Compute(ctx, layer, plan, x, D, y); err != nil {
			t.Fatalf("with w0 hung: %v (the minute's poll outlived the attempt?)", err)
		}
		if took := time.Since(start); took > 15*time.Second {
			t.Errorf("the call took %v: the attempt's deadline did not end the caller's poll", took)
		}
		checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{1} })
	})
}
