package model

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

// fp8Eligible reports whether a checkpoint tensor is one an FP8 checkpoint
// quantizes: the Linear weights of attention, dense and shared MLPs and
// routed experts. Embeddings, lm_head, the router gates (DeepSeek-V3 ships
// mlp.gate.weight in BF16; Qwen3-FP8 lists the gates in
// modules_to_not_convert) and Qwen2-MoE's [1, D] shared_expert_gate stay as
// they are, as do norms and biases.
func fp8Eligible(s TensorSpec) bool {
	if s.Role != RoleMatrix && s.Role != RoleExpert {
		return false
	}
	n := s.Name
	return !strings.Contains(n, "embed_tokens") && !strings.HasPrefix(n, "lm_head") &&
		!strings.HasSuffix(n, ".gate.weight") && !strings.HasSuffix(n, "shared_expert_gate.weight")
}

// quantizeFP8 block-quantizes w [rows, cols] the way DeepSeek's
// weight_quant does: per block, scale_inv = amax/448 and q = w/scale_inv
// rounded to nearest even and saturated (an all-zero block gets scale 1).
// It returns the e4m3 bytes, the scales [ceil(rows/b0), ceil(cols/b1)] and
// q×scale_inv in float32, what the loader must reproduce.
func quantizeFP8(w []float32, rows, cols, b0, b1 int) (q []byte, scale, deq []float32) {
	sr, sc := (rows+b0-1)/b0, (cols+b1-1)/b1
	scale = make([]float32, sr*sc)
	for i := range rows {
		for j := range cols {
			s := &scale[(i/b0)*sc+j/b1]
			*s = max(*s, float32(math.Abs(float64(w[i*cols+j]))))
		}
	}
	for k, a := range scale {
		if a == 0 {
			scale[k] = 1
		} else {
			scale[k] = a / safetensors.F8E4M3Max
		}
	}
	q, deq = make([]byte, len(w)), make([]float32, len(w))
	for i := range rows {
		for j := range cols {
			s := scale[(i/b0)*sc+j/b1]
			q[i*cols+j] = safetensors.F32ToF8E4M3(w[i*cols+j] / s)
			deq[i*cols+j] = safetensors.F8E4M3ToF32(q[i*cols+j]) * s
		}
	}
	return q, scale, deq
}

// WriteFP8 writes into dst (an existing folder) an FP8 copy of the
// checkpoint in src, as DeepSeek-V3 and the Qwen3 FP8 releases ship them:
// every eligible linear weight (fp8Eligible) block-quantized to e4m3 with
// float32 <name>_scale_inv blocks of block[0] x block[1], the other tensors
// as they are, sharded into files of about shardBytes (0: one file), and
// config.json with quantization_config {quant_method fp8, fmt e4m3,
// weight_block_size}. tokenizer files are copied. For tests and for
// trying FP8 serving on a model of one's own.
func WriteFP8(src, dst string, block [2]int, shardBytes int64) error {
	cfg, err := LoadConfig(src)
	if err != nil {
		return err
	}
	set, err := safetensors.OpenDir(src)
	if err != nil {
		return err
	}
	defer set.Close()
	var ts, scales []safetensors.Tensor
	for _, s := range cfg.Tensors() {
		ti, err := set.Info(s.Name)
		if err != nil {
			return err
		}
		if !fp8Eligible(s) {
			raw, err := set.Raw(s.Name)
			if err != nil {
				return err
			}
			ts = append(ts, safetensors.Tensor{Name: s.Name, DType: ti.DType, Shape: ti.Shape, Data: raw})
			continue
		}
		w, err := set.Float32(s.Name)
		if err != nil {
			return err
		}
		rows, cols := s.Shape[0], s.Shape[1]
		q, scale, _ := quantizeFP8(w, rows, cols, block[0], block[1])
		sc := (cols + block[1] - 1) / block[1]
		ts = append(ts, safetensors.Tensor{Name: s.Name, DType: safetensors.F8_E4M3, Shape: s.Shape, Data: q})
		scales = append(scales, safetensors.F32Tensor(ScaleName(s.Name), []int{len(scale) / sc, sc}, scale))
	}
	ts = append(ts, scales...)
	if shardBytes > 0 {
		err = safetensors.WriteSharded(dst, ts, nil, shardBytes)
	} else {
		err = safetensors.Write(filepath.Join(dst, safetensors.ModelFile), ts, nil)
	}
	if err != nil {
		return err
	}
	data, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("model: %s/config.json: %w", src, err)
	}
	m["quantization_config"] = map[string]any{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": []int{block[0], block[1]}}
	if data, err = json.MarshalIndent(m, "", "  "); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dst, "config.json"), data, 0o644); err != nil {
		return err
	}
	for _, name := range []string{"tokenizer.json", "tokenizer_config.json"} {
		if b, err := os.ReadFile(filepath.Join(src, name)); err == nil {
			if err := os.WriteFile(filepath.Join(dst, name), b, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
