package transport

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/demux"
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

	smu  sync.Mutex
	idle []*pstream // persistent Experts streams not in use
	// noLanesUntil (unix nanoseconds): the peer's listener did not speak
	// expert lanes; use gRPC streams until then.
	noLanesUntil atomic.Int64
}

// maxIdleStreams bounds the idle Experts streams kept per peer: one per
// concurrent caller is enough (a front end's scheduler makes one call per
// destination at a time; training ranks a few).
const maxIdleStreams = 8

// pstream is a persistent Experts stream: requests go one after the other
// (the owner answers each before reading the next), so a decoding step
// costs one round trip per destination and no stream set-up.
type pstream struct {
	s pb.Worker_ExpertsClient
	// cancel aborts the stream: a blocked Send or Recv returns (a lane's
	// Recv still reads what arrives within laneAbortGrace, as a gRPC
	// stream still delivers what it had received).
	cancel context.CancelFunc
	// release, when set, frees what cancel only aborted (a lane's
	// connection); close calls both.
	release func()
	dead    atomic.Bool // cancelled by a caller's deadline: not reusable
}

func (st *pstream) close() {
	st.cancel()
	if st.release != nil {
		st.release()
	}
}

// stream takes an idle stream to pr, or opens one (always when fresh);
// reused says which. A new stream is a lane (see lane.go) unless the pool
// is GRPCOnly or the peer did not speak lanes lately; then a gRPC stream.
func (p *Pool) stream(ctx context.Context, pr *peer, fresh bool) (st *pstream, reused bool, err error) {
	if !fresh {
		pr.smu.Lock()
		if n := len(pr.idle); n > 0 {
			st = pr.idle[n-1]
			pr.idle = pr.idle[:n-1]
		}
		pr.smu.Unlock()
		if st != nil {
			return st, true, nil
		}
	}
	if !p.cfg.GRPCOnly && time.Now().UnixNano() >= pr.noLanesUntil.Load() {
		l, err := p.dialLane(ctx, pr)
		if err == nil {
			return &pstream{s: l, cancel: l.abort, release: func() { demux.CloseConn(l.conn) }}, false, nil
		}
		if !errors.Is(err, errNoLanes) {
			return nil, false, err
		}
		pr.noLanesUntil.Store(time.Now().Add(laneRetryAfter).UnixNano())
	}
	// The stream outlives this call, but opening it (which waits for the
	// connection) is bounded by the call's context.
	sctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, cancel)
	s, err := pr.client.Experts(sctx)
	if !stop() || err != nil {
		cancel()
		if err == nil {
			err = ctx.Err()
		}
		return nil, false, err
	}
	return &pstream{s: s, cancel: cancel}, false, nil
}

// putStream returns a healthy stream for reuse (or closes it beyond
// maxIdleStreams).
func (p *Pool) putStream(pr *peer, st *pstream) {
	pr.smu.Lock()
	if len(pr.idle) < maxIdleStreams {
		pr.idle = append(pr.idle, st)
		st = nil
	}
	pr.smu.Unlock()
	if st != nil {
		st.close()
	}
}

// closeStreams ends pr's idle streams.
func (pr *peer) closeStreams() {
	pr.smu.Lock()
	idle := pr.idle
	pr.idle = nil
	pr.smu.Unlock()
	for _, st := range idle {
		st.close()
	}
}

// NewPool validates cfg (filling defaults) and returns an empty pool;
// connections are made on first use.
func NewPool(cfg ClientConfig) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	id := identity{protocol: cfg.Protocol, model: cfg.Model, job: cfg.Job}
	sw, cw := windows(cfg.ChunkBytes, cfg.WindowChunks)
	opts := []grpc.DialOption{
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
		pr.closeStreams()
		pr.cc.Close() // the worker moved; calls in flight to the old address fail over
	}
	creds := insecure.NewCredentials()
	if p.cfg.TLS != nil {
		creds = p.cfg.TLS.ClientCreds(auth.Is(auth.Identity{Role: auth.RoleWorker, Name: string(w)}))
	}
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, p.opts...)...)
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
		pr.closeStreams()
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
	live  atomic.Pointer[func(cluster.WorkerID) bool]
	obs   atomic.Pointer[Observer]
	// calls counts Compute calls, from an offset hashed from the pool's
	// Worker name: the copy an expert's ties start from rotates with it
	// (see assign).
	calls atomic.Uint64
}

// Observer receives timings from a RemoteExecutor (for metrics); either
// function may be nil. They are called on the calling goroutines, so they
// must be cheap and safe for concurrent use.
type Observer struct {
	// Exchange: one attempt with one worker, rows sent and answered (or
	// err), took from the request's first byte to the answer's last, of
	// which the owner reported served on its side (batcher queue and
	// expert GEMMs): took - served is the exchange's own cost.
	Exchange func(layer int, w cluster.WorkerID, rows int, took, served time.Duration, err error)
	// Layer: one whole Compute call (every destination, retries
	// included), as the model waits for it; served is the owners' part
	// (per round of destinations, the longest any owner reported), so
	// took - served is what the exchange itself cost the layer.
	Layer func(layer int, rows int, took, served time.Duration, err error)
	// Routed: one Compute call's plan, once, before any exchange (rows
	// per expert: plan.Rows). The plan must not be kept.
	Routed func(layer int, plan *router.Plan)
}

// SetObserver installs o (nil: none).
func (r *RemoteExecutor) SetObserver(o *Observer) { r.obs.Store(o) }

var _ expert.Executor = (*RemoteExecutor)(nil)

// NewRemoteExecutor returns an executor routing by src's placement over
// pool's connections (and pool's configuration).
func NewRemoteExecutor(src PlacementSource, pool *Pool) *RemoteExecutor {
	r := &RemoteExecutor{src: src, pool: pool, cfg: pool.cfg}
	// Front ends start their tie rotation at offsets of their own (see
	// assign); a pool without a name starts at the primary.
	if pool.cfg.Worker != "" {
		h := fnv.New32a()
		h.Write([]byte(pool.cfg.Worker))
		r.calls.Store(uint64(h.Sum32()))
	}
	return r
}

// SetLive installs the membership the executor trusts: live(w) false means
// worker w has left the cluster (its etcd lease is gone), so its copies are
// not tried, and an expert whose every copy is on such workers fails the
// call at once with ErrNoReplica (and expert.ErrUnavailable) instead of
// waiting for a timeout. Nil (the default) treats every worker as live.
func (r *RemoteExecutor) SetLive(live func(cluster.WorkerID) bool) {
	if live == nil {
		r.live.Store(nil)
		return
	}
	r.live.Store(&live)
}

func (r *RemoteExecutor) isLive(w cluster.WorkerID) bool {
	if f := r.live.Load(); f != nil {
		return (*f)(w)
	}
	return true
}

// dest is one destination worker of one round of a Compute call.
type dest struct {
	w       cluster.WorkerID
	peer    *peer
	experts []int // ascending
	rows    int
}

// UnavailableError is Compute's error when some experts of a layer have no
// copy left to try: every owner has left the cluster, failed in this call,
// or is not in the placement. It wraps ErrNoReplica, expert.ErrUnavailable
// and the causes.
type UnavailableError struct {
	Layer   int
	Experts []int         // ascending
	Epoch   cluster.Epoch // of the placement used
	Causes  []error
	// Loading: some of the experts' copies answered NOT_OWNED (their
	// owners may be loading them), so waiting may help.
	Loading bool
}

func (e *UnavailableError) Error() string {
	ids := make([]string, len(e.Experts))
	for i, x := range e.Experts {
		ids[i] = expert.ID{Layer: e.Layer, Expert: x}.String()
	}
	msg := fmt.Sprintf("transport: layer %d: %v: experts %s have no live copy (placement epoch %d)",
		e.Layer, ErrNoReplica, strings.Join(ids, ","), e.Epoch)
	if len(e.Causes) > 0 {
		msg += ": " + multiError(e.Causes).Error()
	}
	return msg
}

func (e *UnavailableError) Unwrap() []error {
	return append([]error{ErrNoReplica, expert.ErrUnavailable}, e.Causes...)
}

// IDs lists the unavailable experts.
func (e *UnavailableError) IDs() []expert.ID {
	out := make([]expert.ID, len(e.Experts))
	for i, x := range e.Experts {
		out[i] = expert.ID{Layer: e.Layer, Expert: x}
	}
	return out
}

// Compute implements expert.Executor: one exchange per destination worker,
// destinations concurrently, retrying within ctx's deadline (or
// ClientConfig.CallTimeout when ctx has none):
//   - a failed or silent peer (ErrPeerUnavailable, draining): its rows go to
//     another copy at once, and the peer is avoided by later calls for
//     ClientConfig.DownFor;
//   - an owner that does not hold some experts yet (NOT_OWNED: it is still
//     loading copies the placement just gave it): the rows of those experts
//     go to another copy; when no other copy is left, the call waits for
//     the loading ones (re-reading the placement) for up to LoadWait;
//   - a stale placement: refreshed (at most MaxStaleRetries times).
//
// Experts with no copy left fail the call with an *UnavailableError. Errors
// name the layer, the worker and its address.
func (r *RemoteExecutor) Compute(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) (err error) {
	var served time.Duration // the owners' part of the wait (see Observer.Layer)
	n := plan.Len()
	if n == 0 {
		return nil
	}
	ctx, span := startSpan(ctx, "moe.layer", trace.SpanKindInternal, attribute.Int("switchyard.layer", layer), attribute.Int("switchyard.rows", n))
	defer func() { endSpan(span, err) }()
	if o := r.obs.Load(); o != nil {
		if o.Routed != nil {
			o.Routed(layer, plan)
		}
		if o.Layer != nil {
			start := time.Now()
			defer func() { o.Layer(layer, n, time.Since(start), served, err) }()
		}
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
	rot := int(r.calls.Add(1)-1) & math.MaxInt32
	failed := map[cluster.WorkerID]error{} // peers that failed in this call
	notOwned := map[workerExpert]error{}   // copies still loading, in this call's placement
	var loadSince time.Time                // when the first wait for loading copies began
	for refreshes, waits := 0, 0; ; {
		if err := r.checkPlacement(pl, layer, plan.NumExperts); err != nil {
			return err
		}
		dests, err := r.assign(pl, layer, plan, pending, failed, notOwned, rot)
		if err != nil {
			var ue *UnavailableError
			if errors.As(err, &ue) && ue.Loading {
				// The only copies left are still loading (a new placement
				// is in force before its owners have loaded it): wait for
				// them, or a newer placement, within the call's deadline.
				if waits == 0 {
					loadSince = time.Now()
				} else if time.Since(loadSince) >= r.cfg.LoadWait {
					return fmt.Errorf("%w (copies still loading after %v)", err, r.cfg.LoadWait)
				}
				pause := min(20*time.Millisecond<<min(waits, 4), 200*time.Millisecond)
				waits++
				t := time.NewTimer(pause)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return fmt.Errorf("%w (copies still loading after %d waits: %w)", err, waits, ctx.Err())
				}
				clear(notOwned)
				if pl, err = r.src.Refresh(ctx); err != nil {
					return fmt.Errorf("transport: layer %d: refresh placement: %w", layer, err)
				}
				continue
			}
			return err
		}
		calls := make([]*call, len(dests))
		for i, dst := range dests {
			calls[i] = inferCall(pl.Epoch, r.cfg.Worker, dst, layer, plan, x, d, y)
		}
		errs := r.exchangeAll(ctx, dests, calls)
		var most time.Duration
		for i, c := range calls {
			if errs[i] == nil {
				most = max(most, c.served)
			}
		}
		served += most

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
			case errors.Is(err, expert.ErrNotOwned):
				// Only the experts the owner lacks go elsewhere; it stays
				// usable for the rest.
				var re *RemoteError
				missing := dst.experts
				if errors.As(err, &re) && len(re.Missing) > 0 {
					missing = missing[:0:0]
					for _, m := range re.Missing {
						missing = append(missing, int(m))
					}
				}
				for _, e := range missing {
					notOwned[workerExpert{dst.w, e}] = err
				}
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
			clear(notOwned)
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

// workerExpert is one copy: an expert (of the layer in hand) on a worker.
type workerExpert struct {
	w cluster.WorkerID
	e int
}

// assign picks a worker for each pending expert: among its replicas that
// are live and have not failed or answered NOT_OWNED in this call, prefer
// those not marked down, then the fewest rows in flight from this pool
// (counting rows assigned in this round), then placement order rotated by
// rot (the call's number plus the executor's offset: with R copies, call
// k breaks ties from copy k mod R on). It groups experts by worker.
// Experts with no usable replica make an *UnavailableError naming all of
// them.
//
// Why rotate: a decoding front end at batch 1 has nothing in flight when
// a layer's call begins, so every copy of an expert ties; breaking ties
// by placement order sent every call to the primary copies and left the
// others idle (where a worker holds one expert per layer, half of an R = 2
// cluster). Rotating by call alone is not enough with several front ends:
// started together, their calls stay in step and pick the same copies
// (pkg/simulate's serving model, Mixtral-8x22B shape on 16 workers with 4
// front ends: 268 tokens/s rotating by call alone, 278 with the primary,
// 466 with front ends at different offsets); so each executor's count
// starts at an offset hashed from its Worker name (ClientConfig.Worker;
// none: 0, the primary first).
func (r *RemoteExecutor) assign(pl *cluster.Placement, layer int, plan *router.Plan, pending []int, failed map[cluster.WorkerID]error, notOwned map[workerExpert]error, rot int) ([]*dest, error) {
	now := time.Now()
	byW := map[cluster.WorkerID]*dest{}
	var out []*dest
	var missing *UnavailableError
	for _, e := range pending {
		lo, hi := plan.Rows(e)
		owners := pl.OwnersOf(expert.ID{Layer: layer, Expert: e})
		var (
			best      *peer
			bestDown  bool
			bestLoad  int64
			unusable  []error
			candidate bool
			loading   bool // a copy was refused as not (yet) held
		)
		for i := range owners {
			w := owners[(i+rot)%len(owners)]
			if err := failed[w]; err != nil {
				unusable = append(unusable, err)
				continue
			}
			if err := notOwned[workerExpert{w, e}]; err != nil {
				unusable = append(unusable, err)
				loading = true
				continue
			}
			if !r.isLive(w) {
				unusable = append(unusable, fmt.Errorf("worker %s has left the cluster (no etcd lease)", w))
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
			if missing == nil {
				missing = &UnavailableError{Layer: layer, Epoch: pl.Epoch}
			}
			missing.Experts = append(missing.Experts, e)
			missing.Loading = missing.Loading || loading
			if len(owners) == 0 {
				unusable = append(unusable, fmt.Errorf("placement epoch %d lists no owner of expert %d", pl.Epoch, e))
			}
			for _, u := range unusable {
				if !slices.ContainsFunc(missing.Causes, func(c error) bool { return c.Error() == u.Error() }) {
					missing.Causes = append(missing.Causes, u)
				}
			}
			continue
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
	if missing != nil {
		return nil, missing
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
	// served is what the owner reported spending on the request
	// (ExpertFrame.served_micros), set by receive.
	served time.Duration
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

// exchangeAll runs one attempt of calls[i] with dests[i] for every i and
// returns their errors. Requests that fit in one chunk (a decoding batch's
// rows) are pipelined by the calling goroutine: every request is written
// to its destination's persistent stream, then every answer is read, so a
// layer costs one round trip to the slowest destination and no goroutine
// hand-off. Larger requests run on one goroutine per destination.
func (r *RemoteExecutor) exchangeAll(ctx context.Context, dests []*dest, calls []*call) []error {
	errs := make([]error, len(dests))
	small := true
	for _, c := range calls {
		small = small && c.n*c.d*4 <= r.cfg.ChunkBytes
	}
	if small {
		as := make([]*attempt, len(dests))
		for i, dst := range dests {
			as[i] = r.begin(ctx, dst.peer, calls[i], true)
		}
		for i, a := range as {
			errs[i] = r.finish(a)
		}
		return errs
	}
	var wg sync.WaitGroup
	for i, dst := range dests[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i+1] = r.exchange(ctx, dst.peer, calls[i+1], true)
		}()
	}
	errs[0] = r.exchange(ctx, dests[0].peer, calls[0], true)
	wg.Wait()
	return errs
}

// exchange runs one attempt of c with worker pr, bounded by
// AttemptTimeout when limit is set (and always by ctx).
func (r *RemoteExecutor) exchange(ctx context.Context, pr *peer, c *call, limit bool) error {
	return r.finish(r.begin(ctx, pr, c, limit))
}

// attempt is one request to one worker in flight: begun (sent, when it
// fits in a chunk) but not yet answered.
type attempt struct {
	pr      *peer
	c       *call
	ctx     context.Context // the call's, bounded by AttemptTimeout
	cancel  context.CancelFunc
	start   time.Time
	buf     []float32 // the request in wire order
	st      *pstream
	reused  bool
	stopAbt func() bool // stops the abort-on-ctx hook
	sent    chan error  // multi-chunk requests: the sender goroutine's result
	err     error       // failure so far (set: nothing is in flight)
	span    trace.Span  // the request's span when the caller traces (nil: none)
}

// begin starts attempt c with pr: takes a stream, hooks the attempt's
// deadline to it, and sends the request (or starts sending it, for a
// multi-chunk request).
func (r *RemoteExecutor) begin(ctx context.Context, pr *peer, c *call, limit bool) *attempt {
	a := &attempt{pr: pr, c: c, ctx: ctx, cancel: func() {}, start: time.Now()}
	if traced(ctx) {
		a.ctx, a.span = startSpan(ctx, "expert.exchange", trace.SpanKindClient, attribute.String("switchyard.worker", string(pr.id)),
			attribute.Int("switchyard.layer", int(c.head.Layer)), attribute.Int("switchyard.rows", c.n))
		c.head.Traceparent = traceparent(a.ctx)
	}
	if limit && r.cfg.AttemptTimeout > 0 {
		a.ctx, a.cancel = context.WithTimeout(a.ctx, r.cfg.AttemptTimeout)
	}
	pr.inflight.Add(int64(c.n))
	a.buf = r.bufs.get(c.n * c.d)
	c.gather(a.buf)
	toWire(a.buf)
	c.head.Dtype = pb.DType_DTYPE_F32
	c.head.Shape = []int64{int64(c.n), int64(c.d)}
	r.send(a, false)
	return a
}

// send takes a stream (a fresh one if fresh) and sends a's request on it.
func (r *RemoteExecutor) send(a *attempt, fresh bool) {
	a.err, a.sent, a.st = nil, nil, nil
	st, reused, err := r.pool.stream(a.ctx, a.pr, fresh)
	if err != nil {
		a.err = fromRPCError(err)
		return
	}
	a.st, a.reused = st, reused
	a.stopAbt = context.AfterFunc(a.ctx, func() {
		st.dead.Store(true)
		st.cancel()
	})
	a.c.head.RequestId = r.reqID.Add(1)
	payload := asBytes(a.buf)
	if len(payload) <= r.cfg.ChunkBytes {
		// io.EOF: the owner ended the stream (e.g. refused the caller);
		// its status is what the answer's receive returns.
		if err := sendChunks(st.s, a.c.head, payload, r.cfg.ChunkBytes, nil); err != nil && err != io.EOF {
			a.err = fromRPCError(err)
		}
		if a.span != nil {
			a.span.AddEvent("sent")
		}
		return
	}
	a.sent = make(chan error, 1)
	go func() { a.sent <- sendChunks(st.s, a.c.head, payload, r.cfg.ChunkBytes, nil) }()
}

// finish reads a's answer into its call's output, returns the stream to
// the pool (or closes it), and reports the result. A reused stream that
// broke before any answer (the peer restarted, or closed its idle streams
// while draining) is replaced by a fresh one, once.
func (r *RemoteExecutor) finish(a *attempt) error {
	defer a.cancel()
	defer a.pr.inflight.Add(-int64(a.c.n))
	err := r.await(a)
	if err != nil && !errors.Is(err, errAnswered) && a.reused && a.ctx.Err() == nil {
		r.send(a, true)
		err = r.await(a)
	}
	answeredErr := errors.Is(err, errAnswered)
	if answeredErr {
		err = errors.Unwrap(err)
	}
	if o := r.obs.Load(); o != nil && o.Exchange != nil {
		o.Exchange(int(a.c.head.Layer), a.pr.id, a.c.n, time.Since(a.start), a.c.served, err)
	}
	if a.span != nil {
		a.span.SetAttributes(attribute.Int64("switchyard.served_us", a.c.served.Microseconds()))
		endSpan(a.span, err)
	}
	if err == nil {
		// The owner answered, so it received every chunk: gRPC holds no
		// more references to buf. (A failed request's buf is left to the
		// garbage collector: gRPC's writer may still hold a queued chunk.)
		r.bufs.put(a.buf)
		return nil
	}
	if answeredErr {
		return err // the owner's own answer (an error frame): nothing timed out
	}
	cause := a.ctx.Err()
	if dl, ok := a.ctx.Deadline(); cause == nil && ok && !time.Now().Before(dl) {
		cause = context.DeadlineExceeded
	}
	if cause != nil {
		// The deadline (or the caller's cancellation) is the cause; gRPC's
		// own error for it says less.
		return fmt.Errorf("%w: no complete answer after %v: %w", ErrPeerUnavailable, time.Since(a.start).Round(time.Millisecond), cause)
	}
	return err
}

// errAnswered wraps an error frame the owner answered with: the stream is
// still in sync.
var errAnswered = errors.New("answered")

type answered struct{ err error }

func (e answered) Error() string   { return e.err.Error() }
func (e answered) Unwrap() error   { return e.err }
func (e answered) Is(t error) bool { return t == errAnswered }

// await receives a's answer on its stream (if the send went out) and
// settles the stream: back to the pool when it is in sync, else closed.
// An error frame from the owner comes back wrapped in answered.
func (r *RemoteExecutor) await(a *attempt) error {
	if a.err != nil {
		if a.st != nil {
			a.stopAbt()
			a.st.close()
		}
		return a.err
	}
	c := a.c
	want := &pb.ExpertFrame{
		RequestId: c.head.RequestId, Layer: c.head.Layer, Experts: c.head.Experts, Rows: c.head.Rows, Shape: c.head.Shape,
		Phase: c.head.Phase, Job: c.head.Job, TrainSeq: c.head.TrainSeq,
	}
	inSync, err := receive(a.st.s, want, c)
	if a.sent != nil {
		if !inSync {
			a.st.cancel()
		}
		if serr := <-a.sent; serr != nil && serr != io.EOF && err == nil {
			inSync, err = false, fromRPCError(serr)
		}
	}
	a.stopAbt()
	if inSync && !a.st.dead.Load() {
		r.pool.putStream(a.pr, a.st)
	} else {
		a.st.close()
		if err == nil && a.st.dead.Load() {
			return nil // answered in full just as the deadline hit
		}
	}
	if err != nil && inSync {
		return answered{err}
	}
	return err
}

// receive reads the response to request want.RequestId and writes its rows
// into c.out at c.ranges (so the response is a sequence of byte ranges of
// c.out). answered reports whether the whole response (or an error frame
// answering the request) was read, leaving the stream in sync.
func receive(stream pb.Worker_ExpertsClient, want *pb.ExpertFrame, c *call) (answered bool, err error) {
	d := c.d
	yb := asBytes(c.out)
	total := c.n * d * 4
	got, ri, roff := 0, 0, 0
	protoErr := func(format string, args ...any) (bool, error) {
		return false, fmt.Errorf("transport: protocol error: request %d: %s", want.RequestId, fmt.Sprintf(format, args...))
	}
	for ch := uint32(0); ; ch++ {
		f, err := stream.Recv()
		if err == io.EOF {
			return false, fmt.Errorf("%w: stream ended after %d of %d response bytes", ErrPeerUnavailable, got, total)
		}
		if err != nil {
			return false, fromRPCError(err)
		}
		if f.RequestId != want.RequestId || f.Chunk != ch {
			return protoErr("got request %d chunk %d, want chunk %d", f.RequestId, f.Chunk, ch)
		}
		if ch == 0 {
			c.served = time.Duration(f.ServedMicros) * time.Microsecond
			if f.Error != nil {
				return f.Last, fromErrorFrame(f.Error)
			}
			if f.Phase != want.Phase {
				// An owner that predates training ignores the phase and
				// answers as inference: it kept nothing to differentiate.
				return false, fmt.Errorf("%w: a %s request was answered as %s: the worker does not support training",
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
	return true, nil
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
