package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Source provides checkpoint tensors by their hub name. pkg/safetensors'
// folder reader satisfies it (see OpenSource); tests use in-memory sources.
type Source interface {
	// Info reports a tensor's dtype ("F32", "BF16", "F16", ...) and shape;
	// ok is false if the checkpoint has no such tensor.
	Info(name string) (dtype string, shape []int, ok bool)
	// Float32 reads a tensor widened to float32.
	Float32(name string) ([]float32, error)
	// BF16 reads a BF16 tensor's raw bits.
	BF16(name string) ([]uint16, error)
	// File names the file holding a tensor, for error messages ("" if unknown).
	File(name string) string
}

// ErrBadWeights is wrapped by every error about checkpoint contents: a
// missing tensor, a wrong shape, a non-finite value.
var ErrBadWeights = errors.New("bad checkpoint weights")

// Attention holds one layer's attention weights. GQA families use Q, K, V,
// O (+ optional biases and q/k norms); MLA families use the latent
// projections. Unused fields are empty.
type Attention struct {
	Q, K, V tensor.Mat // GQA: Q [H*Dh, D], K [Hkv*Dh, D], V [Hkv*Dh, D]; MLA without q_lora: Q [H*(Dn+Dr), D]
	O       tensor.Mat // [D, H*Dh] (GQA) or [D, H*Dv] (MLA)
	QBias   []float32  // [H*Dh] or nil
	KBias   []float32  // [Hkv*Dh] or nil
	VBias   []float32  // [Hkv*Dh] or nil
	OBias   []float32  // [D] or nil
	QNorm   []float32  // [Dh] (per head) or [H*Dh] (full) or nil
	KNorm   []float32  // [Dh] (per head) or [Hkv*Dh] (full) or nil

	QA      tensor.Mat // MLA q_a_proj [Rq, D]
	QABias  []float32  // MLA q_a_proj bias [Rq] (attention_bias) or nil
	QANorm  []float32  // MLA q_a_layernorm [Rq]
	QB      tensor.Mat // MLA q_b_proj [H*(Dn+Dr), Rq]
	KVA     tensor.Mat // MLA kv_a_proj_with_mqa [R+Dr, D]
	KVABias []float32  // MLA kv_a_proj_with_mqa bias [R+Dr] (attention_bias) or nil
	KVANorm []float32  // MLA kv_a_layernorm [R]
	KVB     tensor.Mat // MLA kv_b_proj [H*(Dn+Dv), R]: per head Dn rows of W_UK then Dv rows of W_UV
}

// Layer holds one decoder layer's dense weights. Routed experts live in an
// expert.Executor, not here.
type Layer struct {
	InNorm   []float32 // input_layernorm [D]
	PostNorm []float32 // post_attention_layernorm [D]
	Attn     Attention
	MLP      *expert.FFN // dense layers only

	Gate       tensor.Mat  // MoE router [E, D]
	ScoreBias  []float32   // DeepSeek-V3 e_score_correction_bias [E] or nil
	Shared     *expert.FFN // shared expert(s) or nil
	SharedGate tensor.Mat  // Qwen2-MoE shared_expert_gate [1, D]
}

// LoadOptions selects what Load reads.
type LoadOptions struct {
	// Experts chooses which routed experts to load into the returned store;
	// nil loads all, a function returning false for all loads none (a client
	// whose experts live on other machines).
	Experts func(expert.ID) bool
	// KeepBF16 keeps bfloat16 matrices as bf16 in memory (half the bytes;
	// kernels widen on the fly, exactly). False widens them to float32 at
	// load. Norm weights and biases are always float32.
	KeepBF16 bool
	// Quantize, when not tensor.QNone, quantizes every routed expert as it
	// is loaded (serving only: a quantized model cannot train). Dense
	// weights, shared experts included, keep their precision.
	Quantize tensor.QFormat
}

// names maps parts of a layer to hub tensor names for a family.
type names struct{ f Family }

func (n names) layer(l int) string { return fmt.Sprintf("model.layers.%d.", l) }

func (n names) moe(l int) string {
	if n.f == Mixtral {
		return n.layer(l) + "block_sparse_moe."
	}
	return n.layer(l) + "mlp."
}

// shared is the prefix of a layer's shared expert(s): Qwen2-MoE names it
// in the singular.
func (n names) shared(l int) string {
	if n.f == Qwen2MoE {
		return n.moe(l) + "shared_expert."
	}
	return n.moe(l) + "shared_experts."
}

// expert returns the hub names of a routed expert's gate, up and down weights.
func (n names) expert(l, e int) (gate, up, down string) {
	p := fmt.Sprintf("%sexperts.%d.", n.moe(l), e)
	if n.f == Mixtral {
		return p + "w1.weight", p + "w3.weight", p + "w2.weight"
	}
	return p + "gate_proj.weight", p + "up_proj.weight", p + "down_proj.weight"
}

// ExpertTensorNames returns the hub names of a routed expert's three weights
// (gate, up, down) for a family.
func ExpertTensorNames(f Family, layer, e int) [3]string {
	g, u, d := names{f}.expert(layer, e)
	return [3]string{g, u, d}
}

// loader reads and checks tensors from a Source.
type loader struct {
	src      Source
	keepBF16 bool
	bytes    int64 // bytes of weights loaded
}

func (ld *loader) fail(name, format string, args ...any) error {
	where := ""
	if f := ld.src.File(name); f != "" {
		where = " in " + f
	}
	return fmt.Errorf("%w: tensor %q%s: %s", ErrBadWeights, name, where, fmt.Sprintf(format, args...))
}

func (ld *loader) check(name string, want []int) (string, error) {
	dtype, shape, ok := ld.src.Info(name)
	if !ok {
		return "", ld.fail(name, "missing from the checkpoint")
	}
	if !equalInts(shape, want) {
		return "", ld.fail(name, "shape %v, the config implies %v", shape, want)
	}
	switch dtype {
	case "F32", "BF16", "F16", "F64":
	case "F8_E4M3", "F8_E5M2":
		return "", ld.fail(name, "dtype %s: FP8 weights load only as F8_E4M3 with block scales, under an fp8 quantization_config in config.json", dtype)
	default:
		return "", ld.fail(name, "dtype %s, want F32, BF16 or F16", dtype)
	}
	return dtype, nil
}

// vec reads a float32 vector tensor of shape want.
func (ld *loader) vec(name string, want ...int) ([]float32, error) {
	if _, err := ld.check(name, want); err != nil {
		return nil, err
	}
	v, err := ld.src.Float32(name)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadWeights, err)
	}
	if i := firstNonFinite(v); i >= 0 {
		return nil, ld.fail(name, "value %d is %g", i, v[i])
	}
	ld.bytes += int64(len(v)) * 4
	return v, nil
}

// mat reads a [rows, cols] matrix, keeping bf16 if asked.
func (ld *loader) mat(name string, rows, cols int) (tensor.Mat, error) {
	dtype, err := ld.check(name, []int{rows, cols})
	if err != nil {
		return tensor.Mat{}, err
	}
	m := tensor.Mat{Rows: rows, Cols: cols}
	if dtype == "BF16" && ld.keepBF16 {
		b, err := ld.src.BF16(name)
		if err != nil {
			return m, fmt.Errorf("%w: %v", ErrBadWeights, err)
		}
		for i, h := range b {
			if h&0x7f80 == 0x7f80 { // exponent all ones: Inf or NaN
				return m, ld.fail(name, "value %d is not finite (bf16 bits %#04x)", i, h)
			}
		}
		m.BF16 = b
		ld.bytes += int64(len(b)) * 2
		return m, nil
	}
	v, err := ld.src.Float32(name)
	if err != nil {
		return m, fmt.Errorf("%w: %v", ErrBadWeights, err)
	}
	if i := firstNonFinite(v); i >= 0 {
		return m, ld.fail(name, "value %d is %g", i, v[i])
	}
	m.F32 = v
	ld.bytes += int64(len(v)) * 4
	return m, nil
}

// into reads the tensor s describes into slot.
func (ld *loader) into(s TensorSpec, slot Slot) error {
	var err error
	if slot.Mat != nil {
		*slot.Mat, err = ld.mat(s.Name, s.Shape[0], s.Shape[1])
	} else {
		*slot.Vec, err = ld.vec(s.Name, s.Shape...)
	}
	return err
}

func firstNonFinite(v []float32) int {
	for i, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return i
		}
	}
	return -1
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
