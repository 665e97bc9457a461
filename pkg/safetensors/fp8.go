package safetensors

import (
	"math"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// The two 8-bit float formats of the OCP 8-bit floating point specification
// (OFP8), as torch.float8_e4m3fn and torch.float8_e5m2 store them:
//
//	E4M3 ("fn": finite): sign, 4 exponent bits (bias 7), 3 mantissa bits.
//	  No infinities; S.1111.111 (0x7f, 0xff) is NaN, so the largest finite
//	  value is S.1111.110 = ±448. Exponent 0 holds subnormals m·2^-9, the
//	  smallest 2^-9 (0x01); the smallest normal is 2^-6 (0x08).
//	E5M2: sign, 5 exponent bits (bias 15), 2 mantissa bits: the top byte of
//	  an IEEE binary16, infinities and NaNs included (largest finite 57344).
//
// Every value of both formats is exactly representable in float32.

// f8e4m3 maps each E4M3 encoding to its float32 value.
var f8e4m3 = func() (t [256]float32) {
	for b := range t {
		exp, mant := b>>3&0xf, b&7
		var v float64
		switch {
		case exp == 0xf && mant == 7:
			v = math.NaN()
		case exp == 0:
			v = math.Ldexp(float64(mant), -9)
		default:
			v = math.Ldexp(1+float64(mant)/8, exp-7)
		}
		if b&0x80 != 0 {
			v = -v
		}
		t[b] = float32(v)
	}
	return t
}()

// F8E4M3ToF32 returns the exact float32 value of an F8_E4M3 (e4m3fn) byte.
func F8E4M3ToF32(b uint8) float32 { return f8e4m3[b] }

// F8E5M2ToF32 returns the exact float32 value of an F8_E5M2 byte.
func F8E5M2ToF32(b uint8) float32 { return tensor.F16ToF32One(uint16(b) << 8) }

// F8E4M3Max is the largest finite F8_E4M3 value.
const F8E4M3Max = 448

// F32ToF8E4M3 rounds f to the nearest F8_E4M3 value, ties to the even
// encoding (torch's rounding), saturating: anything beyond ±448, infinities
// included, becomes ±448. NaN becomes 0x7f. (torch's plain cast turns values
// past the range into NaN; quantizers divide by amax/448 first, so they
// never reach it.)
func F32ToF8E4M3(f float32) uint8 {
	if f != f {
		return 0x7f
	}
	var sign uint8
	if math.Signbit(float64(f)) {
		sign, f = 0x80, -f
	}
	if f >= F8E4M3Max {
		return sign | 0x7e
	}
	// The positive encodings 0x00..0x7e are increasing: find the first
	// whose value is >= f, then pick between it and its predecessor.
	lo, hi := 0, 0x7e
	for lo < hi {
		mid := (lo + hi) / 2
		if f8e4m3[mid] < f {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	b := uint8(lo)
	if b > 0 {
		below, above := float64(f8e4m3[b-1]), float64(f8e4m3[b])
		switch d := float64(f) - (below+above)/2; {
		case d < 0, d == 0 && b&1 == 1:
			b--
		}
	}
	return sign | b
}
