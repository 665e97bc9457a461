package tensor

import "fmt"

// Mat is a row-major weight matrix of Rows x Cols held as float32 (F32
// non-nil), as bfloat16 bits (BF16 non-nil) or quantized (Q non-nil),
// exactly one of the three. Quantized matrices serve inference only (Linear,
// Row, ToF32); training needs float32.
// Hugging Face linear weights are [out, in]: Rows = out features, Cols = in.
// Keeping bf16 weights as bf16 halves the bytes a decode step streams; they
// are widened to float32 inside the kernels, which is exact.
type Mat struct {
	Rows, Cols int
	F32        []float32 // [Rows*Cols] or nil
	BF16       []uint16  // [Rows*Cols] or nil
	Q          *QMat     // quantized codes and scales, or nil
}

// Bytes is the memory the matrix data occupies.
func (m *Mat) Bytes() int64 {
	if m.Q != nil {
		return m.Q.Bytes()
	}
	if m.BF16 != nil {
		return int64(len(m.BF16)) * 2
	}
	return int64(len(m.F32)) * 4
}

// Empty reports whether the matrix holds no data (an absent weight).
func (m *Mat) Empty() bool { return m.F32 == nil && m.BF16 == nil && m.Q == nil }

// Row copies row r, widened to float32, into dst [Cols].
func (m *Mat) Row(dst []float32, r int) {
	if m.Q != nil {
		m.Q.DequantizeRow(dst, r)
		return
	}
	if m.BF16 != nil {
		BF16ToF32(dst[:m.Cols], m.BF16[r*m.Cols:(r+1)*m.Cols])
		return
	}
	copy(dst[:m.Cols], m.F32[r*m.Cols:(r+1)*m.Cols])
}

// ToF32 returns the matrix as float32 (the F32 slice itself, or a widened copy).
func (m *Mat) ToF32() []float32 {
	if m.Q != nil {
		return m.Q.Dequantize()
	}
	if m.BF16 == nil {
		return m.F32
	}
	out := make([]float32, len(m.BF16))
	BF16ToF32(out, m.BF16)
	return out
}

// Linear computes y = x W^T (+ beta y): x [n, W.Cols], y [n, W.Rows]. It is
// the forward of a bias-free Hugging Face nn.Linear with weight W (see
// QLinear for a quantized W).
func Linear(y, x []float32, n int, w *Mat, beta float32) {
	linear(CurrentCompute(), y, x, n, w, beta)
}

// LinearExact is Linear with float32 products whatever the compute mode
// (see Compute): for small products whose result decides something
// discrete, such as a MoE router's logits, where a bf16 rounding that
// flips an expert choice costs more than the product's time.
func LinearExact(y, x []float32, n int, w *Mat, beta float32) {
	linear(ComputeExact, y, x, n, w, beta)
}

func linear(cm Compute, y, x []float32, n int, w *Mat, beta float32) {
	if w.Empty() {
		panic("tensor: Linear with an empty weight")
	}
	if len(x) < n*w.Cols || len(y) < n*w.Rows {
		panic(fmt.Sprintf("tensor: Linear x %d / y %d values too small for n=%d, W %dx%d", len(x), len(y), n, w.Rows, w.Cols))
	}
	if w.Q != nil {
		QLinear(y, x, n, w.Q, beta)
		return
	}
	if w.BF16 != nil {
		checkGemm(false, true, n, w.Rows, w.Cols, len(x), w.Cols, len(w.BF16), w.Cols, len(y), w.Rows)
		gemm(cm, false, true, n, w.Rows, w.Cols, 1, x, w.Cols, nil, w.BF16, w.Cols, beta, y, w.Rows)
		return
	}
	checkGemm(false, true, n, w.Rows, w.Cols, len(x), w.Cols, len(w.F32), w.Cols, len(y), w.Rows)
	gemm(cm, false, true, n, w.Rows, w.Cols, 1, x, w.Cols, w.F32, nil, w.Cols, beta, y, w.Rows)
}

// AddBias adds b [d] to each of the n rows of x [n, d].
func AddBias(x, b []float32, n int) {
	d := len(b)
	for r := 0; r < n; r++ {
		Add(x[r*d:(r+1)*d], b)
	}
}
