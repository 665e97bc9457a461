package tensor

import (
	"fmt"
	"os"
	"sync/atomic"
)

// GemvOrderEnv overrides the order in which the single-token kernels (the
// AVX-512 GEMVs on float32 and bfloat16 rows, and the AVX-512 VNNI int8
// and 4-bit dot products) read the weight matrix: "sequential" (one row
// after the other: one memory stream) or "interleaved" (four rows at a
// time, sharing each load of x: four streams). The float GEMVs give the
// same bits in both orders and int8 is exact; the 4-bit kernels' float
// sums differ by rounding (the interleaved one's already did between its
// blocks of four rows and the rest). They differ in speed.
const GemvOrderEnv = "SWITCHYARD_GEMV_ORDER"

// gemvSequential says whether the row-sequential kernels run. Decode reads
// every weight once from memory, so its speed is how fast one core streams
// W. On the AMD EPYC (Zen 5) VM this project measures on, the bf16 GEMV
// over 1 GiB streams 27 GB/s row-sequentially against 18 interleaved on one
// core, 48-50 against 30-37 on two (bench/results/gemv-order.txt; a plain C read
// loop there gets ~30 GB/s from one stream and ~17 from four a row apart:
// the hardware prefetcher follows one stream best). The interleaved kernels
// were tuned on the Intel Xeon, where sharing x's loads won and the order
// has not been measured since. So the default is sequential on AMD and
// interleaved elsewhere; GemvOrderEnv overrides it.
var gemvSequential atomic.Bool

func init() {
	seq := cpuVendor() == "AuthenticAMD"
	switch v := os.Getenv(GemvOrderEnv); v {
	case "":
	case "sequential":
		seq = true
	case "interleaved":
		seq = false
	default:
		fmt.Fprintf(os.Stderr, "switchyard: %s=%q: want sequential or interleaved; keeping the default\n", GemvOrderEnv, v)
	}
	gemvSequential.Store(seq)
}

// GemvOrder names the order the single-token kernels read W in on this
// machine: "sequential" or "interleaved" (see GemvOrderEnv).
func GemvOrder() string {
	if gemvSequential.Load() {
		return "sequential"
	}
	return "interleaved"
}

// forceGemvOrder makes the kernels read W row-sequentially (seq) or four
// rows interleaved until the returned func restores the previous order.
// For tests and benchmarks.
func forceGemvOrder(seq bool) (restore func()) {
	old := gemvSequential.Swap(seq)
	return func() { gemvSequential.Store(old) }
}
