package tensor

// GemvT computes y = W*x + beta*y: one token through a linear layer whose
// weights W are stored [out, in] as in Hugging Face checkpoints.
//
//	W is n x k row-major (ldw >= k), x has k elements, y has n elements.
//
// beta == 0 means y is write-only. This is the decode-time shape and is
// bound by memory bandwidth: W is streamed once, rows split over Threads()
// goroutines, four rows at a time sharing each load of x. Gemm routes
// m == 1 with transB here.
func GemvT(n, k int, w []float32, ldw int, x []float32, y []float32, beta float32) {
	checkGemvT(n, k, len(w), ldw, len(x), len(y))
	if n == 0 {
		return
	}
	if k == 0 {
		scaleRows(1, n, beta, y, n)
		return
	}
	gemvT(gemmArch(activeArch.Load()), n, k, 1, w, nil, ldw, x, beta, y)
}

// GemvTBF16 is GemvT with W stored as bfloat16 bits [n, k] (ldw >= k). Each
// weight is read once from memory as 16 bits and widened exactly to float32
// in registers, so this moves half the bytes of GemvT.
func GemvTBF16(n, k int, w []uint16, ldw int, x []float32, y []float32, beta float32) {
	checkGemvT(n, k, len(w), ldw, len(x), len(y))
	if n == 0 {
		return
	}
	if k == 0 {
		scaleRows(1, n, beta, y, n)
		return
	}
	if w == nil {
		w = []uint16{}
	}
	gemvT(gemmArch(activeArch.Load()), n, k, 1, nil, w, ldw, x, beta, y)
}

func checkGemvT(n, k, lw, ldw, lx, ly int) {
	if n < 0 || k < 0 {
		panic("tensor: negative gemv dimension")
	}
	if n > 0 && k > 0 && (ldw < k || lw < (n-1)*ldw+k) {
		panic("tensor: gemv W too small for its shape")
	}
	if lx < k {
		panic("tensor: gemv x shorter than k")
	}
	if ly < n {
		panic("tensor: gemv y shorter than n")
	}
}

// gemvChunkRows is how many rows of W one call into the dot-product kernel
// covers; their sums go through a stack buffer before alpha and beta apply.
const gemvChunkRows = 64

// gemvT sets y[:n] = alpha * W x + beta*y with W n x k (float32 w32 or
// bfloat16 w16, the other nil); n, k >= 1.
func gemvT(arch gemmArch, n, k int, alpha float32, w32 []float32, w16 []uint16, ldw int, x []float32, beta float32, y []float32) {
	esz := 4
	if w16 != nil {
		esz = 2
	}
	// Each goroutine streams at least ~256 KB of W: less is not worth
	// waking a worker for.
	grain := max(4, (256<<10)/(k*esz))
	ParallelFor(n, grain, func(lo, hi int) {
		var buf [gemvChunkRows]float32
		for r0 := lo; r0 < hi; r0 += gemvChunkRows {
			rows := min(gemvChunkRows, hi-r0)
			var ws32 []float32
			var ws16 []uint16
			if w16 != nil {
				ws16 = w16[r0*ldw:]
			} else {
				ws32 = w32[r0*ldw:]
			}
			gemvDots(arch, rows, k, ws32, ws16, ldw, x, buf[:])
			yr := y[r0 : r0+rows]
			for i, s := range buf[:rows] {
				if beta == 0 {
					yr[i] = alpha * s
				} else {
					yr[i] = alpha*s + beta*yr[i]
				}
			}
		}
	})
}

// gemvN sets y[:n] = alpha * x B + beta*y with B k x n row-major (float32
// b32 or bfloat16 b16, the other nil): m == 1 without transB. Each goroutine
// owns a range of columns and accumulates them over all k rows in a stack
// buffer, streaming B row segments.
func gemvN(n, k int, alpha float32, b32 []float32, b16 []uint16, ldb int, x []float32, beta float32, y []float32) {
	const cols = 256
	ParallelFor(ceilDiv(n, cols), max(1, (256<<10)/(4*k*cols)), func(lo, hi int) {
		var acc, tmp [cols]float32
		for cb := lo; cb < hi; cb++ {
			j0 := cb * cols
			w := min(cols, n-j0)
			a := acc[:w]
			clear(a)
			for p, xv := range x[:k] {
				var row []float32
				if b16 != nil {
					row = tmp[:w]
					BF16ToF32(row, b16[p*ldb+j0:p*ldb+j0+w])
				} else {
					row = b32[p*ldb+j0 : p*ldb+j0+w]
				}
				row = row[:len(a)]
				for j, v := range row {
					a[j] += xv * v
				}
			}
			yr := y[j0 : j0+w]
			for j, s := range a {
				if beta == 0 {
					yr[j] = alpha * s
				} else {
					yr[j] = alpha*s + beta*yr[j]
				}
			}
		}
	})
}
