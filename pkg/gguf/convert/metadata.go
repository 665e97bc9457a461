package convert

import (
	"errors"
	"fmt"

	"github.com/switchyard/switchyard/pkg/gguf"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/router"
)

// archOf is general.architecture per model_type (gguf-py's MODEL_ARCH_NAMES
// of the converter class registered for the family's HF architecture).
var archOf = map[model.Family]string{
	model.Mixtral:    "llama",
	model.Qwen2MoE:   "qwen2moe",
	model.Qwen3MoE:   "qwen3moe",
	model.OLMoE:      "olmoe",
	model.DeepSeekV2: "deepseek2",
	model.DeepSeekV3: "deepseek2",
}

// llama.cpp's expert gating function ids (ExpertGatingFuncType).
const (
	gatingSoftmax = 1
	gatingSigmoid = 2
)

// check refuses configurations llama.cpp would load but compute
// differently from the checkpoint's model, or could not load; notes are
// what the user should know about a file that is written anyway.
func check(c *model.Config) (notes []string, err error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format+": %w", append(args, ErrUnsupported)...))
	}
	if c.Rope.Type == "llama3" {
		bad("rope_type llama3 (the converter writes a rope_freqs tensor only for LlamaModel, with different defaults)")
	}
	if c.SlidingWin > 0 {
		bad("sliding_window %d (llama.cpp's %s graph attends to every position)", c.SlidingWin, archOf[c.Family])
	}
	moe := 0
	for _, m := range c.LayerIsMoE {
		if m {
			moe++
		}
	}
	switch c.Family {
	case model.Mixtral:
		if moe != c.Layers {
			bad("mixtral with %d dense layers", c.Layers-moe)
		}
	case model.Qwen2MoE, model.Qwen3MoE:
		if moe != c.Layers {
			bad("%s with %d dense layers (decoder_sparse_step / mlp_only_layers): llama.cpp's %s makes every layer sparse", c.Family, c.Layers-moe, archOf[c.Family])
		}
		if c.Family == model.Qwen2MoE && c.MoE.SharedInter == 0 {
			bad("qwen2_moe without a shared expert (llama.cpp's qwen2moe requires ffn_*_shexp)")
		}
		if c.Family == model.Qwen3MoE && (c.QKVBias || c.OBias) {
			bad("qwen3_moe with attention_bias (llama.cpp's qwen3moe has no attention biases)")
		}
	case model.OLMoE:
		if c.ClipQKV != 0 {
			bad("olmoe clip_qkv %g (llama.cpp's olmoe does not clamp q, k, v)", c.ClipQKV)
		}
		if c.QKVBias || c.OBias {
			bad("olmoe with attention_bias (llama.cpp's olmoe has no attention biases)")
		}
	case model.DeepSeekV2, model.DeepSeekV3:
		if c.OBias {
			bad("%s with attention_bias (llama.cpp's deepseek2 has no attention biases)", c.Family)
		}
		if !c.Rope.Interleaved {
			bad("%s with rope_interleave false (llama.cpp's deepseek2 rotates interleaved pairs)", c.Family)
		}
		if lite := c.Layers == 27 || c.Layers == 26 || c.Layers == 48 && c.Vocab == 128256; c.MLA.QLoraRank == 0 && !lite {
			// llama.cpp (src/models/deepseek2.cpp) decides "lite" (q_proj
			// instead of q_a/q_b) by the layer count alone (DeepSeek-V2-Lite
			// has 27; 26 and 48 with a 128256 vocabulary are other models
			// of that layout) and otherwise requires attention.q_lora_rank,
			// which the converter (and this package) write only when
			// q_lora_rank is set.
			notes = append(notes, fmt.Sprintf("%s without q_lora_rank and with %d layers: llama.cpp recognizes this layout (attn_q instead of attn_q_a/attn_q_b) only by the layer count of DeepSeek-V2-Lite (27) and two others, so it will refuse this file (key not found: deepseek2.attention.q_lora_rank)", c.Family, c.Layers))
		}
		if c.Family == model.DeepSeekV2 && c.MoE.Router.NumGroups > 1 {
			// llama.cpp ranks groups by their top-2 sum (DeepSeek-V3); V2's
			// group_limited_greedy ranks them by their maximum.
			bad("deepseek_v2 topk_method group_limited_greedy (llama.cpp ranks expert groups by the sum of their top 2, V2 by their maximum)")
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("convert: %w", errors.Join(errs...))
	}
	return notes, nil
}

// hyperparams writes the architecture keys as TextModel.set_gguf_parameters
// and the family's converter class do, in their order.
func hyperparams(kv *kvList, c *model.Config, raw *rawConfig, ftype uint32) {
	u32 := func(key string, v int) { kv.add(key, gguf.Uint32(uint32(v))) }
	f32 := func(key string, v float64) { kv.add(key, gguf.Float32(float32(v))) }
	deepseek := c.MLA != nil

	// TextModel.set_gguf_parameters.
	u32("{arch}.block_count", c.Layers)
	u32("{arch}.context_length", c.MaxPos)
	u32("{arch}.embedding_length", c.Hidden)
	if raw.has("intermediate_size") || c.Inter > 0 {
		u32("{arch}.feed_forward_length", c.Inter)
	}
	u32("{arch}.attention.head_count", c.Heads)
	if deepseek {
		// DeepseekV2Model: MLA is written as MQA (one kv head) whose heads
		// are decompressed to H.
		u32("{arch}.attention.head_count_kv", 1)
	} else {
		u32("{arch}.attention.head_count_kv", c.KVHeads)
	}
	switch c.Rope.Type {
	case "linear":
		kv.add("{arch}.rope.scaling.type", gguf.String("linear"))
		f32("{arch}.rope.scaling.factor", c.Rope.Factor)
	case "yarn":
		kv.add("{arch}.rope.scaling.type", gguf.String("yarn"))
		f32("{arch}.rope.scaling.factor", c.Rope.Factor)
		u32("{arch}.rope.scaling.original_context_length", c.Rope.OriginalMaxPos)
		if v, ok := raw.ropeFloat("extrapolation_factor"); ok {
			f32("{arch}.rope.scaling.yarn_ext_factor", v)
		}
		if v, ok := raw.ropeFloat("attention_factor"); ok {
			f32("{arch}.rope.scaling.yarn_attn_factor", v)
		} else if v, ok := raw.ropeFloat("attn_factor"); ok {
			f32("{arch}.rope.scaling.yarn_attn_factor", v)
		}
		if raw.ropeHas("beta_fast") {
			f32("{arch}.rope.scaling.yarn_beta_fast", c.Rope.BetaFast)
		}
		if raw.ropeHas("beta_slow") {
			f32("{arch}.rope.scaling.yarn_beta_slow", c.Rope.BetaSlow)
		}
	}
	f32("{arch}.rope.freq_base", c.Rope.Theta)
	kv.add("{arch}.attention.layer_norm_rms_epsilon", gguf.Float32(c.RMSEps))
	if !deepseek {
		u32("{arch}.expert_count", c.MoE.Router.NumExperts)
	}
	u32("{arch}.expert_used_count", c.MoE.Router.TopK)
	if deepseek {
		// The group counts routing uses (topk_method greedy: no groups).
		u32("{arch}.expert_group_count", max(c.MoE.Router.NumGroups, 1))
		u32("{arch}.expert_group_used_count", max(c.MoE.Router.TopKGroups, 1))
	}
	if raw.has("head_dim") && !deepseek {
		u32("{arch}.attention.key_length", c.HeadDim)
		u32("{arch}.attention.value_length", c.HeadDim)
	}
	u32("general.file_type", int(ftype))

	switch c.Family {
	case model.Mixtral: // LlamaModel
		u32("{arch}.vocab_size", c.Vocab)
		u32("{arch}.rope.dimension_count", c.HeadDim)
	case model.Qwen2MoE, model.Qwen3MoE: // Qwen2MoeModel
		u32("{arch}.expert_feed_forward_length", c.MoE.Inter)
		if raw.has("shared_expert_intermediate_size") || c.MoE.SharedInter > 0 {
			u32("{arch}.expert_shared_feed_forward_length", c.MoE.SharedInter)
		}
	case model.OLMoE: // OlmoeModel (the converter then hard-codes eps 1e-5)
	case model.DeepSeekV2, model.DeepSeekV3: // DeepseekV2Model
		m := c.MLA
		first := 0
		for first < c.Layers && !c.LayerIsMoE[first] {
			first++
		}
		u32("{arch}.leading_dense_block_count", first)
		u32("{arch}.vocab_size", c.Vocab)
		if m.QLoraRank > 0 {
			u32("{arch}.attention.q_lora_rank", m.QLoraRank)
		}
		u32("{arch}.attention.kv_lora_rank", m.KVLoraRank)
		u32("{arch}.attention.key_length", m.KVLoraRank+m.QKRopeDim)
		u32("{arch}.attention.value_length", m.KVLoraRank)
		u32("{arch}.attention.key_length_mla", m.QKNopeDim+m.QKRopeDim)
		u32("{arch}.attention.value_length_mla", m.VDim)
		u32("{arch}.expert_feed_forward_length", c.MoE.Inter)
		u32("{arch}.expert_count", c.MoE.Router.NumExperts)
		shared := 0
		if c.MoE.Inter > 0 {
			shared = c.MoE.SharedInter / c.MoE.Inter
		}
		u32("{arch}.expert_shared_count", shared)
		scale := float64(c.MoE.Router.ScalingFactor)
		if scale == 0 {
			scale = 1
		}
		f32("{arch}.expert_weights_scale", scale)
		if c.MoE.Router.Renormalize {
			kv.add("{arch}.expert_weights_norm", gguf.Bool(true))
		}
		gating := gatingSoftmax
		if c.MoE.Router.Scoring == router.Sigmoid {
			gating = gatingSigmoid
		}
		u32("{arch}.expert_gating_func", gating)
		u32("{arch}.rope.dimension_count", m.QKRopeDim)
		if v, ok := raw.ropeFloat("mscale_all_dim"); ok {
			f32("{arch}.rope.scaling.yarn_log_multiplier", 0.1*v)
		}
	}
}
