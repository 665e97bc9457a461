package router

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
