package model

// Variants: other sizes and settings of the six families, built as HF-style
// config.json maps with random weights, checked against the float64
// reference of reference_test.go. Nothing here is shaped like the golden
// models: widths, head counts, GQA ratios, head_dim, vocabularies, layer
// counts, expert counts, top-k, RoPE types, sparse-layer layouts and dtypes
// all differ.

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// variant is one configuration to check.
type variant struct {
	name     string
	hf       map[string]any
	bf16     bool  // checkpoint stored as bfloat16
	keepBF16 bool  // LoadOptions.KeepBF16
	lens     []int // lengths of the batch's sequences
	// layout, if set, is the expected dense (D) / MoE (M) layer pattern;
	// both ParseConfig and the reference must agree with it.
	layout string
	// knobs edit the config in ways the variant is meant to exercise; each
	// must move the reference's logits, proving the setting is not inert
	// for these weights and inputs.
	knobs map[string]func(map[string]any)
}

// hfBase is the part of config.json every family shares.
func hfBase(fam string, D, H, Hkv, V, L int) map[string]any {
	return map[string]any{
		"model_type": fam, "hidden_size": D, "num_attention_heads": H, "num_key_value_heads": Hkv,
		"vocab_size": V, "num_hidden_layers": L, "hidden_act": "silu", "rms_norm_eps": 1e-6,
		"max_position_embeddings": 256, "tie_word_embeddings": false,
	}
}

// with sets keys of m (a value of nil writes JSON null) and returns m.
func with(m map[string]any, kv ...any) map[string]any {
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

func ropeDefault(theta float64) map[string]any {
	return map[string]any{"rope_type": "default", "rope_theta": theta}
}

func setKey(k string, v any) func(map[string]any) { return func(m map[string]any) { m[k] = v } }
func dropKey(k string) func(map[string]any)       { return func(m map[string]any) { delete(m, k) } }

var variants = []variant{
	// Mixtral
	{
		name: "mixtral/gqa3-theta1e6",
		hf: with(hfBase("mixtral", 48, 6, 2, 211, 2), "head_dim", nil, "intermediate_size", 40,
			"num_local_experts", 6, "num_experts_per_tok", 2, "sliding_window", nil,
			"rope_parameters", ropeDefault(1e6)),
		lens: []int{7, 13, 4},
	},
	{
		name: "mixtral/mqa-headdim24-sliding5-linear-tied-bf16",
		hf: with(hfBase("mixtral", 64, 4, 1, 157, 3), "head_dim", 24, "intermediate_size", 32,
			"num_local_experts", 8, "num_experts_per_tok", 3, "sliding_window", 5, "tie_word_embeddings", true,
			"rope_parameters", map[string]any{"rope_type": "linear", "factor": 2.5, "rope_theta": 10000.0}),
		bf16: true, keepBF16: true,
		lens:   []int{12, 16, 9},
		layout: "MMM",
		knobs: map[string]func(map[string]any){
			"sliding_window": setKey("sliding_window", nil),
			"linear rope":    setKey("rope_parameters", ropeDefault(10000)),
		},
	},
	{
		name: "mixtral/mha-top1-yarn-attention_factor-bf16widened",
		hf: with(hfBase("mixtral", 32, 4, 4, 120, 2), "intermediate_size", 24, "max_position_embeddings", 128,
			"num_local_experts", 4, "num_experts_per_tok", 1,
			"rope_parameters", map[string]any{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
				"beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.2, "rope_theta": 500.0}),
		bf16: true,
		lens: []int{5, 11, 8},
		knobs: map[string]func(map[string]any){
			"yarn": setKey("rope_parameters", ropeDefault(500)),
		},
	},
	{
		name: "mixtral/llama3-rope_scaling-spelling",
		hf: with(hfBase("mixtral", 64, 8, 4, 300, 2), "head_dim", 16, "intermediate_size", 48,
			"num_local_experts", 8, "num_experts_per_tok", 2, "rope_theta", 10000.0,
			"rope_scaling", map[string]any{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
				"high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
		lens: []int{9, 3, 14},
		knobs: map[string]func(map[string]any){
			"llama3": dropKey("rope_scaling"),
		},
	},

	// Qwen2-MoE
	{
		name: "qwen2_moe/sparse-step2-norm_topk-qkv_bias",
		hf: with(hfBase("qwen2_moe", 64, 8, 2, 190, 3), "intermediate_size", 72, "moe_intermediate_size", 24,
			"shared_expert_intermediate_size", 56, "num_experts", 10, "num_experts_per_tok", 3,
			"norm_topk_prob", true, "decoder_sparse_step", 2, "mlp_only_layers", []int{}, "qkv_bias", true,
			"use_sliding_window", false, "rope_parameters", ropeDefault(10000)),
		lens:   []int{6, 14, 10},
		layout: "DMD",
		knobs: map[string]func(map[string]any){
			"norm_topk_prob": setKey("norm_topk_prob", false),
		},
	},
	{
		name: "qwen2_moe/mlp_only0-headdim12-nobias-yarn-tied-bf16",
		hf: with(hfBase("qwen2_moe", 40, 4, 4, 150, 3), "head_dim", 12, "intermediate_size", 64,
			"moe_intermediate_size", 20, "shared_expert_intermediate_size", 36, "num_experts", 6,
			"num_experts_per_tok", 2, "norm_topk_prob", false, "decoder_sparse_step", 1, "mlp_only_layers", []int{0},
			"qkv_bias", false, "tie_word_embeddings", true, "max_position_embeddings", 128,
			"rope_parameters", map[string]any{"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64, "rope_theta": 10000.0}),
		bf16: true, keepBF16: true,
		lens:   []int{8, 5, 12},
		layout: "DMM",
		knobs: map[string]func(map[string]any){
			"yarn": setKey("rope_parameters", ropeDefault(10000)),
		},
	},
	{
		name: "qwen2_moe/layer_types-sliding3",
		hf: with(hfBase("qwen2_moe", 32, 4, 2, 110, 3), "intermediate_size", 40, "moe_intermediate_size", 16,
			"shared_expert_intermediate_size", 24, "num_experts", 6, "num_experts_per_tok", 2, "norm_topk_prob", false,
			"use_sliding_window", true, "sliding_window", 3, "max_window_layers", 2,
			"layer_types", []string{"full_attention", "full_attention", "sliding_attention"},
			"rope_parameters", ropeDefault(10000)),
		lens:   []int{9, 12, 6},
		layout: "MMM",
		knobs: map[string]func(map[string]any){
			"layer_types": setKey("layer_types", []string{"full_attention", "full_attention", "full_attention"}),
		},
	},
	{
		name: "qwen2_moe/top1-linear",
		hf: with(hfBase("qwen2_moe", 32, 2, 1, 100, 2), "intermediate_size", 40, "moe_intermediate_size", 16,
			"shared_expert_intermediate_size", 16, "num_experts", 4, "num_experts_per_tok", 1, "norm_topk_prob", true,
			"rope_parameters", map[string]any{"rope_type": "linear", "factor": 3.0, "rope_theta": 10000.0}),
		lens: []int{10, 4, 7},
		knobs: map[string]func(map[string]any){
			"norm_topk_prob": setKey("norm_topk_prob", false),
		},
	},

	// Qwen3-MoE
	{
		name: "qwen3_moe/headdim20-attention_bias-theta1e6",
		hf: with(hfBase("qwen3_moe", 48, 4, 2, 233, 2), "head_dim", 20, "intermediate_size", 64,
			"moe_intermediate_size", 24, "num_experts", 12, "num_experts_per_tok", 4, "norm_topk_prob", true,
			"attention_bias", true, "use_sliding_window", false, "rope_parameters", ropeDefault(1e6)),
		lens: []int{7, 12, 5},
		knobs: map[string]func(map[string]any){
			"norm_topk_prob": setKey("norm_topk_prob", false),
		},
	},
	{
		name: "qwen3_moe/sparse-step2-mlp_only3-yarn-notruncate-bf16widened",
		hf: with(hfBase("qwen3_moe", 64, 4, 2, 180, 4), "intermediate_size", 56, "moe_intermediate_size", 20,
			"num_local_experts", 8, "num_experts_per_tok", 2, "norm_topk_prob", false,
			"decoder_sparse_step", 2, "mlp_only_layers", []int{3},
			"rope_parameters", map[string]any{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
				"beta_fast": 8.0, "beta_slow": 1.0, "truncate": false, "rope_theta": 10000.0}),
		bf16:   true,
		lens:   []int{9, 6, 11},
		layout: "DMDD",
		knobs: map[string]func(map[string]any){
			"truncate": func(m map[string]any) { m["rope_parameters"].(map[string]any)["truncate"] = true },
		},
	},
	{
		name: "qwen3_moe/mqa-headdim16-sliding4-llama3-tied",
		hf: with(hfBase("qwen3_moe", 32, 4, 1, 128, 2), "head_dim", 16, "intermediate_size", 40,
			"moe_intermediate_size", 16, "num_experts", 6, "num_experts_per_tok", 3, "norm_topk_prob", true,
			"use_sliding_window", true, "sliding_window", 4, "tie_word_embeddings", true,
			"rope_parameters", map[string]any{"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
				"high_freq_factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 10000.0}),
		lens: []int{11, 15, 6},
		knobs: map[string]func(map[string]any){
			"use_sliding_window": setKey("use_sliding_window", false),
		},
	},

	// OLMoE
	{
		name: "olmoe/gqa2-clip_qkv0.8",
		hf: with(hfBase("olmoe", 64, 8, 4, 160, 2), "intermediate_size", 32, "num_experts", 8,
			"num_experts_per_tok", 2, "norm_topk_prob", false, "clip_qkv", 0.8, "rope_parameters", ropeDefault(10000)),
		lens: []int{9, 6, 13},
		knobs: map[string]func(map[string]any){
			"clip_qkv": setKey("clip_qkv", nil),
		},
	},
	{
		name: "olmoe/attention_bias-norm_topk-linear-bf16",
		hf: with(hfBase("olmoe", 48, 6, 6, 140, 3), "intermediate_size", 40, "num_experts", 6,
			"num_experts_per_tok", 3, "norm_topk_prob", true, "attention_bias", true, "clip_qkv", nil,
			"rope_parameters", map[string]any{"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
		bf16: true, keepBF16: true,
		lens: []int{5, 10, 12},
		knobs: map[string]func(map[string]any){
			"norm_topk_prob": setKey("norm_topk_prob", false),
		},
	},
	{
		name: "olmoe/mqa-yarn-mscale-only-tied-clip1.5",
		hf: with(hfBase("olmoe", 32, 2, 1, 100, 2), "intermediate_size", 24, "num_experts", 4,
			"num_experts_per_tok", 2, "norm_topk_prob", false, "clip_qkv", 1.5, "tie_word_embeddings", true,
			"rope_parameters", map[string]any{"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
				"mscale": 1.0, "rope_theta": 10000.0}),
		lens: []int{4, 14, 8},
		knobs: map[string]func(map[string]any){
			"clip_qkv": setKey("clip_qkv", nil),
		},
	},

	// DeepSeek-V2
	{
		name: "deepseek_v2/greedy-qlora-rope6-scaling1.5",
		hf: with(hfBase("deepseek_v2", 48, 4, 4, 170, 3), "intermediate_size", 64, "moe_intermediate_size", 20,
			"n_routed_experts", 8, "num_experts_per_tok", 2, "topk_method", "greedy", "n_group", nil, "topk_group", nil,
			"n_shared_experts", 1, "first_k_dense_replace", 1, "routed_scaling_factor", 1.5, "norm_topk_prob", false,
			"q_lora_rank", 24, "kv_lora_rank", 16, "qk_nope_head_dim", 12, "qk_rope_head_dim", 6, "v_head_dim", 10,
			"head_dim", 6, "rope_parameters", ropeDefault(10000)),
		lens:   []int{8, 12, 5},
		layout: "DMM",
		knobs: map[string]func(map[string]any){
			"routed_scaling_factor": setKey("routed_scaling_factor", 1.0),
		},
	},
	{
		name: "deepseek_v2/group_limited_greedy-yarn-factor-ne-ratio",
		hf: with(hfBase("deepseek_v2", 64, 4, 4, 200, 2), "intermediate_size", 80, "moe_intermediate_size", 16,
			"n_routed_experts", 12, "num_experts_per_tok", 3, "topk_method", "group_limited_greedy", "n_group", 4,
			"topk_group", 2, "n_shared_experts", 2, "first_k_dense_replace", 0, "routed_scaling_factor", 1.0,
			"q_lora_rank", nil, "kv_lora_rank", 24, "qk_nope_head_dim", 16, "qk_rope_head_dim", 8, "v_head_dim", 16,
			"rope_parameters", map[string]any{"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
				"mscale": 0.707, "mscale_all_dim": 0.707, "beta_fast": 32.0, "beta_slow": 1.0, "rope_theta": 10000.0}),
		lens:   []int{10, 7, 13},
		layout: "MM",
		knobs: map[string]func(map[string]any){
			"group_limited_greedy": setKey("topk_method", "greedy"),
			"mscale_all_dim": func(m map[string]any) {
				delete(m["rope_parameters"].(map[string]any), "mscale_all_dim")
			},
		},
	},
	{
		name: "deepseek_v2/yarn-mscale-ratio-tied-bf16",
		hf: with(hfBase("deepseek_v2", 32, 2, 2, 120, 2), "intermediate_size", 48, "moe_intermediate_size", 16,
			"n_routed_experts", 6, "num_experts_per_tok", 2, "topk_method", "greedy", "n_shared_experts", 1,
			"first_k_dense_replace", 1, "routed_scaling_factor", 2.0, "tie_word_embeddings", true,
			"q_lora_rank", 16, "kv_lora_rank", 12, "qk_nope_head_dim", 8, "qk_rope_head_dim", 4, "v_head_dim", 8,
			"rope_parameters", map[string]any{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
				"mscale": 1.0, "mscale_all_dim": 0.5, "rope_theta": 10000.0}),
		bf16: true, keepBF16: true,
		lens: []int{6, 9, 15},
		knobs: map[string]func(map[string]any){
			"mscale": func(m map[string]any) { m["rope_parameters"].(map[string]any)["mscale"] = 0.5 },
		},
	},

	{
		name: "deepseek_v2/attention_bias-qlora-linear",
		hf: with(hfBase("deepseek_v2", 48, 4, 4, 140, 2), "intermediate_size", 56, "moe_intermediate_size", 16,
			"n_routed_experts", 8, "num_experts_per_tok", 2, "topk_method", "greedy", "n_shared_experts", 1,
			"first_k_dense_replace", 1, "routed_scaling_factor", 1.0, "attention_bias", true,
			"q_lora_rank", 16, "kv_lora_rank", 12, "qk_nope_head_dim", 8, "qk_rope_head_dim", 4, "v_head_dim", 8,
			"rope_parameters", map[string]any{"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
		lens:   []int{6, 11, 9},
		layout: "DM",
	},

	// DeepSeek-V3
	{
		name: "deepseek_v3/groups4-top2-qlora-interleave",
		hf: with(hfBase("deepseek_v3", 48, 4, 4, 190, 3), "intermediate_size", 64, "moe_intermediate_size", 16,
			"n_routed_experts", 16, "num_experts_per_tok", 4, "n_group", 4, "topk_group", 2, "norm_topk_prob", true,
			"routed_scaling_factor", 2.5, "n_shared_experts", 1, "first_k_dense_replace", 1,
			"q_lora_rank", 20, "kv_lora_rank", 16, "qk_nope_head_dim", 12, "qk_rope_head_dim", 8, "v_head_dim", 12,
			"rope_interleave", true, "rope_parameters", ropeDefault(10000)),
		lens:   []int{7, 12, 9},
		layout: "DMM",
		knobs: map[string]func(map[string]any){
			"n_group":        setKey("topk_group", 4),
			"norm_topk_prob": setKey("norm_topk_prob", false),
		},
	},
	{
		name: "deepseek_v3/no-interleave-yarn-notruncate-nogroups-bf16widened",
		hf: with(hfBase("deepseek_v3", 64, 4, 4, 220, 2), "intermediate_size", 72, "moe_intermediate_size", 20,
			"n_routed_experts", 8, "num_experts_per_tok", 3, "n_group", 1, "topk_group", 1, "norm_topk_prob", false,
			"routed_scaling_factor", 1.0, "n_shared_experts", 2, "first_k_dense_replace", 0,
			"q_lora_rank", nil, "kv_lora_rank", 20, "qk_nope_head_dim", 16, "qk_rope_head_dim", 8, "v_head_dim", 16,
			"rope_interleave", false,
			"rope_parameters", map[string]any{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
				"mscale": 1.0, "mscale_all_dim": 1.0, "truncate": false, "rope_theta": 10000.0}),
		bf16: true,
		lens: []int{11, 5, 8},
		knobs: map[string]func(map[string]any){
			"rope_interleave": setKey("rope_interleave", true),
		},
	},
	{
		name: "deepseek_v3/groups2-top1-linear-tied-bf16",
		hf: with(hfBase("deepseek_v3", 32, 2, 2, 128, 2), "intermediate_size", 40, "moe_intermediate_size", 12,
			"n_routed_experts", 8, "num_experts_per_tok", 2, "n_group", 2, "topk_group", 1, "norm_topk_prob", true,
			"routed_scaling_factor", 1.8, "n_shared_experts", 1, "first_k_dense_replace", 1, "tie_word_embeddings", true,
			"q_lora_rank", 16, "kv_lora_rank", 12, "qk_nope_head_dim", 8, "qk_rope_head_dim", 4, "v_head_dim", 8,
			"rope_parameters", map[string]any{"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
		bf16: true, keepBF16: true,
		lens: []int{5, 13, 9},
		knobs: map[string]func(map[string]any){
			"topk_group": setKey("topk_group", 2),
		},
	},
}

func variantByName(t *testing.T, name string) variant {
	t.Helper()
	for _, v := range variants {
		if v.name == name {
			return v
		}
	}
	t.Fatalf("no variant %q", name)
	return variant{}
}

// builtVariant is a variant with weights, a batch, and its reference output.
type builtVariant struct {
	variant
	cfgJSON []byte
	cfg     *Config
	src     *mapSource
	ids     [][]int32
	ref     *refOutput
	seed    uint64
}

// minRoutingMargin is the smallest selection gap the reference must see:
// below it float32 and float64 may legitimately choose different experts.
const minRoutingMargin = 1e-5

// build makes the checkpoint and batch of v, trying seeds in order until
// the reference sees no routing near-tie (and no expert picked from a
// dropped group, where transformers' 0.0 masking and the -Inf masking of
// DeepSeek's code disagree).
func (v variant) build(t *testing.T) *builtVariant {
	t.Helper()
	data, err := json.Marshal(v.hf)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	base := fnvSeed(v.name)
	for try := uint64(0); try < 50; try++ {
		seed := base + try
		r := rand.New(rand.NewPCG(seed, 0x51c0ffee))
		src := randomCheckpoint(cfg, r, v.bf16)
		ids := make([][]int32, len(v.lens))
		for b, n := range v.lens {
			for range n {
				ids[b] = append(ids[b], int32(r.IntN(cfg.Vocab)))
			}
		}
		ref, err := refForward(data, src, ids)
		if err != nil {
			t.Fatal(err)
		}
		if ref.Stats.minMargin < minRoutingMargin || ref.Stats.maskedPicks > 0 {
			t.Logf("seed %d: routing margin %.2g, %d masked picks; next seed", seed, ref.Stats.minMargin, ref.Stats.maskedPicks)
			continue
		}
		if v.layout != "" {
			if got := layoutString(cfg.LayerIsMoE); got != v.layout {
				t.Errorf("ParseConfig sparse layout %s, want %s", got, v.layout)
			}
			if got := layoutString(ref.Sparse); got != v.layout {
				t.Errorf("reference sparse layout %s, want %s", got, v.layout)
			}
		}
		return &builtVariant{variant: v, cfgJSON: data, cfg: cfg, src: src, ids: ids, ref: ref, seed: seed}
	}
	t.Fatalf("no seed without routing near-ties")
	return nil
}

func (b *builtVariant) load(t *testing.T) *Model {
	t.Helper()
	m, _, err := Load(b.cfg, b.src, LoadOptions{KeepBF16: b.keepBF16})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return m
}

func layoutString(moe []bool) string {
	b := make([]byte, len(moe))
	for i, m := range moe {
		b[i] = 'D'
		if m {
			b[i] = 'M'
		}
	}
	return string(b)
}

func fnvSeed(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// randomCheckpoint fills every tensor cfg.Tensors lists: norms near 1,
// matrices N(0, 1/in) so activations stay O(1) at any width, embeddings
// N(0, 1), projection biases N(0, 0.1^2), score-correction biases U(-0.1, 0.1).
func randomCheckpoint(cfg *Config, r *rand.Rand, bf16 bool) *mapSource {
	src := newMapSource()
	for _, s := range cfg.Tensors() {
		v := make([]float32, s.Elems())
		cols := s.Shape[len(s.Shape)-1]
		for i := range v {
			var x float64
			switch {
			case s.Role == RoleNorm:
				x = 1 + 0.2*(2*r.Float64()-1)
			case strings.HasSuffix(s.Name, "e_score_correction_bias"):
				x = 0.1 * (2*r.Float64() - 1)
			case s.Role == RoleBias:
				x = 0.1 * r.NormFloat64()
			case s.Name == "model.embed_tokens.weight":
				x = r.NormFloat64()
			default:
				x = r.NormFloat64() / math.Sqrt(float64(cols))
			}
			v[i] = float32(x)
		}
		src.put(s.Name, s.Shape, v, bf16)
	}
	return src
}

// TestVariantsMatchReference loads every variant and compares Forward
// (all logits, every hidden state) with the float64 reference.
func TestVariantsMatchReference(t *testing.T) {
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			b := v.build(t)
			m := b.load(t)
			seqs := make([]*Seq, len(b.ids))
			for i := range seqs {
				seqs[i] = m.NewSeq()
			}
			out, err := m.Forward(context.Background(), seqs, b.ids, Options{AllLogits: true, Hidden: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(out.Hidden) != b.cfg.Layers+1 {
				t.Errorf("%d hidden states, want L+1 = %d", len(out.Hidden), b.cfg.Layers+1)
			}
			e, worst := compareWithRef(t, out, b.ref, 1e-4)
			if b.cfg.MoE.ScoreBias && b.ref.Stats.biasChanged == 0 {
				t.Errorf("e_score_correction_bias changed no routing decision: the bias is not exercised")
			}
			t.Logf("seed %d, layers %s, routing margin %.2g over %d decisions (%d changed by a score bias): logits rel L2 %.2g, worst hidden %.2g",
				b.seed, layoutString(b.cfg.LayerIsMoE), b.ref.Stats.minMargin, b.ref.Stats.routed, b.ref.Stats.biasChanged, e, worst)
		})
	}
}

// TestVariantKnobsAreLive proves each variant's distinguishing settings
// matter for its weights and inputs: flipping one in the config moves the
// reference's logits far beyond the tolerance the fast path is held to.
func TestVariantKnobsAreLive(t *testing.T) {
	for _, v := range variants {
		if len(v.knobs) == 0 {
			continue
		}
		t.Run(v.name, func(t *testing.T) {
			b := v.build(t)
			want := flatRef(b.ref.Logits)
			for name, edit := range v.knobs {
				var hf map[string]any
				if err := json.Unmarshal(b.cfgJSON, &hf); err != nil {
					t.Fatal(err)
				}
				edit(hf)
				data, _ := json.Marshal(hf)
				ref, err := refForward(data, b.src, b.ids)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got := flatRef(ref.Logits)
				var num, den float64
				for i := range got {
					num += (got[i] - want[i]) * (got[i] - want[i])
					den += want[i] * want[i]
				}
				if e := math.Sqrt(num / den); e < 1e-2 {
					t.Errorf("flipping %s moves the logits only by %.2g: the setting is not exercised", name, e)
				}
			}
		})
	}
}

// chunkSize is the i-th chunk of a schedule: its sizes in order, then
// cycling over all but the first (a prefill).
func chunkSize(sched []int, i int) int {
	switch {
	case i < len(sched):
		return sched[i]
	case len(sched) == 1:
		return sched[0]
	}
	return sched[1+(i-1)%(len(sched)-1)]
}

// logitRow is row r of logits [rows, V].
func logitRow(l []float32, r, V int) []float32 { return l[r*V : (r+1)*V] }

// cacheVariants are the variants the KV-cache and attention-block tests
// run: every family, sliding windows, MQA/GQA, QKV bias and clipping, and
// MLA with and without a query LoRA.
var cacheVariants = []string{
	"mixtral/mqa-headdim24-sliding5-linear-tied-bf16",
	"qwen2_moe/sparse-step2-norm_topk-qkv_bias",
	"qwen3_moe/mqa-headdim16-sliding4-llama3-tied",
	"olmoe/gqa2-clip_qkv0.8",
	"deepseek_v2/group_limited_greedy-yarn-factor-ne-ratio",
	"deepseek_v2/yarn-mscale-ratio-tied-bf16",
	"deepseek_v3/groups4-top2-qlora-interleave",
	"deepseek_v3/no-interleave-yarn-notruncate-nogroups-bf16widened",
}

// TestVariantCacheMatchesFullForward prefills a prefix and decodes the rest
// in chunks of various sizes with the KV cache; after each chunk the last
// token's logits must equal those of one full forward pass (relative L2
// 1e-5). MLA variants run the cached steps with naive and absorbed
// attention.
func TestVariantCacheMatchesFullForward(t *testing.T) {
	names := cacheVariants
	schedules := map[string][]int{
		"token-by-token":     {1},
		"prefill4+1":         {4, 1},
		"chunks-3-1-2-5":     {3, 1, 2, 5},
		"prefill2+chunks2-3": {2, 2, 3},
	}
	ctx := context.Background()
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			b := variantByName(t, name).build(t)
			m := b.load(t)
			V := b.cfg.Vocab
			seq := b.ids[0]
			for _, s := range b.ids {
				if len(s) > len(seq) {
					seq = s
				}
			}
			full, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{seq}, Options{AllLogits: true, MLA: MLANaive})
			if err != nil {
				t.Fatal(err)
			}
			modes := map[string]MLAMode{"auto": MLAAuto}
			if b.cfg.MLA != nil {
				modes["naive"], modes["absorbed"] = MLANaive, MLAAbsorbed
			}
			for mname, mode := range modes {
				for sname, sched := range schedules {
					s := m.NewSeq()
					worst := 0.0
					for pos, i := 0, 0; pos < len(seq); i++ {
						n := min(chunkSize(sched, i), len(seq)-pos)
						out, err := m.Forward(ctx, []*Seq{s}, [][]int32{seq[pos : pos+n]}, Options{MLA: mode})
						if err != nil {
							t.Fatal(err)
						}
						pos += n
						e := relL2(out.Logits, logitRow(full.Logits, pos-1, V))
						worst = math.Max(worst, e)
						if e > 1e-5 {
							t.Errorf("%s %s: after %d tokens, last-token logits rel L2 %.3g vs full forward", mname, sname, pos, e)
						}
					}
					if s.Len != len(seq) {
						t.Errorf("%s %s: Seq.Len %d, want %d", mname, sname, s.Len, len(seq))
					}
					t.Logf("%s %s: worst rel L2 %.2g over %d tokens", mname, sname, worst, len(seq))
				}
			}
		})
	}
}

// TestMLACacheHoldsOnlyLatent checks that a DeepSeek sequence caches exactly
// the normalized latent and the RoPE key per layer and token, L*T*(R+Dr)
// floats, and compares that with the full per-head K/V cache a GQA-style
// implementation would hold.
func TestMLACacheHoldsOnlyLatent(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{
		"deepseek_v3/groups4-top2-qlora-interleave",
		"deepseek_v2/group_limited_greedy-yarn-factor-ne-ratio",
	} {
		t.Run(name, func(t *testing.T) {
			b := variantByName(t, name).build(t)
			m := b.load(t)
			c := b.cfg
			ml := c.MLA
			s := m.NewSeq()
			seq := b.ids[2]
			check := func(T int) {
				want := int64(c.Layers) * int64(T) * int64(ml.KVLoraRank+ml.QKRopeDim) * 4
				if got := s.CacheBytes(); got != want {
					t.Errorf("after %d tokens CacheBytes = %d, want L*T*(R+Dr)*4 = %d", T, got, want)
				}
			}
			if _, err := m.Forward(ctx, []*Seq{s}, [][]int32{seq[:len(seq)-3]}, Options{MLA: MLANaive}); err != nil {
				t.Fatal(err)
			}
			check(len(seq) - 3)
			for i := len(seq) - 3; i < len(seq); i++ {
				if _, err := m.Forward(ctx, []*Seq{s}, [][]int32{seq[i : i+1]}, Options{MLA: MLAAbsorbed}); err != nil {
					t.Fatal(err)
				}
				check(i + 1)
			}
			T := len(seq)
			fullKV := int64(c.Layers) * int64(T) * int64(c.Heads*(ml.QKNopeDim+ml.QKRopeDim+ml.VDim)) * 4
			t.Logf("T=%d: latent cache %d bytes, full K/V cache would be %d bytes: %.1fx smaller (H=%d Dn=%d Dr=%d Dv=%d R=%d)",
				T, s.CacheBytes(), fullKV, float64(fullKV)/float64(s.CacheBytes()), c.Heads, ml.QKNopeDim, ml.QKRopeDim, ml.VDim, ml.KVLoraRank)
			if s.CacheBytes()*2 > fullKV {
				t.Errorf("latent cache %d bytes is not far smaller than full K/V %d bytes", s.CacheBytes(), fullKV)
			}
		})
	}
	// DeepSeek-V3's published dimensions, for scale: H=128, Dn=128, Dr=64, Dv=128, R=512.
	full, latent := 128*(128+64+128), 512+64
	t.Logf("at DeepSeek-V3 size the latent cache is %.1fx smaller than full K/V (%d vs %d floats per token and layer)",
		float64(full)/float64(latent), latent, full)

	// A GQA model caches K and V: L*T*2*Hkv*Dh floats.
	b := variantByName(t, "mixtral/gqa3-theta1e6").build(t)
	m := b.load(t)
	s := m.NewSeq()
	if _, err := m.Forward(ctx, []*Seq{s}, [][]int32{b.ids[1]}, Options{}); err != nil {
		t.Fatal(err)
	}
	c := b.cfg
	if got, want := s.CacheBytes(), int64(c.Layers*len(b.ids[1])*2*c.KVHeads*c.HeadDim*4); got != want {
		t.Errorf("GQA CacheBytes = %d, want L*T*2*Hkv*Dh*4 = %d", got, want)
	}
}

// TestBatchIndependence runs each sequence alone and inside batches (in
// order and reversed); MoE layers see all rows of a batch together, so any
// cross-sequence leakage shows as a difference.
func TestBatchIndependence(t *testing.T) {
	ctx := context.Background()
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			b := v.build(t)
			m := b.load(t)
			V := b.cfg.Vocab
			alone := make([][]float32, len(b.ids))
			for i, seq := range b.ids {
				out, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{seq}, Options{AllLogits: true})
				if err != nil {
					t.Fatal(err)
				}
				alone[i] = out.Logits
			}
			for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}} {
				seqs := make([]*Seq, len(order))
				ids := make([][]int32, len(order))
				for k, i := range order {
					seqs[k], ids[k] = m.NewSeq(), b.ids[i]
				}
				out, err := m.Forward(ctx, seqs, ids, Options{AllLogits: true})
				if err != nil {
					t.Fatal(err)
				}
				row := 0
				for _, i := range order {
					n := len(b.ids[i])
					got := out.Logits[row*V : (row+n)*V]
					row += n
					if e := relL2(got, alone[i]); e > 1e-5 {
						t.Errorf("batch order %v: sequence %d logits rel L2 %.3g vs run alone", order, i, e)
					}
				}
			}
		})
	}
}

// TestAttentionBlocks runs attention in blocks of 2 and 3 query rows
// (heads.compute's causal blocks, attnRows) instead of one block a
// sequence: a whole forward of every cache variant's longest sequence
// (cacheVariants; MLA naive and absorbed) and a chunked one
// through the KV cache (blocks that start past cached positions) must
// give the one-block logits within rounding (relative L2 1e-6: only the
// softmax's sums see fewer, masked, zeros).
func TestAttentionBlocks(t *testing.T) {
	ctx := context.Background()
	defer func(r int) { attnRows = r }(attnRows)
	for _, name := range cacheVariants {
		t.Run(name, func(t *testing.T) {
			b := variantByName(t, name).build(t)
			m := b.load(t)
			seq := b.ids[0]
			for _, s := range b.ids {
				if len(s) > len(seq) {
					seq = s
				}
			}
			modes := map[string]MLAMode{"auto": MLAAuto}
			if b.cfg.MLA != nil {
				modes["naive"], modes["absorbed"] = MLANaive, MLAAbsorbed
			}
			for mname, mode := range modes {
				attnRows = 1 << 20
				whole, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{seq}, Options{AllLogits: true, MLA: mode})
				if err != nil {
					t.Fatal(err)
				}
				for _, rows := range []int{2, 3} {
					attnRows = rows
					got, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{seq}, Options{AllLogits: true, MLA: mode})
					if err != nil {
						t.Fatal(err)
					}
					if e := relL2(got.Logits, whole.Logits); e > 1e-6 {
						t.Errorf("%s, blocks of %d rows: logits rel L2 %.3g vs one block", mname, rows, e)
					}
					// Chunks of 5 after a prefill of 4: blocks past the cache.
					s := m.NewSeq()
					for pos := 0; pos < len(seq); {
						n := min(5, len(seq)-pos)
						if pos == 0 {
							n = 4
						}
						out, err := m.Forward(ctx, []*Seq{s}, [][]int32{seq[pos : pos+n]}, Options{AllLogits: true, MLA: mode})
						if err != nil {
							t.Fatal(err)
						}
						V := b.cfg.Vocab
						if e := relL2(out.Logits, whole.Logits[pos*V:(pos+n)*V]); e > 1e-5 {
							t.Errorf("%s, blocks of %d rows, cached chunk at %d: logits rel L2 %.3g vs one block", mname, rows, pos, e)
						}
						pos += n
					}
				}
			}
		})
	}
}
