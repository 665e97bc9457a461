package convert

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// TestPermuteQKMakesGGMLRopeEqualHF is the reason for the permutation:
// transformers rotates pairs (i, i+Dh/2) of each head (rotate_half), ggml's
// llama rope rotates adjacent pairs (2i, 2i+1). Rotating the permuted
// projection the ggml way must give the permuted result of rotating the
// original the transformers way, for every head.
func TestPermuteQKMakesGGMLRopeEqualHF(t *testing.T) {
	const heads, dh, cols = 3, 8, 5
	r := rand.New(rand.NewPCG(1, 1))
	w := make([]float32, heads*dh*cols)
	x := make([]float32, cols)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	proj := func(w []float32) []float64 { // q = W x
		q := make([]float64, heads*dh)
		for i := range q {
			for k := 0; k < cols; k++ {
				q[i] += float64(w[i*cols+k]) * float64(x[k])
			}
		}
		return q
	}
	const pos = 5.0
	angle := func(i int) float64 { return pos * math.Pow(10000, -2*float64(i)/dh) }
	hf := proj(w)
	for h := 0; h < heads; h++ { // rotate_half
		q := hf[h*dh : (h+1)*dh]
		for i := 0; i < dh/2; i++ {
			a, b := q[i], q[i+dh/2]
			c, s := math.Cos(angle(i)), math.Sin(angle(i))
			q[i], q[i+dh/2] = a*c-b*s, b*c+a*s
		}
	}
	pw, err := PermuteQK(w, heads*dh, cols, heads)
	if err != nil {
		t.Fatal(err)
	}
	gg := proj(pw)
	for h := 0; h < heads; h++ { // ggml rope mode 0: adjacent pairs
		q := gg[h*dh : (h+1)*dh]
		for i := 0; i < dh/2; i++ {
			a, b := q[2*i], q[2*i+1]
			c, s := math.Cos(angle(i)), math.Sin(angle(i))
			q[2*i], q[2*i+1] = a*c-b*s, b*c+a*s
		}
	}
	// The attention score q.k is invariant under the same permutation of
	// q and k, so it suffices that gg is hf permuted: gg[h*dh+2i+j] =
	// hf[h*dh+j*dh/2+i].
	for h := 0; h < heads; h++ {
		for i := 0; i < dh/2; i++ {
			for j := 0; j < 2; j++ {
				got, want := gg[h*dh+2*i+j], hf[h*dh+j*dh/2+i]
				if math.Abs(got-want) > 1e-9 {
					t.Fatalf("head %d pair %d.%d: ggml %g, transformers %g", h, i, j, got, want)
				}
			}
		}
	}
	if _, err := PermuteQK(w, heads*dh, cols, 5); err == nil {
		t.Error("permuting into 5 heads: no error")
	}
}

func TestSplitKVB(t *testing.T) {
	const H, Dn, Dv, R = 2, 3, 2, 4
	x := make([]float32, H*(Dn+Dv)*R)
	for i := range x {
		x[i] = float32(i)
	}
	k, v, err := SplitKVB(x, H, Dn, Dv, R)
	if err != nil {
		t.Fatal(err)
	}
	for h := 0; h < H; h++ {
		for r := 0; r < R; r++ {
			for n := 0; n < Dn; n++ {
				if got, want := k[(h*R+r)*Dn+n], x[(h*(Dn+Dv)+n)*R+r]; got != want {
					t.Fatalf("k[%d][%d][%d] = %g, want %g", h, r, n, got, want)
				}
			}
		}
		for j := 0; j < Dv; j++ {
			for r := 0; r < R; r++ {
				if got, want := v[(h*Dv+j)*R+r], x[(h*(Dn+Dv)+Dn+j)*R+r]; got != want {
					t.Fatalf("v[%d][%d][%d] = %g, want %g", h, j, r, got, want)
				}
			}
		}
	}
	if _, _, err := SplitKVB(x[1:], H, Dn, Dv, R); err == nil {
		t.Error("short kv_b: no error")
	}
}

func TestPreTokenizer(t *testing.T) {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	split := func(p string) string {
		return `{"type":"Split","pattern":{"Regex":` + q(p) + `},"behavior":"Isolated","invert":false}`
	}
	bl := `{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}`
	for _, c := range []struct{ json, want string }{
		{`{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}`, "gpt-2"},
		{`{"type":"Sequence","pretokenizers":[` + split(tokenizer.PatternQwen2) + `,` + bl + `]}`, "qwen2"},
		{`{"type":"Sequence","pretokenizers":[` + split(tokenizer.PatternLlama3) + `,` + bl + `]}`, "llama-bpe"},
		{`{"type":"Sequence","pretokenizers":[` + split(tokenizer.PatternDigits3) + `,` + split(tokenizer.PatternDeepSeekCJK) + `,` +
			split(tokenizer.PatternDeepSeekMain) + `,` + bl + `]}`, "deepseek-v3"},
		{`{"type":"ByteLevel","add_prefix_space":true,"use_regex":true}`, ""},
		{`{"type":"Metaspace"}`, ""},
		{`null`, ""},
	} {
		got, err := PreTokenizer(json.RawMessage(c.json))
		if c.want == "" {
			if !errors.Is(err, ErrPreTokenizer) {
				t.Errorf("%s: got %q, %v; want ErrPreTokenizer", c.json, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.json, got, err, c.want)
		}
	}
}

func TestMergeStrings(t *testing.T) {
	raw := []json.RawMessage{json.RawMessage(`"a b"`), json.RawMessage(`["Ġ","t"]`), json.RawMessage(`["x y","z"]`)}
	got, err := mergeStrings(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a b", "Ġ t", "xĠy z"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("merge %d = %q, want %q", i, got[i], want[i])
		}
	}
	if _, err := mergeStrings([]json.RawMessage{json.RawMessage(`["a"]`)}); err == nil {
		t.Error("one-element merge: no error")
	}
}

// TestCheckRefuses: settings llama.cpp would compute differently are
// refused with an error naming them.
func TestCheckRefuses(t *testing.T) {
	base := map[string]map[string]any{
		"mixtral": {"model_type": "mixtral", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 8,
			"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "num_local_experts": 4, "num_experts_per_tok": 2},
		"olmoe": {"model_type": "olmoe", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 8,
			"num_hidden_layers": 2, "num_attention_heads": 2, "num_experts": 4, "num_experts_per_tok": 2},
		"qwen3_moe": {"model_type": "qwen3_moe", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 8, "moe_intermediate_size": 8,
			"num_hidden_layers": 2, "num_attention_heads": 2, "num_experts": 4, "num_experts_per_tok": 2, "head_dim": 8},
	}
	for _, c := range []struct {
		family string
		set    map[string]any
		want   string
	}{
		{"mixtral", map[string]any{"sliding_window": 4}, "sliding_window 4"},
		{"mixtral", map[string]any{"rope_scaling": map[string]any{"rope_type": "llama3", "factor": 8, "original_max_position_embeddings": 64}}, "llama3"},
		{"olmoe", map[string]any{"clip_qkv": 8}, "clip_qkv"},
		{"qwen3_moe", map[string]any{"mlp_only_layers": []int{0}}, "dense layers"},
		{"qwen3_moe", map[string]any{"attention_bias": true}, "attention_bias"},
	} {
		hf := map[string]any{}
		for k, v := range base[c.family] {
			hf[k] = v
		}
		for k, v := range c.set {
			hf[k] = v
		}
		b, _ := json.Marshal(hf)
		cfg, err := model.ParseConfig(b)
		if err != nil {
			t.Fatalf("%s %v: %v", c.family, c.set, err)
		}
		_, err = check(cfg)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %v: err = %v, want ErrUnsupported mentioning %q", c.family, c.set, err, c.want)
		}
	}
}

func TestParseOutType(t *testing.T) {
	for _, s := range []string{"f32", "F16", "bf16", "q8_0", "auto"} {
		if _, err := ParseOutType(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	if _, err := ParseOutType("q4_0"); err == nil {
		t.Error("q4_0 accepted")
	}
}
