package router

import (
	"math"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// LoadBalancingLoss is the Switch Transformer / Mixtral auxiliary loss as
// transformers computes it (load_balancing_loss_func) over the routings of
// all MoE layers together (N = sum of T over layers):
//
//	aux = E * sum_e f_e * P_e,  f_e = (rows routed to e) / N,  P_e = mean_t score[t, e]
//
// where rows count every one of a token's K choices, so a perfectly uniform
// router scores K. Scores must be softmax probabilities.
func LoadBalancingLoss(layers []*Routing) float64 {
	if len(layers) == 0 {
		return 0
	}
	E := layers[0].E
	count := make([]float64, E)
	prob := make([]float64, E)
	var n float64
	for _, r := range layers {
		for _, id := range r.IDs[:r.T*r.K] {
			count[id]++
		}
		for t := 0; t < r.T; t++ {
			for e, s := range r.Scores[t*E : (t+1)*E] {
				prob[e] += float64(s)
			}
		}
		n += float64(r.T)
	}
	var aux float64
	for e := range count {
		aux += (count[e] / n) * (prob[e] / n)
	}
	return aux * float64(E)
}

// ZLoss is the router z-loss (ST-MoE) over logits [T, E] of several
// layers together: mean over all N = sum of T rows of logsumexp(row)^2.
func ZLoss(logits [][]float32, E int) float64 {
	var z float64
	n := 0
	for _, lg := range logits {
		for r := 0; r < len(lg)/E; r++ {
			s := tensor.LogSumExp(lg[r*E : (r+1)*E])
			z += s * s
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return z / float64(n)
}

// ZLossGrad adds coef * d ZLoss / d logits for one layer's logits [T, E]
// into dLogits, where n is the row count ZLoss averaged over (all layers):
// d/dl = 2 lse(row) softmax(row) / n.
func ZLossGrad(logits []float32, E, n int, coef float64, dLogits []float32) {
	for r := 0; r < len(logits)/E; r++ {
		row := logits[r*E : (r+1)*E]
		lse := tensor.LogSumExp(row)
		k := coef * 2 * lse / float64(n)
		for e, v := range row {
			dLogits[r*E+e] += float32(k * math.Exp(float64(v)-lse))
		}
	}
}
