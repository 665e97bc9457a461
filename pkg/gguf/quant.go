package gguf

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// QK8_0 is the number of values in a Q8_0 block; a block is a binary16
// scale followed by QK8_0 int8 codes (34 bytes).
const QK8_0 = 32

const blockQ8_0 = 2 + QK8_0

// CanEncode reports whether Encode supports t.
func CanEncode(t GGMLType) bool { return t == F32 || t == F16 || t == BF16 || t == Q8_0 }

// EncodedSize is the number of bytes Encode writes for n values of type t,
// or an error if t is not encodable or n is not a whole number of blocks.
func EncodedSize(t GGMLType, n int) (int, error) {
	if !CanEncode(t) {
		return 0, fmt.Errorf("gguf: encoding %s is not supported", t)
	}
	b := int(t.BlockSize())
	if n%b != 0 {
		return 0, fmt.Errorf("gguf: %d values are not a whole number of %s blocks of %d", n, t, b)
	}
	return n / b * int(t.TypeSize()), nil
}

// Encode converts src to type t into dst, which must hold EncodedSize(t,
// len(src)) bytes: F32 as is, F16 and BF16 rounded to nearest even, Q8_0 as
// QuantizeQ8_0. src is the flat row-major data; rows must be whole blocks,
// which holds when ne[0] is a multiple of the block size.
func Encode(t GGMLType, dst []byte, src []float32) error {
	need, err := EncodedSize(t, len(src))
	if err != nil {
		return err
	}
	if len(dst) != need {
		return fmt.Errorf("gguf: Encode %s of %d values: dst has %d bytes, want %d", t, len(src), len(dst), need)
	}
	switch t {
	case F32:
		for i, x := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(x))
		}
	case F16:
		for i, x := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], tensor.F32ToF16One(x))
		}
	case BF16:
		for i, x := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], tensor.F32ToBF16One(x))
		}
	case Q8_0:
		QuantizeQ8_0(dst, src)
	}
	return nil
}

// Decode converts the bytes of len(dst) values of type t back to float32:
// exact for F32, F16 and BF16; d * q for each Q8_0 code.
func Decode(t GGMLType, dst []float32, src []byte) error {
	need, err := EncodedSize(t, len(dst))
	if err != nil {
		return err
	}
	if len(src) != need {
		return fmt.Errorf("gguf: Decode %s of %d values: src has %d bytes, want %d", t, len(dst), len(src), need)
	}
	switch t {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = tensor.F16ToF32One(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(src[2*i:])) << 16)
		}
	case Q8_0:
		DequantizeQ8_0(dst, src)
	}
	return nil
}

// QuantizeQ8_0 quantizes src (a multiple of QK8_0 values) into
// len(src)/QK8_0 blocks of dst, bit for bit as ggml's
// quantize_row_q8_0_ref: per block amax = max|x|, d = amax/127 and
// id = 1/d in float32 (id = 0 when d = 0), the scale stored as
// binary16(d), and each code roundf(x*id), rounded half away from zero.
func QuantizeQ8_0(dst []byte, src []float32) {
	nb := len(src) / QK8_0
	_ = dst[nb*blockQ8_0-1]
	for b := 0; b < nb; b++ {
		x := src[b*QK8_0 : (b+1)*QK8_0]
		y := dst[b*blockQ8_0 : (b+1)*blockQ8_0]
		var amax float32
		for _, v := range x {
			amax = max(amax, abs32(v))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		binary.LittleEndian.PutUint16(y, tensor.F32ToF16One(d))
		for j, v := range x {
			y[2+j] = byte(int8(roundf(v * id)))
		}
	}
}

// DequantizeQ8_0 expands len(dst)/QK8_0 Q8_0 blocks of src into dst.
func DequantizeQ8_0(dst []float32, src []byte) {
	nb := len(dst) / QK8_0
	for b := 0; b < nb; b++ {
		y := src[b*blockQ8_0 : (b+1)*blockQ8_0]
		d := tensor.F16ToF32One(binary.LittleEndian.Uint16(y))
		for j := 0; j < QK8_0; j++ {
			dst[b*QK8_0+j] = float32(int8(y[2+j])) * d
		}
	}
}

// roundf is C's roundf: nearest integer, halves away from zero. Exact for
// every float32 (float64 holds them all).
func roundf(v float32) float32 { return float32(math.Round(float64(v))) }

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ (1 << 31)) }

// Q8_0Bound is the largest |x - Decode(Encode(x))| that Q8_0 allows for any
// value of one block: half a step d = max|x|/127, plus the binary16
// rounding of d (relative 2^-11, or 2^-25 absolute below binary16's normal
// range) times the largest code, 127.
func Q8_0Bound(block []float32) float64 {
	var amax float32
	for _, v := range block {
		amax = max(amax, abs32(v))
	}
	d := float64(amax) / 127
	return d*0.5*(1+1e-6) + 127*(d*math.Ldexp(1, -11)+math.Ldexp(1, -25))
}
