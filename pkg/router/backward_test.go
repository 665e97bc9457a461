package router

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// Finite-difference checks of the router's backward in float64: the
// analytic gradient with respect to the logits of
//
//	L = sum_k dW[t,k] * w[t,k](logits)  +  a * aux(logits)  +  z * zloss(logits)
//
// against central differences of the float64 transcription hfRoute (and
// float64 aux / z-loss functions), for every family's gate.

func auxF64(c Config, logits [][]float64, K int) float64 {
	E := c.NumExperts
	count := make([]float64, E)
	prob := make([]float64, E)
	n := 0.0
	for _, l := range logits {
		ids, _ := hfRoute(c, l, nil)
		for _, id := range ids {
			count[id]++
		}
		mx := math.Inf(-1)
		for _, v := range l {
			mx = math.Max(mx, v)
		}
		var z float64
		for _, v := range l {
			z += math.Exp(v - mx)
		}
		for e, v := range l {
			prob[e] += math.Exp(v-mx) / z
		}
		n++
	}
	var aux float64
	for e := range count {
		aux += count[e] / n * prob[e] / n
	}
	return aux * float64(E)
}

func zF64(logits [][]float64) float64 {
	var s float64
	for _, l := range logits {
		mx := math.Inf(-1)
		for _, v := range l {
			mx = math.Max(mx, v)
		}
		var z float64
		for _, v := range l {
			z += math.Exp(v - mx)
		}
		lse := mx + math.Log(z)
		s += lse * lse
	}
	return s / float64(len(logits))
}

// stable reports whether hfRoute's selection survives random perturbations
// of the logits far larger than the finite-difference step.
func stable(c Config, l, bias []float64, r *rand.Rand) bool {
	ids, _ := hfRoute(c, l, bias)
	p := make([]float64, len(l))
	for range 8 {
		for i, v := range l {
			p[i] = v + 1e-4*r.NormFloat64()
		}
		got, _ := hfRoute(c, p, bias)
		if !sameIDs(ids, got) {
			return false
		}
	}
	return true
}

func sameIDs(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBackwardMatchesFiniteDifferences(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for name, c := range families {
		for _, withLosses := range []bool{false, true} {
			const T = 6
			E, K := c.NumExperts, c.TopK
			var logits [][]float64
			var bias []float64
			if c.Scoring == Sigmoid {
				bias = make([]float64, E)
				for i := range bias {
					bias[i] = r.Float64() * 0.1
				}
			}
			for len(logits) < T {
				l := make([]float64, E)
				for i := range l {
					l[i] = r.NormFloat64() * 1.5
				}
				if stable(c, l, bias, r) {
					logits = append(logits, l)
				}
			}
			dW := make([]float64, T*K)
			for i := range dW {
				dW[i] = r.NormFloat64()
			}
			auxCoef, zCoef := 0.0, 0.0
			if withLosses && c.Scoring == Softmax {
				auxCoef, zCoef = 0.7, 0.3
			} else if withLosses {
				zCoef = 0.3
			}
			loss := func(ls [][]float64) float64 {
				var s float64
				for t, l := range ls {
					_, w := hfRoute(c, l, bias)
					for k := range w {
						s += dW[t*K+k] * w[k]
					}
				}
				if auxCoef != 0 {
					s += auxCoef * auxF64(c, ls, K)
				}
				return s + zCoef*zF64(ls)
			}
			// analytic
			flat := make([]float32, T*E)
			for t, l := range logits {
				for e, v := range l {
					flat[t*E+e] = float32(v)
				}
			}
			var b32 []float32
			if bias != nil {
				b32 = make([]float32, E)
				for i, v := range bias {
					b32[i] = float32(v)
				}
			}
			var rt Routing
			c.Route(flat, T, b32, &rt)
			dW32 := make([]float32, T*K)
			for i, v := range dW {
				dW32[i] = float32(v)
			}
			var dS []float32
			if auxCoef != 0 {
				dS = LoadBalancingGrad([]*Routing{&rt})[0]
				for i := range dS {
					dS[i] *= float32(auxCoef)
				}
			}
			dL := make([]float32, T*E)
			c.Backward(&rt, dW32, dS, dL)
			if zCoef != 0 {
				ZLossGrad(flat, E, T, zCoef, dL)
			}
			// numeric
			var num, den float64
			const eps = 1e-6
			for t := 0; t < T; t++ {
				for e := 0; e < E; e += max(1, E/16) {
					orig := logits[t][e]
					logits[t][e] = orig + eps
					lp := loss(logits)
					logits[t][e] = orig - eps
					lm := loss(logits)
					logits[t][e] = orig
					fd := (lp - lm) / (2 * eps)
					d := fd - float64(dL[t*E+e])
					num += d * d
					den += fd * fd
				}
			}
			rel := math.Sqrt(num / den)
			if rel > 1e-4 {
				t.Errorf("%s (aux/z=%v): router backward vs finite differences rel error %.3g", name, withLosses, rel)
			}
		}
	}
}

func TestCapacityLimitDropsLatestTokens(t *testing.T) {
	// 6 tokens all choosing experts {0, 1}: capacity 4 keeps tokens 0-3.
	rt := &Routing{T: 6, K: 2, E: 3, IDs: []int32{0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 2}, Weights: make([]float32, 12)}
	for i := range rt.Weights {
		rt.Weights[i] = float32(i)
	}
	var p Plan
	p.Build(rt)
	if d := p.Limit(4); d != 3 {
		t.Fatalf("dropped %d rows, want 3 (expert 0 has 6, expert 1 has 5)", d)
	}
	// Expert 0 is chosen by tokens 0-5, expert 1 by tokens 0-4, expert 2 by
	// token 5: each keeps its first 4 rows in token order.
	wantTokens := map[int][]int32{0: {0, 1, 2, 3}, 1: {0, 1, 2, 3}, 2: {5}}
	for e := 0; e < 3; e++ {
		lo, hi := p.Rows(e)
		if got := p.Token[lo:hi]; !slices.Equal(got, wantTokens[e]) {
			t.Errorf("expert %d keeps tokens %v, want %v", e, got, wantTokens[e])
		}
		for r := lo; r < hi; r++ {
			if p.Weight[r] != rt.Weights[int(p.Token[r])*2+int(p.Choice[r])] {
				t.Errorf("row %d weight moved", r)
			}
		}
	}
	if lo, hi := p.Rows(2); hi-lo != 1 {
		t.Errorf("expert 2 rows %d, want 1", hi-lo)
	}
}
