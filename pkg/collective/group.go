package collective

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/pkg/allreduce"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/demux"
	"github.com/switchyard/switchyard/pkg/wire"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// errPeerShutdown ends a peer's inbox when it shut down cleanly.
var errPeerShutdown = errors.New("the peer shut down")

// ErrClosed is returned (wrapped) by operations on a closed Group.
var ErrClosed = errors.New("collective: group closed")

// ErrBroken is returned (wrapped, with the first failure) by operations on
// a Group whose earlier operation failed. Members may disagree about how
// far a failed operation got, so a group is never reused after a failure:
// close it and form a new one (a new Config.Group name, e.g. the next
// epoch).
var ErrBroken = errors.New("collective: group broken by an earlier failure")

// Group is one member of a collective group: it serves the Collective gRPC
// service on its listener and keeps one Exchange stream open to every other
// member. Operations (AllReduce, AllToAll) must be called by every member
// in the same order with matching arguments; a Group runs one operation at
// a time (concurrent calls queue). Close releases everything.
type Group struct {
	cfg  Config
	n    int
	rank int
	srv  *grpc.Server
	lis  net.Listener
	dmx  *demux.Listener // splits lis between srv and the lanes

	in    []*inbox   // gRPC streams' chunks, by source rank; nil at Rank
	out   []*outLink // by destination rank; nil at Rank
	lin   []*laneIn  // lanes, by source rank; nil at Rank
	lanes []*laneOut // by destination rank; nil at Rank (g.mu)

	// streamCtx is the parent of every client stream; cancelling it
	// (abort) tears the streams down and unblocks any send.
	streamCtx    context.Context
	cancelStream context.CancelFunc

	opMu   sync.Mutex // serialises operations
	seq    uint64     // last operation's sequence number (opMu)
	pool   wire.BufferPool
	wg     sync.WaitGroup // goroutines started by the Group
	closed sync.Once

	plansMu sync.Mutex
	plans   map[planKey]*plan

	mu       sync.Mutex
	failure  error // first failure; the group is broken once set
	isClosed bool
}

// New validates cfg, starts serving the Collective service on lis and
// returns the member. Call Connect (on every member) before operations.
// The Group owns lis from now on and closes it in Close.
func New(cfg Config, lis net.Listener) (*Group, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if !allreduce.HostLittleEndian {
		return nil, errors.New("collective: big-endian hosts are not supported")
	}
	n := len(cfg.Peers)
	g := &Group{cfg: cfg, n: n, rank: cfg.Rank, lis: lis,
		in: make([]*inbox, n), out: make([]*outLink, n), lin: make([]*laneIn, n), lanes: make([]*laneOut, n)}
	g.streamCtx, g.cancelStream = context.WithCancel(context.Background())
	for r := range n {
		if r != g.rank {
			g.in[r] = &inbox{src: r, ch: make(chan *pb.CollectiveChunk, cfg.Window), dead: make(chan struct{})}
			g.lin[r] = newLaneIn(r)
		}
	}
	// Aborting (or closing) the group closes the lanes, which unblocks a
	// send stuck on a stopped peer or a read waiting for one.
	context.AfterFunc(g.streamCtx, g.closeLanes)
	g.dmx = demux.New(lis, laneMagic, g.serveLane, cfg.serverTLS(), cfg.HandshakeTimeout)
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(wire.Codec{}),
		grpc.MaxRecvMsgSize(g.maxMsg()),
		grpc.MaxSendMsgSize(g.maxMsg()),
		grpc.InitialWindowSize(g.flowWindow()),
		grpc.InitialConnWindowSize(g.flowWindow()),
		grpc.WriteBufferSize(cfg.IOBufferBytes),
		grpc.ReadBufferSize(cfg.IOBufferBytes),
		grpc.WaitForHandlers(true), // Stop waits for Exchange handlers
	}
	if cfg.TLS != nil {
		// The demux ran the handshake; the handlers read the caller's
		// identity from it.
		opts = append(opts, grpc.Creds(auth.Terminated()))
	}
	g.srv = grpc.NewServer(opts...)
	pb.RegisterCollectiveServer(g.srv, &service{g: g})
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		_ = g.srv.Serve(g.dmx) // returns when Close stops the server
	}()
	return g, nil
}

// maxMsg is the largest message accepted: a chunk plus its header.
func (g *Group) maxMsg() int { return g.cfg.ChunkBytes + 4<<10 }

// flowWindow is the HTTP/2 stream and connection window: larger than the
// application window (Window chunks) so that it never is the limit.
func (g *Group) flowWindow() int32 { return int32((g.cfg.Window + 1) * g.maxMsg()) }

// Rank returns this member's rank.
func (g *Group) Rank() int { return g.rank }

// Size returns the number of members.
func (g *Group) Size() int { return g.n }

// Config returns the configuration in effect (defaults filled in).
func (g *Group) Config() Config { return g.cfg }

// peerName formats a rank with its address (and identity, with TLS) for
// error messages.
func (g *Group) peerName(r int) string {
	if g.cfg.TLS != nil {
		return fmt.Sprintf("rank %d (%s, %s)", r, g.cfg.Peers[r], g.cfg.Identities[r])
	}
	return fmt.Sprintf("rank %d (%s)", r, g.cfg.Peers[r])
}

// Connect dials every other member and opens the Exchange streams. It
// retries until each peer answers the hello or ctx ends, so members may
// start in any order; every member must call it. Errors name each peer
// that could not be reached.
func (g *Group) Connect(ctx context.Context) error {
	if err := g.usable(); err != nil {
		return err
	}
	errs := make([]error, g.n)
	var wg sync.WaitGroup
	for r := range g.n {
		if r == g.rank {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.connect(ctx, r); err != nil {
				errs[r] = fmt.Errorf("connect to %s: %w", g.peerName(r), err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		g.abort(err)
		return fmt.Errorf("collective rank %d: %w", g.rank, err)
	}
	return nil
}

func (g *Group) connect(ctx context.Context, r int) error {
	addr := g.cfg.Peers[r]
	creds := insecure.NewCredentials()
	if g.cfg.TLS != nil {
		creds = g.cfg.TLS.ClientCreds(auth.Is(g.cfg.Identities[r]))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(g.cfg.Dial),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(wire.Codec{}),
			grpc.MaxCallRecvMsgSize(g.maxMsg()),
			grpc.MaxCallSendMsgSize(g.maxMsg())),
		grpc.WithInitialWindowSize(g.flowWindow()),
		grpc.WithInitialConnWindowSize(g.flowWindow()),
		grpc.WithWriteBufferSize(g.cfg.IOBufferBytes),
		grpc.WithReadBufferSize(g.cfg.IOBufferBytes),
		grpc.WithConnectParams(grpc.ConnectParams{
			// Peers start in any order: retry quickly.
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	)
	if err != nil {
		return err
	}
	o := &outLink{dst: r, conn: conn, client: pb.NewCollectiveClient(conn), window: uint64(g.cfg.Window), dead: make(chan struct{}), acked: make(chan struct{})}
	g.mu.Lock()
	if g.isClosed || g.failure != nil {
		g.mu.Unlock()
		conn.Close()
		return g.usable()
	}
	g.out[r] = o
	g.mu.Unlock()

	// The stream lives as long as the group, but opening it (which waits
	// for the peer to come up) is bounded by ctx.
	sctx, cancel := context.WithCancel(g.streamCtx)
	stop := context.AfterFunc(ctx, cancel)
	fail := func(err error) error {
		cancel()
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		return err
	}
	stream, err := o.client.Exchange(sctx, grpc.WaitForReady(true))
	if err != nil {
		return fail(err)
	}
	hello := &pb.CollectiveChunk{Hello: g.hello(r)}
	if err := stream.Send(hello); err != nil {
		_, err = stream.Recv() // the stream's status
		return fail(err)
	}
	ack, err := stream.Recv()
	if err != nil {
		return fail(err)
	}
	if ack.Received != 0 {
		return fail(fmt.Errorf("hello acknowledged with %d chunks", ack.Received))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	g.mu.Lock()
	o.stream, o.cancel = stream, cancel
	g.mu.Unlock()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		o.readAcks()
	}()
	// The peer answered on gRPC, so its listener is up: open the lane.
	lane, err := g.dialLane(ctx, r)
	if err != nil {
		return fmt.Errorf("lane: %w", err)
	}
	g.mu.Lock()
	if g.isClosed || g.failure != nil {
		g.mu.Unlock()
		closeConn(lane.conn)
		return g.usable()
	}
	g.lanes[r] = lane
	g.mu.Unlock()
	return nil
}

// closeLanes closes every lane, both ways.
func (g *Group) closeLanes() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.lanes {
		if l != nil {
			closeConn(l.conn)
		}
	}
	for _, l := range g.lin {
		if l != nil && l.conn != nil {
			closeConn(l.conn)
		}
	}
}

// Ping sends one Ping to member r and returns the round-trip time.
func (g *Group) Ping(ctx context.Context, r int) (time.Duration, error) {
	if r < 0 || r >= g.n || r == g.rank {
		return 0, fmt.Errorf("collective: cannot ping rank %d", r)
	}
	g.mu.Lock()
	o := g.out[r]
	g.mu.Unlock()
	if o == nil {
		return 0, fmt.Errorf("collective: %s not connected", g.peerName(r))
	}
	start := time.Now()
	if _, err := o.client.Ping(ctx, &pb.CollectivePing{Nonce: uint64(start.UnixNano())}); err != nil {
		return 0, fmt.Errorf("ping %s: %w", g.peerName(r), err)
	}
	return time.Since(start), nil
}

// Shutdown ends the group gracefully, like a final barrier: it tells every
// peer that this member will send nothing more, then waits until every
// peer has said the same (or its stream ended some other way) and every
// chunk this member sent has been acknowledged, and then Closes. Call it on
// every member after the last operation: unlike Close, it does not cut off
// a peer that is still finishing that operation. When ctx ends first,
// Shutdown closes anyway and returns ctx's error.
func (g *Group) Shutdown(ctx context.Context) error {
	g.opMu.Lock() // no operation may be sending
	defer g.opMu.Unlock()
	var out []*outLink // the connected ones
	g.mu.Lock()
	for _, o := range g.out {
		if o != nil && o.stream != nil {
			out = append(out, o)
		}
	}
	g.mu.Unlock()
	for _, o := range out {
		_ = o.stream.CloseSend()
	}
	g.mu.Lock()
	lanes := append([]*laneOut(nil), g.lanes...)
	g.mu.Unlock()
	dl, _ := ctx.Deadline() // zero: no deadline
	for _, l := range lanes {
		if l != nil {
			l.conn.SetWriteDeadline(dl)
			// Best effort: a peer that does not get it sees the lane end
			// when this member closes, and its Shutdown waits for that.
			_ = l.send(make([]byte, laneHeader), &pb.CollectiveChunk{}, laneBye)
		}
	}
	var err error
	wait := func(ch <-chan struct{}) {
		if err == nil {
			select {
			case <-ch:
			case <-ctx.Done():
				err = ctx.Err()
			}
		}
	}
	for _, o := range out {
		wait(o.dead) // the peer saw our end of stream and ended it
	}
	for _, l := range g.lin {
		// Read each attached lane to its goodbye (or end): the peer sent
		// everything it will send.
		if err != nil || l == nil || !l.attached() {
			continue
		}
		stop := context.AfterFunc(ctx, func() { l.conn.SetReadDeadline(time.Now()) })
		for err == nil {
			_, bye, rerr := l.next(ctx, g.maxMsg(), 0)
			if bye || rerr != nil {
				if ctx.Err() != nil {
					err = ctx.Err()
				}
				break
			}
		}
		stop()
	}
	for _, b := range g.in {
		if b == nil {
			continue
		}
		b.mu.Lock()
		attached := b.attached
		b.mu.Unlock()
		if attached {
			wait(b.dead)
		}
	}
	g.Close()
	if err != nil {
		return fmt.Errorf("collective rank %d: shutdown: %w", g.rank, err)
	}
	return nil
}

// Close stops serving, closes every stream and connection and waits for the
// Group's goroutines. It is safe to call more than once; an operation in
// progress fails with ErrClosed.
func (g *Group) Close() error {
	g.closed.Do(func() {
		g.mu.Lock()
		g.isClosed = true
		g.mu.Unlock()
		g.abort(ErrClosed) // also closes the lanes
		g.closeLanes()     // and any attached since an earlier abort
		g.srv.Stop()
		g.dmx.Close()
		g.mu.Lock()
		out := append([]*outLink(nil), g.out...)
		g.mu.Unlock()
		for _, o := range out {
			if o != nil {
				o.conn.Close()
			}
		}
		g.dmx.Wait()
		g.wg.Wait()
	})
	return nil
}

// abort records the group's first failure and tears down every stream,
// which unblocks any goroutine sending on one.
func (g *Group) abort(err error) {
	g.mu.Lock()
	if g.failure == nil {
		g.failure = err
	}
	g.mu.Unlock()
	g.cancelStream()
}

// usable returns nil if operations may run, else why not.
func (g *Group) usable() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.isClosed:
		return ErrClosed
	case g.failure != nil:
		return fmt.Errorf("%w: %w", ErrBroken, g.failure)
	}
	return nil
}

// outLink is the sending side of the stream to one peer.
type outLink struct {
	dst    int
	conn   *grpc.ClientConn
	client pb.CollectiveClient
	stream grpc.BidiStreamingClient[pb.CollectiveChunk, pb.CollectiveAck]
	cancel context.CancelFunc
	window uint64

	mu      sync.Mutex
	sent    uint64        // chunks sent on the stream
	ackedN  uint64        // chunks acknowledged
	onAck   []func()      // callbacks of chunks ackedN+1 .. sent, in order
	acked   chan struct{} // closed and replaced whenever ackedN grows
	dead    chan struct{} // closed when the stream failed
	deadErr error
}

// send queues m on the stream once fewer than window chunks are in
// flight; onAck runs (on the ack reader's goroutine) when the peer has
// taken m off the wire, after which m's payload is no longer referenced.
// send must not be called concurrently for one link. It returns the
// chunk's number on the link (for waitAcked). An untracked chunk
// (m.Untracked) is sent at once, outside the window, and never
// acknowledged: its payload must be memory nobody reuses.
func (o *outLink) send(ctx context.Context, m *pb.CollectiveChunk, onAck func()) (uint64, error) {
	var seq uint64
	for !m.Untracked {
		if ctx.Err() != nil {
			return 0, context.Cause(ctx)
		}
		o.mu.Lock()
		if o.deadErr != nil {
			err := o.deadErr
			o.mu.Unlock()
			return 0, err
		}
		if o.sent-o.ackedN < o.window {
			o.sent++
			seq = o.sent
			o.onAck = append(o.onAck, onAck)
			o.mu.Unlock()
			break
		}
		acked := o.acked
		o.mu.Unlock()
		select {
		case <-acked:
		case <-o.dead:
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for acknowledgements: %w", context.Cause(ctx))
		}
	}
	// SendMsg may block on HTTP/2 flow control; abort (which cancels the
	// stream) unblocks it.
	if err := o.stream.SendMsg(m); err != nil {
		if ctx.Err() != nil { // the operation ended and aborted the stream
			return 0, context.Cause(ctx)
		}
		<-o.dead // the ack reader sees the stream's final status
		o.mu.Lock()
		defer o.mu.Unlock()
		return 0, o.deadErr
	}
	return seq, nil
}

// waitAcked waits until chunk seq (from send) has been acknowledged.
func (o *outLink) waitAcked(ctx context.Context, seq uint64) error {
	for {
		o.mu.Lock()
		if o.ackedN >= seq {
			o.mu.Unlock()
			return nil
		}
		if o.deadErr != nil {
			err := o.deadErr
			o.mu.Unlock()
			return err
		}
		acked := o.acked
		o.mu.Unlock()
		select {
		case <-acked:
		case <-o.dead:
		case <-ctx.Done():
			return fmt.Errorf("waiting for acknowledgements: %w", context.Cause(ctx))
		}
	}
}

// readAcks runs the acknowledgement callbacks until the stream ends.
func (o *outLink) readAcks() {
	for {
		a, err := o.stream.Recv()
		if err != nil {
			o.mu.Lock()
			if err == io.EOF {
				err = errors.New("stream closed by peer")
			}
			o.deadErr = fmt.Errorf("stream to peer: %w", err)
			close(o.dead)
			o.mu.Unlock()
			return
		}
		o.mu.Lock()
		if a.Received > o.sent || a.Received < o.ackedN {
			o.deadErr = fmt.Errorf("peer acknowledged %d chunks, %d sent, %d acknowledged before", a.Received, o.sent, o.ackedN)
			close(o.dead)
			o.mu.Unlock()
			o.cancel()
			return
		}
		k := a.Received - o.ackedN
		done := o.onAck[:k:k]
		o.onAck = o.onAck[k:]
		o.ackedN = a.Received
		close(o.acked)
		o.acked = make(chan struct{})
		o.mu.Unlock()
		for _, f := range done {
			if f != nil {
				f()
			}
		}
	}
}

// inbox holds the chunks received from one source until an operation
// takes them, in arrival order.
type inbox struct {
	src int
	ch  chan *pb.CollectiveChunk
	// delivered counts the chunks put into ch (tests read it to see which
	// path carried an operation).
	delivered atomic.Int64

	mu       sync.Mutex
	attached bool
	dead     chan struct{} // closed when the source's stream ended
	deadErr  error
}

// next returns the next chunk from the source.
func (b *inbox) next(ctx context.Context) (*pb.CollectiveChunk, error) {
	select {
	case m := <-b.ch:
		return m, nil
	default:
	}
	select {
	case m := <-b.ch:
		return m, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	case <-b.dead:
		select { // chunks that arrived before the stream ended come first
		case m := <-b.ch:
			return m, nil
		default:
		}
		if ctx.Err() != nil { // the operation ended and aborted the streams
			return nil, context.Cause(ctx)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		return nil, b.deadErr
	}
}

func (b *inbox) fail(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.deadErr == nil {
		b.deadErr = err
		close(b.dead)
	}
}

// service implements pb.CollectiveServer.
type service struct {
	pb.UnimplementedCollectiveServer
	g *Group
}

// Ping answers members only (with TLS: callers whose certificate names
// one of Identities).
func (s *service) Ping(ctx context.Context, p *pb.CollectivePing) (*pb.CollectivePing, error) {
	peer, err := s.g.callIdentity(ctx)
	if err == nil {
		err = s.g.checkMember(peer)
	}
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	return p, nil
}

func (s *service) Exchange(stream grpc.BidiStreamingServer[pb.CollectiveChunk, pb.CollectiveAck]) error {
	g := s.g
	hello, err := stream.Recv()
	if err != nil {
		return err
	}
	h := hello.GetHello()
	peer, err := g.callIdentity(stream.Context())
	if err == nil {
		err = g.checkHello(h, peer)
	}
	if err != nil {
		return status.Error(helloCode(err), err.Error())
	}
	b := g.in[h.SourceRank]
	b.mu.Lock()
	if b.attached {
		b.mu.Unlock()
		return status.Errorf(codes.AlreadyExists, "collective: rank %d already has a stream to rank %d", h.SourceRank, g.rank)
	}
	b.attached = true
	b.mu.Unlock()
	err = s.pump(stream, b, uint64(max(1, h.Window/2)))
	switch {
	case err == nil:
		err = errPeerShutdown
	case status.Code(err) == codes.Canceled:
		err = errors.New("the peer aborted (its operation failed or it closed the group)")
	}
	b.fail(fmt.Errorf("stream from %s ended: %w", g.peerName(b.src), err))
	if errors.Is(err, errPeerShutdown) {
		return nil
	}
	return err
}

// helloCode is the gRPC status code of a refused hello.
func helloCode(err error) codes.Code {
	if errors.Is(err, errPeerIdentity) {
		return codes.PermissionDenied
	}
	return codes.FailedPrecondition
}

// pump moves chunks from the stream into the inbox and acknowledges them
// once they are there: at once if the chunk asks for it (ack_now), else
// whenever ackEvery (half the source's window) are unacknowledged. A full
// inbox stops the reading, so a slow consumer holds back the source (at
// most Window chunks in flight, Window queued).
func (s *service) pump(stream grpc.BidiStreamingServer[pb.CollectiveChunk, pb.CollectiveAck], b *inbox, ackEvery uint64) error {
	ctx := stream.Context()
	var received, acked uint64
	if err := stream.Send(&pb.CollectiveAck{Received: 0}); err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return nil // the peer shut down (CloseSend)
		}
		if err != nil {
			return err
		}
		select {
		case b.ch <- m:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-s.g.streamCtx.Done():
			return status.Errorf(codes.Aborted, "rank %d aborted the operation", s.g.rank)
		}
		b.delivered.Add(1)
		if m.Untracked {
			continue
		}
		received++
		if m.AckNow || received-acked >= ackEvery {
			if err := stream.Send(&pb.CollectiveAck{Received: received}); err != nil {
				return err
			}
			acked = received
		}
	}
}
