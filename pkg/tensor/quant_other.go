//go:build !amd64

package tensor

// Without assembly the quantized dot products run the portable references.

func q8Dots(rows, groups int, w []byte, stride int, xq []int8, wsum []int32, out []int32) {
	q8DotsRef(rows, groups, w, stride, xq, out)
}

func q4Dots(rows, groups int, w []byte, stride int, d []uint16, xq []int8, xs []float32, xsum []int32, out []float32) {
	q4DotsRef(rows, groups, w, stride, d, xq, xs, xsum, out)
}

// QuantKernel names the kernels QLinear uses on this CPU.
func QuantKernel() string { return "generic" }
