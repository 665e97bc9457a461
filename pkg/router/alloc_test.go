package router

import (
	"math/rand/v2"
	"testing"
)

// TestReusedRoutingAllocatesNothing: routing into a reused Routing and
// building a reused Plan (what every MoE layer of a decode step does)
// allocate nothing once their buffers have grown.
func TestReusedRoutingAllocatesNothing(t *testing.T) {
	const T, E = 4, 16
	r := rand.New(rand.NewPCG(5, 6))
	logits := make([]float32, T*E)
	bias := make([]float32, E)
	for i := range logits {
		logits[i] = float32(r.NormFloat64())
	}
	for _, c := range []Config{
		{NumExperts: E, TopK: 2, Scoring: Softmax, Renormalize: true},
		{NumExperts: E, TopK: 4, Scoring: Sigmoid, NumGroups: 4, TopKGroups: 2, GroupScore: GroupTop2Sum, Renormalize: true, RenormEpsilon: 1e-20, ScalingFactor: 2.5},
	} {
		var rt Routing
		var p Plan
		step := func() {
			c.Route(logits, T, bias, &rt)
			p.Build(&rt)
		}
		step()
		if got := testing.AllocsPerRun(20, step); got != 0 {
			t.Errorf("%+v: %v allocations per Route+Build, want 0", c, got)
		}
	}
}
