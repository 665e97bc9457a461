package simulate

import (
	"bytes"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/router"
)

func smallShape() MoEShape {
	return MoEShape{Name: "small", Layers: 3, DenseLayers: 1, Hidden: 64, ExpertInter: 32, DenseInter: 128,
		RoutedExperts: 16, TopK: 4, ElemBytes: 2, Attn: Attention{Heads: 2, KVHeads: 1, HeadDim: 32}, Vocab: 100}
}

// TestRouterCounts: every token picks TopK distinct experts (each expert
// gets at most one row per token, rows sum to tokens x K), the same seed
// draws the same counts, and a uniform popularity spreads rows evenly.
func TestRouterCounts(t *testing.T) {
	m := smallShape()
	for _, s := range []float64{0, 1, 3} {
		pop := ZipfPopularity(m, s, 7)
		a, b := NewRouter(m, pop, 42), NewRouter(m, pop, 42)
		for step := 0; step < 50; step++ {
			ca := a.Route(1, 5, make([]int, m.RoutedExperts))
			cb := b.Route(1, 5, make([]int, m.RoutedExperts))
			if !reflect.DeepEqual(ca, cb) {
				t.Fatalf("s=%g: same seed, counts %v and %v", s, ca, cb)
			}
			sum := 0
			for e, n := range ca {
				if n > 5 {
					t.Fatalf("s=%g: expert %d got %d rows of 5 tokens: a token picked it twice", s, e, n)
				}
				sum += n
			}
			if sum != 5*m.TopK {
				t.Fatalf("s=%g: %d rows, want %d", s, sum, 5*m.TopK)
			}
		}
	}
	r := NewRouter(m, nil, 1)
	tot := make([]int, m.RoutedExperts)
	for i := 0; i < 2000; i++ {
		for e, n := range r.Route(2, 1, make([]int, m.RoutedExperts)) {
			tot[e] += n
		}
	}
	for e, n := range tot { // mean 500, sd ~ 19
		if n < 400 || n > 600 {
			t.Errorf("uniform: expert %d got %d of 8000 rows, want about 500", e, n)
		}
	}
}

// TestRouterMatchesGumbelTopK: the Router draws what the real router
// picks (router.Config.Route, softmax top-K) from logits log(w) + Gumbel
// noise: each expert's share of the rows agrees within 2 points.
func TestRouterMatchesGumbelTopK(t *testing.T) {
	m := smallShape()
	pop := ZipfPopularity(m, 1.2, 3)
	const T = 20000
	ours := make([]int, m.RoutedExperts)
	r := NewRouter(m, pop, 9)
	for e, n := range r.Route(1, T, make([]int, m.RoutedExperts)) {
		ours[e] += n
	}
	rng := rand.New(rand.NewPCG(1, 2))
	logits := make([]float32, T*m.RoutedExperts)
	for i := range logits {
		g := -math.Log(-math.Log(rng.Float64()))
		logits[i] = float32(math.Log(pop[1][i%m.RoutedExperts]) + g)
	}
	cfg := router.Config{NumExperts: m.RoutedExperts, TopK: m.TopK, Scoring: router.Softmax, Renormalize: true}
	var rt router.Routing
	cfg.Route(logits, T, nil, &rt)
	var plan router.Plan
	plan.Build(&rt)
	theirs := plan.Counts()
	for e := range ours {
		a, b := float64(ours[e])/(T*float64(m.TopK)), float64(theirs[e])/(T*float64(m.TopK))
		if math.Abs(a-b) > 0.02 {
			t.Errorf("expert %d (weight %.3f): %.3f of the rows, the real router's Gumbel top-k %.3f", e, pop[1][e], a, b)
		}
	}
}

func TestZipfSkew(t *testing.T) {
	m := smallShape()
	if p := ZipfPopularity(m, 0, 1); p[0] != nil || p[1][0] != 1 || p[2][15] != 1 {
		t.Errorf("s=0: %v, want nil for the dense layer and 1s", p)
	}
	p := ZipfPopularity(m, 1, 1)
	hot1, hot2 := argmax(p[1]), argmax(p[2])
	if hot1 == hot2 && argmin(p[1]) == argmin(p[2]) {
		t.Errorf("layers 1 and 2 rank their experts alike: want a permutation per layer")
	}
	if p[1][hot1] != 1 || math.Abs(p[1][argmin(p[1])]-1.0/16) > 1e-12 {
		t.Errorf("s=1 weights %v: want 1 down to 1/16", p[1])
	}
}

func argmax(x []float64) int {
	b := 0
	for i, v := range x {
		if v > x[b] {
			b = i
		}
	}
	return b
}

func argmin(x []float64) int {
	b := 0
	for i, v := range x {
		if v < x[b] {
			b = i
		}
	}
	return b
}

func TestReadRoutingTrace(t *testing.T) {
	m := smallShape()
	tr, err := ReadRoutingTrace(strings.NewReader("# a trace\nlayer,expert,count\n1, 0, 30\n\n1,3,10\n2,15,0\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []TraceRow{{1, 0, 30}, {1, 3, 10}, {2, 15, 0}}
	if !reflect.DeepEqual(tr.Rows, want) {
		t.Fatalf("rows %v, want %v", tr.Rows, want)
	}
	p, err := tr.Popularity(m)
	if err != nil {
		t.Fatal(err)
	}
	if p[1][0] != 30 || p[1][3] != 10 || p[1][1] != 0 || p[2] != nil {
		t.Errorf("popularity %v: want layer 1 from the counts, layer 2 (all 0) uniform", p)
	}
	for _, c := range []struct{ in, want string }{
		{"", "no layer,expert,count rows"},
		{"1,2\n", "line 1: 2 fields"},
		{"layer,expert,count\n1,2,x\n", `line 2: count "x"`},
		{"1,-2,3\n", `line 1: expert "-2"`},
		{"1,2,3\n# c\n1,2,4\n", "line 3: layer 1 expert 2 already given on line 1"},
		{"1,2,3\nlayer,expert,count\n", "line 2: layer"},
		{"9999999,0,1\n", "want below"},
	} {
		_, err := ReadRoutingTrace(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.in, err, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"0,1,5\n", "layer 0 is not an MoE layer"},
		{"1,16,5\n", "expert 16: small has 16 routed experts"},
	} {
		tr, err := ReadRoutingTrace(strings.NewReader(c.in))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Popularity(m); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.in, err, c.want)
		}
	}
}

// FuzzReadRoutingTrace: any input parses or fails with an error naming a
// line (never a panic), and what parses writes back to the same trace.
func FuzzReadRoutingTrace(f *testing.F) {
	f.Add("layer,expert,count\n3,0,100\n3,1,7\n")
	f.Add("# c\n\n1 , 2 , 3\n")
	f.Add("1,2,3\n1,2,3\n")
	f.Add("a,b,c\n")
	f.Fuzz(func(t *testing.T, in string) {
		tr, err := ReadRoutingTrace(strings.NewReader(in))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "routing trace") {
				t.Fatalf("error %q does not say it is about the routing trace", err)
			}
			return
		}
		var buf bytes.Buffer
		if _, err := tr.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		again, err := ReadRoutingTrace(&buf)
		if err != nil {
			t.Fatalf("written trace does not parse: %v\n%s", err, buf.String())
		}
		if !reflect.DeepEqual(tr.Rows, again.Rows) {
			t.Fatalf("round trip: %v, then %v", tr.Rows, again.Rows)
		}
		_, _ = tr.Popularity(smallShape())
	})
}
