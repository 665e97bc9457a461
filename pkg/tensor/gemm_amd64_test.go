package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestTranspose16x16Avx512 checks the masked transpose behind A and B
// packing on every ragged size: the block lands transposed, rows >= rows
// read as zero, and nothing outside cols x lanes of dst is written.
func TestTranspose16x16Avx512(t *testing.T) {
	if !archSupported(archAVX512) {
		t.Skip("no AVX-512")
	}
	rng := rand.New(rand.NewPCG(9, 9))
	const lds, ldd = 37, 19
	src := make([]float32, 16*lds)
	src16 := make([]uint16, 16*lds)
	for i := range src {
		src16[i] = uint16(rng.Uint32())
		if src16[i]&0x7f80 == 0x7f80 { // keep clear of NaN so == works
			src16[i] &^= 0x4000
		}
		src[i] = math.Float32frombits(uint32(src16[i]) << 16)
	}
	const sentinel = -7.5
	for _, bf16 := range []bool{false, true} {
		for rows := 0; rows <= 16; rows++ {
			for cols := 1; cols <= 16; cols++ {
				for _, lanes := range []int{rows, 16, max(rows, 3)} {
					if lanes > ldd || lanes == 0 {
						continue
					}
					dst := make([]float32, 17*ldd)
					for i := range dst {
						dst[i] = sentinel
					}
					if bf16 {
						transpose16x16BF16Avx512(&dst[0], ldd, &src16[0], lds, rows, cols, lanes)
					} else {
						transpose16x16Avx512(&dst[0], ldd, &src[0], lds, rows, cols, lanes)
					}
					for i, got := range dst {
						c, r := i/ldd, i%ldd
						want := float32(sentinel)
						if c < cols && r < lanes {
							want = 0
							if r < rows {
								want = src[r*lds+c]
							}
						}
						if got != want {
							t.Fatalf("bf16=%v rows=%d cols=%d lanes=%d: dst[%d][%d] = %g, want %g", bf16, rows, cols, lanes, c, r, got, want)
						}
					}
				}
			}
		}
	}
}

// TestTranspose8x8Avx2 checks the AVX2 full-block transposes.
func TestTranspose8x8Avx2(t *testing.T) {
	if !archSupported(archAVX2) {
		t.Skip("no AVX2")
	}
	const lds, ldd = 11, 9
	src := make([]float32, 8*lds)
	src16 := make([]uint16, 8*lds)
	for i := range src {
		src16[i] = F32ToBF16One(float32(i) - 20)
		src[i] = math.Float32frombits(uint32(src16[i]) << 16)
	}
	for _, bf16 := range []bool{false, true} {
		dst := make([]float32, 8*ldd)
		if bf16 {
			transpose8x8BF16Avx2(&dst[0], ldd, &src16[0], lds)
		} else {
			transpose8x8Avx2(&dst[0], ldd, &src[0], lds)
		}
		for c := 0; c < 8; c++ {
			for r := 0; r < ldd; r++ {
				want := float32(0)
				if r < 8 {
					want = src[r*lds+c]
				}
				if got := dst[c*ldd+r]; got != want {
					t.Fatalf("bf16=%v: dst[%d][%d] = %g, want %g", bf16, c, r, got, want)
				}
			}
		}
	}
}
