package simulate

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/pkg/router"
)

// Popularity is how often each routed expert is chosen, per decoder layer
// (indexed like expert.ID.Layer; nil for dense layers): relative weights
// >= 0, not necessarily normalized. Each token of a layer picks the
// model's TopK distinct experts, the first in proportion to the weights,
// each next one in proportion to the weights of those not yet picked (the
// Plackett-Luce law that top-K of a softmax over log-weights plus Gumbel
// noise draws: TestRouterMatchesGumbelTopK). A nil Popularity is uniform.
type Popularity [][]float64

// ZipfPopularity is a Zipf skew of exponent s (0: uniform; 1: the r-th
// most popular expert is chosen 1/r as often as the first, before the
// top-K draw), independently per MoE layer: each layer ranks its experts
// by a permutation drawn from seed (math/rand/v2 PCG), so the hot experts
// of different layers differ, as in real routers.
func ZipfPopularity(m MoEShape, s float64, seed uint64) Popularity {
	rng := rand.New(rand.NewPCG(seed, 0x5eed2e1f))
	p := make(Popularity, m.Layers)
	for l := m.DenseLayers; l < m.Layers; l++ {
		perm := rng.Perm(m.RoutedExperts)
		w := make([]float64, m.RoutedExperts)
		for r, e := range perm {
			w[e] = math.Pow(float64(r+1), -s)
		}
		p[l] = w
	}
	return p
}

// TraceRow is one row of a routing trace: count rows (token choices) of a
// recorded run went to expert Expert of decoder layer Layer.
type TraceRow struct {
	Layer, Expert int
	Count         int64
}

// RoutingTrace is a recorded routing: rows per (layer, expert), e.g. summed
// from a front end's switchyard_expert_rows_total metric. Its text form
// (ReadRoutingTrace, WriteTo) is CSV: an optional header line
// "layer,expert,count", then one "layer,expert,count" line per expert
// (decimal integers, spaces around fields allowed); blank lines and lines
// starting with # are comments. Each (layer, expert) appears at most once.
//
//	# DeepSeek-V3, 10k requests of a chat mix
//	layer,expert,count
//	3,0,18823
//	3,1,20417
type RoutingTrace struct {
	Rows []TraceRow // in file order
}

// maxTraceIndex bounds a trace's layer and expert numbers (no model has
// anywhere near a million layers or experts per layer).
const maxTraceIndex = 1 << 20

// ReadRoutingTrace parses a routing trace (see RoutingTrace). Errors name
// the line and what is wrong with it.
func ReadRoutingTrace(r io.Reader) (*RoutingTrace, error) {
	t := &RoutingTrace{}
	seen := map[[2]int]int{} // (layer, expert) -> line
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line, data := 0, 0
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		data++
		f := strings.Split(l, ",")
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
		}
		if data == 1 && len(f) == 3 && strings.EqualFold(f[0], "layer") && strings.EqualFold(f[1], "expert") && strings.EqualFold(f[2], "count") {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("routing trace line %d: %d fields, want layer,expert,count", line, len(f))
		}
		var v [3]int64
		for i, name := range []string{"layer", "expert", "count"} {
			n, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("routing trace line %d: %s %q: want a non-negative integer", line, name, f[i])
			}
			if i < 2 && n >= maxTraceIndex {
				return nil, fmt.Errorf("routing trace line %d: %s %d: want below %d", line, name, n, maxTraceIndex)
			}
			v[i] = n
		}
		k := [2]int{int(v[0]), int(v[1])}
		if prev, ok := seen[k]; ok {
			return nil, fmt.Errorf("routing trace line %d: layer %d expert %d already given on line %d", line, k[0], k[1], prev)
		}
		seen[k] = line
		t.Rows = append(t.Rows, TraceRow{Layer: k[0], Expert: k[1], Count: v[2]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("routing trace line %d: %w", line+1, err)
	}
	if len(t.Rows) == 0 {
		return nil, fmt.Errorf("routing trace: no layer,expert,count rows")
	}
	return t, nil
}

// WriteTo writes t in the form ReadRoutingTrace reads.
func (t *RoutingTrace) WriteTo(w io.Writer) (int64, error) {
	bw := bufio.NewWriter(w)
	var n int64
	c, _ := bw.WriteString("layer,expert,count\n")
	n += int64(c)
	for _, r := range t.Rows {
		c, _ = fmt.Fprintf(bw, "%d,%d,%d\n", r.Layer, r.Expert, r.Count)
		n += int64(c)
	}
	return n, bw.Flush()
}

// Popularity turns the trace into m's per-layer expert weights. A row for
// a layer that is not one of m's MoE layers, or an expert beyond m's
// RoutedExperts, is an error; an MoE layer the trace does not mention (or
// whose counts are all 0) is uniform.
func (t *RoutingTrace) Popularity(m MoEShape) (Popularity, error) {
	p := make(Popularity, m.Layers)
	for _, r := range t.Rows {
		if r.Layer < m.DenseLayers || r.Layer >= m.Layers {
			return nil, fmt.Errorf("routing trace: layer %d is not an MoE layer of %s (layers %d..%d)", r.Layer, m.Name, m.DenseLayers, m.Layers-1)
		}
		if r.Expert >= m.RoutedExperts {
			return nil, fmt.Errorf("routing trace: layer %d expert %d: %s has %d routed experts", r.Layer, r.Expert, m.Name, m.RoutedExperts)
		}
		if p[r.Layer] == nil {
			p[r.Layer] = make([]float64, m.RoutedExperts)
		}
		p[r.Layer][r.Expert] = float64(r.Count)
	}
	for l := m.DenseLayers; l < m.Layers; l++ {
		sum := 0.0
		for _, w := range p[l] {
			sum += w
		}
		if sum == 0 {
			p[l] = nil // uniform
		}
	}
	return p, nil
}

// Router draws the routing of decode steps: for each token of a layer,
// TopK distinct experts by the layer's Popularity, deterministically from
// its seed, laid out by the real dispatch plan (router.Plan.Build) whose
// per-expert row counts the serving model sends. Not safe for concurrent
// use.
type Router struct {
	m    MoEShape
	cum  [][]float64 // per layer: cumulative weights (nil: uniform)
	rng  *rand.Rand
	rt   router.Routing
	plan router.Plan
}

// NewRouter returns a Router for m drawing from pop (nil: uniform) with
// seed.
func NewRouter(m MoEShape, pop Popularity, seed uint64) *Router {
	r := &Router{m: m, cum: make([][]float64, m.Layers), rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))}
	for l := range r.cum {
		if l >= len(pop) || pop[l] == nil {
			continue
		}
		c := make([]float64, len(pop[l]))
		s := 0.0
		for e, w := range pop[l] {
			s += max(w, 0)
			c[e] = s
		}
		if s > 0 {
			r.cum[l] = c
		}
	}
	return r
}

// Route draws the experts of tokens tokens at decoder layer layer (an MoE
// layer) and writes the rows routed to each expert into counts ([E],
// overwritten); it returns counts.
func (r *Router) Route(layer, tokens int, counts []int) []int {
	E, K := r.m.RoutedExperts, r.m.TopK
	rt := &r.rt
	rt.T, rt.K, rt.E = tokens, K, E
	if cap(rt.IDs) < tokens*K {
		rt.IDs = make([]int32, tokens*K)
		rt.Weights = make([]float32, tokens*K)
	}
	rt.IDs, rt.Weights = rt.IDs[:tokens*K], rt.Weights[:tokens*K]
	cum := r.cum[layer]
	for t := 0; t < tokens; t++ {
		ids := rt.IDs[t*K : t*K : (t+1)*K]
		for k := 0; k < K; k++ {
			ids = append(ids, int32(r.pick(cum, ids)))
			rt.Weights[t*K+k] = 1 / float32(K)
		}
	}
	r.plan.Build(rt)
	for e := range counts[:E] {
		lo, hi := r.plan.Rows(e)
		counts[e] = hi - lo
	}
	return counts
}

// pick draws one expert not in taken: from the weights by rejection (the
// same law as drawing from the weights of the experts not taken), falling
// back to an exact draw over the rest when the taken experts hold most of
// the weight.
func (r *Router) pick(cum []float64, taken []int32) int {
	E := r.m.RoutedExperts
	has := func(e int) bool {
		for _, x := range taken {
			if int(x) == e {
				return true
			}
		}
		return false
	}
	for try := 0; try < 32; try++ {
		var e int
		if cum == nil {
			e = r.rng.IntN(E)
		} else {
			// Expert e covers [cum[e-1], cum[e]): experts of weight 0
			// cover nothing and are never drawn here.
			u := r.rng.Float64() * cum[E-1]
			e = min(sort.Search(E, func(i int) bool { return cum[i] > u }), E-1)
		}
		if !has(e) {
			return e
		}
	}
	// Exact: weights of the experts not taken (uniform when they weigh 0).
	rest := 0.0
	for e := 0; e < E; e++ {
		if !has(e) {
			rest += cumWeight(cum, e)
		}
	}
	if rest > 0 {
		u := r.rng.Float64() * rest
		last := -1
		for e := 0; e < E; e++ {
			if has(e) {
				continue
			}
			w := cumWeight(cum, e)
			if w <= 0 {
				continue
			}
			last = e
			if u < w {
				return e
			}
			u -= w
		}
		return last
	}
	free := E - len(taken)
	n := r.rng.IntN(free)
	for e := 0; e < E; e++ {
		if has(e) {
			continue
		}
		if n == 0 {
			return e
		}
		n--
	}
	panic("simulate: no expert left to route to")
}

func cumBefore(cum []float64, e int) float64 {
	if e == 0 {
		return 0
	}
	return cum[e-1]
}

func cumWeight(cum []float64, e int) float64 {
	if cum == nil {
		return 1
	}
	return cum[e] - cumBefore(cum, e)
}
