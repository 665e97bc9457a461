package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// FP8 block-quantized checkpoints (DeepSeek-V3/R1, Qwen3-FP8) say in
// config.json
//
//	"quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
//	                        "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
//
// and store each quantized Linear weight W [rows, cols] as F8_E4M3 next to
// W_scale_inv [ceil(rows/B0), ceil(cols/B1)] (F32 in the published
// checkpoints; BF16 is accepted too), with
//
//	W[i][j] ≈ fp8(W[i][j]) × scale_inv[i/B0][j/B1]
//
// (the last block row and column may be partial). Which tensors are
// quantized is read from the checkpoint's dtypes, not assumed:
// embeddings, norms, lm_head and the router gates stay BF16 there.
//
// We dequantize at load, one tensor at a time, inside the Source: the
// loader and LoadExpert (a worker reading one expert) see an ordinary BF16
// tensor and read it as they read any other, so the kernels are unchanged
// and an expert's scale is found and applied when that expert is read. The
// product fp8 × scale_inv is computed in float32 (one rounding, as torch's
// float32 multiply) and then kept as float32 (KeepBF16 false, for
// training) or rounded to bfloat16 (KeepBF16), which is what transformers'
// dequantization and DeepSeek's weight_dequant produce. Memory is therefore
// that of a bf16 checkpoint (twice the FP8 bytes; 4 times without
// KeepBF16), plus one tensor's float32 copy while it is converted; keeping
// FP8 and its block scales in memory would need kernels that apply them.
//
// activation_scheme "dynamic" means FP8 GEMMs on a GPU also quantize the
// activations (1×128 groups); we compute activations at full precision,
// like transformers' dequantized path.

// QuantConfig is a checkpoint's quantization_config, for the one scheme
// this package loads.
type QuantConfig struct {
	Method    string // quant_method: "fp8"
	Fmt       string // fmt: "e4m3"
	BlockSize [2]int // weight_block_size [B0 (rows), B1 (cols)]; default [128, 128] as transformers'
}

// LoadQuantConfig reads dir/config.json's quantization_config: nil if
// there is none, an error wrapping ErrUnsupported for any scheme other than
// FP8 e4m3 block quantization with dynamic activations.
func LoadQuantConfig(dir string) (*QuantConfig, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	q, err := ParseQuantConfig(data)
	if err != nil {
		return nil, fmt.Errorf("model: %s: %w", path, err)
	}
	return q, nil
}

// ParseQuantConfig parses the quantization_config of config.json bytes.
func ParseQuantConfig(configJSON []byte) (*QuantConfig, error) {
	var top struct {
		Q *struct {
			Method     *string `json:"quant_method"`
			Fmt        *string `json:"fmt"`
			Activation *string `json:"activation_scheme"`
			Block      []int   `json:"weight_block_size"`
		} `json:"quantization_config"`
	}
	if err := json.Unmarshal(configJSON, &top); err != nil {
		return nil, fmt.Errorf("quantization_config: %w", err)
	}
	r := top.Q
	if r == nil {
		return nil, nil
	}
	q := &QuantConfig{Method: "fp8", Fmt: "e4m3", BlockSize: [2]int{128, 128}}
	switch {
	case r.Method == nil:
		return nil, fmt.Errorf("quantization_config has no quant_method: %w", ErrUnsupported)
	case *r.Method != "fp8":
		return nil, fmt.Errorf("quantization_config: quant_method %q: %w (only \"fp8\" block-quantized checkpoints load)", *r.Method, ErrUnsupported)
	case r.Fmt != nil && *r.Fmt != "e4m3":
		return nil, fmt.Errorf("quantization_config: fmt %q: %w (only \"e4m3\")", *r.Fmt, ErrUnsupported)
	case r.Activation != nil && *r.Activation != "dynamic":
		return nil, fmt.Errorf("quantization_config: activation_scheme %q: %w (only \"dynamic\")", *r.Activation, ErrUnsupported)
	}
	if r.Block != nil {
		if len(r.Block) != 2 || r.Block[0] <= 0 || r.Block[1] <= 0 {
			return nil, fmt.Errorf("quantization_config: weight_block_size %v: %w (want two positive sizes)", r.Block, ErrUnsupported)
		}
		q.BlockSize = [2]int{r.Block[0], r.Block[1]}
	}
	return q, nil
}

// ScaleName is the name of the block scales of FP8 weight name.
func ScaleName(name string) string { return name + "_scale_inv" }

// fp8Source dequantizes the F8_E4M3 tensors of an FP8 checkpoint as they
// are read; every other tensor passes through. It reports a quantized
// tensor as BF16, so Load and LoadExpert keep it as bfloat16 (KeepBF16) or
// read it as float32 exactly as they would a bf16 checkpoint's, and a
// worker's memory estimate (2 bytes an element) holds.
type fp8Source struct {
	Source
	q *QuantConfig
}

// NewFP8Source wraps src, whose F8_E4M3 weights are block-quantized as q says.
func NewFP8Source(src Source, q *QuantConfig) Source { return fp8Source{src, q} }

func (s fp8Source) Info(name string) (string, []int, bool) {
	dtype, shape, ok := s.Source.Info(name)
	if ok && dtype == "F8_E4M3" {
		dtype = "BF16"
	}
	return dtype, shape, ok
}

func (s fp8Source) Float32(name string) ([]float32, error) {
	if dtype, _, ok := s.Source.Info(name); !ok || dtype != "F8_E4M3" {
		return s.Source.Float32(name)
	}
	return s.dequant(name)
}

func (s fp8Source) BF16(name string) ([]uint16, error) {
	if dtype, _, ok := s.Source.Info(name); !ok || dtype != "F8_E4M3" {
		return s.Source.BF16(name)
	}
	v, err := s.dequant(name)
	if err != nil {
		return nil, err
	}
	b := make([]uint16, len(v))
	tensor.F32ToBF16(b, v)
	return b, nil
}

func (s fp8Source) fail(name, format string, args ...any) error {
	where := ""
	if f := s.File(name); f != "" {
		where = " in " + f
	}
	return fmt.Errorf("FP8 tensor %q%s: %s", name, where, fmt.Sprintf(format, args...))
}

// dequant reads FP8 weight name and its block scales and returns
// fp8 × scale_inv in float32.
func (s fp8Source) dequant(name string) ([]float32, error) {
	_, shape, _ := s.Source.Info(name)
	if len(shape) != 2 {
		return nil, s.fail(name, "shape %v: block scales need a matrix", shape)
	}
	rows, cols := shape[0], shape[1]
	b0, b1 := s.q.BlockSize[0], s.q.BlockSize[1]
	sr, sc := (rows+b0-1)/b0, (cols+b1-1)/b1 // [ceil(rows/B0), ceil(cols/B1)]
	sname := ScaleName(name)
	sdtype, sshape, ok := s.Source.Info(sname)
	switch {
	case !ok:
		return nil, s.fail(name, "scale tensor %q is missing", sname)
	case sdtype != "F32" && sdtype != "BF16":
		return nil, s.fail(name, "scale tensor %q is %s, want F32 or BF16", sname, sdtype)
	case !equalInts(sshape, []int{sr, sc}):
		return nil, s.fail(name, "scale tensor %q has shape %v, want %v for %dx%d blocks", sname, sshape, []int{sr, sc}, b0, b1)
	}
	scale, err := s.Source.Float32(sname)
	if err != nil {
		return nil, err
	}
	if i := firstNonFinite(scale); i >= 0 {
		return nil, s.fail(name, "scale %d of %q is %g", i, sname, scale[i])
	}
	w, err := s.Source.Float32(name) // the fp8 values, exactly
	if err != nil {
		return nil, err
	}
	for i := range rows {
		row, srow := w[i*cols:(i+1)*cols], scale[(i/b0)*sc:(i/b0+1)*sc]
		for jb, f := range srow { // block column jb; the last may be partial
			blk := row[jb*b1 : min((jb+1)*b1, cols)]
			for j := range blk {
				blk[j] *= f
			}
		}
	}
	return w, nil
}
