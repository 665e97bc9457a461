package model

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// LossConfig selects the training objective's extra terms. The zero value
// is plain next-token cross-entropy with dropless routing.
type LossConfig struct {
	// AuxCoef weights the Switch/Mixtral load-balancing loss
	// (router_aux_loss_coef). Only for softmax routers; 0 disables.
	AuxCoef float64
	// ZCoef weights the router z-loss, mean over MoE-layer tokens of
	// logsumexp(router logits)^2 (ST-MoE). 0 disables.
	ZCoef float64
	// CapacityFactor > 0 caps each expert at ceil(CapacityFactor * N*K/E)
	// rows per layer and step; rows beyond it (later tokens first) are
	// dropped and contribute nothing. 0 is dropless.
	CapacityFactor float64
}

// StepResult reports the losses of one forward pass.
type StepResult struct {
	Loss    float64 // total: CE + AuxCoef*Aux + ZCoef*Z
	CE      float64 // mean next-token cross-entropy
	Aux     float64 // load-balancing loss (unweighted), 0 without softmax MoE layers
	Z       float64 // router z-loss (unweighted)
	Tokens  int     // positions with a target
	Dropped int     // expert rows dropped by the capacity limit
	// Load[l][e] is the number of rows routed to expert e of MoE layer l
	// (after capacity), for aux-loss-free balancing and statistics.
	Load [][]int
}

// TrainState holds every activation a training step's backward needs, for
// one batch shape (B sequences of T tokens). Buffers are allocated on first
// use and reused by later steps of the same shape.
type TrainState struct {
	B, T   int
	ids    [][]int32
	layers []layerActs
	x      []float32 // [N, D] residual stream scratch
	xf     []float32 // [N, D] input of the final norm
	rstdF  []float32 // [N]
	hf     []float32 // [N, D] final-normed
	logits []float32 // [N, V], then dlogits
	loss   LossConfig
	res    StepResult
	ready  bool      // a forward ran and its backward has not
	stats  []float64 // local statistics of the last forward (see Stats)
	global []float64 // group-summed statistics, or nil
	// OnGrads, if set, is called during TrainBackward each time a part of
	// the dense gradients is final: with L (the final norm and lm_head),
	// then each layer from L-1 down to 0, then -1 (the embeddings). A
	// data-parallel step starts all-reducing those gradients while the
	// backward goes on (Grads.Span maps the argument to a range of Flat).
	OnGrads func(part int)
	// Prof, if set, accumulates time per component.
	Prof *Profile
}

type layerActs struct {
	xin, h1, xmid, h2 []float32 // [N, D]
	rstd1, rstd2      []float32 // [N]
	// GQA
	qRaw, kRaw, vRaw []float32 // [N, H*Dh], [N, Hkv*Dh] after bias, before norm/clip
	qn, kn           []float32 // after q/k norm, before clip (nil without norm)
	qRstd, kRstd     []float32 // norm rstd per row or per (row, head)
	// MLA
	qa, qan, qaRstd []float32 // [N, Rq], [N, Rq], [N]
	kva             []float32 // [N, R+Dr] after bias
	c, cRstd        []float32 // [N, R], [N]
	kv              []float32 // [N, H*(Dn+Dv)] = c KVB^T
	// attention (both)
	q, k, v []float32 // [N, H*dq], [N, Hkv*dq], [N, Hkv*dv] as attended (after RoPE)
	probs   []float32 // [B, H, T, T]
	attn    []float32 // [N, H*dv] before o_proj
	// dense MLP
	mlp expert.FFNActs
	// MoE
	logits    []float32 // [N, E] router logits
	routing   router.Routing
	plan      router.Plan
	y         []float32 // [rows, D] unweighted expert outputs
	shared    expert.FFNActs
	sharedOut []float32 // [N, D] shared FFN output before its gate
	sgLogit   []float32 // [N] shared_expert_gate logits
}

// NewTrainState returns an empty state; Train* calls size it.
func (m *Model) NewTrainState() *TrainState { return &TrainState{} }

func grow(s []float32, n int) []float32 {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]float32, n)
}

// ErrNoTrainer is returned when the model's expert executor cannot train.
var ErrNoTrainer = errors.New("model: the expert executor does not support training")

// TrainForward runs the batch ids [B][T] (all rows the same length) through
// the model, keeping activations in st, and returns the losses. Every
// position but the last of each row predicts the next token.
func (m *Model) TrainForward(ctx context.Context, st *TrainState, ids [][]int32, lc LossConfig) (*StepResult, error) {
	c := m.Cfg
	B := len(ids)
	if B == 0 || len(ids[0]) < 2 {
		return nil, fmt.Errorf("model: training batch needs >= 1 row of >= 2 tokens")
	}
	T := len(ids[0])
	for b, row := range ids {
		if len(row) != T {
			return nil, fmt.Errorf("model: training batch row %d has %d tokens, row 0 has %d", b, len(row), T)
		}
		for i, id := range row {
			if id < 0 || int(id) >= c.Vocab {
				return nil, fmt.Errorf("model: batch row %d token %d: id %d out of range [0, %d)", b, i, id, c.Vocab)
			}
		}
	}
	tr, ok := m.Experts.(expert.Trainer)
	if !ok && c.NumMoELayers() > 0 {
		return nil, ErrNoTrainer
	}
	if _, err := m.DenseParams(); err != nil {
		return nil, err
	}
	st.B, st.T, st.ids, st.loss = B, T, ids, lc
	if len(st.layers) != c.Layers {
		st.layers = make([]layerActs, c.Layers)
	}
	N, D := B*T, c.Hidden
	st.x = grow(st.x, N*D)
	x := st.x
	for b, row := range ids {
		for t, id := range row {
			m.Embed.Row(x[(b*T+t)*D:], int(id))
		}
	}
	res := StepResult{}
	var moe []*router.Routing
	whole := st.Prof.start()
	tm := st.Prof.start()
	for l := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		L := &m.Layers[l]
		a := &st.layers[l]
		a.xin = grow(a.xin, N*D)
		copy(a.xin, x)
		a.h1, a.rstd1 = grow(a.h1, N*D), grow(a.rstd1, N)
		rmsNormSave(a.h1, a.rstd1, x, L.InNorm, N, D, c.RMSEps)
		out := grow(nil, N*D)
		tm.lap(skip)
		if c.MLA != nil {
			m.trainMLA(l, a, B, T, out)
		} else {
			m.trainGQA(l, a, B, T, out)
		}
		if L.Attn.OBias != nil {
			tensor.AddBias(out, L.Attn.OBias, N)
		}
		tm.lap(attn)
		tensor.Add(x, out)
		a.xmid = grow(a.xmid, N*D)
		copy(a.xmid, x)
		a.h2, a.rstd2 = grow(a.h2, N*D), grow(a.rstd2, N)
		rmsNormSave(a.h2, a.rstd2, x, L.PostNorm, N, D, c.RMSEps)
		tm.lap(skip)
		if L.MLP != nil {
			L.MLP.ForwardSave(out, a.h2, N, &a.mlp)
			tm.lap(dense)
		} else {
			dropped, err := m.trainMoEForward(ctx, tr, l, a, N, lc, out, &tm)
			if err != nil {
				return nil, err
			}
			res.Dropped += dropped
			moe = append(moe, &a.routing)
			res.Load = append(res.Load, a.plan.Counts())
		}
		tensor.Add(x, out)
	}
	st.xf = grow(st.xf, N*D)
	copy(st.xf, x)
	st.hf, st.rstdF = grow(st.hf, N*D), grow(st.rstdF, N)
	rmsNormSave(st.hf, st.rstdF, x, m.Norm, N, D, c.RMSEps)
	V := c.Vocab
	tm.lap(skip)
	st.logits = grow(st.logits, N*V)
	tensor.Linear(st.logits, st.hf, N, &m.LMHead, 0)
	res.CE = CrossEntropy(st.logits, ids, V)
	tm.lap(head)
	whole.lap(total)
	res.Tokens = B * (T - 1)
	// Local statistics (see Stats); the result is computed from them so a
	// data-parallel group can replace them with group sums.
	E := c.MoE.Router.NumExperts
	stats := []float64{float64(res.Tokens), res.CE * float64(res.Tokens), 0, 0}
	if lc.ZCoef != 0 && len(moe) > 0 {
		var lg [][]float32
		for l := range m.Layers {
			if m.Layers[l].MLP == nil {
				lg = append(lg, st.layers[l].logits)
			}
		}
		stats[2] = router.ZLoss(lg, E) * float64(len(moe)*N)
	}
	stats[3] = float64(len(moe) * N)
	for _, r := range moe {
		cnt := make([]float64, E)
		for _, id := range r.IDs[:r.T*r.K] {
			cnt[id]++
		}
		ps := make([]float64, E)
		for t := 0; t < r.T; t++ {
			for e, v := range r.Scores[t*E : (t+1)*E] {
				ps[e] += float64(v)
			}
		}
		stats = append(stats, cnt...)
		stats = append(stats, ps...)
	}
	st.stats, st.global = stats, nil
	st.res = res
	st.applyStats(m, stats)
	st.ready = true
	return &st.res, nil
}

// Stats returns the last TrainForward's sufficient statistics, which a
// data-parallel group sums (all-reduce) so every rank can normalize its
// backward as one global batch: [predicted tokens, cross-entropy sum,
// z-loss sum, MoE rows, then per MoE layer: routed rows per expert [E] and
// summed router scores per expert [E]].
func (st *TrainState) Stats() []float64 { return append([]float64(nil), st.stats...) }

// SetGlobalStats installs group-summed statistics (same layout as Stats):
// the step's losses become the group's and TrainBackward scales the
// gradients as for one batch of all ranks' sequences (so summing the ranks'
// gradients gives the single-process gradient of the whole batch).
func (st *TrainState) SetGlobalStats(m *Model, g []float64) error {
	if len(g) != len(st.stats) {
		return fmt.Errorf("model: global stats have %d values, local %d", len(g), len(st.stats))
	}
	st.global = append([]float64(nil), g...)
	st.applyStats(m, st.global)
	return nil
}

// StatsLen is the length of TrainState.Stats for models of c.
func StatsLen(c *Config) int { return 4 + 2*c.NumMoELayers()*c.MoE.Router.NumExperts }

// SetEmpty prepares a state for a data-parallel rank that had no rows this
// step: its result becomes the group's (from the summed stats g) and there
// is nothing to run backward for.
func (st *TrainState) SetEmpty(m *Model, g []float64, lc LossConfig) {
	st.loss = lc
	st.stats = make([]float64, len(g))
	st.global = append([]float64(nil), g...)
	st.ready = false
	st.applyStats(m, st.global)
}

// Result returns the losses of the last TrainForward (global ones after
// SetGlobalStats).
func (st *TrainState) Result() *StepResult { return &st.res }

func (st *TrainState) applyStats(m *Model, s []float64) {
	c := m.Cfg
	E := c.MoE.Router.NumExperts
	res := &st.res
	res.Tokens = int(s[0])
	res.CE = s[1] / s[0]
	res.Z, res.Aux = 0, 0
	if s[3] > 0 {
		res.Z = s[2] / s[3]
	}
	res.Load = nil
	counts := make([]float64, E)
	probs := make([]float64, E)
	for off := 4; off+2*E <= len(s); off += 2 * E {
		ld := make([]int, E)
		for e := 0; e < E; e++ {
			ld[e] = int(s[off+e])
			counts[e] += s[off+e]
			probs[e] += s[off+E+e]
		}
		res.Load = append(res.Load, ld)
	}
	if len(res.Load) > 0 && c.MoE.Router.Scoring == router.Softmax {
		for e := range counts {
			res.Aux += counts[e] / s[3] * probs[e] / s[3]
		}
		res.Aux *= float64(E)
	}
	res.Loss = res.CE + st.loss.AuxCoef*res.Aux + st.loss.ZCoef*res.Z
}

// statsUsed returns the statistics the backward normalizes with.
func (st *TrainState) statsUsed() []float64 {
	if st.global != nil {
		return st.global
	}
	return st.stats
}

// TrainBackward accumulates into g (and into the expert executor's
// gradients) the gradient of the last TrainForward's total loss.
func (m *Model) TrainBackward(ctx context.Context, st *TrainState, g *Grads) error {
	if !st.ready {
		return errors.New("model: TrainBackward without a TrainForward")
	}
	st.ready = false
	c := m.Cfg
	gm := g.Model
	B, T := st.B, st.T
	N, D, V := B*T, c.Hidden, c.Vocab
	whole := st.Prof.start()
	defer whole.lap(total)
	tm := st.Prof.start()
	// Cross-entropy: dlogits = (softmax - onehot) / tokens, 0 on last positions.
	dl := st.logits
	stats := st.statsUsed()
	inv := float32(1 / stats[0])
	tensor.ParallelFor(N, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := dl[r*V : (r+1)*V]
			b, t := r/T, r%T
			if t == T-1 {
				clear(row)
				continue
			}
			tensor.Softmax(row)
			row[st.ids[b][t+1]] -= 1
			tensor.Scale(inv, row)
		}
	})
	dx := grow(nil, N*D)  // gradient of the residual stream
	dh := grow(nil, N*D)  // scratch
	tmp := grow(nil, N*D) // scratch
	// logits = hf LMHead^T
	tensor.Gemm(true, false, V, D, N, 1, dl, V, st.hf, D, 1, gm.LMHead.F32, D)
	tensor.Gemm(false, false, N, D, V, 1, dl, V, m.LMHead.F32, D, 0, dh, D)
	rmsNormBackward(dx, gm.Norm, dh, st.xf, m.Norm, st.rstdF, N, D, false)
	tm.lap(head)
	if st.OnGrads != nil {
		st.OnGrads(c.Layers)
	}

	tr, _ := m.Experts.(expert.Trainer)
	var moe []*router.Routing
	var moeIdx []int
	for l := range m.Layers {
		if m.Layers[l].MLP == nil {
			moe = append(moe, &st.layers[l].routing)
			moeIdx = append(moeIdx, l)
		}
	}
	auxD := map[int][]float32{}
	if st.loss.AuxCoef != 0 && c.MoE.Router.Scoring == router.Softmax && len(moe) > 0 {
		// d aux / d score[t,e] = E * count_e / rows^2 over the (global) batch
		E := c.MoE.Router.NumExperts
		rows := stats[3]
		g := make([]float32, E)
		for off := 4; off+2*E <= len(stats); off += 2 * E {
			for e := 0; e < E; e++ {
				g[e] += float32(st.loss.AuxCoef * float64(E) * stats[off+e] / (rows * rows))
			}
		}
		for _, l := range moeIdx {
			d := make([]float32, N*E)
			for t := 0; t < N; t++ {
				copy(d[t*E:(t+1)*E], g)
			}
			auxD[l] = d
		}
	}
	for l := len(m.Layers) - 1; l >= 0; l-- {
		if err := ctx.Err(); err != nil {
			return err
		}
		L, GL, a := &m.Layers[l], &gm.Layers[l], &st.layers[l]
		// MLP / MoE block: x += f(h2)
		tm.lap(skip)
		if L.MLP != nil {
			L.MLP.Backward(dh, dx, N, &a.mlp, GL.MLP, nil)
			tm.lap(dense)
		} else if err := m.trainMoEBackward(ctx, tr, l, a, N, st.loss, int(stats[3]), auxD[l], dx, dh, GL, &tm); err != nil {
			return err
		}
		rmsNormBackward(dx, GL.PostNorm, dh, a.xmid, L.PostNorm, a.rstd2, N, D, true)
		tm.lap(skip)
		// attention block: x += o_proj(attn(h1))
		if L.Attn.OBias != nil {
			sumRows(GL.Attn.OBias, dx, N, D)
		}
		if c.MLA != nil {
			m.trainMLABackward(l, a, B, T, dx, dh, tmp, GL)
		} else {
			m.trainGQABackward(l, a, B, T, dx, dh, tmp, GL)
		}
		tm.lap(attn)
		rmsNormBackward(dx, GL.InNorm, dh, a.xin, L.InNorm, a.rstd1, N, D, true)
		if st.OnGrads != nil {
			st.OnGrads(l)
		}
	}
	// embeddings: nn.Embedding's backward, which gives its padding_idx row
	// nothing. With tied embeddings that row still has lm_head's gradient,
	// added above into the same buffer.
	for b, row := range st.ids {
		for t, id := range row {
			if int(id) == c.PadID {
				continue
			}
			tensor.Add(gm.Embed.F32[int(id)*D:int(id+1)*D], dx[(b*T+t)*D:(b*T+t+1)*D])
		}
	}
	if st.OnGrads != nil {
		st.OnGrads(-1)
	}
	return nil
}

// rmsNormSave computes out = w * x * rstd per row and keeps rstd [rows].
func rmsNormSave(out, rstd, x, w []float32, rows, d int, eps float32) {
	tensor.ParallelFor(rows, max(1, 4096/max(d, 1)), func(lo, hi int) {
		for r := lo; r < hi; r++ {
			xr := x[r*d : (r+1)*d]
			var ss float64
			for _, v := range xr {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(ss/float64(d)+float64(eps)))
			rstd[r] = inv
			or := out[r*d : (r+1)*d]
			for i, v := range xr {
				or[i] = w[i] * (v * inv)
			}
		}
	})
}

// rmsNormBackward: y = w * x * r, r = 1/sqrt(mean(x^2)+eps). Given dy
// [rows, d], adds to dw and writes (accumulate=false) or adds
// (accumulate=true) dx:
//
//	dx = r * (w*dy) - r^3/d * x * sum(w*dy*x)
func rmsNormBackward(dx, dw, dy, x, w, rstd []float32, rows, d int, accumulate bool) {
	// dw needs a reduction over rows: per-range partial sums, merged in
	// range order so the result does not depend on goroutine scheduling.
	parts := map[int][]float64{}
	var mu sync.Mutex
	tensor.ParallelFor(rows, max(1, 4096/max(d, 1)), func(lo, hi int) {
		pw := make([]float64, d)
		for r := lo; r < hi; r++ {
			xr, dyr, dxr := x[r*d:(r+1)*d], dy[r*d:(r+1)*d], dx[r*d:(r+1)*d]
			rs := float64(rstd[r])
			var dot float64
			for i := range xr {
				g := float64(w[i]) * float64(dyr[i])
				dot += g * float64(xr[i])
				pw[i] += float64(dyr[i]) * float64(xr[i]) * rs
			}
			k := rs * rs * rs / float64(d) * dot
			for i := range xr {
				v := float32(rs*float64(w[i])*float64(dyr[i]) - k*float64(xr[i]))
				if accumulate {
					dxr[i] += v
				} else {
					dxr[i] = v
				}
			}
		}
		mu.Lock()
		parts[lo] = pw
		mu.Unlock()
	})
	acc := make([]float64, d)
	for _, lo := range slices.Sorted(maps.Keys(parts)) {
		for i, v := range parts[lo] {
			acc[i] += v
		}
	}
	for i, v := range acc {
		dw[i] += float32(v)
	}
}

// sumRows adds the column sums of x [rows, d] into dst [d].
func sumRows(dst, x []float32, rows, d int) {
	for r := 0; r < rows; r++ {
		tensor.Add(dst[:d], x[r*d:(r+1)*d])
	}
}
