package tensor

import (
	"math"
	"sync"
)

// RMSNorm computes out = w * x / sqrt(mean(x^2) + eps) over one row.
// x, out: [D]; w: [D]. out may alias x. The sum of squares is accumulated in
// float64 so long rows lose nothing to cancellation.
func RMSNorm(out, x, w []float32, eps float32) {
	n := len(x)
	out, w = out[:n], w[:n]
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := float32(1 / math.Sqrt(ss/float64(n)+float64(eps)))
	for i, v := range x {
		out[i] = w[i] * (v * inv)
	}
}

// RMSNormRows applies RMSNorm to each of rows rows of width d.
// x, out: [rows, d]; w: [d]. out may alias x.
func RMSNormRows(out, x, w []float32, rows, d int, eps float32) {
	t := normPool.Get().(*normRows)
	*t = normRows{out: out, x: x, w: w, d: d, eps: eps}
	ParallelRange(rows, max(1, 4096/max(d, 1)), t)
	*t = normRows{}
	normPool.Put(t)
}

// normRows is one RMSNormRows call, pooled so that it allocates nothing.
type normRows struct {
	out, x, w []float32
	d         int
	eps       float32
}

var normPool = sync.Pool{New: func() any { return new(normRows) }}

func (t *normRows) Range(lo, hi int) {
	d := t.d
	for r := lo; r < hi; r++ {
		RMSNorm(t.out[r*d:(r+1)*d], t.x[r*d:(r+1)*d], t.w, t.eps)
	}
}

// RMSNormRef is the reference for RMSNorm, all in float64.
func RMSNormRef(out, x, w []float32, eps float32) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := 1 / math.Sqrt(ss/float64(len(x))+float64(eps))
	for i, v := range x {
		out[i] = float32(float64(w[i]) * float64(v) * inv)
	}
}

// Softmax replaces x with softmax(x) in place (max-subtracted, so large
// logits do not overflow). Entries equal to -Inf get probability 0; a row of
// all -Inf becomes all zeros.
func Softmax(x []float32) {
	if len(x) == 0 {
		return
	}
	mx := float32(math.Inf(-1))
	for _, v := range x {
		if v > mx {
			mx = v
		}
	}
	if math.IsInf(float64(mx), -1) {
		clear(x)
		return
	}
	sum, ok := expShiftVec(x, mx) // float64 sum: thousands of terms lose nothing
	if !ok {
		for i, v := range x {
			e := Exp(v - mx)
			x[i] = e
			sum += float64(e)
		}
	}
	inv := float32(1 / sum)
	for i := range x {
		x[i] *= inv
	}
}

// SoftmaxRef is the reference for Softmax, in float64.
func SoftmaxRef(x []float32) {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	e := make([]float64, len(x))
	for i, v := range x {
		if math.IsInf(mx, -1) {
			continue
		}
		e[i] = math.Exp(float64(v) - mx)
		sum += e[i]
	}
	for i := range x {
		if sum == 0 {
			x[i] = 0
		} else {
			x[i] = float32(e[i] / sum)
		}
	}
}

// LogSumExp returns log(sum_i e^x[i]) in float64 (max-shifted: no
// overflow), the normaliser of a softmax or cross-entropy over logits x;
// -Inf for an empty x or all -Inf.
func LogSumExp(x []float32) float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = math.Max(mx, float64(v))
	}
	if math.IsInf(mx, -1) {
		return mx
	}
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v) - mx)
	}
	return mx + math.Log(s)
}

// Exp is float32 e^x, math.Exp rounded (the portable path; Softmax and
// SwiGLU use a vector e^x within 2 ulp on AVX-512 CPUs).
func Exp(x float32) float32 { return float32(math.Exp(float64(x))) }

// Sigmoid returns 1/(1+e^-x).
func Sigmoid(x float32) float32 { return float32(1 / (1 + math.Exp(-float64(x)))) }

// SiLU returns x * sigmoid(x).
func SiLU(x float32) float32 { return x * Sigmoid(x) }

// SwiGLU computes out[i] = silu(gate[i]) * up[i]. out may alias gate or up.
//
// On AVX-512 CPUs a vector kernel computes it with a float32 e^x within 2
// ulp (the portable loop uses float64 math.Exp); long vectors (an
// expert's whole batch) are split over Threads().
func SwiGLU(out, gate, up []float32) {
	n := len(gate)
	out, up = out[:n], up[:n]
	if n >= swigluParallelMin && Threads() > 1 && swigluVecOK() {
		t := swigluPool.Get().(*swigluTask)
		*t = swigluTask{out: out, gate: gate, up: up}
		ParallelRange(ceilDiv(n, swigluGrain), 1, t)
		*t = swigluTask{}
		swigluPool.Put(t)
		return
	}
	if swigluVec(out, gate, up) {
		return
	}
	for i, g := range gate {
		out[i] = SiLU(g) * up[i]
	}
}

// swigluParallelMin is the length from which SwiGLU splits its work (a
// fork-join costs ~3 us, a few thousand elements' work), in blocks of
// swigluGrain.
const (
	swigluParallelMin = 1 << 14
	swigluGrain       = 1 << 12
)

// swigluTask is one parallel SwiGLU; pooled so that it allocates nothing.
type swigluTask struct{ out, gate, up []float32 }

var swigluPool = sync.Pool{New: func() any { return new(swigluTask) }}

func (t *swigluTask) Range(lo, hi int) {
	a, b := lo*swigluGrain, min(hi*swigluGrain, len(t.gate))
	swigluVec(t.out[a:b], t.gate[a:b], t.up[a:b])
}

// SwiGLURef is the reference for SwiGLU, in float64.
func SwiGLURef(out, gate, up []float32) {
	for i, g := range gate {
		gd := float64(g)
		out[i] = float32(gd / (1 + math.Exp(-gd)) * float64(up[i]))
	}
}

// Add computes dst[i] += src[i].
func Add(dst, src []float32) {
	src = src[:len(dst)]
	for i, v := range src {
		dst[i] += v
	}
}

// Axpy computes y[i] += a * x[i].
func Axpy(a float32, x, y []float32) {
	x = x[:len(y)]
	for i, v := range x {
		y[i] += a * v
	}
}

// Scale computes x[i] *= a.
func Scale(a float32, x []float32) {
	for i := range x {
		x[i] *= a
	}
}

// Dot returns sum a[i]*b[i] with four independent accumulators.
func Dot(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= n; i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// TopK writes into idx the indices of the k largest values of x, largest
// first; ties go to the lower index (so results are deterministic). NaN is
// treated as smaller than every number. idx: [k], k <= len(x).
func TopK(idx []int32, x []float32, k int) {
	idx = idx[:k]
	for j := 0; j < k; j++ {
		best := int32(-1)
		for i, v := range x {
			if taken(idx[:j], int32(i)) {
				continue
			}
			if best < 0 || greater(v, x[best]) {
				best = int32(i)
			}
		}
		idx[j] = best
	}
}

// TopKRef is the reference for TopK: a stable sort of all indices.
func TopKRef(idx []int32, x []float32, k int) {
	all := make([]int32, len(x))
	for i := range all {
		all[i] = int32(i)
	}
	// insertion sort: stable, descending by value
	for i := 1; i < len(all); i++ {
		for j := i; j > 0 && greater(x[all[j]], x[all[j-1]]); j-- {
			all[j], all[j-1] = all[j-1], all[j]
		}
	}
	copy(idx[:k], all[:k])
}

func greater(a, b float32) bool {
	if a != a { // NaN never wins
		return false
	}
	if b != b {
		return true
	}
	return a > b
}

func taken(idx []int32, i int32) bool {
	for _, v := range idx {
		if v == i {
			return true
		}
	}
	return false
}
