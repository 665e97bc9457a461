package model

import (
	"context"
	"fmt"
	"math"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// trainMoEForward runs a sparse layer's training forward over h2 [N, D]
// into out [N, D]: route, (cap), experts through the Trainer, combine,
// shared expert. It returns the number of rows dropped by the capacity.
func (m *Model) trainMoEForward(ctx context.Context, tr expert.Trainer, l int, a *layerActs, N int, lc LossConfig, out []float32, tm *timer) (int, error) {
	c := m.Cfg
	L := &m.Layers[l]
	D, E, K := c.Hidden, c.MoE.Router.NumExperts, c.MoE.Router.TopK
	a.logits = grow(a.logits, N*E)
	tensor.LinearExact(a.logits, a.h2, N, &L.Gate, 0) // routing: exact in every compute mode
	c.MoE.Router.Route(a.logits, N, L.ScoreBias, &a.routing)
	a.plan.Build(&a.routing)
	dropped := 0
	if lc.CapacityFactor > 0 {
		capacity := int(math.Ceil(lc.CapacityFactor * float64(N*K) / float64(E)))
		dropped = a.plan.Limit(capacity)
	}
	a.y = grow(a.y, a.plan.Len()*D)
	tm.lap(rout)
	if err := tr.ForwardTrain(ctx, l, &a.plan, a.h2, D, a.y); err != nil {
		return 0, fmt.Errorf("layer %d experts: %w", l, err)
	}
	clear(out[:N*D])
	expert.Combine(out, D, &a.plan, a.y)
	tm.lap(exps)
	if L.Shared != nil {
		a.sharedOut = grow(a.sharedOut, N*D)
		L.Shared.ForwardSave(a.sharedOut, a.h2, N, &a.shared)
		if c.MoE.SharedGate {
			a.sgLogit = grow(a.sgLogit, N)
			tensor.Linear(a.sgLogit, a.h2, N, &L.SharedGate, 0)
			for t := 0; t < N; t++ {
				tensor.Axpy(tensor.Sigmoid(a.sgLogit[t]), a.sharedOut[t*D:(t+1)*D], out[t*D:(t+1)*D])
			}
		} else {
			tensor.Add(out[:N*D], a.sharedOut)
		}
		tm.lap(shared)
	}
	return dropped, nil
}

// trainMoEBackward: dx [N, D] is the gradient of the layer output; writes
// dh [N, D] (gradient of h2) and accumulates the gate, shared-expert and
// (through the Trainer) routed-expert gradients.
//
// auxD ([N, E] or nil) is the load-balancing loss's gradient with respect
// to this layer's scores, already multiplied by its coefficient.
//
// zRows is the row count the z-loss averages over (all MoE layers' rows of
// the whole, possibly global, batch).
func (m *Model) trainMoEBackward(ctx context.Context, tr expert.Trainer, l int, a *layerActs, N int, lc LossConfig, zRows int, auxD, dx, dh []float32, GL *Layer, tm *timer) error {
	c := m.Cfg
	L := &m.Layers[l]
	D, E, K := c.Hidden, c.MoE.Router.NumExperts, c.MoE.Router.TopK
	clear(dh[:N*D])
	// shared expert
	if L.Shared != nil {
		ds := dx
		if c.MoE.SharedGate {
			ds = grow(nil, N*D)
			for t := 0; t < N; t++ {
				sg := tensor.Sigmoid(a.sgLogit[t])
				row := dx[t*D : (t+1)*D]
				for i, v := range row {
					ds[t*D+i] = sg * v
				}
				dg := tensor.Dot(row, a.sharedOut[t*D:(t+1)*D]) * sg * (1 - sg)
				tensor.Axpy(dg, a.h2[t*D:(t+1)*D], GL.SharedGate.F32)
				tensor.Axpy(dg, L.SharedGate.F32, dh[t*D:(t+1)*D])
			}
		}
		tmp := grow(nil, N*D)
		L.Shared.Backward(tmp, ds, N, &a.shared, GL.Shared, nil)
		tensor.Add(dh[:N*D], tmp)
		tm.lap(shared)
	}
	// routed experts: out[t] += w_r y_r
	rows := a.plan.Len()
	dy := grow(nil, rows*D)
	dW := make([]float32, N*K)
	for r := 0; r < rows; r++ {
		t := int(a.plan.Token[r])
		dout := dx[t*D : (t+1)*D]
		w := a.plan.Weight[r]
		for i, v := range dout {
			dy[r*D+i] = w * v
		}
		dW[t*K+int(a.plan.Choice[r])] = tensor.Dot(dout, a.y[r*D:(r+1)*D])
	}
	dxr := grow(nil, rows*D)
	if err := tr.BackwardTrain(ctx, l, dy, dxr); err != nil {
		return fmt.Errorf("layer %d experts backward: %w", l, err)
	}
	for r := 0; r < rows; r++ {
		t := int(a.plan.Token[r])
		tensor.Add(dh[t*D:(t+1)*D], dxr[r*D:(r+1)*D])
	}
	tm.lap(exps)
	// router: weights -> scores -> logits, plus aux and z losses
	dLogits := make([]float32, N*E)
	c.MoE.Router.Backward(&a.routing, dW, auxD, dLogits)
	if lc.ZCoef != 0 {
		router.ZLossGrad(a.logits, E, zRows, lc.ZCoef, dLogits)
	}
	tensor.Gemm(true, false, E, D, N, 1, dLogits, E, a.h2, D, 1, GL.Gate.F32, D)
	tensor.Gemm(false, false, N, D, E, 1, dLogits, E, L.Gate.F32, D, 1, dh, D)
	tm.lap(rout)
	return nil
}
