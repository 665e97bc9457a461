package model

import (
	"context"
	"fmt"
	"math"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Seq is one sequence's decoding state: the tokens already processed and
// their KV cache. A Seq must not be used by two Forward calls at once.
type Seq struct {
	Len    int          // tokens in the cache (the next token's position)
	layers []layerCache // [L]
}

// layerCache is one layer's cache. GQA keeps keys and values, MLA keeps only
// the compressed latent and the shared RoPE key.
type layerCache struct {
	K, V []float32 // GQA: [T, Hkv*Dh] each (K after RoPE)
	C    []float32 // MLA: [T, R] normalized latent (kv_a_layernorm output)
	KPE  []float32 // MLA: [T, Dr] RoPE key part, after RoPE
}

// NewSeq returns an empty sequence for m.
func (m *Model) NewSeq() *Seq { return &Seq{layers: make([]layerCache, m.Cfg.Layers)} }

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
}

// Output is what Forward computed.
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
// On error the sequences are left unchanged.
func (m *Model) Forward(ctx context.Context, seqs []*Seq, tokens [][]int32, opt Options) (*Output, error) {
	c := m.Cfg
	if len(seqs) != len(tokens) {
		return nil, fmt.Errorf("model: %d sequences but %d token lists", len(seqs), len(tokens))
	}
	N := 0
	starts := make([]int, len(seqs)+1)
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
	saved := make([][4]int, len(seqs)*c.Layers)
	for b, s := range seqs {
		for l, lc := range s.layers {
			saved[b*c.Layers+l] = [4]int{len(lc.K), len(lc.V), len(lc.C), len(lc.KPE)}
		}
	}
	out, err := m.forward(ctx, seqs, tokens, starts, N, opt)
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
	return out, nil
}

func (m *Model) forward(ctx context.Context, seqs []*Seq, tokens [][]int32, starts []int, N int, opt Options) (*Output, error) {
	c := m.Cfg
	D := c.Hidden
	out := &Output{}
	prof := opt.Prof
	tm := prof.start()
	t0 := tm
	defer t0.lap(total)
	x := make([]float32, N*D) // residual stream [N, D]
	for b, t := range tokens {
		for i, id := range t {
			m.Embed.Row(x[(starts[b]+i)*D:], int(id))
		}
	}
	if opt.Hidden {
		out.Hidden = append(out.Hidden, append([]float32(nil), x...))
	}
	if opt.Routing {
		out.Routing = make([]*router.Routing, c.Layers)
	}
	h := make([]float32, N*D)
	a := make([]float32, N*D)
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
				m.mla(l, &s.layers[l], s.Len, h[lo*D:hi*D], hi-lo, a[lo*D:hi*D], opt.MLA)
			} else {
				m.gqa(l, &s.layers[l], s.Len, h[lo*D:hi*D], hi-lo, a[lo*D:hi*D])
			}
		}
		if ob := L.Attn.OBias; ob != nil {
			tensor.AddBias(a, ob, N)
		}
		tensor.Add(x, a)
		tensor.RMSNormRows(h, x, L.PostNorm, N, D, c.RMSEps)
		tm.lap(attn)
		if L.MLP != nil {
			L.MLP.Forward(a, h, N, nil)
			tm.lap(dense)
		} else {
			r, err := m.moe(ctx, l, h, N, a, &tm)
			if err != nil {
				return nil, err
			}
			if opt.Routing {
				out.Routing[l] = r
			}
		}
		tensor.Add(x, a)
		if opt.Hidden && l < c.Layers-1 {
			out.Hidden = append(out.Hidden, append([]float32(nil), x...))
		}
	}
	tensor.RMSNormRows(x, x, m.Norm, N, D, c.RMSEps)
	if opt.Hidden {
		out.Hidden = append(out.Hidden, append([]float32(nil), x...))
	}
	defer tm.lap(head)
	if opt.NoLogits {
		return out, nil
	}
	rows, src := N, x
	if !opt.AllLogits {
		rows = len(seqs)
		src = make([]float32, rows*D)
		for b := range seqs {
			copy(src[b*D:(b+1)*D], x[(starts[b+1]-1)*D:starts[b+1]*D])
		}
	}
	out.Logits = make([]float32, rows*c.Vocab)
	tensor.Linear(out.Logits, src, rows, &m.LMHead, 0)
	return out, nil
}

// moe computes a sparse layer's output for h [N, D] into y [N, D] and
// returns the routing; tm (may hold a nil profile) gets its parts' times.
func (m *Model) moe(ctx context.Context, l int, h []float32, N int, y []float32, tm *timer) (*router.Routing, error) {
	c := m.Cfg
	L := &m.Layers[l]
	D := c.Hidden
	E := c.MoE.Router.NumExperts
	logits := make([]float32, N*E)
	tensor.Linear(logits, h, N, &L.Gate, 0)
	r := &router.Routing{}
	c.MoE.Router.Route(logits, N, L.ScoreBias, r)
	var plan router.Plan
	plan.Build(r)
	rows := make([]float32, plan.Len()*D)
	tm.lap(rout)
	if err := m.Experts.Compute(ctx, l, &plan, h, D, rows); err != nil {
		return nil, fmt.Errorf("layer %d experts: %w", l, err)
	}
	clear(y[:N*D])
	expert.Combine(y, D, &plan, rows)
	tm.lap(exps)
	if L.Shared != nil {
		defer tm.lap(shared)
		s := make([]float32, N*D)
		L.Shared.Forward(s, h, N, nil)
		if c.MoE.SharedGate {
			g := make([]float32, N)
			tensor.Linear(g, h, N, &L.SharedGate, 0)
			for t := 0; t < N; t++ {
				tensor.Scale(tensor.Sigmoid(g[t]), s[t*D:(t+1)*D])
			}
		}
		tensor.Add(y[:N*D], s)
	}
	return r, nil
}

// gqa runs grouped-query attention for n new tokens of one sequence whose
// cache holds pos0 tokens: h [n, D] -> out [n, D] (before o_proj bias).
func (m *Model) gqa(l int, lc *layerCache, pos0 int, h []float32, n int, out []float32) {
	c := m.Cfg
	A := &m.Layers[l].Attn
	H, Hkv, Dh := c.Heads, c.KVHeads, c.HeadDim
	qd, kd := H*Dh, Hkv*Dh
	q := make([]float32, n*qd)
	k := make([]float32, n*kd)
	v := make([]float32, n*kd)
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
	lc.K = append(lc.K, k...)
	lc.V = append(lc.V, v...)
	P := pos0 + n
	attn := make([]float32, n*qd)
	group := H / Hkv
	tensor.ParallelFor(H, 1, func(h0, h1 int) {
		s := make([]float32, n*P)
		for hh := h0; hh < h1; hh++ {
			g := hh / group
			tensor.Gemm(false, true, n, P, Dh, c.AttnScale, q[hh*Dh:], qd, lc.K[g*Dh:], kd, 0, s, P)
			m.maskSoftmax(l, s, n, P, pos0)
			tensor.Gemm(false, false, n, Dh, P, 1, s, P, lc.V[g*Dh:], kd, 0, attn[hh*Dh:], qd)
		}
	})
	tensor.Linear(out, attn, n, &A.O, 0)
}

// mla runs Multi-head Latent Attention for n new tokens of one sequence.
// Only the latent C [T, R] and the RoPE key KPE [T, Dr] are cached.
func (m *Model) mla(l int, lc *layerCache, pos0 int, h []float32, n int, out []float32, mode MLAMode) {
	c := m.Cfg
	ml := c.MLA
	A := &m.Layers[l].Attn
	H, R, Dn, Dr, Dv := c.Heads, ml.KVLoraRank, ml.QKNopeDim, ml.QKRopeDim, ml.VDim
	qh := Dn + Dr // per-head query width
	qd := H * qh
	q := make([]float32, n*qd)
	if ml.QLoraRank > 0 {
		qa := make([]float32, n*ml.QLoraRank)
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
	kva := make([]float32, n*(R+Dr))
	tensor.Linear(kva, h, n, &A.KVA, 0)
	if A.KVABias != nil {
		tensor.AddBias(kva, A.KVABias, n)
	}
	cNew := make([]float32, n*R)
	kpeNew := make([]float32, n*Dr)
	for i := 0; i < n; i++ {
		tensor.RMSNorm(cNew[i*R:(i+1)*R], kva[i*(R+Dr):i*(R+Dr)+R], A.KVANorm, 1e-6)
		copy(kpeNew[i*Dr:(i+1)*Dr], kva[i*(R+Dr)+R:(i+1)*(R+Dr)])
		cos, sin := m.rope.at(pos0 + i)
		m.applyRope(kpeNew[i*Dr:], cos, sin)
		for hh := 0; hh < H; hh++ {
			m.applyRope(q[i*qd+hh*qh+Dn:], cos, sin)
		}
	}
	lc.C = append(lc.C, cNew...)
	lc.KPE = append(lc.KPE, kpeNew...)
	P := pos0 + n
	if mode == MLAAuto {
		mode = MLANaive
		if n == 1 {
			mode = MLAAbsorbed
		}
	}
	attn := make([]float32, n*H*Dv)
	kvb := &A.KVB
	if mode == MLANaive {
		kvw := Dn + Dv
		kv := make([]float32, P*H*kvw) // [P, H*(Dn+Dv)]
		tensor.Linear(kv, lc.C, P, kvb, 0)
		tensor.ParallelFor(H, 1, func(h0, h1 int) {
			s := make([]float32, n*P)
			for hh := h0; hh < h1; hh++ {
				tensor.Gemm(false, true, n, P, Dn, c.AttnScale, q[hh*qh:], qd, kv[hh*kvw:], H*kvw, 0, s, P)
				tensor.Gemm(false, true, n, P, Dr, c.AttnScale, q[hh*qh+Dn:], qd, lc.KPE, Dr, 1, s, P)
				m.maskSoftmax(l, s, n, P, pos0)
				tensor.Gemm(false, false, n, Dv, P, 1, s, P, kv[hh*kvw+Dn:], H*kvw, 0, attn[hh*Dv:], H*Dv)
			}
		})
	} else {
		tensor.ParallelFor(H, 1, func(h0, h1 int) {
			s := make([]float32, n*P)
			qlat := make([]float32, n*R)
			olat := make([]float32, n*R)
			for hh := h0; hh < h1; hh++ {
				ukRow := hh * (Dn + Dv) // W_UK_h = kv_b_proj rows [ukRow, ukRow+Dn): [Dn, R]
				uvRow := ukRow + Dn     // W_UV_h = rows [uvRow, uvRow+Dv): [Dv, R]
				// qlat [n, R] = q_nope_h [n, Dn] @ W_UK_h [Dn, R]
				matmulRows(qlat, R, q[hh*qh:], qd, n, kvb, ukRow, Dn, false)
				tensor.Gemm(false, true, n, P, R, c.AttnScale, qlat, R, lc.C, R, 0, s, P)
				tensor.Gemm(false, true, n, P, Dr, c.AttnScale, q[hh*qh+Dn:], qd, lc.KPE, Dr, 1, s, P)
				m.maskSoftmax(l, s, n, P, pos0)
				tensor.Gemm(false, false, n, R, P, 1, s, P, lc.C, R, 0, olat, R)
				// out_h [n, Dv] = olat [n, R] @ W_UV_h^T
				matmulRows(attn[hh*Dv:], H*Dv, olat, R, n, kvb, uvRow, Dv, true)
			}
		})
	}
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
