// Package convert maps a Hugging Face MoE checkpoint (the six families of
// pkg/model) onto a GGUF file that llama.cpp loads, following llama.cpp's
// own converter (convert_hf_to_gguf.py and gguf-py's constants.py,
// tensor_mapping.py and vocab.py) family by family:
//
//	model_type   general.architecture  converter class
//	mixtral      llama                 LlamaModel (Q/K rows permuted)
//	qwen2_moe    qwen2moe              Qwen2MoeModel
//	qwen3_moe    qwen3moe              Qwen3MoeModel
//	olmoe        olmoe                 OlmoeModel
//	deepseek_v2  deepseek2             DeepseekV2Model
//	deepseek_v3  deepseek2             DeepseekV2Model
//
// # Tensors
//
// GGUF dims are ggml's ne, the reverse of the PyTorch shape: a [rows, cols]
// weight is ne = [cols, rows]. Every checkpoint tensor is mapped once:
//
//   - routed experts are stacked per layer into blk.N.ffn_{gate,up,down}_exps
//     of shape [E, F, D] (gate, up) and [E, D, F] (down), expert e at index e
//     (torch.stack(dim=0));
//   - Mixtral's q_proj and k_proj rows are permuted as LlamaModel.permute
//     does (ggml's llama rotates adjacent pairs, transformers rotates the two
//     halves of each head): within head h of size Dh, output row h*Dh+2j+i
//     is input row h*Dh+i*Dh/2+j (j < Dh/2, i in {0,1}); k_proj uses the kv
//     head count;
//   - DeepSeek's kv_b_proj [H*(Dn+Dv), R] is split per head into
//     blk.N.attn_k_b [H, R, Dn] (the Dn rows, transposed) and
//     blk.N.attn_v_b [H, Dv, R] (the Dv rows), and
//     gate.e_score_correction_bias becomes blk.N.exp_probs_b.bias;
//   - everything else is renamed only (tensor_mapping.py).
//
// Types follow ModelBase.prepare_tensors: 1-D tensors, *_norm.weight,
// ffn_gate_inp, ffn_gate_inp_shexp and anything not named *.weight are
// F32; the other matrices take the requested type, and a Q8_0 matrix whose
// ne[0] is not a multiple of 32 falls back to F16. Values are read as
// float32 (bf16 and f16 widen exactly, FP8 checkpoints are dequantized by
// pkg/model's Source) and then encoded, so a bf16 checkpoint exported as
// bf16 keeps its bits.
//
// # Deliberate differences from the converter
//
// The converter reads transformers' AutoConfig; this package reads
// pkg/model's normalized Config, which applies the same class defaults. Where
// the converter would write a value that makes llama.cpp compute something
// other than the checkpoint's model, this package either writes the
// model's value or refuses the export with an error naming the setting:
//
//   - OLMoE: the converter hard-codes rms_norm_eps 1e-5 (OLMoE-1B-7B's
//     value); we write config.json's value.
//   - DeepSeek: expert_gating_func is always written (softmax for V2,
//     sigmoid for V3; the converter writes it only when config.json has
//     scoring_func, which transformers 5 no longer saves, and llama.cpp
//     then assumes softmax); expert_weights_norm is written only for V3 with
//     norm_topk_prob (transformers' V2 never renormalizes), and the group
//     counts are those routing uses (topk_method "greedy" means no groups).
//   - Refused: RoPE scaling "llama3", sliding-window attention, OLMoE
//     clip_qkv, attention biases of families whose llama.cpp graph has none,
//     dense layers inside qwen2moe/qwen3moe, a Qwen2-MoE without a shared
//     expert, DeepSeek with rope_interleave false, and DeepSeek-V2's
//     group_limited_greedy routing (llama.cpp ranks groups by their top-2
//     sum, V2 by their maximum).
//   - Written with a note: a DeepSeek model without q_lora_rank whose layer
//     count is not DeepSeek-V2-Lite's 27 (or 26, or 48 with a 128256
//     vocabulary). llama.cpp takes the q_proj layout (attn_q) only for those
//     layer counts and otherwise asks for attention.q_lora_rank, so it
//     refuses such a file; the converter writes the same file.
//
// # Vocabulary
//
// With a tokenizer.json, the vocabulary is written as the converter's
// _set_vocab_gpt2 does: tokenizer.ggml.model "gpt2", one token per id below
// vocab_size ("[PAD<i>]" of type UNUSED for holes), token types NORMAL,
// CONTROL (special or special-looking added tokens) or USER_DEFINED (other
// added tokens), the merges in file order, special token ids from
// tokenizer_config.json then config.json (SpecialVocab), add_bos/add_eos
// and chat_template from tokenizer_config.json. tokenizer.ggml.pre is
// chosen from the pre-tokenizer's structure (see PreTokenizer), not from
// the converter's hash of an encoded test string. Without a tokenizer the
// file has tokenizer.ggml.model "none".
package convert
