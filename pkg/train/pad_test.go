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

// newGroup builds n ranks of cfg from the same seed, experts dealt out
// round-robin (as runGroup does).
func newGroup(t *testing.T, cfg *model.Config, sc StepConfig, n int) ([]*DistStepper, []*model.Model) {
	t.Helper()
	comms := LocalGroup(n)
	stores := make([]*expert.Store, n)
	models := make([]*model.Model, n)
	E := cfg.MoE.Router.NumExperts
	for r := 0; r < n; r++ {
		m, all, err := model.NewRandom(cfg, model.InitOptions{Seed: 3})
		if err != nil {
			t.Fatal(err)
		}
		models[r], stores[r] = m, expert.NewStore()
		for _, id := range all.IDs() {
			if (id.Layer*E+id.Expert)%n == r {
				stores[r].Put(id, all.Get(id))
			}
		}
	}
	owner := func(id expert.ID) *expert.Store { return stores[(id.Layer*E+id.Expert)%n] }
	steppers := make([]*DistStepper, n)
	for r := 0; r < n; r++ {
		models[r].Experts = &expert.Sharded{Caller: fmt.Sprintf("rank%d", r), Owner: owner}
		s, err := NewDistStepper(models[r], stores[r], comms[r], sc)
		if err != nil {
			t.Fatal(err)
		}
		s.BucketBytes = 64 << 10
		steppers[r] = s
	}
	return steppers, models
}

// each runs f on every rank at once, each with its rows of the global batch.
func each(t *testing.T, steppers []*DistStepper, gb [][]int32, f func(s *DistStepper, rows [][]int32) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(steppers))
	for r, s := range steppers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo, hi := RankRows(len(gb), len(steppers), r)
			errs[r] = f(s, gb[lo:hi])
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestPadRowDistributed: every rank leaves embed_tokens' pad row out of
// the lookup gradient, so the all-reduced gradient of N ranks is the
// single process's: zero on the pad row when untied, lm_head's part alone
// when tied. AdamW then only decays the untied pad row.
func TestPadRowDistributed(t *testing.T) {
	const vocab = 256
	batch := makeBatches(t, vocab, 1, 4, 24)[0]
	pad := batch[0][5]
	n := 0
	for _, row := range batch {
		for _, id := range row {
			if id == pad {
				n++
			}
		}
	}
	for _, tied := range []bool{false, true} {
		t.Run(fmt.Sprintf("tied=%v", tied), func(t *testing.T) {
			hf, err := Preset("mixtral-tiny", vocab)
			if err != nil {
				t.Fatal(err)
			}
			hf["pad_token_id"] = int(pad)
			hf["tie_word_embeddings"] = tied
			cfg := parsePreset(t, hf)
			sc := DefaultJobConfig().Step
			D := cfg.Hidden
			ctx := context.Background()
			var one []float32
			var emb [2]int // embed_tokens' range of Grads.Flat
			for _, ranks := range []int{1, 2} {
				steppers, _ := newGroup(t, cfg, sc, ranks)
				each(t, steppers, batch, func(s *DistStepper, rows [][]int32) error {
					_, err := s.Gradients(ctx, rows)
					return err
				})
				off := 0
				for _, p := range steppers[0].Grads.Params {
					if p.Name == "model.embed_tokens.weight" {
						emb = [2]int{off, off + len(*p.Data)}
					}
					off += len(*p.Data)
				}
				g := steppers[0].Grads.Flat
				row := g[emb[0]+int(pad)*D : emb[0]+int(pad+1)*D]
				var s float64
				for _, v := range row {
					s += math.Abs(float64(v))
				}
				if !tied && s != 0 {
					t.Errorf("%d ranks: pad row %d of grad embed_tokens has |g| = %g, want 0", ranks, pad, s)
				}
				if tied && s == 0 {
					t.Errorf("%d ranks: tied pad row lost lm_head's gradient", ranks)
				}
				if ranks == 1 {
					one = append([]float32(nil), g...)
					continue
				}
				for r, st := range steppers[1:] {
					for i, v := range st.Grads.Flat {
						if v != g[i] {
							t.Fatalf("rank %d's all-reduced gradient differs from rank 0's at %d", r+1, i)
						}
					}
				}
				var num, den float64
				for i := range g {
					d := float64(g[i]) - float64(one[i])
					num += d * d
					den += float64(one[i]) * float64(one[i])
				}
				if rel := math.Sqrt(num / den); rel > 1e-5 {
					t.Errorf("2 ranks vs 1: rel L2 of the dense gradients %.3g", rel)
				}
			}
			if tied {
				return
			}
			// One step on 2 ranks: the pad row (zero gradient, zero moments)
			// is only decayed, w *= 1 - lr*wd.
			steppers, models := newGroup(t, cfg, sc, 2)
			w0 := append([]float32(nil), models[0].Embed.F32[int(pad)*D:int(pad+1)*D]...)
			var lr float64
			each(t, steppers, batch, func(s *DistStepper, rows [][]int32) error {
				out, err := s.TrainStep(ctx, rows)
				if err == nil && s.Comm.Rank() == 0 {
					lr = out.LR
				}
				return err
			})
			decay := 1 - lr*sc.AdamW.WeightDecay
			for r, m := range models {
				for i, w := range m.Embed.F32[int(pad)*D : int(pad+1)*D] {
					if want := float32(float64(w0[i]) * decay); w != want {
						t.Fatalf("rank %d pad row [%d] after a step: %g, want %g (decay only)", r, i, w, want)
					}
				}
			}
			t.Logf("pad id %d occurs %d times in the batch; lr %g", pad, n, lr)
		})
	}
}

func parsePreset(t *testing.T, hf map[string]any) *model.Config {
	t.Helper()
	b, err := json.Marshal(hf)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := model.ParseConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
