//go:build !amd64

package tensor

// On architectures without assembly kernels every arch but archGeneric is
// unsupported, and the dispatchers below go straight to the portable Go.

func archSupported(a gemmArch) bool { return a == archGeneric }

func microKernel(arch gemmArch, rows, kc int, a, b, c *float32, ldc int, alpha, beta float32, pf *prefetchCursor) {
	kernelGeneric(rows, kc, a, b, c, ldc, alpha, beta)
}

func packAPanel(arch gemmArch, dst []float32, a []float32, lda int, transA bool, i0, p0, rows, kc int) {
	packAPanelGeneric(archParams[arch].mr, dst, a, lda, transA, i0, p0, rows, kc)
}

func packBPanelT(arch gemmArch, dst []float32, b32 []float32, b16 []uint16, ldb int, j0, p0, cols, kc int) {
	packBPanelTGeneric(archParams[arch].nr, dst, b32, b16, ldb, j0, p0, cols, kc)
}

func gemvDots(arch gemmArch, rows, k int, w32 []float32, w16 []uint16, ldw int, x, xk []float32, out []float32) {
	gemvDotsGeneric(rows, k, w32, w16, ldw, x, out)
}

func widenBF16(arch gemmArch, dst []float32, src []uint16) { BF16ToF32(dst, src) }

func scatterRow(arch gemmArch, dst []float32, stride int, src []float32, panels int) bool {
	return false
}

func bf16DotSupported(arch gemmArch) bool { return false }

func microKernelDot(rows, kc2 int, a, b, c *float32, ldc int, alpha, beta float32, pf *prefetchCursor) {
	panic("tensor: no bf16 dot kernel on this architecture")
}

func pairBF16(dst, src []float32, width, pairs int) { pairBF16Generic(dst, src, width, pairs) }

func roundBF16Slice(x []float32) { roundBF16SliceGeneric(x) }

func gemvXLayout(arch gemmArch, w16 []uint16, k int, x []float32) *packBuf { return nil }

func swigluVec(out, gate, up []float32) bool { return false }

func swigluVecOK() bool { return false }

func expShiftVec(x []float32, shift float32) (float64, bool) { return 0, false }

func skinnyDots(arch gemmArch, m, rows, kMain int, w16 []uint16, ldw int, xs []float32, out []float32) {
	panic("tensor: no skinny kernels on this architecture")
}
