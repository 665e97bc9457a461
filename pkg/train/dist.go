package train

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
)

// Comm is a data-parallel group as a training step needs it.
type Comm interface {
	Rank() int
	Size() int
	// AllReduce sums buf over the group in place. Every rank must get
	// bit-identical results (the dense replicas stay identical). Calls of
	// one rank are sequential and every rank makes the same calls in the
	// same order.
	AllReduce(ctx context.Context, buf []float32) error
	// AllReduceFloat64 sums a small float64 vector (statistics: token
	// counts, loss sums, squared norms) over the group, in float64, added
	// in rank order so every rank gets identical bits.
	AllReduceFloat64(ctx context.Context, v []float64) error
	// Barrier returns once every rank has entered it.
	Barrier(ctx context.Context) error
}

// DistStepper is one rank of data-parallel + expert-parallel training:
// the dense weights are replicated (each rank takes its own micro-batch and
// the dense gradients are all-reduced in buckets while the backward runs,
// as PyTorch DDP does), the routed experts are split among the ranks (the
// model's executor sends each MoE layer's rows to their owners, forward and
// backward), and each rank's AdamW updates the dense replica (identically
// everywhere) and the experts it owns.
//
// The loss is normalized over the whole group's batch, so the group
// reproduces a single process training on the concatenated batch.
type DistStepper struct {
	*Stepper
	Comm Comm
	// BucketBytes is the all-reduce bucket size; default 25 MiB (DDP's).
	BucketBytes int
	// Timings of the last step.
	LastAllReduce time.Duration // time spent waiting for gradient all-reduces after the backward
	// Last is the last step's time split and all-reduce traffic.
	Last StepTimes
	// Replicas, if set, says which ranks hold a copy of each routed expert
	// (primary first). Experts with several holders have their gradients
	// all-reduced among the group after the backward (each holder saw only
	// the rows routed to it), so every copy takes the same AdamW step and
	// the replicas stay identical. Nil: every expert has one owner.
	Replicas *Replicas
	// StopRequest, if set, is this rank's vote, taken in every step's
	// statistics all-reduce, to stop after the step; stopAgreed is the
	// group's answer for the last step (any rank voted).
	StopRequest func() bool
	stopAgreed  bool
}

// Replicas describes replicated experts for training.
type Replicas struct {
	Experts []expert.ID           // every logical expert, in one fixed order
	Holders func(expert.ID) []int // ranks holding a copy, primary first
}

// replicatedGrads sums the gradients of experts held by several ranks:
// a buffer over every replicated expert (in Experts order) holds this
// rank's partial gradients where it holds a copy, zeros elsewhere; after
// the all-reduce each holder copies the totals back.
func (s *DistStepper) replicatedGrads(ctx context.Context) error {
	r := s.Replicas
	if r == nil {
		return nil
	}
	rank := s.Comm.Rank()
	type slot struct {
		off int
		g   *expert.FFN
	}
	var slots []slot
	n := 0
	for _, id := range r.Experts {
		h := r.Holders(id)
		if len(h) < 2 {
			continue
		}
		d, F := s.Model.Cfg.Hidden, s.Model.Cfg.MoE.Inter
		var g *expert.FFN
		for _, x := range h {
			if x == rank {
				g = s.Store.Grad(id)
			}
		}
		slots = append(slots, slot{off: n, g: g})
		n += 3 * d * F
	}
	if n == 0 {
		return nil
	}
	buf := make([]float32, n)
	for _, sl := range slots {
		if sl.g != nil {
			k := len(sl.g.Gate.F32)
			copy(buf[sl.off:], sl.g.Gate.F32)
			copy(buf[sl.off+k:], sl.g.Up.F32)
			copy(buf[sl.off+2*k:], sl.g.Down.F32)
		}
	}
	if err := s.Comm.AllReduce(ctx, buf); err != nil {
		return fmt.Errorf("train: rank %d: replicated expert gradient all-reduce: %w", rank, err)
	}
	for _, sl := range slots {
		if sl.g != nil {
			k := len(sl.g.Gate.F32)
			copy(sl.g.Gate.F32, buf[sl.off:sl.off+k])
			copy(sl.g.Up.F32, buf[sl.off+k:sl.off+2*k])
			copy(sl.g.Down.F32, buf[sl.off+2*k:sl.off+3*k])
		}
	}
	return nil
}

// primary reports whether this rank is an expert's primary holder (its
// gradient counts once in the global norm).
func (s *DistStepper) primary(id expert.ID) bool {
	if s.Replicas == nil {
		return true
	}
	h := s.Replicas.Holders(id)
	return len(h) == 0 || h[0] == s.Comm.Rank()
}

// NewDistStepper prepares rank comm.Rank() of a group. m.Experts must be an
// expert.Trainer reaching every expert (local or remote); owned is the
// store of the experts this rank owns and optimizes.
func NewDistStepper(m *model.Model, owned *expert.Store, comm Comm, cfg StepConfig) (*DistStepper, error) {
	s, err := NewStepper(m, owned, cfg)
	if err != nil {
		return nil, err
	}
	return &DistStepper{Stepper: s, Comm: comm, BucketBytes: 25 << 20}, nil
}

// TrainStep runs one step on this rank's micro-batch ids [B][T]; every rank
// of the group must call it with its own micro-batch at the same time.
//
// A rank may get no rows (a global batch smaller than the group): it still
// takes part in every collective, with zero contributions, and updates its
// replica and experts like the others.
func (s *DistStepper) TrainStep(ctx context.Context, ids [][]int32) (*StepOut, error) {
	t0 := time.Now()
	s.Last = StepTimes{}
	res, err := s.gradients(ctx, ids)
	if err != nil {
		return nil, err
	}
	out, err := s.apply(ctx, res)
	s.Last.Total = time.Since(t0)
	return out, err
}

// StepTimes splits one distributed step's wall time (Total) into disjoint
// parts: Forward and Backward are this rank's own compute (routed experts
// excluded), ExchangeWait the routed experts through the executor (rows
// to and from their owners, local experts included, forward and
// backward), AllReduceWait the statistics, gradient-norm and the wait for
// the gradient all-reduce after the backward (the rest of it overlaps the
// backward), Optimizer clipping, AdamW and the bias update, Barrier the
// end-of-step barrier. AllReduceBytes is what the gradient all-reduce
// summed (this rank's buffer) and AllReduceBusy how long its buckets took
// from the first start to the last end, overlap included; BusBandwidth
// derives from them as NCCL reports it: 2(n-1)/n x bytes / time (0 with
// one rank).
type StepTimes struct {
	Forward, Backward, ExchangeWait, AllReduceWait, Optimizer, Barrier, Total time.Duration
	AllReduceBytes                                                            int64
	AllReduceBusy                                                             time.Duration
	// ExchangeForward is the forward's share of ExchangeWait.
	ExchangeForward time.Duration
}

// BusBandwidth is the gradient all-reduce's bus bandwidth in bytes/s over
// n ranks (0 when n < 2 or nothing was timed).
func (t StepTimes) BusBandwidth(n int) float64 {
	if n < 2 || t.AllReduceBusy <= 0 {
		return 0
	}
	return 2 * float64(n-1) / float64(n) * float64(t.AllReduceBytes) / t.AllReduceBusy.Seconds()
}

// Gradients computes the group's gradients of the batch (this rank's rows
// ids) without updating anything: afterwards Grads holds the all-reduced
// dense gradients (identical on every rank) and each rank's store the
// gradients of the experts it owns.
func (s *DistStepper) Gradients(ctx context.Context, ids [][]int32) (*model.StepResult, error) {
	return s.gradients(ctx, ids)
}

func (s *DistStepper) gradients(ctx context.Context, ids [][]int32) (*model.StepResult, error) {
	s.Grads.Zero()
	s.Store.ZeroGrad()
	m, st := s.Model, s.state
	if st.Prof == nil {
		st.Prof = &model.Profile{} // the exchange wait (a few time.Now calls per layer)
	}
	e0 := st.Prof.Experts
	empty := len(ids) == 0
	var stats []float64
	tf := time.Now()
	if empty {
		stats = make([]float64, model.StatsLen(m.Cfg))
	} else {
		if _, err := m.TrainForward(ctx, st, ids, s.Cfg.Loss); err != nil {
			return nil, err
		}
		stats = st.Stats()
	}
	e1 := st.Prof.Experts
	s.Last.Forward = time.Since(tf) - (e1 - e0)
	s.Last.ExchangeForward = e1 - e0
	// One more element carries the ranks' stop votes (a count: > 0 when
	// any rank asked), so stopping costs no collective of its own.
	vote := 0.0
	if s.StopRequest != nil && s.StopRequest() {
		vote = 1
	}
	stats = append(slices.Clone(stats), vote)
	ta := time.Now()
	if err := s.Comm.AllReduceFloat64(ctx, stats); err != nil {
		return nil, fmt.Errorf("train: rank %d: loss statistics all-reduce: %w", s.Comm.Rank(), err)
	}
	s.Last.AllReduceWait += time.Since(ta)
	s.stopAgreed = stats[len(stats)-1] > 0
	stats = stats[:len(stats)-1]
	if empty {
		st.SetEmpty(m, stats, s.Cfg.Loss)
	} else if err := st.SetGlobalStats(m, stats); err != nil {
		return nil, err
	}
	// Bucketed all-reduce of dense gradients, overlapped with the backward:
	// gradients finalize from the end of Grads.Flat towards its start; each
	// full bucket is queued to one goroutine that all-reduces buckets in
	// order (so every rank issues the same collectives in the same order).
	flat := s.Grads.Flat
	bucket := max(s.BucketBytes/4, 1)
	queue := make(chan [2]int, 64)
	arDone := make(chan error, 1)
	var arFirst, arLast time.Time
	var arBytes int64
	go func() {
		var err error
		for sp := range queue {
			if err != nil {
				continue // drain after a failure
			}
			if arFirst.IsZero() {
				arFirst = time.Now()
			}
			arBytes += int64(sp[1]-sp[0]) * 4
			e := s.Comm.AllReduce(ctx, flat[sp[0]:sp[1]])
			arLast = time.Now()
			if e != nil {
				err = fmt.Errorf("train: rank %d: gradient all-reduce of [%d, %d): %w", s.Comm.Rank(), sp[0], sp[1], e)
			}
		}
		arDone <- err
	}()
	pendHi := len(flat) // [lo of the last final part, pendHi) is final but not queued
	st.OnGrads = func(part int) {
		lo, _ := s.Grads.Span(part)
		if pendHi-lo >= bucket || part == -1 {
			if pendHi > lo {
				queue <- [2]int{lo, pendHi}
			}
			pendHi = lo
		}
	}
	var berr error
	tb := time.Now()
	if empty {
		// No backward: release the (zero) gradients in the order a backward would.
		for part := m.Cfg.Layers; part >= -1; part-- {
			st.OnGrads(part)
		}
	} else {
		berr = m.TrainBackward(ctx, st, s.Grads)
	}
	st.OnGrads = nil
	s.Last.Backward = time.Since(tb) - (st.Prof.Experts - e1)
	s.Last.ExchangeWait = st.Prof.Experts - e0
	if berr == nil && pendHi > 0 {
		queue <- [2]int{0, pendHi} // anything no part covered
	}
	close(queue)
	t0 := time.Now()
	arErr := <-arDone
	s.LastAllReduce = time.Since(t0)
	s.Last.AllReduceWait += s.LastAllReduce
	s.Last.AllReduceBytes, s.Last.AllReduceBusy = arBytes, arLast.Sub(arFirst)
	if berr != nil {
		return nil, berr
	}
	if arErr != nil {
		return nil, arErr
	}
	// Every rank finished its backward (the all-reduce's last bucket
	// follows it), so every caller's expert gradients have arrived: add
	// them up in a fixed order.
	s.Store.FinishGrads()
	tr := time.Now()
	if err := s.replicatedGrads(ctx); err != nil {
		return nil, err
	}
	s.Last.AllReduceWait += time.Since(tr)
	return st.Result(), nil
}

// apply clips with the global gradient norm, updates the dense replica and
// the owned experts, applies the bias update and waits for the group.
func (s *DistStepper) apply(ctx context.Context, res *model.StepResult) (*StepOut, error) {
	m := s.Model
	params := s.Params()
	// Global gradient norm: the dense part is identical everywhere; expert
	// parts live with their owners.
	var denseSq, expertSq float64
	nDense := 0
	for i, r := range s.dense {
		if r.Trained {
			nDense++
			for _, g := range *s.gdense[i].Data {
				denseSq += float64(g) * float64(g)
			}
		}
	}
	for _, p := range params[nDense:] {
		if id, ok := expertOf(p.Name); ok && !s.primary(id) {
			continue // a replica: its primary counts it
		}
		for _, g := range p.G {
			expertSq += float64(g) * float64(g)
		}
	}
	sq := []float64{expertSq}
	ta := time.Now()
	if err := s.Comm.AllReduceFloat64(ctx, sq); err != nil {
		return nil, fmt.Errorf("train: rank %d: gradient norm all-reduce: %w", s.Comm.Rank(), err)
	}
	s.Last.AllReduceWait += time.Since(ta)
	to := time.Now()
	out := &StepOut{StepResult: *res, LR: s.Cfg.LR(s.Step), GradNorm: math.Sqrt(denseSq + sq[0])}
	if math.IsNaN(res.Loss) || math.IsInf(res.Loss, 0) || math.IsNaN(out.GradNorm) || math.IsInf(out.GradNorm, 0) {
		return out, fmt.Errorf("%w at step %d: loss %g, grad norm %g", ErrNonFinite, s.Step, res.Loss, out.GradNorm)
	}
	optim.Scale(params, optim.ClipScale(out.GradNorm, s.Cfg.MaxGradNorm))
	if err := s.Opt.Step(params, out.LR); err != nil {
		return out, err
	}
	UpdateScoreBias(m, res.Load, s.Cfg.BiasUpdateSpeed)
	s.Last.Optimizer = time.Since(to)
	// Barrier: every owner has updated its experts before any rank's next
	// forward reads them.
	tb := time.Now()
	if err := s.Comm.Barrier(ctx); err != nil {
		return out, fmt.Errorf("train: rank %d: end-of-step barrier: %w", s.Comm.Rank(), err)
	}
	s.Last.Barrier = time.Since(tb)
	s.Step++
	return out, nil
}

// LocalGroup is an in-process Comm group of n ranks (goroutines), for
// tests and single-machine runs. Sums are taken in rank order, so every
// rank gets identical bits.
func LocalGroup(n int) []Comm {
	g := &localGroup{n: n, gen: map[int]*localRound{}}
	out := make([]Comm, n)
	for r := range out {
		out[r] = &localComm{g: g, rank: r}
	}
	return out
}

type localGroup struct {
	n   int
	mu  sync.Mutex
	gen map[int]*localRound // by call sequence number
}

type localRound struct {
	bufs [][]float32
	f64  [][]float64
	in   int
	err  error // set before done is closed
	done chan struct{}
}

type localComm struct {
	g    *localGroup
	rank int
	seq  int
}

func (c *localComm) Rank() int { return c.rank }
func (c *localComm) Size() int { return c.g.n }

// AllReduceFloat64 sums v in float64 in rank order (see Comm).
func (c *localComm) AllReduceFloat64(ctx context.Context, v []float64) error {
	return c.round(ctx, func(r *localRound) { r.f64[c.rank] = v }, func(r *localRound) error {
		sum := make([]float64, len(v))
		for _, b := range r.f64 {
			if len(b) != len(sum) {
				return fmt.Errorf("train: local all-reduce: ranks disagree on length (%d vs %d)", len(b), len(sum))
			}
			for i, x := range b {
				sum[i] += x
			}
		}
		for _, b := range r.f64 {
			copy(b, sum)
		}
		return nil
	})
}

// Barrier waits for every rank (see Comm).
func (c *localComm) Barrier(ctx context.Context) error {
	return c.round(ctx, func(*localRound) {}, func(*localRound) error { return nil })
}

// round is one collective call of every rank: put records this rank's
// data, and the last rank to arrive runs reduce for all.
func (c *localComm) round(ctx context.Context, put func(*localRound), reduce func(*localRound) error) error {
	g := c.g
	g.mu.Lock()
	seq := c.seq
	c.seq++
	r := g.gen[seq]
	if r == nil {
		r = &localRound{bufs: make([][]float32, g.n), f64: make([][]float64, g.n), done: make(chan struct{})}
		g.gen[seq] = r
	}
	put(r)
	r.in++
	if r.in == g.n {
		r.err = reduce(r)
		delete(g.gen, seq)
		close(r.done)
	}
	g.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *localComm) AllReduce(ctx context.Context, buf []float32) error {
	g := c.g
	g.mu.Lock()
	seq := c.seq // calls of one rank are sequential (see Comm)
	c.seq++
	r := g.gen[seq]
	if r == nil {
		r = &localRound{bufs: make([][]float32, g.n), f64: make([][]float64, g.n), done: make(chan struct{})}
		g.gen[seq] = r
	}
	r.bufs[c.rank] = buf
	r.in++
	if r.in == g.n {
		sum := make([]float32, len(buf))
		for _, b := range r.bufs {
			if len(b) != len(sum) {
				g.mu.Unlock()
				return fmt.Errorf("train: local all-reduce: ranks disagree on length (%d vs %d)", len(b), len(sum))
			}
			for i, v := range b {
				sum[i] += v
			}
		}
		for _, b := range r.bufs {
			copy(b, sum)
		}
		delete(g.gen, seq)
		close(r.done)
	}
	g.mu.Unlock()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RankRows is the slice [lo, hi) of a global batch of b rows that rank r of
// n trains on (balanced; ranks may get no rows when b < n).
func RankRows(b, n, r int) (lo, hi int) { return r * b / n, (r + 1) * b / n }

// expertOf parses the layer and expert of a routed expert's hub name
// ("model.layers.L.(mlp|block_sparse_moe).experts.E.").
func expertOf(name string) (expert.ID, bool) {
	var l, e int
	i := strings.Index(name, ".experts.")
	if !strings.HasPrefix(name, "model.layers.") || i < 0 {
		return expert.ID{}, false
	}
	if _, err := fmt.Sscanf(name[len("model.layers."):], "%d.", &l); err != nil {
		return expert.ID{}, false
	}
	if _, err := fmt.Sscanf(name[i+len(".experts."):], "%d.", &e); err != nil {
		return expert.ID{}, false
	}
	return expert.ID{Layer: l, Expert: e}, true
}
