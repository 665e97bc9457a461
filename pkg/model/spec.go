package model

import (
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Role classifies a checkpoint tensor.
type Role uint8

const (
	RoleMatrix Role = iota // a dense weight matrix (attention, dense MLP, shared expert, gate, embeddings, lm_head)
	RoleNorm               // an RMSNorm weight (initialized to ones)
	RoleBias               // a projection bias or the DeepSeek-V3 score correction bias
	RoleExpert             // one of a routed expert's three matrices
)

// TensorSpec describes one tensor a checkpoint of a Config holds and where
// it lives once loaded. Config.Tensors is the one table of a family's weight
// layout: Load, DenseParams (training, optimizer, checkpoint writing),
// Synthesize and NewRandom all iterate it.
type TensorSpec struct {
	Name   string
	Shape  []int
	Role   Role
	Expert expert.ID // for RoleExpert
	// Buffer marks a tensor the optimizer does not train (DeepSeek-V3's
	// e_score_correction_bias, which the aux-loss-free balancing updates).
	Buffer bool
	// Bind locates a dense tensor's field in a Model; nil for RoleExpert.
	// Binding into a Layer whose FFN (MLP or Shared) is nil allocates it,
	// which is how Load builds the Model from the table.
	Bind func(m *Model) Slot
	// InFFN locates a routed expert's matrix in its FFN (RoleExpert only).
	InFFN func(f *expert.FFN) *tensor.Mat

	part int // TrainState.OnGrads part: -1 embeddings, 0..L-1 a layer, L final norm and lm_head
}

// Slot is the Model field a dense tensor is stored in: a matrix, or a
// float32 vector (norm weights and biases). Exactly one is set.
type Slot struct {
	Mat *tensor.Mat
	Vec *[]float32
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
func (c *Config) Tensors() []TensorSpec { return c.layout(c.TieEmbed) }

// ExpertTensors lists a routed expert's gate, up and down matrices (id must
// be a routed expert of c).
func (c *Config) ExpertTensors(id expert.ID) []TensorSpec {
	var b layout
	b.expert(names{c.Family}, id, c.Hidden, c.MoE.Inter)
	return b.out
}

// layout builds the table. tied omits lm_head (it is embed_tokens); a
// checkpoint may carry lm_head despite tie_word_embeddings, and Load then
// reads it untied.
//
// The order within a layer is the order of the dense parameters (and so of
// Grads.Flat): norms, attention, o_proj and its bias, then the MLP or MoE.
func (c *Config) layout(tied bool) []TensorSpec {
	var b layout
	D, V := c.Hidden, c.Vocab
	nm := names{c.Family}
	top := scope[Model]{b: &b, of: func(m *Model) *Model { return m }}

	b.part = -1
	top.mat("model.embed_tokens.weight", func(m *Model) *tensor.Mat { return &m.Embed }, V, D)
	for l := 0; l < c.Layers; l++ {
		b.part = l
		p := nm.layer(l)
		ly := scope[Layer]{b: &b, prefix: p, of: func(m *Model) *Layer { return &m.Layers[l] }}
		at := scope[Attention]{b: &b, prefix: p + "self_attn.", of: func(m *Model) *Attention { return &m.Layers[l].Attn }}
		ly.vec(RoleNorm, "input_layernorm.weight", func(L *Layer) *[]float32 { return &L.InNorm }, D)
		ly.vec(RoleNorm, "post_attention_layernorm.weight", func(L *Layer) *[]float32 { return &L.PostNorm }, D)
		if c.MLA == nil {
			H, Hkv, Dh := c.Heads, c.KVHeads, c.HeadDim
			at.mat("q_proj.weight", func(a *Attention) *tensor.Mat { return &a.Q }, H*Dh, D)
			at.mat("k_proj.weight", func(a *Attention) *tensor.Mat { return &a.K }, Hkv*Dh, D)
			at.mat("v_proj.weight", func(a *Attention) *tensor.Mat { return &a.V }, Hkv*Dh, D)
			if c.QKVBias {
				at.vec(RoleBias, "q_proj.bias", func(a *Attention) *[]float32 { return &a.QBias }, H*Dh)
				at.vec(RoleBias, "k_proj.bias", func(a *Attention) *[]float32 { return &a.KBias }, Hkv*Dh)
				at.vec(RoleBias, "v_proj.bias", func(a *Attention) *[]float32 { return &a.VBias }, Hkv*Dh)
			}
			qn, kn := 0, 0
			switch c.QKNorm {
			case QKNormPerHead:
				qn, kn = Dh, Dh
			case QKNormFull:
				qn, kn = H*Dh, Hkv*Dh
			}
			if qn > 0 {
				at.vec(RoleNorm, "q_norm.weight", func(a *Attention) *[]float32 { return &a.QNorm }, qn)
				at.vec(RoleNorm, "k_norm.weight", func(a *Attention) *[]float32 { return &a.KNorm }, kn)
			}
			at.mat("o_proj.weight", func(a *Attention) *tensor.Mat { return &a.O }, D, H*Dh)
		} else {
			m, H := c.MLA, c.Heads
			qDim := H * (m.QKNopeDim + m.QKRopeDim)
			// attention_bias covers q_a_proj, kv_a_proj_with_mqa and o_proj.
			if m.QLoraRank > 0 {
				at.mat("q_a_proj.weight", func(a *Attention) *tensor.Mat { return &a.QA }, m.QLoraRank, D)
				if c.OBias {
					at.vec(RoleBias, "q_a_proj.bias", func(a *Attention) *[]float32 { return &a.QABias }, m.QLoraRank)
				}
				at.vec(RoleNorm, "q_a_layernorm.weight", func(a *Attention) *[]float32 { return &a.QANorm }, m.QLoraRank)
				at.mat("q_b_proj.weight", func(a *Attention) *tensor.Mat { return &a.QB }, qDim, m.QLoraRank)
			} else {
				at.mat("q_proj.weight", func(a *Attention) *tensor.Mat { return &a.Q }, qDim, D)
			}
			at.mat("kv_a_proj_with_mqa.weight", func(a *Attention) *tensor.Mat { return &a.KVA }, m.KVLoraRank+m.QKRopeDim, D)
			if c.OBias {
				at.vec(RoleBias, "kv_a_proj_with_mqa.bias", func(a *Attention) *[]float32 { return &a.KVABias }, m.KVLoraRank+m.QKRopeDim)
			}
			at.vec(RoleNorm, "kv_a_layernorm.weight", func(a *Attention) *[]float32 { return &a.KVANorm }, m.KVLoraRank)
			at.mat("kv_b_proj.weight", func(a *Attention) *tensor.Mat { return &a.KVB }, H*(m.QKNopeDim+m.VDim), m.KVLoraRank)
			at.mat("o_proj.weight", func(a *Attention) *tensor.Mat { return &a.O }, D, H*m.VDim)
		}
		if c.OBias {
			at.vec(RoleBias, "o_proj.bias", func(a *Attention) *[]float32 { return &a.OBias }, D)
		}

		if !c.LayerIsMoE[l] {
			b.ffn(p+"mlp.", func(m *Model) **expert.FFN { return &m.Layers[l].MLP }, D, c.Inter)
			continue
		}
		moe := scope[Layer]{b: &b, prefix: nm.moe(l), of: ly.of}
		E := c.MoE.Router.NumExperts
		moe.mat("gate.weight", func(L *Layer) *tensor.Mat { return &L.Gate }, E, D)
		if c.MoE.ScoreBias {
			moe.vec(RoleBias, "gate.e_score_correction_bias", func(L *Layer) *[]float32 { return &L.ScoreBias }, E)
			b.out[len(b.out)-1].Buffer = true
		}
		for e := 0; e < E; e++ {
			b.expert(nm, expert.ID{Layer: l, Expert: e}, D, c.MoE.Inter)
		}
		if S := c.MoE.SharedInter; S > 0 {
			b.ffn(nm.shared(l), func(m *Model) **expert.FFN { return &m.Layers[l].Shared }, D, S)
			if c.MoE.SharedGate {
				moe.mat("shared_expert_gate.weight", func(L *Layer) *tensor.Mat { return &L.SharedGate }, 1, D)
			}
		}
	}
	b.part = c.Layers
	top.vec(RoleNorm, "model.norm.weight", func(m *Model) *[]float32 { return &m.Norm }, D)
	if !tied {
		top.mat(lmHeadName, func(m *Model) *tensor.Mat { return &m.LMHead }, V, D)
	}
	return b.out
}

// lmHeadName is lm_head's hub name; Load checks for it in a tied checkpoint.
const lmHeadName = "lm_head.weight"

// layout accumulates a table; part is the OnGrads part of what is added.
type layout struct {
	out  []TensorSpec
	part int
}

// ffnMats are an FFN's gate, up and down matrices, in checkpoint order.
var ffnMats = [3]func(f *expert.FFN) *tensor.Mat{
	func(f *expert.FFN) *tensor.Mat { return &f.Gate },
	func(f *expert.FFN) *tensor.Mat { return &f.Up },
	func(f *expert.FFN) *tensor.Mat { return &f.Down },
}

// ffnShapes are the shapes of an FFN's gate [F, D], up [F, D] and down [D, F].
func ffnShapes(d, f int) [3][]int { return [3][]int{{f, d}, {f, d}, {d, f}} }

// ffn adds a dense FFN (a dense layer's MLP or the shared expert) named
// prefix + gate_proj/up_proj/down_proj; field is the Layer's FFN pointer,
// allocated on first Bind.
func (b *layout) ffn(prefix string, field func(m *Model) **expert.FFN, d, f int) {
	shapes := ffnShapes(d, f)
	for i, proj := range [3]string{"gate_proj", "up_proj", "down_proj"} {
		inFFN := ffnMats[i]
		b.add(TensorSpec{Name: prefix + proj + ".weight", Shape: shapes[i], Role: RoleMatrix,
			Bind: func(m *Model) Slot {
				p := field(m)
				if *p == nil {
					*p = new(expert.FFN)
				}
				return Slot{Mat: inFFN(*p)}
			}})
	}
}

// expert adds a routed expert's three matrices.
func (b *layout) expert(nm names, id expert.ID, d, f int) {
	g, u, dn := nm.expert(id.Layer, id.Expert)
	shapes := ffnShapes(d, f)
	for i, name := range [3]string{g, u, dn} {
		b.add(TensorSpec{Name: name, Shape: shapes[i], Role: RoleExpert, Expert: id, InFFN: ffnMats[i]})
	}
}

func (b *layout) add(s TensorSpec) {
	s.part = b.part
	b.out = append(b.out, s)
}

// scope adds tensors named prefix + name whose fields live in a P reached
// from the Model by of.
type scope[P any] struct {
	b      *layout
	prefix string
	of     func(m *Model) *P
}

func (s scope[P]) mat(name string, field func(*P) *tensor.Mat, rows, cols int) {
	of := s.of
	s.b.add(TensorSpec{Name: s.prefix + name, Shape: []int{rows, cols}, Role: RoleMatrix,
		Bind: func(m *Model) Slot { return Slot{Mat: field(of(m))} }})
}

func (s scope[P]) vec(role Role, name string, field func(*P) *[]float32, n int) {
	of := s.of
	s.b.add(TensorSpec{Name: s.prefix + name, Shape: []int{n}, Role: role,
		Bind: func(m *Model) Slot { return Slot{Vec: field(of(m))} }})
}
