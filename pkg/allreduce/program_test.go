package allreduce

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand"
	"slices"
	"strings"
	"testing"
)

// tagged returns rank r's input: r+1 everywhere plus a position tag, so a
// chunk that lands in the wrong place changes the sum. Values stay small
// integers, exact in float32 and (for bf16 with small=true) in bfloat16.
func tagged(n, r, L int, small bool) []float32 {
	x := make([]float32, L)
	for i := range x {
		if small {
			x[i] = float32(r+1) + 2*float32(i%8) // sums <= 36 + 8*14 < 256
		} else {
			x[i] = float32(r+1) + 16*float32(i%1021)
		}
	}
	return x
}

func taggedSum(n, L int, small bool) []float32 {
	want := make([]float32, L)
	for r := range n {
		for i, v := range tagged(n, r, L, small) {
			want[i] += v
		}
	}
	return want
}

func plans(t testing.TB, alg Algorithm, n, L, chunk int) []*Program {
	t.Helper()
	progs := make([]*Program, n)
	for r := range n {
		p, err := Plan(alg, n, r, L, chunk)
		if err != nil {
			t.Fatal(err)
		}
		progs[r] = p
	}
	return progs
}

func ceilLog2(n int) int { return bits.Len(uint(n - 1)) }

var simModes = []struct {
	name string
	cfg  simConfig
}{
	{"f32-zero-copy-window1", simConfig{format: F32, zeroCopy: true, window: 1, inbox: 1}},
	{"f32-copy-window2", simConfig{format: F32, window: 2, inbox: 1}},
	{"bf16-window4", simConfig{format: BF16, window: 4, inbox: 4}},
}

func sizesFor(n int) []int {
	return []int{0, 1, 2, n - 1, n, n + 1, 3*n + 2, 97, 1000, 1003}
}

func TestRingSimulated(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8} {
		for _, L := range sizesFor(n) {
			for _, chunk := range []int{1, 3, 64, 1 << 20} {
				if chunk == 1 && L > 100 {
					continue
				}
				for _, mode := range simModes {
					name := fmt.Sprintf("n=%d/L=%d/chunk=%d/%s", n, L, chunk, mode.name)
					t.Run(name, func(t *testing.T) {
						checkRing(t, n, L, chunk, mode.cfg)
					})
				}
			}
		}
	}
}

func checkRing(t *testing.T, n, L, chunk int, cfg simConfig) {
	progs := plans(t, Ring, n, L, chunk)
	small := cfg.format == BF16
	bufs := make([][]float32, n)
	for r := range n {
		bufs[r] = tagged(n, r, L, small)
	}
	cfg.seed = int64(n*1_000_003 + L*31 + chunk)
	st, err := simulate(progs, bufs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := taggedSum(n, L, small)
	for r := range n {
		if i := firstDiff(bufs[r], want); i >= 0 {
			t.Fatalf("rank %d element %d = %v, want %v", r, i, bufs[r][i], want[i])
		}
	}
	wantSteps := 2 * (n - 1)
	for r, p := range progs {
		if p.Steps != wantSteps {
			t.Fatalf("rank %d: %d steps, want %d", r, p.Steps, wantSteps)
		}
		for s := range p.Steps {
			// Each step moves one segment: floor(L/n) or ceil(L/n) elements.
			if e := st.sentElems[r][s]; e != L/n && e != (L+n-1)/n {
				t.Fatalf("rank %d step %d sent %d elements, want L/n = %d..%d", r, s, e, L/n, (L+n-1)/n)
			}
		}
	}
	for i, c := range st.reductions {
		if c != n-1 {
			t.Fatalf("element %d reduced %d times, want n-1 = %d", i, c, n-1)
		}
	}
}

func firstDiff(a, b []float32) int {
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return i
		}
	}
	return -1
}

func TestRecursiveDoublingSimulated(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16} {
		for _, L := range []int{0, 1, 5, 1024, 3001} {
			for _, chunk := range []int{7, 300, 1 << 18} {
				if chunk == 7 && L > 5 {
					continue
				}
				for _, mode := range simModes[1:] { // zero-copy is a ring-only mode
					t.Run(fmt.Sprintf("n=%d/L=%d/chunk=%d/%s", n, L, chunk, mode.name), func(t *testing.T) {
						progs := plans(t, RecursiveDoubling, n, L, chunk)
						small := mode.cfg.format == BF16
						bufs := make([][]float32, n)
						for r := range n {
							bufs[r] = tagged(n, r, L, small)
						}
						cfg := mode.cfg
						cfg.seed = int64(n*7919 + L + chunk)
						if _, err := simulate(progs, bufs, cfg); err != nil {
							t.Fatal(err)
						}
						want := taggedSum(n, L, small)
						for r := range n {
							if i := firstDiff(bufs[r], want); i >= 0 {
								t.Fatalf("rank %d element %d = %v, want %v", r, i, bufs[r][i], want[i])
							}
						}
					})
				}
			}
		}
	}
}

// TestRecursiveDoublingRounds proves the small-buffer latency bound: at most
// 2*ceil(log2 n) steps, and for a 4 KiB buffer (one chunk) every rank sends
// at most one message and receives at most one message per step, and a
// step's send waits only on receives of earlier steps. So a step costs at
// most one one-way message latency plus local work, and the whole
// all-reduce at most 2*ceil(log2 n) round trips (about half that when n is a
// power of two: log2 n one-way latencies).
func TestRecursiveDoublingRounds(t *testing.T) {
	const L = 4096 / 4
	for n := 1; n <= 64; n++ {
		progs := plans(t, RecursiveDoubling, n, L, 1<<18)
		bufs := make([][]float32, n)
		for r := range n {
			bufs[r] = tagged(n, r, L, false)
		}
		st, err := simulate(progs, bufs, simConfig{format: F32, window: 2, inbox: 2, seed: int64(n)})
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		steps := progs[0].Steps
		bound := 2 * ceilLog2(n)
		if steps > bound {
			t.Errorf("n=%d: %d steps > 2*ceil(log2 n) = %d", n, steps, bound)
		}
		wantSteps := ceilLog2(n)
		if n&(n-1) != 0 {
			wantSteps++
		}
		if steps != wantSteps {
			t.Errorf("n=%d: %d steps, want %d", n, steps, wantSteps)
		}
		for r, p := range progs {
			if p.Steps != steps {
				t.Fatalf("n=%d: rank %d has %d steps, rank 0 %d", n, r, p.Steps, steps)
			}
			for s := range steps {
				if st.sentMsgs[r][s] > 1 || st.recvMsgs[r][s] > 1 {
					t.Errorf("n=%d rank %d step %d: %d sent, %d received, want <= 1 each", n, r, s, st.sentMsgs[r][s], st.recvMsgs[r][s])
				}
			}
			for _, tr := range p.Sends {
				// A send of step s depends on receives of steps < s only.
				if tr.NeedApplied > tr.Step {
					t.Errorf("n=%d rank %d: send at step %d needs %d receives", n, r, tr.Step, tr.NeedApplied)
				}
			}
		}
	}
}

// TestBF16Tolerance reduces random data with the bf16 wire format: every
// rank ends bit-identical, within the rounding bound of the float64 sum.
func TestBF16Tolerance(t *testing.T) {
	for _, alg := range []Algorithm{Ring, RecursiveDoubling} {
		for _, n := range []int{2, 3, 4, 5, 8} {
			const L = 777
			rng := rand.New(rand.NewSource(int64(n)))
			bufs := make([][]float32, n)
			exact := make([]float64, L)
			mag := make([]float64, L)
			for r := range n {
				bufs[r] = make([]float32, L)
				for i := range bufs[r] {
					v := float32(rng.NormFloat64())
					bufs[r][i] = v
					exact[i] += float64(v)
					mag[i] += math.Abs(float64(v))
				}
			}
			if _, err := simulate(plans(t, alg, n, L, 50), bufs, simConfig{format: BF16, window: 3, inbox: 2, seed: 9}); err != nil {
				t.Fatal(err)
			}
			worst := 0.0
			for i := range L {
				// Each of at most 2n roundings loses <= 2^-9 relative of a
				// partial sum bounded by mag[i].
				tol := float64(2*n) * math.Ldexp(1, -9) * mag[i]
				d := math.Abs(float64(bufs[0][i]) - exact[i])
				worst = max(worst, d/mag[i])
				if d > tol {
					t.Fatalf("%v n=%d element %d: %v, exact %v, |diff| %g > tol %g", alg, n, i, bufs[0][i], exact[i], d, tol)
				}
				for r := 1; r < n; r++ {
					if math.Float32bits(bufs[r][i]) != math.Float32bits(bufs[0][i]) {
						t.Fatalf("%v n=%d element %d: rank %d has %v, rank 0 %v", alg, n, i, r, bufs[r][i], bufs[0][i])
					}
				}
			}
			t.Logf("%v n=%d: worst |error| / sum|x| = %.2g", alg, n, worst)
		}
	}
}

func TestPlanErrors(t *testing.T) {
	_, err := Plan(Ring, 0, 3, -1, 0)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"n = 0", "rank 3", "elems = -1", "chunkElems = 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := Plan(Auto, 2, 0, 10, 10); err == nil {
		t.Error("Plan(Auto) accepted")
	}
}

func TestChoose(t *testing.T) {
	for _, c := range []struct {
		n, bytes, small int
		want            Algorithm
	}{
		{4, 4096, DefaultSmallBytes, RecursiveDoubling},
		{4, DefaultSmallBytes, DefaultSmallBytes, RecursiveDoubling},
		{4, DefaultSmallBytes + 4, DefaultSmallBytes, Ring},
		{1, 4, DefaultSmallBytes, Ring},
		{8, 4, -1, Ring},
	} {
		if got := Choose(c.n, c.bytes, c.small); got != c.want {
			t.Errorf("Choose(%d, %d, %d) = %v, want %v", c.n, c.bytes, c.small, got, c.want)
		}
	}
}

// TestLinkOrderMatches checks the matching claim directly: what rank q
// sends to r, in order, is what r expects from q.
func TestLinkOrderMatches(t *testing.T) {
	for _, alg := range []Algorithm{Ring, RecursiveDoubling} {
		for _, n := range []int{2, 3, 5, 6, 8} {
			progs := plans(t, alg, n, 1001, 40)
			for r := range n {
				for q := range n {
					s, v := progs[q].SendsTo(r), progs[r].RecvsFrom(q)
					if len(s) != len(v) {
						t.Fatalf("%v n=%d: %d->%d sends %d chunks, receiver expects %d", alg, n, q, r, len(s), len(v))
					}
					for i := range s {
						if s[i].Step != v[i].Step || s[i].Cell != v[i].Cell {
							t.Fatalf("%v n=%d: %d->%d chunk %d: sent (%d,%d), expected (%d,%d)", alg, n, q, r, i, s[i].Step, s[i].Cell, v[i].Step, v[i].Cell)
						}
					}
				}
				peers := progs[r].Peers()
				if alg == Ring && n > 1 && !slices.Equal(peers, sortedUnique((r+n-1)%n, (r+1)%n)) {
					t.Fatalf("ring n=%d rank %d talks to %v", n, r, peers)
				}
			}
		}
	}
}

func sortedUnique(xs ...int) []int {
	slices.Sort(xs)
	return slices.Compact(xs)
}

// TestTreeSimulated runs the binomial-tree program for many group sizes:
// every rank ends with the exact sum (bit-identical across ranks), in
// 2*ceil(log2 n) steps with 2(n-1) messages of one chunk each for a 4 KiB
// buffer.
func TestTreeSimulated(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17, 24, 31, 32, 33, 40} {
		for _, L := range []int{0, 1, 5, 1024, 3001} {
			for _, chunk := range []int{7, 300, 1 << 18} {
				if chunk == 7 && L > 5 {
					continue
				}
				for _, mode := range simModes[1:] {
					if mode.cfg.format == BF16 && n > 16 {
						continue // the tagged sums outgrow bf16's exact integers
					}
					t.Run(fmt.Sprintf("n=%d/L=%d/chunk=%d/%s", n, L, chunk, mode.name), func(t *testing.T) {
						progs := plans(t, Tree, n, L, chunk)
						small := mode.cfg.format == BF16
						bufs := make([][]float32, n)
						for r := range n {
							bufs[r] = tagged(n, r, L, small)
						}
						cfg := mode.cfg
						cfg.seed = int64(n*104729 + L + chunk)
						if _, err := simulate(progs, bufs, cfg); err != nil {
							t.Fatal(err)
						}
						want := taggedSum(n, L, small)
						for r := range n {
							if i := firstDiff(bufs[r], want); i >= 0 {
								t.Fatalf("rank %d element %d = %v, want %v", r, i, bufs[r][i], want[i])
							}
						}
					})
				}
			}
		}
	}
	for n := 2; n <= 64; n++ {
		progs := plans(t, Tree, n, 1024, 1<<18)
		msgs := 0
		for _, p := range progs {
			if p.Steps != 2*ceilLog2(n) {
				t.Fatalf("n=%d: %d steps, want %d", n, p.Steps, 2*ceilLog2(n))
			}
			msgs += len(p.Sends)
		}
		if msgs != 2*(n-1) {
			t.Errorf("n=%d: %d messages, want 2(n-1) = %d", n, msgs, 2*(n-1))
		}
	}
}

// TestStepByStep: a program sends at most one chunk to a peer each step
// exactly when every rank's piece of a step fits one chunk: the ring while
// a share (elems/n, rounded up) fits, recursive doubling and tree while
// the whole buffer does.
func TestStepByStep(t *testing.T) {
	for _, c := range []struct {
		alg             Algorithm
		n, elems, chunk int
		want            bool
	}{
		{Ring, 4, 4096, 1024, true},
		{Ring, 4, 4097, 1024, false}, // one share of 1025 elements
		{Ring, 8, 64, 1, false},
		{Ring, 2, 10, 1000, true},
		{RecursiveDoubling, 4, 1000, 1000, true},
		{RecursiveDoubling, 4, 1001, 1000, false},
		{RecursiveDoubling, 5, 10, 16, true}, // the odd rank's extra steps
		{Tree, 6, 100, 100, true},
		{Tree, 6, 101, 100, false},
	} {
		for r := range c.n {
			p, err := Plan(c.alg, c.n, r, c.elems, c.chunk)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.StepByStep(); got != c.want {
				t.Errorf("%v n=%d rank %d: %d elements, chunks of %d: StepByStep %v, want %v", c.alg, c.n, r, c.elems, c.chunk, got, c.want)
			}
		}
	}
}
