package router

import "fmt"

// Plan is the dispatch layout of one MoE layer: the T*K (token, choice)
// pairs of a Routing, grouped by expert. Row r of the plan sends token
// Token[r] to expert e, where Offsets[e] <= r < Offsets[e+1]; within an
// expert, rows are in ascending token order. An executor computes one output
// row per plan row; the combine step adds Weight[r] * y[r] into token
// Token[r]'s output. The same plan serves dispatch and combine, so a remote
// owner only needs the rows and returns results in the same order.
type Plan struct {
	NumExperts int
	Offsets    []int32   // [E+1] row ranges per expert
	Token      []int32   // [T*K] source token of each row
	Choice     []int32   // [T*K] which of the token's K choices the row is (0 = best)
	Weight     []float32 // [T*K] combine weight of each row

	next []int32 // Build's scratch: [E] next free row per expert
}

// Build fills p from r (a counting sort by expert, stable in token order).
// Buffers are reused when large enough.
func (p *Plan) Build(r *Routing) {
	E, n := r.E, r.T*r.K
	p.NumExperts = E
	p.Offsets = grow(p.Offsets, E+1)
	p.Token = grow(p.Token, n)
	p.Choice = grow(p.Choice, n)
	p.Weight = grow(p.Weight, n)
	clear(p.Offsets)
	for _, id := range r.IDs[:n] {
		if id < 0 || int(id) >= E {
			panic(fmt.Sprintf("router: expert id %d out of range [0, %d)", id, E))
		}
		p.Offsets[id+1]++
	}
	for e := 0; e < E; e++ {
		p.Offsets[e+1] += p.Offsets[e]
	}
	p.next = grow(p.next, E)
	next := p.next
	copy(next, p.Offsets[:E])
	for i, id := range r.IDs[:n] {
		row := next[id]
		next[id]++
		p.Token[row] = int32(i / r.K)
		p.Choice[row] = int32(i % r.K)
		p.Weight[row] = r.Weights[i]
	}
}

// Rows returns the plan rows [lo, hi) routed to expert e.
func (p *Plan) Rows(e int) (lo, hi int) { return int(p.Offsets[e]), int(p.Offsets[e+1]) }

// Len is the number of rows (T*K).
func (p *Plan) Len() int { return int(p.Offsets[p.NumExperts]) }

// Counts returns the number of rows per expert ([E], freshly allocated).
func (p *Plan) Counts() []int {
	c := make([]int, p.NumExperts)
	for e := range c {
		lo, hi := p.Rows(e)
		c[e] = hi - lo
	}
	return c
}

// Limit enforces an expert capacity: each expert keeps at most capacity
// rows (its lowest token indices, as Switch Transformer keeps the earliest
// tokens) and the rest are removed from the plan, so they contribute
// nothing to the layer output. It returns the number of rows dropped.
func (p *Plan) Limit(capacity int) int {
	if capacity < 0 {
		capacity = 0
	}
	w := 0
	dropped := 0
	newOff := make([]int32, len(p.Offsets))
	for e := 0; e < p.NumExperts; e++ {
		lo, hi := p.Rows(e)
		newOff[e] = int32(w)
		keep := min(hi-lo, capacity)
		for r := lo; r < lo+keep; r++ {
			p.Token[w], p.Choice[w], p.Weight[w] = p.Token[r], p.Choice[r], p.Weight[r]
			w++
		}
		dropped += hi - lo - keep
	}
	newOff[p.NumExperts] = int32(w)
	copy(p.Offsets, newOff)
	return dropped
}
