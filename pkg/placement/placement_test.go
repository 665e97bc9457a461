package placement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
)

func uniformExperts(layers []int, perLayer int, bytes int64) []Expert {
	var out []Expert
	for _, l := range layers {
		for e := 0; e < perLayer; e++ {
			out = append(out, Expert{ID: expert.ID{Layer: l, Expert: e}, Bytes: bytes})
		}
	}
	return out
}

func workers(n int, mem int64) []cluster.WorkerInfo {
	out := make([]cluster.WorkerInfo, n)
	for i := range out {
		out[i] = cluster.WorkerInfo{ID: cluster.WorkerID(fmt.Sprintf("w%02d", i)), Addr: fmt.Sprintf("127.0.0.1:%d", 9000+i), MemBytes: mem, Protocol: cluster.ProtocolVersion}
	}
	return out
}

// check verifies the invariants every successful Place result must hold.
func check(t *testing.T, in Input, p cluster.Placement) {
	t.Helper()
	if err := p.Validate(); err != nil {
		t.Fatalf("invalid placement: %v", err)
	}
	r := min(max(in.Replicas, 1), len(in.Workers))
	budget := map[cluster.WorkerID]int64{}
	for _, w := range in.Workers {
		budget[w.ID] = w.MemBytes
		if w.MemBytes == 0 {
			budget[w.ID] = -1
		}
		if _, ok := p.Workers[w.ID]; !ok {
			t.Fatalf("worker %s missing from Workers", w.ID)
		}
	}
	used := map[cluster.WorkerID]int64{}
	for _, x := range in.Experts {
		ws := p.OwnersOf(x.ID)
		if len(ws) != r {
			t.Fatalf("expert %v has %d owners %v, want %d", x.ID, len(ws), ws, r)
		}
		seen := map[cluster.WorkerID]bool{}
		for _, w := range ws {
			if seen[w] {
				t.Fatalf("expert %v owned twice by %s", x.ID, w)
			}
			seen[w] = true
			used[w] += x.Bytes
		}
	}
	for w, u := range used {
		if b := budget[w]; b >= 0 && u > b {
			t.Fatalf("worker %s holds %d bytes > budget %d", w, u, b)
		}
	}
}

// spread returns max-min of copy counts over the workers.
func spread(p cluster.Placement) int {
	lo, hi := -1, 0
	for _, c := range Counts(&p) {
		hi = max(hi, c)
		if lo < 0 || c < lo {
			lo = c
		}
	}
	return hi - lo
}

func randomInput(rng *rand.Rand) Input {
	nl := 1 + rng.IntN(4)
	var layers []int
	for l := 0; l < nl; l++ {
		layers = append(layers, 2*l+1) // sparse layers with dense ones between
	}
	per := 1 + rng.IntN(12)
	in := Input{
		Model:    "m",
		Layers:   2 * nl,
		Experts:  uniformExperts(layers, per, 100),
		Workers:  workers(1+rng.IntN(7), 0),
		Replicas: rng.IntN(4),
	}
	return in
}

func TestPlaceRandomProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 400; iter++ {
		in := randomInput(rng)
		p, err := Place(in)
		if err != nil {
			t.Fatal(err)
		}
		check(t, in, p)
		if s := spread(p); s > 1 {
			t.Fatalf("iter %d: count spread %d > 1: %v", iter, s, Counts(&p))
		}
		if p.Epoch != 1 {
			t.Fatalf("first epoch %d", p.Epoch)
		}
		// Per-layer spread on a fresh placement.
		for l, row := range p.Owners {
			if row == nil {
				continue
			}
			per := map[cluster.WorkerID]int{}
			for _, w := range in.Workers {
				per[w.ID] = 0
			}
			for _, ws := range row {
				for _, w := range ws {
					per[w]++
				}
			}
			lo, hi := 1<<30, 0
			for _, c := range per {
				lo, hi = min(lo, c), max(hi, c)
			}
			if hi-lo > 1 {
				t.Fatalf("iter %d: layer %d spread %d: %v", iter, l, hi-lo, per)
			}
		}
		// Determinism, independent of input order.
		in2 := in
		in2.Workers = slices.Clone(in.Workers)
		in2.Experts = slices.Clone(in.Experts)
		rng.Shuffle(len(in2.Workers), func(i, j int) { in2.Workers[i], in2.Workers[j] = in2.Workers[j], in2.Workers[i] })
		rng.Shuffle(len(in2.Experts), func(i, j int) { in2.Experts[i], in2.Experts[j] = in2.Experts[j], in2.Experts[i] })
		p2, err := Place(in2)
		if err != nil {
			t.Fatal(err)
		}
		if !Equal(&p, &p2) || p.Epoch != p2.Epoch {
			t.Fatalf("iter %d: not deterministic under input order", iter)
		}
		// Stability: re-placing with nothing changed keeps epoch and table.
		in.Prev = &p
		p3, err := Place(in)
		if err != nil {
			t.Fatal(err)
		}
		if !Equal(&p, &p3) || p3.Epoch != p.Epoch {
			t.Fatalf("iter %d: unchanged input moved something: %+v", iter, Diff(&p, &p3))
		}
	}
}

// TestPlaceJoinLeaveMovement runs random join/leave sequences and bounds
// the copies each change adds: a leave re-places only the lost copies (plus
// at most one swap per lost copy), a join moves about the newcomer's share.
func TestPlaceJoinLeaveMovement(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var joinMoves, joinShare, leaveMoves, leaveLost int
	for iter := 0; iter < 200; iter++ {
		in := randomInput(rng)
		in.Workers = workers(2+rng.IntN(6), 0)
		p, err := Place(in)
		if err != nil {
			t.Fatal(err)
		}
		next := len(in.Workers)
		for step := 0; step < 6; step++ {
			in.Prev = &p
			r := min(max(in.Replicas, 1), len(in.Workers))
			if rng.IntN(2) == 0 || len(in.Workers) == 1 {
				in.Workers = append(in.Workers, cluster.WorkerInfo{ID: cluster.WorkerID(fmt.Sprintf("w%02d", next)), Addr: "x"})
				next++
			} else {
				k := rng.IntN(len(in.Workers))
				in.Workers = slices.Delete(slices.Clone(in.Workers), k, k+1)
			}
			q, err := Place(in)
			if err != nil {
				t.Fatal(err)
			}
			check(t, in, q)
			if s := spread(q); s > 1 {
				t.Fatalf("spread %d after change: %v", s, Counts(&q))
			}
			ch := Diff(&p, &q)
			newR := min(max(in.Replicas, 1), len(in.Workers))
			newP := len(in.Experts) * newR
			if newR != r {
				// R' changed with N: a different problem, not a minimal move.
				p = q
				continue
			}
			lost := 0
			for _, c := range ch.Removed {
				if _, ok := q.Workers[c.Worker]; !ok {
					lost++
				}
			}
			if len(q.Workers) > len(p.Workers) { // join
				share := (newP + len(q.Workers) - 1) / len(q.Workers)
				joinMoves += len(ch.Added)
				joinShare += share
				if len(ch.Added) > 2*share {
					t.Fatalf("join moved %d copies, newcomer share %d", len(ch.Added), share)
				}
			} else if len(q.Workers) < len(p.Workers) { // leave
				leaveMoves += len(ch.Added)
				leaveLost += lost
				if len(ch.Added) > 2*lost {
					t.Fatalf("leave moved %d copies for %d lost", len(ch.Added), lost)
				}
			}
			if len(ch.Added) > 0 && q.Epoch != p.Epoch+1 {
				t.Fatalf("epoch %d after %d, with changes", q.Epoch, p.Epoch)
			}
			p = q
		}
	}
	t.Logf("joins: %d copies moved for %d newcomer share; leaves: %d copies moved for %d lost", joinMoves, joinShare, leaveMoves, leaveLost)
	if float64(joinMoves) > 1.25*float64(joinShare) || float64(leaveMoves) > 1.25*float64(leaveLost) {
		t.Fatalf("movement well above the minimum")
	}
}

func TestPlaceMemoryBudgets(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for iter := 0; iter < 300; iter++ {
		in := randomInput(rng)
		r := min(max(in.Replicas, 1), len(in.Workers))
		need := int64(len(in.Experts)*r) * 100
		for i := range in.Workers {
			// Random budgets around the fair share, some tight.
			in.Workers[i].MemBytes = need/int64(len(in.Workers))*int64(50+rng.IntN(150))/100 + int64(rng.IntN(100))
		}
		p, err := Place(in)
		if err != nil {
			if !errors.Is(err, ErrInsufficientMemory) {
				t.Fatalf("unexpected error: %v", err)
			}
			continue
		}
		check(t, in, p)
	}
}

func TestPlaceMemoryError(t *testing.T) {
	in := Input{
		Model:   "m",
		Experts: uniformExperts([]int{0, 1}, 4, 1000),
		Workers: workers(2, 3000),
	}
	_, err := Place(in)
	if !errors.Is(err, ErrInsufficientMemory) {
		t.Fatalf("err = %v", err)
	}
	want := "placement: 8 experts x 1 replicas need 8000 bytes; 2 workers have 6000 bytes for experts (can hold 6 of 8 copies of up to 1000 bytes): insufficient worker memory for experts"
	if err.Error() != want {
		t.Fatalf("error text\n got %s\nwant %s", err, want)
	}
	// One more worker makes it fit; a capped worker gets less, others more.
	// A third worker with room for two copies makes it fit: it is capped at
	// two and the others take three each.
	in.Workers = append(in.Workers, cluster.WorkerInfo{ID: "w09", Addr: "x", MemBytes: 2000})
	p, err := Place(in)
	if err != nil {
		t.Fatal(err)
	}
	check(t, in, p)
	if c := Counts(&p); c["w00"] != 3 || c["w01"] != 3 || c["w09"] != 2 {
		t.Fatalf("counts %v, want w00=3 w01=3 w09=2", c)
	}
}

func TestPlaceBadInput(t *testing.T) {
	_, err := Place(Input{Experts: uniformExperts([]int{0}, 2, 1)})
	if !errors.Is(err, ErrNoWorkers) {
		t.Fatalf("no workers: %v", err)
	}
	ws := workers(2, 0)
	ws[1].ID = ws[0].ID
	x := uniformExperts([]int{0}, 2, 1)
	x = append(x, x[0])
	_, err = Place(Input{Experts: x, Workers: ws, Replicas: -1})
	for _, want := range []string{`worker "w00" listed twice`, "expert L0/E0 listed twice", "replicas -1 < 0"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error %v lacks %q", err, want)
		}
	}
}

func TestChangeFor(t *testing.T) {
	in := Input{Model: "m", Experts: uniformExperts([]int{0}, 4, 1), Workers: workers(2, 0)}
	p1, _ := Place(in)
	in.Prev = &p1
	in.Workers = workers(3, 0)
	p2, _ := Place(in)
	load, drop := Diff(&p1, &p2).For("w02")
	if len(load) == 0 || len(drop) != 0 {
		t.Fatalf("newcomer load %v drop %v", load, drop)
	}
	for _, id := range load {
		if !slices.Contains(p2.Owned("w02"), id) {
			t.Fatalf("load %v not owned", id)
		}
	}
	_, drop = Diff(&p1, &p2).For("w00")
	for _, id := range drop {
		if slices.Contains(p2.Owned("w00"), id) {
			t.Fatalf("drop %v still owned", id)
		}
	}
}
