package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/wire"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Pool holds one gRPC connection per peer worker, each forced onto the
// raw-bytes codec, with keepalive, flow-control windows of several chunks,
// and the handshake of one model on every call. It also remembers, per
// peer, the rows in flight (for replica choice) and recent failures. Safe
// for concurrent use.
type Pool struct {
	cfg  ClientConfig
	id   identity
	opts []grpc.DialOption

	mu     sync.Mutex
	peers  map[cluster.WorkerID]*peer
	closed bool
}

// peer is one worker's connection and client-side state.
type peer struct {
	id        cluster.WorkerID
	addr      string
	cc        *grpc.ClientConn
	client    pb.WorkerClient
	inflight  atomic.Int64 // rows this pool has in flight to the peer
	downUntil atomic.Int64 // unix nanoseconds: avoid until then (0: healthy)
}

// NewPool validates cfg (filling defaults) and returns an empty pool;
// connections are made on first use.
func NewPool(cfg ClientConfig) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	id := identity{protocol: cfg.Protocol, model: cfg.Model}
	sw, cw := windows(cfg.ChunkBytes, cfg.WindowChunks)
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(wire.Codec{}),
			grpc.MaxCallRecvMsgSize(cfg.MaxMessageBytes),
			grpc.MaxCallSendMsgSize(cfg.MaxMessageBytes),
		),
		grpc.WithInitialWindowSize(sw),
		grpc.WithInitialConnWindowSize(cw),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: cfg.KeepaliveTime, Timeout: cfg.KeepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithChainUnaryInterceptor(id.unaryInterceptor),
		grpc.WithChainStreamInterceptor(id.streamInterceptor),
	}
	opts = append(opts, cfg.DialOptions...)
	return &Pool{cfg: cfg, id: id, opts: opts, peers: map[cluster.WorkerID]*peer{}}, nil
}

// Config returns the pool's configuration, defaults filled in.
func (p *Pool) Config() ClientConfig { return p.cfg }

// Client returns a Worker client for worker w at addr, connecting lazily.
// Calls made with it carry the handshake and check the server's; errors
// from peers decode to *RemoteError. If w's address changed, the old
// connection is closed.
func (p *Pool) Client(w cluster.WorkerID, addr string) (pb.WorkerClient, error) {
	pr, err := p.peer(w, addr)
	if err != nil {
		return nil, err
	}
	return pr.client, nil
}

func (p *Pool) peer(w cluster.WorkerID, addr string) (*peer, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("transport: connection pool closed")
	}
	if pr := p.peers[w]; pr != nil {
		if pr.addr == addr {
			return pr, nil
		}
		pr.cc.Close() // the worker moved; calls in flight to the old address fail over
	}
	cc, err := grpc.NewClient(addr, p.opts...)
	if err != nil {
		return nil, fmt.Errorf("transport: worker %s (%s): %w", w, addr, err)
	}
	pr := &peer{id: w, addr: addr, cc: cc, client: pb.NewWorkerClient(cc)}
	p.peers[w] = pr
	return pr, nil
}

// Close closes every connection; later calls fail.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for _, pr := range p.peers {
		errs = append(errs, pr.cc.Close())
	}
	p.peers = nil
	return errors.Join(errs...)
}

func (p *Pool) markDown(pr *peer) { pr.downUntil.Store(time.Now().Add(p.cfg.DownFor).UnixNano()) }
func (p *Pool) markUp(pr *peer)   { pr.downUntil.Store(0) }
func (pr *peer) isDown(now time.Time) bool {
	u := pr.downUntil.Load()
	return u != 0 && now.UnixNano() < u
}

// RemoteExecutor is an expert.Executor that computes a layer's routed
// experts on the workers that own them (see the package comment). It is
// safe for concurrent calls.
type RemoteExecutor struct {
	src   PlacementSource
	pool  *Pool
	cfg   ClientConfig
	reqID atomic.Uint64
	bufs  f32Pool // request buffers
}

var _ expert.Executor = (*RemoteExecutor)(nil)

// NewRemoteExecutor returns an executor routing by src's placement over
// pool's connections (and pool's configuration).
func NewRemoteExecutor(src PlacementSource, pool *Pool) *RemoteExecutor {
	return &RemoteExecutor{src: src, pool: pool, cfg: pool.cfg}
}

// dest is one destination worker of one round of a Compute call.
type dest struct {
	w       cluster.WorkerID
	peer    *peer
	experts []int // ascending
	rows    int
}

// Compute implements expert.Executor: one exchange per destination worker,
// destinations concurrently, retrying stale placements (after a Refresh)
// and failed peers (on other replicas) within ctx's deadline, or
// ClientConfig.CallTimeout when ctx has none. Errors name the layer, the
// worker and its address.
func (r *RemoteExecutor) Compute(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	n := plan.Len()
	if n == 0 {
		return nil
	}
	if d <= 0 || len(y) < n*d || len(x)%d != 0 {
		return fmt.Errorf("transport: layer %d: %d plan rows, D %d, x %d values, y %d values", layer, n, d, len(x), len(y))
	}
	if _, ok := ctx.Deadline(); !ok && r.cfg.CallTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.cfg.CallTimeout)
		defer cancel()
	}
	var pending []int
	for e := 0; e < plan.NumExperts; e++ {
		if lo, hi := plan.Rows(e); hi > lo {
			pending = append(pending, e)
		}
	}
	pl := r.src.Current()
	if pl == nil {
		var err error
		if pl, err = r.src.Refresh(ctx); err != nil {
			return fmt.Errorf("transport: layer %d: read placement: %w", layer, err)
		}
	}
	failed := map[cluster.WorkerID]error{}
	for refreshes := 0; ; {
		if err := r.checkPlacement(pl, layer, plan.NumExperts); err != nil {
			return err
		}
		dests, err := r.assign(pl, layer, plan, pending, failed)
		if err != nil {
			return err
		}
		errs := make([]error, len(dests))
		var wg sync.WaitGroup
		for i, dst := range dests[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i+1] = r.exchange(ctx, dst.peer, inferCall(pl.Epoch, r.cfg.Worker, dst, layer, plan, x, d, y), true)
			}()
		}
		errs[0] = r.exchange(ctx, dests[0].peer, inferCall(pl.Epoch, r.cfg.Worker, dests[0], layer, plan, x, d, y), true)
		wg.Wait()

		var next []int
		var stale error
		for i, dst := range dests {
			err := errs[i]
			if err == nil {
				r.pool.markUp(dst.peer)
				continue
			}
			err = fmt.Errorf("transport: layer %d to worker %s (%s): %w", layer, dst.w, dst.peer.addr, err)
			switch {
			case ctx.Err() != nil:
				return err // the caller's deadline or cancellation: no time to retry
			case errors.Is(err, cluster.ErrStalePlacement):
				stale = err
			case errors.Is(err, ErrPeerUnavailable):
				failed[dst.w] = err
				r.pool.markDown(dst.peer)
			default:
				return err
			}
			next = append(next, dst.experts...)
		}
		if len(next) == 0 {
			return nil
		}
		slices.Sort(next)
		pending = next
		if stale != nil {
			if refreshes == r.cfg.MaxStaleRetries {
				return fmt.Errorf("%w (still stale after %d placement refreshes)", stale, refreshes)
			}
			refreshes++
			if pl, err = r.src.Refresh(ctx); err != nil {
				return fmt.Errorf("transport: layer %d: refresh placement after %v: %w", layer, stale, err)
			}
		}
	}
}

func (r *RemoteExecutor) checkPlacement(pl *cluster.Placement, layer, numExperts int) error {
	switch {
	case pl == nil:
		return errors.New("transport: no placement")
	case pl.Model != r.cfg.Model:
		return fmt.Errorf("transport: placement epoch %d is for model %q, executor runs %q", pl.Epoch, pl.Model, r.cfg.Model)
	case layer < 0 || layer >= len(pl.Owners) || len(pl.Owners[layer]) != numExperts:
		have := 0
		if layer >= 0 && layer < len(pl.Owners) {
			have = len(pl.Owners[layer])
		}
		return fmt.Errorf("transport: placement epoch %d places %d experts for layer %d, the plan routes to %d", pl.Epoch, have, layer, numExperts)
	}
	return nil
}

// assign picks a worker for each pending expert: among its replicas not
// failed in this call, prefer those not marked down, then the fewest rows
// in flight from this pool (counting rows assigned in this round), then
// placement order (primary first). It groups experts by worker.
func (r *RemoteExecutor) assign(pl *cluster.Placement, layer int, plan *router.Plan, pending []int, failed map[cluster.WorkerID]error) ([]*dest, error) {
	now := time.Now()
	byW := map[cluster.WorkerID]*dest{}
	var out []*dest
	for _, e := range pending {
		lo, hi := plan.Rows(e)
		owners := pl.OwnersOf(expert.ID{Layer: layer, Expert: e})
		var (
			best      *peer
			bestDown  bool
			bestLoad  int64
			unusable  []error
			candidate bool
		)
		for _, w := range owners {
			if err := failed[w]; err != nil {
				unusable = append(unusable, err)
				continue
			}
			info, ok := pl.Workers[w]
			if !ok || info.Addr == "" {
				unusable = append(unusable, fmt.Errorf("worker %s has no address in placement epoch %d", w, pl.Epoch))
				continue
			}
			pr, err := r.pool.peer(w, info.Addr)
			if err != nil {
				unusable = append(unusable, err)
				continue
			}
			down := pr.isDown(now)
			load := pr.inflight.Load()
			if d := byW[w]; d != nil {
				load += int64(d.rows)
			}
			if !candidate || (bestDown && !down) || (bestDown == down && load < bestLoad) {
				best, bestDown, bestLoad, candidate = pr, down, load, true
			}
		}
		if best == nil {
			if len(owners) == 0 {
				return nil, fmt.Errorf("transport: layer %d expert %d: %w: placement epoch %d lists no owner", layer, e, ErrNoReplica, pl.Epoch)
			}
			return nil, fmt.Errorf("transport: layer %d expert %d: %w (replicas %v): %w", layer, e, ErrNoReplica, owners, joinErrs(unusable))
		}
		dst := byW[best.id]
		if dst == nil {
			dst = &dest{w: best.id, peer: best}
			byW[best.id] = dst
			out = append(out, dst)
		}
		dst.experts = append(dst.experts, e)
		dst.rows += hi - lo
	}
	return out, nil
}

// call is one request to one worker and where its answer goes.
type call struct {
	// head is the request header (chunk 0 without payload); roundTrip sets
	// its request id, dtype and shape.
	head *pb.ExpertFrame
	// n rows of d values are sent and received.
	n, d int
	// gather writes the [n, d] request tensor into buf.
	gather func(buf []float32)
	// out receives the response rows: they fill the row ranges [lo, hi) of
	// out (rows of d values), in this order.
	out    []float32
	ranges [][2]int
}

// planRanges returns the plan row ranges of experts (ascending), adjacent
// ranges merged: the order in which a destination's rows are sent.
func planRanges(plan *router.Plan, experts []int) [][2]int {
	var out [][2]int
	for _, e := range experts {
		lo, hi := plan.Rows(e)
		if k := len(out); k > 0 && out[k-1][1] == lo {
			out[k-1][1] = hi
		} else {
			out = append(out, [2]int{lo, hi})
		}
	}
	return out
}

// inferCall is dst's part of an inference Compute: the rows of its
// experts, gathered from x by token, answered into y in plan order.
func inferCall(epoch cluster.Epoch, source cluster.WorkerID, dst *dest, layer int, plan *router.Plan, x []float32, d int, y []float32) *call {
	experts := make([]int32, len(dst.experts))
	rows := make([]int32, len(dst.experts))
	for i, e := range dst.experts {
		lo, hi := plan.Rows(e)
		experts[i], rows[i] = int32(e), int32(hi-lo)
	}
	return &call{
		head: &pb.ExpertFrame{Layer: int32(layer), Experts: experts, Rows: rows, Epoch: uint64(epoch), Source: string(source)},
		n:    dst.rows, d: d,
		gather: func(buf []float32) {
			k := 0
			for _, e := range dst.experts {
				lo, hi := plan.Rows(e)
				for _, t := range plan.Token[lo:hi] {
					copy(buf[k*d:(k+1)*d], x[int(t)*d:int(t+1)*d])
					k++
				}
			}
		},
		out: y, ranges: planRanges(plan, dst.experts),
	}
}

// exchange runs one attempt of c with worker pr, bounded by AttemptTimeout
// when attempt is set (and always by ctx).
func (r *RemoteExecutor) exchange(ctx context.Context, pr *peer, c *call, attempt bool) error {
	actx, cancel := ctx, context.CancelFunc(func() {})
	if attempt && r.cfg.AttemptTimeout > 0 {
		actx, cancel = context.WithTimeout(ctx, r.cfg.AttemptTimeout)
	}
	defer cancel()
	start := time.Now()
	pr.inflight.Add(int64(c.n))
	defer pr.inflight.Add(-int64(c.n))
	err := r.roundTrip(actx, pr, c)
	if err == nil {
		return nil
	}
	cause := actx.Err()
	if dl, ok := actx.Deadline(); cause == nil && ok && !time.Now().Before(dl) {
		// The deadline has passed but the context's timer has not fired
		// yet: the owner, whose copy of the deadline (grpc-timeout) may
		// expire first, reset the stream.
		cause = context.DeadlineExceeded
	}
	if cause != nil {
		// The deadline (or the caller's cancellation) is the cause; gRPC's
		// own error for it says less.
		return fmt.Errorf("%w: no complete answer after %v: %w", ErrPeerUnavailable, time.Since(start).Round(time.Millisecond), cause)
	}
	return err
}

// roundTrip sends c as one chunked request on a stream of its own and
// writes the answer into c.out.
func (r *RemoteExecutor) roundTrip(ctx context.Context, pr *peer, c *call) error {
	buf := r.bufs.get(c.n * c.d)
	c.gather(buf)
	toWire(buf)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pr.client.Experts(sctx)
	if err != nil {
		r.bufs.put(buf)
		return fromRPCError(err)
	}
	head := c.head
	head.RequestId = r.reqID.Add(1)
	head.Dtype = pb.DType_DTYPE_F32
	head.Shape = []int64{int64(c.n), int64(c.d)}
	want := &pb.ExpertFrame{
		RequestId: head.RequestId, Layer: head.Layer, Experts: head.Experts, Rows: head.Rows, Shape: head.Shape,
		Phase: head.Phase, Job: head.Job, TrainSeq: head.TrainSeq,
	}
	sent := make(chan error, 1)
	go func() {
		err := sendChunks(stream, head, asBytes(buf), r.cfg.ChunkBytes, nil)
		if err == nil {
			err = stream.CloseSend()
		}
		sent <- err
	}()
	if err := receive(stream, want, c); err != nil {
		cancel()
		<-sent
		// buf is left to the garbage collector: gRPC's writer may still
		// hold a reference to a queued chunk.
		return err
	}
	if err := <-sent; err != nil {
		return fromRPCError(err)
	}
	// The owner answered, so it received every chunk: gRPC holds no more
	// references to buf.
	r.bufs.put(buf)
	// Collect the trailer so the stream ends cleanly on both sides (the
	// owner has already seen our half-close).
	var tail pb.ExpertFrame
	if err := stream.RecvMsg(&tail); err == nil {
		return fmt.Errorf("transport: protocol error: frame after the last response frame of request %d", head.RequestId)
	}
	return nil
}

// receive reads the response to request want.RequestId and writes its rows
// into c.out at c.ranges (so the response is a sequence of byte ranges of
// c.out).
func receive(stream pb.Worker_ExpertsClient, want *pb.ExpertFrame, c *call) error {
	d := c.d
	yb := asBytes(c.out)
	total := c.n * d * 4
	got, ri, roff := 0, 0, 0
	protoErr := func(format string, args ...any) error {
		return fmt.Errorf("transport: protocol error: request %d: %s", want.RequestId, fmt.Sprintf(format, args...))
	}
	for ch := uint32(0); ; ch++ {
		f, err := stream.Recv()
		if err == io.EOF {
			return fmt.Errorf("%w: stream ended after %d of %d response bytes", ErrPeerUnavailable, got, total)
		}
		if err != nil {
			return fromRPCError(err)
		}
		if f.RequestId != want.RequestId || f.Chunk != ch {
			return protoErr("got request %d chunk %d, want chunk %d", f.RequestId, f.Chunk, ch)
		}
		if ch == 0 {
			if f.Error != nil {
				return fromErrorFrame(f.Error)
			}
			if f.Phase != want.Phase {
				// An owner that predates training ignores the phase and
				// answers as inference: it kept nothing to differentiate.
				return fmt.Errorf("%w: a %s request was answered as %s: the worker does not support training",
					ErrIncompatible, phaseName(want.Phase), phaseName(f.Phase))
			}
			if f.Layer != want.Layer || !slices.Equal(f.Experts, want.Experts) || !slices.Equal(f.Rows, want.Rows) ||
				!slices.Equal(f.Shape, want.Shape) || f.Dtype != pb.DType_DTYPE_F32 || f.Job != want.Job || f.TrainSeq != want.TrainSeq {
				return protoErr("response header layer %d experts %v rows %v shape %v dtype %v job %q seq %d does not match the request",
					f.Layer, f.Experts, f.Rows, f.Shape, f.Dtype, f.Job, f.TrainSeq)
			}
		}
		p := f.Payload
		if got+len(p) > total {
			return protoErr("response exceeds %d bytes", total)
		}
		got += len(p)
		for len(p) > 0 {
			rg := c.ranges[ri]
			lo, hi := rg[0]*d*4, rg[1]*d*4
			m := copy(yb[lo+roff:hi], p)
			p, roff = p[m:], roff+m
			if lo+roff == hi {
				ri, roff = ri+1, 0
			}
		}
		if f.Last {
			break
		}
	}
	if got != total {
		return protoErr("response has %d bytes, want %d", got, total)
	}
	if bigEndian {
		for _, rg := range c.ranges {
			fromWire(c.out[rg[0]*d : rg[1]*d])
		}
	}
	return nil
}

// joinErrs joins errors with "; " (errors.Join uses newlines) and unwraps
// to all of them.
func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return errors.New("no replica to try")
	}
	return multiError(errs)
}

type multiError []error

func (m multiError) Error() string {
	s := make([]string, len(m))
	for i, e := range m {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (m multiError) Unwrap() []error { return m }
