package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/internal/rawsock"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/demux"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/wire"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ExpertServer serves one worker's routed experts on the Worker gRPC
// service, in scopes: the serving scope (an *expert.Store of the model the
// worker serves, under the serving placement) and one scope per training
// job running on the worker (AddJob: the job's own store, model and hidden
// size). A call names its scope in the handshake metadata (MDJob; none: the
// serving scope) and is checked against that scope's model. Expert
// requests from peers are reassembled, checked against the scope's
// placement epoch and the experts it holds, batched with concurrent
// requests for the same layer (one GEMM per expert, see the package
// comment), and answered in request row order. Training requests (see
// Phase in worker.proto) run the scope store's ForwardTrainFor /
// BackwardTrainFor on behalf of their caller (source and job), one request
// at a time on the GEMM goroutine, so each caller's saved activations stay
// apart; the experts' gradients accumulate in the store
// (expert.Store.Grad), where the owner's optimizer reads them. All scopes
// share the server's one GEMM goroutine.
//
// Use Serve for a gRPC server of its own, or ServerOptions + Register to
// share one with other services. It is safe for concurrent use.
type ExpertServer struct {
	pb.UnimplementedWorkerServer

	cfg ServerConfig
	id  identity // the serving scope's, for Health
	who string   // worker id for messages

	serving *scope
	jobsMu  sync.RWMutex
	jobs    map[string]*scope // training jobs' scopes, by job

	draining atomic.Bool
	active   atomic.Int64  // expert requests being served (first frame read, answer not yet sent)
	streams  atomic.Uint64 // Experts streams opened by callers, every scope

	batch *batcher
	bufs  f32Pool // request buffers and batch gather buffers
	// inflight is the budget of request bytes held (MaxInFlightBytes).
	inflight byteBudget
	batches  atomic.Uint64

	// compute runs one expert of the serving scope over contiguous rows
	// x [n, D] into y [n, D]. Tests replace it (before serving) to tag rows
	// with their owner.
	compute func(id expert.ID, f *expert.FFN, x []float32, d int, y []float32)
	// trainForward and trainBackward run a training request of the serving
	// scope on behalf of caller (the store's ForwardTrainFor and
	// BackwardTrainFor). Tests replace them (before serving) to tag rows.
	// Job scopes always use their own store's methods.
	trainForward  func(ctx context.Context, caller string, layer int, plan *router.Plan, x []float32, d int, y []float32) error
	trainBackward func(ctx context.Context, caller string, layer int, dy, dx []float32) error

	srvMu   sync.Mutex
	grpcSrv *grpc.Server
	dmx     *demux.Listener // Serve's listener, split between gRPC and lanes
	lanes   lanes           // Serve's open expert lanes
}

// scope is one plane of an ExpertServer: the serving placement's experts
// (job "") or one training job's.
type scope struct {
	job    string
	id     identity // protocol, the scope's model, job
	hidden int      // D of the scope's model
	store  *expert.Store

	epoch       atomic.Uint64 // placement epoch accepted (0: any; job scopes stay 0)
	maxReqEpoch atomic.Uint64
	// members are the worker IDs whose certificates may call a job scope
	// under mutual TLS (JobScope.SetMembers); nil: nobody.
	members atomic.Pointer[map[string]bool]
	removed atomic.Bool // a job scope whose job ended (JobScope.Close)

	streams  atomic.Uint64 // Experts streams opened on this scope
	requests atomic.Uint64 // requests answered over the network (results or errors)
	local    atomic.Uint64 // requests computed in process (JobScope, RemoteTrainer.SetLocal)
	bytesIn  atomic.Uint64
	bytesOut atomic.Uint64

	// forwards records, per caller and layer, the training forward whose
	// activations the store holds. Only the GEMM goroutine (runBatch)
	// touches it.
	forwards map[forwardKey]*savedForward

	statsMu  sync.Mutex
	counters map[expert.ID]*expertCounters
}

func newScope(job string, protocol int, model string, hidden int, store *expert.Store) *scope {
	return &scope{
		job: job, id: identity{protocol: protocol, model: model, job: job}, hidden: hidden, store: store,
		forwards: map[forwardKey]*savedForward{}, counters: map[expert.ID]*expertCounters{},
	}
}

// name is the scope in messages.
func (sc *scope) name() string {
	if sc.job == "" {
		return "serving"
	}
	return fmt.Sprintf("job %q", sc.job)
}

type expertCounters struct {
	tokens, gemms, requests atomic.Uint64
}

// NewExpertServer returns a server whose serving scope holds store's
// experts. The store may change while serving (Control, or the caller's
// own Put/Delete); each request sees an expert as present or absent.
func NewExpertServer(store *expert.Store, cfg ServerConfig) (*ExpertServer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &ExpertServer{
		cfg:     cfg,
		who:     string(cfg.Worker),
		serving: newScope("", cfg.Protocol, cfg.Model, cfg.Hidden, store),
		jobs:    map[string]*scope{},
	}
	s.id = s.serving.id
	s.lanes.ctx, s.lanes.cancel = context.WithCancel(context.Background())
	s.inflight.max = cfg.MaxInFlightBytes
	if s.who == "" {
		s.who = "(unnamed)"
	}
	s.compute = func(_ expert.ID, f *expert.FFN, x []float32, d int, y []float32) {
		store.ComputeRows(f, nil, x, d, y)
	}
	s.trainForward, s.trainBackward = store.ForwardTrainFor, store.BackwardTrainFor
	s.batch = newBatcher(cfg.BatchWindow, cfg.BatchRequests, s.runBatch, func(j *job) {
		s.bufs.put(j.x)
		j.x = nil
	})
	return s, nil
}

// JobScope is one training job's scope on an ExpertServer (AddJob): its
// expert store, model and hidden size, its saved forwards and counters.
// Peers reach it over the network with a pool whose ClientConfig.Job names
// the job; the job's own rank reaches it in process
// (RemoteTrainer.SetLocal). Safe for concurrent use.
type JobScope struct {
	s  *ExpertServer
	sc *scope
}

// AddJob opens a scope for training job job on the server: requests on
// streams whose handshake names the job (ClientConfig.Job) are checked
// against model (fingerprint) and hidden (D) and computed on store's
// experts, apart from the serving scope and every other job. Close the
// returned scope when the job ends; later requests for the job are refused
// with ErrUnknownJob.
func (s *ExpertServer) AddJob(job string, store *expert.Store, model string, hidden int) (*JobScope, error) {
	var errs []error
	if job == "" {
		errs = append(errs, errors.New("job id is empty"))
	}
	if store == nil {
		errs = append(errs, errors.New("no expert store"))
	}
	if model == "" {
		errs = append(errs, errors.New("model fingerprint is empty"))
	}
	if hidden <= 0 {
		errs = append(errs, fmt.Errorf("hidden %d must be positive", hidden))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("transport: worker %s: add job %q: %w", s.who, job, err)
	}
	sc := newScope(job, s.cfg.Protocol, model, hidden, store)
	s.jobsMu.Lock()
	defer s.jobsMu.Unlock()
	if s.jobs[job] != nil {
		return nil, fmt.Errorf("transport: worker %s: add job %q: the job already has a scope", s.who, job)
	}
	s.jobs[job] = sc
	return &JobScope{s: s, sc: sc}, nil
}

// SetMembers names the workers whose certificates may call the job's
// scope when the server runs mutual TLS (ServerConfig.TLS): the job's
// ranks, as the scheduler assigned them in etcd. Until it is called, no
// remote caller may. Without TLS it has no effect.
func (j *JobScope) SetMembers(ids []cluster.WorkerID) {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[string(id)] = true
	}
	j.sc.members.Store(&m)
}

// Job is the scope's job id.
func (j *JobScope) Job() string { return j.sc.job }

// Close removes the scope: requests for the job, on new streams or on
// streams already open, are refused with ErrUnknownJob. Idempotent.
func (j *JobScope) Close() {
	j.sc.removed.Store(true)
	j.s.jobsMu.Lock()
	if j.s.jobs[j.sc.job] == j.sc {
		delete(j.s.jobs, j.sc.job)
	}
	j.s.jobsMu.Unlock()
}

// Snapshot returns the scope's counters, as Stats answers a caller of the
// job. Requests counts requests that arrived over the network; per-expert
// Requests likewise; Tokens and Gemms count in-process work too.
func (j *JobScope) Snapshot() *pb.StatsResponse { return j.s.snapshot(j.sc) }

// Streams counts the Experts streams peers opened on the scope.
func (j *JobScope) Streams() uint64 { return j.sc.streams.Load() }

// LocalRequests counts the requests computed in process (no socket).
func (j *JobScope) LocalRequests() uint64 { return j.sc.local.Load() }

// scopeOf resolves the scope a call's metadata names: the serving scope
// when it names no job, else the job's, or an ErrUnknownJob error.
func (s *ExpertServer) scopeOf(ctx context.Context) (*scope, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	job, _ := firstValue(md, MDJob)
	if job == "" {
		return s.serving, nil
	}
	s.jobsMu.RLock()
	sc := s.jobs[job]
	s.jobsMu.RUnlock()
	if sc == nil {
		return nil, fmt.Errorf("%w: worker %s has no scope for training job %q (not started here yet, or finished)", ErrUnknownJob, s.who, job)
	}
	return sc, nil
}

// ServerOptions returns the gRPC server options the Worker service needs:
// the raw-bytes codec, message limits above the chunk size, flow-control
// windows of several chunks and keepalive settings.
func (s *ExpertServer) ServerOptions() []grpc.ServerOption { return s.serverOptions(false) }

// serverOptions: with terminated, the listener runs the TLS handshake
// (Serve's demux) and gRPC takes the finished connection.
func (s *ExpertServer) serverOptions(terminated bool) []grpc.ServerOption {
	sw, cw := windows(s.cfg.ChunkBytes, s.cfg.WindowChunks)
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(wire.Codec{}),
		grpc.MaxConcurrentStreams(s.cfg.MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(s.cfg.MaxMessageBytes),
		grpc.MaxSendMsgSize(s.cfg.MaxMessageBytes),
		grpc.InitialWindowSize(sw),
		grpc.InitialConnWindowSize(cw),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepaliveTime, Timeout: s.cfg.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: s.cfg.KeepaliveMinTime, PermitWithoutStream: true}),
	}
	switch {
	case s.cfg.TLS != nil && terminated:
		opts = append(opts, grpc.Creds(auth.Terminated()))
	case s.cfg.TLS != nil:
		opts = append(opts, grpc.Creds(s.cfg.TLS.ServerCreds(nil)))
	}
	return opts
}

// Register registers the Worker service on r (built with ServerOptions).
func (s *ExpertServer) Register(r grpc.ServiceRegistrar) { pb.RegisterWorkerServer(r, s) }

// Serve runs a gRPC server of its own on lis until Shutdown or Stop, and
// expert lanes on the same listener (lane.go; pkg/demux tells them apart,
// running the TLS handshake itself when the server has credentials). It
// returns nil after a stop.
func (s *ExpertServer) Serve(lis net.Listener) error {
	s.srvMu.Lock()
	if s.grpcSrv != nil {
		s.srvMu.Unlock()
		return errors.New("transport: ExpertServer already serving")
	}
	if s.draining.Load() {
		s.srvMu.Unlock()
		return fmt.Errorf("transport: worker %s: %w", s.who, ErrDraining)
	}
	g := grpc.NewServer(s.serverOptions(true)...)
	s.Register(g)
	s.grpcSrv = g
	var tlsConf *tls.Config
	if s.cfg.TLS != nil {
		tlsConf = s.cfg.TLS.ServerConfig(nil)
		tlsConf.NextProtos = []string{"h2", expertLaneALPN}
	}
	if s.cfg.LanePoll > 0 && rawsock.OK {
		// Connections read as before (poll 0) until serveLane knows
		// one is a lane.
		lis = rawsock.Listener{Listener: lis}
	}
	s.dmx = demux.New(lis, expertLaneMagic, s.serveLane, tlsConf, laneHandshakeTimeout)
	s.srvMu.Unlock()
	return g.Serve(s.dmx)
}

// Shutdown stops gracefully: Health reports DRAINING, new requests are
// refused with ErrDraining (callers move to another replica), in-flight
// requests finish. When ctx ends first, remaining connections are closed
// and ctx's error returned. A server used through Register only stops its
// batcher: stop the gRPC server first.
func (s *ExpertServer) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.srvMu.Lock()
	g := s.grpcSrv
	s.srvMu.Unlock()
	done := make(chan struct{})
	if g != nil {
		go func() { g.GracefulStop(); close(done) }()
	} else {
		close(done)
	}
	// Callers keep persistent Experts streams (gRPC streams and lanes)
	// open between requests: once no request is being served (new ones
	// are refused as draining), or the deadline passed, closing the idle
	// ones loses nothing.
	var err error
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.active.Load() != 0 && err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
		}
	}
	if g != nil {
		g.Stop() // a no-op once GracefulStop has finished
	}
	<-done
	s.lanes.closeAll()
	s.batch.stop()
	s.waitLanes()
	return err
}

// waitLanes waits for the demux's goroutines (and so every lane handler)
// to return, after the lanes were closed and the batcher stopped.
func (s *ExpertServer) waitLanes() {
	s.srvMu.Lock()
	d := s.dmx
	s.srvMu.Unlock()
	if d != nil {
		d.Close()
		d.Wait()
	}
}

// Stop closes every connection at once (in-flight calls fail with
// UNAVAILABLE) and stops the batcher: a crash, as peers see it.
func (s *ExpertServer) Stop() {
	s.draining.Store(true)
	s.srvMu.Lock()
	g := s.grpcSrv
	s.srvMu.Unlock()
	if g != nil {
		g.Stop()
	}
	s.lanes.closeAll()
	s.batch.stop()
	s.waitLanes()
}

// SetEpoch raises the placement epoch the serving scope accepts: requests routed
// with an older epoch get cluster.ErrStalePlacement. Lower values are
// ignored. It returns the epoch now in force.
func (s *ExpertServer) SetEpoch(e cluster.Epoch) cluster.Epoch {
	for {
		cur := s.serving.epoch.Load()
		if uint64(e) <= cur || s.serving.epoch.CompareAndSwap(cur, uint64(e)) {
			return cluster.Epoch(max(cur, uint64(e)))
		}
	}
}

// Epoch is the placement epoch the serving scope accepts (0: any).
func (s *ExpertServer) Epoch() cluster.Epoch { return cluster.Epoch(s.serving.epoch.Load()) }

// accept resolves the call's scope, runs the handshake against it and
// sends the scope's identity in the response header.
func (s *ExpertServer) accept(ctx context.Context) (*scope, error) {
	sc, err := s.scopeOf(ctx)
	if err != nil {
		return nil, statusError(err)
	}
	if err := s.authorize(ctx, sc); err != nil {
		return nil, err
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(sc.id.pairs()...))
	if err := sc.id.checkCaller(ctx, s.who); err != nil {
		return nil, statusError(err)
	}
	return sc, nil
}

// Experts implements the Worker service's dispatch/combine stream. The
// stream serves the scope its handshake names.
func (s *ExpertServer) Experts(stream pb.Worker_ExpertsServer) error {
	s.streams.Add(1)
	ctx := stream.Context()
	sc, err := s.accept(ctx)
	if err != nil {
		return err
	}
	sc.streams.Add(1)
	for {
		first, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := s.serveRequest(ctx, sc, stream, first); err != nil {
			if errors.Is(err, ErrBadRequest) {
				return statusError(err)
			}
			return err // the stream's own failure (cancelled, reset)
		}
	}
}

// serveRequest reads the rest of the request starting with frame first,
// and answers it. A returned error ends the stream; per-request errors are
// sent as error frames and return nil.
func (s *ExpertServer) serveRequest(ctx context.Context, sc *scope, stream pb.Worker_ExpertsServer, first *pb.ExpertFrame) error {
	s.active.Add(1)
	defer s.active.Add(-1)
	d := sc.hidden
	n, err := s.checkHeader(sc, first)
	if err != nil {
		return err
	}
	_, span := serveSpan(ctx, s.who, first, n)
	var spanErr error
	defer func() { endSpan(span, spanErr) }()
	j := newJob(ctx, sc, first)
	if err := s.admit(j, cluster.Epoch(first.Epoch)); err != nil {
		spanErr = err
		// Answer at once (the caller stops sending), then skip the rest.
		sc.requests.Add(1)
		if serr := stream.Send(&pb.ExpertFrame{RequestId: first.RequestId, Last: true, Error: errorFrame(err), Source: string(s.cfg.Worker)}); serr != nil {
			return serr
		}
		return s.readPayload(sc, stream, first, nil, n*d*4)
	}
	// The request's share of the in-flight budget (its rows in and out)
	// is reserved before its payload is read: while it waits, its stream
	// is not read and flow control holds the sender.
	share := int64(n) * int64(d) * 8
	if err := s.inflight.acquire(ctx, share); err != nil {
		return err
	}
	defer s.inflight.release(share)
	// The request's buffer is taken only once its whole payload has
	// arrived: a header alone (declaring up to MaxRequestBytes) costs the
	// owner nothing but the chunks actually received.
	var chunks [][]byte
	if err := s.readPayload(sc, stream, first, func(p []byte) { chunks = append(chunks, p) }, n*d*4); err != nil {
		return err
	}
	j.x = s.bufs.get(n * d)
	xb, off := asBytes(j.x), 0
	for _, c := range chunks {
		off += copy(xb[off:], c)
	}
	received := time.Now()
	fromWire(j.x)
	// y is pooled on a lane only, which writes its payload before Send
	// returns: gRPC keeps referencing a sent payload until its writer
	// goroutine has flushed it, which the server cannot observe.
	_, lane := stream.(*laneServer)
	if lane {
		j.y = s.bufs.get(n * d)
	} else {
		j.y = make([]float32, n*d)
	}
	if err := s.batch.submit(j); err != nil {
		spanErr = err
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sc.requests.Add(1)
		return stream.Send(&pb.ExpertFrame{RequestId: first.RequestId, Last: true, Error: errorFrame(err), Source: string(s.cfg.Worker)})
	}
	sc.requests.Add(1)
	if span != nil {
		span.AddEvent("batch started", trace.WithTimestamp(j.started))
		span.AddEvent("batch done")
	}
	if obs := s.cfg.Observer; obs != nil && obs.Request != nil && sc == s.serving {
		obs.Request(first.Source, n*d*4, n*d*4, j.started.Sub(received))
	}
	toWire(j.y)
	err = sendChunks(stream, &pb.ExpertFrame{
		RequestId: first.RequestId, Layer: first.Layer, Experts: first.Experts, Rows: first.Rows,
		Epoch: sc.epoch.Load(), Dtype: pb.DType_DTYPE_F32, Shape: first.Shape, Source: string(s.cfg.Worker),
		Phase: first.Phase, Job: first.Job, TrainSeq: first.TrainSeq,
		ServedMicros: uint64(time.Since(received).Microseconds()),
	}, asBytes(j.y), s.cfg.ChunkBytes, &sc.bytesOut)
	if lane {
		// The batch is done with y (submit returned without error) and
		// the lane has written it.
		s.bufs.put(j.y)
		j.y = nil
	}
	return err
}

// newJob is the batcher job for the request whose header is head, in
// scope sc.
func newJob(ctx context.Context, sc *scope, head *pb.ExpertFrame) *job {
	j := &job{ctx: ctx, scope: sc, phase: head.Phase, layer: int(head.Layer), experts: head.Experts, rows: head.Rows, seq: head.TrainSeq}
	if j.phase != pb.Phase_PHASE_INFER {
		j.caller = trainCaller(head.Source, head.Job)
	}
	return j
}

// serveLocal computes, in process, the request whose header is head (its
// Dtype and Shape set) in job scope sc: the same checks, admission and
// GEMM goroutine as a request from the network, no socket. gather writes
// the [n, D] request rows into the buffer it is given; the answer's rows
// are written to y ([n, D]), which must not be reused if an error is
// returned (a cancelled request's batch may still be writing it).
func (s *ExpertServer) serveLocal(ctx context.Context, sc *scope, head *pb.ExpertFrame, gather func([]float32), y []float32) error {
	s.active.Add(1)
	defer s.active.Add(-1)
	n, err := s.checkHeader(sc, head)
	if err != nil {
		return err
	}
	if len(y) != n*sc.hidden {
		return fmt.Errorf("%w: worker %s: local request: %d output values for %d rows of %d", ErrBadRequest, s.who, len(y), n, sc.hidden)
	}
	sc.local.Add(1)
	j := newJob(ctx, sc, head)
	j.local = true
	if err := s.admit(j, cluster.Epoch(head.Epoch)); err != nil {
		return err
	}
	j.x = s.bufs.get(n * sc.hidden)
	gather(j.x)
	j.y = y
	return s.batch.submit(j)
}

// checkHeader validates a request's first frame and returns its row count.
func (s *ExpertServer) checkHeader(sc *scope, f *pb.ExpertFrame) (int, error) {
	bad := func(format string, args ...any) (int, error) {
		return 0, fmt.Errorf("%w: worker %s: request %d: %s", ErrBadRequest, s.who, f.RequestId, fmt.Sprintf(format, args...))
	}
	if f.Chunk != 0 {
		return bad("starts with chunk %d", f.Chunk)
	}
	if f.Layer < 0 {
		return bad("layer %d", f.Layer)
	}
	if len(f.Experts) == 0 || len(f.Experts) != len(f.Rows) {
		return bad("%d experts with %d row counts", len(f.Experts), len(f.Rows))
	}
	// The most rows a request may carry: compared by division, so no
	// product of attacker-chosen numbers can overflow past the limit.
	maxRows := s.cfg.MaxRequestBytes / (int64(sc.hidden) * 4)
	n := int64(0)
	for i, e := range f.Experts {
		if e < 0 || (i > 0 && e <= f.Experts[i-1]) {
			return bad("expert ids %v not ascending and non-negative", f.Experts)
		}
		if f.Rows[i] <= 0 {
			return bad("expert %d has %d rows", e, f.Rows[i])
		}
		if int64(f.Rows[i]) > maxRows-n {
			return bad("more than %d rows (%d bytes, the limit)", maxRows, s.cfg.MaxRequestBytes)
		}
		n += int64(f.Rows[i])
	}
	switch f.Dtype {
	case pb.DType_DTYPE_F32:
	case pb.DType_DTYPE_BF16:
		return bad("dtype BF16 is not supported yet (send F32)")
	default:
		return bad("dtype %v", f.Dtype)
	}
	switch f.Phase {
	case pb.Phase_PHASE_INFER:
	case pb.Phase_PHASE_TRAIN_FORWARD, pb.Phase_PHASE_TRAIN_BACKWARD:
		if f.Source == "" {
			return bad("%s without a source (the caller whose activations the owner keeps)", phaseName(f.Phase))
		}
		if f.TrainSeq == 0 {
			return bad("%s without a train_seq", phaseName(f.Phase))
		}
		if sc.job != "" && f.Job != sc.job {
			return bad("%s of job %q on a stream of job %q", phaseName(f.Phase), f.Job, sc.job)
		}
	default:
		return bad("phase %v", f.Phase)
	}
	if len(f.Shape) != 2 || f.Shape[0] != n || f.Shape[1] != int64(sc.hidden) {
		return bad("shape %v, want [%d %d] (rows, hidden)", f.Shape, n, sc.hidden)
	}
	return int(n), nil // n <= maxRows: n x hidden x 4 <= MaxRequestBytes
}

// admit checks the request's scope and epoch and resolves its experts.
func (s *ExpertServer) admit(j *job, epoch cluster.Epoch) error {
	sc := j.scope
	if s.draining.Load() {
		return fmt.Errorf("%w: worker %s is shutting down", ErrDraining, s.who)
	}
	if sc.removed.Load() {
		return fmt.Errorf("%w: worker %s: training job %q has ended here", ErrUnknownJob, s.who, sc.job)
	}
	for {
		cur := sc.maxReqEpoch.Load()
		if uint64(epoch) <= cur || sc.maxReqEpoch.CompareAndSwap(cur, uint64(epoch)) {
			break
		}
	}
	if cur := cluster.Epoch(sc.epoch.Load()); cur != 0 && epoch < cur {
		return fmt.Errorf("%w: worker %s: layer %d request routed with placement epoch %d, worker is at epoch %d",
			cluster.ErrStalePlacement, s.who, j.layer, epoch, cur)
	}
	j.ffns = make([]*expert.FFN, len(j.experts))
	var missing []int32
	for i, e := range j.experts {
		if j.ffns[i] = sc.store.Get(expert.ID{Layer: j.layer, Expert: int(e)}); j.ffns[i] == nil {
			missing = append(missing, e)
		}
	}
	if len(missing) > 0 {
		where := ""
		if sc.job != "" {
			where = " " + sc.name()
		}
		return &notOwnedError{missing: missing, err: fmt.Errorf("worker %s%s: layer %d experts %v (request epoch %d, worker epoch %d): %w",
			s.who, where, j.layer, missing, epoch, sc.epoch.Load(), expert.ErrNotOwned)}
	}
	if j.phase != pb.Phase_PHASE_INFER {
		var notF32 []int32
		for i, f := range j.ffns {
			if f.Gate.F32 == nil || f.Up.F32 == nil || f.Down.F32 == nil {
				notF32 = append(notF32, j.experts[i])
			}
		}
		if len(notF32) > 0 {
			return fmt.Errorf("worker %s: %s of layer %d experts %v: %w", s.who, phaseName(j.phase), j.layer, notF32, expert.ErrNotFloat32)
		}
	}
	return nil
}

// readPayload reads the payload of the request that began with first (whose
// payload it includes), size bytes in all, passing each chunk's payload to
// keep (nil: discard). Chunks arrive in messages of their own (pkg/wire
// gives each its own slice), so keep may hold on to them.
func (s *ExpertServer) readPayload(sc *scope, stream pb.Worker_ExpertsServer, first *pb.ExpertFrame, keep func([]byte), size int) error {
	f, off := first, 0
	for {
		if off+len(f.Payload) > size {
			return fmt.Errorf("%w: worker %s: request %d: payload exceeds the %d bytes of its shape", ErrBadRequest, s.who, first.RequestId, size)
		}
		if keep != nil && len(f.Payload) > 0 {
			keep(f.Payload) // each received message owns its payload (pkg/wire)
		}
		off += len(f.Payload)
		sc.bytesIn.Add(uint64(len(f.Payload)))
		if f.Last {
			break
		}
		next, err := stream.Recv()
		if err == io.EOF {
			return fmt.Errorf("%w: worker %s: request %d: stream closed after chunk %d", ErrBadRequest, s.who, first.RequestId, f.Chunk)
		}
		if err != nil {
			return err
		}
		if next.RequestId != first.RequestId || next.Chunk != f.Chunk+1 {
			return fmt.Errorf("%w: worker %s: request %d chunk %d followed by request %d chunk %d", ErrBadRequest, s.who, first.RequestId, f.Chunk, next.RequestId, next.Chunk)
		}
		f = next
	}
	if off != size {
		return fmt.Errorf("%w: worker %s: request %d: %d payload bytes, shape needs %d", ErrBadRequest, s.who, first.RequestId, off, size)
	}
	return nil
}

// frameSender is the Send half of either side of an Experts stream.
type frameSender interface {
	Send(*pb.ExpertFrame) error
}

// sendChunks sends payload in chunks of at most chunk bytes; head holds the
// header fields and becomes chunk 0. Each Send returns once gRPC has queued
// the frame, so chunks stream back to back up to the flow-control window
// (several chunks in flight). counter, if not nil, accumulates payload
// bytes sent.
func sendChunks(stream frameSender, head *pb.ExpertFrame, payload []byte, chunk int, counter *atomic.Uint64) error {
	for c, off := uint32(0), 0; ; c++ {
		end := min(off+chunk, len(payload))
		f := &pb.ExpertFrame{RequestId: head.RequestId, Chunk: c}
		if c == 0 {
			f = head
		}
		f.Last = end == len(payload)
		f.Payload = payload[off:end]
		if err := stream.Send(f); err != nil {
			return err
		}
		if counter != nil {
			counter.Add(uint64(end - off))
		}
		if f.Last {
			return nil
		}
		off = end
	}
}

// runBatch computes a batch of jobs: one ComputeRows per (layer, expert)
// over the rows of every job that asked for it.
func (s *ExpertServer) runBatch(jobs []*job) {
	s.batches.Add(1)
	start := time.Now()
	for _, j := range jobs {
		j.started = start
	}
	type seg struct {
		j      *job
		off, n int
	}
	type group struct {
		sc   *scope
		id   expert.ID
		f    *expert.FFN
		segs []seg
		rows int
		c    *expertCounters
	}
	type key struct {
		sc *scope
		id expert.ID
		f  *expert.FFN
	}
	index := map[key]*group{}
	var groups []*group
	var train []*job
	total := 0
	for _, j := range jobs {
		if err := j.ctx.Err(); err != nil {
			j.err = err
			continue
		}
		if j.phase != pb.Phase_PHASE_INFER {
			train = append(train, j)
			continue
		}
		off := 0
		for i, e := range j.experts {
			n := int(j.rows[i])
			k := key{j.scope, expert.ID{Layer: j.layer, Expert: int(e)}, j.ffns[i]}
			g := index[k]
			if g == nil {
				g = &group{sc: k.sc, id: k.id, f: k.f, c: k.sc.counter(k.id)}
				index[k] = g
				groups = append(groups, g)
			}
			g.segs = append(g.segs, seg{j, off, n})
			g.rows += n
			total += n
			off += n
		}
	}
	sort.SliceStable(groups, func(a, b int) bool {
		ga, gb := groups[a].id, groups[b].id
		return ga.Layer < gb.Layer || ga.Layer == gb.Layer && ga.Expert < gb.Expert
	})
	obs := s.cfg.Observer
	exec := func(g *group) {
		d := g.sc.hidden
		var t0 time.Time
		if obs != nil && obs.Expert != nil && g.sc == s.serving {
			t0 = time.Now()
		}
		if len(g.segs) == 1 {
			sg := g.segs[0]
			s.computeRows(g.sc, g.id, g.f, sg.j.x[sg.off*d:(sg.off+sg.n)*d], d, sg.j.y[sg.off*d:(sg.off+sg.n)*d])
		} else {
			in, out := s.bufs.get(g.rows*d), s.bufs.get(g.rows*d)
			r := 0
			for _, sg := range g.segs {
				copy(in[r*d:], sg.j.x[sg.off*d:(sg.off+sg.n)*d])
				r += sg.n
			}
			s.computeRows(g.sc, g.id, g.f, in, d, out)
			r = 0
			for _, sg := range g.segs {
				copy(sg.j.y[sg.off*d:(sg.off+sg.n)*d], out[r*d:(r+sg.n)*d])
				r += sg.n
			}
			s.bufs.put(in)
			s.bufs.put(out)
		}
		if !t0.IsZero() {
			obs.Expert(g.id, g.rows, time.Since(t0))
		}
		g.c.gemms.Add(1)
		g.c.tokens.Add(uint64(g.rows))
		for _, sg := range g.segs {
			if !sg.j.local {
				g.c.requests.Add(1)
			}
		}
	}
	// As in expert.Store.Compute: few rows per expert (decode) run experts
	// in parallel; many rows run experts in turn, each GEMM parallel.
	switch {
	case len(groups) == 0:
	case total <= 4*len(groups):
		tensor.ParallelFor(len(groups), 1, func(lo, hi int) {
			for _, g := range groups[lo:hi] {
				exec(g)
			}
		})
	default:
		for _, g := range groups {
			exec(g)
		}
	}
	if obs != nil && obs.Batch != nil && total > 0 {
		obs.Batch(total, time.Since(start))
	}
	// Training requests run one at a time, each on behalf of its own
	// caller (each GEMM is parallel): their activations are saved per
	// caller, so batching them would need the store to split its state.
	for _, j := range train {
		j.err = s.runTrain(j)
	}
	for _, j := range jobs {
		s.bufs.put(j.x)
		j.x = nil
		close(j.done)
	}
}

// computeRows runs one expert of scope sc (the serving scope through the
// compute hook).
func (s *ExpertServer) computeRows(sc *scope, id expert.ID, f *expert.FFN, x []float32, d int, y []float32) {
	if sc == s.serving {
		s.compute(id, f, x, d, y)
		return
	}
	sc.store.ComputeRows(f, nil, x, d, y)
}

// forwardKey names a saved training forward on the owner: the caller
// (trainCaller) and the layer, as expert.Store keys its activations.
type forwardKey struct {
	caller string
	layer  int
}

// savedForward is the training forward whose activations the store holds
// for one forwardKey.
type savedForward struct {
	seq      uint64
	experts  []int32
	rows     []int32
	consumed bool // a backward has used (and the store dropped) the activations
}

// trainCaller is the caller name under which the store keeps a training
// requester's activations: its worker id and job, so that neither two
// workers nor two jobs of one worker mix.
func trainCaller(source, job string) string { return fmt.Sprintf("worker %q job %q", source, job) }

// runTrain runs one training request (on the GEMM goroutine). A forward
// builds a plan over the received rows (grouped by expert, Token the
// identity) and saves activations under (caller, layer); a backward checks
// that it matches the saved forward (sequence number and layout) and
// consumes it.
func (s *ExpertServer) runTrain(j *job) error {
	sc := j.scope
	d := sc.hidden
	key := forwardKey{j.caller, j.layer}
	where := ""
	if sc.job != "" {
		where = " " + sc.name()
	}
	what := fmt.Sprintf("worker %s%s: %s of layer %d for %s (seq %d)", s.who, where, phaseName(j.phase), j.layer, j.caller, j.seq)
	forward, backward := sc.store.ForwardTrainFor, sc.store.BackwardTrainFor
	if sc == s.serving {
		forward, backward = s.trainForward, s.trainBackward
	}
	switch j.phase {
	case pb.Phase_PHASE_TRAIN_FORWARD:
		delete(sc.forwards, key) // a failed forward leaves nothing to differentiate
		E := int(j.experts[len(j.experts)-1]) + 1
		plan := router.Plan{NumExperts: E, Offsets: make([]int32, E+1), Token: make([]int32, len(j.y)/d)}
		for i, e := range j.experts {
			plan.Offsets[e+1] = j.rows[i]
		}
		for e := 0; e < E; e++ {
			plan.Offsets[e+1] += plan.Offsets[e]
		}
		for i := range plan.Token {
			plan.Token[i] = int32(i)
		}
		if err := forward(j.ctx, j.caller, j.layer, &plan, j.x, d, j.y); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		sc.forwards[key] = &savedForward{seq: j.seq, experts: j.experts, rows: j.rows}
	case pb.Phase_PHASE_TRAIN_BACKWARD:
		sv := sc.forwards[key]
		switch {
		case sv == nil:
			return fmt.Errorf("%w: %s: no forward of this caller and layer is held (never received, failed, or lost with a restart)", ErrNoForward, what)
		case sv.seq > j.seq:
			return fmt.Errorf("%w: %s: stale backward: forward seq %d replaced it", ErrNoForward, what, sv.seq)
		case sv.seq != j.seq:
			return fmt.Errorf("%w: %s: the held forward is seq %d; forward seq %d never arrived or failed", ErrNoForward, what, sv.seq, j.seq)
		case sv.consumed:
			return fmt.Errorf("%w: %s: duplicate backward: an earlier backward already consumed forward seq %d", ErrNoForward, what, sv.seq)
		case !slices.Equal(sv.experts, j.experts) || !slices.Equal(sv.rows, j.rows):
			return fmt.Errorf("%w: %s: layout experts %v rows %v differs from its forward's experts %v rows %v",
				ErrBadRequest, what, j.experts, j.rows, sv.experts, sv.rows)
		}
		sv.consumed = true // the store drops the activations whatever happens next
		if err := backward(j.ctx, j.caller, j.layer, j.x, j.y); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	for i, e := range j.experts {
		c := sc.counter(expert.ID{Layer: j.layer, Expert: int(e)})
		c.tokens.Add(uint64(j.rows[i]))
		c.gemms.Add(1)
		if !j.local {
			c.requests.Add(1)
		}
	}
	return nil
}

func (sc *scope) counter(id expert.ID) *expertCounters {
	sc.statsMu.Lock()
	defer sc.statsMu.Unlock()
	c := sc.counters[id]
	if c == nil {
		c = &expertCounters{}
		sc.counters[id] = c
	}
	return c
}

// Health implements the Worker service. It needs no handshake and
// reports the serving scope.
func (s *ExpertServer) Health(ctx context.Context, _ *pb.HealthRequest) (*pb.HealthResponse, error) {
	if err := s.authorize(ctx, nil); err != nil {
		return nil, err
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(s.id.pairs()...))
	st := pb.ServingStatus_SERVING_STATUS_SERVING
	if s.draining.Load() {
		st = pb.ServingStatus_SERVING_STATUS_DRAINING
	}
	return &pb.HealthResponse{Status: st, Worker: string(s.cfg.Worker), Protocol: int32(s.cfg.Protocol), Model: s.cfg.Model, Epoch: s.serving.epoch.Load()}, nil
}

// Stats implements the Worker service: the counters of the scope the
// call names.
func (s *ExpertServer) Stats(ctx context.Context, _ *pb.StatsRequest) (*pb.StatsResponse, error) {
	sc, err := s.accept(ctx)
	if err != nil {
		return nil, err
	}
	return s.snapshot(sc), nil
}

// Streams counts the Experts streams callers have opened, on every scope
// (each carries any number of requests, one after the other).
func (s *ExpertServer) Streams() uint64 { return s.streams.Load() }

// Snapshot returns the serving scope's counters (what Stats answers a
// caller that names no job). Batches counts the server's batches, every
// scope's.
func (s *ExpertServer) Snapshot() *pb.StatsResponse { return s.snapshot(s.serving) }

func (s *ExpertServer) snapshot(sc *scope) *pb.StatsResponse {
	held := map[expert.ID]bool{}
	for _, id := range sc.store.IDs() {
		held[id] = true
	}
	sc.statsMu.Lock()
	ids := make([]expert.ID, 0, len(sc.counters)+len(held))
	for id := range sc.counters {
		ids = append(ids, id)
	}
	for id := range held {
		if sc.counters[id] == nil {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, expert.Compare)
	out := &pb.StatsResponse{
		Worker: string(s.cfg.Worker), Epoch: sc.epoch.Load(), MaxRequestEpoch: sc.maxReqEpoch.Load(),
		BytesHeld: sc.store.Bytes(), Requests: sc.requests.Load(), Batches: s.batches.Load(),
		BytesIn: sc.bytesIn.Load(), BytesOut: sc.bytesOut.Load(),
	}
	for _, id := range ids {
		es := &pb.ExpertStats{Layer: int32(id.Layer), Expert: int32(id.Expert), Held: held[id]}
		if c := sc.counters[id]; c != nil {
			es.Tokens, es.Gemms, es.Requests = c.tokens.Load(), c.gemms.Load(), c.requests.Load()
		}
		out.Experts = append(out.Experts, es)
	}
	sc.statsMu.Unlock()
	return out
}

// authorize checks, under mutual TLS, that the caller's certificate may
// call scope sc (see ServerConfig.TLS); nil scope means the call needs only
// an identity of the cluster's CA (Health, Stats).
func (s *ExpertServer) authorize(ctx context.Context, sc *scope) error {
	if s.cfg.TLS == nil {
		return nil
	}
	id, err := auth.FromContext(ctx)
	if err != nil {
		return status.Errorf(codes.Unauthenticated, "worker %s: %v", s.who, err)
	}
	switch {
	case sc == nil:
		return nil
	case sc.job == "":
		if id.Role == auth.RoleFrontend || id.Role == auth.RoleClient {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "worker %s: %s may not call the serving experts (front ends and clients may)", s.who, id)
	default:
		if m := sc.members.Load(); m != nil && id.Role == auth.RoleWorker && (*m)[id.Name] {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "worker %s: %s is not a rank of training job %q", s.who, id, sc.job)
	}
}

// InFlightBytes is the request and answer bytes the server holds now
// (bounded by ServerConfig.MaxInFlightBytes).
func (s *ExpertServer) InFlightBytes() int64 { return s.inflight.inUse() }

// byteBudget is a counting semaphore of bytes: acquire waits until n more
// fit under max (or nothing is held: a request larger than the budget runs
// alone), release gives them back.
type byteBudget struct {
	mu   sync.Mutex
	max  int64
	used int64
	wake chan struct{} // closed and replaced on every release
}

func (b *byteBudget) acquire(ctx context.Context, n int64) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		ch := b.wake
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
	b.mu.Unlock()
}

func (b *byteBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
