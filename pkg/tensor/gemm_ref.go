package tensor

// GemmRef is the naive reference for Gemm: the same contract, computed one
// output element at a time with a float64 accumulator. It exists to test the
// fast kernels against and is far too slow for real work.
func GemmRef(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
			}
			v := alpha * float32(s)
			if beta != 0 {
				v += beta * c[i*ldc+j]
			}
			c[i*ldc+j] = v
		}
	}
}

// GemmBF16Ref is the naive reference for GemmBF16: B holds bfloat16 bits.
func GemmBF16Ref(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []uint16, ldb int, beta float32, c []float32, ldc int) {
	bf := make([]float32, len(b))
	BF16ToF32(bf, b)
	GemmRef(transA, transB, m, n, k, alpha, a, lda, bf, ldb, beta, c, ldc)
}
