package gguf

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// Format constants (gguf-py's constants.py).
const (
	// Magic is "GGUF" read as a little-endian uint32.
	Magic uint32 = 0x46554747
	// Version is the version this package writes.
	Version uint32 = 3
	// DefaultAlignment is the data alignment in bytes when the file does not
	// set general.alignment.
	DefaultAlignment = 32
	// MaxDims is ggml's GGML_MAX_DIMS: a tensor has 1 to MaxDims dimensions.
	MaxDims = 4
	// KeyAlignment is the metadata key that overrides DefaultAlignment.
	KeyAlignment = "general.alignment"
)

// ErrCorrupt is wrapped by every error Read returns about the bytes of a
// file (truncated, malformed, inconsistent).
var ErrCorrupt = errors.New("gguf: corrupt or truncated file")

// ErrInvalid is wrapped by every error NewWriter returns about what it was
// asked to write (duplicate names, bad shapes, unknown types).
var ErrInvalid = errors.New("gguf: invalid file description")

// ValueType is the type of a metadata value (GGUFValueType).
type ValueType uint32

// The metadata value types.
const (
	TypeUint8 ValueType = iota
	TypeInt8
	TypeUint16
	TypeInt16
	TypeUint32
	TypeInt32
	TypeFloat32
	TypeBool
	TypeString
	TypeArray
	TypeUint64
	TypeInt64
	TypeFloat64
)

var valueTypeNames = [...]string{"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64"}

func (t ValueType) String() string {
	if int(t) < len(valueTypeNames) {
		return valueTypeNames[t]
	}
	return fmt.Sprintf("ValueType(%d)", uint32(t))
}

// valid reports whether t is a known value type.
func (t ValueType) valid() bool { return t <= TypeFloat64 }

// fixedSize is the encoded size of a scalar of type t; 0 for string and
// array, whose size depends on the value.
func (t ValueType) fixedSize() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// minSize is the smallest number of bytes a value of type t takes, used to
// bound counts read from a file before allocating.
func (t ValueType) minSize() int64 {
	switch t {
	case TypeString:
		return 8
	case TypeArray:
		return 12
	}
	return int64(t.fixedSize())
}

// GGMLType is a tensor element type (ggml_type / GGMLQuantizationType).
type GGMLType uint32

// The tensor types this package encodes and decodes. Read accepts every type
// of typeTraits.
const (
	F32  GGMLType = 0
	F16  GGMLType = 1
	Q8_0 GGMLType = 8
	BF16 GGMLType = 30
)

// typeTrait is a ggml type's block size (elements) and type size (bytes per
// block), from gguf-py's GGML_QUANT_SIZES.
type typeTrait struct {
	name        string
	block, size int64
}

const qkK = 256

var typeTraits = map[GGMLType]typeTrait{
	0:  {"F32", 1, 4},
	1:  {"F16", 1, 2},
	2:  {"Q4_0", 32, 2 + 16},
	3:  {"Q4_1", 32, 2 + 2 + 16},
	6:  {"Q5_0", 32, 2 + 4 + 16},
	7:  {"Q5_1", 32, 2 + 2 + 4 + 16},
	8:  {"Q8_0", 32, 2 + 32},
	9:  {"Q8_1", 32, 4 + 4 + 32},
	10: {"Q2_K", 256, 2 + 2 + qkK/16 + qkK/4},
	11: {"Q3_K", 256, 2 + qkK/4 + qkK/8 + 12},
	12: {"Q4_K", 256, 2 + 2 + qkK/2 + 12},
	13: {"Q5_K", 256, 2 + 2 + qkK/2 + qkK/8 + 12},
	14: {"Q6_K", 256, 2 + qkK/2 + qkK/4 + qkK/16},
	15: {"Q8_K", 256, 4 + qkK + qkK/8},
	16: {"IQ2_XXS", 256, 2 + qkK/4},
	17: {"IQ2_XS", 256, 2 + qkK/4 + qkK/32},
	18: {"IQ3_XXS", 256, 2 + qkK/4 + qkK/8},
	19: {"IQ1_S", 256, 2 + qkK/8 + qkK/16},
	20: {"IQ4_NL", 32, 2 + 16},
	21: {"IQ3_S", 256, 2 + qkK/4 + qkK/8 + qkK/32 + 4},
	22: {"IQ2_S", 256, 2 + qkK/4 + qkK/16},
	23: {"IQ4_XS", 256, 2 + 2 + qkK/2 + qkK/64},
	24: {"I8", 1, 1},
	25: {"I16", 1, 2},
	26: {"I32", 1, 4},
	27: {"I64", 1, 8},
	28: {"F64", 1, 8},
	29: {"IQ1_M", 256, qkK/8 + qkK/16 + qkK/32},
	30: {"BF16", 1, 2},
	34: {"TQ1_0", 256, 2 + 4*13},
	35: {"TQ2_0", 256, 2 + 64},
	39: {"MXFP4", 32, 1 + 16},
}

func (t GGMLType) String() string {
	if tr, ok := typeTraits[t]; ok {
		return tr.name
	}
	return fmt.Sprintf("GGMLType(%d)", uint32(t))
}

// BlockSize is the number of elements per block (1 for F32, F16, BF16; 32
// for Q8_0), or 0 for an unknown type.
func (t GGMLType) BlockSize() int64 { return typeTraits[t].block }

// TypeSize is the number of bytes per block, or 0 for an unknown type.
func (t GGMLType) TypeSize() int64 { return typeTraits[t].size }

// TensorInfo describes one tensor of a file.
type TensorInfo struct {
	Name string
	// Dims is ggml's ne, innermost (contiguous) dimension first: the reverse
	// of the numpy / PyTorch shape. 1 to MaxDims entries.
	Dims []uint64
	Type GGMLType
	// Offset is the byte offset of the data from the start of the data
	// section. NewWriter computes it; Read reports the file's.
	Offset uint64
}

// Shape returns the row-major (numpy / PyTorch) shape: Dims reversed.
func (t TensorInfo) Shape() []uint64 {
	s := make([]uint64, len(t.Dims))
	for i, d := range t.Dims {
		s[len(s)-1-i] = d
	}
	return s
}

// NumElements is the product of Dims, or an error if it overflows int64.
func (t TensorInfo) NumElements() (int64, error) {
	n := uint64(1)
	for _, d := range t.Dims {
		hi, lo := bits.Mul64(n, d)
		if hi != 0 || lo > math.MaxInt64 {
			return 0, fmt.Errorf("tensor %q: dims %v overflow", t.Name, t.Dims)
		}
		n = lo
	}
	return int64(n), nil
}

// Size is the number of data bytes (without padding). It checks what a
// valid tensor needs: 1 to MaxDims dims, a known type, ne[0] a multiple of
// the block size, and no overflow.
func (t TensorInfo) Size() (int64, error) {
	if len(t.Dims) < 1 || len(t.Dims) > MaxDims {
		return 0, fmt.Errorf("tensor %q: %d dimensions, want 1 to %d", t.Name, len(t.Dims), MaxDims)
	}
	tr, ok := typeTraits[t.Type]
	if !ok {
		return 0, fmt.Errorf("tensor %q: unknown ggml type %d", t.Name, uint32(t.Type))
	}
	if t.Dims[0]%uint64(tr.block) != 0 {
		return 0, fmt.Errorf("tensor %q: ne[0] = %d is not a multiple of the %s block size %d", t.Name, t.Dims[0], tr.name, tr.block)
	}
	n, err := t.NumElements()
	if err != nil {
		return 0, err
	}
	blocks := n / tr.block
	if blocks > math.MaxInt64/tr.size {
		return 0, fmt.Errorf("tensor %q: %d blocks of %s overflow", t.Name, blocks, tr.name)
	}
	return blocks * tr.size, nil
}

// padTo rounds n up to a multiple of align (a power of two); ok is false on
// overflow.
func padTo(n, align int64) (int64, bool) {
	if n > math.MaxInt64-(align-1) {
		return 0, false
	}
	return (n + align - 1) &^ (align - 1), true
}
