package model

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Family is a supported model_type.
type Family string

const (
	Mixtral    Family = "mixtral"
	Qwen2MoE   Family = "qwen2_moe"
	Qwen3MoE   Family = "qwen3_moe"
	OLMoE      Family = "olmoe"
	DeepSeekV2 Family = "deepseek_v2"
	DeepSeekV3 Family = "deepseek_v3"
)

// Families lists every supported model_type.
var Families = []Family{Mixtral, Qwen2MoE, Qwen3MoE, OLMoE, DeepSeekV2, DeepSeekV3}

// ErrUnsupported is wrapped by errors for configurations this package cannot
// run (unknown model_type, activation, RoPE type, ...).
var ErrUnsupported = errors.New("unsupported")

// QKNorm says whether and how queries and keys are RMS-normalized before RoPE.
type QKNorm uint8

const (
	QKNormNone    QKNorm = iota
	QKNormPerHead        // Qwen3-MoE: RMSNorm over each head's Dh values, weight [Dh]
	QKNormFull           // OLMoE: RMSNorm over the whole projection, weight [H*Dh] / [Hkv*Dh]
)

// Rope holds the rotary embedding parameters after normalizing the
// `rope_parameters` (transformers 5.x) or `rope_scaling` + `rope_theta`
// (older checkpoints) spellings.
type Rope struct {
	tensor.RopeParams // frequencies (pkg/tensor computes them)
	// Interleaved selects pairs (2i, 2i+1) (DeepSeek) instead of (i, i+Dim/2).
	Interleaved bool
}

// MLA holds Multi-head Latent Attention dimensions (DeepSeek-V2/V3).
type MLA struct {
	QLoraRank  int // Rq, 0 = queries projected directly (no q_a/q_b)
	KVLoraRank int // R
	QKNopeDim  int // Dn
	QKRopeDim  int // Dr
	VDim       int // Dv
}

// Config is a model configuration normalized across families. Every field
// is read from config.json; Load fills defaults the way transformers does.
type Config struct {
	Family       Family
	Vocab        int     // V
	Hidden       int     // D
	Layers       int     // L
	Heads        int     // H
	KVHeads      int     // Hkv
	HeadDim      int     // Dh (GQA); for MLA the q/k head dim is Dn+Dr
	Inter        int     // F of dense MLP layers (intermediate_size)
	RMSEps       float32 // rms_norm_eps
	TieEmbed     bool    // lm_head shares embed_tokens
	MaxPos       int     // max_position_embeddings
	BOS, EOS     []int   // special ids from config (may be empty)
	QKVBias      bool    // q/k/v projections have biases
	OBias        bool    // o_proj has a bias
	QKNorm       QKNorm
	ClipQKV      float32 // OLMoE clip_qkv: clamp q,k,v to [-c, c]; 0 = off
	SlidingWin   int     // window of sliding-attention layers: attend to at most this many latest keys
	LayerSliding []bool  // [L] whether layer l uses the sliding window
	Rope         Rope
	MLA          *MLA // non-nil for DeepSeek families
	AttnScale    float32
	RouterAux    float32 // router_aux_loss_coef
	LayerIsMoE   []bool  // [L]
	MoE          MoEConfig
	DenseMLPBias bool // mlp_bias (DeepSeek-V2)

	// PadID is pad_token_id, embed_tokens' padding_idx: the row that
	// receives no gradient through the embedding lookup; -1 = none. Not
	// part of the fingerprint: it changes no forward computation.
	PadID int `json:"-"`
}

// MoEConfig holds the sparse-layer settings.
type MoEConfig struct {
	Router      router.Config
	Inter       int  // F of each routed expert
	SharedInter int  // F of the shared expert(s) block; 0 = none
	SharedGate  bool // Qwen2-MoE: shared output x sigmoid(shared_expert_gate(x))
	ScoreBias   bool // DeepSeek-V3: gate.e_score_correction_bias present
}

// LoadConfig reads dir/config.json.
func LoadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("model: %s: %w", path, err)
	}
	return c, nil
}

// raw is config.json with typed accessors that record every problem.
type raw struct {
	m    map[string]json.RawMessage
	errs []error
}

func (r *raw) has(key string) bool {
	v, ok := r.m[key]
	return ok && string(v) != "null"
}

func (r *raw) int(key string, def int) int {
	if !r.has(key) {
		return def
	}
	var f float64
	if err := json.Unmarshal(r.m[key], &f); err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<40 {
		r.errs = append(r.errs, fmt.Errorf("%s = %s is not an integer", key, r.m[key]))
		return def
	}
	return int(f)
}

func (r *raw) float(key string, def float64) float64 {
	if !r.has(key) {
		return def
	}
	var f float64
	if err := json.Unmarshal(r.m[key], &f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		r.errs = append(r.errs, fmt.Errorf("%s = %s is not a number", key, r.m[key]))
		return def
	}
	return f
}

func (r *raw) bool(key string, def bool) bool {
	if !r.has(key) {
		return def
	}
	var b bool
	if err := json.Unmarshal(r.m[key], &b); err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s = %s is not a boolean", key, r.m[key]))
		return def
	}
	return b
}

func (r *raw) str(key, def string) string {
	if !r.has(key) {
		return def
	}
	var s string
	if err := json.Unmarshal(r.m[key], &s); err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s = %s is not a string", key, r.m[key]))
		return def
	}
	return s
}

// strs reads a list of strings.
func (r *raw) strs(key string) []string {
	if !r.has(key) {
		return nil
	}
	var out []string
	if err := json.Unmarshal(r.m[key], &out); err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s = %s is not a list of strings", key, r.m[key]))
		return nil
	}
	return out
}

// ints reads an int or a list of ints.
func (r *raw) ints(key string) []int {
	if !r.has(key) {
		return nil
	}
	var one float64
	if json.Unmarshal(r.m[key], &one) == nil {
		return []int{int(one)}
	}
	var many []float64
	if err := json.Unmarshal(r.m[key], &many); err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s = %s is not an integer or a list of integers", key, r.m[key]))
		return nil
	}
	out := make([]int, len(many))
	for i, f := range many {
		out[i] = int(f)
	}
	return out
}

func (r *raw) sub(key string) *raw {
	if !r.has(key) {
		return nil
	}
	s := &raw{}
	if err := json.Unmarshal(r.m[key], &s.m); err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s is not an object", key))
		return nil
	}
	return s
}

// first returns the first key present, or "".
func (r *raw) first(keys ...string) string {
	for _, k := range keys {
		if r.has(k) {
			return k
		}
	}
	return ""
}

// ParseConfig parses config.json bytes.
func ParseConfig(data []byte) (*Config, error) {
	r := &raw{}
	if err := json.Unmarshal(data, &r.m); err != nil {
		return nil, fmt.Errorf("config.json is not a JSON object: %w", err)
	}
	mt := r.str("model_type", "")
	fam := Family(mt)
	known := false
	for _, f := range Families {
		known = known || f == fam
	}
	if !known {
		names := make([]string, len(Families))
		for i, f := range Families {
			names[i] = string(f)
		}
		return nil, fmt.Errorf("model_type %q: %w (supported: %s)", mt, ErrUnsupported, strings.Join(names, ", "))
	}
	c := &Config{Family: fam}
	c.Vocab = r.int("vocab_size", 0)
	c.Hidden = r.int("hidden_size", 0)
	c.Layers = r.int("num_hidden_layers", 0)
	c.Heads = r.int("num_attention_heads", 0)
	c.KVHeads = r.int("num_key_value_heads", c.Heads)
	c.Inter = r.int("intermediate_size", 0)
	// transformers' config classes default rms_norm_eps to 1e-5 for Mixtral
	// and OLMoE, 1e-6 for the others.
	defEps := 1e-6
	if fam == Mixtral || fam == OLMoE {
		defEps = 1e-5
	}
	c.RMSEps = float32(r.float("rms_norm_eps", defEps))
	c.TieEmbed = r.bool("tie_word_embeddings", false)
	c.MaxPos = r.int("max_position_embeddings", 4096)
	c.BOS = r.ints("bos_token_id")
	c.EOS = r.ints("eos_token_id")
	c.PadID = parsePad(r, fam, c.Vocab)
	c.RouterAux = float32(r.float("router_aux_loss_coef", 0.001))
	if c.Heads > 0 {
		c.HeadDim = r.int("head_dim", c.Hidden/c.Heads)
	}
	if act := r.str("hidden_act", "silu"); act != "silu" && act != "swish" {
		r.errs = append(r.errs, fmt.Errorf("hidden_act %q: %w (only silu)", act, ErrUnsupported))
	}
	c.parseSliding(r)

	ropeDim := c.HeadDim
	switch fam {
	case Mixtral:
		c.MoE.Router = router.Config{
			NumExperts: r.int(r.first("num_local_experts", "num_experts"), 8),
			TopK:       r.int("num_experts_per_tok", 2), Scoring: router.Softmax, Renormalize: true,
		}
		c.MoE.Inter = c.Inter
		c.setSparse(r, 0, 1, nil)
	case Qwen2MoE, Qwen3MoE, OLMoE:
		c.MoE.Router = router.Config{
			NumExperts: r.int(r.first("num_experts", "num_local_experts"), 0),
			TopK:       r.int("num_experts_per_tok", 0), Scoring: router.Softmax,
			Renormalize: r.bool("norm_topk_prob", false),
		}
		c.MoE.Inter = r.int("moe_intermediate_size", c.Inter)
		switch fam {
		case Qwen2MoE:
			c.QKVBias = r.bool("qkv_bias", true)
			c.MoE.SharedInter = r.int("shared_expert_intermediate_size", 0)
			c.MoE.SharedGate = c.MoE.SharedInter > 0
			c.setSparse(r, 0, r.int("decoder_sparse_step", 1), r.ints("mlp_only_layers"))
		case Qwen3MoE:
			c.QKVBias = r.bool("attention_bias", false)
			c.OBias = c.QKVBias
			c.QKNorm = QKNormPerHead
			c.setSparse(r, 0, r.int("decoder_sparse_step", 1), r.ints("mlp_only_layers"))
		case OLMoE:
			c.QKVBias = r.bool("attention_bias", false)
			c.OBias = c.QKVBias
			c.QKNorm = QKNormFull
			c.ClipQKV = float32(r.float("clip_qkv", 0))
			c.setSparse(r, 0, 1, nil)
		}
	case DeepSeekV2, DeepSeekV3:
		m := &MLA{
			QLoraRank:  r.int("q_lora_rank", 0),
			KVLoraRank: r.int("kv_lora_rank", 0),
			QKNopeDim:  r.int("qk_nope_head_dim", 0),
			QKRopeDim:  r.int("qk_rope_head_dim", 0),
			VDim:       r.int("v_head_dim", 0),
		}
		if _, present := r.m["q_lora_rank"]; !present && fam == DeepSeekV3 {
			m.QLoraRank = 1536 // DeepseekV3Config default; an explicit null means none
		}
		c.MLA = m
		c.QKVBias = false
		c.OBias = r.bool("attention_bias", false)
		c.DenseMLPBias = r.bool("mlp_bias", false)
		if c.DenseMLPBias {
			r.errs = append(r.errs, fmt.Errorf("mlp_bias true: %w", ErrUnsupported))
		}
		ropeDim = m.QKRopeDim
		// Defaults are those of transformers' DeepseekV2Config / DeepseekV3Config.
		defGroups, defTopKGroups, defScale := 1, 1, 1.0
		if fam == DeepSeekV3 {
			defGroups, defTopKGroups, defScale = 8, 4, 2.5
		}
		rc := router.Config{
			NumExperts: r.int("n_routed_experts", 0), TopK: r.int("num_experts_per_tok", 0),
			NumGroups: r.int("n_group", defGroups), TopKGroups: r.int("topk_group", defTopKGroups),
			ScalingFactor: float32(r.float("routed_scaling_factor", defScale)),
		}
		if fam == DeepSeekV2 {
			rc.Scoring = router.Softmax
			rc.GroupScore = router.GroupMax
			switch method := r.str("topk_method", "greedy"); method {
			case "greedy":
				rc.NumGroups, rc.TopKGroups = 1, 1
			case "group_limited_greedy":
			default:
				r.errs = append(r.errs, fmt.Errorf("topk_method %q: %w for deepseek_v2", method, ErrUnsupported))
			}
			// transformers' DeepseekV2Moe does not renormalize, whatever
			// norm_topk_prob says; we follow it (the reference).
		} else {
			rc.Scoring = router.Sigmoid
			rc.GroupScore = router.GroupTop2Sum
			rc.Renormalize = r.bool("norm_topk_prob", true)
			rc.RenormEpsilon = 1e-20
			if sf := r.str("scoring_func", "sigmoid"); sf != "sigmoid" {
				r.errs = append(r.errs, fmt.Errorf("scoring_func %q: %w for deepseek_v3", sf, ErrUnsupported))
			}
			c.MoE.ScoreBias = true
		}
		c.MoE.Router = rc
		c.MoE.Inter = r.int("moe_intermediate_size", 0)
		c.MoE.SharedInter = c.MoE.Inter * r.int("n_shared_experts", 0)
		// transformers' DeepSeek models ignore moe_layer_freq: every layer from
		// first_k_dense_replace on is sparse.
		c.setSparse(r, r.int("first_k_dense_replace", 0), 1, nil)
		// softmax scale, with DeepSeek's YaRN mscale correction below
		c.AttnScale = float32(1 / math.Sqrt(float64(m.QKNopeDim+m.QKRopeDim)))
	}
	if c.MLA == nil {
		c.AttnScale = float32(1 / math.Sqrt(float64(c.HeadDim)))
		if f := r.float("partial_rotary_factor", 1); f != 1 {
			r.errs = append(r.errs, fmt.Errorf("partial_rotary_factor %g: %w (these families rotate whole heads)", f, ErrUnsupported))
		}
	}
	c.Rope = parseRope(r, ropeDim)
	if fam == DeepSeekV2 || fam == DeepSeekV3 {
		c.Rope.Interleaved = fam == DeepSeekV2 || r.bool("rope_interleave", true)
	}
	// DeepSeek (V2 and V3, in transformers as in DeepSeek's code) multiplies
	// the softmax scale by mscale(factor, mscale_all_dim)^2 for any scaled
	// RoPE that sets mscale_all_dim.
	if c.MLA != nil && c.Rope.Type != "default" && c.Rope.MscaleAllDim != 0 && c.Rope.Factor > 0 {
		m := tensor.YarnMscale(c.Rope.Factor, c.Rope.MscaleAllDim)
		c.AttnScale *= float32(m * m)
	}
	r.errs = append(r.errs, c.validate()...)
	if err := errors.Join(r.errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// parsePad reads pad_token_id with the default of the family's
// transformers config class when the key is absent (OlmoeConfig: 1; the
// others: None); an explicit null means none. A negative id counts from the
// end of the vocabulary, as nn.Embedding's padding_idx does; one outside
// [-V, V) is an error, as nn.Embedding refuses it.
func parsePad(r *raw, fam Family, vocab int) int {
	_, present := r.m["pad_token_id"]
	if present && !r.has("pad_token_id") || !present && fam != OLMoE {
		return -1 // explicit null, or the class default None
	}
	pad := r.int("pad_token_id", 1)
	if vocab <= 0 {
		return -1 // vocab_size itself is reported
	}
	if pad < -vocab || pad >= vocab {
		r.errs = append(r.errs, fmt.Errorf("pad_token_id = %d is outside [-%d, %d) (vocab_size %d)", pad, vocab, vocab, vocab))
		return -1
	}
	if pad < 0 {
		pad += vocab
	}
	return pad
}

// parseSliding reads the sliding-window settings. Mixtral and Qwen3-MoE
// apply sliding_window to every layer when set (Qwen3 only with
// use_sliding_window); Qwen2-MoE names the sliding layers in layer_types.
func (c *Config) parseSliding(r *raw) {
	c.LayerSliding = make([]bool, max(c.Layers, 0))
	win := r.int("sliding_window", 0)
	types := r.strs("layer_types")
	if types != nil && len(types) != c.Layers {
		r.errs = append(r.errs, fmt.Errorf("layer_types has %d entries for %d layers", len(types), c.Layers))
		return
	}
	for l := range c.LayerSliding {
		switch c.Family {
		case Mixtral:
			c.LayerSliding[l] = win > 0
		case Qwen3MoE:
			c.LayerSliding[l] = win > 0 && r.bool("use_sliding_window", false)
		case Qwen2MoE:
			if types != nil {
				c.LayerSliding[l] = types[l] == "sliding_attention"
			} else if r.bool("use_sliding_window", false) {
				r.errs = append(r.errs, fmt.Errorf("use_sliding_window without layer_types: %w for qwen2_moe", ErrUnsupported))
				return
			}
		}
		if types != nil && types[l] != "full_attention" && types[l] != "sliding_attention" {
			r.errs = append(r.errs, fmt.Errorf("layer_types[%d] = %q: %w", l, types[l], ErrUnsupported))
		}
	}
	for _, s := range c.LayerSliding {
		if s {
			if win <= 0 {
				r.errs = append(r.errs, fmt.Errorf("sliding attention needs sliding_window > 0, got %d", win))
			}
			c.SlidingWin = win
		}
	}
}

// setSparse decides which layers are MoE: layer l is sparse iff l >= firstDense,
// (l+1) % step == 0 for Qwen-style decoder_sparse_step (step > 1) or
// l % freq == 0 for DeepSeek moe_layer_freq, and l is not in mlpOnly.
func (c *Config) setSparse(r *raw, firstDense, step int, mlpOnly []int) {
	c.LayerIsMoE = make([]bool, max(c.Layers, 0))
	deepseek := c.MLA != nil
	for l := range c.LayerIsMoE {
		moe := l >= firstDense && c.MoE.Router.NumExperts > 0
		if step > 1 {
			if deepseek {
				moe = moe && l%step == 0
			} else {
				moe = moe && (l+1)%step == 0
			}
		}
		for _, x := range mlpOnly {
			if x == l {
				moe = false
			}
		}
		c.LayerIsMoE[l] = moe
	}
	if step < 1 {
		r.errs = append(r.errs, fmt.Errorf("sparse layer step %d must be >= 1", step))
	}
}

func parseRope(r *raw, dim int) Rope {
	rp := r.sub("rope_parameters")
	if rp == nil {
		rp = r.sub("rope_scaling")
	}
	if rp == nil {
		rp = &raw{m: map[string]json.RawMessage{}}
	}
	rope := Rope{RopeParams: tensor.RopeParams{Dim: dim, Truncate: true}}
	rope.Type = rp.str("rope_type", rp.str("type", "default"))
	rope.Theta = rp.float("rope_theta", r.float("rope_theta", 10000))
	rope.Factor = rp.float("factor", 0)
	rope.OriginalMaxPos = rp.int("original_max_position_embeddings", r.int("original_max_position_embeddings", 0))
	rope.AttentionFactor = rp.float("attention_factor", 0)
	rope.BetaFast = rp.float("beta_fast", 32)
	rope.BetaSlow = rp.float("beta_slow", 1)
	rope.Mscale = rp.float("mscale", 0)
	rope.MscaleAllDim = rp.float("mscale_all_dim", 0)
	rope.Truncate = rp.bool("truncate", true)
	rope.LowFreqFactor = rp.float("low_freq_factor", 1)
	rope.HighFreqFactor = rp.float("high_freq_factor", 4)
	if f := rp.float("partial_rotary_factor", 1); f != 1 {
		// 5.x may move partial_rotary_factor into rope_parameters.
		r.errs = append(r.errs, fmt.Errorf("partial_rotary_factor %g: %w (these families rotate whole heads)", f, ErrUnsupported))
	}
	r.errs = append(r.errs, rp.errs...)
	switch rope.Type {
	case "default":
	case "linear":
		if rope.Factor <= 0 {
			r.errs = append(r.errs, fmt.Errorf("rope %s needs factor > 0", rope.Type))
		}
	case "yarn":
		maxPos := r.int("max_position_embeddings", 0)
		if rope.OriginalMaxPos == 0 {
			rope.OriginalMaxPos = maxPos
		}
		if rope.Factor == 0 && rope.OriginalMaxPos > 0 {
			rope.Factor = float64(maxPos) / float64(rope.OriginalMaxPos)
		}
		if rope.Factor <= 0 {
			r.errs = append(r.errs, fmt.Errorf("rope yarn needs factor > 0"))
		}
	case "llama3":
		if rope.Factor <= 0 || rope.OriginalMaxPos <= 0 {
			r.errs = append(r.errs, fmt.Errorf("rope llama3 needs factor and original_max_position_embeddings"))
		}
	default:
		r.errs = append(r.errs, fmt.Errorf("rope_type %q: %w", rope.Type, ErrUnsupported))
	}
	return rope
}

func (c *Config) validate() []error {
	var errs []error
	pos := func(name string, v int) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s = %d, must be > 0", name, v))
		}
	}
	pos("vocab_size", c.Vocab)
	pos("hidden_size", c.Hidden)
	pos("num_hidden_layers", c.Layers)
	pos("num_attention_heads", c.Heads)
	pos("num_key_value_heads", c.KVHeads)
	if c.Heads > 0 && c.KVHeads > 0 && c.Heads%c.KVHeads != 0 {
		errs = append(errs, fmt.Errorf("num_attention_heads = %d is not a multiple of num_key_value_heads = %d", c.Heads, c.KVHeads))
	}
	if c.MLA == nil {
		pos("head_dim", c.HeadDim)
		if c.Rope.Dim%2 != 0 || c.Rope.Dim > c.HeadDim || c.Rope.Dim <= 0 {
			errs = append(errs, fmt.Errorf("rotary dim %d must be even and in (0, head_dim=%d]", c.Rope.Dim, c.HeadDim))
		}
	} else {
		m := c.MLA
		pos("kv_lora_rank", m.KVLoraRank)
		pos("qk_nope_head_dim", m.QKNopeDim)
		pos("qk_rope_head_dim", m.QKRopeDim)
		pos("v_head_dim", m.VDim)
		if m.QLoraRank < 0 {
			errs = append(errs, fmt.Errorf("q_lora_rank = %d", m.QLoraRank))
		}
		if m.QKRopeDim%2 != 0 {
			errs = append(errs, fmt.Errorf("qk_rope_head_dim = %d must be even", m.QKRopeDim))
		}
		if c.KVHeads != c.Heads {
			// MLA expands one latent into every head; num_key_value_heads is informational.
			c.KVHeads = c.Heads
		}
	}
	anyMoE, anyDense := false, false
	for _, m := range c.LayerIsMoE {
		anyMoE = anyMoE || m
		anyDense = anyDense || !m
	}
	if anyDense {
		pos("intermediate_size", c.Inter)
	}
	if anyMoE {
		if err := c.MoE.Router.Validate(); err != nil {
			errs = append(errs, err)
		}
		pos("moe_intermediate_size", c.MoE.Inter)
	}
	if c.RMSEps <= 0 {
		errs = append(errs, fmt.Errorf("rms_norm_eps = %g, must be > 0", c.RMSEps))
	}
	return errs
}

// NumMoELayers counts sparse layers.
func (c *Config) NumMoELayers() int {
	n := 0
	for _, m := range c.LayerIsMoE {
		if m {
			n++
		}
	}
	return n
}

// Fingerprint identifies a model architecture and size: a short hash of the
// normalized configuration. Workers serving different models (or the same
// family at another size) have different fingerprints and refuse each other.
// Token ids (bos/eos) and training-only settings (router_aux_loss_coef)
// are not part of it: they do not change what the weights compute.
func (c *Config) Fingerprint() string {
	arch := *c
	arch.BOS, arch.EOS, arch.RouterAux = nil, nil, 0
	b, _ := json.Marshal(&arch)
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%s-%x", c.Family, sum[:6])
}
