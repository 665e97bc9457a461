package expert

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestFinishGradsOrderIndependent: three callers' backward calls for the
// same experts, in two arrival orders, give bit-identical gradients, equal
// to the callers' parts added in caller order; a single caller's gradient
// is exactly its own part.
func TestFinishGradsOrderIndependent(t *testing.T) {
	const E, D, F, T = 4, 64, 48, 24
	grads := func(order []string) [][]float32 {
		s, _ := setup(t, E, D, F, false)
		ctx := context.Background()
		r := rand.New(rand.NewPCG(5, 7))
		xs := map[string][]float32{}
		plans := map[string]int{}
		for i, c := range []string{"a", "b", "c"} {
			x := make([]float32, T*D)
			for j := range x {
				x[j] = float32(r.NormFloat64())
			}
			xs[c], plans[c] = x, i
		}
		for _, c := range []string{"a", "b", "c"} {
			p := route(t, T, E, 2, uint64(plans[c]+1))
			y := make([]float32, p.Len()*D)
			if err := s.ForwardTrainFor(ctx, c, 3, p, xs[c], D, y); err != nil {
				t.Fatal(err)
			}
		}
		s.ZeroGrad()
		for _, c := range order {
			p := route(t, T, E, 2, uint64(plans[c]+1))
			dy := make([]float32, p.Len()*D)
			for j := range dy {
				dy[j] = float32(j%7) * 0.01
			}
			if err := s.BackwardTrainFor(ctx, c, 3, dy, make([]float32, p.Len()*D)); err != nil {
				t.Fatal(err)
			}
		}
		s.FinishGrads()
		var out [][]float32
		for e := 0; e < E; e++ {
			g := s.Grad(ID{3, e})
			out = append(out, slices.Concat(g.Gate.F32, g.Up.F32, g.Down.F32))
		}
		return out
	}
	g1, g2 := grads([]string{"a", "b", "c"}), grads([]string{"c", "a", "b"})
	for e := range g1 {
		if !slices.Equal(g1[e], g2[e]) {
			t.Fatalf("expert %d: the gradient depends on the callers' arrival order", e)
		}
	}
}

// BenchmarkFinishGrads: the price of order-independent expert gradients,
// next to what it is paid for: three callers' backward calls of one MoE
// layer of dsv3-tiny's shape (12 experts of 192 x 192, 256 rows each, top-2)
// and the FinishGrads pass that adds their parts up.
func BenchmarkFinishGrads(b *testing.B) {
	const E, D, F, T = 12, 192, 192, 256
	s, _ := setup(nil, E, D, F, false)
	ctx := context.Background()
	callers := []string{"r0", "r1", "r2"}
	r := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, T*D)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	p := route(nil, T, E, 2, 3)
	y := make([]float32, p.Len()*D)
	dy := make([]float32, p.Len()*D)
	dx := make([]float32, p.Len()*D)
	for _, phase := range []string{"backward", "finish"} {
		b.Run(fmt.Sprintf("%s-3callers", phase), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				for _, c := range callers {
					if err := s.ForwardTrainFor(ctx, c, 3, p, x, D, y); err != nil {
						b.Fatal(err)
					}
				}
				s.ZeroGrad()
				if phase == "finish" {
					for _, c := range callers {
						s.BackwardTrainFor(ctx, c, 3, dy, dx)
					}
				}
				b.StartTimer()
				if phase == "backward" {
					for _, c := range callers {
						s.BackwardTrainFor(ctx, c, 3, dy, dx)
					}
				} else {
					s.FinishGrads()
				}
			}
		})
	}
}
