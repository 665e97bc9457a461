package tensor

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func randMat(rng *rand.Rand, rows, cols int, std float32) *Mat {
	m := &Mat{Rows: rows, Cols: cols, F32: make([]float32, rows*cols)}
	for i := range m.F32 {
		m.F32[i] = float32(rng.NormFloat64()) * std
	}
	return m
}

// TestQuantizeBounds checks each format's rounding bound per weight: int8
// moves a weight by at most half its row's step, q4 by at most half its
// group's step (a full step for the one code clamped at +8), and padding
// and Bytes follow the layout QMat documents.
func TestQuantizeBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, shape := range [][2]int{{1, 1}, {3, 64}, {33, 100}, {7, 200}, {64, 1024}} {
		m := randMat(rng, shape[0], shape[1], 0.02)
		m.F32[0] = 0.5 // an outlier
		for _, f := range []QFormat{QInt8, QQ4} {
			q, err := Quantize(m, f)
			if err != nil {
				t.Fatal(err)
			}
			if q.Bytes() != QBytes(f, m.Rows, m.Cols) {
				t.Errorf("%v %v: Bytes %d, QBytes %d", f, shape, q.Bytes(), QBytes(f, m.Rows, m.Cols))
			}
			deq := q.Dequantize()
			g := q.Groups()
			for r := 0; r < m.Rows; r++ {
				for k := 0; k < m.Cols; k++ {
					w, d := m.F32[r*m.Cols+k], deq[r*m.Cols+k]
					var step float64
					if f == QInt8 {
						step = float64(q.Scale[r])
					} else {
						step = math.Abs(float64(F16ToF32One(q.F16[r*g+k/QGroup])))
					}
					if e := math.Abs(float64(w - d)); e > step*(0.5+1e-6) && !(f == QQ4 && e <= step*(1+1e-6)) {
						t.Fatalf("%v %v: w[%d,%d] = %g dequantized to %g: error %g > step/2 %g", f, shape, r, k, w, d, e, step/2)
					}
				}
				// Padding codes are zero weights.
				data := q.Data[r*q.Stride : (r+1)*q.Stride]
				for k := m.Cols; k < g*QGroup; k++ {
					var c int
					if f == QInt8 {
						c = int(int8(data[k]))
					} else {
						b := data[k/QGroup*QGroup/2+k%(QGroup/2)]
						c = int(b & 15)
						if k%QGroup >= QGroup/2 {
							c = int(b >> 4)
						}
						c -= 8
					}
					if c != 0 {
						t.Fatalf("%v %v: padding code %d at row %d col %d", f, shape, c, r, k)
					}
				}
			}
		}
	}
}

// TestQuantizeLargestIsExact: int8 maps each row's largest magnitude to
// ±127 steps and q4 each group's to -8 steps, so those weights are exact
// up to the scale's own rounding.
func TestQuantizeLargestIsExact(t *testing.T) {
	m := &Mat{Rows: 1, Cols: 64, F32: make([]float32, 64)}
	for i := range m.F32 {
		m.F32[i] = float32(i%7) * 0.01
	}
	m.F32[5] = -0.75
	q8, _ := Quantize(m, QInt8)
	if got := q8.Dequantize()[5]; got != -0.75 {
		t.Errorf("int8: largest weight %g, want -0.75", got)
	}
	q4, _ := Quantize(m, QQ4)
	if got := q4.Dequantize()[5]; got != -0.75 { // -0.75/-8 is exact in binary16
		t.Errorf("q4: largest weight %g, want -0.75", got)
	}
}

func TestQuantizeRejects(t *testing.T) {
	m := &Mat{Rows: 2, Cols: 3, F32: []float32{1, 2, 3, 4, float32(math.Inf(1)), 6}}
	if _, err := Quantize(m, QInt8); err == nil || !strings.Contains(err.Error(), "[1, 1]") {
		t.Errorf("infinite weight: err %v, want one naming [1, 1]", err)
	}
	wide := &Mat{Rows: 1, Cols: QInt8MaxCols + 1, F32: make([]float32, QInt8MaxCols+1)}
	if _, err := Quantize(wide, QInt8); err == nil || !strings.Contains(err.Error(), "at most 131072 inputs") {
		t.Errorf("int8 with %d inputs: err %v", wide.Cols, err)
	}
	if _, err := Quantize(wide, QQ4); err != nil { // q4's float sums have no such limit
		t.Errorf("q4 with %d inputs: %v", wide.Cols, err)
	}
	if _, err := Quantize(&Mat{Rows: 1, Cols: 1, F32: []float32{1}}, QNone); err == nil {
		t.Error("QNone: no error")
	}
	if _, err := ParseQFormat("q3"); err == nil || !strings.Contains(err.Error(), "int8 or q4") {
		t.Errorf("ParseQFormat(q3): %v", err)
	}
	for _, f := range []QFormat{QNone, QInt8, QQ4} {
		if g, err := ParseQFormat(f.String()); err != nil || g != f {
			t.Errorf("ParseQFormat(%q) = %v, %v", f.String(), g, err)
		}
	}
}

// qlinearWant is what QLinear must compute, in float64: each activation
// row quantized per block exactly as quantizeActs does, times the
// dequantized weights, so the only difference left is float rounding. It
// also returns sum |terms| per output, the scale of that rounding.
func qlinearWant(x []float32, n int, q *QMat) (want, mag []float64) {
	deq := q.Dequantize()
	want, mag = make([]float64, n*q.Rows), make([]float64, n*q.Rows)
	var a QActs
	block := QGroup
	if q.Format == QInt8 {
		block = q.Groups() * QGroup // per token
	}
	for i := 0; i < n; i++ {
		quantizeActs(&a, x[i*q.Cols:(i+1)*q.Cols], q.Groups(), block)
		for r := 0; r < q.Rows; r++ {
			var s, m float64
			for k := 0; k < q.Cols; k++ {
				v := float64(a.Scale[k/block]) * float64(a.Q[k]) * float64(deq[r*q.Cols+k])
				s += v
				m += math.Abs(v)
			}
			want[i*q.Rows+r], mag[i*q.Rows+r] = s, m
		}
	}
	return want, mag
}

// TestQLinear checks QLinear (with this CPU's kernels) against the float64
// product of the quantized activations and dequantized weights, its error
// against the unquantized product, beta, and batch invariance: a row's
// result does not depend on the rows computed with it.
func TestQLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, f := range []QFormat{QInt8, QQ4} {
		for _, shape := range [][3]int{{1, 5, 64}, {3, 37, 100}, {5, 70, 1030}, {1, 256, 2816}} {
			n, rows, cols := shape[0], shape[1], shape[2]
			m := randMat(rng, rows, cols, 0.02)
			q, err := Quantize(m, f)
			if err != nil {
				t.Fatal(err)
			}
			x := make([]float32, n*cols)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			x[0] = 9 // an activation outlier in the first block
			y := make([]float32, n*rows)
			QLinear(y, x, n, q, 0)
			want, mag := qlinearWant(x, n, q)
			for i, v := range y {
				if e := math.Abs(float64(v) - want[i]); e > 1e-5*mag[i]+1e-30 {
					t.Fatalf("%v %v: y[%d] = %g, want %g (|terms| %g)", f, shape, i, v, want[i], mag[i])
				}
			}
			// Against the float product: the quantization error is small
			// relative to the output's size.
			exact := make([]float32, n*rows)
			Linear(exact, x, n, m, 0)
			rel := relErr(y, exact)
			t.Logf("%v n=%d %dx%d: rel L2 vs float product %.4f", f, n, rows, cols, rel)
			// int8 quantizes each activation row with one scale, so the
			// outlier x[0] = 9 (the rest N(0, 1)) sets a step of 9/127 and
			// a rounding error of about 9/127/sqrt(12) = 2% of rms(x);
			// q4's 4-bit weights cost about 10% (Gaussian weights).
			bound := map[QFormat]float64{QInt8: 0.04, QQ4: 0.15}[f]
			if rel > bound {
				t.Errorf("%v %v: rel L2 error vs float %.4f > %g", f, shape, rel, bound)
			}
			// beta accumulates.
			y2 := make([]float32, n*rows)
			for i := range y2 {
				y2[i] = 1
			}
			QLinear(y2, x, n, q, 0.5)
			for i := range y2 {
				if d := y2[i] - (y[i] + 0.5); math.Abs(float64(d)) > 1e-5*(1+math.Abs(float64(y[i]))) {
					t.Fatalf("%v: beta: y2[%d] = %g, want %g", f, i, y2[i], y[i]+0.5)
				}
			}
			// Batch invariance, bit for bit.
			for i := 0; i < n; i++ {
				one := make([]float32, rows)
				QLinear(one, x[i*cols:(i+1)*cols], 1, q, 0)
				for r := range one {
					if one[r] != y[i*rows+r] {
						t.Fatalf("%v %v: row %d alone gives y[%d] = %g, in the batch %g", f, shape, i, r, one[r], y[i*rows+r])
					}
				}
			}
			// Linear dispatches to QLinear for a quantized Mat.
			qm := Mat{Rows: rows, Cols: cols, Q: q}
			y3 := make([]float32, n*rows)
			Linear(y3, x, n, &qm, 0)
			if relErr(y3, y) != 0 {
				t.Errorf("%v: Linear on a quantized Mat differs from QLinear", f)
			}
			if qm.Bytes() != q.Bytes() || qm.Empty() {
				t.Errorf("%v: Mat.Bytes %d, Empty %v", f, qm.Bytes(), qm.Empty())
			}
		}
	}
}

// TestQuantizeActs: zero blocks stay zero, a NaN poisons its block's scale
// (as it would a float product), codes stay in [-127, 127] and Sum is
// their sum.
func TestQuantizeActs(t *testing.T) {
	x := make([]float32, 150)
	for i := range x {
		x[i] = float32(i%13) - 6
	}
	for i := 64; i < 128; i++ {
		x[i] = 0
	}
	x[140] = float32(math.NaN())
	var a QActs
	quantizeActs(&a, x, 3, QGroup)
	if a.Scale[1] != 0 || a.Sum[1] != 0 {
		t.Errorf("zero block: scale %g sum %d", a.Scale[1], a.Sum[1])
	}
	if !math.IsNaN(float64(a.Scale[2])) {
		t.Errorf("NaN block: scale %g, want NaN", a.Scale[2])
	}
	var sum int32
	for j := 0; j < 64; j++ {
		if a.Q[j] < -127 {
			t.Fatalf("code %d", a.Q[j])
		}
		sum += int32(a.Q[j])
	}
	if sum != a.Sum[0] {
		t.Errorf("Sum %d, codes sum to %d", a.Sum[0], sum)
	}
	if got := float32(a.Q[6]) * a.Scale[0]; got != x[6] { // x[6] = 0
		t.Errorf("x[6] = %g quantizes to %g", x[6], got)
	}
}

// TestF32ToF16 rounds every binary16 value back to itself, and halfway
// cases to even.
func TestF32ToF16(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32One(uint16(h))
		if math.IsNaN(float64(f)) {
			if g := F32ToF16One(f); g&0x7c00 != 0x7c00 || g&0x3ff == 0 {
				t.Fatalf("NaN %04x -> %04x", h, g)
			}
			continue
		}
		if g := F32ToF16One(f); g != uint16(h) {
			t.Fatalf("%04x (%g) -> %04x", h, f, g)
		}
	}
	for _, c := range []struct {
		f float32
		h uint16
	}{
		{1 + 1.0/2048, 0x3c00}, // halfway, rounds to even (down)
		{1 + 3.0/2048, 0x3c02}, // halfway, rounds to even (up)
		{65520, 0x7c00},        // rounds past the largest finite: Inf
		{65519, 0x7bff},        // largest finite
		{1e-8, 0x0000},         // below half the smallest subnormal
		{-3e-8, 0x8001},        // rounds to the smallest subnormal
		{float32(math.Inf(-1)), 0xfc00},
	} {
		if g := F32ToF16One(c.f); g != c.h {
			t.Errorf("F32ToF16One(%g) = %04x, want %04x", c.f, g, c.h)
		}
	}
}

func BenchmarkQLinearDecode(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	m := randMat(rng, 2816, 1024, 0.02)
	x := make([]float32, 1024)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	y := make([]float32, 2816)
	for _, f := range []QFormat{QInt8, QQ4} {
		q, _ := Quantize(m, f)
		b.Run(f.String(), func(b *testing.B) {
			b.SetBytes(q.Bytes())
			for b.Loop() {
				QLinear(y, x, 1, q, 0)
			}
		})
	}
	bf := &Mat{Rows: m.Rows, Cols: m.Cols, BF16: make([]uint16, len(m.F32))}
	F32ToBF16(bf.BF16, m.F32)
	b.Run("bf16", func(b *testing.B) {
		b.SetBytes(bf.Bytes())
		for b.Loop() {
			Linear(y, x, 1, bf, 0)
		}
	})
}
