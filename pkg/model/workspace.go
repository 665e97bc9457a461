package model

import (
	"sync/atomic"

	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Workspace holds every temporary of a Forward call (activations, attention
// projections and scores, router logits, dispatch plan, expert rows) and
// its Output, so that a caller stepping the same batch again and again
// (decoding) reuses one set of buffers instead of allocating them per call:
// with a Workspace, all sequences' caches reserved (Seq.Reserve) and the
// experts in this process (expert.Store), a decode step allocates nothing
// once the buffers have grown to the batch's size. Buffers grow when a call
// needs more (more tokens, longer contexts, more threads) and never shrink.
//
// The zero value is ready to use, and one Workspace may serve calls of
// different models and batch shapes. A Workspace is not safe for
// concurrent use: concurrent Forward calls need one Workspace each. The
// Output of a call with a Workspace aliases it: Output.Logits,
// Output.Hidden and Output.Routing are valid until the next Forward call
// with the same Workspace, which overwrites them.
type Workspace struct {
	out Output

	starts []int    // [B+1] first row of each sequence in the batch
	saved  [][4]int // [B*L] cache lengths to roll back to on error

	x, h, a []float32 // [N, D] residual stream, normed input, sublayer output
	last    []float32 // [B, D] each sequence's last row, the lm_head input
	logits  []float32 // [rows, V]
	hidden  []float32 // [L+1, N, D] when Options.Hidden
	hrows   [][]float32
	routes  []router.Routing // [L] when Options.Routing, else [1] shared by every layer
	rptrs   []*router.Routing

	// MoE layers.
	gate   []float32   // [N, E] router logits
	plan   router.Plan // grows its own buffers
	rows   []float32   // [N*K, D] expert outputs in plan order
	shared []float32   // [N, D] shared experts' output
	sgate  []float32   // [N] shared expert gate logits
	ffn    []float32   // [2*N*F] FFN scratch (dense MLP, shared experts)

	// Attention of one sequence (n new tokens, P positions), reused by the
	// next sequence. GQA: q [n, H*Dh], attn [n, H*Dh]; K and V go straight
	// into the cache. MLA: q [n, H*(Dn+Dr)], qa [n, Rq], kva [n, R+Dr],
	// attn [n, H*Dv], kv [P, H*(Dn+Dv)] (naive), C and KPE into the cache.
	q, attn, qa, kva, kv []float32
	heads                heads
}

// fit returns *buf resliced to n elements, reallocated first if its
// capacity is short: by at least a quarter, so that a buffer tracking a
// growing context is reallocated only O(log T) times. The contents are
// undefined.
func fit[E any](buf *[]E, n int) []E {
	if cap(*buf) < n {
		*buf = make([]E, max(n, cap(*buf)+cap(*buf)/4))
	}
	*buf = (*buf)[:n]
	return *buf
}

// heads is the per-head part of one sequence's attention in one layer, the
// ParallelRange body that draws heads; the Workspace keeps it so that
// starting it allocates nothing. Each Range call takes the next slot of the
// scratch (run makes tensor.Splits(H, 1) calls).
type heads struct {
	m    *Model
	l    int
	mla  MLAMode // MLA: MLANaive or MLAAbsorbed
	lc   *layerCache
	n    int // new tokens
	P    int // positions attended to (cache + new)
	pos0 int // position of the first new token
	q    []float32
	kv   []float32 // MLA naive: expanded keys and values [P, H*(Dn+Dv)]
	attn []float32

	slots int          // scratch slots, one per Range call: tensor.Splits(H, 1)
	slot  atomic.Int32 // next free scratch slot
	next  atomic.Int32 // next head to draw
	s     []float32    // [slots][n, P] scores
	lat   []float32    // MLA absorbed: [slots][2][n, R] query and output latents
}

// run runs the heads of one sequence over the goroutines.
func (t *heads) run() {
	c := t.m.Cfg
	H := c.Heads
	t.slots = tensor.Splits(H, 1)
	t.s = fit(&t.s, t.slots*t.scoreFloats())
	if c.MLA != nil && t.mla == MLAAbsorbed {
		t.lat = fit(&t.lat, t.slots*2*t.n*c.MLA.KVLoraRank)
	}
	t.slot.Store(0)
	t.next.Store(0)
	tensor.ParallelRange(t.slots, 1, t)
}

// attnRows is how many query rows compute takes at a time. A block of
// rows attends to the positions up to its last row only (the cache and
// the new tokens up to it): the scores above the causal diagonal are
// neither computed, exponentiated nor multiplied by V, which halves a
// long prompt's attention, and a block's scores [attnRows, P] (128 KiB
// at P = 512) stay in a core's L2 between the three steps. A prompt of
// at most attnRows tokens is one block, computed exactly as a whole. (A
// variable for the tests, which set it small to run many blocks.)
var attnRows = 64

// scoreFloats is one scratch slot's size: the scores of one block.
func (t *heads) scoreFloats() int { return min(t.n, attnRows) * t.P }

// Range is one of run's t.slots calls: it takes a scratch slot, then heads
// one at a time from t.next until none are left, so that a core slowed by
// another process takes fewer heads (a fixed split of the heads waited on
// the slowest core). A head's arithmetic does not depend on the call that
// runs it.
func (t *heads) Range(_, _ int) {
	c, n := t.m.Cfg, t.n
	absorbed := c.MLA != nil && t.mla == MLAAbsorbed
	var s, lat []float32
	sf := t.scoreFloats()
	if i := int(t.slot.Add(1) - 1); i < t.slots {
		s = t.s[i*sf : (i+1)*sf]
		if absorbed {
			lat = t.lat[i*2*n*c.MLA.KVLoraRank : (i+1)*2*n*c.MLA.KVLoraRank]
		}
	} else { // GOMAXPROCS grew since run sized the scratch
		s = make([]float32, sf)
		if absorbed {
			lat = make([]float32, 2*n*c.MLA.KVLoraRank)
		}
	}
	for {
		hh := int(t.next.Add(1) - 1)
		if hh >= c.Heads {
			return
		}
		t.compute(hh, s, lat)
	}
}

// compute computes head hh, attnRows query rows at a time, with scores
// scratch s [min(n, attnRows), P] and, for absorbed MLA, latents lat
// [2][n, R]. Block b of rows [i0, i0+rows) attends to positions [0, Pb),
// Pb = pos0 + i0 + rows: the rest are masked for every row of the block.
func (t *heads) compute(hh int, s, lat []float32) {
	m, c, lc := t.m, t.m.Cfg, t.lc
	n := t.n
	if c.MLA == nil {
		H, Hkv, Dh := c.Heads, c.KVHeads, c.HeadDim
		qd, kd := H*Dh, Hkv*Dh
		g := hh / (H / Hkv)
		for i0 := 0; i0 < n; i0 += attnRows {
			rows, Pb := t.block(i0)
			sb := s[:rows*Pb]
			tensor.Gemm(false, true, rows, Pb, Dh, c.AttnScale, t.q[i0*qd+hh*Dh:], qd, lc.K[g*Dh:], kd, 0, sb, Pb)
			m.maskSoftmax(t.l, sb, rows, Pb, t.pos0+i0)
			tensor.Gemm(false, false, rows, Dh, Pb, 1, sb, Pb, lc.V[g*Dh:], kd, 0, t.attn[i0*qd+hh*Dh:], qd)
		}
		return
	}
	ml := c.MLA
	H, R, Dn, Dr, Dv := c.Heads, ml.KVLoraRank, ml.QKNopeDim, ml.QKRopeDim, ml.VDim
	qh := Dn + Dr
	qd := H * qh
	if t.mla == MLANaive {
		kvw := Dn + Dv
		for i0 := 0; i0 < n; i0 += attnRows {
			rows, Pb := t.block(i0)
			sb := s[:rows*Pb]
			q := t.q[i0*qd+hh*qh:]
			tensor.Gemm(false, true, rows, Pb, Dn, c.AttnScale, q, qd, t.kv[hh*kvw:], H*kvw, 0, sb, Pb)
			tensor.Gemm(false, true, rows, Pb, Dr, c.AttnScale, q[Dn:], qd, lc.KPE, Dr, 1, sb, Pb)
			m.maskSoftmax(t.l, sb, rows, Pb, t.pos0+i0)
			tensor.Gemm(false, false, rows, Dv, Pb, 1, sb, Pb, t.kv[hh*kvw+Dn:], H*kvw, 0, t.attn[i0*H*Dv+hh*Dv:], H*Dv)
		}
		return
	}
	qlat, olat := lat[:n*R], lat[n*R:2*n*R]
	kvb := &m.Layers[t.l].Attn.KVB
	ukRow := hh * (Dn + Dv) // W_UK_h = kv_b_proj rows [ukRow, ukRow+Dn): [Dn, R]
	uvRow := ukRow + Dn     // W_UV_h = rows [uvRow, uvRow+Dv): [Dv, R]
	// qlat [n, R] = q_nope_h [n, Dn] @ W_UK_h [Dn, R]
	matmulRows(qlat, R, t.q[hh*qh:], qd, n, kvb, ukRow, Dn, false)
	for i0 := 0; i0 < n; i0 += attnRows {
		rows, Pb := t.block(i0)
		sb := s[:rows*Pb]
		tensor.Gemm(false, true, rows, Pb, R, c.AttnScale, qlat[i0*R:], R, lc.C, R, 0, sb, Pb)
		tensor.Gemm(false, true, rows, Pb, Dr, c.AttnScale, t.q[i0*qd+hh*qh+Dn:], qd, lc.KPE, Dr, 1, sb, Pb)
		m.maskSoftmax(t.l, sb, rows, Pb, t.pos0+i0)
		tensor.Gemm(false, false, rows, R, Pb, 1, sb, Pb, lc.C, R, 0, olat[i0*R:], R)
	}
	// out_h [n, Dv] = olat [n, R] @ W_UV_h^T
	matmulRows(t.attn[hh*Dv:], H*Dv, olat, R, n, kvb, uvRow, Dv, true)
}

// block is the query block starting at row i0: its rows, and the
// positions it attends to (the cache and the new tokens up to its last).
func (t *heads) block(i0 int) (rows, positions int) {
	rows = min(attnRows, t.n-i0)
	return rows, min(t.P, t.pos0+i0+rows)
}
