// Package placement decides which workers hold which routed experts. It is
// one pure, deterministic function, Place, in the spirit of DeepSeek's EPLB
// (eplb.py): no etcd, no clock, no randomness. The coordinator leader calls
// it whenever the worker set changes and writes the result to etcd.
//
// Vocabulary (EPLB's): a logical expert is a routed expert of the model,
// named by expert.ID{Layer, Expert}; a physical expert (a copy, a replica)
// is one logical expert held by one worker. ReplicaCount is the number of
// physical copies of a logical expert: R' = min(R, number of workers), each
// on a distinct worker.
//
// Goals, in priority order:
//  1. Every logical expert has exactly R' copies on distinct workers.
//  2. No worker's expert memory exceeds its budget, WorkerInfo.MemBytes
//     (the bytes a worker offers for experts: workers hold no dense
//     weights, and each takes its runtime's share off its memory limit
//     before registering); if that is impossible Place returns
//     ErrInsufficientMemory with the bytes needed and available.
//  3. Balance by copy count: every worker holds floor(P/N) or ceil(P/N) of
//     the P = E*R' copies (max-min <= 1), except workers whose memory caps
//     them lower, whose share goes to the others. Within each MoE layer the
//     copies are spread over the workers too (fewest copies of that layer
//     first), so every worker has work at every layer.
//  4. Minimal movement: a copy on a worker that is still present stays there
//     unless balance requires it to move. A joining worker takes just its
//     share from the fullest workers; a leaving worker's copies are re-placed
//     and (almost always) nothing else moves.
//  5. Stability: the same input gives the same table, and when nothing
//     changed the previous placement is returned unchanged with its epoch.
package placement

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
)

// Expert is a logical expert and the memory one copy of it takes on a
// worker (its three matrices at the element size workers hold).
type Expert struct {
	ID    expert.ID `json:"id"`
	Bytes int64     `json:"bytes"`
}

// Input is everything Place looks at.
type Input struct {
	// Model is the fingerprint copied into the result (cluster.Placement.Model).
	Model string
	// Layers is the length of the result's Owners table (the model's decoder
	// layer count). Zero means 1 + the largest layer in Experts.
	Layers int
	// Experts are the logical experts to place, in any order; duplicates are
	// an error.
	Experts []Expert
	// Workers are the live workers. MemBytes is the memory a worker may use
	// for experts, all of it its budget here; 0 means unlimited. Cores is
	// informational (not yet used).
	Workers []cluster.WorkerInfo
	// Replicas is R, the wanted copies of each logical expert on distinct
	// workers; 0 means 1. With fewer than R workers every worker holds every
	// expert.
	Replicas int
	// Prev is the placement in force (nil for none). Copies on workers in
	// Workers are kept when balance allows; its epoch numbers the result.
	Prev *cluster.Placement
}

// ErrInsufficientMemory is returned (wrapped, with the bytes needed and
// available) when the workers' budgets cannot hold every copy.
var ErrInsufficientMemory = errors.New("insufficient worker memory for experts")

// ErrNoWorkers is returned when Input.Workers is empty.
var ErrNoWorkers = errors.New("no workers to place experts on")

// Place computes the placement for in. The result's Epoch is Prev.Epoch+1
// (1 without Prev) when the owners table or the worker set differs from
// Prev, and Prev's epoch when nothing changed (the tables are then equal).
// Its Workers map holds every input worker, owning experts or not.
func Place(in Input) (cluster.Placement, error) {
	p, err := newPlanner(in)
	if err != nil {
		return cluster.Placement{}, err
	}
	if err := p.run(); err != nil {
		return cluster.Placement{}, err
	}
	return p.result(), nil
}

// planner is Place's working state. Workers and experts are referred to by
// index: workers sorted by ID, experts sorted by (layer, expert).
type planner struct {
	in      Input
	r       int // R' = min(R, N)
	workers []cluster.WorkerInfo
	widx    map[cluster.WorkerID]int
	experts []Expert
	budget  []int64 // [N] bytes for experts; -1 = unlimited
	layerOf []int   // [E] layer of expert i
	nLayers int
	layerN  []int // [Layers] logical experts per layer

	owners [][]int  // [E] worker indices holding expert i, primary first
	holds  [][]bool // [N][E] whether worker w holds expert e
	count  []int    // [N] copies held
	used   []int64  // [N] bytes held
	lcount [][]int  // [N][Layers] copies of layer l held by worker w
	target []int    // [N] copy count wanted
}

func newPlanner(in Input) (*planner, error) {
	if len(in.Workers) == 0 {
		return nil, ErrNoWorkers
	}
	var errs []error
	p := &planner{in: in, widx: map[cluster.WorkerID]int{}}
	p.workers = slices.Clone(in.Workers)
	sort.Slice(p.workers, func(i, j int) bool { return p.workers[i].ID < p.workers[j].ID })
	for i, w := range p.workers {
		if w.ID == "" {
			errs = append(errs, fmt.Errorf("placement: worker %d has an empty ID", i))
		}
		if i > 0 && p.workers[i-1].ID == w.ID {
			errs = append(errs, fmt.Errorf("placement: worker %q listed twice", w.ID))
		}
		if w.MemBytes < 0 {
			errs = append(errs, fmt.Errorf("placement: worker %q has MemBytes %d < 0", w.ID, w.MemBytes))
		}
		p.widx[w.ID] = i
	}
	p.experts = slices.Clone(in.Experts)
	sort.Slice(p.experts, func(i, j int) bool { return expert.Compare(p.experts[i].ID, p.experts[j].ID) < 0 })
	maxLayer := -1
	for i, e := range p.experts {
		if e.ID.Layer < 0 || e.ID.Expert < 0 {
			errs = append(errs, fmt.Errorf("placement: expert %v has a negative index", e.ID))
		}
		if e.Bytes < 0 {
			errs = append(errs, fmt.Errorf("placement: expert %v has Bytes %d < 0", e.ID, e.Bytes))
		}
		if i > 0 && p.experts[i-1].ID == e.ID {
			errs = append(errs, fmt.Errorf("placement: expert %v listed twice", e.ID))
		}
		maxLayer = max(maxLayer, e.ID.Layer)
	}
	p.nLayers = in.Layers
	if p.nLayers == 0 {
		p.nLayers = maxLayer + 1
	}
	if maxLayer >= p.nLayers {
		errs = append(errs, fmt.Errorf("placement: expert layer %d out of range for %d layers", maxLayer, p.nLayers))
	}
	if in.Replicas < 0 {
		errs = append(errs, fmt.Errorf("placement: replicas %d < 0", in.Replicas))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	N, E := len(p.workers), len(p.experts)
	p.r = max(in.Replicas, 1)
	p.r = min(p.r, N)
	p.budget = make([]int64, N)
	for w, info := range p.workers {
		if info.MemBytes == 0 {
			p.budget[w] = -1
		} else {
			p.budget[w] = info.MemBytes
		}
	}
	p.layerOf = make([]int, E)
	p.layerN = make([]int, p.nLayers)
	for i, e := range p.experts {
		p.layerOf[i] = e.ID.Layer
		p.layerN[e.ID.Layer]++
	}
	p.owners = make([][]int, E)
	p.holds = make([][]bool, N)
	p.count = make([]int, N)
	p.used = make([]int64, N)
	p.lcount = make([][]int, N)
	for w := range p.workers {
		p.holds[w] = make([]bool, E)
		p.lcount[w] = make([]int, p.nLayers)
	}
	return p, nil
}

func (p *planner) fits(w, e int) bool {
	return p.budget[w] < 0 || p.used[w]+p.experts[e].Bytes <= p.budget[w]
}

func (p *planner) add(w, e int) {
	p.owners[e] = append(p.owners[e], w)
	p.holds[w][e] = true
	p.count[w]++
	p.used[w] += p.experts[e].Bytes
	p.lcount[w][p.layerOf[e]]++
}

func (p *planner) remove(w, e int) {
	p.owners[e] = slices.DeleteFunc(p.owners[e], func(x int) bool { return x == w })
	p.holds[w][e] = false
	p.count[w]--
	p.used[w] -= p.experts[e].Bytes
	p.lcount[w][p.layerOf[e]]--
}

func (p *planner) run() error {
	p.keepPrev()
	if err := p.targets(); err != nil {
		return err
	}
	p.shed()
	return p.fill()
}

// keepPrev seeds the table with Prev's copies on workers still present, in
// Prev's owner order, at most R' per expert and within each budget.
func (p *planner) keepPrev() {
	prev := p.in.Prev
	if prev == nil {
		return
	}
	for e, x := range p.experts {
		for _, id := range prev.OwnersOf(x.ID) {
			w, ok := p.widx[id]
			if !ok || p.holds[w][e] || len(p.owners[e]) >= p.r || !p.fits(w, e) {
				continue
			}
			p.add(w, e)
		}
	}
}

// targets sets each worker's wanted copy count by water-filling: the P
// copies are spread as evenly as the workers' count caps allow; a cap is
// min(E, budget / largest expert size). Leftover +1s go to the workers
// already holding the most (fewest moves), then by ID.
func (p *planner) targets() error {
	N, E := len(p.workers), len(p.experts)
	P := E * p.r
	var maxBytes, totalBytes int64
	for _, e := range p.experts {
		maxBytes = max(maxBytes, e.Bytes)
		totalBytes += e.Bytes
	}
	caps := make([]int, N)
	capSum := 0
	for w := range p.workers {
		caps[w] = E
		if p.budget[w] >= 0 && maxBytes > 0 {
			caps[w] = int(min(int64(E), p.budget[w]/maxBytes))
		}
		capSum += caps[w]
	}
	if capSum < P {
		return p.memoryError(totalBytes*int64(p.r), fmt.Sprintf("can hold %d of %d copies of up to %d bytes", capSum, P, maxBytes))
	}
	// Smallest level L with sum(min(cap, L)) >= P.
	L := 0
	for sum := 0; sum < P; {
		L++
		sum = 0
		for _, c := range caps {
			sum += min(c, L)
		}
	}
	p.target = make([]int, N)
	left := P
	var atL []int // workers that can take the level-L share
	for w, c := range caps {
		p.target[w] = min(c, max(L-1, 0))
		left -= p.target[w]
		if c >= L {
			atL = append(atL, w)
		}
	}
	sort.SliceStable(atL, func(i, j int) bool { return p.count[atL[i]] > p.count[atL[j]] })
	for _, w := range atL[:left] {
		p.target[w]++
	}
	return nil
}

// shed drops copies from workers holding more than their target. Each
// drop takes from the layer the worker is most over-represented in, less
// the copies of that layer already dropped in this pass (so the freed
// copies, which go to the emptiest workers, mix layers), then the highest
// expert index.
func (p *planner) shed() {
	dropped := make([]int, p.nLayers)
	for w := range p.workers {
		for p.count[w] > p.target[w] {
			best, bestScore := -1, 0.0
			for e, held := range p.holds[w] {
				if !held {
					continue
				}
				l := p.layerOf[e]
				score := float64(p.lcount[w][l]) - float64(p.layerN[l]*p.r)/float64(len(p.workers)) - float64(dropped[l])
				if best < 0 || score > bestScore || (score == bestScore && e > best) {
					best, bestScore = e, score
				}
			}
			p.remove(w, best)
			dropped[p.layerOf[best]]++
		}
	}
}

// fill gives every logical expert its missing copies, largest experts
// first (then in (layer, expert) order). A copy goes to the worker below its
// target that lacks the expert and has room, preferring the fewest copies of
// that layer, then the fewest copies overall, then the lowest ID. When every
// worker with room already holds the expert, one copy of another expert is
// moved to make a slot (swap); when targets cannot be met within the
// budgets, balance gives way to memory.
func (p *planner) fill() error {
	order := make([]int, len(p.experts))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return p.experts[order[i]].Bytes > p.experts[order[j]].Bytes })
	for _, e := range order {
		for len(p.owners[e]) < p.r {
			if w := p.pick(e, true); w >= 0 {
				p.add(w, e)
				continue
			}
			if p.swap(e) {
				continue
			}
			if w := p.pick(e, false); w >= 0 {
				p.add(w, e)
				continue
			}
			return p.memoryError(p.experts[e].Bytes, fmt.Sprintf("no worker without expert %v has %d bytes free", p.experts[e].ID, p.experts[e].Bytes))
		}
	}
	return nil
}

// pick returns the best worker for a new copy of e, or -1.
func (p *planner) pick(e int, withinTarget bool) int {
	l := p.layerOf[e]
	best := -1
	for w := range p.workers {
		if p.holds[w][e] || !p.fits(w, e) || (withinTarget && p.count[w] >= p.target[w]) {
			continue
		}
		if best < 0 || p.lcount[w][l] < p.lcount[best][l] ||
			(p.lcount[w][l] == p.lcount[best][l] && p.count[w] < p.count[best]) {
			best = w
		}
	}
	return best
}

// swap handles expert e when every worker below target already holds it:
// some worker a below target and some worker b lacking e exist; if b holds
// an expert y that a lacks, y moves b -> a and e goes to b. Counting shows y
// exists whenever targets differ by at most one; memory may still refuse.
func (p *planner) swap(e int) bool {
	for a := range p.workers {
		if p.count[a] >= p.target[a] {
			continue
		}
		for b := range p.workers {
			if b == a || p.holds[b][e] {
				continue
			}
			for y, held := range p.holds[b] {
				if !held || p.holds[a][y] || !p.fits(a, y) {
					continue
				}
				p.remove(b, y)
				if !p.fits(b, e) {
					p.add(b, y)
					continue
				}
				p.add(a, y)
				p.add(b, e)
				return true
			}
		}
	}
	return false
}

// MemoryError is Place's memory refusal: Need is the expert bytes all
// copies need (every logical expert times R'), Have the workers' expert
// budget (their MemBytes summed; -1 when some worker is unlimited). errors.Is(err, ErrInsufficientMemory) holds for it.
type MemoryError struct {
	Need, Have int64
	Detail     string // the full message, with the step that failed
}

func (e *MemoryError) Error() string { return e.Detail }

func (e *MemoryError) Unwrap() error { return ErrInsufficientMemory }

// memoryError reports a memory refusal; the first argument is what the
// failing step needed, but the error states what every copy needs (the
// step is named in detail).
func (p *planner) memoryError(_ int64, detail string) error {
	var avail, need int64
	unlimited := false
	for _, b := range p.budget {
		if b < 0 {
			unlimited = true
		}
		avail += max(b, 0)
	}
	for _, e := range p.experts {
		need += e.Bytes
	}
	need *= int64(p.r)
	have := fmt.Sprintf("%d bytes", avail)
	if unlimited {
		have = "unlimited"
		avail = -1
	}
	return &MemoryError{Need: need, Have: avail, Detail: fmt.Sprintf("placement: %d experts x %d replicas need %d bytes; %d workers have %s for experts (%s): %v",
		len(p.experts), p.r, need, len(p.workers), have, detail, ErrInsufficientMemory)}
}

func (p *planner) result() cluster.Placement {
	out := cluster.Placement{
		Model:   p.in.Model,
		Owners:  make([][][]cluster.WorkerID, p.nLayers),
		Workers: make(map[cluster.WorkerID]cluster.WorkerInfo, len(p.workers)),
	}
	for l, n := range p.layerN {
		if n == 0 {
			continue
		}
		maxE := 0
		for _, x := range p.experts {
			if x.ID.Layer == l {
				maxE = max(maxE, x.ID.Expert+1)
			}
		}
		out.Owners[l] = make([][]cluster.WorkerID, maxE)
	}
	for e, x := range p.experts {
		ids := make([]cluster.WorkerID, len(p.owners[e]))
		for i, w := range p.owners[e] {
			ids[i] = p.workers[w].ID
		}
		out.Owners[x.ID.Layer][x.ID.Expert] = ids
	}
	for _, w := range p.workers {
		out.Workers[w.ID] = w
	}
	prev := p.in.Prev
	switch {
	case prev == nil:
		out.Epoch = 1
	case Equal(prev, &out):
		return prev.Clone()
	default:
		out.Epoch = prev.Epoch + 1
	}
	return out
}

// Equal reports whether a and b have the same model, owners table (owner
// order included) and workers, ignoring the epoch.
func Equal(a, b *cluster.Placement) bool {
	if a.Model != b.Model || len(a.Owners) != len(b.Owners) || !maps.Equal(a.Workers, b.Workers) {
		return false
	}
	for l := range a.Owners {
		if len(a.Owners[l]) != len(b.Owners[l]) || (a.Owners[l] == nil) != (b.Owners[l] == nil) {
			return false
		}
		for e := range a.Owners[l] {
			if !slices.Equal(a.Owners[l][e], b.Owners[l][e]) {
				return false
			}
		}
	}
	return true
}

// Copy is one physical expert: a logical expert on one worker.
type Copy struct {
	Expert expert.ID
	Worker cluster.WorkerID
}

// Change lists the copies a placement change creates and drops.
type Change struct {
	Added   []Copy // copies in next, not in prev: weights a worker must load
	Removed []Copy // copies in prev, not in next: weights a worker may drop
}

// For returns the experts worker w must load and may drop under the change,
// in (layer, expert) order: what a worker does when a new epoch arrives.
func (ch Change) For(w cluster.WorkerID) (load, drop []expert.ID) {
	for _, c := range ch.Added {
		if c.Worker == w {
			load = append(load, c.Expert)
		}
	}
	for _, c := range ch.Removed {
		if c.Worker == w {
			drop = append(drop, c.Expert)
		}
	}
	return load, drop
}

// Diff compares two placements of a model (prev may be nil). Copies are
// listed in (layer, expert, worker) order.
func Diff(prev, next *cluster.Placement) Change {
	set := func(p *cluster.Placement) map[Copy]bool {
		m := map[Copy]bool{}
		if p == nil {
			return m
		}
		for l, row := range p.Owners {
			for e, ws := range row {
				for _, w := range ws {
					m[Copy{expert.ID{Layer: l, Expert: e}, w}] = true
				}
			}
		}
		return m
	}
	a, b := set(prev), set(next)
	var ch Change
	for c := range b {
		if !a[c] {
			ch.Added = append(ch.Added, c)
		}
	}
	for c := range a {
		if !b[c] {
			ch.Removed = append(ch.Removed, c)
		}
	}
	sortCopies(ch.Added)
	sortCopies(ch.Removed)
	return ch
}

func sortCopies(cs []Copy) {
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].Expert != cs[j].Expert {
			return expert.Compare(cs[i].Expert, cs[j].Expert) < 0
		}
		return cs[i].Worker < cs[j].Worker
	})
}

// ReplicaCount returns, per layer and expert, the number of copies in p
// (EPLB's logcnt).
func ReplicaCount(p *cluster.Placement) [][]int {
	out := make([][]int, len(p.Owners))
	for l, row := range p.Owners {
		if row == nil {
			continue
		}
		out[l] = make([]int, len(row))
		for e, ws := range row {
			out[l][e] = len(ws)
		}
	}
	return out
}

// Counts returns the number of copies each worker of p holds (workers in
// p.Workers holding none are present with 0).
func Counts(p *cluster.Placement) map[cluster.WorkerID]int {
	out := make(map[cluster.WorkerID]int, len(p.Workers))
	for id := range p.Workers {
		out[id] = 0
	}
	for _, row := range p.Owners {
		for _, ws := range row {
			for _, w := range ws {
				out[w]++
			}
		}
	}
	return out
}
