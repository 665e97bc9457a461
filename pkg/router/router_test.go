package router

import (
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

// hfRoute is a literal float64 transcription of transformers' routers
// (softmax/sigmoid, optional bias for selection, group masking with 0.0,
// top-k by sort, gather, renormalize, scale). It is the reference Route is
// tested against.
func hfRoute(c Config, logits, bias []float64) (ids []int, w []float64) {
	E := len(logits)
	scores := make([]float64, E)
	switch c.Scoring {
	case Softmax:
		mx := math.Inf(-1)
		for _, v := range logits {
			mx = math.Max(mx, v)
		}
		var z float64
		for i, v := range logits {
			scores[i] = math.Exp(v - mx)
			z += scores[i]
		}
		for i := range scores {
			scores[i] /= z
		}
	case Sigmoid:
		for i, v := range logits {
			scores[i] = 1 / (1 + math.Exp(-v))
		}
	}
	choice := append([]float64(nil), scores...)
	for i := range choice {
		if bias != nil {
			choice[i] += bias[i]
		}
	}
	if c.NumGroups > 1 {
		per := E / c.NumGroups
		gs := make([]float64, c.NumGroups)
		for g := range gs {
			grp := append([]float64(nil), choice[g*per:(g+1)*per]...)
			sort.Sort(sort.Reverse(sort.Float64Slice(grp)))
			if c.GroupScore == GroupMax {
				gs[g] = grp[0]
			} else {
				gs[g] = grp[0] + grp[1]
			}
		}
		keep := topIdx(gs, c.TopKGroups)
		for g := range gs {
			kept := false
			for _, k := range keep {
				kept = kept || k == g
			}
			if !kept {
				for i := g * per; i < (g+1)*per; i++ {
					choice[i] = 0.0 // transformers' masked_fill value
				}
			}
		}
	}
	ids = topIdx(choice, c.TopK)
	var sum float64
	for _, id := range ids {
		w = append(w, scores[id])
		sum += scores[id]
	}
	scale := float64(c.ScalingFactor)
	if scale == 0 {
		scale = 1
	}
	for i := range w {
		if c.Renormalize {
			w[i] /= sum + float64(c.RenormEpsilon)
		}
		w[i] *= scale
	}
	return ids, w
}

func topIdx(x []float64, k int) []int {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return x[idx[a]] > x[idx[b]] })
	return idx[:k]
}

var families = map[string]Config{
	"mixtral":          {NumExperts: 8, TopK: 2, Scoring: Softmax, Renormalize: true},
	"qwen2_moe":        {NumExperts: 60, TopK: 4, Scoring: Softmax},
	"qwen3_moe":        {NumExperts: 128, TopK: 8, Scoring: Softmax, Renormalize: true},
	"olmoe":            {NumExperts: 64, TopK: 8, Scoring: Softmax},
	"deepseek_v2":      {NumExperts: 64, TopK: 6, Scoring: Softmax, ScalingFactor: 1},
	"deepseek_v2_glg":  {NumExperts: 160, TopK: 6, Scoring: Softmax, NumGroups: 8, TopKGroups: 3, GroupScore: GroupMax, ScalingFactor: 16},
	"deepseek_v3":      {NumExperts: 256, TopK: 8, Scoring: Sigmoid, NumGroups: 8, TopKGroups: 4, GroupScore: GroupTop2Sum, Renormalize: true, RenormEpsilon: 1e-20, ScalingFactor: 2.5},
	"deepseek_v3_norm": {NumExperts: 16, TopK: 4, Scoring: Sigmoid, NumGroups: 4, TopKGroups: 2, GroupScore: GroupTop2Sum, ScalingFactor: 1},
}

func TestRouteMatchesTransformersSemantics(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for name, c := range families {
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		const T = 50
		E := c.NumExperts
		logits := make([]float32, T*E)
		for i := range logits {
			logits[i] = float32(r.NormFloat64() * 2)
		}
		var bias []float32
		if c.Scoring == Sigmoid {
			// Positive biases: masking with -Inf and with 0.0 agree (see package doc).
			bias = make([]float32, E)
			for i := range bias {
				bias[i] = float32(r.Float64() * 0.1)
			}
		}
		var out Routing
		c.Route(logits, T, bias, &out)
		for tok := 0; tok < T; tok++ {
			l64 := make([]float64, E)
			for i := range l64 {
				l64[i] = float64(logits[tok*E+i])
			}
			var b64 []float64
			if bias != nil {
				b64 = make([]float64, E)
				for i := range b64 {
					b64[i] = float64(bias[i])
				}
			}
			ids, w := hfRoute(c, l64, b64)
			for k := range ids {
				if int(out.IDs[tok*c.TopK+k]) != ids[k] {
					t.Fatalf("%s token %d: ids %v, transformers %v", name, tok, out.IDs[tok*c.TopK:(tok+1)*c.TopK], ids)
				}
				if d := math.Abs(float64(out.Weights[tok*c.TopK+k]) - w[k]); d > 1e-6*math.Max(1, math.Abs(w[k])) {
					t.Fatalf("%s token %d choice %d: weight %g, transformers %g", name, tok, k, out.Weights[tok*c.TopK+k], w[k])
				}
			}
		}
	}
}

func TestGroupMaskUsesMinusInfinity(t *testing.T) {
	// Two groups of two; group 1 is dropped. With a large negative bias
	// the kept group's biased scores are negative, so transformers' 0.0
	// mask would let a dropped expert win; -Inf never does.
	c := Config{NumExperts: 4, TopK: 2, Scoring: Sigmoid, NumGroups: 2, TopKGroups: 1, GroupScore: GroupTop2Sum}
	logits := []float32{3, 3, -3, -3}
	bias := []float32{-5, -5, -9, -9}
	var out Routing
	c.Route(logits, 1, bias, &out)
	for _, id := range out.IDs {
		if id >= 2 {
			t.Fatalf("dropped-group expert %d chosen: %v", id, out.IDs)
		}
	}
}

func TestPlanGroupsEveryChoiceOnce(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	c := Config{NumExperts: 16, TopK: 4, Scoring: Softmax}
	const T = 37
	logits := make([]float32, T*16)
	for i := range logits {
		logits[i] = float32(r.NormFloat64())
	}
	var out Routing
	c.Route(logits, T, nil, &out)
	var p Plan
	p.Build(&out)
	if p.Len() != T*4 {
		t.Fatalf("plan has %d rows, want %d", p.Len(), T*4)
	}
	seen := map[[2]int32]bool{}
	for e := 0; e < 16; e++ {
		lo, hi := p.Rows(e)
		for row := lo; row < hi; row++ {
			tok, k := p.Token[row], p.Choice[row]
			if out.IDs[int(tok)*4+int(k)] != int32(e) {
				t.Fatalf("row %d (token %d choice %d) is under expert %d but routed to %d", row, tok, k, e, out.IDs[int(tok)*4+int(k)])
			}
			if p.Weight[row] != out.Weights[int(tok)*4+int(k)] {
				t.Fatalf("row %d weight %g, routing %g", row, p.Weight[row], out.Weights[int(tok)*4+int(k)])
			}
			if row > lo && p.Token[row-1] >= tok {
				t.Fatalf("expert %d rows not in ascending token order", e)
			}
			key := [2]int32{tok, k}
			if seen[key] {
				t.Fatalf("token %d choice %d appears twice", tok, k)
			}
			seen[key] = true
		}
	}
	total := 0
	for _, n := range p.Counts() {
		total += n
	}
	if total != T*4 || len(seen) != T*4 {
		t.Fatalf("counts sum %d, distinct rows %d, want %d", total, len(seen), T*4)
	}
}

func TestLoadBalancingLoss(t *testing.T) {
	// Perfectly uniform: every expert gets the same share and probability.
	E, K, T := 4, 2, 4
	r := &Routing{T: T, K: K, E: E, IDs: []int32{0, 1, 2, 3, 0, 1, 2, 3}, Scores: make([]float32, T*E)}
	for i := range r.Scores {
		r.Scores[i] = 0.25
	}
	if got := LoadBalancingLoss([]*Routing{r}); math.Abs(got-float64(K)) > 1e-9 {
		t.Fatalf("uniform aux = %g, want K = %d", got, K)
	}
	// Collapsed: all tokens to experts 0,1 with all probability on them.
	r2 := &Routing{T: 2, K: 2, E: 4, IDs: []int32{0, 1, 0, 1}, Scores: []float32{0.5, 0.5, 0, 0, 0.5, 0.5, 0, 0}}
	// f = [1, 1, 0, 0] (rows / tokens), P = [0.5, 0.5, 0, 0] -> 4 * (0.5 + 0.5) = 4
	if got := LoadBalancingLoss([]*Routing{r2}); math.Abs(got-4) > 1e-9 {
		t.Fatalf("collapsed aux = %g, want 4", got)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Config{NumExperts: 10, TopK: 11, NumGroups: 3, TopKGroups: 5, ScalingFactor: float32(math.NaN())}
	err := c.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"TopK = 11", "not divisible by NumGroups = 3", "TopKGroups = 5", "ScalingFactor"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
