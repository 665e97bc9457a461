package tensor

import (
	"fmt"
	"math"
	"sync"
)

// QFormat names a quantized weight format for QMat.
type QFormat uint8

const (
	// QNone is no quantization (a plain Mat).
	QNone QFormat = iota
	// QInt8 holds each weight as int8 with one float32 scale per output row
	// (per output channel): w[r][k] ~= Scale[r] * q[r][k], q in [-127, 127],
	// Scale[r] = max_k |w[r][k]| / 127. 8 bits per weight plus 64 per row
	// (the scale and the codes' sum). Activations are quantized per token
	// (one int8 scale per row of x, as vLLM's W8A8 int8), so a product is one
	// exact int32 dot product per output: at most QInt8MaxCols inputs.
	QInt8
	// QQ4 holds each weight as 4 bits in groups of QGroup consecutive inputs
	// of a row, one IEEE binary16 scale per group: w ~= d * (q - 8), q in
	// [0, 15], with d chosen so the group's largest-magnitude weight maps to
	// -8 exactly (llama.cpp's Q4_0 rule, with a 64-wide group). 4.25 bits
	// per weight.
	QQ4
)

// QGroup is the block width along the input dimension shared by every
// quantized kernel: QQ4's scale group, and the block over which an
// activation row shares one int8 scale for QQ4. Rows are padded to a
// multiple of it.
const QGroup = 64

// QInt8MaxCols is the most inputs a QInt8 matrix may have: its exact int32
// dot products must not overflow (cols * 127 * 127 < 2^31).
const QInt8MaxCols = 1 << 17

// String is the name used on the command line (--quantize).
func (f QFormat) String() string {
	switch f {
	case QNone:
		return "none"
	case QInt8:
		return "int8"
	case QQ4:
		return "q4"
	}
	return fmt.Sprintf("QFormat(%d)", uint8(f))
}

// ParseQFormat parses a --quantize value: "" or "none", "int8", "q4".
func ParseQFormat(s string) (QFormat, error) {
	switch s {
	case "", "none":
		return QNone, nil
	case "int8":
		return QInt8, nil
	case "q4":
		return QQ4, nil
	}
	return QNone, fmt.Errorf("unknown quantization %q (want int8 or q4)", s)
}

// QMat is a quantized weight matrix of Rows x Cols ([out, in], as Mat).
// Row r's codes are Data[r*Stride : (r+1)*Stride]; the padding past Cols
// encodes zero weights.
//
//	QInt8: Stride = Cols rounded up to QGroup bytes, one int8 per weight;
//	       Scale [Rows] float32; RowSum [Rows] the sum of each row's codes.
//	QQ4:   Stride = Cols rounded up to QGroup, halved: in group g of a row
//	       (32 bytes), byte j holds input 64g+j in its low nibble and input
//	       64g+32+j in its high nibble; F16 [Rows * Groups] binary16 scales,
//	       row-major.
type QMat struct {
	Format     QFormat
	Rows, Cols int
	Stride     int       // bytes per row of Data
	Data       []byte    // [Rows*Stride]
	Scale      []float32 // QInt8: [Rows]
	RowSum     []int32   // QInt8: [Rows]
	F16        []uint16  // QQ4: [Rows*Groups()]
}

// Groups is the number of QGroup-wide blocks per row (Cols rounded up).
func (q *QMat) Groups() int { return (q.Cols + QGroup - 1) / QGroup }

// Bytes is the memory the codes and scales occupy.
func (q *QMat) Bytes() int64 {
	return int64(len(q.Data)) + 4*int64(len(q.Scale)) + 4*int64(len(q.RowSum)) + 2*int64(len(q.F16))
}

// Quantize returns m in format f. Every weight must be finite.
func Quantize(m *Mat, f QFormat) (*QMat, error) {
	if m.Empty() {
		return nil, fmt.Errorf("tensor: quantize an empty matrix")
	}
	if m.Q != nil {
		return nil, fmt.Errorf("tensor: matrix is already quantized (%v)", m.Q.Format)
	}
	g := (m.Cols + QGroup - 1) / QGroup
	q := &QMat{Format: f, Rows: m.Rows, Cols: m.Cols}
	switch f {
	case QInt8:
		if m.Cols > QInt8MaxCols {
			return nil, fmt.Errorf("tensor: int8 quantization takes at most %d inputs, the matrix has %d", QInt8MaxCols, m.Cols)
		}
		q.Stride = g * QGroup
		q.Scale = make([]float32, m.Rows)
		q.RowSum = make([]int32, m.Rows)
	case QQ4:
		q.Stride = g * QGroup / 2
		q.F16 = make([]uint16, m.Rows*g)
	default:
		return nil, fmt.Errorf("tensor: cannot quantize to %v", f)
	}
	q.Data = make([]byte, m.Rows*q.Stride)
	row := make([]float32, g*QGroup)
	for r := 0; r < m.Rows; r++ {
		m.Row(row, r)
		clear(row[m.Cols:])
		for k, v := range row[:m.Cols] {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("tensor: quantize: weight [%d, %d] is %v", r, k, v)
			}
		}
		data := q.Data[r*q.Stride : (r+1)*q.Stride]
		if f == QInt8 {
			q.Scale[r] = quantRowInt8(data, row)
			for _, c := range data {
				q.RowSum[r] += int32(int8(c))
			}
		} else {
			quantRowQ4(data, q.F16[r*g:(r+1)*g], row)
		}
	}
	return q, nil
}

// quantRowInt8 writes round(w/s) for one padded row and returns s.
func quantRowInt8(dst []byte, w []float32) float32 {
	var amax float32
	for _, v := range w {
		amax = max(amax, abs32(v))
	}
	if amax == 0 {
		clear(dst)
		return 0
	}
	s := amax / 127
	inv := 1 / s
	for k, v := range w {
		dst[k] = byte(int8(clampRound(v*inv, 127)))
	}
	return s
}

// quantRowQ4 writes one padded row in QQ4 layout: for each group the
// binary16 scale d = m / -8 (m the group's weight of largest magnitude,
// rounded to binary16) and codes q = clamp(round(w/d) + 8, 0, 15).
func quantRowQ4(dst []byte, d []uint16, w []float32) {
	for g := range d {
		blk := w[g*QGroup : (g+1)*QGroup]
		var m float32
		for _, v := range blk {
			if abs32(v) > abs32(m) {
				m = v
			}
		}
		d[g] = F32ToF16One(m / -8)
		ds := F16ToF32One(d[g])
		var inv float32
		if ds != 0 {
			inv = 1 / ds
		}
		out := dst[g*QGroup/2 : (g+1)*QGroup/2]
		for j := range out {
			lo := clampRound(blk[j]*inv, 8) + 8
			hi := clampRound(blk[j+QGroup/2]*inv, 8) + 8
			out[j] = byte(min(lo, 15)) | byte(min(hi, 15))<<4
		}
	}
}

// clampRound rounds v half away from zero and clamps it to [-lim, lim].
func clampRound(v float32, lim int32) int32 {
	r := int32(math.Round(float64(v)))
	return max(-lim, min(lim, r))
}

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ (1 << 31)) }

// Dequantize returns the float32 weights q encodes, [Rows*Cols].
func (q *QMat) Dequantize() []float32 {
	out := make([]float32, q.Rows*q.Cols)
	for r := 0; r < q.Rows; r++ {
		q.DequantizeRow(out[r*q.Cols:(r+1)*q.Cols], r)
	}
	return out
}

// DequantizeRow writes row r's weights into dst [Cols].
func (q *QMat) DequantizeRow(dst []float32, r int) {
	data := q.Data[r*q.Stride : (r+1)*q.Stride]
	dst = dst[:q.Cols]
	switch q.Format {
	case QInt8:
		s := q.Scale[r]
		for k := range dst {
			dst[k] = s * float32(int8(data[k]))
		}
	case QQ4:
		g := q.Groups()
		for k := range dst {
			b := data[k/QGroup*QGroup/2+k%(QGroup/2)]
			c := b & 15
			if k%QGroup >= QGroup/2 {
				c = b >> 4
			}
			dst[k] = F16ToF32One(q.F16[r*g+k/QGroup]) * float32(int32(c)-8)
		}
	}
}

// QActs is one activation row quantized for the integer kernels: int8
// codes padded with zeros to the weights' Stride, in blocks of `block`
// inputs (QGroup for QQ4, the whole row for QInt8), each block with its
// own float32 scale (x[k] ~= Scale[k/block] * Q[k]) and the sum of its
// codes (QQ4's zero point correction).
type QActs struct {
	Q     []int8    // [Groups*QGroup]
	Scale []float32 // [blocks]
	Sum   []int32   // [blocks]
}

// quantizeActs fills a with x [cols] quantized per block of `block`
// inputs (a multiple of QGroup): scale = max|x|/127 over the block, code =
// round(x/scale).
func quantizeActs(a *QActs, x []float32, groups, block int) {
	blocks := (groups*QGroup + block - 1) / block
	a.Q = grow(a.Q, groups*QGroup)
	a.Scale = grow(a.Scale, blocks)
	a.Sum = grow(a.Sum, blocks)
	for g := 0; g < blocks; g++ {
		lo := g * block
		hi := min(lo+block, len(x))
		q := a.Q[lo:min(lo+block, groups*QGroup)]
		var amax float32
		if lo < hi {
			for _, v := range x[lo:hi] {
				amax = max(amax, abs32(v))
			}
		}
		if amax == 0 || !(amax < math.MaxFloat32) { // zero block, or non-finite
			clear(q)
			a.Scale[g], a.Sum[g] = 0, 0
			if amax != 0 {
				a.Scale[g] = float32(math.NaN()) // a NaN input poisons the output, as a float kernel's would
			}
			continue
		}
		s := amax / 127
		inv := 1 / s
		var sum int32
		for j := range q {
			var c int32
			if lo+j < hi {
				c = clampRound(x[lo+j]*inv, 127)
			}
			q[j] = int8(c)
			sum += c
		}
		a.Scale[g], a.Sum[g] = s, sum
	}
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// qRowsPerCall is how many weight rows one kernel call covers: the rows'
// codes (up to 32 x Stride bytes) stay in L1/L2 while every activation row
// of the call passes over them.
const qRowsPerCall = 32

// QLinear computes y = x W^T (+ beta y) for a quantized W: x [n, W.Cols],
// y [n, W.Rows], as Linear. Each activation row is quantized to int8 (per
// token for QInt8, per QGroup block for QQ4) and multiplied with integer
// dot products (AVX-512 VNNI or AVX2 where present); the result for a row
// does not depend on n or on the other rows (batch invariant; for QInt8
// it is also the same bits on every kernel family), and it costs about 1
// (QInt8) or 0.53 (QQ4) bytes of weight traffic per weight against bf16's 2.
func QLinear(y, x []float32, n int, w *QMat, beta float32) {
	if len(x) < n*w.Cols || len(y) < n*w.Rows {
		panic(fmt.Sprintf("tensor: QLinear x %d / y %d values too small for n=%d, W %dx%d", len(x), len(y), n, w.Rows, w.Cols))
	}
	if n == 0 {
		return
	}
	t := qPool.Get().(*qTask)
	groups := w.Groups()
	block := QGroup
	if w.Format == QInt8 {
		block = groups * QGroup // per token
	}
	t.acts = grow(t.acts, n)
	for i := 0; i < n; i++ {
		quantizeActs(&t.acts[i], x[i*w.Cols:(i+1)*w.Cols], groups, block)
	}
	t.w, t.y, t.n, t.beta = w, y, n, beta
	// Each goroutine streams at least ~256 KB of codes (per activation
	// row): less is not worth waking a worker for.
	grain := max(qRowsPerCall, (256<<10)/max(1, w.Stride*n))
	ParallelRange(w.Rows, grain, t)
	t.w, t.y = nil, nil
	qPool.Put(t)
}

// qTask is one QLinear call, the ParallelRange body over weight rows.
type qTask struct {
	w    *QMat
	acts []QActs // [n]
	y    []float32
	n    int
	beta float32
}

var qPool = sync.Pool{New: func() any { return new(qTask) }}

// Range computes y[:, lo:hi] in blocks of qRowsPerCall weight rows.
func (t *qTask) Range(lo, hi int) {
	var out [qRowsPerCall]float32
	var iout [qRowsPerCall]int32
	w := t.w
	g := w.Groups()
	for r0 := lo; r0 < hi; r0 += qRowsPerCall {
		rows := min(qRowsPerCall, hi-r0)
		data := w.Data[r0*w.Stride : (r0+rows)*w.Stride]
		for i := 0; i < t.n; i++ {
			a := &t.acts[i]
			if w.Format == QInt8 {
				q8Dots(rows, g, data, w.Stride, a.Q, w.RowSum[r0:r0+rows], iout[:rows])
				xs := a.Scale[0]
				for j, s := range w.Scale[r0 : r0+rows] {
					out[j] = xs * s * float32(iout[j])
				}
			} else {
				q4Dots(rows, g, data, w.Stride, w.F16[r0*g:(r0+rows)*g], a.Q, a.Scale, a.Sum, out[:rows])
			}
			yr := t.y[i*w.Rows+r0 : i*w.Rows+r0+rows]
			for j, v := range out[:rows] {
				if t.beta == 0 {
					yr[j] = v
				} else {
					yr[j] = v + t.beta*yr[j]
				}
			}
		}
	}
}

// q8DotsRef is the reference for the int8 kernels: for r < rows, the
// exact integer dot product
//
//	out[r] = sum_{k<groups*QGroup} int8(w[r*stride+k]) * xq[k]
func q8DotsRef(rows, groups int, w []byte, stride int, xq []int8, out []int32) {
	for r := 0; r < rows; r++ {
		wr := w[r*stride : r*stride+groups*QGroup]
		var s int32
		for k, c := range wr {
			s += int32(int8(c)) * int32(xq[k])
		}
		out[r] = s
	}
}

// q4DotsRef is the reference for the 4-bit kernels: for r < rows, with
// c(r, k) the 4-bit code of input k of row r (QMat's QQ4 layout) and d the
// row's binary16 group scales d[r*groups+b],
//
//	out[r] = sum_b (f16(d[r*groups+b]) * xs[b]) * float32(sum_{j<QGroup} c(r, QGroup*b+j)*xq[QGroup*b+j] - 8*xsum[b])
//
// (the codes' zero point 8 is taken out through the block sums xsum).
func q4DotsRef(rows, groups int, w []byte, stride int, d []uint16, xq []int8, xs []float32, xsum []int32, out []float32) {
	for r := 0; r < rows; r++ {
		wr := w[r*stride:]
		var acc float32
		for b := 0; b < groups; b++ {
			var s int32
			blk := wr[b*QGroup/2 : (b+1)*QGroup/2]
			x := xq[b*QGroup : (b+1)*QGroup]
			for j, c := range blk {
				s += int32(c&15)*int32(x[j]) + int32(c>>4)*int32(x[j+QGroup/2])
			}
			acc += F16ToF32One(d[r*groups+b]) * xs[b] * float32(s-8*xsum[b])
		}
		out[r] = acc
	}
}

// F32ToF16One rounds one float32 to IEEE binary16 bits, nearest even;
// values beyond binary16's range become infinities, NaN stays NaN.
func F32ToF16One(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	switch {
	case exp == 0xff: // Inf or NaN
		if man != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp-127 > 15: // overflow
		return sign | 0x7c00
	case exp-127 >= -14: // normal
		h := uint32(exp-127+15)<<10 | man>>13
		rest := man & 0x1fff
		if rest > 0x1000 || rest == 0x1000 && h&1 == 1 {
			h++ // may carry into the exponent, up to Inf: correct
		}
		return sign | uint16(h)
	case exp-127 >= -25: // subnormal in binary16
		m := man | 0x800000
		shift := uint32(-14-(exp-127)) + 13
		h := m >> shift
		rest := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rest > half || rest == half && h&1 == 1 {
			h++
		}
		return sign | uint16(h)
	}
	return sign
}

// QBytes is the memory a Rows x Cols matrix takes in format f (QNone:
// float32; use 2*rows*cols for bf16), as QMat.Bytes reports once quantized.
func QBytes(f QFormat, rows, cols int) int64 {
	g := int64((cols + QGroup - 1) / QGroup)
	r := int64(rows)
	switch f {
	case QInt8:
		return r*g*QGroup + 8*r
	case QQ4:
		return r*g*QGroup/2 + 2*r*g
	}
	return 4 * r * int64(cols)
}
