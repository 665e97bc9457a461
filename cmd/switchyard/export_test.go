package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/internal/atomicfile"
	"github.com/switchyard/switchyard/pkg/gguf"
	"github.com/switchyard/switchyard/pkg/safetensors"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// goldenModelDirs lists testdata/golden/* folders with a config.json.
func goldenModelDirs(t *testing.T) []string {
	t.Helper()
	cfgs, err := filepath.Glob(filepath.Join(goldenRoot, "*", "config.json"))
	if err != nil || len(cfgs) == 0 {
		t.Fatalf("no golden models (%v)", err)
	}
	dirs := make([]string, len(cfgs))
	for i, c := range cfgs {
		dirs[i] = filepath.Dir(c)
	}
	return dirs
}

// exportOK runs `switchyard export` and opens the result.
func exportOK(t *testing.T, dir, outType string) *gguf.File {
	t.Helper()
	out := filepath.Join(t.TempDir(), "model.gguf")
	code, _, errOut := runCLI("export", "--gguf", out, "--model", dir, "--outtype", outType)
	if code != 0 {
		t.Fatalf("export %s --outtype %s: exit %d\n%s", dir, outType, code, errOut)
	}
	f, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestExportGoldenModels exports every golden model in every outtype, reads
// the file back and checks it against config.json and the safetensors
// values: metadata, names, shapes, types, and every element.
func TestExportGoldenModels(t *testing.T) {
	for _, dir := range goldenModelDirs(t) {
		for _, ot := range []string{"f32", "f16", "bf16", "q8_0"} {
			t.Run(filepath.Base(dir)+"/"+ot, func(t *testing.T) {
				f := exportOK(t, dir, ot)
				cfg := readJSON(t, filepath.Join(dir, "config.json"))
				checkMetadata(t, f, cfg)
				checkTensors(t, f, dir, cfg, ot)
			})
		}
	}
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// num returns config.json's number at key (the first key present).
func num(cfg map[string]any, keys ...string) (float64, bool) {
	for _, k := range keys {
		if v, ok := cfg[k].(float64); ok {
			return v, true
		}
	}
	return 0, false
}

// wantArch is llama.cpp's architecture per model_type (convert_hf_to_gguf.py).
var wantArch = map[string]string{
	"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe",
	"olmoe": "olmoe", "deepseek_v2": "deepseek2", "deepseek_v3": "deepseek2",
}

func checkMetadata(t *testing.T, f *gguf.File, cfg map[string]any) {
	t.Helper()
	mt := cfg["model_type"].(string)
	arch := wantArch[mt]
	if got := kvString(t, f, "general.architecture"); got != arch {
		t.Fatalf("general.architecture = %q, want %q", got, arch)
	}
	deepseek := strings.HasPrefix(mt, "deepseek")
	rope := cfg["rope_parameters"].(map[string]any)
	heads, _ := num(cfg, "num_attention_heads")
	hidden, _ := num(cfg, "hidden_size")
	want := map[string]float64{
		"block_count":                      cfg["num_hidden_layers"].(float64),
		"context_length":                   cfg["max_position_embeddings"].(float64),
		"embedding_length":                 hidden,
		"feed_forward_length":              cfg["intermediate_size"].(float64),
		"attention.head_count":             heads,
		"expert_used_count":                cfg["num_experts_per_tok"].(float64),
		"rope.freq_base":                   rope["rope_theta"].(float64),
		"attention.layer_norm_rms_epsilon": cfg["rms_norm_eps"].(float64),
	}
	want["expert_count"], _ = num(cfg, "num_local_experts", "num_experts", "n_routed_experts")
	want["attention.head_count_kv"], _ = num(cfg, "num_key_value_heads")
	switch mt {
	case "mixtral":
		want["vocab_size"], _ = num(cfg, "vocab_size")
		want["rope.dimension_count"] = hidden / heads
	case "qwen2_moe":
		want["expert_feed_forward_length"], _ = num(cfg, "moe_intermediate_size")
		want["expert_shared_feed_forward_length"], _ = num(cfg, "shared_expert_intermediate_size")
	case "qwen3_moe":
		want["expert_feed_forward_length"], _ = num(cfg, "moe_intermediate_size")
		want["attention.key_length"], _ = num(cfg, "head_dim")
		want["attention.value_length"], _ = num(cfg, "head_dim")
	}
	if deepseek {
		r, _ := num(cfg, "kv_lora_rank")
		dr, _ := num(cfg, "qk_rope_head_dim")
		dn, _ := num(cfg, "qk_nope_head_dim")
		dv, _ := num(cfg, "v_head_dim")
		want["attention.head_count_kv"] = 1
		want["leading_dense_block_count"], _ = num(cfg, "first_k_dense_replace")
		want["vocab_size"], _ = num(cfg, "vocab_size")
		want["attention.kv_lora_rank"] = r
		want["attention.key_length"] = r + dr
		want["attention.value_length"] = r
		want["attention.key_length_mla"] = dn + dr
		want["attention.value_length_mla"] = dv
		want["expert_feed_forward_length"], _ = num(cfg, "moe_intermediate_size")
		want["expert_shared_count"], _ = num(cfg, "n_shared_experts")
		want["expert_weights_scale"], _ = num(cfg, "routed_scaling_factor")
		want["rope.dimension_count"] = dr
		want["expert_group_count"], _ = num(cfg, "n_group")
		want["expert_group_used_count"], _ = num(cfg, "topk_group")
		want["expert_gating_func"] = 1 // softmax
		if mt == "deepseek_v3" {
			want["expert_gating_func"] = 2 // sigmoid
			want["attention.q_lora_rank"], _ = num(cfg, "q_lora_rank")
		}
		if mscale, ok := rope["mscale_all_dim"].(float64); ok {
			want["rope.scaling.yarn_log_multiplier"] = 0.1 * mscale
		}
		if rope["rope_type"] == "yarn" {
			want["rope.scaling.factor"] = rope["factor"].(float64)
			want["rope.scaling.original_context_length"] = rope["original_max_position_embeddings"].(float64)
		}
	}
	for k, w := range want {
		key := arch + "." + k
		v, ok := f.Get(key)
		if !ok {
			t.Errorf("%s missing", key)
			continue
		}
		var got float64
		if u, ok := v.Uint(); ok {
			got = float64(u)
		} else if x, ok := v.Float(); ok {
			got = x
			w = float64(float32(w))
		}
		if got != w {
			t.Errorf("%s = %v, want %v", key, v, w)
		}
	}
	if mt == "deepseek_v3" {
		if b, ok := mustKV(t, f, arch+".expert_weights_norm").BoolValue(); !ok || !b {
			t.Errorf("%s.expert_weights_norm = %v, want true (norm_topk_prob)", arch, b)
		}
	}
	if got := kvString(t, f, "tokenizer.ggml.model"); got != "none" {
		t.Errorf("tokenizer.ggml.model = %q, want none (the folder has no tokenizer.json)", got)
	}
}

func mustKV(t *testing.T, f *gguf.File, key string) gguf.Value {
	t.Helper()
	v, ok := f.Get(key)
	if !ok {
		t.Fatalf("%s missing", key)
	}
	return v
}

func kvString(t *testing.T, f *gguf.File, key string) string {
	t.Helper()
	s, ok := mustKV(t, f, key).Str()
	if !ok {
		t.Fatalf("%s is not a string", key)
	}
	return s
}

// expected is what one GGUF tensor must hold: its numpy shape, and its
// float32 values computed from the checkpoint by the rules written out
// here, independently of pkg/gguf/convert.
type expected struct {
	shape  []int
	values []float32
	raw    []byte // the checkpoint bytes when the tensor is a plain copy or stack
	dtype  safetensors.DType
}

var layerRe = regexp.MustCompile(`^model\.layers\.(\d+)\.(.*)$`)
var expertRe = regexp.MustCompile(`^(block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$`)

// renames is tensor_mapping.py for the hub names of these families.
var renames = map[string]string{
	"input_layernorm.weight":              "attn_norm.weight",
	"post_attention_layernorm.weight":     "ffn_norm.weight",
	"self_attn.q_proj.weight":             "attn_q.weight",
	"self_attn.k_proj.weight":             "attn_k.weight",
	"self_attn.v_proj.weight":             "attn_v.weight",
	"self_attn.o_proj.weight":             "attn_output.weight",
	"self_attn.q_proj.bias":               "attn_q.bias",
	"self_attn.k_proj.bias":               "attn_k.bias",
	"self_attn.v_proj.bias":               "attn_v.bias",
	"self_attn.q_norm.weight":             "attn_q_norm.weight",
	"self_attn.k_norm.weight":             "attn_k_norm.weight",
	"self_attn.q_a_proj.weight":           "attn_q_a.weight",
	"self_attn.q_b_proj.weight":           "attn_q_b.weight",
	"self_attn.q_a_layernorm.weight":      "attn_q_a_norm.weight",
	"self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
	"self_attn.kv_a_layernorm.weight":     "attn_kv_a_norm.weight",
	"mlp.gate_proj.weight":                "ffn_gate.weight",
	"mlp.up_proj.weight":                  "ffn_up.weight",
	"mlp.down_proj.weight":                "ffn_down.weight",
	"mlp.gate.weight":                     "ffn_gate_inp.weight",
	"block_sparse_moe.gate.weight":        "ffn_gate_inp.weight",
	"mlp.gate.e_score_correction_bias":    "exp_probs_b.bias",
	"mlp.shared_expert.gate_proj.weight":  "ffn_gate_shexp.weight",
	"mlp.shared_expert.up_proj.weight":    "ffn_up_shexp.weight",
	"mlp.shared_expert.down_proj.weight":  "ffn_down_shexp.weight",
	"mlp.shared_expert_gate.weight":       "ffn_gate_inp_shexp.weight",
	"mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
	"mlp.shared_experts.up_proj.weight":   "ffn_up_shexp.weight",
	"mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}

var expertRenames = map[string]string{
	"w1": "ffn_gate_exps.weight", "w3": "ffn_up_exps.weight", "w2": "ffn_down_exps.weight",
	"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight", "down_proj": "ffn_down_exps.weight",
}

// expectTensors maps every checkpoint tensor to the GGUF tensors it becomes.
func expectTensors(t *testing.T, dir string, cfg map[string]any) map[string]*expected {
	t.Helper()
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	mt := cfg["model_type"].(string)
	heads, _ := num(cfg, "num_attention_heads")
	kvHeads, _ := num(cfg, "num_key_value_heads")
	out := map[string]*expected{}
	type stackPart struct {
		e    int
		name string
	}
	stacks := map[string][]stackPart{}
	for _, name := range set.Names() {
		info, err := set.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		vals, err := set.Float32(name)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := set.Raw(name)
		if err != nil {
			t.Fatal(err)
		}
		plain := &expected{shape: info.Shape, values: vals, raw: raw, dtype: info.DType}
		switch name {
		case "model.embed_tokens.weight":
			out["token_embd.weight"] = plain
			continue
		case "model.norm.weight":
			out["output_norm.weight"] = plain
			continue
		case "lm_head.weight":
			out["output.weight"] = plain
			continue
		}
		m := layerRe.FindStringSubmatch(name)
		if m == nil {
			t.Fatalf("unexpected checkpoint tensor %s", name)
		}
		blk := "blk." + m[1] + "."
		key := m[2]
		if em := expertRe.FindStringSubmatch(key); em != nil {
			e, _ := strconv.Atoi(em[2])
			g := blk + expertRenames[em[3]]
			stacks[g] = append(stacks[g], stackPart{e, name})
			continue
		}
		switch {
		case key == "self_attn.kv_b_proj.weight":
			r, _ := num(cfg, "kv_lora_rank")
			dn, _ := num(cfg, "qk_nope_head_dim")
			dv, _ := num(cfg, "v_head_dim")
			H, R, Dn, Dv := int(heads), int(r), int(dn), int(dv)
			// kv_b.view(H, Dn+Dv, R): k_b = [:, :Dn, :].transpose(1, 2), v_b = [:, Dn:, :].
			k := make([]float32, H*R*Dn)
			v := make([]float32, H*Dv*R)
			at := func(h, row, col int) float32 { return vals[(h*(Dn+Dv)+row)*R+col] }
			for h := 0; h < H; h++ {
				for rr := 0; rr < R; rr++ {
					for n := 0; n < Dn; n++ {
						k[(h*R+rr)*Dn+n] = at(h, n, rr)
					}
				}
				for j := 0; j < Dv; j++ {
					for rr := 0; rr < R; rr++ {
						v[(h*Dv+j)*R+rr] = at(h, Dn+j, rr)
					}
				}
			}
			out[blk+"attn_k_b.weight"] = &expected{shape: []int{H, R, Dn}, values: k}
			out[blk+"attn_v_b.weight"] = &expected{shape: []int{H, Dv, R}, values: v}
		case mt == "mixtral" && (key == "self_attn.q_proj.weight" || key == "self_attn.k_proj.weight"):
			// numpy: w.reshape(n, 2, rows/n/2, cols).swapaxes(1, 2).reshape(rows, cols)
			n := int(heads)
			if key == "self_attn.k_proj.weight" {
				n = int(kvHeads)
			}
			rows, cols := info.Shape[0], info.Shape[1]
			half := rows / n / 2
			p := make([]float32, len(vals))
			for h := 0; h < n; h++ {
				for i := 0; i < 2; i++ {
					for j := 0; j < half; j++ {
						src := ((h*2+i)*half + j) * cols // index (h, i, j) before the swap
						dst := ((h*half+j)*2 + i) * cols // index (h, j, i) after it
						copy(p[dst:dst+cols], vals[src:src+cols])
					}
				}
			}
			out[blk+renames[key]] = &expected{shape: info.Shape, values: p}
		default:
			g, ok := renames[key]
			if !ok {
				t.Fatalf("no llama.cpp name for %s", name)
			}
			out[blk+g] = plain
		}
	}
	for g, parts := range stacks {
		slices.SortFunc(parts, func(a, b stackPart) int { return a.e - b.e })
		ex := &expected{}
		for i, p := range parts {
			if p.e != i {
				t.Fatalf("%s: expert %d missing", g, i)
			}
			info, _ := set.Info(p.name)
			vals, _ := set.Float32(p.name)
			raw, _ := set.Raw(p.name)
			ex.shape = append([]int{len(parts)}, info.Shape...)
			ex.values = append(ex.values, vals...)
			ex.raw = append(ex.raw, raw...)
			ex.dtype = info.DType
		}
		out[g] = ex
	}
	return out
}

// wantType is the GGUF type the converter gives a tensor for outtype ot.
func wantType(name string, shape []int, ot string) gguf.GGMLType {
	if len(shape) <= 1 || strings.HasSuffix(name, "_norm.weight") || !strings.HasSuffix(name, ".weight") ||
		strings.HasSuffix(name, ".ffn_gate_inp.weight") || strings.HasSuffix(name, ".ffn_gate_inp_shexp.weight") {
		return gguf.F32
	}
	switch ot {
	case "f32":
		return gguf.F32
	case "bf16":
		return gguf.BF16
	case "q8_0":
		if shape[len(shape)-1]%32 != 0 {
			return gguf.F16
		}
		return gguf.Q8_0
	}
	return gguf.F16
}

func checkTensors(t *testing.T, f *gguf.File, dir string, cfg map[string]any, ot string) {
	t.Helper()
	want := expectTensors(t, dir, cfg)
	if len(f.Tensors) != len(want) {
		var names []string
		for _, ti := range f.Tensors {
			names = append(names, ti.Name)
		}
		t.Errorf("%d tensors in the file, %d expected; file has %v", len(f.Tensors), len(want), names)
	}
	for _, ti := range f.Tensors {
		ex, ok := want[ti.Name]
		if !ok {
			t.Errorf("unexpected tensor %s", ti.Name)
			continue
		}
		var shape []int
		for _, d := range ti.Shape() {
			shape = append(shape, int(d))
		}
		if !slices.Equal(shape, ex.shape) {
			t.Errorf("%s: shape %v, want %v", ti.Name, shape, ex.shape)
			continue
		}
		if wt := wantType(ti.Name, shape, ot); ti.Type != wt {
			t.Errorf("%s: type %s, want %s", ti.Name, ti.Type, wt)
			continue
		}
		data, err := f.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		// Bytes: a tensor copied or stacked in its checkpoint dtype is the
		// checkpoint's bytes.
		if ex.raw != nil && (ex.dtype == safetensors.F32 && ti.Type == gguf.F32 || ex.dtype == safetensors.BF16 && ti.Type == gguf.BF16) {
			if !bytes.Equal(data, ex.raw) {
				t.Errorf("%s: bytes differ from the checkpoint's", ti.Name)
			}
		}
		got := make([]float32, len(ex.values))
		if err := gguf.Decode(ti.Type, got, data); err != nil {
			t.Fatalf("%s: %v", ti.Name, err)
		}
		if err := compare(ti.Type, got, ex.values); err != nil {
			t.Errorf("%s (%s): %v", ti.Name, ti.Type, err)
		}
	}
}

// compare checks decoded values against the checkpoint's: exact for F32,
// exactly the round-to-nearest-even value for F16 and BF16, within the
// Q8_0 bound of each block for Q8_0.
func compare(typ gguf.GGMLType, got, want []float32) error {
	for i := range want {
		var ok bool
		switch typ {
		case gguf.F32:
			ok = got[i] == want[i]
		case gguf.F16:
			ok = got[i] == tensor.F16ToF32One(tensor.F32ToF16One(want[i]))
		case gguf.BF16:
			ok = math.Float32bits(got[i]) == uint32(tensor.F32ToBF16One(want[i]))<<16
		case gguf.Q8_0:
			b := i / gguf.QK8_0 * gguf.QK8_0
			ok = math.Abs(float64(got[i]-want[i])) <= gguf.Q8_0Bound(want[b:b+gguf.QK8_0])
		}
		if !ok {
			return fmt.Errorf("element %d = %g, checkpoint %g", i, got[i], want[i])
		}
	}
	return nil
}

// copyModel copies a golden model folder's config and weights to a new
// folder.
func copyModel(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, n := range []string{"config.json", "model.safetensors"} {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestExportVocabulary: with a tokenizer.json the file carries the gpt2
// vocabulary as _set_vocab_gpt2 writes it.
func TestExportVocabulary(t *testing.T) {
	for _, c := range []struct{ model, tok, pre string }{
		{"qwen2_moe", "tokenizer_bpe_qwen2", "qwen2"},
		{"olmoe", "tokenizer_bpe_gpt2", "gpt-2"},
	} {
		t.Run(c.model, func(t *testing.T) {
			dir := copyModel(t, filepath.Join(goldenRoot, c.model))
			tokJSON, err := os.ReadFile(filepath.Join(goldenRoot, c.tok, "tokenizer.json"))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, "tokenizer.json"), tokJSON, 0o644)
			os.WriteFile(filepath.Join(dir, "tokenizer_config.json"),
				[]byte(`{"eos_token": "<|im_end|>", "pad_token": {"content": "<|endoftext|>"}, "add_bos_token": false, "chat_template": "{{ messages }}"}`), 0o644)
			f := exportOK(t, dir, "f16")

			var tj struct {
				Model struct {
					Vocab  map[string]int `json:"vocab"`
					Merges [][2]string    `json:"merges"`
				} `json:"model"`
				Added []struct {
					ID      int    `json:"id"`
					Content string `json:"content"`
					Special bool   `json:"special"`
				} `json:"added_tokens"`
			}
			if err := json.Unmarshal(tokJSON, &tj); err != nil {
				t.Fatal(err)
			}
			if got := kvString(t, f, "tokenizer.ggml.model"); got != "gpt2" {
				t.Errorf("tokenizer.ggml.model = %q", got)
			}
			if got := kvString(t, f, "tokenizer.ggml.pre"); got != c.pre {
				t.Errorf("tokenizer.ggml.pre = %q, want %q", got, c.pre)
			}
			cfg := readJSON(t, filepath.Join(dir, "config.json"))
			vocab, _ := num(cfg, "vocab_size")
			tokens, ok := mustKV(t, f, "tokenizer.ggml.tokens").Strings()
			if !ok || len(tokens) != int(vocab) {
				t.Fatalf("%d tokens, want vocab_size %v", len(tokens), vocab)
			}
			types, ok := mustKV(t, f, "tokenizer.ggml.token_type").Ints()
			if !ok || len(types) != len(tokens) {
				t.Fatalf("token_type: %d entries", len(types))
			}
			if et := mustKV(t, f, "tokenizer.ggml.token_type").ElemType(); et != gguf.TypeInt32 {
				t.Errorf("token_type element type %s, want int32", et)
			}
			want := make([]string, len(tokens))
			wantTypes := make([]int64, len(tokens))
			for i := range want {
				want[i], wantTypes[i] = fmt.Sprintf("[PAD%d]", i), 5
			}
			for tok, id := range tj.Model.Vocab {
				want[id], wantTypes[id] = tok, 1
			}
			for _, a := range tj.Added {
				want[a.ID], wantTypes[a.ID] = a.Content, 4
				if a.Special {
					wantTypes[a.ID] = 3
				}
			}
			for i := range want {
				if tokens[i] != want[i] || types[i] != wantTypes[i] {
					t.Fatalf("token %d = %q type %d, want %q type %d", i, tokens[i], types[i], want[i], wantTypes[i])
				}
			}
			merges, ok := mustKV(t, f, "tokenizer.ggml.merges").Strings()
			if !ok || len(merges) != len(tj.Model.Merges) {
				t.Fatalf("%d merges, want %d", len(merges), len(tj.Model.Merges))
			}
			for i, m := range tj.Model.Merges {
				if merges[i] != m[0]+" "+m[1] {
					t.Fatalf("merge %d = %q, want %q", i, merges[i], m[0]+" "+m[1])
				}
			}
			idOf := func(content string) uint64 {
				for _, a := range tj.Added {
					if a.Content == content {
						return uint64(a.ID)
					}
				}
				t.Fatalf("no added token %q", content)
				return 0
			}
			if u, _ := mustKV(t, f, "tokenizer.ggml.eos_token_id").Uint(); u != idOf("<|im_end|>") {
				t.Errorf("eos_token_id = %d, want tokenizer_config's <|im_end|>", u)
			}
			if u, _ := mustKV(t, f, "tokenizer.ggml.padding_token_id").Uint(); u != idOf("<|endoftext|>") {
				t.Errorf("padding_token_id = %d", u)
			}
			if b, ok := mustKV(t, f, "tokenizer.ggml.add_bos_token").BoolValue(); !ok || b {
				t.Errorf("add_bos_token = %v", b)
			}
			if s := kvString(t, f, "tokenizer.chat_template"); s != "{{ messages }}" {
				t.Errorf("chat_template = %q", s)
			}
			// config.json's ids fill in what tokenizer_config.json does not
			// name (OLMoE: eos 50279 is beyond this toy vocabulary but
			// written as SpecialVocab writes it; qwen2_moe has none).
			if bos, ok := num(cfg, "bos_token_id"); ok {
				if u, _ := mustKV(t, f, "tokenizer.ggml.bos_token_id").Uint(); float64(u) != bos {
					t.Errorf("bos_token_id = %d, want config.json's %v", u, bos)
				}
			}
		})
	}
}

// TestExportRefusesBadInput: a clear error, exit 1, and no file (nor
// temporary file) left; an existing output is left untouched.
func TestExportRefusesBadInput(t *testing.T) {
	mixtral := filepath.Join(goldenRoot, "mixtral")
	unknown := t.TempDir()
	os.WriteFile(filepath.Join(unknown, "config.json"), []byte(`{"model_type": "llama", "hidden_size": 8}`), 0o644)
	sliding := copyModel(t, mixtral)
	cfg := readJSON(t, filepath.Join(sliding, "config.json"))
	cfg["sliding_window"] = 16
	b, _ := json.Marshal(cfg)
	os.WriteFile(filepath.Join(sliding, "config.json"), b, 0o644)
	noWeights := t.TempDir()
	cb, _ := os.ReadFile(filepath.Join(mixtral, "config.json"))
	os.WriteFile(filepath.Join(noWeights, "config.json"), cb, 0o644)
	badTok := copyModel(t, mixtral)
	os.WriteFile(filepath.Join(badTok, "tokenizer.json"), []byte(`{"model": {"type": "Unigram"}}`), 0o644)
	file := filepath.Join(t.TempDir(), "a-file")
	os.WriteFile(file, []byte("x"), 0o644)

	for _, c := range []struct {
		name, model, out, outType, want string
	}{
		{"missing config", t.TempDir(), "", "f16", "config.json"},
		{"unknown model_type", unknown, "", "f16", `model_type "llama"`},
		{"no weights", noWeights, "", "f16", "safetensors"},
		{"sliding window", sliding, "", "f16", "sliding_window 16"},
		{"bad tokenizer", badTok, "", "f16", "--no-vocab"},
		{"bad outtype", mixtral, "", "q4_k", "unknown outtype"},
		{"unwritable output", mixtral, filepath.Join(file, "out.gguf"), "f16", "not a directory"},
		{"missing output folder", mixtral, filepath.Join(t.TempDir(), "no", "out.gguf"), "f16", "no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			outDir := t.TempDir()
			out := c.out
			if out == "" {
				out = filepath.Join(outDir, "out.gguf")
				os.WriteFile(out, []byte("previous"), 0o644)
			}
			code, _, errOut := runCLI("export", "--gguf", out, "--model", c.model, "--outtype", c.outType)
			if code != 1 || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit 1 mentioning %q", code, errOut, c.want)
			}
			if c.out == "" {
				if b, _ := os.ReadFile(out); string(b) != "previous" {
					t.Errorf("the existing output was changed to %q", b)
				}
				entries, _ := os.ReadDir(outDir)
				if len(entries) != 1 {
					t.Errorf("output folder holds %d entries, want only the previous file", len(entries))
				}
			}
		})
	}
	if code, _, errOut := runCLI("export", "--model", mixtral); code != 1 || !strings.Contains(errOut, "--gguf and --model are required") {
		t.Errorf("no --gguf: exit %d, %q", code, errOut)
	}
}

// TestWriteAtomicCleansUp: a write that fails half way leaves neither the
// output nor the temporary file.
func TestWriteAtomicCleansUp(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "m.gguf")
	boom := errors.New("boom")
	err := atomicfile.Write(out, 0o644, func(w io.Writer) error {
		w.Write([]byte("partial data"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
	if err := atomicfile.Write(out, 0o644, func(w io.Writer) error { _, err := w.Write([]byte("ok")); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "ok" {
		t.Errorf("content %q", b)
	}
}
