// Package model loads Hugging Face MoE checkpoints (config.json +
// safetensors) of six families — mixtral, qwen2_moe, qwen3_moe, olmoe,
// deepseek_v2, deepseek_v3 — and runs their forward pass with a KV cache,
// matching transformers 5.17.
//
// Dimension glossary (used in every shape comment of this module):
//
//	B   sequences in a batch
//	T   tokens (positions) of a sequence; N = tokens of a whole batch
//	D   hidden size (hidden_size)
//	V   vocabulary size
//	H   attention (query) heads;  Hkv key/value heads (GQA)
//	Dh  head dimension of q/k/v (GQA)
//	F   intermediate size of an FFN (dense, expert or shared)
//	E   routed experts per MoE layer;  K experts per token;  G expert groups
//	R   MLA latent rank (kv_lora_rank);  Rq query latent rank (q_lora_rank)
//	Dn  MLA no-RoPE head dim (qk_nope_head_dim);  Dr RoPE head dim
//	    (qk_rope_head_dim);  Dv MLA value head dim (v_head_dim)
//	L   decoder layers
//
// Layout: activations are row-major [N, ...] float32; weights keep the hub
// layout [out, in] (tensor.Mat, float32 or bfloat16). The model code calls
// routed experts only through expert.Executor, so experts may live in this
// process or on other machines.
package model
