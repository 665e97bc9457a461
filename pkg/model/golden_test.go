package model

import (
	"context"
	"math"
	"path/filepath"
	"testing"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/safetensors"
)

var goldenModels = []string{"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3_bf16"}

func goldenDir(name string) string { return filepath.Join("..", "..", "testdata", "golden", name) }

// loadGolden loads a golden model (bf16 kept as bf16 if keepBF16) with all
// its experts, and opens its golden file.
func loadGolden(t *testing.T, name string, keepBF16 bool) (*Model, *safetensors.File) {
	t.Helper()
	m, _, g := loadGoldenStore(t, name, keepBF16)
	return m, g
}

func loadGoldenStore(t *testing.T, name string, keepBF16 bool) (*Model, *expert.Store, *safetensors.File) {
	t.Helper()
	dir := goldenDir(name)
	cfg, err := LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	m, store, err := Load(cfg, NewSource(f, ""), LoadOptions{KeepBF16: keepBF16})
	if err != nil {
		t.Fatal(err)
	}
	g, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return m, store, g
}

func relL2(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num / den)
}

func ids2D(v []int64, rows int) [][]int32 {
	cols := len(v) / rows
	out := make([][]int32, rows)
	for r := range out {
		out[r] = make([]int32, cols)
		for c := range out[r] {
			out[r][c] = int32(v[r*cols+c])
		}
	}
	return out
}

func TestGoldenForward(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			m, g := loadGolden(t, name, true)
			info, _ := g.Info("input_ids")
			ids64, _ := g.Int64("input_ids")
			ids := ids2D(ids64, info.Shape[0])
			seqs := make([]*Seq, len(ids))
			for i := range seqs {
				seqs[i] = m.NewSeq()
			}
			out, err := m.Forward(context.Background(), seqs, ids, Options{AllLogits: true, Hidden: true})
			if err != nil {
				t.Fatal(err)
			}
			want, _ := g.Float32("logits")
			if e := relL2(out.Logits, want); e > 1e-4 {
				t.Errorf("logits rel L2 %g", e)
			} else {
				t.Logf("logits rel L2 %g", e)
			}
			hs, _ := g.Float32("hidden_states")
			per := len(hs) / len(out.Hidden)
			for l, h := range out.Hidden {
				if e := relL2(h, hs[l*per:(l+1)*per]); e > 1e-4 {
					t.Errorf("hidden %d rel L2 %g", l, e)
				}
			}
		})
	}
}

func TestGoldenGreedyWithAndWithoutCache(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			m, g := loadGolden(t, name, true)
			info, _ := g.Info("prompt_ids")
			p64, _ := g.Int64("prompt_ids")
			prompts := ids2D(p64, info.Shape[0])
			w64, _ := g.Int64("generated_ids")
			want := ids2D(w64, info.Shape[0])
			for _, mode := range []struct {
				name      string
				recompute bool
				mla       MLAMode
			}{{"cache", false, MLAAuto}, {"recompute", true, MLAAuto}, {"cache-naive-mla", false, MLANaive}, {"cache-absorbed-mla", false, MLAAbsorbed}} {
				got, err := m.Generate(context.Background(), prompts, GenerateConfig{MaxTokens: len(want[0]), Recompute: mode.recompute, MLA: mode.mla}, nil)
				if err != nil {
					t.Fatal(err)
				}
				for b := range want {
					for i := range want[b] {
						if got[b][i] != want[b][i] {
							t.Fatalf("%s: sequence %d token %d: got %v want %v", mode.name, b, i, got[b], want[b])
						}
					}
				}
			}
		})
	}
}

// TestTensorsMatchCheckpoints checks Config.Tensors against the real
// checkpoints: exactly the same names and shapes.
func TestTensorsMatchCheckpoints(t *testing.T) {
	for _, name := range goldenModels {
		dir := goldenDir(name)
		cfg, err := LoadConfig(dir)
		if err != nil {
			t.Fatal(err)
		}
		f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		specs := cfg.Tensors()
		seen := map[string]bool{}
		for _, s := range specs {
			ti, err := f.Info(s.Name)
			if err != nil {
				t.Errorf("%s: spec %s not in checkpoint", name, s.Name)
				continue
			}
			if !equalInts(ti.Shape, s.Shape) {
				t.Errorf("%s: %s shape %v, spec %v", name, s.Name, ti.Shape, s.Shape)
			}
			seen[s.Name] = true
		}
		for _, n := range f.Names() {
			if !seen[n] {
				t.Errorf("%s: checkpoint tensor %s not in spec", name, n)
			}
		}
		f.Close()
	}
}

// loadGoldenTrain loads a golden model in float32 for training.
func loadGoldenTrain(t *testing.T, name string) (*Model, *expert.Store, *safetensors.File) {
	t.Helper()
	return loadGoldenStore(t, name, false)
}
