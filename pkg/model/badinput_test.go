package model

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

func tinyConfig() map[string]any {
	return map[string]any{
		"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
		"moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": false,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
}

func synthTiny(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := Synthesize(dir, tinyConfig(), SynthOptions{Seed: 7}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// rewrite replaces the checkpoint's tensors after applying edit to them.
func rewrite(t *testing.T, dir string, edit func(name string, v []float32) ([]float32, []int, bool)) {
	t.Helper()
	path := filepath.Join(dir, "model.safetensors")
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		v, err := f.Float32(n)
		if err != nil {
			t.Fatal(err)
		}
		nv, shape, keep := edit(n, v)
		if !keep {
			continue
		}
		if shape == nil {
			shape = info.Shape
		}
		ts = append(ts, safetensors.F32Tensor(n, shape, nv))
	}
	f.Close()
	if err := safetensors.Write(path, ts, nil); err != nil {
		t.Fatal(err)
	}
}

func openLoad(dir string) (*Model, error) {
	ck, err := Open(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	return ck.Load(LoadOptions{})
}

func TestBadInputsGiveClearErrors(t *testing.T) {
	const victim = "model.layers.1.mlp.experts.3.up_proj.weight"
	cases := []struct {
		name    string
		break_  func(t *testing.T, dir string)
		is      error    // errors.Is target, or nil
		mention []string // substrings the message must contain
	}{
		{"unknown model_type", func(t *testing.T, dir string) {
			writeConfig(t, dir, func(m map[string]any) { m["model_type"] = "llama4_moe" })
		}, ErrUnsupported, []string{`"llama4_moe"`, "config.json"}},
		{"config not JSON", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "config.json"), []byte("{not json"), 0o644)
		}, nil, []string{"config.json"}},
		{"config with bad values", func(t *testing.T, dir string) {
			writeConfig(t, dir, func(m map[string]any) {
				m["num_attention_heads"] = 3
				m["num_experts_per_tok"] = 9
				m["hidden_act"] = "gelu"
			})
		}, nil, []string{"num_attention_heads = 3", "TopK = 9", `hidden_act "gelu"`}},
		{"missing tensor", func(t *testing.T, dir string) {
			rewrite(t, dir, func(n string, v []float32) ([]float32, []int, bool) { return v, nil, n != victim })
		}, ErrBadWeights, []string{victim, "missing"}},
		{"wrong shape", func(t *testing.T, dir string) {
			rewrite(t, dir, func(n string, v []float32) ([]float32, []int, bool) {
				if n == victim {
					return v, []int{32, 16}, true
				}
				return v, nil, true
			})
		}, ErrBadWeights, []string{victim, "[32 16]", "[16 32]", "model.safetensors"}},
		{"NaN weight", func(t *testing.T, dir string) {
			rewrite(t, dir, func(n string, v []float32) ([]float32, []int, bool) {
				if n == victim {
					v[5] = float32(math.NaN())
				}
				return v, nil, true
			})
		}, ErrBadWeights, []string{victim, "value 5 is NaN", "model.safetensors"}},
		{"truncated safetensors", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "model.safetensors")
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-100)
		}, nil, []string{"model.safetensors"}},
		{"header lies about sizes", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "model.safetensors")
			b, _ := os.ReadFile(p)
			// Make the declared header length larger than the file.
			b[0], b[1], b[2] = 0xff, 0xff, 0x7f
			os.WriteFile(p, b, 0o644)
		}, nil, []string{"model.safetensors"}},
		{"no weights at all", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "model.safetensors"))
		}, nil, []string{"safetensors"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := synthTiny(t)
			tc.break_(t, dir)
			_, err := openLoad(dir)
			if err == nil {
				t.Fatal("loaded a broken checkpoint without error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %q does not wrap %v", err, tc.is)
			}
			for _, s := range tc.mention {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func writeConfig(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	m := tinyConfig()
	edit(m)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), mustJSON(t, m), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestTokenIDsOutOfRangeAreRejected(t *testing.T) {
	m, err := openLoad(synthTiny(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int32{64, -1, 1 << 30} {
		s := m.NewSeq()
		_, err := m.Forward(context.Background(), []*Seq{s}, [][]int32{{1, 2, id}}, Options{})
		if err == nil || !strings.Contains(err.Error(), "out of range") {
			t.Errorf("id %d: err = %v, want an out-of-range error", id, err)
		}
		if s.Len != 0 || s.CacheBytes() != 0 {
			t.Errorf("id %d: failed forward changed the sequence (len %d, cache %d bytes)", id, s.Len, s.CacheBytes())
		}
	}
}

func TestFailedForwardLeavesCacheUnchanged(t *testing.T) {
	m, err := openLoad(synthTiny(t))
	if err != nil {
		t.Fatal(err)
	}
	s := m.NewSeq()
	if _, err := m.Forward(context.Background(), []*Seq{s}, [][]int32{{1, 2, 3}}, Options{}); err != nil {
		t.Fatal(err)
	}
	before := s.CacheBytes()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Forward(ctx, []*Seq{s}, [][]int32{{4}}, Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if s.Len != 3 || s.CacheBytes() != before {
		t.Fatalf("canceled forward changed the cache: len %d, bytes %d -> %d", s.Len, before, s.CacheBytes())
	}
}

func mustJSON(t *testing.T, m map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
