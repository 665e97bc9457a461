package router

// Backward propagates gradients through Route (the selection itself is not
// differentiable; the gradient flows through the selected experts'
// weights). dW [T, K] is the gradient of the loss with respect to
// r.Weights; dScores ([T, E] or nil) is an extra gradient with respect to
// r.Scores (e.g. from the load-balancing loss). The gradient with respect to
// the router logits is added into dLogits [T, E].
func (c *Config) Backward(r *Routing, dW, dScores, dLogits []float32) {
	E, K := r.E, r.K
	scale := c.ScalingFactor
	if scale == 0 {
		scale = 1
	}
	ds := make([]float64, E)
	for t := 0; t < r.T; t++ {
		clear(ds)
		if dScores != nil {
			for e, v := range dScores[t*E : (t+1)*E] {
				ds[e] = float64(v)
			}
		}
		s := r.Scores[t*E : (t+1)*E]
		ids := r.IDs[t*K : (t+1)*K]
		dw := dW[t*K : (t+1)*K]
		if c.Renormalize {
			// w_k = scale * s_k / S, S = sum_m s_m + eps:
			// ds_j = scale * (dw_j - sum_k dw_k s_k / S) / S
			var sum float64
			for _, id := range ids {
				sum += float64(s[id])
			}
			sum += float64(c.RenormEpsilon)
			var dot float64
			for k, id := range ids {
				dot += float64(dw[k]) * float64(s[id]) / sum
			}
			for k, id := range ids {
				ds[id] += float64(scale) * (float64(dw[k]) - dot) / sum
			}
		} else {
			for k, id := range ids {
				ds[id] += float64(scale) * float64(dw[k])
			}
		}
		dl := dLogits[t*E : (t+1)*E]
		switch c.Scoring {
		case Softmax:
			var dot float64
			for e, p := range s {
				dot += float64(p) * ds[e]
			}
			for e, p := range s {
				dl[e] += float32(float64(p) * (ds[e] - dot))
			}
		case Sigmoid:
			for e, p := range s {
				dl[e] += float32(ds[e] * float64(p) * (1 - float64(p)))
			}
		}
	}
}

// LoadBalancingGrad returns d aux / d Scores for every routing in layers
// (same layout as Scores), where aux is LoadBalancingLoss(layers):
// d aux / d p[t,e] = E * count_e / N^2 (counts are constants).
func LoadBalancingGrad(layers []*Routing) [][]float32 {
	if len(layers) == 0 {
		return nil
	}
	E := layers[0].E
	count := make([]float64, E)
	var n float64
	for _, r := range layers {
		for _, id := range r.IDs[:r.T*r.K] {
			count[id]++
		}
		n += float64(r.T)
	}
	g := make([]float32, E)
	for e := range g {
		g[e] = float32(float64(E) * count[e] / (n * n))
	}
	out := make([][]float32, len(layers))
	for i, r := range layers {
		d := make([]float32, r.T*E)
		for t := 0; t < r.T; t++ {
			copy(d[t*E:(t+1)*E], g)
		}
		out[i] = d
	}
	return out
}
