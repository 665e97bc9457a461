package tensor

import "sync"

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
	t := getGemv(gemvArgs{trans: true, arch: arch, n: n, k: k, alpha: alpha, b32: w32, b16: w16, ldb: ldw, x: x, xk: x, beta: beta, y: y})
	xb := gemvXLayout(arch, w16, k, x)
	if xb != nil {
		t.xk = xb.f[:k]
	}
	ParallelRange(n, grain, t)
	putGemv(t)
	if xb != nil {
		putPackBuf(xb)
	}
}

// gemvTRows computes rows [lo, hi) of gemvT.
func (t *gemvArgs) gemvTRows(lo, hi int) {
	var buf [gemvChunkRows]float32
	for r0 := lo; r0 < hi; r0 += gemvChunkRows {
		rows := min(gemvChunkRows, hi-r0)
		var ws32 []float32
		var ws16 []uint16
		if t.b16 != nil {
			ws16 = t.b16[r0*t.ldb:]
		} else {
			ws32 = t.b32[r0*t.ldb:]
		}
		gemvDots(t.arch, rows, t.k, ws32, ws16, t.ldb, t.x, t.xk, buf[:])
		yr := t.y[r0 : r0+rows]
		for i, s := range buf[:rows] {
			if t.beta == 0 {
				yr[i] = t.alpha * s
			} else {
				yr[i] = t.alpha*s + t.beta*yr[i]
			}
		}
	}
}

// gemvNCols is the column block of gemvN: one goroutine accumulates it over
// all k rows in a stack buffer.
const gemvNCols = 256

// gemvN sets y[:n] = alpha * x B + beta*y with B k x n row-major (float32
// b32 or bfloat16 b16, the other nil): m == 1 without transB. Each goroutine
// owns a range of columns and accumulates them over all k rows in a stack
// buffer, streaming B row segments.
func gemvN(n, k int, alpha float32, b32 []float32, b16 []uint16, ldb int, x []float32, beta float32, y []float32) {
	t := getGemv(gemvArgs{n: n, k: k, alpha: alpha, b32: b32, b16: b16, ldb: ldb, x: x, beta: beta, y: y})
	ParallelRange(ceilDiv(n, gemvNCols), max(1, (256<<10)/(4*k*gemvNCols)), t)
	putGemv(t)
}

// gemvNBlocks computes column blocks [lo, hi) of gemvN.
func (t *gemvArgs) gemvNBlocks(lo, hi int) {
	var acc, tmp [gemvNCols]float32
	for cb := lo; cb < hi; cb++ {
		j0 := cb * gemvNCols
		w := min(gemvNCols, t.n-j0)
		a := acc[:w]
		clear(a)
		for p, xv := range t.x[:t.k] {
			var row []float32
			if t.b16 != nil {
				row = tmp[:w]
				BF16ToF32(row, t.b16[p*t.ldb+j0:p*t.ldb+j0+w])
			} else {
				row = t.b32[p*t.ldb+j0 : p*t.ldb+j0+w]
			}
			row = row[:len(a)]
			for j, v := range row {
				a[j] += xv * v
			}
		}
		yr := t.y[j0 : j0+w]
		for j, s := range a {
			if t.beta == 0 {
				yr[j] = t.alpha * s
			} else {
				yr[j] = t.alpha*s + t.beta*yr[j]
			}
		}
	}
}

// gemvArgs is one gemvT (trans) or gemvN call, the ParallelRange body of
// both. Calls take it from a pool so that a steady stream of GEMVs (decode)
// allocates nothing.
type gemvArgs struct {
	trans       bool
	arch        gemmArch
	n, k        int
	alpha, beta float32
	b32         []float32
	b16         []uint16
	ldb         int
	x, y        []float32
	xk          []float32 // x as the gemvT kernel reads it (see gemvXLayout)
}

func (t *gemvArgs) Range(lo, hi int) {
	if t.trans {
		t.gemvTRows(lo, hi)
	} else {
		t.gemvNBlocks(lo, hi)
	}
}

var gemvPool = sync.Pool{New: func() any { return new(gemvArgs) }}

func getGemv(a gemvArgs) *gemvArgs {
	t := gemvPool.Get().(*gemvArgs)
	*t = a
	return t
}

// putGemv returns t to the pool, dropping its references to the caller's
// matrices.
func putGemv(t *gemvArgs) {
	*t = gemvArgs{}
	gemvPool.Put(t)
}
