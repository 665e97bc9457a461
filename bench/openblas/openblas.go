//go:build openblas && cgo

package openblas

/*
#cgo LDFLAGS: -lopenblas

// Prototypes from OpenBLAS's cblas.h, declared here so the build does not
// depend on where the distribution puts the header. The CBLAS enums are
// ints: RowMajor = 101, NoTrans = 111, Trans = 112.
void cblas_sgemm(int order, int transA, int transB, int m, int n, int k,
	float alpha, const float *a, int lda, const float *b, int ldb,
	float beta, float *c, int ldc);
void cblas_sgemv(int order, int trans, int m, int n, float alpha,
	const float *a, int lda, const float *x, int incx, float beta,
	float *y, int incy);
void openblas_set_num_threads(int n);
int openblas_get_num_threads(void);
char *openblas_get_config(void);
char *openblas_get_corename(void);
*/
import "C"

const (
	rowMajor = 101
	noTrans  = 111
	trans    = 112
)

func tr(t bool) C.int {
	if t {
		return trans
	}
	return noTrans
}

// Sgemm is cblas_sgemm on row-major matrices with tensor.Gemm's argument
// order and contract: C = alpha*op(A)*op(B) + beta*C, C m x n. m, n, k >= 1.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	C.cblas_sgemm(rowMajor, tr(transA), tr(transB), C.int(m), C.int(n), C.int(k),
		C.float(alpha), (*C.float)(&a[0]), C.int(lda), (*C.float)(&b[0]), C.int(ldb),
		C.float(beta), (*C.float)(&c[0]), C.int(ldc))
}

// SgemvT is cblas_sgemv computing y = W x + beta*y, W n x k row-major
// (tensor.GemvT's contract).
func SgemvT(n, k int, w []float32, ldw int, x, y []float32, beta float32) {
	C.cblas_sgemv(rowMajor, noTrans, C.int(n), C.int(k), 1, (*C.float)(&w[0]), C.int(ldw),
		(*C.float)(&x[0]), 1, C.float(beta), (*C.float)(&y[0]), 1)
}

// SetThreads sets OpenBLAS's thread count (at most OPENBLAS_NUM_THREADS,
// or the core count, at library load).
func SetThreads(n int) { C.openblas_set_num_threads(C.int(n)) }

// Threads reports OpenBLAS's thread count.
func Threads() int { return int(C.openblas_get_num_threads()) }

// Config describes the loaded OpenBLAS: version/build flags and the core
// type whose kernels it runs (e.g. "SkylakeX").
func Config() string {
	return C.GoString(C.openblas_get_config()) + " core=" + C.GoString(C.openblas_get_corename())
}
