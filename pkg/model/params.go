package model

import "fmt"

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

	part int // TrainState.OnGrads part (see Grads.Span)
}

// DenseParams lists every dense parameter (everything except routed
// experts) under its hub name, in Config.Tensors order. With tied
// embeddings lm_head is not listed (it is embed_tokens). Matrices must be
// float32 (load with KeepBF16 false); a bfloat16 matrix is an error.
func (m *Model) DenseParams() ([]ParamRef, error) {
	var out []ParamRef
	var bf16 []string
	for _, s := range m.Cfg.layout(m.tied()) {
		if s.Bind == nil {
			continue // a routed expert: it lives in the executor
		}
		r := ParamRef{Name: s.Name, Shape: s.Shape, Trained: !s.Buffer, part: s.part}
		if slot := s.Bind(m); slot.Mat == nil {
			r.Data = slot.Vec
		} else if slot.Mat.F32 == nil {
			bf16 = append(bf16, s.Name)
			continue
		} else {
			r.Data = &slot.Mat.F32
		}
		out = append(out, r)
	}
	if len(bf16) > 0 {
		return nil, fmt.Errorf("model: %d matrices are bfloat16 (e.g. %s): training needs float32 weights (load with KeepBF16 false)", len(bf16), bf16[0])
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
		sp, ok := g.spans[r.part]
		if !ok {
			sp = [2]int{off, off}
		}
		sp[1] = off + k
		g.spans[r.part] = sp
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
