package model

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

// transformers builds every family's embed_tokens as
// nn.Embedding(vocab, hidden, padding_idx=config.pad_token_id): the
// embedding lookup's backward gives the pad row nothing, while a tied
// lm_head's gradient still reaches that row of the shared weight.

// goldenConfigMap reads a golden model's config.json as a map.
func goldenConfigMap(t *testing.T, name string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(goldenDir(name), "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func parseMap(t *testing.T, m map[string]any) (*Config, error) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return ParseConfig(b)
}

func TestPadTokenIDDefaults(t *testing.T) {
	// The defaults of each family's transformers config class (pad_token_id
	// field): OlmoeConfig 1, every other None.
	want := map[string]int{"mixtral": -1, "qwen2_moe": -1, "qwen3_moe": -1, "olmoe": 1, "deepseek_v2_lite": -1, "deepseek_v3_bf16": -1}
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			m := goldenConfigMap(t, name)
			V := int(m["vocab_size"].(float64))
			for _, tc := range []struct {
				desc string
				set  func(map[string]any)
				want int
			}{
				{"absent", func(m map[string]any) { delete(m, "pad_token_id") }, want[name]},
				{"null", func(m map[string]any) { m["pad_token_id"] = nil }, -1},
				{"7", func(m map[string]any) { m["pad_token_id"] = 7 }, 7},
				{"0", func(m map[string]any) { m["pad_token_id"] = 0 }, 0},
				{"-1 counts from the end", func(m map[string]any) { m["pad_token_id"] = -1 }, V - 1},
			} {
				c := goldenConfigMap(t, name)
				tc.set(c)
				cfg, err := parseMap(t, c)
				if err != nil {
					t.Fatalf("%s: %v", tc.desc, err)
				}
				if cfg.PadID != tc.want {
					t.Errorf("pad_token_id %s: PadID %d, want %d", tc.desc, cfg.PadID, tc.want)
				}
			}
			for _, bad := range []int{V, -V - 1} {
				c := goldenConfigMap(t, name)
				c["pad_token_id"] = bad
				if _, err := parseMap(t, c); err == nil {
					t.Errorf("pad_token_id %d with vocab_size %d: no error", bad, V)
				}
			}
			// The pad id changes no forward computation: same fingerprint.
			a, _ := parseMap(t, goldenConfigMap(t, name))
			c := goldenConfigMap(t, name)
			c["pad_token_id"] = 5
			b, _ := parseMap(t, c)
			if a.Fingerprint() != b.Fingerprint() {
				t.Errorf("fingerprint depends on pad_token_id")
			}
		})
	}
}

// backwardGrads runs one TrainForward/TrainBackward of ids on a model of
// cfg with src's weights and returns every gradient by hub name.
func backwardGrads(t *testing.T, cfg *Config, src Source, ids [][]int32) map[string][]float32 {
	t.Helper()
	m, store, err := Load(cfg, src, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := goldenGrads(t, m, store, ids)
	return out
}

// TestPadRowGradientGolden puts a pad id into each golden batch (at the
// first, a middle and the last position) and checks, against the same
// model without a pad id, that only embed_tokens' pad row changes and that
// it is exactly zero; the other rows of embed_tokens are also checked
// against central differences of the float64 reference.
func TestPadRowGradientGolden(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			dir := goldenDir(name)
			f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			src := NewSource(f, "")
			g, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Close() })
			info, _ := g.Info("input_ids")
			ids64, _ := g.Int64("input_ids")
			ids := ids2D(ids64, info.Shape[0])
			T := len(ids[0])
			pad := ids[0][3]
			ids[0][0], ids[1][T/2], ids[1][T-1] = pad, pad, pad

			withPad := goldenConfigMap(t, name)
			withPad["pad_token_id"] = int(pad)
			noPad := goldenConfigMap(t, name)
			noPad["pad_token_id"] = nil
			cp, err := parseMap(t, withPad)
			if err != nil {
				t.Fatal(err)
			}
			cn, err := parseMap(t, noPad)
			if err != nil {
				t.Fatal(err)
			}
			gp := backwardGrads(t, cp, src, ids)
			gn := backwardGrads(t, cn, src, ids)
			D := cp.Hidden
			const emb = "model.embed_tokens.weight"
			for n, a := range gn {
				b := gp[n]
				for i := range a {
					if n == emb && i/D == int(pad) {
						continue
					}
					if a[i] != b[i] {
						t.Fatalf("%s[%d]: %g with a pad id, %g without", n, i, b[i], a[i])
					}
				}
			}
			row := gp[emb][int(pad)*D : int(pad+1)*D]
			var before float64
			for i, v := range row {
				if v != 0 {
					t.Fatalf("grad %s pad row %d [%d] = %g, want 0", emb, pad, i, v)
				}
				before += math.Abs(float64(gn[emb][int(pad)*D+i]))
			}
			if before == 0 {
				t.Fatalf("without a pad id the row of token %d has no gradient: the test shows nothing", pad)
			}

			// Float64 reference: central differences for entries of the
			// rows of other tokens in the batch.
			var hc hfConfig
			b, _ := json.Marshal(noPad)
			if err := json.Unmarshal(b, &hc); err != nil {
				t.Fatal(err)
			}
			ref := newRefModel(hc, src)
			refCE(ref, ids)
			w := ref.weight(emb)
			var num, den float64
			for _, tok := range []int32{ids[0][1], ids[1][2], ids[1][T-2]} {
				if tok == pad {
					continue
				}
				for _, d := range []int{0, D / 3, D - 1} {
					i := int(tok)*D + d
					const eps = 1e-5
					orig := w[i]
					w[i] = orig + eps
					lp := refCE(ref, ids)
					w[i] = orig - eps
					lm := refCE(ref, ids)
					w[i] = orig
					fd := (lp - lm) / (2 * eps)
					e := fd - float64(gp[emb][i])
					num += e * e
					den += fd * fd
				}
			}
			if rel := math.Sqrt(num / den); !(rel < 1e-3) {
				t.Errorf("embed_tokens rows besides the pad row: rel error %.3g against float64 finite differences", rel)
			}
		})
	}
}

// TestPadRowGradientTied: with tie_word_embeddings the pad row of the
// shared weight's gradient is lm_head's part alone. The reference computes
// it as the untied model whose lm_head.weight is a copy of embed_tokens:
// the finite difference with respect to that copy's pad row.
func TestPadRowGradientTied(t *testing.T) {
	for _, name := range []string{"mixtral/mqa-headdim24-sliding5-linear-tied-bf16", "qwen3_moe/mqa-headdim16-sliding4-llama3-tied"} {
		t.Run(name, func(t *testing.T) {
			bv := variantByName(t, name).build(t)
			T := len(bv.ids[0])
			for _, s := range bv.ids {
				T = min(T, len(s))
			}
			T = min(T, 8)
			ids := make([][]int32, len(bv.ids))
			for b := range ids {
				ids[b] = append([]int32(nil), bv.ids[b][:T]...)
			}
			pad := ids[0][1]
			ids[0][T-1], ids[1][0] = pad, pad

			var hf map[string]any
			if err := json.Unmarshal(bv.cfgJSON, &hf); err != nil {
				t.Fatal(err)
			}
			hf["pad_token_id"] = int(pad)
			cfg, err := parseMap(t, hf)
			if err != nil {
				t.Fatal(err)
			}
			if !cfg.TieEmbed {
				t.Fatal("variant is not tied")
			}
			grads := backwardGrads(t, cfg, bv.src, ids)
			if _, ok := grads["lm_head.weight"]; ok {
				t.Fatal("tied model lists lm_head")
			}
			D := cfg.Hidden
			const emb = "model.embed_tokens.weight"
			got := grads[emb][int(pad)*D : int(pad+1)*D]

			// Untied reference with lm_head.weight = embed_tokens.
			e, err := bv.src.Float32(emb)
			if err != nil {
				t.Fatal(err)
			}
			_, shape, _ := bv.src.Info(emb)
			src := newMapSource()
			for n, mt := range bv.src.t {
				src.t[n] = mt
			}
			src.put("lm_head.weight", shape, e, false)
			var hc hfConfig
			if err := json.Unmarshal(bv.cfgJSON, &hc); err != nil {
				t.Fatal(err)
			}
			hc["tie_word_embeddings"] = false
			ref := newRefModel(hc, src)
			refCE(ref, ids)
			fd := func(name string, i int) float64 {
				w := ref.weight(name)
				const eps = 1e-5
				orig := w[i]
				w[i] = orig + eps
				lp := refCE(ref, ids)
				w[i] = orig - eps
				lm := refCE(ref, ids)
				w[i] = orig
				return (lp - lm) / (2 * eps)
			}
			var num, den, lookup float64
			for d := 0; d < D; d++ {
				i := int(pad)*D + d
				want := fd("lm_head.weight", i)
				diff := want - float64(got[d])
				num += diff * diff
				den += want * want
				lookup += math.Abs(fd(emb, i))
			}
			if rel := math.Sqrt(num / den); !(rel < 1e-3) {
				t.Errorf("tied pad row: rel error %.3g against lm_head's part alone (float64 finite differences)", rel)
			}
			if lookup == 0 {
				t.Errorf("the lookup part of the pad row is zero: the test shows nothing")
			}
			t.Logf("pad %d: |lm_head part| %.3g, |lookup part left out| %.3g", pad, math.Sqrt(den), lookup)
		})
	}
}

// TestNewRandomZeroesThePadRow: as transformers' _init_weights, a model
// initialized from scratch starts with the padding row of embed_tokens
// zero (OLMoE: pad_token_id 1 by default) and every other row random.
func TestNewRandomZeroesThePadRow(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("..", "..", "testdata", "golden", "olmoe"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PadID < 0 {
		t.Fatalf("olmoe golden config: no pad id")
	}
	m, _, err := NewRandom(cfg, InitOptions{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	D := cfg.Hidden
	for r := 0; r < cfg.Vocab; r++ {
		nonzero := 0
		for _, v := range m.Embed.F32[r*D : (r+1)*D] {
			if v != 0 {
				nonzero++
			}
		}
		if (r == cfg.PadID) != (nonzero == 0) {
			t.Fatalf("row %d: %d non-zero values (pad id %d)", r, nonzero, cfg.PadID)
		}
	}
}
