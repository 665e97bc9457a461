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
// Every tensor of cfg.Tensors is read into the field its Bind names; its
// shape is checked against cfg and every value must be finite; errors name
// the tensor and its file and wrap ErrBadWeights.
func Load(cfg *Config, src Source, opts LoadOptions) (*Model, *expert.Store, error) {
	ld := &loader{src: src, keepBF16: opts.KeepBF16}
	m := &Model{Cfg: cfg, rope: newRopeTable(&cfg.Rope), Layers: make([]Layer, cfg.Layers)}
	_, _, hasHead := src.Info(lmHeadName)
	tied := cfg.TieEmbed && !hasHead
	experts := map[expert.ID]*expert.FFN{}
	for _, s := range cfg.layout(tied) {
		if s.Role == RoleExpert {
			if opts.Experts != nil && !opts.Experts(s.Expert) {
				continue
			}
			f := experts[s.Expert]
			if f == nil {
				f = new(expert.FFN)
				experts[s.Expert] = f
			}
			if err := ld.into(s, Slot{Mat: s.InFFN(f)}); err != nil {
				return nil, nil, err
			}
			if err := quantizeLoaded(cfg, f, s.Expert, opts.Quantize); err != nil {
				return nil, nil, err
			}
			continue
		}
		before := ld.bytes
		if err := ld.into(s, s.Bind(m)); err != nil {
			return nil, nil, err
		}
		m.DenseBytes += ld.bytes - before
	}
	if tied {
		m.LMHead = m.Embed
	}
	store := expert.NewStore()
	for id, f := range experts {
		store.Put(id, f)
	}
	m.Experts = store
	return m, store, nil
}

// LoadExpert reads one routed expert from src (a worker picking up an
// expert after a placement change), kept as opts.KeepBF16 and
// opts.Quantize say (opts.Experts is ignored).
func LoadExpert(cfg *Config, src Source, id expert.ID, opts LoadOptions) (*expert.FFN, error) {
	if id.Layer < 0 || id.Layer >= cfg.Layers || !cfg.LayerIsMoE[id.Layer] || id.Expert < 0 || id.Expert >= cfg.MoE.Router.NumExperts {
		return nil, fmt.Errorf("model: %v is not a routed expert of this %s model", id, cfg.Family)
	}
	ld := &loader{src: src, keepBF16: opts.KeepBF16}
	f := new(expert.FFN)
	for _, s := range cfg.ExpertTensors(id) {
		if err := ld.into(s, Slot{Mat: s.InFFN(f)}); err != nil {
			return nil, err
		}
	}
	if err := quantizeLoaded(cfg, f, id, opts.Quantize); err != nil {
		return nil, err
	}
	return f, nil
}

// quantizeLoaded quantizes expert f once its three matrices are loaded
// (Load reads an expert's tensors one after another).
func quantizeLoaded(cfg *Config, f *expert.FFN, id expert.ID, q tensor.QFormat) error {
	if q == tensor.QNone || f.Gate.Empty() || f.Up.Empty() || f.Down.Empty() || f.Gate.Q != nil {
		return nil
	}
	if err := f.Quantize(q); err != nil {
		n := ExpertTensorNames(cfg.Family, id.Layer, id.Expert)
		return fmt.Errorf("model: --quantize %v: expert %v (%s, %s, %s): %w", q, id, n[0], n[1], n[2], err)
	}
	return nil
}

// ExpertBytes is the memory one routed expert of cfg takes once loaded
// from src with opts (model.LoadExpert's rule): bf16 tensors kept as bf16
// at 2 bytes an element, others at 4, or opts.Quantize's size.
func ExpertBytes(cfg *Config, src Source, id expert.ID, opts LoadOptions) int64 {
	var n int64
	for _, s := range cfg.ExpertTensors(id) {
		switch {
		case opts.Quantize != tensor.QNone:
			n += tensor.QBytes(opts.Quantize, s.Shape[0], s.Shape[1])
		default:
			elem := int64(4)
			if dtype, _, ok := src.Info(s.Name); ok && dtype == "BF16" && opts.KeepBF16 {
				elem = 2
			}
			n += s.Elems() * elem
		}
	}
	return n
}
