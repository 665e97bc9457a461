package model

import (
	"github.com/switchyard/switchyard/pkg/expert"
)

// Role classifies a checkpoint tensor.
type Role uint8

const (
	RoleMatrix Role = iota // a dense weight matrix (attention, dense MLP, shared expert, gate, embeddings, lm_head)
	RoleNorm               // an RMSNorm weight (initialized to ones)
	RoleBias               // a projection bias or the DeepSeek-V3 score correction bias
	RoleExpert             // one of a routed expert's three matrices
)

// TensorSpec describes one tensor a checkpoint of a Config must hold.
type TensorSpec struct {
	Name   string
	Shape  []int
	Role   Role
	Expert expert.ID // for RoleExpert
}

// Elems is the number of elements.
func (s TensorSpec) Elems() int64 {
	n := int64(1)
	for _, d := range s.Shape {
		n *= int64(d)
	}
	return n
}

// Tensors lists every tensor of the checkpoint layout Load reads for c, in
// a stable order: embeddings, then each layer, then final norm and lm_head
// (omitted when tied).
func (c *Config) Tensors() []TensorSpec {
	var out []TensorSpec
	add := func(name string, role Role, shape ...int) {
		out = append(out, TensorSpec{Name: name, Shape: shape, Role: role})
	}
	D, V := c.Hidden, c.Vocab
	nm := names{c.Family}
	add("model.embed_tokens.weight", RoleMatrix, V, D)
	for l := 0; l < c.Layers; l++ {
		p := nm.layer(l)
		ap := p + "self_attn."
		add(p+"input_layernorm.weight", RoleNorm, D)
		add(p+"post_attention_layernorm.weight", RoleNorm, D)
		if c.MLA == nil {
			H, Hkv, Dh := c.Heads, c.KVHeads, c.HeadDim
			add(ap+"q_proj.weight", RoleMatrix, H*Dh, D)
			add(ap+"k_proj.weight", RoleMatrix, Hkv*Dh, D)
			add(ap+"v_proj.weight", RoleMatrix, Hkv*Dh, D)
			add(ap+"o_proj.weight", RoleMatrix, D, H*Dh)
			if c.QKVBias {
				add(ap+"q_proj.bias", RoleBias, H*Dh)
				add(ap+"k_proj.bias", RoleBias, Hkv*Dh)
				add(ap+"v_proj.bias", RoleBias, Hkv*Dh)
			}
			switch c.QKNorm {
			case QKNormPerHead:
				add(ap+"q_norm.weight", RoleNorm, Dh)
				add(ap+"k_norm.weight", RoleNorm, Dh)
			case QKNormFull:
				add(ap+"q_norm.weight", RoleNorm, H*Dh)
				add(ap+"k_norm.weight", RoleNorm, Hkv*Dh)
			}
		} else {
			m := c.MLA
			H := c.Heads
			qDim := H * (m.QKNopeDim + m.QKRopeDim)
			if m.QLoraRank > 0 {
				add(ap+"q_a_proj.weight", RoleMatrix, m.QLoraRank, D)
				if c.OBias {
					add(ap+"q_a_proj.bias", RoleBias, m.QLoraRank)
				}
				add(ap+"q_a_layernorm.weight", RoleNorm, m.QLoraRank)
				add(ap+"q_b_proj.weight", RoleMatrix, qDim, m.QLoraRank)
			} else {
				add(ap+"q_proj.weight", RoleMatrix, qDim, D)
			}
			add(ap+"kv_a_proj_with_mqa.weight", RoleMatrix, m.KVLoraRank+m.QKRopeDim, D)
			if c.OBias {
				add(ap+"kv_a_proj_with_mqa.bias", RoleBias, m.KVLoraRank+m.QKRopeDim)
			}
			add(ap+"kv_a_layernorm.weight", RoleNorm, m.KVLoraRank)
			add(ap+"kv_b_proj.weight", RoleMatrix, H*(m.QKNopeDim+m.VDim), m.KVLoraRank)
			add(ap+"o_proj.weight", RoleMatrix, D, H*m.VDim)
		}
		if c.OBias {
			add(ap+"o_proj.bias", RoleBias, D)
		}
		if !c.LayerIsMoE[l] {
			add(p+"mlp.gate_proj.weight", RoleMatrix, c.Inter, D)
			add(p+"mlp.up_proj.weight", RoleMatrix, c.Inter, D)
			add(p+"mlp.down_proj.weight", RoleMatrix, D, c.Inter)
			continue
		}
		mp := nm.moe(l)
		E, F := c.MoE.Router.NumExperts, c.MoE.Inter
		add(mp+"gate.weight", RoleMatrix, E, D)
		if c.MoE.ScoreBias {
			add(mp+"gate.e_score_correction_bias", RoleBias, E)
		}
		for e := 0; e < E; e++ {
			g, u, d := nm.expert(l, e)
			id := expert.ID{Layer: l, Expert: e}
			out = append(out,
				TensorSpec{Name: g, Shape: []int{F, D}, Role: RoleExpert, Expert: id},
				TensorSpec{Name: u, Shape: []int{F, D}, Role: RoleExpert, Expert: id},
				TensorSpec{Name: d, Shape: []int{D, F}, Role: RoleExpert, Expert: id})
		}
		if S := c.MoE.SharedInter; S > 0 {
			sp := mp + "shared_experts."
			if c.Family == Qwen2MoE {
				sp = mp + "shared_expert."
			}
			add(sp+"gate_proj.weight", RoleMatrix, S, D)
			add(sp+"up_proj.weight", RoleMatrix, S, D)
			add(sp+"down_proj.weight", RoleMatrix, D, S)
			if c.MoE.SharedGate {
				add(mp+"shared_expert_gate.weight", RoleMatrix, 1, D)
			}
		}
	}
	add("model.norm.weight", RoleNorm, D)
	if !c.TieEmbed {
		add("lm_head.weight", RoleMatrix, V, D)
	}
	return out
}
