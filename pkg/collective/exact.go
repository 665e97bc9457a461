package collective

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
)

// maxExactElems bounds AllReduceFloat64: it moves n x len(v) values through
// every member, so it is for small vectors (statistics, norms), not
// gradients.
const maxExactElems = 1 << 16

// AllReduceFloat64 replaces v, on every member, with the float64 sum of
// all members' v, added in rank order: every member computes the same
// additions, so the results are bit-identical everywhere, and no float32
// rounding touches them (AllReduce reduces in float32). It gathers every
// member's vector (one AllToAll), so its traffic is (n-1) x 8 x len(v)
// bytes per member: for small vectors, at most 65536 values. Every member
// must pass the same length. On error v is unchanged and the Group is
// broken.
func (g *Group) AllReduceFloat64(ctx context.Context, v []float64) error {
	if len(v) > maxExactElems {
		return fmt.Errorf("collective: AllReduceFloat64 of %d values (at most %d: use AllReduce for large buffers)", len(v), maxExactElems)
	}
	block := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(block[8*i:], math.Float64bits(x))
	}
	send := make([][]byte, g.n)
	for r := range send {
		send[r] = block
	}
	recv, err := g.AllToAll(ctx, send, nil)
	if err != nil {
		return err
	}
	for r, b := range recv {
		if len(b) != len(block) {
			return fmt.Errorf("collective: AllReduceFloat64: %s sent %d values, this member has %d", g.peerName(r), len(b)/8, len(v))
		}
	}
	for i := range v {
		sum := 0.0
		for _, b := range recv {
			sum += math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
		}
		v[i] = sum
	}
	return nil
}

// Barrier returns once every member has entered it: each member sends an
// empty block to every other and waits for theirs (one AllToAll round). On
// error (a member failed or ctx ended) the Group is broken.
func (g *Group) Barrier(ctx context.Context) error {
	_, err := g.AllToAll(ctx, make([][]byte, g.n), nil)
	return err
}
