package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// RemoteTrainer is an expert.Trainer whose experts live on other workers:
// the gRPC twin of expert.Sharded. Compute is RemoteExecutor's (replicas,
// failover); ForwardTrain and BackwardTrain run a training step's expert
// work on the owners, which keep the activations between the two and
// accumulate the experts' weight gradients for their own optimizer.
//
// Training uses each expert's FIRST listed owner in the placement, for the
// forward, the backward and the optimizer: the owner that saved a forward's
// activations must get its backward, and one owner must hold the
// gradients. Replicas serve inference only. There is no failover: an owner
// that fails or does not answer within the call's deadline
// (ClientConfig.CallTimeout when ctx has none; AttemptTimeout does not
// apply, there being no other owner to try) fails the call with an error
// naming the layer, the worker and its address, and the step fails
// (recovery re-forms the group, see DESIGN §5). A stale placement fails
// the call as well (errors.Is(err, cluster.ErrStalePlacement)).
//
// With SetLocal, the experts whose first owner is the trainer's own worker
// are computed in process, through that worker's job scope (the same
// checks, saved forwards and GEMM goroutine as a request from a peer), and
// never reach a socket.
//
// As expert.Trainer says, each layer's ForwardTrain is followed by exactly
// one BackwardTrain of that layer before its next ForwardTrain; different
// layers may be in flight at once. Safe for concurrent use within that
// rule.
type RemoteTrainer struct {
	*RemoteExecutor
	job string

	self  cluster.WorkerID // with local: the worker whose experts are computed in process
	local *JobScope

	mu    sync.Mutex
	seq   uint64                 // last forward sequence number used
	saved map[int]*remoteForward // per layer: the last successful ForwardTrain
}

var _ expert.Trainer = (*RemoteTrainer)(nil)

// remoteForward is what BackwardTrain needs of a layer's ForwardTrain.
type remoteForward struct {
	seq   uint64
	epoch cluster.Epoch
	d     int
	rows  int // plan rows
	dests []*trainDest
}

// trainDest is one owner's part of a layer's training exchange.
type trainDest struct {
	w       cluster.WorkerID
	peer    *peer    // nil for the trainer's own worker under SetLocal
	experts []int32  // ascending
	rows    []int32  // rows per expert
	n       int      // sum(rows)
	ranges  [][2]int // plan row ranges, in request row order
}

// NewRemoteTrainer returns a trainer routing by src's placement over pool's
// connections. The owners keep its activations under the pool's worker id
// (ClientConfig.Worker, required) and job, so callers must use distinct
// worker ids, and one worker distinct jobs.
func NewRemoteTrainer(src PlacementSource, pool *Pool, job string) (*RemoteTrainer, error) {
	if pool.cfg.Worker == "" {
		return nil, errors.New("transport: remote trainer: the pool's ClientConfig.Worker is required (owners keep activations per caller)")
	}
	if pool.cfg.Job != "" && pool.cfg.Job != job {
		return nil, fmt.Errorf("transport: remote trainer: the pool addresses job %q's scope, the trainer's job is %q", pool.cfg.Job, job)
	}
	return &RemoteTrainer{
		RemoteExecutor: NewRemoteExecutor(src, pool),
		job:            job,
		// Sequence numbers start at the clock, so a restarted caller does
		// not reuse the numbers of its previous life.
		seq:   uint64(time.Now().UnixNano()),
		saved: map[int]*remoteForward{},
	}, nil
}

// Job is the training job id sent with every training request.
func (t *RemoteTrainer) Job() string { return t.job }

// SetLocal makes the trainer compute in process the rows of experts whose
// first listed owner is self (the trainer's own worker), through scope,
// this worker's scope of the trainer's job (ExpertServer.AddJob): no
// connection is made to self for training. self must be the pool's
// ClientConfig.Worker (owners key saved activations by it) and scope's job
// the trainer's. Call it before the first ForwardTrain.
func (t *RemoteTrainer) SetLocal(self cluster.WorkerID, scope *JobScope) error {
	var errs []error
	if self != t.cfg.Worker {
		errs = append(errs, fmt.Errorf("self %q is not the pool's worker %q", self, t.cfg.Worker))
	}
	if scope == nil {
		errs = append(errs, errors.New("no job scope"))
	} else {
		if scope.Job() != t.job {
			errs = append(errs, fmt.Errorf("scope of job %q, the trainer's job is %q", scope.Job(), t.job))
		}
		if m := scope.sc.id.model; m != t.cfg.Model {
			errs = append(errs, fmt.Errorf("scope of model %q, the trainer runs %q", m, t.cfg.Model))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("transport: remote trainer: set local: %w", err)
	}
	t.self, t.local = self, scope
	return nil
}

// ForwardTrain implements expert.Trainer: one TRAIN_FORWARD request per
// owner (each expert's first listed owner) holding the rows of its
// experts, owners concurrently; the results are written into y in plan
// order.
func (t *RemoteTrainer) ForwardTrain(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	t.mu.Lock()
	delete(t.saved, layer) // a failed forward leaves nothing to differentiate
	t.mu.Unlock()
	n := plan.Len()
	if d <= 0 || len(y) < n*d || len(x)%d != 0 {
		return fmt.Errorf("transport: training forward of layer %d: %d plan rows, D %d, x %d values, y %d values", layer, n, d, len(x), len(y))
	}
	ctx, cancel := t.withCallTimeout(ctx)
	defer cancel()
	fw := &remoteForward{d: d, rows: n}
	if n > 0 {
		pl := t.src.Current()
		if pl == nil {
			var err error
			if pl, err = t.src.Refresh(ctx); err != nil {
				return fmt.Errorf("transport: training forward of layer %d: read placement: %w", layer, err)
			}
		}
		if err := t.checkPlacement(pl, layer, plan.NumExperts); err != nil {
			return err
		}
		dests, err := t.primaries(pl, layer, plan)
		if err != nil {
			return err
		}
		t.mu.Lock()
		t.seq++
		fw.seq = t.seq
		t.mu.Unlock()
		fw.epoch, fw.dests = pl.Epoch, dests
		err = t.each(ctx, pb.Phase_PHASE_TRAIN_FORWARD, layer, fw, func(dst *trainDest) func([]float32) {
			return func(buf []float32) {
				k := 0
				for _, rg := range dst.ranges {
					for _, tok := range plan.Token[rg[0]:rg[1]] {
						copy(buf[k*d:(k+1)*d], x[int(tok)*d:int(tok+1)*d])
						k++
					}
				}
			}
		}, y)
		if err != nil {
			return err
		}
	}
	t.mu.Lock()
	t.saved[layer] = fw
	t.mu.Unlock()
	return nil
}

// BackwardTrain implements expert.Trainer: each owner of the layer's last
// ForwardTrain gets one TRAIN_BACKWARD request with the dy rows of its
// experts (same layout as the forward), owners concurrently; the dx rows
// come back into dx in plan order.
func (t *RemoteTrainer) BackwardTrain(ctx context.Context, layer int, dy, dx []float32) error {
	t.mu.Lock()
	fw := t.saved[layer]
	delete(t.saved, layer)
	t.mu.Unlock()
	if fw == nil {
		return fmt.Errorf("transport: training backward of layer %d: %w: no successful ForwardTrain of the layer since its last backward", layer, ErrNoForward)
	}
	d := fw.d
	if len(dy) < fw.rows*d || len(dx) < fw.rows*d {
		return fmt.Errorf("transport: training backward of layer %d: dy %d and dx %d values, the forward had %d rows of %d", layer, len(dy), len(dx), fw.rows, d)
	}
	if fw.rows == 0 {
		return nil
	}
	ctx, cancel := t.withCallTimeout(ctx)
	defer cancel()
	return t.each(ctx, pb.Phase_PHASE_TRAIN_BACKWARD, layer, fw, func(dst *trainDest) func([]float32) {
		return func(buf []float32) {
			k := 0
			for _, rg := range dst.ranges {
				k += copy(buf[k:], dy[rg[0]*d:rg[1]*d])
			}
		}
	}, dx)
}

func (t *RemoteTrainer) withCallTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); !ok && t.cfg.CallTimeout > 0 {
		return context.WithTimeout(ctx, t.cfg.CallTimeout)
	}
	return ctx, func() {}
}

// primaries groups the plan's experts by their first listed owner (owners
// in first-expert order, so the split is deterministic).
func (t *RemoteTrainer) primaries(pl *cluster.Placement, layer int, plan *router.Plan) ([]*trainDest, error) {
	byW := map[cluster.WorkerID]*trainDest{}
	var out []*trainDest
	for e := 0; e < plan.NumExperts; e++ {
		lo, hi := plan.Rows(e)
		if hi == lo {
			continue
		}
		owners := pl.OwnersOf(expert.ID{Layer: layer, Expert: e})
		if len(owners) == 0 {
			return nil, fmt.Errorf("transport: training forward of layer %d expert %d: placement epoch %d lists no owner", layer, e, pl.Epoch)
		}
		w := owners[0]
		dst := byW[w]
		if dst == nil && t.local != nil && w == t.self {
			dst = &trainDest{w: w}
			byW[w] = dst
			out = append(out, dst)
		}
		if dst == nil {
			info, ok := pl.Workers[w]
			if !ok || info.Addr == "" {
				return nil, fmt.Errorf("transport: training forward of layer %d expert %d: owner %s has no address in placement epoch %d", layer, e, w, pl.Epoch)
			}
			pr, err := t.pool.peer(w, info.Addr)
			if err != nil {
				return nil, fmt.Errorf("transport: training forward of layer %d expert %d: %w", layer, e, err)
			}
			dst = &trainDest{w: w, peer: pr}
			byW[w] = dst
			out = append(out, dst)
		}
		dst.experts = append(dst.experts, int32(e))
		dst.rows = append(dst.rows, int32(hi-lo))
		dst.n += hi - lo
		if k := len(dst.ranges); k > 0 && dst.ranges[k-1][1] == lo {
			dst.ranges[k-1][1] = hi
		} else {
			dst.ranges = append(dst.ranges, [2]int{lo, hi})
		}
	}
	return out, nil
}

// each runs one exchange of the given phase with every owner of fw,
// concurrently, gathering each request with gather(dst) and writing the
// answers into out at the owner's plan rows. The first failure cancels the
// other exchanges (the step fails anyway); errors name the layer, the
// worker and its address.
func (t *RemoteTrainer) each(ctx context.Context, phase pb.Phase, layer int, fw *remoteForward, gather func(*trainDest) func([]float32), out []float32) error {
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(fw.dests))
	var wg sync.WaitGroup
	for i, dst := range fw.dests {
		c := &call{
			head: &pb.ExpertFrame{
				Layer: int32(layer), Experts: dst.experts, Rows: dst.rows, Epoch: uint64(fw.epoch), Source: string(t.cfg.Worker),
				Phase: phase, Job: t.job, TrainSeq: fw.seq,
			},
			n: dst.n, d: fw.d, gather: gather(dst), out: out, ranges: dst.ranges,
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if dst.peer == nil {
				errs[i] = t.exchangeLocal(cctx, c)
			} else {
				errs[i] = t.exchange(cctx, dst.peer, c, false)
			}
			if errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	var failed, cancelled []error
	for i, err := range errs {
		dst := fw.dests[i]
		if err == nil {
			if dst.peer != nil {
				t.pool.markUp(dst.peer)
			}
			continue
		}
		where := "in process"
		if dst.peer != nil {
			where = dst.peer.addr
		}
		err = &PeerError{Worker: dst.w, Addr: where, Op: fmt.Sprintf("%s of layer %d", phaseName(phase), layer), Err: err}
		if ctx.Err() == nil && errors.Is(err, context.Canceled) {
			cancelled = append(cancelled, err) // stopped because another owner failed
			continue
		}
		if errors.Is(err, ErrPeerUnavailable) && dst.peer != nil {
			t.pool.markDown(dst.peer)
		}
		failed = append(failed, err)
	}
	if len(failed) == 0 {
		failed = cancelled
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return failed[0]
	}
	return multiError(failed)
}

// exchangeLocal runs c through the trainer's own job scope, in process:
// the request rows are gathered straight into the server's buffer, and the
// answer's rows written to c.out at c.ranges, as a remote answer's are.
func (t *RemoteTrainer) exchangeLocal(ctx context.Context, c *call) error {
	s := t.local.s
	c.head.Dtype = pb.DType_DTYPE_F32
	c.head.Shape = []int64{int64(c.n), int64(c.d)}
	y := s.bufs.get(c.n * c.d)
	if err := s.serveLocal(ctx, t.local.sc, c.head, c.gather, y); err != nil {
		return err // y is left to the garbage collector: a cancelled batch may still write it
	}
	d, k := c.d, 0
	for _, rg := range c.ranges {
		k += copy(c.out[rg[0]*d:rg[1]*d], y[k:])
	}
	s.bufs.put(y)
	return nil
}

// phaseName names a phase in messages.
func phaseName(p pb.Phase) string {
	switch p {
	case pb.Phase_PHASE_INFER:
		return "inference"
	case pb.Phase_PHASE_TRAIN_FORWARD:
		return "training forward"
	case pb.Phase_PHASE_TRAIN_BACKWARD:
		return "training backward"
	}
	return p.String()
}
