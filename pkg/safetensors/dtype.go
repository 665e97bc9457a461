package safetensors

// DType is a safetensors element type, spelled as in the JSON header
// ("F32", "BF16", ...). The zero value and any spelling not listed below are
// unknown; Size reports 0 for them.
type DType string

// The element types this package reads and writes. Sub-byte types (F4,
// F6_E2M3, F6_E3M2) are not supported: a header that uses them is rejected.
const (
	BOOL    DType = "BOOL"
	U8      DType = "U8"
	I8      DType = "I8"
	F8_E5M2 DType = "F8_E5M2"
	F8_E4M3 DType = "F8_E4M3"
	F8_E8M0 DType = "F8_E8M0"
	I16     DType = "I16"
	U16     DType = "U16"
	F16     DType = "F16"
	BF16    DType = "BF16"
	I32     DType = "I32"
	U32     DType = "U32"
	F32     DType = "F32"
	C64     DType = "C64" // complex64: two little-endian float32 (real, imaginary)
	F64     DType = "F64"
	I64     DType = "I64"
	U64     DType = "U64"
)

// dtypeRank is the position of each dtype in the reference implementation's
// Dtype enum, which is ordered by increasing alignment. The writer lays
// tensors out by decreasing rank, then by name, exactly as the reference
// does, so every tensor's data starts at a multiple of its element size and
// our files are byte-identical to the reference's for the same tensors.
var dtypeRank = map[DType]int{
	BOOL: 0, U8: 4, I8: 5, F8_E5M2: 6, F8_E4M3: 7, F8_E8M0: 8,
	I16: 11, U16: 12, F16: 13, BF16: 14, I32: 15, U32: 16, F32: 17,
	C64: 18, F64: 19, I64: 20, U64: 21,
}

// Size returns the size of one element in bytes, or 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0:
		return 1
	case I16, U16, F16, BF16:
		return 2
	case I32, U32, F32:
		return 4
	case C64, F64, I64, U64:
		return 8
	}
	return 0
}
