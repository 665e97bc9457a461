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

// TestPairBF16Avx512 checks the assembly against pairBF16Generic bit for
// bit on widths around the 16-lane chunks, with ties, NaNs, infinities and
// denormals among the values.
func TestPairBF16Avx512(t *testing.T) {
	if !bf16DotSupported(archAVX512) || !archSupported(archAVX512) {
		t.Skip("no AVX512_BF16 on this CPU") // the generic pairing is tested on its own
	}
	rng := rand.New(rand.NewPCG(7, 8))
	specials := []float32{float32(math.NaN()), float32(math.Inf(-1)), 1e-40, -1e-41, 0,
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.MaxFloat32}
	for _, width := range []int{1, 14, 15, 16, 17, 31, 32, 33, 48} {
		for _, pairs := range []int{1, 2, 5} {
			src := make([]float32, 2*pairs*width)
			for i := range src {
				if rng.IntN(4) == 0 {
					src[i] = specials[rng.IntN(len(specials))]
				} else {
					src[i] = float32(rng.NormFloat64())
				}
			}
			want := make([]float32, pairs*width+1)
			got := make([]float32, pairs*width+1)
			want[pairs*width], got[pairs*width] = 7, 7 // past the end: untouched
			pairBF16Generic(want, src, width, pairs)
			pairBF16Avx512(&got[0], &src[0], width, pairs)
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("width %d pairs %d: dword %d = %#08x, want %#08x", width, pairs, i, math.Float32bits(got[i]), math.Float32bits(want[i]))
				}
			}
		}
	}
}

// TestRoundBF16Avx512 checks the assembly against roundBF16 bit for bit on
// every length up to 40 (the masked tail) with specials among the values.
func TestRoundBF16Avx512(t *testing.T) {
	if !archSupported(archAVX512) {
		t.Skip("no AVX-512 on this CPU") // TestRoundBF16Avx2 covers what runs then
	}
	checkRoundBF16(t, func(x []float32) { roundBF16Avx512(&x[0], len(x)) })
}

// TestRoundBF16Avx2: the AVX2 kernel likewise (n a multiple of 8), and
// roundBF16Slice, which runs it and rounds a rest of 1-7 in Go, on AVX2
// CPUs without AVX-512.
func TestRoundBF16Avx2(t *testing.T) {
	if !archSupported(archAVX2) {
		t.Skip("no AVX2 on this CPU")
	}
	checkRoundBF16(t, func(x []float32) {
		if n := len(x) &^ 7; n > 0 {
			roundBF16Avx2(&x[0], n)
		}
		roundBF16SliceGeneric(x[len(x)&^7:])
	})
	checkRoundBF16(t, roundBF16Slice)
}

// checkRoundBF16 runs round on x[:n] for n up to 40 against
// roundBF16SliceGeneric, bit for bit, with specials among the values, and
// checks that x[n] is left alone.
func checkRoundBF16(t *testing.T, round func(x []float32)) {
	t.Helper()
	rng := rand.New(rand.NewPCG(9, 10))
	specials := []float32{float32(math.NaN()), math.Float32frombits(0xff800001), float32(math.Inf(-1)), 1e-40, -1e-41, 0,
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.MaxFloat32, -math.MaxFloat32}
	for n := 0; n <= 40; n++ {
		x := make([]float32, n+1)
		for i := range x {
			if rng.IntN(3) == 0 {
				x[i] = specials[rng.IntN(len(specials))]
			} else {
				x[i] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(20)-10)))
			}
		}
		want := append([]float32(nil), x...)
		roundBF16SliceGeneric(want[:n])
		if n > 0 {
			round(x[:n])
		}
		for i := range x {
			if math.Float32bits(x[i]) != math.Float32bits(want[i]) {
				t.Fatalf("n %d: x[%d] = %#08x, want %#08x", n, i, math.Float32bits(x[i]), math.Float32bits(want[i]))
			}
		}
	}
}

// ulpDiff is how many float32 steps apart got and want are (0 for equal
// values and for two NaNs; huge for NaN against a number).
func ulpDiff(got, want float32) int64 {
	if got != got || want != want {
		if got != got && want != want {
			return 0
		}
		return math.MaxInt64
	}
	key := func(f float32) int64 { // monotone in f, +0 and -0 equal
		b := int64(math.Float32bits(f))
		if b&(1<<31) != 0 {
			return -(b &^ (1 << 31))
		}
		return b
	}
	d := key(got) - key(want)
	if d < 0 {
		d = -d
	}
	return d
}

// TestExpKernels checks the AVX-512 e^x behind Softmax and SwiGLU element
// by element against float64 math: within 2 ulp over e^x's whole range
// (and exact 0, Inf and NaN at its ends), and silu(g)*up within 4 ulp of
// its float64 value, with tails of every length.
func TestExpKernels(t *testing.T) {
	if !archSupported(archAVX512) {
		t.Skip("no AVX-512 on this CPU") // the portable loops use math.Exp
	}
	rng := rand.New(rand.NewPCG(11, 12))
	xs := expTestInputs(rng)

	checkExpShift(t, xs, func(x []float32, shift float32) float64 { return expShiftAvx512(&x[0], len(x), shift) })
	checkSwiGLU(t, xs, rng, func(out, g, u []float32) { swigluAvx512(&out[0], &g[0], &u[0], len(g)) })
}

// checkExpShift runs expShift (x[i] = e^(x[i] - shift) in place, the sum
// returned) on the tails of xs of several lengths against float64 math:
// each value within 2 ulp (exact 0, Inf and NaN at the ends), the sum as
// the values' sum in float64.
func checkExpShift(t *testing.T, xs []float32, expShift func(x []float32, shift float32) float64) {
	t.Helper()
	for _, n := range []int{len(xs), 1, 7, 8, 9, 15, 17, 33} {
		in := xs[len(xs)-n:]
		got := append([]float32(nil), in...)
		sum := expShift(got, 0.5)
		var wantSum float64
		worst := int64(0)
		for i, x := range in {
			want := float32(math.Exp(float64(x - 0.5))) // the difference rounds to float32 first, as in Softmax
			if d := ulpDiff(got[i], want); d > worst {
				worst = d
				if d > 2 {
					t.Fatalf("e^(%v - 0.5) = %v, want %v (%d ulp)", x, got[i], want, d)
				}
			}
			wantSum += float64(got[i])
		}
		if !(sum == wantSum || math.Abs(sum-wantSum) <= 1e-12*math.Abs(wantSum)) && !(math.IsNaN(sum) && math.IsNaN(wantSum)) {
			t.Fatalf("n %d: sum %v, want %v", n, sum, wantSum)
		}
		if n == len(xs) {
			t.Logf("e^x: worst %d ulp over %d values", worst, n)
		}
	}
}

// expTestInputs are the arguments TestExpKernels and TestExpKernelsAvx2 try:
// a sweep of e^x's range, random values, and specials.
func expTestInputs(rng *rand.Rand) []float32 {
	var xs []float32
	for x := float32(-110); x < 95; x += 0.0137 {
		xs = append(xs, x)
	}
	for i := 0; i < 20000; i++ {
		xs = append(xs, float32(rng.NormFloat64()*4))
	}
	specials := []float32{0, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
		88.72, 88.73, -87.33, -103.9, -104.5, 1e-30, -1e-30}
	return append(xs, specials...)
}

// TestExpKernelsAvx2: the AVX2 kernels behind Softmax and SwiGLU (what
// runs on CPUs without AVX-512) meet TestExpKernels' bounds, with rests of
// 1-7 elements; where the CPU also has AVX-512, every lane equals the
// AVX-512 kernels' bit for bit.
func TestExpKernelsAvx2(t *testing.T) {
	if !archSupported(archAVX2) {
		t.Skip("no AVX2 on this CPU")
	}
	rng := rand.New(rand.NewPCG(11, 12))
	xs := expTestInputs(rng)
	checkExpShift(t, xs, expShiftAvx2Slice)
	checkSwiGLU(t, xs, rng, swigluAvx2Slice)
	if !archSupported(archAVX512) {
		return
	}
	up := make([]float32, len(xs))
	for i := range up {
		up[i] = float32(rng.NormFloat64())
	}
	a, b := make([]float32, len(xs)), make([]float32, len(xs))
	swigluAvx2Slice(a, xs, up)
	swigluAvx512(&b[0], &xs[0], &up[0], len(xs))
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("silu(%v)*%v: AVX2 %v, AVX-512 %v", xs[i], up[i], a[i], b[i])
		}
	}
	copy(a, xs)
	copy(b, xs)
	expShiftAvx2Slice(a, 0.5)
	expShiftAvx512(&b[0], len(b), 0.5)
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("e^(%v - 0.5): AVX2 %v, AVX-512 %v", xs[i], a[i], b[i])
		}
	}
}

// checkSwiGLU runs swiglu (out, gate, up) on the tails of xs of several
// lengths against float64 math: within 4 ulp, and never past out's end.
func checkSwiGLU(t *testing.T, xs []float32, rng *rand.Rand, swiglu func(out, g, u []float32)) {
	t.Helper()
	up := make([]float32, len(xs))
	for i := range up {
		up[i] = float32(rng.NormFloat64())
	}
	for _, n := range []int{len(xs), 1, 7, 8, 9, 15, 17} {
		g := xs[len(xs)-n:]
		u := up[len(xs)-n:]
		got := make([]float32, n+1)
		got[n] = 7
		swiglu(got[:n], g, u)
		if got[n] != 7 {
			t.Fatalf("n %d: wrote past the end", n)
		}
		for i := range g {
			gd := float64(g[i])
			want := float32(gd / (1 + math.Exp(-gd)) * float64(u[i]))
			if math.IsInf(gd, -1) {
				want = float32(math.NaN()) // -Inf * sigmoid(-Inf) = -Inf * 0
			}
			// Past |g| ~ 87, e^-|g| is denormal and loses bits (and is 0
			// past 104): results there, below 2^-120 in magnitude, are
			// held to an absolute 2^-120.
			tiny := math.Abs(float64(got[i]-want)) < 0x1p-120
			if d := ulpDiff(got[i], want); d > 4 && !tiny {
				t.Fatalf("silu(%v)*%v = %v, want %v (%d ulp)", g[i], u[i], got[i], want, d)
			}
		}
	}
}

// TestPackAPanelAvx2: the AVX2 A packer (six rows of row-major A through
// packA6Avx2, whole blocks of 8 columns, the rest in Go) writes what
// packAPanelGeneric writes, for every depth up to 41 and both layouts of
// A, and nothing past the panel.
func TestPackAPanelAvx2(t *testing.T) {
	if !archSupported(archAVX2) {
		t.Skip("no AVX2 on this CPU")
	}
	const mr = 6
	rng := rand.New(rand.NewPCG(15, 16))
	for _, transA := range []bool{false, true} {
		for rows := 1; rows <= mr; rows++ {
			for kc := 1; kc <= 41; kc++ {
				const i0, p0, lda = 3, 5, 61
				a := make([]float32, 64*lda)
				for i := range a {
					a[i] = float32(rng.NormFloat64())
				}
				want := make([]float32, kc*mr+8)
				got := make([]float32, kc*mr+8)
				for i := range want {
					want[i], got[i] = -7, -7
				}
				packAPanelGeneric(mr, want, a, lda, transA, i0, p0, rows, kc)
				packAPanel(archAVX2, got, a, lda, transA, i0, p0, rows, kc)
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Fatalf("transA=%v rows=%d kc=%d: dst[%d] = %v, want %v", transA, rows, kc, i, got[i], want[i])
					}
				}
			}
		}
	}
}
