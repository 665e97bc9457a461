package tensor

import (
	"math"
	"math/bits"
	"sync"
	"unsafe"
)

// Packed panel layouts (BLIS/GotoBLAS style), shared by every kernel family:
//
//	A micro-panel: rows (<= MR) rows of op(A) x kc columns, stored k-major:
//	    panel[p*MR + i] = op(A)[i0+i, p0+p]. Rows rows..MR-1 are never read
//	    (the micro-kernels come in one variant per tile height), so they are
//	    left as whatever the buffer held.
//	B micro-panel: kc rows of op(B) x cols (<= NR) columns, stored k-major:
//	    panel[p*NR + j] = op(B)[p0+p, j0+j], zero for cols <= j < NR.
//
// With these layouts the micro-kernel walks both panels strictly
// sequentially: per k step it loads NR/16 (AVX-512) vectors of B and
// broadcasts MR scalars of A. Packing also absorbs the transposes (all four
// transA/transB combinations read the same panels) and the bf16 -> f32
// widening of B.

// packAPanelGeneric is the portable A packer (layout above) for tile height mr.
func packAPanelGeneric(mr int, dst []float32, a []float32, lda int, transA bool, i0, p0, rows, kc int) {
	_ = dst[(kc-1)*mr+rows-1]
	if !transA { // A is m x k: row i0+i is contiguous in p
		for i := 0; i < rows; i++ {
			src := a[(i0+i)*lda+p0 : (i0+i)*lda+p0+kc]
			for p, v := range src {
				dst[p*mr+i] = v
			}
		}
		return
	}
	for p := 0; p < kc; p++ { // A is k x m: row p0+p is contiguous in i
		copy(dst[p*mr:p*mr+rows], a[(p0+p)*lda+i0:(p0+p)*lda+i0+rows])
	}
}

// packBPanelTGeneric is the portable packer (layout above) of one
// NR-column micro-panel of op(B) = B^T, B n x k with rows contiguous in k.
func packBPanelTGeneric(nr int, dst []float32, b32 []float32, b16 []uint16, ldb int, j0, p0, cols, kc int) {
	_ = dst[kc*nr-1]
	packBTransEdge(nr, dst, b32, b16, ldb, j0, p0, 0, cols, nr, 0, kc)
}

// packBTransEdge packs panel columns h..h+width-1 for depth steps
// pStart..kc-1 from transposed B (n x k, rows contiguous in k): column h+j
// comes from source row j0+h+j for j < rows, the rest are zero.
func packBTransEdge(nr int, dst []float32, b32 []float32, b16 []uint16, ldb int, j0, p0, h, rows, width, pStart, kc int) {
	for j := 0; j < rows; j++ {
		off := (j0+h+j)*ldb + p0
		if b16 != nil {
			src := b16[off+pStart : off+kc]
			for q, v := range src {
				dst[(pStart+q)*nr+h+j] = math.Float32frombits(uint32(v) << 16)
			}
		} else {
			src := b32[off+pStart : off+kc]
			for q, v := range src {
				dst[(pStart+q)*nr+h+j] = v
			}
		}
	}
	if rows < width {
		for p := pStart; p < kc; p++ {
			clear(dst[p*nr+h+rows : p*nr+h+width])
		}
	}
}

// packBuf is a pooled packing buffer; f is 64-byte aligned so vector loads
// of packed panels never split cache lines.
type packBuf struct {
	raw   []float32
	f     []float32
	class int // index into packPools: len(raw) == packClassFloats(class)
}

// Packing buffers are pooled by size class: class c holds buffers of
// 2^(c+minPackClass) floats (the 16 floats of alignment slack included),
// so a Get finds a buffer at least as large as it needs whenever one of
// its class was put back. One pool of mixed sizes handed small buffers to
// large requests, which then allocated afresh; as the 4.6 GB of weights
// of bench/decode's model keep the next GC far off, every such buffer was
// new memory, paid for in page faults: a steady 512-token prefill took
// 4.3-6.9 thousand at 2 threads (about 15 us each on the 2-vCPU AMD EPYC
// Zen 5 VM, 2026-12-07), 0-300 with the pools by class. Rounding up to a
// power of two costs at most 2x the memory of the buffers in use.
const (
	minPackClass = 10 // 1K floats
	numPackClass = 22 // up to 2^31 floats
)

var packPools [numPackClass]sync.Pool // of *packBuf

// packClass is the smallest class whose buffers hold n floats and the
// 16-float alignment slack.
func packClass(n int) int {
	c := bits.Len(uint(n+16-1)) - minPackClass
	return max(c, 0)
}

func packClassFloats(c int) int { return 1 << (c + minPackClass) }

// getPackBuf returns a buffer with len(f) == n; release it with putPackBuf.
// Buffers are recycled, so steady-state Gemm calls do not allocate them.
func getPackBuf(n int) *packBuf {
	c := packClass(n)
	if c >= numPackClass {
		panic("tensor: packing buffer too large")
	}
	pb, _ := packPools[c].Get().(*packBuf)
	if pb == nil {
		pb = &packBuf{raw: make([]float32, packClassFloats(c)), class: c}
	}
	off := 0
	if mis := uintptr(unsafe.Pointer(&pb.raw[0])) & 63; mis != 0 {
		off = int(64-mis) / 4
	}
	pb.f = pb.raw[off : off+n]
	return pb
}

func putPackBuf(pb *packBuf) {
	pb.f = nil
	packPools[pb.class].Put(pb)
}

// packBPanelsN packs panels consecutive NR-column micro-panels of
// non-transposed B (k x n, rows contiguous in j) starting at column j0 into
// dst (panel q at dst[q*kc*nr:]), zero-filling past column n. It walks B
// row by row, so each row segment of the chunk is read sequentially; packing
// one panel at a time would instead touch kc rows for every 128 bytes.
func packBPanelsN(arch gemmArch, nr int, dst []float32, b32 []float32, b16 []uint16, ldb, j0, n, p0, kc, panels int) {
	width := min(panels*nr, n-j0)
	full := width / nr // panels without a ragged edge
	for p := 0; p < kc; p++ {
		off := (p0+p)*ldb + j0
		q := 0
		if b16 == nil && scatterRow(arch, dst[p*nr:], kc*nr, b32[off:off+full*nr], full) {
			q = full
		}
		for ; q < panels; q++ {
			d := dst[q*kc*nr+p*nr : q*kc*nr+p*nr+nr]
			cols := min(nr, width-q*nr)
			if b16 != nil {
				widenBF16(arch, d[:cols], b16[off+q*nr:off+q*nr+cols])
			} else {
				copy(d[:cols], b32[off+q*nr:off+q*nr+cols])
			}
			clear(d[cols:])
		}
	}
}

// Scratch is a pooled float32 buffer from the packing buffers' size-class
// pools, for callers outside the package whose scratch size varies from
// call to call (an expert's rows): a Get of a size seen before reuses a
// buffer rather than allocating fresh memory. Floats is 64-byte aligned.
type Scratch packBuf

// GetScratch returns a buffer of n floats (contents undefined); give it back
// with PutScratch once no slice of it is in use.
func GetScratch(n int) *Scratch { return (*Scratch)(getPackBuf(n)) }

// PutScratch returns s to its pool.
func PutScratch(s *Scratch) { putPackBuf((*packBuf)(s)) }

// Floats is the buffer: n floats as asked of GetScratch.
func (s *Scratch) Floats() []float32 { return s.f }
