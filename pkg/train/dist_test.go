package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
)

// makeBatches returns `steps` global batches of B rows of T tokens.
func makeBatches(t *testing.T, vocab, steps, B, T int) [][][]int32 {
	text, err := ReadText(bookPath)
	if err != nil {
		t.Fatal(err)
	}
	var out [][][]int32
	pos := 0
	for s := 0; s < steps; s++ {
		var b [][]int32
		for r := 0; r < B; r++ {
			row := make([]int32, T)
			for i := range row {
				row[i] = int32(text[pos%len(text)]) % int32(vocab)
				pos++
			}
			b = append(b, row)
		}
		out = append(out, b)
	}
	return out
}

func presetModel(t *testing.T, preset string, vocab int) *model.Config {
	hf, err := Preset(preset, vocab)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(hf)
	cfg, err := model.ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runGroup trains n ranks in lockstep on row slices of the global batches
// and returns rank 0's losses and every rank's final dense weights.
func runGroup(t *testing.T, cfg *model.Config, sc StepConfig, n int, batches [][][]int32) ([]float64, [][]float32) {
	ctx := context.Background()
	comms := LocalGroup(n)
	// Every rank initializes the same dense weights; experts are dealt out
	// round-robin, each owned by exactly one rank's store.
	stores := make([]*expert.Store, n)
	models := make([]*model.Model, n)
	for r := 0; r < n; r++ {
		m, all, err := model.NewRandom(cfg, model.InitOptions{Seed: 3})
		if err != nil {
			t.Fatal(err)
		}
		models[r] = m
		stores[r] = expert.NewStore()
		for _, id := range all.IDs() {
			if (id.Layer*cfg.MoE.Router.NumExperts+id.Expert)%n == r {
				stores[r].Put(id, all.Get(id))
			}
		}
	}
	owner := func(id expert.ID) *expert.Store {
		return stores[(id.Layer*cfg.MoE.Router.NumExperts+id.Expert)%n]
	}
	steppers := make([]*DistStepper, n)
	for r := 0; r < n; r++ {
		models[r].Experts = &expert.Sharded{Caller: fmt.Sprintf("rank%d", r), Owner: owner}
		s, err := NewDistStepper(models[r], stores[r], comms[r], sc)
		if err != nil {
			t.Fatal(err)
		}
		s.BucketBytes = 64 << 10 // several buckets even for a tiny model
		steppers[r] = s
	}
	losses := make([]float64, len(batches))
	for step, gb := range batches {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for r := 0; r < n; r++ {
			wg.Add(1)
			go func(r int) {
				defer wg.Done()
				lo, hi := RankRows(len(gb), n, r)
				out, err := steppers[r].TrainStep(ctx, gb[lo:hi])
				if err != nil {
					errs[r] = err
					return
				}
				if r == 0 {
					losses[step] = out.Loss
				}
			}(r)
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	weights := make([][]float32, n)
	for r, m := range models {
		refs, _ := m.DenseParams()
		for _, p := range refs {
			weights[r] = append(weights[r], *p.Data...)
		}
	}
	return losses, weights
}

func TestDataExpertParallelReproducesSingleProcess(t *testing.T) {
	for _, tc := range []struct {
		preset string
		loss   func(*StepConfig)
	}{
		{"dsv3-micro", func(c *StepConfig) { c.BiasUpdateSpeed = 1e-3; c.Loss.ZCoef = 1e-3 }},
		{"mixtral-tiny", func(c *StepConfig) { c.Loss.AuxCoef = 0.01; c.Loss.ZCoef = 1e-3 }},
	} {
		t.Run(tc.preset, func(t *testing.T) {
			cfg := presetModel(t, tc.preset, 256)
			sc := DefaultJobConfig().Step
			sc.Schedule.Warmup, sc.Schedule.Total = 5, 20
			tc.loss(&sc)
			batches := makeBatches(t, 256, 20, 4, 24)
			one, _ := runGroup(t, cfg, sc, 1, batches)
			for _, n := range []int{2, 3, 4, 6} { // 6 ranks for 4 rows: two ranks idle each step
				got, weights := runGroup(t, cfg, sc, n, batches)
				worst := 0.0
				for i := range one {
					d := math.Abs(got[i] - one[i])
					worst = math.Max(worst, d)
					if d > 1e-4 {
						t.Errorf("%d ranks, step %d: loss %.6f, 1 rank %.6f", n, i+1, got[i], one[i])
					}
				}
				for r := 1; r < n; r++ {
					for i := range weights[0] {
						if weights[r][i] != weights[0][i] {
							t.Fatalf("%d ranks: dense replica %d differs from rank 0 at %d", n, r, i)
						}
					}
				}
				t.Logf("%d ranks: 20 steps, worst |loss - 1 rank| = %.2g (losses %.3f -> %.3f)", n, worst, got[0], got[len(got)-1])
			}
		})
	}
}

// cloneFFN deep-copies an expert (a replica must be its own memory).
func cloneFFN(f *expert.FFN) *expert.FFN {
	c := *f
	c.Gate.F32 = append([]float32(nil), f.Gate.F32...)
	c.Up.F32 = append([]float32(nil), f.Up.F32...)
	c.Down.F32 = append([]float32(nil), f.Down.F32...)
	return &c
}

// TestReplicatedExpertsReproduceSingleProcess trains with every expert on
// R ranks: callers spread over the copies, the copies' gradients are
// all-reduced, and the result matches one process (and the copies stay
// identical).
func TestReplicatedExpertsReproduceSingleProcess(t *testing.T) {
	cfg := presetModel(t, "dsv3-micro", 256)
	sc := DefaultJobConfig().Step
	sc.Schedule.Warmup, sc.Schedule.Total = 3, 12
	batches := makeBatches(t, 256, 12, 4, 24)
	one, _ := runGroup(t, cfg, sc, 1, batches)
	E := cfg.MoE.Router.NumExperts
	for _, tc := range []struct{ n, r int }{{2, 2}, {4, 2}, {3, 3}} {
		n, R := tc.n, tc.r
		holders := func(id expert.ID) []int {
			g := id.Layer*E + id.Expert
			h := make([]int, R)
			for j := range h {
				h[j] = (g + j) % n
			}
			return h
		}
		var all []expert.ID
		stores := make([]*expert.Store, n)
		models := make([]*model.Model, n)
		for r := 0; r < n; r++ {
			m, st, err := model.NewRandom(cfg, model.InitOptions{Seed: 3})
			if err != nil {
				t.Fatal(err)
			}
			models[r], stores[r] = m, expert.NewStore()
			if r == 0 {
				all = st.IDs()
				sortIDs(all)
			}
			for _, id := range st.IDs() {
				for _, x := range holders(id) {
					if x == r {
						stores[r].Put(id, cloneFFN(st.Get(id)))
					}
				}
			}
		}
		comms := LocalGroup(n)
		steppers := make([]*DistStepper, n)
		for r := 0; r < n; r++ {
			r := r
			models[r].Experts = &expert.Sharded{Caller: fmt.Sprintf("rank%d", r), Owner: func(id expert.ID) *expert.Store {
				h := holders(id)
				return stores[h[r%len(h)]] // callers spread over the copies
			}}
			s, err := NewDistStepper(models[r], stores[r], comms[r], sc)
			if err != nil {
				t.Fatal(err)
			}
			s.Replicas = &Replicas{Experts: all, Holders: holders}
			steppers[r] = s
		}
		var losses []float64
		for _, gb := range batches {
			var wg sync.WaitGroup
			errs := make([]error, n)
			outs := make([]*StepOut, n)
			for r := 0; r < n; r++ {
				wg.Add(1)
				go func(r int) {
					defer wg.Done()
					lo, hi := RankRows(len(gb), n, r)
					outs[r], errs[r] = steppers[r].TrainStep(context.Background(), gb[lo:hi])
				}(r)
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			losses = append(losses, outs[0].Loss)
		}
		worst := 0.0
		for i := range one {
			worst = math.Max(worst, math.Abs(losses[i]-one[i]))
		}
		if worst > 1e-4 {
			t.Errorf("%d ranks x %d replicas: worst |loss - 1 rank| %.3g", n, R, worst)
		}
		// every copy of an expert ends identical
		for _, id := range all {
			h := holders(id)
			a := stores[h[0]].Get(id)
			for _, x := range h[1:] {
				b := stores[x].Get(id)
				for i := range a.Gate.F32 {
					if a.Gate.F32[i] != b.Gate.F32[i] {
						t.Fatalf("%d ranks x %d replicas: copies of %v differ", n, R, id)
					}
				}
			}
		}
		t.Logf("%d ranks, every expert on %d of them: worst |loss - 1 rank| %.2g over %d steps", n, R, worst, len(one))
	}
}
