package tensor

import "sync"

// skinnyMaxM is the most rows of op(A) a transB product with bfloat16
// weights (a linear layer with Hugging Face weights W [n, k]) runs as a
// skinny product rather than through packed panels: W is streamed once,
// row by row, each of its lines meeting every row of A in L1, as the GEMV
// streams it for one row. Packing W into panels costs about as much as
// streaming it, and for a few rows it is most of the call. Batched decode
// and the experts of a small batch (a few rows each) are such products.
//
// One expert's 2816 x 1024 bf16 weights on the AMD EPYC, one thread, eight
// experts in turn so that W comes from memory (BenchmarkSkinny, two runs
// side by side, 2026-12-06; the GEMV of one row takes 0.18 ms; the latest
// run with its command is bench/results/skinny.txt):
//
//	rows   skinny ms    packed ms
//	   2   0.25         0.83-0.99
//	   4   0.40-0.50    0.85-0.93
//	   8   0.66-0.72    0.89-0.94
//	  12   0.76-0.81    0.95-1.03
//	  16   0.98-1.13    0.89-0.94   (two threads alike: packing wins from 16)
//
// On an AVX2 EPYC (Zen 3, bench/results/skinny-avx2.txt) the AVX2 kernels
// give 2 rows 0.43-0.46 ms against 1.09-1.16 packed and 12 rows 1.09-1.14
// against 1.47-1.50 (16 rows packed: 1.76-1.92).
const skinnyMaxM = 12

// skinnyGroup is the most rows one skinny kernel takes (the generator's
// skinnyMaxRows, AVX-512; skinnyGroupAvx2 is skinnyMaxRows256): larger m
// runs in groups of at most this many rows, each group streaming a block
// of W rows that the previous group left in L2.
const (
	skinnyGroup     = 8
	skinnyGroupAvx2 = 6
)

// useSkinny reports whether gemm runs C = alpha*A*W^T + beta*C (m x n,
// depth k) as a skinny product: AVX-512 or AVX2 kernels, m in [2,
// skinnyMaxM], k at least 16, and W in bfloat16 (the weights a served
// checkpoint holds). Under ComputeBF16 a product of one column stays
// exact, as everywhere (ComputeBF16 rounds the products of m, n >= 2).
//
// Float32 W keeps the packed path at every m >= 2, whose sums do not
// depend on m: training keeps float32 master weights, and a training step
// split over ranks hands an expert's owner other row counts than one
// process does; with skinny products below skinnyMaxM and packed above,
// the two would round differently and drift apart over the steps
// (pkg/transport's TestRemoteTrainingReproducesSingleProcess: 1e-5
// relative on the experts' weights after 12 AdamW steps; 3.8e-5 with f32
// skinny products).
func useSkinny(arch gemmArch, cm Compute, transA, transB bool, m, n, k int, b16 []uint16) bool {
	if (arch != archAVX512 && arch != archAVX2) || transA || !transB || m < 2 || m > skinnyMaxM || k < 16 || b16 == nil {
		return false
	}
	return cm != ComputeBF16 || n >= 2
}

// gemmSkinny is gemm for useSkinny's products on arch's kernels: C[m x n]
// = alpha * A W^T + beta*C with A m x k (lda) and W n x k bfloat16 (ldw).
// round (ComputeBF16) rounds A to bfloat16 first, as the packed path's
// dotRound does. Every row of C is arch's GEMV of its row of A bit for
// bit: a token's result does not depend on the others in its batch.
func gemmSkinny(arch gemmArch, round bool, m, n, k int, alpha float32, a []float32, lda int, w []uint16, ldw int, beta float32, c []float32, ldc int) {
	var ab *packBuf
	if round {
		ab = getPackBuf(m * k)
		for i := 0; i < m; i++ {
			copy(ab.f[i*k:(i+1)*k], a[i*lda:i*lda+k])
		}
		roundBF16Slice(ab.f[:m*k])
		a, lda = ab.f, k
	}
	// The kernels' columns (the rest is gemvAddTail's, as for the GEMV)
	// and the x chunk: AVX-512 reads lines of 32 (a tail of 16 taking a
	// chunk of 32 slots), AVX2 chunks of 16 (a tail of 8 taking 16).
	kMain, chunk, group := k&^15, 32, skinnyGroup
	if arch == archAVX2 {
		kMain, chunk, group = k&^7, 16, skinnyGroupAvx2
	}
	perRow := ceilDiv(kMain, chunk) * chunk
	xb := getPackBuf(perRow * m)
	t := skinnyPool.Get().(*skinnyTask)
	*t = skinnyTask{arch: arch, k: k, kMain: kMain, alpha: alpha, beta: beta, a: a, lda: lda, w: w, ldw: ldw, c: c, ldc: ldc}
	// Groups of at most group rows, as even as can be (at least 2 rows
	// each: the kernels start at 2).
	t.ngroups = ceilDiv(m, group)
	for g := 0; g < t.ngroups; g++ {
		i0, i1 := g*m/t.ngroups, (g+1)*m/t.ngroups
		xs := xb.f[i0*perRow : i1*perRow]
		t.groups[g] = skinnyRows{i0: i0, i1: i1, xs: xs}
		interleaveX(xs, a, lda, i0, i1, kMain, chunk)
	}
	// As gemvT: each goroutine streams at least ~256 KB of W.
	ParallelRange(n, max(4, (128<<10)/k), t)
	*t = skinnyTask{}
	skinnyPool.Put(t)
	putPackBuf(xb)
	if ab != nil {
		putPackBuf(ab)
	}
}

// interleaveX writes rows [i0, i1) of A (their first kMain columns) into
// dst in the skinny kernels' layout: chunk q of row i at (q*(i1-i0) +
// i-i0)*chunk. AVX-512's chunk is 32 floats as evenOddAvx512 lays them
// out (16 even elements, then 16 odd), or a last 16 (kMain % 32 == 16) as
// they are; AVX2's is 16 floats as they are.
func interleaveX(dst []float32, a []float32, lda, i0, i1, kMain, chunk int) {
	rows := i1 - i0
	for i := i0; i < i1; i++ {
		x := a[i*lda : i*lda+kMain]
		for q, p0 := 0, 0; p0 < kMain; q, p0 = q+1, p0+chunk {
			d := dst[(q*rows+i-i0)*chunk:][:chunk]
			if p0+32 > kMain || chunk != 32 {
				copy(d, x[p0:min(p0+chunk, kMain)])
				continue
			}
			for j := 0; j < 16; j++ {
				d[j], d[16+j] = x[p0+2*j], x[p0+2*j+1]
			}
		}
	}
}

// skinnyRows is one group of rows of A, [i0, i1), interleaved in xs.
type skinnyRows struct {
	i0, i1 int
	xs     []float32
}

// skinnyTask is one gemmSkinny call, the ParallelRange body over rows of
// W (columns of C). Pooled, so that a steady stream of products
// allocates nothing.
type skinnyTask struct {
	arch        gemmArch
	k, kMain    int
	alpha, beta float32
	a           []float32
	lda         int
	w           []uint16
	ldw         int
	c           []float32
	ldc         int
	groups      [skinnyMaxGroups]skinnyRows
	ngroups     int
}

// skinnyMaxGroups is ceil(skinnyMaxM / skinnyGroupAvx2): the most groups
// of rows.
const skinnyMaxGroups = (skinnyMaxM + skinnyGroupAvx2 - 1) / skinnyGroupAvx2

var skinnyPool = sync.Pool{New: func() any { return new(skinnyTask) }}

// Range computes columns [lo, hi) of C, gemvChunkRows rows of W at a time:
// every group of rows of A meets a block before the next block is read.
func (t *skinnyTask) Range(lo, hi int) {
	var buf [skinnyGroup * gemvChunkRows]float32
	for r0 := lo; r0 < hi; r0 += gemvChunkRows {
		rows := min(gemvChunkRows, hi-r0)
		w := t.w[r0*t.ldw:]
		for _, g := range t.groups[:t.ngroups] {
			skinnyDots(t.arch, g.i1-g.i0, rows, t.kMain, w, t.ldw, g.xs, buf[:])
			for i := g.i0; i < g.i1; i++ {
				out := buf[(i-g.i0)*gemvChunkRows:][:rows]
				if t.kMain < t.k {
					gemvAddTail(rows, t.kMain, t.k, nil, w, t.ldw, t.a[i*t.lda:i*t.lda+t.k], out)
				}
				cr := t.c[i*t.ldc+r0 : i*t.ldc+r0+rows]
				for j, s := range out {
					if t.beta == 0 {
						cr[j] = t.alpha * s
					} else {
						cr[j] = t.alpha*s + t.beta*cr[j]
					}
				}
			}
		}
	}
}
