package model

import (
	"fmt"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Model is a loaded checkpoint's dense weights plus the Executor that
// computes its routed experts. A Model is immutable after Load and safe for
// concurrent Forward calls on distinct sequences.
type Model struct {
	Cfg     *Config
	Embed   tensor.Mat // embed_tokens [V, D]
	Layers  []Layer    // [L]
	Norm    []float32  // final norm [D]
	LMHead  tensor.Mat // lm_head [V, D] (shares Embed's data when tied)
	Experts expert.Executor

	// DenseBytes is the memory of every weight except routed experts.
	DenseBytes int64

	rope *ropeTable
}

// Load reads a model's dense weights from src and the routed experts that
// opts.Experts selects into a new expert.Store, which becomes m.Experts.
// Every tensor's shape is checked against cfg and every value must be
// finite; errors name the tensor and its file and wrap ErrBadWeights.
func Load(cfg *Config, src Source, opts LoadOptions) (*Model, *expert.Store, error) {
	ld := &loader{src: src, keepBF16: opts.KeepBF16}
	m := &Model{Cfg: cfg, rope: newRopeTable(&cfg.Rope)}
	D, V := cfg.Hidden, cfg.Vocab
	var err error
	if m.Embed, err = ld.mat("model.embed_tokens.weight", V, D); err != nil {
		return nil, nil, err
	}
	if m.Norm, err = ld.vec("model.norm.weight", D); err != nil {
		return nil, nil, err
	}
	if _, _, ok := src.Info("lm_head.weight"); ok || !cfg.TieEmbed {
		if m.LMHead, err = ld.mat("lm_head.weight", V, D); err != nil {
			return nil, nil, err
		}
	} else {
		m.LMHead = m.Embed
	}
	m.Layers = make([]Layer, cfg.Layers)
	for l := range m.Layers {
		if err := m.loadLayer(ld, l); err != nil {
			return nil, nil, err
		}
	}
	m.DenseBytes = ld.bytes

	store := expert.NewStore()
	nm := names{cfg.Family}
	for l, isMoE := range cfg.LayerIsMoE {
		if !isMoE {
			continue
		}
		for e := 0; e < cfg.MoE.Router.NumExperts; e++ {
			id := expert.ID{Layer: l, Expert: e}
			if opts.Experts != nil && !opts.Experts(id) {
				continue
			}
			g, u, d := nm.expert(l, e)
			f, err := ld.ffn(g, u, d, D, cfg.MoE.Inter)
			if err != nil {
				return nil, nil, err
			}
			store.Put(id, f)
		}
	}
	m.Experts = store
	return m, store, nil
}

// LoadExpert reads one routed expert from src (a worker picking up an
// expert after a placement change).
func LoadExpert(cfg *Config, src Source, id expert.ID, keepBF16 bool) (*expert.FFN, error) {
	if id.Layer < 0 || id.Layer >= cfg.Layers || !cfg.LayerIsMoE[id.Layer] || id.Expert < 0 || id.Expert >= cfg.MoE.Router.NumExperts {
		return nil, fmt.Errorf("model: %v is not a routed expert of this %s model", id, cfg.Family)
	}
	ld := &loader{src: src, keepBF16: keepBF16}
	g, u, d := names{cfg.Family}.expert(id.Layer, id.Expert)
	return ld.ffn(g, u, d, cfg.Hidden, cfg.MoE.Inter)
}

func (m *Model) loadLayer(ld *loader, l int) error {
	c := m.Cfg
	D := c.Hidden
	nm := names{c.Family}
	p := nm.layer(l)
	L := &m.Layers[l]
	var err error
	if L.InNorm, err = ld.vec(p+"input_layernorm.weight", D); err != nil {
		return err
	}
	if L.PostNorm, err = ld.vec(p+"post_attention_layernorm.weight", D); err != nil {
		return err
	}
	a := &L.Attn
	ap := p + "self_attn."
	if c.MLA == nil {
		H, Hkv, Dh := c.Heads, c.KVHeads, c.HeadDim
		if a.Q, err = ld.mat(ap+"q_proj.weight", H*Dh, D); err != nil {
			return err
		}
		if a.K, err = ld.mat(ap+"k_proj.weight", Hkv*Dh, D); err != nil {
			return err
		}
		if a.V, err = ld.mat(ap+"v_proj.weight", Hkv*Dh, D); err != nil {
			return err
		}
		if a.O, err = ld.mat(ap+"o_proj.weight", D, H*Dh); err != nil {
			return err
		}
		if c.QKVBias {
			if a.QBias, err = ld.vec(ap+"q_proj.bias", H*Dh); err != nil {
				return err
			}
			if a.KBias, err = ld.vec(ap+"k_proj.bias", Hkv*Dh); err != nil {
				return err
			}
			if a.VBias, err = ld.vec(ap+"v_proj.bias", Hkv*Dh); err != nil {
				return err
			}
		}
		switch c.QKNorm {
		case QKNormPerHead:
			if a.QNorm, err = ld.vec(ap+"q_norm.weight", Dh); err != nil {
				return err
			}
			if a.KNorm, err = ld.vec(ap+"k_norm.weight", Dh); err != nil {
				return err
			}
		case QKNormFull:
			if a.QNorm, err = ld.vec(ap+"q_norm.weight", H*Dh); err != nil {
				return err
			}
			if a.KNorm, err = ld.vec(ap+"k_norm.weight", Hkv*Dh); err != nil {
				return err
			}
		}
	} else {
		ml := c.MLA
		H := c.Heads
		qDim := H * (ml.QKNopeDim + ml.QKRopeDim)
		if ml.QLoraRank > 0 {
			if a.QA, err = ld.mat(ap+"q_a_proj.weight", ml.QLoraRank, D); err != nil {
				return err
			}
			if c.OBias { // attention_bias covers q_a_proj, kv_a_proj_with_mqa and o_proj
				if a.QABias, err = ld.vec(ap+"q_a_proj.bias", ml.QLoraRank); err != nil {
					return err
				}
			}
			if a.QANorm, err = ld.vec(ap+"q_a_layernorm.weight", ml.QLoraRank); err != nil {
				return err
			}
			if a.QB, err = ld.mat(ap+"q_b_proj.weight", qDim, ml.QLoraRank); err != nil {
				return err
			}
		} else if a.Q, err = ld.mat(ap+"q_proj.weight", qDim, D); err != nil {
			return err
		}
		if a.KVA, err = ld.mat(ap+"kv_a_proj_with_mqa.weight", ml.KVLoraRank+ml.QKRopeDim, D); err != nil {
			return err
		}
		if c.OBias {
			if a.KVABias, err = ld.vec(ap+"kv_a_proj_with_mqa.bias", ml.KVLoraRank+ml.QKRopeDim); err != nil {
				return err
			}
		}
		if a.KVANorm, err = ld.vec(ap+"kv_a_layernorm.weight", ml.KVLoraRank); err != nil {
			return err
		}
		if a.KVB, err = ld.mat(ap+"kv_b_proj.weight", H*(ml.QKNopeDim+ml.VDim), ml.KVLoraRank); err != nil {
			return err
		}
		if a.O, err = ld.mat(ap+"o_proj.weight", D, H*ml.VDim); err != nil {
			return err
		}
	}
	if c.OBias {
		if a.OBias, err = ld.vec(ap+"o_proj.bias", D); err != nil {
			return err
		}
	}

	if !c.LayerIsMoE[l] {
		L.MLP, err = ld.ffn(p+"mlp.gate_proj.weight", p+"mlp.up_proj.weight", p+"mlp.down_proj.weight", D, c.Inter)
		return err
	}
	mp := nm.moe(l)
	E := c.MoE.Router.NumExperts
	if L.Gate, err = ld.mat(mp+"gate.weight", E, D); err != nil {
		return err
	}
	if c.MoE.ScoreBias {
		if L.ScoreBias, err = ld.vec(mp+"gate.e_score_correction_bias", E); err != nil {
			return err
		}
	}
	if c.MoE.SharedInter > 0 {
		sp := mp + "shared_experts."
		if c.Family == Qwen2MoE {
			sp = mp + "shared_expert."
		}
		if L.Shared, err = ld.ffn(sp+"gate_proj.weight", sp+"up_proj.weight", sp+"down_proj.weight", D, c.MoE.SharedInter); err != nil {
			return err
		}
		if c.MoE.SharedGate {
			if L.SharedGate, err = ld.mat(mp+"shared_expert_gate.weight", 1, D); err != nil {
				return err
			}
		}
	}
	return nil
}
