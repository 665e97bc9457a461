package train

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/safetensors"
)

var goldenModels = []string{"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3_bf16"}

type goldenAdamW struct {
	AdamW struct {
		LR          float64   `json:"lr"`
		Betas       []float64 `json:"betas"`
		Eps         float64   `json:"eps"`
		WeightDecay float64   `json:"weight_decay"`
		Steps       int       `json:"steps"`
		Losses      []float64 `json:"losses_before_each_step_and_after"`
	} `json:"adamw"`
}

func TestGoldenAdamWTrajectory(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join("..", "..", "testdata", "golden", name)
			var gj goldenAdamW
			b, err := os.ReadFile(filepath.Join(dir, "golden.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &gj); err != nil {
				t.Fatal(err)
			}
			ck, err := model.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			m, store, err := model.Load(ck.Config, ck.Source, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			gf, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer gf.Close()
			info, _ := gf.Info("input_ids")
			v, _ := gf.Int64("input_ids")
			B, T := info.Shape[0], info.Shape[1]
			ids := make([][]int32, B)
			for r := range ids {
				for c := 0; c < T; c++ {
					ids[r] = append(ids[r], int32(v[r*T+c]))
				}
			}
			a := gj.AdamW
			cfg := StepConfig{AdamW: optim.AdamWConfig{LR: a.LR, Beta1: a.Betas[0], Beta2: a.Betas[1], Eps: a.Eps, WeightDecay: a.WeightDecay}}
			s, err := NewStepper(m, store, cfg)
			if err != nil {
				t.Fatal(err)
			}
			var losses []float64
			for step := 0; step < a.Steps; step++ {
				out, err := s.TrainStep(context.Background(), ids)
				if err != nil {
					t.Fatal(err)
				}
				losses = append(losses, out.CE)
			}
			// loss after the last step
			final, err := s.Eval(context.Background(), ids)
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, final)
			for i, want := range a.Losses {
				if d := math.Abs(losses[i] - want); d > 1e-4 {
					t.Errorf("loss %d = %.6f, transformers %.6f (|diff| %.2g)", i, losses[i], want, d)
				}
			}
			t.Logf("losses %.6f, want %.6f", losses, a.Losses)
		})
	}
}
