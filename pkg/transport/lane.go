package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	grpcpeer "google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/rawsock"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/demux"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Expert lanes: the Experts stream over a bare TCP (or TLS) connection.
//
// A gRPC stream's message crosses several goroutines on each side (the
// caller, HTTP/2's writer, the reader, the handler), and where cores idle
// between messages, as they do while a decoding front end waits for its
// owners, every hand-off to a parked thread is a wake-up: on the 2-vCPU
// emulated hosts these cost a layer's exchange 4-10 times the link's round
// trip. A lane carries the same ExpertFrames, handshake and errors on a
// connection of its own: the caller writes its request with one system
// call from its own goroutine and reads the answer itself; the owner's
// connection goroutine reads the request and writes the answer. Serve
// listens for both on one port (pkg/demux tells them apart by the first
// bytes: expertLaneMagic, or gRPC's HTTP/2 preface), so addresses,
// manifests and network policies do not change.
//
// A lane is one persistent Experts stream: the client's Pool keeps idle
// lanes like idle gRPC streams, one request in flight on each. The
// server runs ExpertServer.Experts on it unchanged (laneServer implements
// the gRPC stream interfaces, with the handshake metadata, the peer's TLS
// identity and the header in its context), so checks, authorization,
// batching, tracing and errors are the same code.
//
// Wire format, after the dialer's expertLaneMagic (inside TLS when the
// cluster runs mutual TLS, ALPN expertLaneALPN): messages of
//
//	type (1 byte) | meta length (uint32 LE) | payload length (uint32 LE) | meta | payload
//
// laneHello (client, first: meta = the handshake metadata), laneAck
// (server, the answer to the hello: the dialer now knows it speaks lanes),
// laneHeader (server, before its first frame or status: meta = the
// response metadata), laneFrame (either way: meta = the ExpertFrame
// without its payload, protobuf; payload = ExpertFrame.payload),
// laneCloseSend (client: no more requests) and laneStatus (server, last:
// meta = the stream's google.rpc.Status, OK or the handler's error). A
// message over the limits (laneMaxMeta, the MaxMessageBytes of the
// receiving side for a payload) ends the connection.
const (
	expertLaneMagic = "SWYXLANE"
	expertLaneALPN  = "switchyard-experts/1"

	laneHello     = 1
	laneAck       = 2
	laneHeader    = 3
	laneFrame     = 4
	laneCloseSend = 5
	laneStatus    = 6

	laneMaxMeta = 1 << 20
	// laneSmallWrite: messages up to this size go out in one write of a
	// copied buffer; larger ones as a vectored write of header and payload.
	laneSmallWrite = 64 << 10
	// laneHandshakeTimeout bounds a connection's TLS handshake and first
	// bytes on the server (pkg/demux) and its hello.
	laneHandshakeTimeout = 10 * time.Second
	// laneRetryAfter is how long a client uses gRPC for a worker whose
	// listener did not speak lanes (an older worker, or one served through
	// Register) before it tries a lane again.
	laneRetryAfter = time.Minute
	// laneAbortGrace: how long an aborted lane's Recv still reads (what
	// has arrived already takes no longer).
	laneAbortGrace = time.Millisecond
	expertsMethod  = "/switchyard.v1.Worker/Experts"
)

// laneWriter writes lane messages to a connection, one at a time.
type laneWriter struct {
	mu   sync.Mutex
	conn net.Conn
	buf  []byte
}

func (w *laneWriter) write(typ byte, meta, payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var h [9]byte
	h[0] = typ
	binary.LittleEndian.PutUint32(h[1:5], uint32(len(meta)))
	binary.LittleEndian.PutUint32(h[5:9], uint32(len(payload)))
	if len(meta)+len(payload) <= laneSmallWrite {
		b := append(append(append(w.buf[:0], h[:]...), meta...), payload...)
		w.buf = b[:0]
		_, err := w.conn.Write(b)
		return err
	}
	bufs := net.Buffers{append(h[:], meta...), payload}
	_, err := bufs.WriteTo(w.conn)
	return err
}

// readLane reads one lane message: its type, meta and payload (fresh
// slices the caller owns; the payload from alloc when not nil, else
// make). io.EOF: the connection ended between messages.
func readLane(r *bufio.Reader, maxPayload int, alloc func(int) []byte) (typ byte, meta, payload []byte, err error) {
	var h [9]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return 0, nil, nil, err
	}
	m, p := binary.LittleEndian.Uint32(h[1:5]), binary.LittleEndian.Uint32(h[5:9])
	if m > laneMaxMeta || int64(p) > int64(maxPayload) {
		return 0, nil, nil, fmt.Errorf("lane message of %d + %d bytes exceeds the limits (%d + %d)", m, p, laneMaxMeta, maxPayload)
	}
	meta = make([]byte, m)
	if _, err = io.ReadFull(r, meta); err != nil {
		return 0, nil, nil, noEOF(err)
	}
	if p > 0 {
		if alloc != nil {
			payload = alloc(int(p))
		} else {
			payload = make([]byte, p)
		}
		if _, err = io.ReadFull(r, payload); err != nil {
			return 0, nil, nil, noEOF(err)
		}
	}
	return h[0], meta, payload, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// encodeMD encodes metadata as key NUL value NUL ... (keys in map order,
// which decodeMD does not depend on).
func encodeMD(md metadata.MD) []byte {
	var b []byte
	for k, vs := range md {
		for _, v := range vs {
			b = append(append(append(append(b, k...), 0), v...), 0)
		}
	}
	return b
}

func decodeMD(b []byte) (metadata.MD, error) {
	md := metadata.MD{}
	parts := strings.Split(string(b), "\x00")
	if len(parts)%2 != 1 || parts[len(parts)-1] != "" {
		return nil, errors.New("lane: malformed metadata")
	}
	for i := 0; i+1 < len(parts); i += 2 {
		md.Append(parts[i], parts[i+1])
	}
	return md, nil
}

// writeFrame sends f as a laneFrame (its payload by reference).
func writeFrame(w *laneWriter, f *pb.ExpertFrame) error {
	payload := f.Payload
	f.Payload = nil
	meta, err := proto.Marshal(f)
	f.Payload = payload
	if err != nil {
		return err
	}
	return w.write(laneFrame, meta, payload)
}

func readFrame(meta, payload []byte) (*pb.ExpertFrame, error) {
	f := &pb.ExpertFrame{}
	if err := proto.Unmarshal(meta, f); err != nil {
		return nil, fmt.Errorf("lane: malformed frame: %w", err)
	}
	if len(f.Payload) > 0 {
		return nil, errors.New("lane: malformed frame: payload inside the header")
	}
	f.Payload = payload
	return f, nil
}

// ---- server side ----

// laneServer is one accepted lane as a gRPC server stream of the Experts
// method (pb.Worker_ExpertsServer).
type laneServer struct {
	ctx        context.Context
	r          *bufio.Reader
	w          laneWriter
	maxPayload int
	msgs       chan laneMsg // from read; closed when the connection ends
	rerr       error        // why it ended (set before msgs closes)
	mu         sync.Mutex
	header     metadata.MD
	sentHeader bool
	// held are the payloads of the frames Recv returned since the last
	// Send (from lanePayloads). The handler copies a request's payload
	// into its rows before it answers, so each Send recycles them.
	held [][]byte
}

var _ pb.Worker_ExpertsServer = (*laneServer)(nil)

func (l *laneServer) SetHeader(md metadata.MD) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sentHeader {
		return errors.New("lane: header already sent")
	}
	l.header = metadata.Join(l.header, md)
	return nil
}

func (l *laneServer) SendHeader(md metadata.MD) error {
	if err := l.SetHeader(md); err != nil {
		return err
	}
	return l.flushHeader()
}

// flushHeader sends the header once, before the first frame or status.
func (l *laneServer) flushHeader() error {
	l.mu.Lock()
	if l.sentHeader {
		l.mu.Unlock()
		return nil
	}
	l.sentHeader = true
	md := l.header
	l.mu.Unlock()
	return l.w.write(laneHeader, encodeMD(md), nil)
}

// SetTrailer is a no-op: lanes carry no trailers (the Worker service
// sends none).
func (l *laneServer) SetTrailer(metadata.MD)       {}
func (l *laneServer) Context() context.Context     { return l.ctx }
func (l *laneServer) SendMsg(m any) error          { return l.Send(m.(*pb.ExpertFrame)) }
func (l *laneServer) Send(f *pb.ExpertFrame) error { return l.sendFrame(f) }

func (l *laneServer) sendFrame(f *pb.ExpertFrame) error {
	for _, p := range l.held {
		lanePayloads.put(p)
	}
	clear(l.held)
	l.held = l.held[:0]
	if err := l.flushHeader(); err != nil {
		return err
	}
	return writeFrame(&l.w, f)
}

func (l *laneServer) RecvMsg(m any) error { return recvInto(m, l.Recv) }

// recvInto is RecvMsg over a typed Recv: the frame received is copied
// into m, an *pb.ExpertFrame.
func recvInto(m any, recv func() (*pb.ExpertFrame, error)) error {
	f, err := recv()
	if err != nil {
		return err
	}
	proto.Reset(m.(*pb.ExpertFrame))
	proto.Merge(m.(*pb.ExpertFrame), f)
	return nil
}

// laneMsg is one message read from a lane.
type laneMsg struct {
	typ           byte
	meta, payload []byte
}

// read is the lane's reader goroutine: it hands each message to Recv (one
// at a time: a message is read only once the last one was taken, so an
// owner that is not reading holds the sender by TCP's flow control) and,
// when the connection ends, cancels the stream's context (what a gRPC
// stream's reset does: a request waiting for its batch, or a training
// request parked on its context, gives up).
func (l *laneServer) read(cancel context.CancelFunc) {
	defer close(l.msgs)
	defer cancel()
	for {
		typ, meta, payload, err := readLane(l.r, l.maxPayload, lanePayloads.get)
		if err != nil {
			l.rerr = err
			return
		}
		select {
		case l.msgs <- laneMsg{typ, meta, payload}:
		case <-l.ctx.Done():
			l.rerr = l.ctx.Err()
			return
		}
	}
}

// Recv returns the caller's next frame, io.EOF after its CloseSend, or
// the connection's error.
func (l *laneServer) Recv() (*pb.ExpertFrame, error) {
	m, ok := <-l.msgs
	if !ok {
		if l.rerr == io.EOF {
			return nil, status.Error(codes.Canceled, "lane: the caller closed the connection")
		}
		return nil, status.Errorf(codes.Canceled, "lane: %v", l.rerr)
	}
	switch m.typ {
	case laneFrame:
		if m.payload != nil {
			l.held = append(l.held, m.payload)
		}
		return readFrame(m.meta, m.payload)
	case laneCloseSend:
		return nil, io.EOF
	}
	return nil, status.Errorf(codes.InvalidArgument, "lane: unexpected message type %d from the caller", m.typ)
}

// finish ends the stream with the handler's result: its status, after
// the header if a frame carried it already or the stream ends OK (an
// error before any frame is a status alone, as gRPC's trailers-only
// response, and the caller does not check a header).
func (l *laneServer) finish(err error) {
	st, _ := status.FromError(err)
	if err == nil {
		st = status.New(codes.OK, "")
		if l.flushHeader() != nil {
			return
		}
	}
	meta, merr := proto.Marshal(st.Proto())
	if merr != nil {
		return
	}
	_ = l.w.write(laneStatus, meta, nil)
}

// laneTransportStream lets grpc.SetHeader work in a lane's handler.
type laneTransportStream struct{ l *laneServer }

func (t laneTransportStream) Method() string                  { return expertsMethod }
func (t laneTransportStream) SetHeader(md metadata.MD) error  { return t.l.SetHeader(md) }
func (t laneTransportStream) SendHeader(md metadata.MD) error { return t.l.SendHeader(md) }
func (t laneTransportStream) SetTrailer(metadata.MD) error    { return nil }

// lanes tracks a server's open lanes, to close them when it stops.
type lanes struct {
	opened atomic.Uint64 // lanes whose hello was answered
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	ctx    context.Context // ends when the server stops
	cancel context.CancelFunc
}

func (ls *lanes) add(c net.Conn) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		return false
	}
	if ls.conns == nil {
		ls.conns = map[net.Conn]struct{}{}
	}
	ls.conns[c] = struct{}{}
	return true
}

func (ls *lanes) remove(c net.Conn) {
	ls.mu.Lock()
	delete(ls.conns, c)
	ls.mu.Unlock()
}

// closeAll closes every lane and refuses new ones.
func (ls *lanes) closeAll() {
	ls.mu.Lock()
	ls.closed = true
	conns := ls.conns
	ls.conns = nil
	ls.mu.Unlock()
	if ls.cancel != nil {
		ls.cancel()
	}
	for c := range conns {
		demux.CloseConn(c)
	}
}

// serveLane runs one accepted lane (its magic read by the demux) until
// the caller closes it or the server stops.
func (s *ExpertServer) serveLane(conn net.Conn) {
	defer demux.CloseConn(conn)
	if !s.lanes.add(conn) {
		return
	}
	defer s.lanes.remove(conn)
	l := &laneServer{r: bufio.NewReaderSize(conn, 64<<10), maxPayload: s.cfg.MaxMessageBytes}
	l.w.conn = conn
	conn.SetReadDeadline(time.Now().Add(laneHandshakeTimeout))
	typ, meta, _, err := readLane(l.r, 0, nil)
	if err != nil || typ != laneHello {
		return
	}
	md, err := decodeMD(meta)
	if err != nil {
		return
	}
	conn.SetReadDeadline(time.Time{})
	if pc := pollConn(conn); pc != nil {
		pc.SetPoll(s.cfg.LanePoll)
	}
	if err := l.w.write(laneAck, nil, nil); err != nil {
		return
	}
	s.lanes.opened.Add(1)
	p := &grpcpeer.Peer{Addr: conn.RemoteAddr(), LocalAddr: conn.LocalAddr()}
	if tc, ok := conn.(*tls.Conn); ok {
		p.AuthInfo = credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	}
	ctx := metadata.NewIncomingContext(s.lanes.ctx, md)
	ctx = grpcpeer.NewContext(ctx, p)
	ctx, cancel := context.WithCancel(ctx)
	l.ctx = grpc.NewContextWithServerTransportStream(ctx, laneTransportStream{l})
	l.msgs = make(chan laneMsg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.read(cancel)
	}()
	l.finish(s.Experts(l))
	cancel()
	demux.CloseConn(conn)
	<-done
}

// pollConn returns the polling connection under conn (a lane accepted
// through rawsock.Listener, plain or under TLS), or nil.
func pollConn(conn net.Conn) *rawsock.Conn {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	pc, _ := conn.(*rawsock.Conn)
	return pc
}

// LanesOpened is the number of expert lanes callers opened to the server
// (each one persistent stream).
func (s *ExpertServer) LanesOpened() uint64 { return s.lanes.opened.Load() }

// ---- client side ----

// errNoLanes marks a worker whose listener did not answer a lane's hello
// (it serves gRPC only): the caller uses a gRPC stream.
var errNoLanes = errors.New("the worker does not serve expert lanes")

// laneClient is the caller's side of a lane as a gRPC client stream of the
// Experts method (pb.Worker_ExpertsClient).
type laneClient struct {
	ctx        context.Context
	conn       net.Conn
	r          *bufio.Reader
	w          laneWriter
	id         identity
	maxPayload int
	header     metadata.MD
	checked    bool        // the header was checked (at the first frame)
	done       bool        // the status arrived: the stream is over
	aborted    atomic.Bool // abort was called
	// held is the payload of the last frame Recv returned (from
	// lanePayloads): its reader copies it out before the next Recv, which
	// recycles it. (Send may run on another goroutine, concurrently with
	// Recv, while a long request streams out.)
	held []byte
}

// release recycles the last frame's payload.
func (l *laneClient) release() {
	if l.held != nil {
		lanePayloads.put(l.held)
		l.held = nil
	}
}

// abort ends the lane's use: a blocked Send returns at once, a blocked
// Recv within laneAbortGrace; a Recv after the abort, however much later,
// still reads what had arrived (an answer that came in before the
// caller's deadline is kept, as a gRPC stream keeps what its reader
// goroutine had received), waiting at most laneAbortGrace for more. The
// connection is closed by pstream.close.
func (l *laneClient) abort() {
	l.aborted.Store(true)
	now := time.Now()
	l.conn.SetWriteDeadline(now)
	l.conn.SetReadDeadline(now.Add(laneAbortGrace))
}

var _ pb.Worker_ExpertsClient = (*laneClient)(nil)

// dialLane opens a lane to pr (bounded by ctx): TCP, TLS when the pool has
// credentials (the worker's identity checked as for gRPC), magic, hello and
// the worker's ack. A worker that does not serve lanes gives errNoLanes;
// one that cannot be reached, a gRPC-style Unavailable error.
func (p *Pool) dialLane(ctx context.Context, pr *peer) (*laneClient, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", pr.addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Errorf(codes.Unavailable, "lane to %s: %v", pr.addr, err)
	}
	if p.cfg.LanePoll > 0 && rawsock.OK {
		raw = rawsock.Wrap(raw, p.cfg.LanePoll) // under TLS, if any
	}
	conn := raw
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	fail := func(err error) (*laneClient, error) {
		stop()
		demux.CloseConn(conn)
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, err
	}
	if p.cfg.TLS != nil {
		cfg := p.cfg.TLS.ClientConfig(auth.Is(auth.Identity{Role: auth.RoleWorker, Name: string(pr.id)}))
		cfg.NextProtos = []string{expertLaneALPN}
		tc := tls.Client(raw, cfg)
		conn = tc
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(fmt.Errorf("%w: TLS: %v", errNoLanes, err))
		}
		if tc.ConnectionState().NegotiatedProtocol != expertLaneALPN {
			return fail(errNoLanes)
		}
	}
	l := &laneClient{ctx: context.Background(), conn: conn, r: bufio.NewReaderSize(conn, 64<<10), id: p.id, maxPayload: p.cfg.MaxMessageBytes}
	l.w.conn = conn
	hello := append([]byte(expertLaneMagic), laneHello)
	meta := encodeMD(metadata.Pairs(p.id.pairs()...))
	hello = binary.LittleEndian.AppendUint32(hello, uint32(len(meta)))
	hello = binary.LittleEndian.AppendUint32(hello, 0)
	hello = append(hello, meta...)
	if _, err := conn.Write(hello); err != nil {
		return fail(fmt.Errorf("%w: %v", errNoLanes, err))
	}
	typ, _, _, err := readLane(l.r, 0, nil)
	if err != nil || typ != laneAck {
		return fail(fmt.Errorf("%w: no answer to the hello (%v)", errNoLanes, err))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	return l, nil
}

func (l *laneClient) Header() (metadata.MD, error) { return l.header, nil }
func (l *laneClient) Trailer() metadata.MD         { return nil }
func (l *laneClient) Context() context.Context     { return l.ctx }
func (l *laneClient) SendMsg(m any) error          { return l.Send(m.(*pb.ExpertFrame)) }

func (l *laneClient) CloseSend() error { return l.w.write(laneCloseSend, nil, nil) }

// Send writes f (its payload by reference, copied or written before Send
// returns). A connection error is returned as io.EOF, as gRPC does: the
// stream's status is what Recv returns.
func (l *laneClient) Send(f *pb.ExpertFrame) error {
	if err := writeFrame(&l.w, f); err != nil {
		return io.EOF
	}
	return nil
}

func (l *laneClient) RecvMsg(m any) error { return recvInto(m, l.Recv) }

// Recv returns the worker's next frame; io.EOF when it ended the stream
// with OK; its status error otherwise; Unavailable (or Canceled, once
// closed by the caller) when the connection broke. The response header is
// checked against the pool's identity when it arrives.
func (l *laneClient) Recv() (*pb.ExpertFrame, error) {
	l.release()
	if l.done {
		return nil, io.EOF
	}
	for {
		if l.aborted.Load() {
			// Whenever the caller reads after the abort, what has arrived
			// by then is still read (a deadline set at the abort may have
			// passed long before this read).
			l.conn.SetReadDeadline(time.Now().Add(laneAbortGrace))
		}
		typ, meta, payload, err := readLane(l.r, l.maxPayload, lanePayloads.get)
		if err != nil {
			if l.aborted.Load() {
				return nil, status.Error(codes.Canceled, "lane aborted by the caller")
			}
			return nil, status.Errorf(codes.Unavailable, "lane to %s: %v", l.conn.RemoteAddr(), err)
		}
		switch typ {
		case laneHeader:
			md, err := decodeMD(meta)
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			l.header = md
		case laneFrame:
			f, err := readFrame(meta, payload)
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			l.held = payload
			if !l.checked {
				// As over gRPC (checkedStream): the header is checked with
				// the first message; a refusal arrives as a status instead.
				l.checked = true
				if err := l.id.checkServer(l.header); err != nil {
					return nil, err
				}
			}
			return f, nil
		case laneStatus:
			l.done = true
			sp := &spb.Status{}
			if err := proto.Unmarshal(meta, sp); err != nil {
				return nil, status.Errorf(codes.Internal, "lane: malformed status: %v", err)
			}
			if err := status.FromProto(sp).Err(); err != nil {
				return nil, err
			}
			return nil, io.EOF
		default:
			return nil, status.Errorf(codes.Internal, "lane: unexpected message type %d from the worker", typ)
		}
	}
}
