package model

import (
	"context"
	"math"
	"testing"

	"github.com/switchyard/switchyard/pkg/expert"
)

// goldenGrads computes every parameter gradient of the golden batch's mean
// cross-entropy, by hub name (dense and routed experts).
func goldenGrads(t *testing.T, m *Model, store *expert.Store, ids [][]int32) (map[string][]float32, float64) {
	t.Helper()
	st := m.NewTrainState()
	g, err := m.NewGrads()
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.TrainForward(context.Background(), st, ids, LossConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.TrainBackward(context.Background(), st, g); err != nil {
		t.Fatal(err)
	}
	out := map[string][]float32{}
	for _, p := range g.Params {
		out[p.Name] = *p.Data
	}
	for _, id := range store.IDs() {
		n := ExpertTensorNames(m.Cfg.Family, id.Layer, id.Expert)
		if gr := store.Grad(id); gr != nil {
			out[n[0]], out[n[1]], out[n[2]] = gr.Gate.F32, gr.Up.F32, gr.Down.F32
		}
	}
	return out, res.CE
}

func TestGoldenGradients(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			m, store, g := loadGoldenTrain(t, name)
			info, _ := g.Info("input_ids")
			ids64, _ := g.Int64("input_ids")
			ids := ids2D(ids64, info.Shape[0])
			grads, loss := goldenGrads(t, m, store, ids)
			n, worst, worstName := 0, 0.0, ""
			for _, gname := range g.Names() {
				if len(gname) < 5 || gname[:5] != "grad." {
					continue
				}
				want, _ := g.Float32(gname)
				got := grads[gname[5:]]
				if got == nil {
					// an expert no token reached has an exactly zero gradient
					var s float64
					for _, v := range want {
						s += math.Abs(float64(v))
					}
					if s != 0 {
						t.Errorf("%s: no gradient computed, golden has |g|=%g", gname, s)
					}
					continue
				}
				e := relL2(got, want)
				if math.IsNaN(e) {
					e = 0 // both zero
				}
				if e > 1e-3 {
					t.Errorf("%s: rel L2 %g", gname, e)
				}
				if e > worst {
					worst, worstName = e, gname
				}
				n++
			}
			t.Logf("%d gradient tensors, worst rel L2 %.2e (%s), loss %.6f", n, worst, worstName, loss)
		})
	}
}
