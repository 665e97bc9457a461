package tensor

import (
	"sync/atomic"
)

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
// concurrently from several goroutines on disjoint C. m == 1 with transB
// (one token through a linear layer) runs the bandwidth-bound GemvT path;
// everything else runs packed, cache-blocked register-tile kernels (see
// gemmPacked). alpha == 0 or k == 0 only scales C by beta, as in BLAS.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	gemm(transA, transB, m, n, k, alpha, a, lda, b, nil, ldb, beta, c, ldc)
}

// GemmBF16 is Gemm with B stored as bfloat16 bits (the upper 16 bits of an
// IEEE float32). B is widened to float32 exactly while it is packed (or, for
// m == 1, in registers), so the result equals Gemm on the widened matrix up
// to float32 rounding order.
func GemmBF16(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []uint16, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
	if b == nil {
		b = []uint16{} // nil b16 selects the float32 path below
	}
	gemm(transA, transB, m, n, k, alpha, a, lda, nil, b, ldb, beta, c, ldc)
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

// gemmArch names a family of kernels (micro-kernel, packers, GEMV).
type gemmArch int32

const (
	archGeneric gemmArch = iota // portable Go
	archAVX2                    // amd64 AVX2 + FMA, 16 ymm registers
	archAVX512                  // amd64 AVX-512F, 32 zmm registers
	numArchs
)

// gemmParams holds the register tile and cache blocking of one kernel
// family.
//
// Register tile MR x NR: the micro-kernel keeps an MR x NR block of C in
// registers and per k step loads NR/W vectors of packed B (W floats per
// vector) and broadcasts MR scalars of packed A, for MR*NR/W FMAs. AVX-512
// uses 14 x 32: 28 accumulators + 2 B vectors + 2 broadcasts = all 32 zmm;
// 16 loads per 28 FMAs keeps the two load ports below the two FMA ports.
// AVX2 uses the classic 6 x 16 (12 + 2 + 2 = 16 ymm).
//
// Cache blocking: for each depth block of kc (the outer loop), op(A) is
// packed in row blocks of at most mc rows (mc x kc floats, shared by all
// workers: 1 MB for AVX-512, it stays in L2/L3); workers then take chunks of
// up to nc columns, pack their kc x nc slice of op(B) (256 KB for AVX-512,
// L2-resident) and sweep it with each MR-row A micro-panel in turn (kc x MR
// floats = 14 KB, L1-resident while it meets the chunk's NR-column B
// panels). kc = 256 keeps a B micro-panel plus an A micro-panel (46 KB)
// about the size of the 48 KB L1 and makes each pass over C (load + store
// once per tile per kc block) cost under 1% of the FMAs; each element of B
// is packed exactly once per (kc block, mc block), and for the shapes that
// matter (m <= mc) exactly once per call.
type gemmParams struct {
	name   string
	mr, nr int // register tile: rows x columns of C
	kc     int // depth of a packed block (max)
	mc     int // rows of op(A) packed at once (max, multiple of mr)
	nc     int // columns of op(B) per work chunk (max, multiple of nr)
}

var archParams = [numArchs]gemmParams{
	archGeneric: {name: "generic", mr: genericMR, nr: genericNR, kc: 256, mc: 512, nc: 128},
	archAVX2:    {name: "avx2", mr: 6, nr: 16, kc: 256, mc: 1020, nc: 256},
	archAVX512:  {name: "avx512", mr: 14, nr: 32, kc: 256, mc: 1008, nc: 256},
}

func (a gemmArch) String() string { return archParams[a].name }

// activeArch is the kernel family Gemm uses: the best the CPU supports,
// chosen once at init; tests override it through forceArch.
var activeArch atomic.Int32

func init() { activeArch.Store(int32(bestArch())) }

func bestArch() gemmArch {
	for a := numArchs - 1; a > archGeneric; a-- {
		if archSupported(a) {
			return a
		}
	}
	return archGeneric
}

// forceArch makes Gemm and GemvT use arch's kernels until restore is called.
// For tests and benchmarks; arch must be supported.
func forceArch(a gemmArch) (restore func()) {
	if !archSupported(a) {
		panic("tensor: forceArch: " + a.String() + " not supported on this CPU")
	}
	old := activeArch.Swap(int32(a))
	return func() { activeArch.Store(old) }
}

// minWorkerFlops is the least work (2*m*n*k) worth handing to one more
// goroutine: waking a parked worker costs a few microseconds, about 1 MFLOP
// of kernel time.
const minWorkerFlops = 1 << 20

// gemm dispatches a checked call; exactly one of b32 and b16 is non-nil.
func gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b32 []float32, b16 []uint16, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleRows(m, n, beta, c, ldc)
		return
	}
	arch := gemmArch(activeArch.Load())
	switch {
	case m == 1:
		// One row of op(A): a GEMV, bandwidth-bound on B.
		var x []float32
		var xb *packBuf
		if !transA {
			x = a[:k]
		} else {
			xb = getPackBuf(k)
			x = xb.f
			for p := range x {
				x[p] = a[p*lda]
			}
		}
		if transB {
			gemvT(arch, n, k, alpha, b32, b16, ldb, x, beta, c[:n])
		} else {
			gemvN(n, k, alpha, b32, b16, ldb, x, beta, c[:n])
		}
		if xb != nil {
			putPackBuf(xb)
		}
		return
	case n == 1 && !transA:
		// One column of op(B): GEMV on A's rows.
		gemmColumn(arch, transB, m, k, alpha, a, lda, b32, b16, ldb, beta, c, ldc)
		return
	}
	gemmPacked(arch, transA, transB, m, n, k, alpha, a, lda, b32, b16, ldb, beta, c, ldc)
}

// scaleRows sets C[m x n] = beta*C (beta == 0: zero, NaNs included).
func scaleRows(m, n int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
		} else if beta != 1 {
			for j := range row {
				row[j] *= beta
			}
		}
	}
}

// gemmColumn handles n == 1, !transA: c[i*ldc] = alpha * A[i,:] . op(B)[:,0]
// + beta*c[i*ldc], as GemvT with W = A.
func gemmColumn(arch gemmArch, transB bool, m, k int, alpha float32, a []float32, lda int, b32 []float32, b16 []uint16, ldb int, beta float32, c []float32, ldc int) {
	stride := ldb // op(B)[p, 0] = b[p*ldb] for !transB, b[p] for transB
	if transB {
		stride = 1
	}
	xb := getPackBuf(k)
	defer putPackBuf(xb)
	x := xb.f
	for p := range x {
		if b16 != nil {
			x[p] = bf16ToF32One(b16[p*stride])
		} else {
			x[p] = b32[p*stride]
		}
	}
	if ldc == 1 {
		gemvT(arch, m, k, alpha, a, nil, lda, x, beta, c[:m])
		return
	}
	yb := getPackBuf(m)
	defer putPackBuf(yb)
	y := yb.f
	if beta != 0 {
		for i := range y {
			y[i] = c[i*ldc]
		}
	}
	gemvT(arch, m, k, alpha, a, nil, lda, x, beta, y)
	for i, v := range y {
		c[i*ldc] = v
	}
}

// gemmPacked is the blocked GEMM (m, n, k >= 1, alpha != 0):
//
//	for each depth block pc of kc:              (beta applies on the first only)
//	  for each row block ic of mc:
//	    pack op(A)[ic:ic+mc, pc:pc+kc] into MR-row micro-panels (shared)
//	    workers take chunks (row range x <= nc columns) until none is left:
//	      pack op(B)[pc:pc+kc, chunk columns] into NR-column micro-panels
//	      for each MR-row A micro-panel in the row range:
//	        for each NR-column B micro-panel: micro-kernel -> C tile
//
// Chunks are handed out dynamically (an atomic counter), so a worker slowed
// by another process on the same core does not hold the others up. Row
// ranges split a block only when there are too few column chunks to keep
// every worker busy. Tiles cut by the right edge of C go through a scratch
// tile; tiles cut by the bottom edge use the micro-kernel of that height.
func gemmPacked(arch gemmArch, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b32 []float32, b16 []uint16, ldb int, beta float32, c []float32, ldc int) {
	pr := archParams[arch]
	mr, nr := pr.mr, pr.nr

	// Even block sizes: ceil(k/kc) blocks of equal depth rather than a
	// short last one; likewise for rows.
	kc := ceilDiv(k, ceilDiv(k, pr.kc))
	mc := m
	if m > pr.mc {
		mc = ceilDiv(ceilDiv(m, ceilDiv(m, pr.mc)), mr) * mr
	}

	workers := Threads()
	if w := int(2 * float64(m) * float64(n) * float64(k) / minWorkerFlops); w < workers {
		workers = max(w, 1)
	}

	// Column chunks: at most nc wide, and enough of them (a multiple of
	// the worker count) to balance.
	panelsN := ceilDiv(n, nr)
	colChunks := ceilDiv(panelsN, pr.nc/nr)
	if workers > 1 {
		colChunks = min(panelsN, max(colChunks, ceilDiv(colChunks, workers)*workers))
	}
	maxChunkPanels := ceilDiv(panelsN, colChunks)

	for pc := 0; pc < k; pc += kc {
		kcur := min(kc, k-pc)
		betaEff := beta
		if pc > 0 {
			betaEff = 1
		}
		for ic := 0; ic < m; ic += mc {
			mcur := min(mc, m-ic)
			panelsM := ceilDiv(mcur, mr)
			rowChunks := 1
			if workers > 1 && colChunks < 2*workers {
				rowChunks = min(panelsM, ceilDiv(2*workers, colChunks))
			}

			// Pack A (shared). Small blocks are packed inline.
			ab := getPackBuf(panelsM * kcur * mr)
			aPack := ab.f
			ParallelFor(panelsM, max(1, (1<<16)/(kcur*mr)), func(lo, hi int) {
				for ip := lo; ip < hi; ip++ {
					rows := min(mr, mcur-ip*mr)
					packAPanel(arch, aPack[ip*kcur*mr:(ip+1)*kcur*mr], a, lda, transA, ic+ip*mr, pc, rows, kcur)
				}
			})

			var next atomic.Int64
			total := int64(rowChunks * colChunks)
			nWork := min(workers, int(total))
			ParallelFor(nWork, 1, func(_, _ int) {
				bb := getPackBuf(maxChunkPanels*kcur*nr + mr*nr)
				bPack := bb.f[:maxChunkPanels*kcur*nr]
				scratch := bb.f[maxChunkPanels*kcur*nr:]
				lastCol := -1
				for {
					t := int(next.Add(1) - 1)
					if t >= int(total) {
						break
					}
					// t walks a column chunk's row ranges consecutively, so
					// a worker often reuses the B it just packed.
					cc, rc := t/rowChunks, t%rowChunks
					q0, q1 := cc*panelsN/colChunks, (cc+1)*panelsN/colChunks
					r0, r1 := rc*panelsM/rowChunks, (rc+1)*panelsM/rowChunks
					if cc != lastCol {
						for q := q0; q < q1; q++ {
							j0 := q * nr
							packBPanel(arch, bPack[(q-q0)*kcur*nr:(q-q0+1)*kcur*nr], b32, b16, ldb, transB, j0, pc, min(nr, n-j0), kcur)
						}
						lastCol = cc
					}
					for ip := r0; ip < r1; ip++ {
						rows := min(mr, mcur-ip*mr)
						ap := &aPack[ip*kcur*mr]
						crow := (ic + ip*mr) * ldc
						for q := q0; q < q1; q++ {
							j0 := q * nr
							bp := &bPack[(q-q0)*kcur*nr]
							if cols := n - j0; cols >= nr {
								microKernel(arch, rows, kcur, ap, bp, &c[crow+j0], ldc, alpha, betaEff)
							} else {
								microKernel(arch, rows, kcur, ap, bp, &scratch[0], nr, 1, 0)
								mergeTile(rows, cols, scratch, nr, alpha, betaEff, c[crow+j0:], ldc)
							}
						}
					}
				}
				putPackBuf(bb)
			})
			putPackBuf(ab)
		}
	}
}

// mergeTile sets C[i, j] = alpha*t[i*ldt+j] + beta*C[i, j] for i < rows,
// j < cols (beta == 0: C write-only).
func mergeTile(rows, cols int, t []float32, ldt int, alpha, beta float32, c []float32, ldc int) {
	for i := 0; i < rows; i++ {
		tr := t[i*ldt : i*ldt+cols]
		cr := c[i*ldc : i*ldc+cols]
		for j, v := range tr {
			if beta == 0 {
				cr[j] = alpha * v
			} else {
				cr[j] = alpha*v + beta*cr[j]
			}
		}
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
