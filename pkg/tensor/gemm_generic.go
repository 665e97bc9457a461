package tensor

import (
	"math"
	"unsafe"
)

// Portable Go kernels: the fallback on CPUs without AVX2/FMA and on other
// architectures, and the variant the tests compare the assembly against.
// Tile: genericMR x genericNR = 4 x 4, sixteen scalar accumulators, which
// is what the Go compiler keeps in registers on amd64 (16 X registers).
const (
	genericMR = 4
	genericNR = 4
)

// kernelGeneric computes C[rows x 4] = alpha * Apanel * Bpanel + beta * C
// (beta == 0: C write-only) on packed panels (see pack.go) with MR = NR = 4.
func kernelGeneric(rows, kc int, a, b, c *float32, ldc int, alpha, beta float32) {
	const mr, nr = genericMR, genericNR
	ap := unsafe.Slice(a, kc*mr)
	bp := unsafe.Slice(b, kc*nr)
	var acc [mr][nr]float32
	if rows == mr {
		var c00, c01, c02, c03, c10, c11, c12, c13 float32
		var c20, c21, c22, c23, c30, c31, c32, c33 float32
		for p := 0; p < kc; p++ {
			av := ap[p*mr : p*mr+mr : p*mr+mr]
			bv := bp[p*nr : p*nr+nr : p*nr+nr]
			b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
			a0 := av[0]
			c00 += a0 * b0
			c01 += a0 * b1
			c02 += a0 * b2
			c03 += a0 * b3
			a1 := av[1]
			c10 += a1 * b0
			c11 += a1 * b1
			c12 += a1 * b2
			c13 += a1 * b3
			a2 := av[2]
			c20 += a2 * b0
			c21 += a2 * b1
			c22 += a2 * b2
			c23 += a2 * b3
			a3 := av[3]
			c30 += a3 * b0
			c31 += a3 * b1
			c32 += a3 * b2
			c33 += a3 * b3
		}
		acc = [mr][nr]float32{
			{c00, c01, c02, c03},
			{c10, c11, c12, c13},
			{c20, c21, c22, c23},
			{c30, c31, c32, c33},
		}
	} else {
		for p := 0; p < kc; p++ {
			bv := bp[p*nr : p*nr+nr]
			for i := 0; i < rows; i++ {
				av := ap[p*mr+i]
				for j, x := range bv {
					acc[i][j] += av * x
				}
			}
		}
	}
	cs := unsafe.Slice(c, (rows-1)*ldc+nr)
	for i := 0; i < rows; i++ {
		row := cs[i*ldc : i*ldc+nr]
		for j := range row {
			if beta == 0 {
				row[j] = alpha * acc[i][j]
			} else {
				row[j] = alpha*acc[i][j] + beta*row[j]
			}
		}
	}
}

// gemvDotsGeneric sets out[r] = sum_{p<k} w[r*ldw+p]*x[p] for r < rows with
// float32 (w32) or bfloat16 (w16) rows of W.
func gemvDotsGeneric(rows, k int, w32 []float32, w16 []uint16, ldw int, x []float32, out []float32) {
	clear(out[:rows])
	gemvAddTail(rows, 0, k, w32, w16, ldw, x, out)
}

// gemvAddTail adds sum_{p0<=p<k} w[r*ldw+p]*x[p] to out[r] for r < rows.
// Four partial sums per row keep the adds independent.
func gemvAddTail(rows, p0, k int, w32 []float32, w16 []uint16, ldw int, x []float32, out []float32) {
	xs := x[p0:k]
	for r := 0; r < rows; r++ {
		var s0, s1, s2, s3 float32
		if w16 != nil {
			w := w16[r*ldw+p0 : r*ldw+k]
			w = w[:len(xs)]
			q := 0
			for ; q+4 <= len(xs); q += 4 {
				s0 += math.Float32frombits(uint32(w[q])<<16) * xs[q]
				s1 += math.Float32frombits(uint32(w[q+1])<<16) * xs[q+1]
				s2 += math.Float32frombits(uint32(w[q+2])<<16) * xs[q+2]
				s3 += math.Float32frombits(uint32(w[q+3])<<16) * xs[q+3]
			}
			for ; q < len(xs); q++ {
				s0 += math.Float32frombits(uint32(w[q])<<16) * xs[q]
			}
		} else {
			w := w32[r*ldw+p0 : r*ldw+k]
			w = w[:len(xs)]
			q := 0
			for ; q+4 <= len(xs); q += 4 {
				s0 += w[q] * xs[q]
				s1 += w[q+1] * xs[q+1]
				s2 += w[q+2] * xs[q+2]
				s3 += w[q+3] * xs[q+3]
			}
			for ; q < len(xs); q++ {
				s0 += w[q] * xs[q]
			}
		}
		out[r] += (s0 + s1) + (s2 + s3)
	}
}

// bf16ToF32One widens one bfloat16 value exactly.
func bf16ToF32One(v uint16) float32 { return math.Float32frombits(uint32(v) << 16) }
