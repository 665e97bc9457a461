package allreduce

import (
	"errors"
	"fmt"
	"math/bits"
	"sort"
)

// Algorithm names an all-reduce algorithm.
type Algorithm uint8

const (
	// Auto picks RecursiveDoubling for small buffers and Ring otherwise
	// (see Choose).
	Auto Algorithm = iota
	// Ring is reduce-scatter then all-gather around the ring r -> r+1:
	// bandwidth-optimal, 2(n-1) steps.
	Ring
	// RecursiveDoubling exchanges whole buffers with r XOR 2^k:
	// latency-optimal, at most 2*ceil(log2 n) steps.
	RecursiveDoubling
	// Tree reduces whole buffers up a binomial tree to rank 0 and
	// broadcasts the result back down: 2*ceil(log2 n) steps but only
	// 2(n-1) messages in all (recursive doubling sends n*log2 n), which
	// wins when per-message CPU, not the wire, is the cost (many ranks
	// sharing few cores).
	Tree
)

func (a Algorithm) String() string {
	switch a {
	case Auto:
		return "auto"
	case Ring:
		return "ring"
	case RecursiveDoubling:
		return "rd"
	case Tree:
		return "tree"
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// DefaultSmallBytes is the default size (bytes of float32 data, 4 per
// element) at or below which Choose picks RecursiveDoubling. With per-step
// latency a and link bandwidth B, recursive doubling costs about
// log2(n)*(a + S/B) and the ring 2(n-1)*a + 2(n-1)/n*S/B, so they cross
// near S = 8aB for n = 4..8. Measured in the emulated cluster (gRPC
// between network namespaces, 1 Gbit/s and 500 Mbit/s links; see
// bench/results/collectives.txt, allreduce-rd vs allreduce-ring) the
// crossover lies between 16 and 64 KiB for n = 4 and 8: recursive doubling
// is 2x faster at 16 KiB, the ring 10-15% faster at 64 KiB.
const DefaultSmallBytes = 32 << 10

// Choose returns the algorithm for reducing bytes bytes of float32 data
// over n ranks: RecursiveDoubling when bytes <= smallBytes, Ring above.
// smallBytes < 0 means never RecursiveDoubling.
func Choose(n, bytes, smallBytes int) Algorithm {
	if n > 1 && bytes <= smallBytes {
		return RecursiveDoubling
	}
	return Ring
}

// Op says how a received chunk is applied to the local buffer.
type Op uint8

const (
	// Reduce adds the chunk into the cell (float32 addition).
	Reduce Op = iota + 1
	// Copy overwrites the cell with the chunk.
	Copy
)

func (o Op) String() string {
	switch o {
	case Reduce:
		return "reduce"
	case Copy:
		return "copy"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Cell is a range of buffer elements carried by one chunk.
type Cell struct {
	Off int // first element
	Len int // elements, >= 1
}

// Transfer is one chunk a rank sends or receives.
type Transfer struct {
	Step int // schedule step, 0-based
	Peer int // the destination (sends) or source (receives) rank
	Cell int // index into Program.Cells
	// Op is how a receive is applied; zero for sends.
	Op Op
	// Round (sends only) asks the sender to store the cell rounded to the
	// wire format, so that it keeps exactly what it sent. A no-op for
	// lossless formats.
	Round bool
	// NeedApplied is the number of receives on Cell (at earlier steps) that
	// must have been applied before this transfer may start (send) or be
	// applied (receive).
	NeedApplied int
	// NeedReleased (receives only) is the number of sends of Cell (at steps
	// <= Step) that must have released it before this receive is applied.
	NeedReleased int
}

// Program is one rank's part of one all-reduce. It is immutable once built.
type Program struct {
	Alg   Algorithm
	N     int // ranks
	Rank  int // this rank
	Elems int // L, elements in the buffer
	Steps int // number of steps; transfers have 0 <= Step < Steps
	// Cells tile [0, Elems) in increasing order, each at most the chunk
	// length. The tiling depends only on (Alg, N, Elems, chunkElems), so
	// every rank of a group numbers cells alike.
	Cells []Cell
	// Sends and Recvs are ordered by (Step, Cell). Filtered by peer, that
	// is the order of chunks on the link to (from) that peer.
	Sends []Transfer
	Recvs []Transfer
	// RoundAtEnd asks the runner to round the whole buffer to a lossy wire
	// format once every transfer is done, so a rank that never sent its
	// final value holds the same bits as the ranks that received it.
	RoundAtEnd bool
}

// StepByStep reports whether every step of p sends at most one chunk to
// each peer and receives at most one from each: recursive doubling and
// tree of a buffer within one chunk, and the ring while each rank's share
// fits one chunk. pkg/collective runs such programs one step at a time on
// its direct lanes, and the others, which pipeline several chunks a step,
// on its gRPC streams.
func (p *Program) StepByStep() bool {
	type key struct{ step, peer int }
	seen := make(map[key]bool, len(p.Sends))
	for _, list := range [][]Transfer{p.Sends, p.Recvs} {
		clear(seen)
		for _, t := range list {
			k := key{t.Step, t.Peer}
			if seen[k] {
				return false
			}
			seen[k] = true
		}
	}
	return true
}

// Plan builds rank's program for an all-reduce of elems elements over n
// ranks with cells of at most chunkElems elements. alg Auto is not
// accepted here (call Choose first).
func Plan(alg Algorithm, n, rank, elems, chunkElems int) (*Program, error) {
	var errs []error
	if n < 1 {
		errs = append(errs, fmt.Errorf("allreduce: n = %d, want >= 1", n))
	}
	if rank < 0 || rank >= n {
		errs = append(errs, fmt.Errorf("allreduce: rank %d out of range [0, %d)", rank, n))
	}
	if elems < 0 {
		errs = append(errs, fmt.Errorf("allreduce: elems = %d, want >= 0", elems))
	}
	if chunkElems < 1 {
		errs = append(errs, fmt.Errorf("allreduce: chunkElems = %d, want >= 1", chunkElems))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var p *Program
	switch alg {
	case Ring:
		p = ring(n, rank, elems, chunkElems)
	case RecursiveDoubling:
		p = recursiveDoubling(n, rank, elems, chunkElems)
	case Tree:
		p = tree(n, rank, elems, chunkElems)
	default:
		return nil, fmt.Errorf("allreduce: cannot plan algorithm %v", alg)
	}
	p.finish()
	return p, nil
}

// split cuts [off, off+length) into cells of at most chunk elements and
// appends them to cells.
func split(cells []Cell, off, length, chunk int) []Cell {
	for length > 0 {
		c := min(chunk, length)
		cells = append(cells, Cell{Off: off, Len: c})
		off += c
		length -= c
	}
	return cells
}

// segment returns the bounds of segment i when L elements are split into n
// segments, the first L mod n of them one element longer.
func segment(L, n, i int) (off, length int) {
	base, rem := L/n, L%n
	return i*base + min(i, rem), base + b2i(i < rem)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func mod(a, n int) int { return ((a % n) + n) % n }

// ring builds the reduce-scatter + all-gather program (see the package
// comment for the schedule).
func ring(n, r, L, chunk int) *Program {
	p := &Program{Alg: Ring, N: n, Rank: r, Elems: L}
	if n == 1 {
		p.Cells = split(nil, 0, L, chunk)
		return p
	}
	// segCells[i] = [first, end) indices of segment i's cells.
	segCells := make([][2]int, n)
	for i := range n {
		off, length := segment(L, n, i)
		first := len(p.Cells)
		p.Cells = split(p.Cells, off, length, chunk)
		segCells[i] = [2]int{first, len(p.Cells)}
	}
	right, left := mod(r+1, n), mod(r-1, n)
	add := func(list *[]Transfer, step, peer, seg int, op Op, round bool) {
		for c := segCells[seg][0]; c < segCells[seg][1]; c++ {
			*list = append(*list, Transfer{Step: step, Peer: peer, Cell: c, Op: op, Round: round})
		}
	}
	for t := 0; t < n-1; t++ { // reduce-scatter
		add(&p.Sends, t, right, mod(r-t, n), 0, false)
		add(&p.Recvs, t, left, mod(r-t-1, n), Reduce, false)
	}
	for u := 0; u < n-1; u++ { // all-gather
		add(&p.Sends, n-1+u, right, mod(r+1-u, n), 0, u == 0)
		add(&p.Recvs, n-1+u, left, mod(r-u, n), Copy, false)
	}
	p.Steps = 2 * (n - 1)
	return p
}

// recursiveDoubling builds the recursive-doubling program. With p the
// largest power of two <= n and rem = n-p, ranks below 2*rem pair up
// (2i, 2i+1): in step 0 the even one sends its buffer to the odd one and
// sits out; the odd one and ranks >= 2*rem form p "virtual" ranks that
// run log2(p) exchange rounds; in the last step each odd rank below 2*rem
// returns the result to its even partner.
func recursiveDoubling(n, r, L, chunk int) *Program {
	pr := &Program{Alg: RecursiveDoubling, N: n, Rank: r, Elems: L}
	pr.Cells = split(nil, 0, L, chunk)
	if n == 1 {
		return pr
	}
	p := 1 << (bits.Len(uint(n)) - 1)
	rem := n - p
	rounds := bits.Len(uint(p)) - 1
	first := 0 // first exchange step
	if rem > 0 {
		first = 1
	}
	pr.Steps = first + rounds + first
	all := pr.wholeBuffer
	rankOf := func(v int) int { // virtual rank -> rank
		if v < rem {
			return 2*v + 1
		}
		return v + rem
	}
	if r < 2*rem && r%2 == 0 { // folded away: give, then take the result
		all(&pr.Sends, 0, r+1, 0, false)
		all(&pr.Recvs, pr.Steps-1, r+1, Copy, false)
		return pr
	}
	v := r - rem
	if r < 2*rem {
		v = r / 2
		all(&pr.Recvs, 0, r-1, Reduce, false)
	}
	for k := range rounds {
		partner := rankOf(v ^ (1 << k))
		all(&pr.Sends, first+k, partner, 0, true)
		all(&pr.Recvs, first+k, partner, Reduce, false)
	}
	if r < 2*rem {
		all(&pr.Sends, pr.Steps-1, r-1, 0, true)
	} else if rem > 0 {
		pr.RoundAtEnd = true // the folded ranks receive rounded values
	}
	return pr
}

// tree builds the binomial-tree program: in reduce round k (step k),
// rank r with r mod 2^(k+1) = 2^k sends its buffer to r - 2^k, which adds
// it; after K = ceil(log2 n) rounds rank 0 holds the sum and broadcast
// round k (step 2K-1-k) copies it from r to r + 2^k for r mod 2^(k+1) = 0.
// Every rank ends with rank 0's bits (the broadcast sends round, so rank 0
// keeps exactly what it sent).
func tree(n, r, L, chunk int) *Program {
	pr := &Program{Alg: Tree, N: n, Rank: r, Elems: L}
	pr.Cells = split(nil, 0, L, chunk)
	if n == 1 {
		return pr
	}
	K := bits.Len(uint(n - 1)) // ceil(log2 n)
	pr.Steps = 2 * K
	all := pr.wholeBuffer
	for k := 0; k < K; k++ {
		bit := 1 << k
		switch {
		case r%(2*bit) == bit: // sends up in round k, receives the result back down
			all(&pr.Sends, k, r-bit, 0, false)
			all(&pr.Recvs, 2*K-1-k, r-bit, Copy, false)
		case r%(2*bit) == 0 && r+bit < n: // a parent in round k
			all(&pr.Recvs, k, r+bit, Reduce, false)
			all(&pr.Sends, 2*K-1-k, r+bit, 0, true)
		}
	}
	return pr
}

// wholeBuffer appends one transfer per cell (the whole buffer) to list.
func (pr *Program) wholeBuffer(list *[]Transfer, step, peer int, op Op, round bool) {
	for c := range pr.Cells {
		*list = append(*list, Transfer{Step: step, Peer: peer, Cell: c, Op: op, Round: round})
	}
}

// finish orders the transfers and computes their dependencies.
func (p *Program) finish() {
	less := func(list []Transfer) func(i, j int) bool {
		return func(i, j int) bool {
			if list[i].Step != list[j].Step {
				return list[i].Step < list[j].Step
			}
			return list[i].Cell < list[j].Cell
		}
	}
	sort.SliceStable(p.Sends, less(p.Sends))
	sort.SliceStable(p.Recvs, less(p.Recvs))
	// recvsBefore[c] counts receives on c at steps < the current step;
	// sendsUpTo[c] counts sends of c at steps <= the current step. Walk
	// steps in order, merging the two sorted lists.
	recvsBefore := make([]int, len(p.Cells))
	sendsUpTo := make([]int, len(p.Cells))
	si, ri := 0, 0
	for step := 0; step < p.Steps; step++ {
		s0 := si
		for ; si < len(p.Sends) && p.Sends[si].Step == step; si++ {
			sendsUpTo[p.Sends[si].Cell]++
		}
		for i := s0; i < si; i++ {
			p.Sends[i].NeedApplied = recvsBefore[p.Sends[i].Cell]
		}
		r0 := ri
		for ; ri < len(p.Recvs) && p.Recvs[ri].Step == step; ri++ {
			t := &p.Recvs[ri]
			t.NeedApplied = recvsBefore[t.Cell]
			t.NeedReleased = sendsUpTo[t.Cell]
		}
		for i := r0; i < ri; i++ {
			recvsBefore[p.Recvs[i].Cell]++
		}
	}
}

// SendsTo returns the sends to peer, in link order.
func (p *Program) SendsTo(peer int) []Transfer { return filter(p.Sends, peer) }

// RecvsFrom returns the receives from peer, in link order.
func (p *Program) RecvsFrom(peer int) []Transfer { return filter(p.Recvs, peer) }

func filter(list []Transfer, peer int) []Transfer {
	var out []Transfer
	for _, t := range list {
		if t.Peer == peer {
			out = append(out, t)
		}
	}
	return out
}

// Peers returns the ranks this program sends to or receives from, sorted.
func (p *Program) Peers() []int {
	seen := make([]bool, p.N)
	for _, t := range p.Sends {
		seen[t.Peer] = true
	}
	for _, t := range p.Recvs {
		seen[t.Peer] = true
	}
	var out []int
	for r, ok := range seen {
		if ok {
			out = append(out, r)
		}
	}
	return out
}

// State tracks, per cell, the receives applied and the sends that released
// it, and answers the execution rules (package comment). It is not safe
// for concurrent use; a runner guards it with its own lock.
type State struct {
	applied  []int
	released []int
}

// NewState returns the initial state for p.
func NewState(p *Program) *State {
	return &State{applied: make([]int, len(p.Cells)), released: make([]int, len(p.Cells))}
}

// CanSend reports whether send t may start.
func (s *State) CanSend(t *Transfer) bool { return s.applied[t.Cell] >= t.NeedApplied }

// CanApply reports whether receive t may be applied.
func (s *State) CanApply(t *Transfer) bool {
	return s.applied[t.Cell] == t.NeedApplied && s.released[t.Cell] >= t.NeedReleased
}

// Applied records that a receive on cell was applied.
func (s *State) Applied(cell int) { s.applied[cell]++ }

// Released records that a send of cell no longer reads it.
func (s *State) Released(cell int) { s.released[cell]++ }
