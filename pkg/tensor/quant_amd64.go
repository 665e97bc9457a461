//go:build amd64

package tensor

import (
	"sync/atomic"

	"golang.org/x/sys/cpu"
)

// Assembly in quant_amd64.s. Each computes, for r < rows, what q8DotsRef /
// q4DotsRef do (q8: exactly; q4: the integer block sums exactly, the float
// sums in another order): w points at row 0's codes, rows are stride bytes
// apart; xq holds groups*QGroup activation codes, xs (and xsum) groups
// values; wsum holds the rows' code sums (QMat.RowSum; the AVX-512 int8
// kernel offsets x by 128 and takes 128*wsum back out); d holds the rows'
// binary16 scales, groups per row; out[r] gets row r's sum. rows >= 1,
// groups >= 1; the callers check the slices.

//go:noescape
func q8DotsAvx512(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)

// q8DotsSeqAvx512 computes what q8DotsAvx512 does, reading the rows one
// after the other, four 64-byte groups a step (see gemvSequential).
//
//go:noescape
func q8DotsSeqAvx512(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)

// q4DotsSeqAvx512 computes what q4DotsAvx512 does, one row after the
// other (see gemvSequential).
//
//go:noescape
func q4DotsSeqAvx512(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)

//go:noescape
func q4DotsAvx512(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)

//go:noescape
func q8DotsAvx2(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)

// q8DotsSeqAvx2 computes what q8DotsAvx2 does, one row after the other,
// two 64-byte groups a step (see gemvSequential).
//
//go:noescape
func q8DotsSeqAvx2(rows, groups int, w *byte, stride int, xq *int8, wsum *int32, out *int32)

// q4DotsSeqAvx2 computes what q4DotsAvx2 does, bit for bit, one row
// after the other (see gemvSequential).
//
//go:noescape
func q4DotsSeqAvx2(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)

//go:noescape
func q4DotsAvx2(rows, groups int, w *byte, stride int, d *uint16, xq *int8, xs *float32, xsum *int32, out *float32)

// quantArchT names a family of quantized dot-product kernels.
type quantArchT int32

const (
	qArchGeneric quantArchT = iota
	qArchAVX2
	qArchAVX512VNNI
	numQuantArchs
)

func (a quantArchT) String() string {
	switch a {
	case qArchGeneric:
		return "generic"
	case qArchAVX2:
		return "avx2"
	case qArchAVX512VNNI:
		return "avx512-vnni"
	}
	return "quantArch(?)"
}

// quantArchSupported reports whether this CPU (and OS) can run a's kernels.
func quantArchSupported(a quantArchT) bool {
	switch a {
	case qArchGeneric:
		return true
	case qArchAVX2:
		return cpu.X86.HasAVX2 && cpu.X86.HasFMA && cpu.X86.HasF16C
	case qArchAVX512VNNI:
		// x/sys/cpu only reports AVX-512 when the OS saves the opmask and
		// ZMM state.
		return cpu.X86.HasAVX512F && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512VL &&
			cpu.X86.HasAVX512VNNI && cpu.X86.HasF16C
	}
	return false
}

// supportedQuantArchs lists the kernel families this CPU can run, generic first.
func supportedQuantArchs() []quantArchT {
	var out []quantArchT
	for a := qArchGeneric; a < numQuantArchs; a++ {
		if quantArchSupported(a) {
			out = append(out, a)
		}
	}
	return out
}

// quantArch is the kernel family q8Dots and q4Dots use: the best the CPU
// supports, chosen once at init; tests override it through forceQuantArch.
var quantArch atomic.Int32

func init() {
	best := qArchGeneric
	for a := qArchGeneric; a < numQuantArchs; a++ {
		if quantArchSupported(a) {
			best = a
		}
	}
	quantArch.Store(int32(best))
}

// forceQuantArch makes q8Dots and q4Dots (and so QLinear) use a's kernels
// until restore is called. For tests and benchmarks; a must be supported.
func forceQuantArch(a quantArchT) (restore func()) {
	if !quantArchSupported(a) {
		panic("tensor: forceQuantArch: " + a.String() + " not supported on this CPU")
	}
	old := quantArch.Swap(int32(a))
	return func() { quantArch.Store(old) }
}

// QuantKernel names the kernels QLinear uses on this CPU.
func QuantKernel() string { return quantArchT(quantArch.Load()).String() }

func q8Dots(rows, groups int, w []byte, stride int, xq []int8, wsum []int32, out []int32) {
	a := quantArchT(quantArch.Load())
	if a == qArchGeneric || rows <= 0 || groups <= 0 {
		q8DotsRef(rows, groups, w, stride, xq, out)
		return
	}
	_ = out[rows-1]
	_ = wsum[rows-1]
	_ = xq[groups*QGroup-1]
	_ = w[(rows-1)*stride+groups*QGroup-1]
	if a == qArchAVX512VNNI && gemvSequential.Load() {
		q8DotsSeqAvx512(rows, groups, &w[0], stride, &xq[0], &wsum[0], &out[0])
	} else if a == qArchAVX512VNNI {
		q8DotsAvx512(rows, groups, &w[0], stride, &xq[0], &wsum[0], &out[0])
	} else if gemvSequential.Load() {
		q8DotsSeqAvx2(rows, groups, &w[0], stride, &xq[0], &wsum[0], &out[0])
	} else {
		q8DotsAvx2(rows, groups, &w[0], stride, &xq[0], &wsum[0], &out[0])
	}
}

func q4Dots(rows, groups int, w []byte, stride int, d []uint16, xq []int8, xs []float32, xsum []int32, out []float32) {
	a := quantArchT(quantArch.Load())
	if a == qArchGeneric || rows <= 0 || groups <= 0 {
		q4DotsRef(rows, groups, w, stride, d, xq, xs, xsum, out)
		return
	}
	_ = out[rows-1]
	_ = xq[groups*QGroup-1]
	_ = xs[groups-1]
	_ = xsum[groups-1]
	_ = d[rows*groups-1]
	_ = w[(rows-1)*stride+groups*QGroup/2-1]
	if a == qArchAVX512VNNI && gemvSequential.Load() {
		q4DotsSeqAvx512(rows, groups, &w[0], stride, &d[0], &xq[0], &xs[0], &xsum[0], &out[0])
	} else if a == qArchAVX512VNNI {
		q4DotsAvx512(rows, groups, &w[0], stride, &d[0], &xq[0], &xs[0], &xsum[0], &out[0])
	} else if gemvSequential.Load() {
		q4DotsSeqAvx2(rows, groups, &w[0], stride, &d[0], &xq[0], &xs[0], &xsum[0], &out[0])
	} else {
		q4DotsAvx2(rows, groups, &w[0], stride, &d[0], &xq[0], &xs[0], &xsum[0], &out[0])
	}
}
