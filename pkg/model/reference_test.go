package model

// A slow, float64, deliberately literal second reading of transformers'
// modeling code for the six families, used only by tests. It shares nothing
// with the fast path: it reads settings from the raw config.json map (with
// transformers' own defaults), weights by hub tensor name from a Source, and
// computes one token, one head, one expert at a time:
//
//   - RMSNorm: w * x / sqrt(mean(x^2) + eps)
//   - GQA attention with repeat_kv (query head h reads kv head h / (H/Hkv)),
//     causal mask plus the sliding-window overlay kv > q - window
//   - Qwen3-MoE q/k RMSNorm per head, OLMoE q/k RMSNorm over the whole
//     projection and clip_qkv after it
//   - RoPE: cat(freqs, freqs) with rotate_half (Llama style), complex pairs
//     (DeepSeek-V2 apply_rotary_emb), or the view/transpose permutation
//     followed by rotate_half (DeepSeek-V3 rope_interleave); inverse
//     frequencies from modeling_rope_utils' default/linear/yarn/llama3
//     formulas, computed here and rounded to float32 as torch does
//   - MLA the naive way: keys and values of every position expanded through
//     kv_b_proj, queries [q_nope, q_pe], keys [k_nope, k_pe shared by heads]
//   - routing as each family's router class does it, including the 0.0
//     masking of dropped groups (DeepseekV2Moe group_limited_greedy and
//     DeepseekV3TopkRouter); the smallest gap between the k-th and (k+1)-th
//     selection score and between kept and dropped group scores is reported
//     so tests can avoid near-ties float32 may legitimately resolve otherwise
//   - shared experts, Qwen2-MoE's sigmoid(shared_expert_gate) factor,
//     first_k_dense_replace, decoder_sparse_step, mlp_only_layers, tied
//     embeddings.
//
// transformers itself rounds a few intermediates to float32 even in a
// float64 model (RoPE angles and inverse frequencies, RMSNorm, router
// softmax); only the RoPE rounding is reproduced, the rest stays float64.

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

// hfConfig is config.json as a raw map.
type hfConfig map[string]any

func (c hfConfig) has(k string) bool {
	v, ok := c[k]
	return ok && v != nil
}

func (c hfConfig) num(k string, def float64) float64 {
	if !c.has(k) {
		return def
	}
	v, ok := c[k].(float64)
	if !ok {
		panic(fmt.Sprintf("config %s = %v is not a number", k, c[k]))
	}
	return v
}

func (c hfConfig) int(k string, def int) int {
	v := c.num(k, float64(def))
	if v != math.Trunc(v) {
		panic(fmt.Sprintf("config %s = %v is not an integer", k, v))
	}
	return int(v)
}

func (c hfConfig) flag(k string, def bool) bool {
	if !c.has(k) {
		return def
	}
	v, ok := c[k].(bool)
	if !ok {
		panic(fmt.Sprintf("config %s = %v is not a boolean", k, c[k]))
	}
	return v
}

func (c hfConfig) str(k, def string) string {
	if !c.has(k) {
		return def
	}
	v, ok := c[k].(string)
	if !ok {
		panic(fmt.Sprintf("config %s = %v is not a string", k, c[k]))
	}
	return v
}

func (c hfConfig) list(k string) []any {
	if !c.has(k) {
		return nil
	}
	v, ok := c[k].([]any)
	if !ok {
		panic(fmt.Sprintf("config %s = %v is not a list", k, c[k]))
	}
	return v
}

func (c hfConfig) sub(k string) hfConfig {
	if !c.has(k) {
		return nil
	}
	v, ok := c[k].(map[string]any)
	if !ok {
		panic(fmt.Sprintf("config %s = %v is not an object", k, c[k]))
	}
	return hfConfig(v)
}

// Rotary layouts.
const (
	ropeRotateHalf = iota // Llama: cos/sin = cat(freqs, freqs), x*cos + rotate_half(x)*sin
	ropeComplex           // DeepSeek-V2: (x[2i] + i x[2i+1]) * e^{i freq}
	ropePermuted          // DeepSeek-V3 rope_interleave: x.view(d/2, 2).transpose, then rotate_half
)

// refModel is the reference's view of one checkpoint.
type refModel struct {
	fam string
	c   hfConfig
	src Source
	w   map[string][]float64

	D, V, L int
	eps     float64
	// GQA
	H, Hkv, Dh int
	// MLA
	mla                       bool
	qLora, kvLora, dn, dr, dv int

	scale      float64   // softmax scale
	inv        []float64 // RoPE inverse frequencies (float32 values)
	attnFactor float64   // multiplies cos and sin
	ropeLayout int
	window     []int  // per layer: sliding window, 0 = full causal
	sparse     []bool // per layer: MoE block
}

// refStats collects routing facts over a forward pass.
type refStats struct {
	minMargin   float64 // smallest k-th vs (k+1)-th selection gap, kept vs dropped group gap
	maskedPicks int     // experts chosen from a dropped group (0.0-masked, HF only)
	routed      int     // token-layer routing decisions
	biasChanged int     // DeepSeek-V3 decisions the score correction bias changed
}

// refOutput is the reference forward pass of a batch of sequences.
type refOutput struct {
	Logits [][]float64   // [B][T*V]
	Hidden [][][]float64 // [B][L+1][T*D]
	Stats  refStats
	Sparse []bool // per layer: a MoE block (else a dense MLP)
}

// refForward runs the reference over each sequence of ids.
func refForward(configJSON []byte, src Source, ids [][]int32) (out *refOutput, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reference: %v", r)
		}
	}()
	var c hfConfig
	if err := json.Unmarshal(configJSON, &c); err != nil {
		return nil, err
	}
	m := newRefModel(c, src)
	out = &refOutput{Stats: refStats{minMargin: math.Inf(1)}, Sparse: m.sparse}
	for _, seq := range ids {
		logits, hidden := m.forward(seq, &out.Stats)
		out.Logits = append(out.Logits, logits)
		out.Hidden = append(out.Hidden, hidden)
	}
	return out, nil
}

func newRefModel(c hfConfig, src Source) *refModel {
	m := &refModel{fam: c.str("model_type", ""), c: c, src: src, w: map[string][]float64{}}
	m.D = c.int("hidden_size", 0)
	m.V = c.int("vocab_size", 0)
	m.L = c.int("num_hidden_layers", 0)
	m.H = c.int("num_attention_heads", 0)
	m.Hkv = c.int("num_key_value_heads", m.H)
	// transformers' per-family rms_norm_eps defaults.
	epsDef := 1e-6
	if m.fam == "mixtral" || m.fam == "olmoe" {
		epsDef = 1e-5
	}
	m.eps = c.num("rms_norm_eps", epsDef)
	m.window = make([]int, m.L)
	m.sparse = make([]bool, m.L)

	ropeDim := 0
	switch m.fam {
	case "mixtral", "qwen2_moe", "qwen3_moe", "olmoe":
		// getattr(config, "head_dim", None) or hidden_size // num_attention_heads
		m.Dh = c.int("head_dim", 0)
		if m.Dh == 0 {
			m.Dh = m.D / m.H
		}
		m.scale = 1 / math.Sqrt(float64(m.Dh))
		ropeDim = m.Dh
		m.ropeLayout = ropeRotateHalf
	case "deepseek_v2", "deepseek_v3":
		m.mla = true
		m.qLora = c.int("q_lora_rank", 0)
		m.kvLora = c.int("kv_lora_rank", 0)
		m.dn = c.int("qk_nope_head_dim", 0)
		m.dr = c.int("qk_rope_head_dim", 0)
		m.dv = c.int("v_head_dim", 0)
		m.scale = 1 / math.Sqrt(float64(m.dn+m.dr)) // qk_head_dim ** -0.5
		ropeDim = m.dr                              // config.head_dim = qk_rope_head_dim
		m.ropeLayout = ropeComplex
		if m.fam == "deepseek_v3" {
			m.ropeLayout = ropeRotateHalf
			if c.flag("rope_interleave", true) {
				m.ropeLayout = ropePermuted
			}
		}
	default:
		panic(fmt.Sprintf("model_type %q", m.fam))
	}
	m.inv, m.attnFactor = refRopeFreqs(c, ropeDim)
	if m.mla {
		// DeepseekV{2,3}Attention: under a non-default rope with
		// mscale_all_dim, scaling *= yarn_get_mscale(factor, mscale_all_dim)^2.
		rp := refRopeParams(c)
		if rp.str("rope_type", rp.str("type", "default")) != "default" && rp.num("mscale_all_dim", 0) != 0 {
			ms := refYarnMscale(rp.num("factor", 1), rp.num("mscale_all_dim", 0))
			m.scale *= ms * ms
		}
	}

	// Which layers are sparse, and which attend through a sliding window.
	for l := 0; l < m.L; l++ {
		switch m.fam {
		case "mixtral":
			m.sparse[l] = true
			m.window[l] = c.int("sliding_window", 0) // None: full attention
		case "olmoe":
			m.sparse[l] = true // OlmoeModel builds a plain causal mask
		case "qwen2_moe", "qwen3_moe":
			experts := c.int("num_experts", c.int("num_local_experts", 0))
			step := c.int("decoder_sparse_step", 1)
			only := false
			for _, x := range c.list("mlp_only_layers") {
				only = only || int(x.(float64)) == l
			}
			m.sparse[l] = !only && experts > 0 && (l+1)%step == 0
			if c.flag("use_sliding_window", false) {
				if m.fam == "qwen3_moe" {
					m.window[l] = c.int("sliding_window", 0)
				} else if refQwen2LayerType(c, l) == "sliding_attention" {
					m.window[l] = c.int("sliding_window", 0)
				}
			}
		case "deepseek_v2", "deepseek_v3":
			m.sparse[l] = l >= c.int("first_k_dense_replace", 0)
		}
	}
	return m
}

// refQwen2LayerType is Qwen2MoeConfig.layer_types[l].
func refQwen2LayerType(c hfConfig, l int) string {
	if lt := c.list("layer_types"); lt != nil {
		return lt[l].(string)
	}
	if (l+1)%2 == 1 && l < c.int("max_window_layers", 28) && c.flag("use_sliding_window", false) {
		return "sliding_attention"
	}
	return "full_attention"
}

func refRopeParams(c hfConfig) hfConfig {
	if rp := c.sub("rope_parameters"); rp != nil {
		return rp
	}
	if rp := c.sub("rope_scaling"); rp != nil {
		return rp
	}
	return hfConfig{}
}

func refYarnMscale(scale, m float64) float64 {
	if scale <= 1 {
		return 1
	}
	return 0.1*m*math.Log(scale) + 1
}

// refRopeFreqs computes inv_freq [dim/2] and the attention factor of
// ROPE_INIT_FUNCTIONS[rope_type] (modeling_rope_utils.py). torch computes
// them in float32; every frequency is rounded to float32 once at the end.
func refRopeFreqs(c hfConfig, dim int) ([]float64, float64) {
	rp := refRopeParams(c)
	typ := rp.str("rope_type", rp.str("type", "default"))
	base := rp.num("rope_theta", c.num("rope_theta", 10000))
	maxPos := c.num("max_position_embeddings", 2048)
	half := dim / 2
	inv := make([]float64, half)
	for i := range inv {
		// 1 / base ** (arange(0, dim, 2) / dim)
		inv[i] = 1 / math.Pow(base, float64(2*i)/float64(dim))
	}
	attn := 1.0
	switch typ {
	case "default":
	case "linear":
		f := rp.num("factor", 0)
		for i := range inv {
			inv[i] /= f
		}
	case "llama3":
		f := rp.num("factor", 0)
		lo, hi := rp.num("low_freq_factor", 0), rp.num("high_freq_factor", 0)
		old := rp.num("original_max_position_embeddings", 0)
		loWave, hiWave := old/lo, old/hi
		for i, fr := range inv {
			wave := 2 * math.Pi / fr
			switch {
			case wave < hiWave: // high frequency: kept
			case wave > loWave: // low frequency: interpolated
				inv[i] = fr / f
			default: // medium: smooth blend
				s := (old/wave - lo) / (hi - lo)
				inv[i] = (1-s)*fr/f + s*fr
			}
		}
	case "yarn":
		orig := rp.num("original_max_position_embeddings", maxPos)
		f := rp.num("factor", maxPos/orig)
		if rp.has("attention_factor") {
			attn = rp.num("attention_factor", 0)
		} else if ms, msa := rp.num("mscale", 0), rp.num("mscale_all_dim", 0); ms != 0 && msa != 0 {
			attn = refYarnMscale(f, ms) / refYarnMscale(f, msa)
		} else {
			attn = refYarnMscale(f, 1)
		}
		betaFast, betaSlow := rp.num("beta_fast", 0), rp.num("beta_slow", 0)
		if betaFast == 0 {
			betaFast = 32
		}
		if betaSlow == 0 {
			betaSlow = 1
		}
		corrDim := func(rot float64) float64 {
			return float64(dim) * math.Log(orig/(rot*2*math.Pi)) / (2 * math.Log(base))
		}
		low, high := corrDim(betaFast), corrDim(betaSlow)
		if rp.flag("truncate", true) {
			low, high = math.Floor(low), math.Ceil(high)
		}
		low, high = math.Max(low, 0), math.Min(high, float64(dim-1))
		if low == high {
			high += 0.001
		}
		for i := range inv {
			extrap := inv[i]
			interp := 1 / (f * math.Pow(base, float64(2*i)/float64(dim)))
			ramp := math.Min(math.Max((float64(i)-low)/(high-low), 0), 1)
			extrapFactor := 1 - ramp
			inv[i] = interp*(1-extrapFactor) + extrap*extrapFactor
		}
	default:
		panic(fmt.Sprintf("rope_type %q not in the reference", typ))
	}
	for i := range inv {
		inv[i] = float64(float32(inv[i]))
	}
	return inv, attn
}

// weight returns a tensor by hub name, widened to float64.
func (m *refModel) weight(name string) []float64 {
	if v, ok := m.w[name]; ok {
		return v
	}
	f, err := m.src.Float32(name)
	if err != nil {
		panic(fmt.Sprintf("weight %s: %v", name, err))
	}
	v := make([]float64, len(f))
	for i, x := range f {
		v[i] = float64(x)
	}
	m.w[name] = v
	return v
}

func (m *refModel) hasWeight(name string) bool {
	_, _, ok := m.src.Info(name)
	return ok
}

// linear is nn.Linear: y = W x (+ b), W [out, in] row-major.
func (m *refModel) linear(name string, x []float64, bias bool) []float64 {
	w := m.weight(name + ".weight")
	in := len(x)
	if len(w)%in != 0 {
		panic(fmt.Sprintf("%s: %d weights for input %d", name, len(w), in))
	}
	out := make([]float64, len(w)/in)
	for o := range out {
		var s float64
		for i, xi := range x {
			s += w[o*in+i] * xi
		}
		out[o] = s
	}
	if bias {
		b := m.weight(name + ".bias")
		for o := range out {
			out[o] += b[o]
		}
	}
	return out
}

func refRMSNorm(x, w []float64, eps float64) []float64 {
	var ss float64
	for _, v := range x {
		ss += v * v
	}
	r := 1 / math.Sqrt(ss/float64(len(x))+eps)
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = w[i] * (v * r)
	}
	return out
}

func refSoftmax(x []float64) []float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = math.Max(mx, v)
	}
	out := make([]float64, len(x))
	var z float64
	for i, v := range x {
		out[i] = math.Exp(v - mx)
		z += out[i]
	}
	for i := range out {
		out[i] /= z
	}
	return out
}

func refSilu(x float64) float64 { return x / (1 + math.Exp(-x)) }

// refTopK returns the indices of the k largest values, best first, and the
// gap between the k-th and (k+1)-th values (+Inf when k = len(x)).
func refTopK(x []float64, k int) ([]int, float64) {
	idx := make([]int, len(x))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return x[idx[a]] > x[idx[b]] })
	gap := math.Inf(1)
	if k < len(x) {
		gap = x[idx[k-1]] - x[idx[k]]
	}
	return idx[:k], gap
}

// rope rotates x (length = 2*len(inv)) for position pos, returning a new slice.
func (m *refModel) rope(x []float64, pos int) []float64 {
	half := len(m.inv)
	cos := make([]float64, half)
	sin := make([]float64, half)
	for i, f := range m.inv {
		// freqs = inv_freq.float() @ position_ids.float(): a float32 product.
		a := float64(float32(pos) * float32(f))
		cos[i] = math.Cos(a) * m.attnFactor
		sin[i] = math.Sin(a) * m.attnFactor
	}
	rotateHalf := func(x []float64) []float64 {
		// emb = cat(freqs, freqs); x*cos + cat(-x2, x1)*sin
		out := make([]float64, 2*half)
		for d := 0; d < 2*half; d++ {
			var rot float64
			if d < half {
				rot = -x[d+half]
			} else {
				rot = x[d-half]
			}
			out[d] = x[d]*cos[d%half] + rot*sin[d%half]
		}
		return out
	}
	switch m.ropeLayout {
	case ropeRotateHalf:
		return rotateHalf(x)
	case ropePermuted:
		// q.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
		p := make([]float64, 2*half)
		for i := 0; i < half; i++ {
			p[i] = x[2*i]
			p[half+i] = x[2*i+1]
		}
		return rotateHalf(p)
	default: // ropeComplex
		out := make([]float64, 2*half)
		for i := 0; i < half; i++ {
			re, im := x[2*i], x[2*i+1]
			out[2*i] = re*cos[i] - im*sin[i]
			out[2*i+1] = re*sin[i] + im*cos[i]
		}
		return out
	}
}

// forward runs one sequence and returns logits [T*V] and hidden states [L+1][T*D].
func (m *refModel) forward(ids []int32, st *refStats) ([]float64, [][]float64) {
	D, T := m.D, len(ids)
	emb := m.weight("model.embed_tokens.weight")
	x := make([][]float64, T)
	for t, id := range ids {
		x[t] = slices.Clone(emb[int(id)*D : int(id+1)*D])
	}
	var hidden [][]float64
	snapshot := func() {
		flat := make([]float64, 0, T*D)
		for _, r := range x {
			flat = append(flat, r...)
		}
		hidden = append(hidden, flat)
	}
	snapshot()
	for l := 0; l < m.L; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		h := make([][]float64, T)
		for t := range x {
			h[t] = refRMSNorm(x[t], m.weight(p+"input_layernorm.weight"), m.eps)
		}
		var a [][]float64
		if m.mla {
			a = m.mlaAttention(l, h)
		} else {
			a = m.gqaAttention(l, h)
		}
		for t := range x {
			for d := range x[t] {
				x[t][d] += a[t][d]
			}
		}
		for t := range x {
			hn := refRMSNorm(x[t], m.weight(p+"post_attention_layernorm.weight"), m.eps)
			var y []float64
			if m.sparse[l] {
				y = m.moe(l, hn, st)
			} else {
				y = m.mlp(p+"mlp.", hn)
			}
			for d := range x[t] {
				x[t][d] += y[d]
			}
		}
		if l < m.L-1 {
			snapshot()
		}
	}
	for t := range x {
		x[t] = refRMSNorm(x[t], m.weight("model.norm.weight"), m.eps)
	}
	snapshot()
	head := "lm_head"
	if m.c.flag("tie_word_embeddings", false) {
		head = "model.embed_tokens"
	}
	logits := make([]float64, 0, T*m.V)
	for t := range x {
		logits = append(logits, m.linear(head, x[t], false)...)
	}
	return logits, hidden
}

// attend is eager_attention_forward for one head: softmax(scale q.k_j) over
// the visible keys j of query position t, then the weighted sum of values.
func (m *refModel) attend(l, t int, score func(j int) float64, value func(j int) []float64, dv int) []float64 {
	var js []int
	for j := 0; j <= t; j++ {
		if w := m.window[l]; w > 0 && !(j > t-w) {
			continue
		}
		js = append(js, j)
	}
	s := make([]float64, len(js))
	for i, j := range js {
		s[i] = m.scale * score(j)
	}
	p := refSoftmax(s)
	out := make([]float64, dv)
	for i, j := range js {
		v := value(j)
		for d := range out {
			out[d] += p[i] * v[d]
		}
	}
	return out
}

func (m *refModel) gqaAttention(l int, h [][]float64) [][]float64 {
	p := fmt.Sprintf("model.layers.%d.self_attn.", l)
	H, Hkv, Dh := m.H, m.Hkv, m.Dh
	var qb, kvb, ob bool
	switch m.fam {
	case "qwen2_moe":
		qb = m.c.flag("qkv_bias", true)
		kvb = qb
	case "qwen3_moe", "olmoe":
		qb = m.c.flag("attention_bias", false)
		kvb, ob = qb, qb
	}
	T := len(h)
	q := make([][]float64, T)
	k := make([][]float64, T)
	v := make([][]float64, T)
	for t := range h {
		q[t] = m.linear(p+"q_proj", h[t], qb)
		k[t] = m.linear(p+"k_proj", h[t], kvb)
		v[t] = m.linear(p+"v_proj", h[t], kvb)
		switch m.fam {
		case "qwen3_moe": // q_norm(q.view(..., head_dim)), per head
			for hh := 0; hh < H; hh++ {
				copy(q[t][hh*Dh:], refRMSNorm(q[t][hh*Dh:(hh+1)*Dh], m.weight(p+"q_norm.weight"), m.eps))
			}
			for hh := 0; hh < Hkv; hh++ {
				copy(k[t][hh*Dh:], refRMSNorm(k[t][hh*Dh:(hh+1)*Dh], m.weight(p+"k_norm.weight"), m.eps))
			}
		case "olmoe": // q_norm(q_proj(x)) over the whole projection, then clamp
			q[t] = refRMSNorm(q[t], m.weight(p+"q_norm.weight"), m.eps)
			k[t] = refRMSNorm(k[t], m.weight(p+"k_norm.weight"), m.eps)
			if m.c.has("clip_qkv") {
				cl := m.c.num("clip_qkv", 0)
				for _, vec := range [][]float64{q[t], k[t], v[t]} {
					for i := range vec {
						vec[i] = math.Min(math.Max(vec[i], -cl), cl)
					}
				}
			}
		}
		for hh := 0; hh < H; hh++ {
			copy(q[t][hh*Dh:], m.rope(q[t][hh*Dh:(hh+1)*Dh], t))
		}
		for hh := 0; hh < Hkv; hh++ {
			copy(k[t][hh*Dh:], m.rope(k[t][hh*Dh:(hh+1)*Dh], t))
		}
	}
	groups := H / Hkv // num_key_value_groups
	out := make([][]float64, T)
	for t := range h {
		cat := make([]float64, 0, H*Dh)
		for hh := 0; hh < H; hh++ {
			g := hh / groups // repeat_kv
			qh := q[t][hh*Dh : (hh+1)*Dh]
			o := m.attend(l, t, func(j int) float64 {
				var s float64
				for d, qd := range qh {
					s += qd * k[j][g*Dh+d]
				}
				return s
			}, func(j int) []float64 { return v[j][g*Dh : (g+1)*Dh] }, Dh)
			cat = append(cat, o...)
		}
		out[t] = m.linear(p+"o_proj", cat, ob)
	}
	return out
}

func (m *refModel) mlaAttention(l int, h [][]float64) [][]float64 {
	p := fmt.Sprintf("model.layers.%d.self_attn.", l)
	H, dn, dr, dv, R := m.H, m.dn, m.dr, m.dv, m.kvLora
	bias := m.c.flag("attention_bias", false) // q_a_proj, kv_a_proj_with_mqa, o_proj
	T := len(h)
	qNope := make([][][]float64, T) // [T][H][dn]
	qPe := make([][][]float64, T)   // [T][H][dr] after RoPE
	kNope := make([][][]float64, T) // [T][H][dn]
	val := make([][][]float64, T)   // [T][H][dv]
	kPe := make([][]float64, T)     // [T][dr] after RoPE, shared by every head
	for t := range h {
		var q []float64
		if m.qLora > 0 {
			qa := m.linear(p+"q_a_proj", h[t], bias)
			// q_a_layernorm = DeepseekV*RMSNorm(q_lora_rank): default eps 1e-6
			q = m.linear(p+"q_b_proj", refRMSNorm(qa, m.weight(p+"q_a_layernorm.weight"), 1e-6), false)
		} else {
			q = m.linear(p+"q_proj", h[t], false)
		}
		ckv := m.linear(p+"kv_a_proj_with_mqa", h[t], bias)
		kv := m.linear(p+"kv_b_proj", refRMSNorm(ckv[:R], m.weight(p+"kv_a_layernorm.weight"), 1e-6), false)
		kPe[t] = m.rope(ckv[R:R+dr], t)
		for hh := 0; hh < H; hh++ {
			qh := q[hh*(dn+dr) : (hh+1)*(dn+dr)]
			qNope[t] = append(qNope[t], qh[:dn])
			qPe[t] = append(qPe[t], m.rope(qh[dn:], t))
			kvh := kv[hh*(dn+dv) : (hh+1)*(dn+dv)]
			kNope[t] = append(kNope[t], kvh[:dn])
			val[t] = append(val[t], kvh[dn:])
		}
	}
	out := make([][]float64, T)
	for t := range h {
		cat := make([]float64, 0, H*dv)
		for hh := 0; hh < H; hh++ {
			o := m.attend(l, t, func(j int) float64 {
				var s float64
				for d := 0; d < dn; d++ {
					s += qNope[t][hh][d] * kNope[j][hh][d]
				}
				for d := 0; d < dr; d++ {
					s += qPe[t][hh][d] * kPe[j][d]
				}
				return s
			}, func(j int) []float64 { return val[j][hh] }, dv)
			cat = append(cat, o...)
		}
		out[t] = m.linear(p+"o_proj", cat, bias)
	}
	return out
}

// mlp is down_proj(silu(gate_proj(x)) * up_proj(x)) under prefix p.
func (m *refModel) mlp(p string, x []float64) []float64 {
	return m.swiglu(p+"gate_proj", p+"up_proj", p+"down_proj", x)
}

func (m *refModel) swiglu(gate, up, down string, x []float64) []float64 {
	g := m.linear(gate, x, false)
	u := m.linear(up, x, false)
	for i := range g {
		g[i] = refSilu(g[i]) * u[i]
	}
	return m.linear(down, g, false)
}

// moe is the family's sparse block for one token.
func (m *refModel) moe(l int, x []float64, st *refStats) []float64 {
	c := m.c
	p := fmt.Sprintf("model.layers.%d.mlp.", l)
	if m.fam == "mixtral" {
		p = fmt.Sprintf("model.layers.%d.block_sparse_moe.", l)
	}
	logits := m.linear(p+"gate", x, false)
	E := len(logits)
	K := c.int("num_experts_per_tok", 0)
	note := func(gap float64) { st.minMargin = math.Min(st.minMargin, gap) }
	st.routed++

	var ids []int
	var w []float64
	switch m.fam {
	case "mixtral": // MixtralTopKRouter: softmax, top-k, always renormalized
		s := refSoftmax(logits)
		var gap float64
		ids, gap = refTopK(s, K)
		note(gap)
		var sum float64
		for _, e := range ids {
			sum += s[e]
		}
		for _, e := range ids {
			w = append(w, s[e]/sum)
		}
	case "qwen2_moe", "qwen3_moe", "olmoe": // softmax, top-k, renormalized iff norm_topk_prob
		s := refSoftmax(logits)
		var gap float64
		ids, gap = refTopK(s, K)
		note(gap)
		var sum float64
		for _, e := range ids {
			sum += s[e]
		}
		for _, e := range ids {
			if c.flag("norm_topk_prob", false) {
				w = append(w, s[e]/sum)
			} else {
				w = append(w, s[e])
			}
		}
	case "deepseek_v2": // DeepseekV2Moe.route_tokens_to_experts
		s := refSoftmax(logits)
		choice := s
		if c.str("topk_method", "greedy") == "group_limited_greedy" {
			G, TG := c.int("n_group", 0), c.int("topk_group", 0)
			per := E / G
			gs := make([]float64, G)
			for g := range gs {
				gs[g] = slices.Max(s[g*per : (g+1)*per]) // .max(dim=-1)
			}
			kept, gap := refTopK(gs, TG)
			note(gap)
			choice = make([]float64, E) // masked_fill(~score_mask, 0.0)
			for _, g := range kept {
				copy(choice[g*per:(g+1)*per], s[g*per:(g+1)*per])
			}
		}
		var gap float64
		ids, gap = refTopK(choice, K)
		note(gap)
		for _, e := range ids {
			w = append(w, choice[e]*c.num("routed_scaling_factor", 1))
		}
	case "deepseek_v3": // DeepseekV3TopkRouter / DeepseekV3MoE.route_tokens_to_experts
		s := make([]float64, E)
		for e, v := range logits {
			s[e] = 1 / (1 + math.Exp(-v))
		}
		bias := m.weight(p + "gate.e_score_correction_bias")
		G, TG := c.int("n_group", 8), c.int("topk_group", 4)
		var keptGroup []bool
		var groupGap, gap float64
		ids, keptGroup, groupGap, gap = refV3Select(s, bias, G, TG, K)
		if TG < G {
			note(groupGap)
		}
		note(gap)
		if unbiased, _, _, _ := refV3Select(s, nil, G, TG, K); !sameSet(ids, unbiased) {
			st.biasChanged++
		}
		per := E / G
		var sum float64
		for _, e := range ids {
			if !keptGroup[e/per] {
				st.maskedPicks++
			}
			sum += s[e]
		}
		for _, e := range ids {
			v := s[e]
			if c.flag("norm_topk_prob", true) {
				v /= sum + 1e-20
			}
			w = append(w, v*c.num("routed_scaling_factor", 2.5))
		}
	}

	y := make([]float64, m.D)
	for i, e := range ids {
		var o []float64
		ep := fmt.Sprintf("%sexperts.%d.", p, e)
		if m.fam == "mixtral" {
			o = m.swiglu(ep+"w1", ep+"w3", ep+"w2", x)
		} else {
			o = m.mlp(ep, x)
		}
		for d := range y {
			y[d] += w[i] * o[d]
		}
	}
	switch m.fam {
	case "qwen2_moe":
		s := m.mlp(p+"shared_expert.", x)
		g := m.linear(p+"shared_expert_gate", x, false)[0]
		sg := 1 / (1 + math.Exp(-g))
		for d := range y {
			y[d] += sg * s[d]
		}
	case "deepseek_v2", "deepseek_v3":
		if c.has("n_shared_experts") && c.int("n_shared_experts", 0) > 0 {
			s := m.mlp(p+"shared_experts.", x)
			for d := range y {
				y[d] += s[d]
			}
		}
	}
	return y
}

// refV3Select is DeepseekV3's get_topk_indices: selection scores s + bias
// (bias may be nil), group score = sum of the group's top 2, the topk_group
// best groups kept, the others' scores masked to 0.0, then top-k. It returns
// the experts, which groups were kept, and the kept/dropped group gap and
// k-th/(k+1)-th score gap.
func refV3Select(s, bias []float64, G, TG, K int) (ids []int, keptGroup []bool, groupGap, gap float64) {
	E := len(s)
	choice := make([]float64, E)
	for e := range choice {
		choice[e] = s[e]
		if bias != nil {
			choice[e] += bias[e]
		}
	}
	per := E / G
	gs := make([]float64, G)
	for g := range gs {
		top2, _ := refTopK(choice[g*per:(g+1)*per], 2) // .topk(2)[0].sum()
		gs[g] = choice[g*per+top2[0]] + choice[g*per+top2[1]]
	}
	kept, groupGap := refTopK(gs, TG)
	keptGroup = make([]bool, G)
	for _, g := range kept {
		keptGroup[g] = true
	}
	for e := range choice {
		if !keptGroup[e/per] {
			choice[e] = 0.0 // masked_fill(~score_mask.bool(), 0.0)
		}
	}
	ids, gap = refTopK(choice, K)
	return ids, keptGroup, groupGap, gap
}

func sameSet(a, b []int) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// relL2vs64 is ||got - want|| / ||want|| with a float64 reference.
func relL2vs64(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for i := range got {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	return math.Sqrt(num / den)
}

// flatRef concatenates per-sequence reference rows in batch order.
func flatRef(parts [][]float64) []float64 {
	var out []float64
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// TestReferenceMatchesGolden checks the reference itself against the
// transformers float64 outputs stored with each golden model.
func TestReferenceMatchesGolden(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			dir := goldenDir(name)
			cfgJSON := readFile(t, filepath.Join(dir, "config.json"))
			f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			g, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			info, err := g.Info("input_ids")
			if err != nil {
				t.Fatal(err)
			}
			ids64, _ := g.Int64("input_ids")
			ids := ids2D(ids64, info.Shape[0])
			ref, err := refForward(cfgJSON, NewSource(f, ""), ids)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := g.Float32("logits")
			if e := relL2vs64(want, flatRef(ref.Logits)); e > 1e-5 {
				t.Errorf("logits: reference vs transformers rel L2 %.3g > 1e-5", e)
			} else {
				t.Logf("logits rel L2 %.3g; routing min margin %.3g over %d decisions", e, ref.Stats.minMargin, ref.Stats.routed)
			}
			hs, _ := g.Float32("hidden_states")
			L := len(ref.Hidden[0])
			per := len(hs) / L
			for l := 0; l < L; l++ {
				var parts [][]float64
				for b := range ref.Hidden {
					parts = append(parts, ref.Hidden[b][l])
				}
				if e := relL2vs64(hs[l*per:(l+1)*per], flatRef(parts)); e > 1e-5 {
					t.Errorf("hidden state %d: reference vs transformers rel L2 %.3g > 1e-5", l, e)
				}
			}
		})
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// compareWithRef checks a Forward output (all logits, hidden states) of a
// batch against the reference of the same batch: relative L2 of the logits
// and of every hidden state must be <= tol. It returns the logits' error
// and the worst hidden state's.
func compareWithRef(t *testing.T, out *Output, ref *refOutput, tol float64) (logits, worstHidden float64) {
	t.Helper()
	logits = relL2vs64(out.Logits, flatRef(ref.Logits))
	if logits > tol {
		t.Errorf("logits rel L2 %.3g > %g", logits, tol)
	}
	if len(out.Hidden) != len(ref.Hidden[0]) {
		t.Fatalf("%d hidden states, the reference has %d", len(out.Hidden), len(ref.Hidden[0]))
	}
	for l, h := range out.Hidden {
		var parts [][]float64
		for b := range ref.Hidden {
			parts = append(parts, ref.Hidden[b][l])
		}
		e := relL2vs64(h, flatRef(parts))
		worstHidden = math.Max(worstHidden, e)
		if e > tol {
			t.Errorf("hidden state %d rel L2 %.3g > %g", l, e, tol)
		}
	}
	return logits, worstHidden
}
