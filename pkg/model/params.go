package model

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// ParamRef names one dense parameter tensor of a Model and points at its
// float32 data (a field of the Model, so reading or replacing *Data reads or
// replaces the weight itself).
type ParamRef struct {
	Name  string
	Shape []int
	Data  *[]float32
	// Trained is false for buffers that are not optimized (DeepSeek-V3's
	// e_score_correction_bias, which the aux-loss-free balancing updates).
	Trained bool
}

// DenseParams lists every dense parameter (everything except routed
// experts) under its hub name, in Config.Tensors order. With tied
// embeddings lm_head is not listed (it is embed_tokens). Matrices must be
// float32 (load with KeepBF16 false); a bfloat16 matrix is an error.
func (m *Model) DenseParams() ([]ParamRef, error) {
	c := m.Cfg
	var out []ParamRef
	var errs []string
	vec := func(name string, p *[]float32, trained bool) {
		if *p != nil {
			out = append(out, ParamRef{Name: name, Shape: []int{len(*p)}, Data: p, Trained: trained})
		}
	}
	mat := func(name string, mt *tensor.Mat) {
		if mt.Empty() {
			return
		}
		if mt.F32 == nil {
			errs = append(errs, name)
			return
		}
		out = append(out, ParamRef{Name: name, Shape: []int{mt.Rows, mt.Cols}, Data: &mt.F32, Trained: true})
	}
	nm := names{c.Family}
	mat("model.embed_tokens.weight", &m.Embed)
	for l := range m.Layers {
		L := &m.Layers[l]
		p := nm.layer(l)
		ap := p + "self_attn."
		a := &L.Attn
		vec(p+"input_layernorm.weight", &L.InNorm, true)
		vec(p+"post_attention_layernorm.weight", &L.PostNorm, true)
		mat(ap+"q_proj.weight", &a.Q)
		mat(ap+"k_proj.weight", &a.K)
		mat(ap+"v_proj.weight", &a.V)
		vec(ap+"q_proj.bias", &a.QBias, true)
		vec(ap+"k_proj.bias", &a.KBias, true)
		vec(ap+"v_proj.bias", &a.VBias, true)
		vec(ap+"q_norm.weight", &a.QNorm, true)
		vec(ap+"k_norm.weight", &a.KNorm, true)
		mat(ap+"q_a_proj.weight", &a.QA)
		vec(ap+"q_a_proj.bias", &a.QABias, true)
		vec(ap+"q_a_layernorm.weight", &a.QANorm, true)
		mat(ap+"q_b_proj.weight", &a.QB)
		mat(ap+"kv_a_proj_with_mqa.weight", &a.KVA)
		vec(ap+"kv_a_proj_with_mqa.bias", &a.KVABias, true)
		vec(ap+"kv_a_layernorm.weight", &a.KVANorm, true)
		mat(ap+"kv_b_proj.weight", &a.KVB)
		mat(ap+"o_proj.weight", &a.O)
		vec(ap+"o_proj.bias", &a.OBias, true)
		if L.MLP != nil {
			mat(p+"mlp.gate_proj.weight", &L.MLP.Gate)
			mat(p+"mlp.up_proj.weight", &L.MLP.Up)
			mat(p+"mlp.down_proj.weight", &L.MLP.Down)
			continue
		}
		mp := nm.moe(l)
		mat(mp+"gate.weight", &L.Gate)
		vec(mp+"gate.e_score_correction_bias", &L.ScoreBias, false)
		if L.Shared != nil {
			sp := mp + "shared_experts."
			if c.Family == Qwen2MoE {
				sp = mp + "shared_expert."
			}
			mat(sp+"gate_proj.weight", &L.Shared.Gate)
			mat(sp+"up_proj.weight", &L.Shared.Up)
			mat(sp+"down_proj.weight", &L.Shared.Down)
			mat(mp+"shared_expert_gate.weight", &L.SharedGate)
		}
	}
	vec("model.norm.weight", &m.Norm, true)
	if !m.tied() {
		mat("lm_head.weight", &m.LMHead)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("model: %d matrices are bfloat16 (e.g. %s): training needs float32 weights (load with KeepBF16 false)", len(errs), errs[0])
	}
	return out, nil
}

// tied reports whether lm_head shares embed_tokens' storage.
func (m *Model) tied() bool {
	if m.LMHead.F32 != nil && m.Embed.F32 != nil {
		return &m.LMHead.F32[0] == &m.Embed.F32[0]
	}
	if m.LMHead.BF16 != nil && m.Embed.BF16 != nil {
		return &m.LMHead.BF16[0] == &m.Embed.BF16[0]
	}
	return false
}

// Grads holds the gradients of a Model's dense parameters. Model is a
// shadow of the model whose weights are the gradient buffers (same struct,
// same shapes; lm_head shares embed_tokens' buffer when tied), so backward
// code addresses a gradient exactly as the forward addresses the weight.
// Flat is all dense gradients in one contiguous slice, in DenseParams order
// (what a bucketed all-reduce sends). Routed experts' gradients live with
// the expert executor.
type Grads struct {
	Model  *Model
	Flat   []float32
	Params []ParamRef // the gradient tensors, by hub name (aliases into Flat)
	spans  map[int][2]int
}

// Span returns the range [lo, hi) of Flat holding the gradients of a part
// as TrainState.OnGrads numbers them: -1 the embeddings, 0..L-1 a layer, L
// the final norm and lm_head. Parts are contiguous and in this order, so
// gradients finalize from the end of Flat towards its start.
func (g *Grads) Span(part int) (lo, hi int) {
	s := g.spans[part]
	return s[0], s[1]
}

// NewGrads allocates zeroed gradients shaped like m's dense parameters.
func (m *Model) NewGrads() (*Grads, error) {
	refs, err := m.DenseParams()
	if err != nil {
		return nil, err
	}
	n := 0
	for _, r := range refs {
		n += len(*r.Data)
	}
	g := &Grads{Flat: make([]float32, n), spans: map[int][2]int{}}
	shadow := m.shallowCopy()
	srefs, _ := shadow.DenseParams()
	off := 0
	for i, r := range srefs {
		k := len(*refs[i].Data)
		*r.Data = g.Flat[off : off+k : off+k]
		part := partOf(r.Name, m.Cfg.Layers)
		sp, ok := g.spans[part]
		if !ok {
			sp = [2]int{off, off}
		}
		sp[1] = off + k
		g.spans[part] = sp
		off += k
	}
	if m.tied() {
		shadow.LMHead = shadow.Embed
	}
	// Non-trained buffers get gradients too (always zero): keeps shapes uniform.
	g.Model = shadow
	g.Params, _ = shadow.DenseParams()
	return g, nil
}

// Zero clears every gradient.
func (g *Grads) Zero() { clear(g.Flat) }

// shallowCopy returns a Model with fresh Layer/FFN structs (so their slice
// fields can be repointed) sharing nothing mutable with m.
func (m *Model) shallowCopy() *Model {
	c := *m
	c.Layers = make([]Layer, len(m.Layers))
	copy(c.Layers, m.Layers)
	for l := range c.Layers {
		L := &c.Layers[l]
		if L.MLP != nil {
			f := *L.MLP
			L.MLP = &f
		}
		if L.Shared != nil {
			f := *L.Shared
			L.Shared = &f
		}
	}
	return &c
}

// partOf maps a dense parameter name to its OnGrads part.
func partOf(name string, layers int) int {
	const p = "model.layers."
	if strings.HasPrefix(name, p) {
		rest := name[len(p):]
		if i := strings.IndexByte(rest, '.'); i > 0 {
			if l, err := strconv.Atoi(rest[:i]); err == nil {
				return l
			}
		}
	}
	if name == "model.embed_tokens.weight" {
		return -1
	}
	return layers // model.norm, lm_head
}
