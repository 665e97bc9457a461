package model

import (
	"github.com/switchyard/switchyard/pkg/tensor"
)

// attnForward runs causal attention for B sequences of T tokens:
// for each sequence b and head h (kv head g = h / (H/Hkv)):
//
//	P[b,h] = softmax(scale * Q[b,h] K[b,g]^T + mask)   [T, T], kept in probs
//	O[b,h] = P[b,h] V[b,g]
//
// q [N, H*dq], k [N, Hkv*dq], v [N, Hkv*dv], o [N, H*dv] (N = B*T, each row
// the heads side by side); probs [B, H, T, T].
func (m *Model) attnForward(l int, q, k, v, o, probs []float32, B, T, H, Hkv, dq, dv int) {
	scale := m.Cfg.AttnScale
	group := H / Hkv
	tensor.ParallelFor(B*H, 1, func(lo, hi int) {
		for bh := lo; bh < hi; bh++ {
			b, h := bh/H, bh%H
			g := h / group
			p := probs[bh*T*T : (bh+1)*T*T]
			tensor.Gemm(false, true, T, T, dq, scale, q[b*T*H*dq+h*dq:], H*dq, k[b*T*Hkv*dq+g*dq:], Hkv*dq, 0, p, T)
			m.maskSoftmax(l, p, T, T, 0)
			tensor.Gemm(false, false, T, dv, T, 1, p, T, v[b*T*Hkv*dv+g*dv:], Hkv*dv, 0, o[b*T*H*dv+h*dv:], H*dv)
		}
	})
}

// attnBackward is attnForward's backward. Given dO [N, H*dv] it writes
// (overwrites) dQ [N, H*dq], dK [N, Hkv*dq] and dV [N, Hkv*dv]:
//
//	dV += P^T dO;  dP = dO V^T;  dS = P * (dP - rowsum(dP*P))
//	dQ = scale dS K;  dK += scale dS^T Q
//
// Work is split by (sequence, kv head) so heads sharing a kv head
// accumulate into it without races.
func (m *Model) attnBackward(q, k, v, probs, dO, dQ, dK, dV []float32, B, T, H, Hkv, dq, dv int) {
	scale := m.Cfg.AttnScale
	group := H / Hkv
	N := B * T
	clear(dK[:N*Hkv*dq])
	clear(dV[:N*Hkv*dv])
	tensor.ParallelFor(B*Hkv, 1, func(lo, hi int) {
		dP := make([]float32, T*T)
		for bg := lo; bg < hi; bg++ {
			b, g := bg/Hkv, bg%Hkv
			kb, vb := k[b*T*Hkv*dq+g*dq:], v[b*T*Hkv*dv+g*dv:]
			dkb, dvb := dK[b*T*Hkv*dq+g*dq:], dV[b*T*Hkv*dv+g*dv:]
			for h := g * group; h < (g+1)*group; h++ {
				p := probs[(b*H+h)*T*T : (b*H+h+1)*T*T]
				dob := dO[b*T*H*dv+h*dv:]
				tensor.Gemm(true, false, T, dv, T, 1, p, T, dob, H*dv, 1, dvb, Hkv*dv)
				tensor.Gemm(false, true, T, T, dv, 1, dob, H*dv, vb, Hkv*dv, 0, dP, T)
				for i := 0; i < T; i++ {
					pr, dr := p[i*T:(i+1)*T], dP[i*T:(i+1)*T]
					var s float32
					for j := range pr {
						s += pr[j] * dr[j]
					}
					for j := range pr {
						dr[j] = pr[j] * (dr[j] - s)
					}
				}
				tensor.Gemm(false, false, T, dq, T, scale, dP, T, kb, Hkv*dq, 0, dQ[b*T*H*dq+h*dq:], H*dq)
				tensor.Gemm(true, false, T, dq, T, scale, dP, T, q[b*T*H*dq+h*dq:], H*dq, 1, dkb, Hkv*dq)
			}
		}
	})
}

// ropeRows rotates, in every row r of x (position r % T), heads heads of
// width Rope.Dim found at x[r*stride + off + h*hstride]. inverse applies
// the opposite rotation (the backward of RoPE: R(theta)^T = R(-theta)).
func (m *Model) ropeRows(x []float32, rows, T, stride, off, heads, hstride int, inverse bool) {
	half := m.Cfg.Rope.Dim / 2
	tensor.ParallelFor(rows, 16, func(lo, hi int) {
		neg := make([]float32, half)
		for r := lo; r < hi; r++ {
			cos, sin := m.rope.at(r % T)
			if inverse {
				for i, s := range sin {
					neg[i] = -s
				}
				sin = neg
			}
			for h := 0; h < heads; h++ {
				m.applyRope(x[r*stride+off+h*hstride:], cos, sin)
			}
		}
	})
}

// clampSave writes clamp(x, -c, c) into dst (c <= 0: plain copy).
func clampSave(dst, x []float32, c float32) {
	if c <= 0 {
		copy(dst, x)
		return
	}
	for i, v := range x {
		dst[i] = min(max(v, -c), c)
	}
}

// clampBackward zeroes gradients where the forward clamp was active
// (torch.clamp passes the gradient where min <= x <= max).
func clampBackward(dx, x []float32, c float32) {
	if c <= 0 {
		return
	}
	for i, v := range x {
		if v < -c || v > c {
			dx[i] = 0
		}
	}
}

// trainGQA is the training forward of grouped-query attention of layer l
// over a [B*T, D] batch: h1 -> out [N, D] (before o_proj bias).
func (m *Model) trainGQA(l int, a *layerActs, B, T int, out []float32) {
	c := m.Cfg
	A := &m.Layers[l].Attn
	H, Hkv, Dh := c.Heads, c.KVHeads, c.HeadDim
	N, qd, kd := B*T, H*Dh, Hkv*Dh
	a.qRaw, a.kRaw, a.vRaw = grow(a.qRaw, N*qd), grow(a.kRaw, N*kd), grow(a.vRaw, N*kd)
	tensor.Linear(a.qRaw, a.h1, N, &A.Q, 0)
	tensor.Linear(a.kRaw, a.h1, N, &A.K, 0)
	tensor.Linear(a.vRaw, a.h1, N, &A.V, 0)
	if A.QBias != nil {
		tensor.AddBias(a.qRaw, A.QBias, N)
		tensor.AddBias(a.kRaw, A.KBias, N)
		tensor.AddBias(a.vRaw, A.VBias, N)
	}
	qpre, kpre := a.qRaw, a.kRaw
	switch c.QKNorm {
	case QKNormPerHead:
		a.qn, a.qRstd = grow(a.qn, N*qd), grow(a.qRstd, N*H)
		a.kn, a.kRstd = grow(a.kn, N*kd), grow(a.kRstd, N*Hkv)
		rmsNormSave(a.qn, a.qRstd, a.qRaw, A.QNorm, N*H, Dh, c.RMSEps)
		rmsNormSave(a.kn, a.kRstd, a.kRaw, A.KNorm, N*Hkv, Dh, c.RMSEps)
		qpre, kpre = a.qn, a.kn
	case QKNormFull:
		a.qn, a.qRstd = grow(a.qn, N*qd), grow(a.qRstd, N)
		a.kn, a.kRstd = grow(a.kn, N*kd), grow(a.kRstd, N)
		rmsNormSave(a.qn, a.qRstd, a.qRaw, A.QNorm, N, qd, c.RMSEps)
		rmsNormSave(a.kn, a.kRstd, a.kRaw, A.KNorm, N, kd, c.RMSEps)
		qpre, kpre = a.qn, a.kn
	}
	a.q, a.k, a.v = grow(a.q, N*qd), grow(a.k, N*kd), grow(a.v, N*kd)
	clampSave(a.q, qpre, c.ClipQKV)
	clampSave(a.k, kpre, c.ClipQKV)
	clampSave(a.v, a.vRaw, c.ClipQKV)
	m.ropeRows(a.q, N, T, qd, 0, H, Dh, false)
	m.ropeRows(a.k, N, T, kd, 0, Hkv, Dh, false)
	a.probs = grow(a.probs, B*H*T*T)
	a.attn = grow(a.attn, N*qd)
	m.attnForward(l, a.q, a.k, a.v, a.attn, a.probs, B, T, H, Hkv, Dh, Dh)
	tensor.Linear(out, a.attn, N, &A.O, 0)
}

// trainGQABackward: dx [N, D] is the gradient of the block output; writes
// dh [N, D], the gradient of h1, and accumulates weight gradients into GL.
func (m *Model) trainGQABackward(l int, a *layerActs, B, T int, dx, dh, tmp []float32, GL *Layer) {
	c := m.Cfg
	A, GA := &m.Layers[l].Attn, &GL.Attn
	H, Hkv, Dh, D := c.Heads, c.KVHeads, c.HeadDim, c.Hidden
	N, qd, kd := B*T, H*Dh, Hkv*Dh
	// out = attn O^T
	tensor.Gemm(true, false, D, qd, N, 1, dx, D, a.attn, qd, 1, GA.O.F32, qd)
	dattn := grow(nil, N*qd)
	tensor.Gemm(false, false, N, qd, D, 1, dx, D, A.O.F32, qd, 0, dattn, qd)
	dq, dk, dv := grow(nil, N*qd), grow(nil, N*kd), grow(nil, N*kd)
	m.attnBackward(a.q, a.k, a.v, a.probs, dattn, dq, dk, dv, B, T, H, Hkv, Dh, Dh)
	m.ropeRows(dq, N, T, qd, 0, H, Dh, true)
	m.ropeRows(dk, N, T, kd, 0, Hkv, Dh, true)
	qpre, kpre := a.qRaw, a.kRaw
	if c.QKNorm != QKNormNone {
		qpre, kpre = a.qn, a.kn
	}
	clampBackward(dq, qpre, c.ClipQKV)
	clampBackward(dk, kpre, c.ClipQKV)
	clampBackward(dv, a.vRaw, c.ClipQKV)
	switch c.QKNorm {
	case QKNormPerHead:
		dqr, dkr := grow(nil, N*qd), grow(nil, N*kd)
		rmsNormBackward(dqr, GA.QNorm, dq, a.qRaw, A.QNorm, a.qRstd, N*H, Dh, false)
		rmsNormBackward(dkr, GA.KNorm, dk, a.kRaw, A.KNorm, a.kRstd, N*Hkv, Dh, false)
		dq, dk = dqr, dkr
	case QKNormFull:
		dqr, dkr := grow(nil, N*qd), grow(nil, N*kd)
		rmsNormBackward(dqr, GA.QNorm, dq, a.qRaw, A.QNorm, a.qRstd, N, qd, false)
		rmsNormBackward(dkr, GA.KNorm, dk, a.kRaw, A.KNorm, a.kRstd, N, kd, false)
		dq, dk = dqr, dkr
	}
	if A.QBias != nil {
		sumRows(GA.QBias, dq, N, qd)
		sumRows(GA.KBias, dk, N, kd)
		sumRows(GA.VBias, dv, N, kd)
	}
	tensor.Gemm(true, false, qd, D, N, 1, dq, qd, a.h1, D, 1, GA.Q.F32, D)
	tensor.Gemm(true, false, kd, D, N, 1, dk, kd, a.h1, D, 1, GA.K.F32, D)
	tensor.Gemm(true, false, kd, D, N, 1, dv, kd, a.h1, D, 1, GA.V.F32, D)
	tensor.Gemm(false, false, N, D, qd, 1, dq, qd, A.Q.F32, D, 0, dh, D)
	tensor.Gemm(false, false, N, D, kd, 1, dk, kd, A.K.F32, D, 1, dh, D)
	tensor.Gemm(false, false, N, D, kd, 1, dv, kd, A.V.F32, D, 1, dh, D)
}

// trainMLA is the training forward of Multi-head Latent Attention (the
// naive formulation: keys and values expanded through kv_b_proj, RoPE key
// shared by all heads), over a [B*T, D] batch.
func (m *Model) trainMLA(l int, a *layerActs, B, T int, out []float32) {
	c := m.Cfg
	ml := c.MLA
	A := &m.Layers[l].Attn
	H, R, Dn, Dr, Dv := c.Heads, ml.KVLoraRank, ml.QKNopeDim, ml.QKRopeDim, ml.VDim
	N, qh := B*T, Dn+Dr
	a.q = grow(a.q, N*H*qh)
	if ml.QLoraRank > 0 {
		Rq := ml.QLoraRank
		a.qa, a.qan, a.qaRstd = grow(a.qa, N*Rq), grow(a.qan, N*Rq), grow(a.qaRstd, N)
		tensor.Linear(a.qa, a.h1, N, &A.QA, 0)
		if A.QABias != nil {
			tensor.AddBias(a.qa, A.QABias, N)
		}
		rmsNormSave(a.qan, a.qaRstd, a.qa, A.QANorm, N, Rq, 1e-6)
		tensor.Linear(a.q, a.qan, N, &A.QB, 0)
	} else {
		tensor.Linear(a.q, a.h1, N, &A.Q, 0)
	}
	a.kva = grow(a.kva, N*(R+Dr))
	tensor.Linear(a.kva, a.h1, N, &A.KVA, 0)
	if A.KVABias != nil {
		tensor.AddBias(a.kva, A.KVABias, N)
	}
	// latent c = norm(kva[:, :R]); its input is kept in qn (reused field).
	a.qn = grow(a.qn, N*R)
	for r := 0; r < N; r++ {
		copy(a.qn[r*R:(r+1)*R], a.kva[r*(R+Dr):r*(R+Dr)+R])
	}
	a.c, a.cRstd = grow(a.c, N*R), grow(a.cRstd, N)
	rmsNormSave(a.c, a.cRstd, a.qn, A.KVANorm, N, R, 1e-6)
	m.ropeRows(a.q, N, T, H*qh, Dn, H, qh, false)
	kpe := grow(nil, N*Dr)
	for r := 0; r < N; r++ {
		copy(kpe[r*Dr:(r+1)*Dr], a.kva[r*(R+Dr)+R:(r+1)*(R+Dr)])
	}
	m.ropeRows(kpe, N, T, Dr, 0, 1, Dr, false)
	kvw := Dn + Dv
	a.kv = grow(a.kv, N*H*kvw)
	tensor.Linear(a.kv, a.c, N, &A.KVB, 0)
	a.k, a.v = grow(a.k, N*H*qh), grow(a.v, N*H*Dv)
	for r := 0; r < N; r++ {
		for h := 0; h < H; h++ {
			copy(a.k[r*H*qh+h*qh:], a.kv[r*H*kvw+h*kvw:r*H*kvw+h*kvw+Dn])
			copy(a.k[r*H*qh+h*qh+Dn:r*H*qh+(h+1)*qh], kpe[r*Dr:(r+1)*Dr])
			copy(a.v[r*H*Dv+h*Dv:r*H*Dv+(h+1)*Dv], a.kv[r*H*kvw+h*kvw+Dn:r*H*kvw+(h+1)*kvw])
		}
	}
	a.probs = grow(a.probs, B*H*T*T)
	a.attn = grow(a.attn, N*H*Dv)
	m.attnForward(l, a.q, a.k, a.v, a.attn, a.probs, B, T, H, H, qh, Dv)
	tensor.Linear(out, a.attn, N, &A.O, 0)
}

// trainMLABackward is trainMLA's backward (see trainGQABackward).
func (m *Model) trainMLABackward(l int, a *layerActs, B, T int, dx, dh, tmp []float32, GL *Layer) {
	c := m.Cfg
	ml := c.MLA
	A, GA := &m.Layers[l].Attn, &GL.Attn
	H, R, Dn, Dr, Dv, D := c.Heads, ml.KVLoraRank, ml.QKNopeDim, ml.QKRopeDim, ml.VDim, c.Hidden
	N, qh, kvw := B*T, Dn+Dr, Dn+Dv
	od := H * Dv
	tensor.Gemm(true, false, D, od, N, 1, dx, D, a.attn, od, 1, GA.O.F32, od)
	dattn := grow(nil, N*od)
	tensor.Gemm(false, false, N, od, D, 1, dx, D, A.O.F32, od, 0, dattn, od)
	dq, dk, dv := grow(nil, N*H*qh), grow(nil, N*H*qh), grow(nil, N*od)
	m.attnBackward(a.q, a.k, a.v, a.probs, dattn, dq, dk, dv, B, T, H, H, qh, Dv)
	dkv := grow(nil, N*H*kvw)
	dkva := grow(nil, N*(R+Dr))
	clear(dkva)
	for r := 0; r < N; r++ {
		dkpe := dkva[r*(R+Dr)+R : (r+1)*(R+Dr)]
		for h := 0; h < H; h++ {
			copy(dkv[r*H*kvw+h*kvw:r*H*kvw+h*kvw+Dn], dk[r*H*qh+h*qh:])
			copy(dkv[r*H*kvw+h*kvw+Dn:r*H*kvw+(h+1)*kvw], dv[r*od+h*Dv:r*od+(h+1)*Dv])
			tensor.Add(dkpe, dk[r*H*qh+h*qh+Dn:r*H*qh+(h+1)*qh])
		}
	}
	m.ropeRows(dkva, N, T, R+Dr, R, 1, Dr, true)
	m.ropeRows(dq, N, T, H*qh, Dn, H, qh, true)
	// kv = c KVB^T
	tensor.Gemm(true, false, H*kvw, R, N, 1, dkv, H*kvw, a.c, R, 1, GA.KVB.F32, R)
	dc := grow(nil, N*R)
	tensor.Gemm(false, false, N, R, H*kvw, 1, dkv, H*kvw, A.KVB.F32, R, 0, dc, R)
	dcin := grow(nil, N*R)
	rmsNormBackward(dcin, GA.KVANorm, dc, a.qn, A.KVANorm, a.cRstd, N, R, false)
	for r := 0; r < N; r++ {
		copy(dkva[r*(R+Dr):r*(R+Dr)+R], dcin[r*R:(r+1)*R])
	}
	if A.KVABias != nil {
		sumRows(GA.KVABias, dkva, N, R+Dr)
	}
	tensor.Gemm(true, false, R+Dr, D, N, 1, dkva, R+Dr, a.h1, D, 1, GA.KVA.F32, D)
	tensor.Gemm(false, false, N, D, R+Dr, 1, dkva, R+Dr, A.KVA.F32, D, 0, dh, D)
	if ml.QLoraRank > 0 {
		Rq := ml.QLoraRank
		tensor.Gemm(true, false, H*qh, Rq, N, 1, dq, H*qh, a.qan, Rq, 1, GA.QB.F32, Rq)
		dqan := grow(nil, N*Rq)
		tensor.Gemm(false, false, N, Rq, H*qh, 1, dq, H*qh, A.QB.F32, Rq, 0, dqan, Rq)
		dqa := grow(nil, N*Rq)
		rmsNormBackward(dqa, GA.QANorm, dqan, a.qa, A.QANorm, a.qaRstd, N, Rq, false)
		if A.QABias != nil {
			sumRows(GA.QABias, dqa, N, Rq)
		}
		tensor.Gemm(true, false, Rq, D, N, 1, dqa, Rq, a.h1, D, 1, GA.QA.F32, D)
		tensor.Gemm(false, false, N, D, Rq, 1, dqa, Rq, A.QA.F32, D, 1, dh, D)
	} else {
		tensor.Gemm(true, false, H*qh, D, N, 1, dq, H*qh, a.h1, D, 1, GA.Q.F32, D)
		tensor.Gemm(false, false, N, D, H*qh, 1, dq, H*qh, A.Q.F32, D, 1, dh, D)
	}
}
