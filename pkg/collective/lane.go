package collective

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/rawsock"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Direct lanes: the small-message path.
//
// A small all-reduce is a few latency-bound steps of one message per peer
// (recursive doubling: ceil(log2 n) steps). Over gRPC each message costs a
// sender goroutine hand-off to HTTP/2's writer, frame encoding, a reader
// goroutine and a hand-off to the stream's consumer: about 25-30 us of CPU
// per message, which on hosts running several members per core is most of
// a step. A lane is a plain TCP connection from each member to each peer,
// opened by Connect next to the gRPC stream, on the same listener: a
// message is one write(2) of a fixed header and the payload, and the
// operation waiting for it reads it straight from the socket (no reader
// goroutine, no hand-off), polling briefly before it sleeps
// (Config.LanePoll).
//
// Lanes carry only the step-by-step all-reduce (runSteps: one chunk per
// peer and step, Program.StepByStep), so they need no flow control of
// their own: every member waits for its peers each step, so a member is at
// most one operation ahead and at most a few messages are queued on a
// lane. A frame of at most laneMaxPayload fits in the kernel's socket
// buffers and is written before the step's reads; a larger one (a ring's
// share up to ChunkBytes) is written from a goroutine beside them.
// Everything else (the pipelined ring's chunks with their
// acknowledgements, all-to-all, pings) stays on gRPC.
//
// Connection: the dialer writes laneMagic, then a length-prefixed
// CollectiveHello (the same checks as the gRPC Exchange's hello); the
// listener answers with a length-prefixed reason, empty when accepted.
// gRPC clients open their connections with the HTTP/2 preface ("PRI *
// HTTP/2.0..."), so the first eight bytes of a connection tell the two
// apart (see demux). With Config.TLS the lane is a TLS connection (tls.go)
// and everything above runs inside it: the demux peeks the first eight
// decrypted bytes, and the raw system calls (rawsock.Writer, rawsock.Read) are off,
// since the socket carries TLS records, not frames.
//
// Frame: laneHeader bytes, little-endian, then the payload:
//
//	[0:4)   payload bytes (<= the group's largest message)
//	[4:8)   step
//	[8:16)  operation sequence number
//	[16:24) offset of the cell, elements
//	[24:32) total elements of the operation
//	[32:36) format (pb.CollectiveFormat)
//	[36:40) flags: laneBye marks the last frame of a member that shut down
const (
	laneMagic  = "SWYLANE1"
	laneHeader = 40
	laneBye    = 1

	// laneHelloMax bounds a hello or its answer, bytes.
	laneHelloMax = 4 << 10
	// laneReadBuffer is the initial receive buffer: a small message and
	// its header arrive in one read(2).
	laneReadBuffer = 64 << 10
	// laneMaxPayload is the largest frame a step writes before it reads.
	// Nothing drains a lane while its owner writes, so two members
	// exchanging messages that way must each fit in what the kernel holds
	// for a connection that nobody reads (the receiver's initial window,
	// 64 KiB, plus the sender's buffer): 32 KiB leaves room. Larger
	// frames, up to the group's largest message, are written beside the
	// step's reads (runSteps).
	laneMaxPayload = 32 << 10
)

// laneOut is the sending side of the lane to one peer. Sends come only
// from the operation running under the group's opMu, and Shutdown (which
// also holds it), so mu only orders them against Close.
type laneOut struct {
	conn  net.Conn                  // *tls.Conn with TLS
	write func([]byte) (int, error) // conn.Write, or rawsock.Writer's
	raw   bool                      // write is rawsock.Writer's: conn is a *net.TCPConn
	mu    sync.Mutex
	buf   []byte // frame buffer of the running operation (see frame)
}

// newLaneOut wraps the dialed connection. rawsock.Writer applies only to a
// plain *net.TCPConn, never to a *tls.Conn (nor to the TCP connection
// under it, which carries TLS records).
func newLaneOut(conn net.Conn) *laneOut {
	l := &laneOut{conn: conn, write: rawsock.Writer(conn)}
	l.raw = l.write != nil
	if !l.raw {
		l.write = conn.Write
	}
	return l
}

// frame returns a buffer for a frame of payload bytes, reused from one
// send to the next: write(2) copies it into the kernel, so it is free
// again once send returns. Only the running operation may call it.
func (l *laneOut) frame(payload int) []byte {
	if n := laneHeader + payload; cap(l.buf) >= n {
		l.buf = l.buf[:n]
	} else {
		l.buf = make([]byte, n)
	}
	return l.buf
}

// send writes one frame (the header is filled in here; frame[laneHeader:]
// is the payload, already packed) in one write.
func (l *laneOut) send(frame []byte, m *pb.CollectiveChunk, flags uint32) error {
	putLaneHeader(frame[:laneHeader], len(frame)-laneHeader, m, flags)
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := l.write(frame)
	return err
}

func putLaneHeader(h []byte, payload int, m *pb.CollectiveChunk, flags uint32) {
	le := binary.LittleEndian
	le.PutUint32(h[0:], uint32(payload))
	le.PutUint32(h[4:], m.Step)
	le.PutUint64(h[8:], m.Op)
	le.PutUint64(h[16:], m.Offset)
	le.PutUint64(h[24:], m.Total)
	le.PutUint32(h[32:], uint32(m.Format))
	le.PutUint32(h[36:], flags)
}

// parseLaneHeader validates a frame header and returns the chunk it
// describes (no payload yet) and the payload's size, or bye.
func parseLaneHeader(hdr []byte, maxPayload int) (m *pb.CollectiveChunk, size int, bye bool, err error) {
	le := binary.LittleEndian
	n := le.Uint32(hdr[0:])
	flags := le.Uint32(hdr[36:])
	if flags&^laneBye != 0 {
		return nil, 0, false, fmt.Errorf("lane frame with unknown flags %#x", flags)
	}
	if flags&laneBye != 0 {
		if n != 0 {
			return nil, 0, false, fmt.Errorf("goodbye frame with a %d-byte payload", n)
		}
		return nil, 0, true, nil
	}
	if int64(n) > int64(maxPayload) {
		return nil, 0, false, fmt.Errorf("lane frame of %d bytes, the limit is %d", n, maxPayload)
	}
	return &pb.CollectiveChunk{
		Step:   le.Uint32(hdr[4:]),
		Op:     le.Uint64(hdr[8:]),
		Offset: le.Uint64(hdr[16:]),
		Total:  le.Uint64(hdr[24:]),
		Format: pb.CollectiveFormat(le.Uint32(hdr[32:])),
	}, int(n), false, nil
}

// writeLaneMsg writes a length-prefixed message (hello or answer).
func writeLaneMsg(w io.Writer, b []byte) error {
	out := make([]byte, 4+len(b))
	binary.LittleEndian.PutUint32(out, uint32(len(b)))
	copy(out[4:], b)
	_, err := w.Write(out)
	return err
}

// readLaneMsg reads a length-prefixed message of at most laneHelloMax bytes.
func readLaneMsg(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.LittleEndian.Uint32(n[:])
	if size > laneHelloMax {
		return nil, fmt.Errorf("lane handshake message of %d bytes, the limit is %d", size, laneHelloMax)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return b, err
}

// dialLane opens the lane to peer r: with TLS the handshake (the peer
// must be Identities[r]), then magic, hello, and the peer's answer, all
// bounded by ctx.
func (g *Group) dialLane(ctx context.Context, r int) (*laneOut, error) {
	conn, err := g.cfg.Dial(ctx, g.cfg.Peers[r])
	if err != nil {
		return nil, err
	}
	var tc *tls.Conn
	if g.cfg.TLS != nil {
		tc = tls.Client(conn, g.cfg.laneTLS(r))
		conn = tc
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	fail := func(err error) (*laneOut, error) {
		stop()
		closeConn(conn)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		return nil, err
	}
	if tc != nil {
		if err := tc.Handshake(); err != nil {
			return fail(fmt.Errorf("lane TLS handshake: %w", err))
		}
	}
	hello, err := proto.Marshal(g.hello(r))
	if err != nil {
		return fail(err)
	}
	if _, err := io.WriteString(conn, laneMagic); err != nil {
		return fail(err)
	}
	if err := writeLaneMsg(conn, hello); err != nil {
		return fail(err)
	}
	answer, err := readLaneMsg(conn)
	if err != nil {
		return fail(fmt.Errorf("lane handshake: %w", err))
	}
	if len(answer) > 0 {
		return fail(fmt.Errorf("lane refused: %s", answer))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	return newLaneOut(conn), nil
}

// hello is this member's hello to peer r.
func (g *Group) hello(r int) *pb.CollectiveHello {
	return &pb.CollectiveHello{
		Group: g.cfg.Group, SourceRank: uint32(g.rank), DestRank: uint32(r),
		Size: uint32(g.n), Protocol: cluster.ProtocolVersion, Window: uint32(g.cfg.Window),
	}
}

// checkHello validates a peer's hello (gRPC stream or lane) that came
// over a connection whose verified certificate names peer (zero without
// TLS): with TLS, peer must be the identity of the rank the hello claims.
func (g *Group) checkHello(h *pb.CollectiveHello, peer auth.Identity) error {
	switch {
	case h == nil:
		return errors.New("collective: first message is not a hello")
	case h.Protocol != cluster.ProtocolVersion:
		return fmt.Errorf("collective: protocol %d, this member speaks %d", h.Protocol, cluster.ProtocolVersion)
	case h.Group != g.cfg.Group:
		return fmt.Errorf("collective: hello for group %q, this member is in %q", h.Group, g.cfg.Group)
	case int(h.Size) != g.n || int(h.DestRank) != g.rank:
		return fmt.Errorf("collective: hello for rank %d of %d, this member is rank %d of %d", h.DestRank, h.Size, g.rank, g.n)
	case uint64(h.SourceRank) >= uint64(g.n) || int(h.SourceRank) == g.rank: // uint64: int may be 32 bits
		return fmt.Errorf("collective: hello from rank %d", h.SourceRank)
	}
	return g.checkPeer(int(h.SourceRank), peer)
}

// parseLaneHello decodes and checks a lane hello (readLaneMsg's message)
// that came over a connection from peer (see checkHello). An accepted
// hello's SourceRank is a valid peer rank.
func (g *Group) parseLaneHello(raw []byte, peer auth.Identity) (*pb.CollectiveHello, error) {
	h := &pb.CollectiveHello{}
	if err := proto.Unmarshal(raw, h); err != nil {
		return nil, fmt.Errorf("collective: malformed lane hello: %w", err)
	}
	if err := g.checkHello(h, peer); err != nil {
		return nil, err
	}
	return h, nil
}

// serveLane runs an accepted lane connection's handshake (after the magic;
// with TLS, conn is the *tls.Conn whose handshake the demux ran) and
// attaches it to the source's laneIn, which owns it from then on
// (closeLanes closes it).
func (g *Group) serveLane(conn net.Conn) {
	conn.SetReadDeadline(time.Now().Add(g.cfg.HandshakeTimeout))
	raw, err := readLaneMsg(conn)
	if err != nil {
		closeConn(conn)
		return // not a member (or a dead one): nothing to tell
	}
	refuse := func(reason string) {
		conn.SetWriteDeadline(time.Now().Add(g.cfg.HandshakeTimeout))
		_ = writeLaneMsg(conn, []byte(reason))
		closeConn(conn)
	}
	peer, err := g.connIdentity(conn)
	if err != nil {
		refuse(err.Error())
		return
	}
	h, err := g.parseLaneHello(raw, peer)
	if err != nil {
		refuse(err.Error())
		return
	}
	conn.SetReadDeadline(time.Time{})
	l := g.lin[h.SourceRank]
	g.mu.Lock()
	switch {
	case l.conn != nil:
		g.mu.Unlock()
		refuse(fmt.Sprintf("collective: rank %d already has a lane to rank %d", h.SourceRank, g.rank))
		return
	case g.isClosed || g.failure != nil || g.streamCtx.Err() != nil:
		g.mu.Unlock()
		refuse(fmt.Sprintf("collective: rank %d is closed or broken", g.rank))
		return
	}
	l.attach(conn)
	g.mu.Unlock()
	if err := writeLaneMsg(conn, nil); err != nil {
		l.fail(fmt.Errorf("lane from %s: %w", g.peerName(l.src), err))
	}
}

// laneIn is the receiving side of the lane from one peer. It has no reader
// goroutine: the running operation (runSteps) reads its frames straight
// from the socket, and Shutdown reads the final goodbye; both hold the
// group's opMu, so reads never overlap.
type laneIn struct {
	src   int
	ready chan struct{}   // closed once conn is attached (under g.mu)
	conn  net.Conn        // *tls.Conn with TLS
	rc    syscall.RawConn // conn's, if it is a plain *net.TCPConn: never with TLS
	buf   []byte          // received bytes: buf[r:w] not yet parsed
	r, w  int
	err   error // sticky: the lane failed or ended

	// delivered counts the frames returned by next (tests read it to
	// see which path carried an operation).
	delivered atomic.Int64
}

func newLaneIn(src int) *laneIn { return &laneIn{src: src, ready: make(chan struct{})} }

// attach gives the lane its connection (caller holds g.mu). Raw reads
// (rawsock.Read, which polls the socket) apply only to a plain *net.TCPConn: a
// *tls.Conn is read through its Read, which decrypts, and the socket
// under it is never read directly (its bytes are TLS records, and the
// tls.Conn may hold buffered records the socket no longer has).
func (l *laneIn) attach(conn net.Conn) {
	l.conn = conn
	if tc, ok := conn.(*net.TCPConn); ok && rawsock.OK {
		l.rc, _ = tc.SyscallConn()
	}
	close(l.ready)
}

// attached reports whether the peer's lane has arrived.
func (l *laneIn) attached() bool {
	select {
	case <-l.ready:
		return true
	default:
		return false
	}
}

func (l *laneIn) fail(err error) {
	if l.err == nil {
		l.err = err
	}
}

// next returns the next frame from the lane: a chunk whose payload
// aliases the lane's buffer until the next call, or bye for a goodbye.
// It waits for the lane to be attached and for data, polling the socket
// for up to poll before sleeping (see Config.LanePoll; raw TCP lanes only,
// a TLS lane sleeps in its Read at once). ctx's end (which
// also closes the lanes: the operation aborts) or the connection's gives
// an error.
func (l *laneIn) next(ctx context.Context, maxPayload int, poll time.Duration) (m *pb.CollectiveChunk, bye bool, err error) {
	select {
	case <-l.ready:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("lane not attached yet: %w", context.Cause(ctx))
	}
	if l.err != nil {
		return nil, false, l.err
	}
	if err := l.fill(laneHeader, poll); err != nil {
		if err == io.EOF && l.w == l.r {
			return nil, false, l.ended(io.EOF)
		}
		return nil, false, l.ended(err)
	}
	m, size, bye, err := parseLaneHeader(l.buf[l.r:l.r+laneHeader], maxPayload)
	if err != nil {
		l.fail(err)
		return nil, false, err
	}
	if bye {
		l.r += laneHeader
		l.fail(errPeerShutdown)
		return nil, true, nil
	}
	if err := l.fill(laneHeader+size, poll); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, false, l.ended(err)
	}
	p := l.r + laneHeader
	m.Payload = l.buf[p : p+size : p+size]
	l.r = p + size
	l.delivered.Add(1)
	return m, false, nil
}

// ended records why the lane stopped delivering and returns it.
func (l *laneIn) ended(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("the peer aborted or died (%w)", err)
	}
	l.fail(err)
	return l.err
}

// fill reads until buf[r:w] holds at least n bytes.
func (l *laneIn) fill(n int, poll time.Duration) error {
	if l.w-l.r >= n {
		return nil
	}
	if l.r > 0 { // compact
		l.w = copy(l.buf, l.buf[l.r:l.w])
		l.r = 0
	}
	if len(l.buf) < n {
		nb := make([]byte, max(n, laneReadBuffer))
		copy(nb, l.buf[:l.w])
		l.buf = nb
	}
	for l.w < n {
		var k int
		var err error
		if l.rc != nil {
			k, err = rawsock.Read(l.rc, l.buf[l.w:], poll)
		} else {
			k, err = l.conn.Read(l.buf[l.w:])
		}
		l.w += k
		if err != nil {
			if err == io.EOF && l.w >= n {
				return nil
			}
			return err
		}
	}
	return nil
}

// laneLink returns the lane to peer r, or an error if Connect has not
// opened it.
func (g *Group) laneLink(r int) (*laneOut, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if l := g.lanes[r]; l != nil {
		return l, nil
	}
	return nil, errPeer(r, false, "lane not connected (call Connect first)")
}
