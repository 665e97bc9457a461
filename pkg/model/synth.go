package model

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/switchyard/switchyard/pkg/safetensors"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// SynthOptions configures Synthesize.
type SynthOptions struct {
	Seed uint64
	// DType of the written weights: "F32" (default) or "BF16".
	DType string
	// Std is the scale of matrix entries (uniform with this standard
	// deviation); 0 means 0.02, transformers' initializer_range default.
	Std float64
	// MaxShardBytes splits the weights into model-0000i-of-0000n shards with
	// an index when positive and the model is larger.
	MaxShardBytes int64
}

// Synthesize writes a random-weight checkpoint for an HF-style config map:
// dir/config.json (the map as given) and the safetensors weights of every
// tensor Config.Tensors lists. Norm weights are ones, biases small, matrices
// uniform with standard deviation Std. Each tensor's values depend only on
// (Seed, name), so the same call always writes the same bytes.
func Synthesize(dir string, hf map[string]any, opt SynthOptions) (*Config, error) {
	data, err := json.MarshalIndent(hf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("model: synthesize: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("model: synthesize: %w", err)
	}
	if opt.Std == 0 {
		opt.Std = 0.02
	}
	bf16 := false
	switch opt.DType {
	case "", "F32":
	case "BF16":
		bf16 = true
	default:
		return nil, fmt.Errorf("model: synthesize: dtype %q (want F32 or BF16)", opt.DType)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	specs := cfg.Tensors()
	ts := make([]safetensors.Tensor, len(specs))
	tensor.ParallelFor(len(specs), 1, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			s := specs[i]
			v := SynthValues(s, opt.Seed, opt.Std)
			if bf16 {
				b := make([]uint16, len(v))
				tensor.F32ToBF16(b, v)
				ts[i] = safetensors.BF16Tensor(s.Name, s.Shape, b)
			} else {
				ts[i] = safetensors.F32Tensor(s.Name, s.Shape, v)
			}
		}
	})
	meta := map[string]string{"format": "pt", "producer": "switchyard synthesize"}
	var total int64
	for _, s := range specs {
		total += s.Elems()
	}
	if bf16 {
		total *= 2
	} else {
		total *= 4
	}
	if opt.MaxShardBytes > 0 && total > opt.MaxShardBytes {
		err = safetensors.WriteSharded(dir, ts, meta, opt.MaxShardBytes)
	} else {
		err = safetensors.Write(filepath.Join(dir, "model.safetensors"), ts, meta)
	}
	if err != nil {
		return nil, fmt.Errorf("model: synthesize: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), append(data, '\n'), 0o644); err != nil {
		return nil, err
	}
	return cfg, nil
}

// SynthValues returns the deterministic random values Synthesize uses for
// one tensor.
func SynthValues(s TensorSpec, seed uint64, std float64) []float32 {
	h := fnv.New64a()
	h.Write([]byte(s.Name))
	r := rand.New(rand.NewPCG(seed, h.Sum64()))
	v := make([]float32, s.Elems())
	switch s.Role {
	case RoleNorm:
		for i := range v {
			v[i] = float32(1 + 0.1*(r.Float64()*2-1))
		}
	case RoleBias:
		for i := range v {
			v[i] = float32(0.1 * (r.Float64()*2 - 1))
		}
	default:
		a := std * math.Sqrt(3) // uniform [-a, a] has standard deviation std
		for i := range v {
			v[i] = float32(a * (r.Float64()*2 - 1))
		}
	}
	return v
}
