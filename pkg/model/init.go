package model

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"

	"github.com/switchyard/switchyard/pkg/expert"
)

// MemSource is an in-memory Source of float32 tensors.
type MemSource struct {
	T map[string]MemTensor
}

// MemTensor is one tensor of a MemSource.
type MemTensor struct {
	Shape []int
	Data  []float32
}

// Info implements Source.
func (s *MemSource) Info(name string) (string, []int, bool) {
	t, ok := s.T[name]
	if !ok {
		return "", nil, false
	}
	return "F32", slices.Clone(t.Shape), true
}

// Float32 implements Source (returns a copy).
func (s *MemSource) Float32(name string) ([]float32, error) {
	t, ok := s.T[name]
	if !ok {
		return nil, fmt.Errorf("model: no tensor %q in memory source", name)
	}
	return slices.Clone(t.Data), nil
}

// BF16 implements Source (memory sources hold float32 only).
func (s *MemSource) BF16(name string) ([]uint16, error) {
	return nil, fmt.Errorf("model: tensor %q is F32, not BF16", name)
}

// File implements Source.
func (s *MemSource) File(string) string { return "(memory)" }

// InitOptions configures NewRandom.
type InitOptions struct {
	Seed uint64
	// Std of the normal initialization of matrices and embeddings; 0 means
	// 0.02 (transformers' initializer_range default).
	Std float64
	// Experts selects the routed experts to create (nil: all), as
	// LoadOptions.Experts; unselected experts are not even generated.
	Experts func(expert.ID) bool
}

// NewRandom initializes a float32 model for training from scratch the way
// transformers' _init_weights does: matrices and embeddings N(0, Std^2),
// the embedding's padding row (Config.PadID, when set) zero, RMSNorm
// weights 1, biases 0, DeepSeek-V3's score correction bias 0. Each
// tensor's values depend only on (Seed, name).
func NewRandom(cfg *Config, opt InitOptions) (*Model, *expert.Store, error) {
	std := opt.Std
	if std == 0 {
		std = 0.02
	}
	src := &MemSource{T: map[string]MemTensor{}}
	for _, s := range cfg.Tensors() {
		if s.Role == RoleExpert && opt.Experts != nil && !opt.Experts(s.Expert) {
			continue
		}
		v := make([]float32, s.Elems())
		switch s.Role {
		case RoleNorm:
			for i := range v {
				v[i] = 1
			}
		case RoleBias:
			// zeros
		default:
			h := fnv.New64a()
			h.Write([]byte(s.Name))
			r := rand.New(rand.NewPCG(opt.Seed, h.Sum64()))
			for i := range v {
				v[i] = float32(r.NormFloat64() * std)
			}
			if s.Name == "model.embed_tokens.weight" && cfg.PadID >= 0 {
				// nn.Embedding(padding_idx=pad) starts with that row zero.
				clear(v[cfg.PadID*cfg.Hidden : (cfg.PadID+1)*cfg.Hidden])
			}
		}
		src.T[s.Name] = MemTensor{Shape: s.Shape, Data: v}
	}
	return Load(cfg, src, LoadOptions{Experts: opt.Experts})
}
