package tensor

import (
	"sync"
	"sync/atomic"
	"unsafe"
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
	gemm(CurrentCompute(), transA, transB, m, n, k, alpha, a, lda, b, nil, ldb, beta, c, ldc)
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
	gemm(CurrentCompute(), transA, transB, m, n, k, alpha, a, lda, nil, b, ldb, beta, c, ldc)
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
// registers; per k step it loads NR/W vectors of packed B (W floats per
// vector) and multiplies them by MR scalars of packed A, for MR*NR/W FMAs.
// AVX-512 uses 14 x 32: 28 accumulators + 2 B vectors = 30 of the 32 zmm,
// the A scalars broadcast from memory inside the FMAs; 14 x 32 and 12 x 32
// measured fastest of 14x32, 12x32, 8x48, 7x48 and 6x64 (~160 GFLOP/s on
// cache-resident panels against a ~185 FMA peak), and 14 rows waste the
// least on the bottom edge of m = 64. AVX2 uses the classic 6 x 16
// (12 accumulators + 2 B vectors + 2 broadcasts = 16 ymm).
//
// Cache blocking (see gemmPacked): op(A) is packed in kc-deep slabs of
// MR-row micro-panels (kc x MR floats = 14 KB for AVX-512, L1-resident
// while it meets every B micro-panel of a chunk); a work chunk packs its
// kc x nc slice of op(B) (256 KB, L2-resident while every A micro-panel
// streams past it). kc = 256 keeps an A and a B micro-panel (46 KB) about
// the size of the 48 KB L1 and makes the pass over C per slab (one load
// and store per tile) cost under 1% of the FMAs; 192..512 measured within
// noise of each other. nc = 256 keeps the B slice well inside the 2 MB L2
// next to the A slab streaming through it. Each element of op(A) and op(B)
// is packed once per call (per row block of A, when A exceeds
// packABudget).
//
// That A-panel-outer order is AVX-512's. AVX2 runs B-panel-outer instead
// (first at kc = 256 and rowBlock 16: a 16 KB B micro-panel in Zen 3's
// 32 KB L1 while 16 A micro-panels, 96 KB, stream past it from L2): it
// moves 24 bytes of A a k step from L2 instead of 64 of B, and took the
// 1024^3 GEMM on one Zen 3 core from 0.93-0.96x OpenBLAS to 0.99-1.00x
// (interleaved calls, 2026-12-06; rowBlock 4-32 within 2% of each
// other). Both orders compute each tile with the same FMAs in the same
// order, so they give the same bits (TestGemmTileOrdersAgreeBitwise). In
// that order AVX2 takes deeper slabs, kc = 1024 (a k of 1024 in one
// slab; 2816 in three of 940): the pass over C per slab and the slab loop's overhead shrink, while the B
// micro-panel (64 KB) and a block of 8 A micro-panels (192 KB, rowBlock 8:
// inside even a 256 KB L2) stay in L2. Call by call against kc = 256 and
// rowBlock 16 on the Zen 3 VM (2026-12-06, 30 pairs a shape, 1 and 2
// threads, two rounds): 1.01-1.08x on 19 of 20 shape/thread pairs of
// 1024^3, the expert shapes 64x2816x1024 and 64x1024x2816 and the
// 512-row prefill products, 0.993x on the last (kc = 512: 0.97-1.04x;
// a whole k of 2816 in one slab: 0.93-1.03x).
//
// On AMD, AVX-512 runs deeper slabs and narrower chunks (blocking,
// gemmDeepSlabs): see avx512Deep.
type gemmParams struct {
	name   string
	mr, nr int // register tile: rows x columns of C
	kc     int // depth of a packed slab (max; slabs are equalised)
	nc     int // columns of op(B) per work chunk (max, multiple of nr)
	// ncTall is nc when A is tall (m >= tallRows) in the A-panel-outer
	// order: see gemmPacked.
	ncTall int
	// rowBlock picks the loop order over a chunk's tiles: 0 runs every
	// B panel of the chunk past one A micro-panel (A-panel-outer); > 0
	// runs blocks of rowBlock A micro-panels past one B panel
	// (B-panel-outer, BLIS's order), the B panel in L1 and the A block
	// (rowBlock*MR x kc floats) in L2.
	rowBlock int
}

var archParams = [numArchs]gemmParams{
	archGeneric: {name: "generic", mr: genericMR, nr: genericNR, kc: 256, nc: 128, ncTall: 256},
	archAVX2:    {name: "avx2", mr: 6, nr: 16, kc: 1024, nc: 256, ncTall: 256, rowBlock: 8},
	archAVX512:  {name: "avx512", mr: 14, nr: 32, kc: 256, nc: 256, ncTall: 512},
}

// avx512Deep is the AVX-512 family's blocking where gemmDeepSlabs holds
// (on AMD): slabs as deep as 2048 (a k of 1024 in one slab, 2816 in two of
// 1408) and chunks of one B micro-panel (256 columns when A is tall).
//
// The shallow blocking above was tuned on the Intel Xeon (2 MB L2). On
// the AMD EPYC Zen 5 VM (1 MB L2, 48 KB L1) deeper slabs won on every
// product but the smallest: each slab is one more pass over C (a 1024^3
// C, 4 MB, is read and written again from L3 or memory by each of four
// slabs of 256), and with slabs of 2048 an A micro-panel (14 x 2048
// floats, 112 KB) and a B micro-panel (256 KB) stream from L2 and L3
// without starving the kernel (a k step needs 56 + 128 bytes per 14 FMA
// cycles). For a small A (an expert's 16-200 rows) chunks of one B
// micro-panel then ran 2-5% faster than chunks of 64-256 columns (a
// throwaway sweep the same day): each freshly packed B panel meets all of
// A while it is in L2. Measured call by call against the shallow
// blocking on that VM (BenchmarkGemmSlabs, bench/results/gemm-slabs.txt,
// two rounds, on 1 and 2 threads): 1024^3 1.02-1.09x and 1.04-1.10x;
// 2048^3 1.03-1.06x and 1.09-1.11x; the expert batches (16-200 rows, bf16
// weights [2816, 1024] and [1024, 2816]) 1.04-1.08x and 1.13-1.20x; the
// 512-row prefill products 1.02-1.04x and 1.06-1.09x; --compute bf16
// 1.02-1.12x and 1.05-1.12x. Chunks of one micro-panel cost a tiny
// product (64^3) about 10% of its few microseconds, so a chunk is widened
// until it holds minChunkFlops (64^3 and 512x512x64: 0.99-1.01x).
var avx512Deep = struct{ kc, nc, ncTall int }{kc: 2048, nc: 32, ncTall: 256}

// minChunkFlops is the least work (2*m*k*width) gemmPacked puts in one
// column chunk, widening it beyond nc when m*k is small.
const minChunkFlops = 1 << 20

// blocking is arch's gemmParams with the deep-slab blocking applied where
// it is chosen.
func blocking(arch gemmArch) gemmParams {
	pr := archParams[arch]
	if arch == archAVX512 && gemmDeepSlabs.Load() {
		pr.kc, pr.nc, pr.ncTall = avx512Deep.kc, avx512Deep.nc, avx512Deep.ncTall
	}
	return pr
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

// gemm dispatches a checked call in compute mode cm; exactly one of b32 and
// b16 is non-nil.
func gemm(cm Compute, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b32 []float32, b16 []uint16, ldb int, beta float32, c []float32, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleRows(m, n, beta, c, ldc)
		return
	}
	arch := gemmArch(activeArch.Load())
	if useSkinny(arch, cm, transA, transB, m, n, k, b16) {
		// A few rows through a linear layer (W [n, k]): W streamed once,
		// each row of C the GEMV's of its row of A.
		gemmSkinny(arch, cm == ComputeBF16, m, n, k, alpha, a, lda, b16, ldb, beta, c, ldc)
		return
	}
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
	mode := dotOff
	if cm == ComputeBF16 {
		mode = dotRound
		if bf16DotSupported(arch) && bf16DotPreferred.Load() {
			mode = dotHW
		}
	}
	gemmPacked(arch, mode, transA, transB, m, n, k, alpha, a, lda, b32, b16, ldb, beta, c, ldc)
}

// dotMode is how gemmPacked multiplies (see Compute).
type dotMode uint8

const (
	dotOff   dotMode = iota // float32 products (ComputeExact)
	dotHW                   // ComputeBF16 on kernDotAvx512: panels of bf16 pairs
	dotRound                // ComputeBF16 elsewhere: float32 panels rounded to bf16
)

// kSteps is the number of kernel steps of a kc-deep slab: k pairs for
// dotHW (an odd last k pairs with a zero), k itself otherwise.
func (d dotMode) kSteps(kc int) int {
	if d == dotHW {
		return (kc + 1) / 2
	}
	return kc
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

// tallRows is the height of A from which gemmPacked uses wide column
// chunks (see there).
const tallRows = 256

// privateABudget is the largest packed A (floats, 512 KB) that every
// worker packs for itself instead of sharing one packed copy.
const privateABudget = 128 << 10

// packABudget bounds the packed copy of op(A) held at once, in floats
// (8 MB): A is packed whole when it fits, else in row blocks that do.
const packABudget = 2 << 20

// gemmPacked is the blocked GEMM (m, n, k >= 1, alpha != 0). For each row
// block of op(A) (all of it unless it exceeds packABudget) one parallel
// section runs two kinds of task, handed out in order from an atomic
// counter:
//
//	A tasks: pack a group of MR-row micro-panels of one kc-deep slab of
//	         op(A) into the shared packed copy.
//	chunks:  a row range x (at most nc) columns of C. After every A task
//	         has finished:
//	         for each depth slab pc of kc:   (beta applies on the first only)
//	           pack op(B)[pc:pc+kc, chunk columns] into NR-column micro-panels
//	           for each MR-row A micro-panel of the row range:
//	             for each NR-column B micro-panel: micro-kernel -> C tile
//
// Each chunk owns its columns of C for the whole depth, so the only
// synchronisation is the wait for A (short: by the time a worker draws a
// chunk every A task has been drawn) and the final join. Chunks are small
// enough (several per worker) that a worker slowed by another process on
// its core does not hold the others up. Row ranges split the block only
// when there are too few column chunks to keep every worker busy. Tiles cut
// by the right edge of C go through a scratch tile; tiles cut by the bottom
// edge use the micro-kernel of that height.
func gemmPacked(arch gemmArch, mode dotMode, transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b32 []float32, b16 []uint16, ldb int, beta float32, c []float32, ldc int) {
	pr := blocking(arch)
	mr, nr := pr.mr, pr.nr

	// Equal-depth slabs rather than a short last one; likewise row blocks.
	// A pair panel (dotHW) holds twice the depth in the same bytes, and
	// its slabs start at even k so that bf16 B can be packed as dwords.
	kcMax := pr.kc
	if mode == dotHW {
		kcMax *= 2
	}
	kc := ceilDiv(k, ceilDiv(k, kcMax))
	if mode == dotHW && kc < k {
		kc += kc & 1
	}
	slabs := ceilDiv(k, kc)
	mc := m
	if maxRows := max(mr, packABudget/k/mr*mr); m > maxRows {
		mc = ceilDiv(ceilDiv(m, ceilDiv(m, maxRows)), mr) * mr
	}

	workers := Threads()
	if w := int(2 * float64(m) * float64(n) * float64(k) / minWorkerFlops); w < workers {
		workers = max(w, 1)
	}

	// Column chunks: at most nc wide (wider when that holds less than
	// minChunkFlops), and when parallel at least four per worker (a
	// multiple of the worker count) for balance. A tall A (m >= tallRows)
	// streams its whole packed slab past every chunk from L3: then chunks
	// are ncTall wide (twice nc in the shallow blocking) and one per
	// worker, which halves that stream (1024^3 on the 2-vCPU Xeon: 289 ->
	// 301 GFLOP/s on 2 threads, 154 -> 158 on 1; the same for m = 64 lost
	// 7-10%). Not in the B-panel-outer order (rowBlock > 0), where a chunk
	// reads each block of the slab into L2 once and the narrow chunks'
	// balance wins: on the Zen 3 VM at 2 threads, 1024^3 and the 512-row
	// prefill GEMM ran 0.6-4.5% faster with narrow chunks in 12 of 12
	// paired runs (2026-12-06).
	panelsN := ceilDiv(n, nr)
	nc, perWorker := pr.nc, 4
	if m >= tallRows && pr.rowBlock == 0 {
		nc, perWorker = pr.ncTall, 1
	}
	if minPanels := ceilDiv(minChunkFlops, 2*m*k*nr); nc < minPanels*nr {
		nc = minPanels * nr
	}
	colChunks := ceilDiv(panelsN, nc/nr)
	if workers > 1 {
		colChunks = min(panelsN, ceilDiv(max(colChunks, perWorker*workers), workers)*workers)
	}
	maxChunkPanels := ceilDiv(panelsN, colChunks)

	for ic := 0; ic < m; ic += mc {
		mcur := min(mc, m-ic)
		panelsM := ceilDiv(mcur, mr)
		rowChunks := 1
		if workers > 1 && colChunks < 2*workers {
			rowChunks = min(panelsM, ceilDiv(2*workers, colChunks))
		}
		slabFloats := panelsM * mode.kSteps(kc) * mr // slab s of packed A starts at s*slabFloats
		ab := getPackBuf(slabs * slabFloats)
		aPack := ab.f
		// A tasks: groups of panels of about 32K floats within one slab.
		groupPanels := max(1, (32<<10)/(mode.kSteps(kc)*mr))
		groups := ceilDiv(panelsM, groupPanels)
		nA := slabs * groups
		// A small A (an expert's batch) is packed by every worker for
		// itself rather than shared: packing it costs less than reading
		// panels another core packed.
		privateA := workers > 1 && slabs*slabFloats <= privateABudget
		if privateA {
			nA = 0
		}
		nTasks := nA + rowChunks*colChunks

		t := packedPool.Get().(*packedTask)
		*t = packedTask{arch: arch, mode: mode, transA: transA, transB: transB, n: n, k: k, kc: kc, alpha: alpha, beta: beta,
			a: a, lda: lda, b32: b32, b16: b16, ldb: ldb, c: c, ldc: ldc, ic: ic, mcur: mcur,
			aPack: aPack, slabFloats: slabFloats, panelsM: panelsM, panelsN: panelsN, groups: groups,
			groupPanels: groupPanels, nA: nA, nTasks: nTasks, rowChunks: rowChunks, colChunks: colChunks,
			maxChunkPanels: maxChunkPanels, privateA: privateA}
		t.nWork = min(workers, rowChunks*colChunks)
		t.aDone.Add(nA)
		ParallelRange(t.nWork, 1, t)
		*t = packedTask{}
		packedPool.Put(t)
		putPackBuf(ab)
	}
}

// packedTask is one row block of gemmPacked: every worker (one Range call
// each) draws A tasks and chunks from the counter next until none are
// left. Pooled, so that a steady stream of GEMMs allocates nothing.
type packedTask struct {
	arch                    gemmArch
	mode                    dotMode
	transA, transB          bool
	n, k, kc                int
	alpha, beta             float32
	a                       []float32
	lda                     int
	b32                     []float32
	b16                     []uint16
	ldb                     int
	c                       []float32
	ldc                     int
	ic, mcur                int       // the row block: rows [ic, ic+mcur) of C
	aPack                   []float32 // packed op(A) of the block, slab s at s*slabFloats
	slabFloats              int
	panelsM, panelsN        int
	groups, groupPanels, nA int // A tasks: groups per slab, panels per group, total
	nTasks                  int // A tasks + chunks
	rowChunks, colChunks    int
	maxChunkPanels          int
	nWork                   int            // workers
	next                    atomic.Int64   // next task to draw
	aDone                   sync.WaitGroup // A tasks still running
	privateA                bool           // each worker packs all of A itself (no A tasks)
}

var packedPool = sync.Pool{New: func() any { return new(packedTask) }}

func (t *packedTask) Range(_, _ int) {
	pr := archParams[t.arch]
	mr, nr := pr.mr, pr.nr
	var bb, ab, pa *packBuf
	for {
		i := int(t.next.Add(1) - 1)
		if i >= t.nTasks {
			break
		}
		if i < t.nA {
			t.packA(t.aPack, i/t.groups, i%t.groups, &ab)
			t.aDone.Done()
			continue
		}
		t.aDone.Wait() // free once A is packed; else another worker is finishing an A task
		if bb == nil {
			bb = getPackBuf(chunkBufFloats(t.mode, mr, nr, t.kc, t.maxChunkPanels))
		}
		aPack := t.aPack
		if t.privateA {
			// Every worker packs the whole (small) A for itself: no
			// packed panel crosses between cores' caches.
			if pa == nil {
				pa = getPackBuf(len(t.aPack))
				for s := 0; s*t.kc < t.k; s++ {
					for g := 0; g < t.groups; g++ {
						t.packA(pa.f, s, g, &ab)
					}
				}
			}
			aPack = pa.f
		}
		i -= t.nA
		// i walks a column chunk's row ranges consecutively.
		cc, rc := i/t.rowChunks, i%t.rowChunks
		q0, q1 := cc*t.panelsN/t.colChunks, (cc+1)*t.panelsN/t.colChunks
		r0, r1 := rc*t.panelsM/t.rowChunks, (rc+1)*t.panelsM/t.rowChunks
		// The chunk this worker probably takes next (exactly, with
		// one worker): its B is prefetched during the last slab.
		nq0, nq1 := 0, 0
		if nt := i + t.nWork; nt < t.rowChunks*t.colChunks {
			ncc := nt / t.rowChunks
			nq0, nq1 = ncc*t.panelsN/t.colChunks, (ncc+1)*t.panelsN/t.colChunks
		}
		gemmChunk(t.arch, t.mode, t.transB, t.n, t.k, t.kc, t.alpha, aPack, t.slabFloats, t.mcur, t.ic, r0, r1, t.b32, t.b16, t.ldb, q0, q1, nq0, nq1, t.beta, t.c, t.ldc, bb.f)
	}
	if bb != nil {
		putPackBuf(bb)
	}
	if ab != nil {
		putPackBuf(ab)
	}
	if pa != nil {
		putPackBuf(pa)
	}
}

// packA packs A task (slab s, group g of micro-panels) into aPack; *ab is
// the caller's scratch for dotHW's float32 panel (got on first use).
func (t *packedTask) packA(aPack []float32, s, g int, ab **packBuf) {
	mr := archParams[t.arch].mr
	pc := s * t.kc
	kcur := min(t.kc, t.k-pc)
	steps := t.mode.kSteps(kcur)
	for ip := g * t.groupPanels; ip < min(t.panelsM, (g+1)*t.groupPanels); ip++ {
		off := s*t.slabFloats + ip*steps*mr
		dst := aPack[off : off+steps*mr]
		rows := min(mr, t.mcur-ip*mr)
		switch t.mode {
		case dotHW:
			// float32 panel first, then pairs (an odd last k pairs
			// with a zero row).
			if *ab == nil {
				*ab = getPackBuf((t.kc + 1) * mr)
			}
			tmp := (*ab).f[:2*steps*mr]
			packAPanel(t.arch, tmp, t.a, t.lda, t.transA, t.ic+ip*mr, pc, rows, kcur)
			clear(tmp[kcur*mr:])
			pairBF16(dst, tmp, mr, steps)
		case dotRound:
			packAPanel(t.arch, dst, t.a, t.lda, t.transA, t.ic+ip*mr, pc, rows, kcur)
			roundBF16Slice(dst)
		default:
			packAPanel(t.arch, dst, t.a, t.lda, t.transA, t.ic+ip*mr, pc, rows, kcur)
		}
	}
}

// chunkBufFloats is the size of gemmChunk's buffer: the packed B of a
// chunk (panels micro-panels of one slab), for dotHW a float32 panel to
// pair from (kc+1 rows), and the MR x NR scratch tile.
func chunkBufFloats(mode dotMode, mr, nr, kc, panels int) int {
	n := panels*mode.kSteps(kc)*nr + mr*nr
	if mode == dotHW {
		n += (kc + 1) * nr
	}
	return n
}

// gemmChunk computes C rows ic + [r0*MR, min(r1*MR, mcur)) x columns
// [q0*NR, min(q1*NR, n)) over the whole depth k, from packed A (slab s at
// aPack[s*slabFloats:]) and op(B) packed here into buf (which also holds
// the MR x NR scratch tile for the right edge).
//
// Packing B reads it from memory, usually for the first time in the call,
// and would stall on it; so while the micro-kernels run on slab s they
// prefetch into L2 the source of slab s+1 (during the last slab: the first
// slab of B panels [nq0, nq1), the next chunk; none if nq0 == nq1).
func gemmChunk(arch gemmArch, mode dotMode, transB bool, n, k, kc int, alpha float32, aPack []float32, slabFloats, mcur, ic, r0, r1 int, b32 []float32, b16 []uint16, ldb int, q0, q1, nq0, nq1 int, beta float32, c []float32, ldc int, buf []float32) {
	pr := blocking(arch)
	mr, nr := pr.mr, pr.nr
	bPack := buf[:(q1-q0)*mode.kSteps(kc)*nr]
	scratch := buf[len(buf)-mr*nr:]
	var pf prefetchCursor
	for s, pc := 0, 0; pc < k; s, pc = s+1, pc+kc {
		kcur := min(kc, k-pc)
		steps := mode.kSteps(kcur)
		betaEff := beta
		if s > 0 {
			betaEff = 1
		}
		if mode == dotHW {
			tmp := buf[len(bPack) : len(bPack)+2*steps*nr]
			packBPairs(arch, bPack, tmp, transB, b32, b16, ldb, n, pc, kcur, q0, q1)
		} else if transB {
			for q := q0; q < q1; q++ {
				j0 := q * nr
				off := (q - q0) * kcur * nr
				packBPanelT(arch, bPack[off:off+kcur*nr], b32, b16, ldb, j0, pc, min(nr, n-j0), kcur)
			}
		} else {
			packBPanelsN(arch, nr, bPack, b32, b16, ldb, q0*nr, n, pc, kcur, q1-q0)
		}
		if mode == dotRound {
			roundBF16Slice(bPack[:(q1-q0)*kcur*nr])
		}
		switch {
		case pc+kc < k:
			pf = bSourceRegion(transB, b32, b16, ldb, n, nr, pc+kc, min(kc, k-pc-kc), q0, q1)
		case nq0 < nq1:
			pf = bSourceRegion(transB, b32, b16, ldb, n, nr, 0, kc, nq0, nq1)
		default:
			pf = prefetchCursor{}
		}
		// tile computes C's MR x NR tile of A micro-panel ip and B panel q
		// over this slab (a call is ~50k FLOPs; the closure costs nothing
		// measurable).
		tile := func(ip, q int) {
			rows := min(mr, mcur-ip*mr)
			ap := &aPack[s*slabFloats+ip*steps*mr]
			crow := (ic + ip*mr) * ldc
			j0 := q * nr
			bp := &bPack[(q-q0)*steps*nr]
			cp, ldcp, al, be := &c[crow+j0], ldc, alpha, betaEff
			cols := n - j0
			if cols < nr {
				cp, ldcp, al, be = &scratch[0], nr, 1, 0
			}
			if mode == dotHW {
				microKernelDot(rows, steps, ap, bp, cp, ldcp, al, be, &pf)
			} else {
				microKernel(arch, rows, kcur, ap, bp, cp, ldcp, al, be, &pf)
			}
			if cols < nr {
				mergeTile(rows, cols, scratch, nr, alpha, betaEff, c[crow+j0:], ldc)
			}
		}
		if rb := pr.rowBlock; rb > 0 {
			// B-panel-outer (gemmParams.rowBlock): each B micro-panel
			// stays in L1 while a block of rb A micro-panels streams
			// past it from L2.
			for b0 := r0; b0 < r1; b0 += rb {
				for q := q0; q < q1; q++ {
					for ip := b0; ip < min(r1, b0+rb); ip++ {
						tile(ip, q)
					}
				}
			}
		} else {
			// A-panel-outer: each A micro-panel stays in L1 while the
			// chunk's B panels stream past it from L2.
			for ip := r0; ip < r1; ip++ {
				for q := q0; q < q1; q++ {
					tile(ip, q)
				}
			}
		}
	}
}

// packBPairs packs op(B)[pc:pc+kcur, NR-panels q0..q1) into bPack as
// pair panels (dotHW): panel q at (q-q0)*steps*NR holds steps rows of NR
// dwords, each two bfloat16 of consecutive k. Hugging Face weights in
// bfloat16 (transB, even ldb and kcur) are already pairs in memory and are
// transposed as dwords; anything else is packed as float32 into tmp
// (2*steps*NR floats) and paired.
func packBPairs(arch gemmArch, bPack, tmp []float32, transB bool, b32 []float32, b16 []uint16, ldb, n, pc, kcur, q0, q1 int) {
	nr := archParams[arch].nr
	steps := (kcur + 1) / 2
	if transB && b16 != nil && ldb%2 == 0 && kcur%2 == 0 && pc%2 == 0 {
		words := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b16))), len(b16)/2)
		for q := q0; q < q1; q++ {
			j0 := q * nr
			off := (q - q0) * steps * nr
			packBPanelT(arch, bPack[off:off+steps*nr], words, nil, ldb/2, j0, pc/2, min(nr, n-j0), steps)
		}
		return
	}
	for q := q0; q < q1; q++ {
		j0 := q * nr
		if transB {
			packBPanelT(arch, tmp[:kcur*nr], b32, b16, ldb, j0, pc, min(nr, n-j0), kcur)
		} else {
			packBPanelsN(arch, nr, tmp[:kcur*nr], b32, b16, ldb, j0, n, pc, kcur, 1)
		}
		clear(tmp[kcur*nr:])
		off := (q - q0) * steps * nr
		pairBF16(bPack[off:off+steps*nr], tmp, nr, steps)
	}
}

// prefetchCursor is a region of memory the micro-kernels prefetch as they
// run: rows rows of rowBytes bytes each, stride bytes apart, walked line by
// line from (ptr, off). The kernels advance it in place; rows == 0 means
// nothing (left) to prefetch. Prefetches never fault, so a stale region
// costs bandwidth, not correctness.
type prefetchCursor struct {
	ptr      uintptr // start of the current row
	off      int     // byte offset of the next line within the row
	rowBytes int
	stride   int
	rows     int // rows left, the current one included
}

// bSourceRegion is the part of B that packing op(B)[pc:pc+kc, NR-panels
// q0..q1) will read: kc rows of the panels' width (B k x n), or the panels'
// columns' rows of B, kc elements each (transB: B n x k).
func bSourceRegion(transB bool, b32 []float32, b16 []uint16, ldb, n, nr, pc, kc, q0, q1 int) prefetchCursor {
	base, esz := uintptr(unsafe.Pointer(unsafe.SliceData(b32))), 4
	if b16 != nil {
		base, esz = uintptr(unsafe.Pointer(unsafe.SliceData(b16))), 2
	}
	j0 := q0 * nr
	cols := min(q1*nr, n) - j0
	if transB {
		return prefetchCursor{ptr: base + uintptr((j0*ldb+pc)*esz), rowBytes: kc * esz, stride: ldb * esz, rows: cols}
	}
	return prefetchCursor{ptr: base + uintptr((pc*ldb+j0)*esz), rowBytes: cols * esz, stride: ldb * esz, rows: kc}
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
