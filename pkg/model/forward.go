package model

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Seq is one sequence's decoding state: the tokens already processed and
// their KV cache. A Seq must not be used by two Forward calls at once.
type Seq struct {
	Len    int          // tokens in the cache (the next token's position)
	layers []layerCache // [L]
	width  cacheWidth
}

// layerCache is one layer's cache. GQA keeps keys and values, MLA keeps only
// the compressed latent and the shared RoPE key. Forward grows the slices
// geometrically (as append does), so a decoding sequence reallocates them
// O(log T) times; Seq.Reserve sets room aside up front.
type layerCache struct {
	K, V []float32 // GQA: [T, Hkv*Dh] each (K after RoPE)
	C    []float32 // MLA: [T, R] normalized latent (kv_a_layernorm output)
	KPE  []float32 // MLA: [T, Dr] RoPE key part, after RoPE
}

// cacheWidth is the floats per token of each layerCache slice: KV = Hkv*Dh
// (GQA, 0 for MLA), C = R and KPE = Dr (MLA, 0 for GQA).
type cacheWidth struct{ KV, C, KPE int }

// NewSeq returns an empty sequence for m.
func (m *Model) NewSeq() *Seq {
	c := m.Cfg
	s := &Seq{layers: make([]layerCache, c.Layers)}
	if c.MLA != nil {
		s.width = cacheWidth{C: c.MLA.KVLoraRank, KPE: c.MLA.QKRopeDim}
	} else {
		s.width = cacheWidth{KV: c.KVHeads * c.HeadDim}
	}
	return s
}

// Reserve makes room in the cache for n more tokens, so that Forward calls
// adding up to n tokens in all do not reallocate it (a decoding step then
// allocates nothing; see Workspace).
func (s *Seq) Reserve(n int) {
	w := s.width
	for i := range s.layers {
		c := &s.layers[i]
		c.K = slices.Grow(c.K, n*w.KV)
		c.V = slices.Grow(c.V, n*w.KV)
		c.C = slices.Grow(c.C, n*w.C)
		c.KPE = slices.Grow(c.KPE, n*w.KPE)
	}
}

// extend lengthens a cache slice by n floats (contents undefined), growing
// its capacity geometrically when it is short.
func extend(s []float32, n int) []float32 {
	return slices.Grow(s, n)[:len(s)+n]
}

// CacheBytes is the memory the KV cache holds for the tokens in it (not
// counting spare capacity).
func (s *Seq) CacheBytes() int64 {
	var n int64
	for _, c := range s.layers {
		n += int64(len(c.K)+len(c.V)+len(c.C)+len(c.KPE)) * 4
	}
	return n
}

// Reset empties the cache, keeping its memory.
func (s *Seq) Reset() {
	s.Len = 0
	for i := range s.layers {
		c := &s.layers[i]
		c.K, c.V, c.C, c.KPE = c.K[:0], c.V[:0], c.C[:0], c.KPE[:0]
	}
}

// MLAMode picks how MLA attention is computed from the latent cache.
type MLAMode uint8

const (
	// MLAAuto uses the absorbed path for single-token (decode) steps and the
	// naive expansion for prefill.
	MLAAuto MLAMode = iota
	// MLANaive expands keys and values of every cached position through
	// kv_b_proj (transformers' formulation).
	MLANaive
	// MLAAbsorbed folds W_UK into the query and W_UV into the output, so
	// attention runs directly against the R-dimensional latent (DeepSeek's
	// "absorb" inference path).
	MLAAbsorbed
)

// Options selects what Forward returns.
type Options struct {
	AllLogits bool    // logits for every token; false: only each sequence's last token
	NoLogits  bool    // skip the lm_head entirely (Logits nil)
	Hidden    bool    // record hidden states (see Output.Hidden)
	Routing   bool    // keep every MoE layer's routing (for aux losses and stats)
	MLA       MLAMode // MLA computation path
	// Prof, if set, accumulates the wall time of this call's parts:
	// Attention (norms, attention, o_proj), Router, Experts (the routed
	// experts through the executor: on a cluster, the exchange with the
	// owners, and the combine), SharedExperts, DenseMLP, Head (embedding,
	// final norm, lm_head) and Total. A few time.Now calls per layer.
	Prof *Profile
	// Workspace, if set, holds the call's temporaries and its Output, which
	// then aliases it (valid until the next Forward with the same
	// Workspace; see Workspace): a decoding loop that passes the same one
	// every step allocates nothing per step. Nil: the call allocates its
	// own, and the Output belongs to the caller.
	Workspace *Workspace
}

// Output is what Forward computed. With Options.Workspace its slices alias
// the Workspace and are overwritten by the next call that uses it.
type Output struct {
	// Logits [rows, V]: every token in batch order if Options.AllLogits,
	// else the last token of each sequence ([B, V]).
	Logits []float32
	// Hidden [L+1][N, D]: entry 0 the embeddings, entry l the output of
	// decoder layer l for l < L, entry L the final-normed output (the
	// transformers output_hidden_states convention).
	Hidden [][]float32
	// Routing of each MoE layer, in layer order (nil entries for dense layers).
	Routing []*router.Routing
}

// Forward appends tokens[b] to sequence seqs[b] for every b, running the
// whole batch through the model together (N = sum of len(tokens[b]) rows;
// MoE layers see all N rows at once, so each expert runs one GEMM over its
// rows from every sequence). Token ids are checked against the vocabulary.
// On error the sequences are left unchanged. Concurrent calls are safe on
// distinct sequences and distinct Workspaces (or none).
func (m *Model) Forward(ctx context.Context, seqs []*Seq, tokens [][]int32, opt Options) (*Output, error) {
	c := m.Cfg
	if len(seqs) != len(tokens) {
		return nil, fmt.Errorf("model: %d sequences but %d token lists", len(seqs), len(tokens))
	}
	ws := opt.Workspace
	if ws == nil {
		ws = new(Workspace)
	}
	N := 0
	starts := fit(&ws.starts, len(seqs)+1)
	starts[0] = 0
	for b, t := range tokens {
		if len(t) == 0 {
			return nil, fmt.Errorf("model: sequence %d: no tokens to process", b)
		}
		if len(seqs[b].layers) != c.Layers {
			return nil, fmt.Errorf("model: sequence %d was not made by this model", b)
		}
		for i, id := range t {
			if id < 0 || int(id) >= c.Vocab {
				return nil, fmt.Errorf("model: sequence %d token %d: id %d out of range [0, %d)", b, i, id, c.Vocab)
			}
		}
		N += len(t)
		starts[b+1] = N
	}
	// Roll back cache growth on failure: remember lengths.
	saved := fit(&ws.saved, len(seqs)*c.Layers)
	for b, s := range seqs {
		for l, lc := range s.layers {
			saved[b*c.Layers+l] = [4]int{len(lc.K), len(lc.V), len(lc.C), len(lc.KPE)}
		}
	}
	out, err := m.forward(ctx, ws, seqs, tokens, N, opt)
	if err != nil {
		for b, s := range seqs {
			for l := range s.layers {
				lc := &s.layers[l]
				sv := saved[b*c.Layers+l]
				lc.K, lc.V, lc.C, lc.KPE = lc.K[:sv[0]], lc.V[:sv[1]], lc.C[:sv[2]], lc.KPE[:sv[3]]
			}
		}
		return nil, err
	}
	for b, s := range seqs {
		s.Len += len(tokens[b])
	}
	if opt.Workspace == nil {
		o := *out // the caller keeps the Output's slices, not the scratch around them
		return &o, nil
	}
	return out, nil
}

func (m *Model) forward(ctx context.Context, ws *Workspace, seqs []*Seq, tokens [][]int32, N int, opt Options) (*Output, error) {
	c := m.Cfg
	D, nl := c.Hidden, c.Layers
	starts := ws.starts
	out := &ws.out
	*out = Output{}
	prof := opt.Prof
	tm := prof.start()
	t0 := tm
	defer t0.lap(total)
	x := fit(&ws.x, N*D) // residual stream [N, D]
	for b, t := range tokens {
		for i, id := range t {
			m.Embed.Row(x[(starts[b]+i)*D:], int(id))
		}
	}
	if opt.Hidden {
		hidden := fit(&ws.hidden, (nl+1)*N*D)
		out.Hidden = fit(&ws.hrows, nl+1)
		for l := range out.Hidden {
			out.Hidden[l] = hidden[l*N*D : (l+1)*N*D : (l+1)*N*D]
		}
		copy(out.Hidden[0], x)
	}
	routes := fit(&ws.routes, 1) // without Options.Routing every layer reuses one
	if opt.Routing {
		routes = fit(&ws.routes, nl)
		out.Routing = fit(&ws.rptrs, nl)
		clear(out.Routing)
	}
	h := fit(&ws.h, N*D)
	a := fit(&ws.a, N*D)
	tm.lap(head)
	for l := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		L := &m.Layers[l]
		tensor.RMSNormRows(h, x, L.InNorm, N, D, c.RMSEps)
		for b, s := range seqs {
			lo, hi := starts[b], starts[b+1]
			if c.MLA != nil {
				m.mla(ws, l, &s.layers[l], s.Len, h[lo*D:hi*D], hi-lo, a[lo*D:hi*D], opt.MLA)
			} else {
				m.gqa(ws, l, &s.layers[l], s.Len, h[lo*D:hi*D], hi-lo, a[lo*D:hi*D])
			}
		}
		if ob := L.Attn.OBias; ob != nil {
			tensor.AddBias(a, ob, N)
		}
		tensor.Add(x, a)
		tensor.RMSNormRows(h, x, L.PostNorm, N, D, c.RMSEps)
		tm.lap(attn)
		if L.MLP != nil {
			L.MLP.Forward(a, h, N, fit(&ws.ffn, 2*N*c.Inter))
			tm.lap(dense)
		} else {
			r := &routes[0]
			if opt.Routing {
				r = &routes[l]
				out.Routing[l] = r
			}
			if err := m.moe(ctx, ws, l, h, N, a, r, &tm); err != nil {
				return nil, err
			}
		}
		tensor.Add(x, a)
		if opt.Hidden && l < nl-1 {
			copy(out.Hidden[l+1], x)
		}
	}
	tensor.RMSNormRows(x, x, m.Norm, N, D, c.RMSEps)
	if opt.Hidden {
		copy(out.Hidden[nl], x)
	}
	defer tm.lap(head)
	if opt.NoLogits {
		return out, nil
	}
	rows, src := N, x
	if !opt.AllLogits {
		rows = len(seqs)
		src = fit(&ws.last, rows*D)
		for b := range seqs {
			copy(src[b*D:(b+1)*D], x[(starts[b+1]-1)*D:starts[b+1]*D])
		}
	}
	n := rows * c.Vocab
	out.Logits = fit(&ws.logits, n)[:n:n] // capped: a caller's append copies
	tensor.Linear(out.Logits, src, rows, &m.LMHead, 0)
	return out, nil
}

// moe computes a sparse layer's output for h [N, D] into y [N, D], routing
// into r; tm (may hold a nil profile) gets its parts' times.
func (m *Model) moe(ctx context.Context, ws *Workspace, l int, h []float32, N int, y []float32, r *router.Routing, tm *timer) error {
	c := m.Cfg
	L := &m.Layers[l]
	D := c.Hidden
	E := c.MoE.Router.NumExperts
	logits := fit(&ws.gate, N*E)
	tensor.LinearExact(logits, h, N, &L.Gate, 0) // routing: exact in every compute mode
	c.MoE.Router.Route(logits, N, L.ScoreBias, r)
	plan := &ws.plan
	plan.Build(r)
	rows := fit(&ws.rows, plan.Len()*D)
	tm.lap(rout)
	if err := m.Experts.Compute(ctx, l, plan, h, D, rows); err != nil {
		return fmt.Errorf("layer %d experts: %w", l, err)
	}
	clear(y[:N*D])
	expert.Combine(y, D, plan, rows)
	tm.lap(exps)
	if L.Shared != nil {
		defer tm.lap(shared)
		s := fit(&ws.shared, N*D)
		L.Shared.Forward(s, h, N, fit(&ws.ffn, 2*N*c.MoE.SharedInter))
		if c.MoE.SharedGate {
			g := fit(&ws.sgate, N)
			tensor.Linear(g, h, N, &L.SharedGate, 0)
			for t := 0; t < N; t++ {
				tensor.Scale(tensor.Sigmoid(g[t]), s[t*D:(t+1)*D])
			}
		}
		tensor.Add(y[:N*D], s)
	}
	return nil
}

// gqa runs grouped-query attention for n new tokens of one sequence whose
// cache holds pos0 tokens: h [n, D] -> out [n, D] (before o_proj bias).
// The new keys and values are projected straight into the cache.
func (m *Model) gqa(ws *Workspace, l int, lc *layerCache, pos0 int, h []float32, n int, out []float32) {
	c := m.Cfg
	A := &m.Layers[l].Attn
	H, Hkv, Dh := c.Heads, c.KVHeads, c.HeadDim
	qd, kd := H*Dh, Hkv*Dh
	q := fit(&ws.q, n*qd)
	T := len(lc.K)
	lc.K, lc.V = extend(lc.K, n*kd), extend(lc.V, n*kd)
	k, v := lc.K[T:], lc.V[T:] // [n, Hkv*Dh] each
	tensor.Linear(q, h, n, &A.Q, 0)
	tensor.Linear(k, h, n, &A.K, 0)
	tensor.Linear(v, h, n, &A.V, 0)
	if A.QBias != nil {
		tensor.AddBias(q, A.QBias, n)
		tensor.AddBias(k, A.KBias, n)
		tensor.AddBias(v, A.VBias, n)
	}
	switch c.QKNorm {
	case QKNormPerHead:
		tensor.RMSNormRows(q, q, A.QNorm, n*H, Dh, c.RMSEps)
		tensor.RMSNormRows(k, k, A.KNorm, n*Hkv, Dh, c.RMSEps)
	case QKNormFull:
		tensor.RMSNormRows(q, q, A.QNorm, n, qd, c.RMSEps)
		tensor.RMSNormRows(k, k, A.KNorm, n, kd, c.RMSEps)
	}
	if cl := c.ClipQKV; cl > 0 {
		clamp(q, cl)
		clamp(k, cl)
		clamp(v, cl)
	}
	for i := 0; i < n; i++ {
		cos, sin := m.rope.at(pos0 + i)
		for hh := 0; hh < H; hh++ {
			m.applyRope(q[i*qd+hh*Dh:], cos, sin)
		}
		for hh := 0; hh < Hkv; hh++ {
			m.applyRope(k[i*kd+hh*Dh:], cos, sin)
		}
	}
	attn := fit(&ws.attn, n*qd)
	t := &ws.heads
	t.m, t.l, t.lc, t.n, t.P, t.pos0, t.q, t.kv, t.attn = m, l, lc, n, pos0+n, pos0, q, nil, attn
	t.run()
	tensor.Linear(out, attn, n, &A.O, 0)
}

// mla runs Multi-head Latent Attention for n new tokens of one sequence.
// Only the latent C [T, R] and the RoPE key KPE [T, Dr] are cached.
func (m *Model) mla(ws *Workspace, l int, lc *layerCache, pos0 int, h []float32, n int, out []float32, mode MLAMode) {
	c := m.Cfg
	ml := c.MLA
	A := &m.Layers[l].Attn
	H, R, Dn, Dr, Dv := c.Heads, ml.KVLoraRank, ml.QKNopeDim, ml.QKRopeDim, ml.VDim
	qh := Dn + Dr // per-head query width
	qd := H * qh
	q := fit(&ws.q, n*qd)
	if ml.QLoraRank > 0 {
		qa := fit(&ws.qa, n*ml.QLoraRank)
		tensor.Linear(qa, h, n, &A.QA, 0)
		if A.QABias != nil {
			tensor.AddBias(qa, A.QABias, n)
		}
		// transformers builds q_a_layernorm/kv_a_layernorm with the default eps 1e-6.
		tensor.RMSNormRows(qa, qa, A.QANorm, n, ml.QLoraRank, 1e-6)
		tensor.Linear(q, qa, n, &A.QB, 0)
	} else {
		tensor.Linear(q, h, n, &A.Q, 0)
	}
	kva := fit(&ws.kva, n*(R+Dr))
	tensor.Linear(kva, h, n, &A.KVA, 0)
	if A.KVABias != nil {
		tensor.AddBias(kva, A.KVABias, n)
	}
	tc, tp := len(lc.C), len(lc.KPE)
	lc.C, lc.KPE = extend(lc.C, n*R), extend(lc.KPE, n*Dr)
	cNew, kpeNew := lc.C[tc:], lc.KPE[tp:] // [n, R], [n, Dr]
	for i := 0; i < n; i++ {
		tensor.RMSNorm(cNew[i*R:(i+1)*R], kva[i*(R+Dr):i*(R+Dr)+R], A.KVANorm, 1e-6)
		copy(kpeNew[i*Dr:(i+1)*Dr], kva[i*(R+Dr)+R:(i+1)*(R+Dr)])
		cos, sin := m.rope.at(pos0 + i)
		m.applyRope(kpeNew[i*Dr:], cos, sin)
		for hh := 0; hh < H; hh++ {
			m.applyRope(q[i*qd+hh*qh+Dn:], cos, sin)
		}
	}
	P := pos0 + n
	if mode == MLAAuto {
		mode = MLANaive
		if n == 1 {
			mode = MLAAbsorbed
		}
	}
	attn := fit(&ws.attn, n*H*Dv)
	var kv []float32
	if mode == MLANaive {
		kv = fit(&ws.kv, P*H*(Dn+Dv)) // [P, H*(Dn+Dv)]
		tensor.Linear(kv, lc.C, P, &A.KVB, 0)
	}
	t := &ws.heads
	t.m, t.l, t.mla, t.lc, t.n, t.P, t.pos0, t.q, t.kv, t.attn = m, l, mode, lc, n, P, pos0, q, kv, attn
	t.run()
	tensor.Linear(out, attn, n, &A.O, 0)
}

// matmulRows multiplies x [n, *] (row stride ldx) by the row block
// Wblk = w[row0 : row0+cnt, :] (each row of width w.Cols), writing y with
// row stride ldy:
//
//	trans=false: y [n, w.Cols] = x[:, :cnt] @ Wblk
//	trans=true:  y [n, cnt]    = x[:, :w.Cols] @ Wblk^T
func matmulRows(y []float32, ldy int, x []float32, ldx, n int, w *tensor.Mat, row0, cnt int, trans bool) {
	cols := w.Cols
	m, nn, k := n, cols, cnt
	if trans {
		nn, k = cnt, cols
	}
	if w.BF16 != nil {
		tensor.GemmBF16(false, trans, m, nn, k, 1, x, ldx, w.BF16[row0*cols:], cols, 0, y, ldy)
	} else {
		tensor.Gemm(false, trans, m, nn, k, 1, x, ldx, w.F32[row0*cols:], cols, 0, y, ldy)
	}
}

// maskSoftmax applies the causal (and sliding-window) mask to scores s
// [n, P] of queries at positions pos0..pos0+n-1 over keys 0..P-1, then a
// row softmax.
func (m *Model) maskSoftmax(l int, s []float32, n, P, pos0 int) {
	ninf := float32(math.Inf(-1))
	w := 0
	if m.Cfg.LayerSliding[l] {
		w = m.Cfg.SlidingWin
	}
	for i := 0; i < n; i++ {
		row := s[i*P : (i+1)*P]
		qpos := pos0 + i
		for j := qpos + 1; j < P; j++ {
			row[j] = ninf
		}
		if w > 0 {
			for j := 0; j <= qpos-w && j < P; j++ {
				row[j] = ninf
			}
		}
		tensor.Softmax(row)
	}
}

func (m *Model) applyRope(x, cos, sin []float32) {
	if m.Cfg.Rope.Interleaved {
		tensor.RopeInterleaved(x, cos, sin)
	} else {
		tensor.RopeHalf(x, cos, sin)
	}
}

func clamp(x []float32, c float32) {
	for i, v := range x {
		x[i] = min(max(v, -c), c)
	}
}
