package tensor

// Gemm computes C = alpha*op(A)*op(B) + beta*C on row-major float32 matrices.
//
//	op(A) is m x k: A is m x k (lda >= k) if !transA, else A is k x m (lda >= m).
//	op(B) is k x n: B is k x n (ldb >= n) if !transB, else B is n x k (ldb >= k).
//	C is m x n (ldc >= n).
//
// beta == 0 means C is write-only (NaN or garbage in C is overwritten, as in
// BLAS). A linear layer with Hugging Face weights W [out, in] is
// Gemm(false, true, tokens, out, in, 1, x, in, W, in, 0, y, out).
//
// Gemm splits the work over Threads() goroutines and is safe to call
// concurrently from several goroutines on disjoint C.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	gemmNaiveBlocked(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}

// GemmBF16 is Gemm with B stored as bfloat16 bits (the upper 16 bits of an
// IEEE float32). B is widened to float32 exactly while it is packed, so the
// result equals Gemm on the widened matrix.
func GemmBF16(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []uint16, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	bf := make([]float32, len(b))
	BF16ToF32(bf, b)
	gemmNaiveBlocked(transA, transB, m, n, k, alpha, a, lda, bf, ldb, beta, c, ldc)
}

func checkGemm(transA, transB bool, m, n, k, la, lda, lb, ldb, lc, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic("tensor: negative gemm dimension")
	}
	if m == 0 || n == 0 {
		return
	}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	if k > 0 && (lda < ac || la < (ar-1)*lda+ac) {
		panic("tensor: gemm A too small for its shape")
	}
	if k > 0 && (ldb < bc || lb < (br-1)*ldb+bc) {
		panic("tensor: gemm B too small for its shape")
	}
	if ldc < n || lc < (m-1)*ldc+n {
		panic("tensor: gemm C too small for its shape")
	}
}

// gemmNaiveBlocked is a placeholder portable implementation.
func gemmNaiveBlocked(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	ParallelFor(m, 1, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			crow := c[i*ldc : i*ldc+n]
			if beta == 0 {
				clear(crow)
			} else if beta != 1 {
				for j := range crow {
					crow[j] *= beta
				}
			}
			for p := 0; p < k; p++ {
				var av float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				av *= alpha
				if av == 0 {
					continue
				}
				if transB {
					for j := range crow {
						crow[j] += av * b[j*ldb+p]
					}
				} else {
					brow := b[p*ldb : p*ldb+n]
					for j := range crow {
						crow[j] += av * brow[j]
					}
				}
			}
		}
	})
}
