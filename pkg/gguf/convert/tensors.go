package convert

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/gguf"
	"github.com/switchyard/switchyard/pkg/model"
)

// topNames maps the hub names outside the layers to llama.cpp's.
var topNames = map[string]string{
	"model.embed_tokens.weight": "token_embd.weight",
	"model.norm.weight":         "output_norm.weight",
	"lm_head.weight":            "output.weight",
}

// layerNames maps a hub name inside layer N ("model.layers.N." + key) to
// llama.cpp's ("blk.N." + value), per gguf-py's tensor_mapping.py. Routed
// experts, DeepSeek's kv_b_proj and Mixtral's q/k permutation are handled
// by planTensors.
var layerNames = map[string]string{
	"input_layernorm.weight":              "attn_norm.weight",
	"post_attention_layernorm.weight":     "ffn_norm.weight",
	"self_attn.q_proj.weight":             "attn_q.weight",
	"self_attn.q_proj.bias":               "attn_q.bias",
	"self_attn.k_proj.weight":             "attn_k.weight",
	"self_attn.k_proj.bias":               "attn_k.bias",
	"self_attn.v_proj.weight":             "attn_v.weight",
	"self_attn.v_proj.bias":               "attn_v.bias",
	"self_attn.o_proj.weight":             "attn_output.weight",
	"self_attn.o_proj.bias":               "attn_output.bias",
	"self_attn.q_norm.weight":             "attn_q_norm.weight",
	"self_attn.k_norm.weight":             "attn_k_norm.weight",
	"self_attn.q_a_proj.weight":           "attn_q_a.weight",
	"self_attn.q_a_layernorm.weight":      "attn_q_a_norm.weight",
	"self_attn.q_b_proj.weight":           "attn_q_b.weight",
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
	"mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
	"mlp.shared_experts.up_proj.weight":   "ffn_up_shexp.weight",
	"mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
	"mlp.shared_expert_gate.weight":       "ffn_gate_inp_shexp.weight",
}

// f32Always are the matrices the converter keeps in F32 whatever the
// outtype (besides 1-D tensors, norms and non-.weight tensors).
var f32Always = []string{"ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight"}

// source computes one GGUF tensor's values, row-major in the GGUF tensor's
// numpy shape, and hands them to emit in one or more pieces of whole rows.
type source struct {
	kind  srcKind
	names []string // hub tensors read: one, or a stack's experts in order
	rows  int      // rows of each hub matrix
	cols  int      // columns of each hub matrix (1 for vectors)
	heads int      // permute: heads; kvb: H
	dn    int      // kvb: qk_nope_head_dim
	dv    int      // kvb: v_head_dim
}

type srcKind uint8

const (
	srcCopy    srcKind = iota // one tensor as is
	srcPermute                // LlamaModel.permute of a q/k weight or bias
	srcStack                  // experts stacked along a new outer axis
	srcKB                     // DeepSeek kv_b_proj -> attn_k_b [H, R, Dn]
	srcVB                     // DeepSeek kv_b_proj -> attn_v_b [H, Dv, R]
)

// planTensors fills p.Tensors and p.src from the family's tensor table,
// checking that every checkpoint tensor exists with the shape the config
// implies and is mapped exactly once.
func (p *Plan) planTensors() error {
	c, w := p.in.Config, p.in.Weights
	var errs []error
	seen := map[string]bool{}
	add := func(name string, shape []int, s source) {
		if seen[name] {
			errs = append(errs, fmt.Errorf("tensor %s mapped twice", name))
		}
		seen[name] = true
		dims := make([]uint64, len(shape))
		for i, d := range shape {
			dims[len(shape)-1-i] = uint64(d)
		}
		p.Tensors = append(p.Tensors, gguf.TensorInfo{Name: name, Dims: dims, Type: p.typeOf(name, dims)})
		p.src = append(p.src, s)
	}
	// need checks that hub tensor name exists with shape want.
	need := func(name string, want []int) bool {
		dt, shape, ok := w.Info(name)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("checkpoint has no tensor %s", name))
			return false
		case !slices.Equal(shape, want):
			errs = append(errs, fmt.Errorf("checkpoint tensor %s has shape %v (%s), config.json implies %v", name, shape, dt, want))
			return false
		}
		return true
	}
	specs := c.Tensors()
	if c.TieEmbed && c.MLA == nil {
		// The converter maps a tied checkpoint's lm_head when it has one, and
		// pkg/model then reads it untied too (DeepseekV2Model skips it).
		if _, _, ok := w.Info("lm_head.weight"); ok {
			specs = append(specs, model.TensorSpec{Name: "lm_head.weight", Shape: []int{c.Vocab, c.Hidden}, Role: model.RoleMatrix})
		}
	}
	stacked := map[int]bool{}
	for _, s := range specs {
		if s.Role == model.RoleExpert {
			l := s.Expert.Layer
			if !stacked[l] {
				stacked[l] = true
				p.planExperts(l, add, need)
			}
			continue
		}
		if !need(s.Name, s.Shape) {
			continue
		}
		rows, cols := s.Shape[0], 1
		if len(s.Shape) == 2 {
			cols = s.Shape[1]
		}
		one := source{kind: srcCopy, names: []string{s.Name}, rows: rows, cols: cols}
		if g, ok := topNames[s.Name]; ok {
			add(g, s.Shape, one)
			continue
		}
		l, key, ok := splitLayer(s.Name)
		if !ok {
			errs = append(errs, fmt.Errorf("tensor %s has no llama.cpp name for %s", s.Name, p.Arch))
			continue
		}
		blk := fmt.Sprintf("blk.%d.", l)
		switch {
		case key == "self_attn.kv_b_proj.weight":
			m := c.MLA
			kvb := source{names: []string{s.Name}, rows: rows, cols: cols, heads: c.Heads, dn: m.QKNopeDim, dv: m.VDim}
			kvb.kind = srcKB
			add(blk+"attn_k_b.weight", []int{c.Heads, m.KVLoraRank, m.QKNopeDim}, kvb)
			kvb.kind = srcVB
			add(blk+"attn_v_b.weight", []int{c.Heads, m.VDim, m.KVLoraRank}, kvb)
		case c.Family == model.Mixtral && (strings.HasPrefix(key, "self_attn.q_proj.") || strings.HasPrefix(key, "self_attn.k_proj.")):
			// LlamaModel.permute(w, n_head, n_head) for q and
			// permute(w, n_head, n_kv_head) for k, which permutes by n_kv_head.
			perm := one
			perm.kind, perm.heads = srcPermute, c.Heads
			if strings.HasPrefix(key, "self_attn.k_proj.") {
				perm.heads = c.KVHeads
			}
			add(blk+layerNames[key], s.Shape, perm)
		default:
			g, ok := layerNames[key]
			if !ok {
				errs = append(errs, fmt.Errorf("tensor %s has no llama.cpp name for %s", s.Name, p.Arch))
				continue
			}
			add(blk+g, s.Shape, one)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}

// planExperts adds layer l's three expert stacks, in the converter's order
// (Mixtral: w1 w2 w3 = gate down up; the others: down gate up).
func (p *Plan) planExperts(l int, add func(string, []int, source), need func(string, []int) bool) {
	c := p.in.Config
	E, D, F := c.MoE.Router.NumExperts, c.Hidden, c.MoE.Inter
	const gate, up, down = 0, 1, 2
	order := []int{down, gate, up}
	if c.Family == model.Mixtral {
		order = []int{gate, down, up}
	}
	ggufNames := [3]string{"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"}
	for _, which := range order {
		rows, cols := F, D
		if which == down {
			rows, cols = D, F
		}
		names := make([]string, E)
		ok := true
		for e := 0; e < E; e++ {
			specs := c.ExpertTensors(expert.ID{Layer: l, Expert: e})
			names[e] = specs[which].Name
			ok = need(names[e], []int{rows, cols}) && ok
		}
		if ok {
			add(fmt.Sprintf("blk.%d.%s", l, ggufNames[which]), []int{E, rows, cols},
				source{kind: srcStack, names: names, rows: rows, cols: cols})
		}
	}
}

// splitLayer splits "model.layers.N.rest" into N and rest.
func splitLayer(name string) (int, string, bool) {
	rest, ok := strings.CutPrefix(name, "model.layers.")
	if !ok {
		return 0, "", false
	}
	num, key, ok := strings.Cut(rest, ".")
	if !ok {
		return 0, "", false
	}
	l, err := strconv.Atoi(num)
	return l, key, err == nil
}

// typeOf is the GGUF type of a tensor under ModelBase.prepare_tensors'
// rules for the plan's OutType.
func (p *Plan) typeOf(name string, dims []uint64) gguf.GGMLType {
	if len(dims) <= 1 || strings.HasSuffix(name, "_norm.weight") || !strings.HasSuffix(name, ".weight") {
		return gguf.F32
	}
	for _, s := range f32Always {
		if strings.HasSuffix(name, "."+s) {
			return gguf.F32
		}
	}
	t := fileTypes[p.OutType].typ
	if t == gguf.Q8_0 && dims[0]%gguf.QK8_0 != 0 {
		// gguf.quants raises QuantError; the converter falls back to F16.
		p.Notes = append(p.Notes, fmt.Sprintf("%s: ne[0] = %d is not a multiple of 32, written as F16 (as the converter does)", name, dims[0]))
		return gguf.F16
	}
	return t
}

// produce reads the source's checkpoint tensors and emits the GGUF
// tensor's values in row-major order (a stack one expert at a time).
func (s source) produce(w model.Source, emit func([]float32) error) error {
	read := func(name string) ([]float32, error) {
		x, err := w.Float32(name)
		if err != nil {
			return nil, err
		}
		if len(x) != s.rows*s.cols {
			return nil, fmt.Errorf("%s has %d values, want %d", name, len(x), s.rows*s.cols)
		}
		return x, nil
	}
	switch s.kind {
	case srcCopy:
		x, err := read(s.names[0])
		if err != nil {
			return err
		}
		return emit(x)
	case srcStack:
		for _, n := range s.names {
			x, err := read(n)
			if err != nil {
				return err
			}
			if err := emit(x); err != nil {
				return err
			}
		}
		return nil
	case srcPermute:
		x, err := read(s.names[0])
		if err != nil {
			return err
		}
		out, err := PermuteQK(x, s.rows, s.cols, s.heads)
		if err != nil {
			return fmt.Errorf("%s: %w", s.names[0], err)
		}
		return emit(out)
	case srcKB, srcVB:
		x, err := read(s.names[0])
		if err != nil {
			return err
		}
		k, v, err := SplitKVB(x, s.heads, s.dn, s.dv, s.cols)
		if err != nil {
			return fmt.Errorf("%s: %w", s.names[0], err)
		}
		if s.kind == srcKB {
			return emit(k)
		}
		return emit(v)
	}
	return fmt.Errorf("unknown source kind %d", s.kind)
}

// PermuteQK is LlamaModel.permute: x is a [rows, cols] row-major weight (or
// a bias, cols = 1) of heads heads of rows/heads rows each; within each head
// the rows of the two rotary halves are interleaved: output row
// h*Dh + 2j + i is input row h*Dh + i*Dh/2 + j (Dh = rows/heads, j < Dh/2,
// i in {0, 1}). It returns a new slice.
func PermuteQK(x []float32, rows, cols, heads int) ([]float32, error) {
	if heads <= 0 || rows%heads != 0 || (rows/heads)%2 != 0 || len(x) != rows*cols {
		return nil, fmt.Errorf("cannot permute %d x %d values (%d given) into %d heads of even size", rows, cols, len(x), heads)
	}
	dh := rows / heads
	out := make([]float32, len(x))
	for h := 0; h < heads; h++ {
		for i := 0; i < 2; i++ {
			for j := 0; j < dh/2; j++ {
				dst := (h*dh + 2*j + i) * cols
				src := (h*dh + i*dh/2 + j) * cols
				copy(out[dst:dst+cols], x[src:src+cols])
			}
		}
	}
	return out, nil
}

// SplitKVB splits DeepSeek's kv_b_proj, row-major [H*(Dn+Dv), R] with each
// head's Dn key rows then Dv value rows, as DeepseekV2Model does: k is
// [H, R, Dn] (the key rows transposed: k[h][r][n] = x[h*(Dn+Dv)+n][r]) and
// v is [H, Dv, R] (v[h][j][r] = x[h*(Dn+Dv)+Dn+j][r]).
func SplitKVB(x []float32, heads, dn, dv, r int) (k, v []float32, err error) {
	if len(x) != heads*(dn+dv)*r {
		return nil, nil, fmt.Errorf("kv_b_proj has %d values, want %d x (%d + %d) x %d", len(x), heads, dn, dv, r)
	}
	k = make([]float32, heads*r*dn)
	v = make([]float32, heads*dv*r)
	for h := 0; h < heads; h++ {
		base := h * (dn + dv) * r
		for n := 0; n < dn; n++ {
			for j := 0; j < r; j++ {
				k[(h*r+j)*dn+n] = x[base+n*r+j]
			}
		}
		copy(v[h*dv*r:(h+1)*dv*r], x[base+dn*r:base+(dn+dv)*r])
	}
	return k, v, nil
}
