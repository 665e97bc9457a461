package tensor

import "math"

// BF16ToF32 widens bfloat16 bits to float32: dst[i] = float32 with src[i] as
// its upper 16 bits. The conversion is exact. len(dst) must be >= len(src).
func BF16ToF32(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, v := range src {
		dst[i] = math.Float32frombits(uint32(v) << 16)
	}
}

// F32ToBF16 rounds float32 to bfloat16 bits with round-to-nearest-even, as
// torch does; NaN stays NaN (quiet).
func F32ToBF16(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	for i, f := range src {
		dst[i] = F32ToBF16One(f)
	}
}

// F32ToBF16One rounds one float32 to bfloat16 bits (nearest even).
func F32ToBF16One(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep sign, force quiet bit
		return uint16(b>>16) | 0x40
	}
	rounding := uint32(0x7fff) + (b>>16)&1
	return uint16((b + rounding) >> 16)
}

// F16ToF32 widens IEEE 754 binary16 bits to float32 exactly (subnormals,
// infinities and NaNs included). len(dst) must be >= len(src).
func F16ToF32(dst []float32, src []uint16) {
	dst = dst[:len(src)]
	for i, h := range src {
		dst[i] = F16ToF32One(h)
	}
}

// F16ToF32One widens one binary16 value.
func F16ToF32One(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0 && man == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: normalize
		e := uint32(127 - 15 + 1)
		for man&0x400 == 0 {
			man <<= 1
			e--
		}
		man &= 0x3ff
		return math.Float32frombits(sign | e<<23 | man<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | man<<13)
	default:
		return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
	}
}
