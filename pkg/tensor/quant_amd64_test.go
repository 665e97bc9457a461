//go:build amd64

package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// qDotsCase is one set of inputs for q8Dots / q4Dots.
type qDotsCase struct {
	name         string
	rows, groups int
	stride8      int // bytes per row, int8 codes
	stride4      int // bytes per row, 4-bit codes
	w8, w4       []byte
	wsum         []int32 // [rows] sum of each row's int8 codes
	d            []uint16
	xq           []int8
	xs           []float32
	xsum         []int32
}

// qFill selects how a case's codes are drawn.
type qFill int

const (
	qFillRandom  qFill = iota
	qFillExtreme       // weights and activations only -127 / 127, 4-bit codes 0 / 15
	qFillZeroBlk       // random, with every other activation block all zero
)

func newQDotsCase(rng *rand.Rand, rows, groups, pad int, fill qFill) *qDotsCase {
	c := &qDotsCase{rows: rows, groups: groups, stride8: groups*QGroup + pad, stride4: groups*QGroup/2 + pad}
	c.name = fmt.Sprintf("rows=%d/groups=%d/pad=%d/fill=%d", rows, groups, pad, fill)
	c.w8 = make([]byte, rows*c.stride8)
	c.w4 = make([]byte, rows*c.stride4)
	c.d = make([]uint16, rows*groups)
	c.xq = make([]int8, groups*QGroup)
	c.xs = make([]float32, groups)
	c.xsum = make([]int32, groups)
	code8 := func() int8 {
		if fill == qFillExtreme {
			return int8(127 - 254*rng.IntN(2))
		}
		return int8(rng.IntN(255) - 127)
	}
	for i := range c.w8 {
		c.w8[i] = byte(code8())
	}
	c.wsum = make([]int32, rows)
	for r := range c.wsum {
		for _, v := range c.w8[r*c.stride8 : r*c.stride8+groups*QGroup] {
			c.wsum[r] += int32(int8(v))
		}
	}
	for i := range c.w4 {
		if fill == qFillExtreme {
			c.w4[i] = byte(15*rng.IntN(2)) | byte(15*rng.IntN(2))<<4
		} else {
			c.w4[i] = byte(rng.IntN(256))
		}
	}
	for i := range c.d {
		c.d[i] = F32ToF16One((rng.Float32() - 0.5) / 4)
	}
	for b := 0; b < groups; b++ {
		c.xs[b] = rng.Float32() / 127
		if fill == qFillZeroBlk && b%2 == 1 {
			c.xs[b] = 0
			continue
		}
		var sum int32
		for j := b * QGroup; j < (b+1)*QGroup; j++ {
			c.xq[j] = code8()
			sum += int32(c.xq[j])
		}
		c.xsum[b] = sum
	}
	return c
}

// q4Tol is 1e-5 of the sum of the absolute values of all terms of row r's
// dot product.
func (c *qDotsCase) q4Tol(r int) float64 {
	var t float64
	for b := 0; b < c.groups; b++ {
		s := 8 * math.Abs(float64(c.xsum[b]))
		for j := 0; j < QGroup/2; j++ {
			v := c.w4[r*c.stride4+b*QGroup/2+j]
			s += float64(v&15) * math.Abs(float64(c.xq[b*QGroup+j]))
			s += float64(v>>4) * math.Abs(float64(c.xq[b*QGroup+QGroup/2+j]))
		}
		t += math.Abs(float64(F16ToF32One(c.d[r*c.groups+b]))*float64(c.xs[b])) * s
	}
	return 1e-5 * t
}

// qDotsCases covers rows 1..32 (multiples of 4 and not), the group counts
// 1, 2, 3, 16, 44, strides with and without padding, extreme codes and
// all-zero activation blocks.
func qDotsCases() []*qDotsCase {
	rng := rand.New(rand.NewPCG(7, 11))
	var cases []*qDotsCase
	for _, groups := range []int{1, 2, 3, 16, 44} {
		for rows := 1; rows <= 32; rows++ {
			if groups >= 16 && rows > 9 && rows%4 != 1 && rows != 32 {
				continue // keep the big shapes few
			}
			pad := 0
			if rows%3 == 1 {
				pad = 64 + 5
			}
			cases = append(cases, newQDotsCase(rng, rows, groups, pad, qFillRandom))
		}
		for _, rows := range []int{1, 4, 7, 32} {
			cases = append(cases, newQDotsCase(rng, rows, groups, 3, qFillExtreme))
			cases = append(cases, newQDotsCase(rng, rows, groups, 0, qFillZeroBlk))
		}
	}
	return cases
}

// exactSlice returns a copy of s in a slice with no spare capacity, so
// that reading past len would be caught by the bounds checks (and a kernel
// reading past it touches only memory the test does not own, which the
// race/asan builds would flag).
func exactSlice[T any](s []T) []T { return append([]T(nil), s...)[:len(s):len(s)] }

func TestQuantKernelName(t *testing.T) {
	k := QuantKernel()
	if k != "generic" && k != "avx2" && k != "avx512-vnni" {
		t.Fatalf("QuantKernel() = %q", k)
	}
	t.Logf("QuantKernel() = %s, supported %v", k, supportedQuantArchs())
}

// quantArchOrder is a quantized kernel family with the single-token
// kernels reading W in one order (gemvSequential).
type quantArchOrder struct {
	arch quantArchT
	seq  bool
}

func (a quantArchOrder) String() string {
	return a.arch.String() + map[bool]string{false: "/interleaved", true: "/sequential"}[a.seq]
}

func (a quantArchOrder) force() (restore func()) {
	r1, r2 := forceQuantArch(a.arch), forceGemvOrder(a.seq)
	return func() { r2(); r1() }
}

// quantArchOrders lists every supported family in both orders.
func quantArchOrders() []quantArchOrder {
	var out []quantArchOrder
	for _, a := range supportedQuantArchs() {
		out = append(out, quantArchOrder{a, false}, quantArchOrder{a, true})
	}
	return out
}

func TestQ8DotsArch(t *testing.T) {
	cases := qDotsCases()
	for _, a := range quantArchOrders() {
		t.Run(a.String(), func(t *testing.T) {
			defer a.force()()
			for _, c := range cases {
				want := make([]int32, c.rows)
				q8DotsRef(c.rows, c.groups, c.w8, c.stride8, c.xq, want)
				// The last row need not have its padding.
				w := exactSlice(c.w8[:(c.rows-1)*c.stride8+c.groups*QGroup])
				got := make([]int32, c.rows)
				for i := range got {
					got[i] = math.MinInt32 // must be overwritten
				}
				q8Dots(c.rows, c.groups, w, c.stride8, exactSlice(c.xq), exactSlice(c.wsum), got)
				for r := range want {
					if got[r] != want[r] { // integer dot products: exact
						t.Fatalf("%s: row %d: got %d, want %d", c.name, r, got[r], want[r])
					}
				}
			}
		})
	}
}

func TestQ4DotsArch(t *testing.T) {
	cases := qDotsCases()
	for _, a := range quantArchOrders() {
		t.Run(a.String(), func(t *testing.T) {
			defer a.force()()
			for _, c := range cases {
				want := make([]float32, c.rows)
				q4DotsRef(c.rows, c.groups, c.w4, c.stride4, c.d, c.xq, c.xs, c.xsum, want)
				w := exactSlice(c.w4[:(c.rows-1)*c.stride4+c.groups*QGroup/2])
				got := make([]float32, c.rows)
				for i := range got {
					got[i] = float32(math.NaN())
				}
				q4Dots(c.rows, c.groups, w, c.stride4, exactSlice(c.d), exactSlice(c.xq), exactSlice(c.xs), exactSlice(c.xsum), got)
				for r := range want {
					if d := math.Abs(float64(got[r] - want[r])); !(d <= c.q4Tol(r)) {
						t.Fatalf("%s: row %d: got %v, want %v (tol %g)", c.name, r, got[r], want[r], c.q4Tol(r))
					}
				}
			}
		})
	}
}

// TestQuantDotsExact checks a case with a known answer: all weights 127 and
// all activations -127 give -64*127*127 per block.
func TestQuantDotsExact(t *testing.T) {
	const rows, groups = 5, 3
	w := make([]byte, rows*groups*QGroup)
	for i := range w {
		w[i] = 127
	}
	xq := make([]int8, groups*QGroup)
	for i := range xq {
		xq[i] = -127
	}
	xs := []float32{1, 0.5, 0.25}
	d := make([]uint16, rows*groups)
	for i := range d {
		d[i] = F32ToF16One(1)
	}
	w4 := make([]byte, rows*groups*QGroup/2)
	for i := range w4 {
		w4[i] = 0xff // codes 15, weight 7
	}
	xsum := []int32{-127 * 64, -127 * 64, -127 * 64}
	for _, a := range quantArchOrders() {
		restore := a.force()
		iout := make([]int32, rows)
		wsum := make([]int32, rows)
		for r := range wsum {
			wsum[r] = 127 * groups * QGroup
		}
		q8Dots(rows, groups, w, groups*QGroup, xq, wsum, iout)
		for r, v := range iout {
			if want := int32(-groups * 64 * 127 * 127); v != want {
				t.Errorf("%v: q8 row %d = %v, want %v", a, r, v, want)
			}
		}
		out := make([]float32, rows)
		q4Dots(rows, groups, w4, groups*QGroup/2, d, xq, xs, xsum, out)
		for r, v := range out {
			if want := float32(-64 * 7 * 127 * 1.75); v != want {
				t.Errorf("%v: q4 row %d = %v, want %v", a, r, v, want)
			}
		}
		restore()
	}
}

// TestQuantQLinearArch checks that QLinear gives the generic kernels' y (within
// float reordering) with every supported kernel family, for both formats,
// several batch sizes and beta.
func TestQuantQLinearArch(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	for _, shape := range []struct{ rows, cols, n int }{{70, 200, 1}, {33, 64, 3}, {130, 1000, 2}, {5, 2816, 1}} {
		wf := make([]float32, shape.rows*shape.cols)
		for i := range wf {
			wf[i] = rng.Float32() - 0.5
		}
		x := make([]float32, shape.n*shape.cols)
		for i := range x {
			x[i] = 2*rng.Float32() - 1
		}
		y0 := make([]float32, shape.n*shape.rows)
		for i := range y0 {
			y0[i] = rng.Float32()
		}
		for _, f := range []QFormat{QInt8, QQ4} {
			q, err := Quantize(&Mat{Rows: shape.rows, Cols: shape.cols, F32: wf}, f)
			if err != nil {
				t.Fatal(err)
			}
			// Tolerance: 1e-5 of sum |w| |x| over the dequantized weights,
			// plus the beta term's rounding.
			deq := q.Dequantize()
			tol := make([]float64, shape.n*shape.rows)
			for i := 0; i < shape.n; i++ {
				for r := 0; r < shape.rows; r++ {
					var s float64
					for k := 0; k < shape.cols; k++ {
						s += math.Abs(float64(deq[r*shape.cols+k]) * float64(x[i*shape.cols+k]))
					}
					tol[i*shape.rows+r] = 2e-5*s + 1e-6
				}
			}
			for _, beta := range []float32{0, 0.5} {
				ref := append([]float32(nil), y0...)
				restore := forceQuantArch(qArchGeneric)
				QLinear(ref, x, shape.n, q, beta)
				restore()
				for _, a := range quantArchOrders() {
					got := append([]float32(nil), y0...)
					restore := a.force()
					QLinear(got, x, shape.n, q, beta)
					restore()
					for i := range got {
						if d := math.Abs(float64(got[i] - ref[i])); !(d <= tol[i]) {
							t.Fatalf("%v %v %dx%d n=%d beta=%v: y[%d] = %v, generic %v (tol %g)",
								a, f, shape.rows, shape.cols, shape.n, beta, i, got[i], ref[i], tol[i])
						}
					}
				}
			}
		}
	}
}

// Benchmarks: one decode-time GEMV of the 2816x1024 expert matrix, as
// BenchmarkGemvTBF16, with the weight bytes streamed per call as SetBytes
// (so MB/s is weight bandwidth) and GB/s reported too. The kernel calls go
// through QLinear (all threads, activation quantization included).

const qBenchRows, qBenchCols = 2816, 1024

// qBenchInputs is the benchmarks' qBenchRows x qBenchCols matrix in format
// f and one activation row, uniform in [-0.5, 0.5).
func qBenchInputs(b *testing.B, f QFormat, seed uint64) (*QMat, []float32) {
	rng := rand.New(rand.NewPCG(1, seed))
	wf := make([]float32, qBenchRows*qBenchCols)
	for i := range wf {
		wf[i] = rng.Float32() - 0.5
	}
	q, err := Quantize(&Mat{Rows: qBenchRows, Cols: qBenchCols, F32: wf}, f)
	if err != nil {
		b.Fatal(err)
	}
	x := make([]float32, qBenchCols)
	for i := range x {
		x[i] = rng.Float32() - 0.5
	}
	return q, x
}

func benchQLinear(b *testing.B, f QFormat) {
	q, x := qBenchInputs(b, f, 1)
	y := make([]float32, qBenchRows)
	for _, a := range supportedQuantArchs() {
		b.Run(a.String(), func(b *testing.B) {
			defer forceQuantArch(a)()
			b.SetBytes(q.Bytes())
			QLinear(y, x, 1, q, 0)
			b.ResetTimer()
			for b.Loop() {
				QLinear(y, x, 1, q, 0)
			}
			b.ReportMetric(float64(q.Bytes())*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}

func BenchmarkQ8Dots(b *testing.B) { benchQLinear(b, QInt8) }
func BenchmarkQ4Dots(b *testing.B) { benchQLinear(b, QQ4) }

// BenchmarkQ8DotsKernel / BenchmarkQ4DotsKernel time the kernels alone on
// one thread over the same matrix in qRowsPerCall-row calls.
func benchQKernel(b *testing.B, f QFormat) {
	q, x := qBenchInputs(b, f, 2)
	g := q.Groups()
	var acts QActs
	if f == QInt8 {
		quantizeActs(&acts, x, g, g*QGroup)
	} else {
		quantizeActs(&acts, x, g, QGroup)
	}
	out := make([]float32, qRowsPerCall)
	iout := make([]int32, qRowsPerCall)
	for _, a := range supportedQuantArchs() {
		b.Run(a.String(), func(b *testing.B) {
			defer forceQuantArch(a)()
			b.SetBytes(q.Bytes())
			for b.Loop() {
				for r0 := 0; r0 < q.Rows; r0 += qRowsPerCall {
					rows := min(qRowsPerCall, q.Rows-r0)
					data := q.Data[r0*q.Stride : (r0+rows)*q.Stride]
					if f == QInt8 {
						q8Dots(rows, g, data, q.Stride, acts.Q, q.RowSum[r0:r0+rows], iout[:rows])
					} else {
						q4Dots(rows, g, data, q.Stride, q.F16[r0*g:(r0+rows)*g], acts.Q, acts.Scale, acts.Sum, out[:rows])
					}
				}
			}
			b.ReportMetric(float64(q.Bytes())*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
		})
	}
}

func BenchmarkQ8DotsKernel(b *testing.B) { benchQKernel(b, QInt8) }
func BenchmarkQ4DotsKernel(b *testing.B) { benchQKernel(b, QQ4) }

// BenchmarkGemvTBF16 is the bf16 baseline on the same shape: GemvTBF16 of
// 2816x1024 bfloat16 weights, weight GB/s.
func BenchmarkGemvTBF16(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	wf := make([]float32, qBenchRows*qBenchCols)
	for i := range wf {
		wf[i] = rng.Float32() - 0.5
	}
	w := make([]uint16, len(wf))
	F32ToBF16(w, wf)
	x := make([]float32, qBenchCols)
	for i := range x {
		x[i] = rng.Float32() - 0.5
	}
	y := make([]float32, qBenchRows)
	bytes := int64(2 * len(w))
	b.SetBytes(bytes)
	for b.Loop() {
		GemvTBF16(qBenchRows, qBenchCols, w, qBenchCols, x, y, 0)
	}
	b.ReportMetric(float64(bytes)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
}

// TestQ4DotsAvx2OrdersAgreeBitwise: the AVX2 4-bit kernels give every row
// the same float sum in both orders (q4DotsSeqAvx2 runs every row through
// the loop q4DotsAvx2 runs its last 1-3 rows through, which sums as its
// four-row loop does), so the order never changes a 4-bit result on AVX2.
func TestQ4DotsAvx2OrdersAgreeBitwise(t *testing.T) {
	if !quantArchSupported(qArchAVX2) {
		t.Skip("no AVX2 on this CPU")
	}
	for _, c := range qDotsCases() {
		var got [2][]float32
		for i, seq := range []bool{false, true} {
			restore := quantArchOrder{qArchAVX2, seq}.force()
			got[i] = make([]float32, c.rows)
			q4Dots(c.rows, c.groups, c.w4, c.stride4, c.d, c.xq, c.xs, c.xsum, got[i])
			restore()
		}
		for r := range got[0] {
			if math.Float32bits(got[0][r]) != math.Float32bits(got[1][r]) {
				t.Fatalf("%s: row %d: interleaved %v, sequential %v", c.name, r, got[0][r], got[1][r])
			}
		}
	}
}
