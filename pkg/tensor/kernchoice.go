package tensor

import (
	"fmt"
	"os"
	"sync/atomic"
)

// GemvOrderEnv overrides the order in which the single-token kernels (the
// AVX-512 and AVX2 GEMVs on float32 and bfloat16 rows, and the AVX-512
// VNNI and AVX2 int8 and 4-bit dot products) read the weight matrix:
// "sequential" (one row after the other: one memory stream) or
// "interleaved" (four rows at a time, sharing each load of x: four
// streams). The float GEMVs and the AVX2 4-bit kernels give the same bits
// in both orders and int8 is exact; the AVX-512 4-bit kernels' float sums
// differ by rounding (the interleaved one's already did between its blocks
// of four rows and the rest). They differ in speed.
const GemvOrderEnv = "SWITCHYARD_GEMV_ORDER"

// gemvSequential says whether the row-sequential kernels run. Decode reads
// every weight once from memory, so its speed is how fast one core streams
// W. On the AMD EPYC (Zen 5) VM this project measures on, the bf16 GEMV
// over 1 GiB streams 27 GB/s row-sequentially against 18 interleaved on one
// core, 48-50 against 30-37 on two (bench/results/gemv-order.txt; a plain C read
// loop there gets ~30 GB/s from one stream and ~17 from four a row apart:
// the hardware prefetcher follows one stream best). The interleaved kernels
// were tuned on the Intel Xeon, where sharing x's loads won and the order
// has not been measured since. On an AMD EPYC Zen 3 VM (AVX2 only) the
// AVX2 bf16 GEMV streamed 11.4 GB/s interleaved and 18 sequential (with
// software prefetch, gemvSeqPrefetch256) on one core
// (bench/results/gemv-order-avx2.txt). So the default is sequential on
// AMD and interleaved elsewhere; GemvOrderEnv overrides it.
var gemvSequential = kernelChoice{env: GemvOrderEnv, yes: "sequential", no: "interleaved"}

// kernelChoice is a choice between two kernels that compute the same
// thing, made once at start-up: true (the kernel named yes) on AMD CPUs
// and false (no) elsewhere, unless the environment variable env names one
// of them.
type kernelChoice struct {
	atomic.Bool
	env, yes, no string
}

// choices lists every kernelChoice, for init.
var choices = []*kernelChoice{&gemvSequential, &gemmRegBroadcast, &bf16DotPreferred, &gemmDeepSlabs}

func init() {
	amd := cpuVendor() == "AuthenticAMD"
	for _, c := range choices {
		c.Store(envChoice(c.env, c.yes, c.no, amd))
	}
}

// envChoice is def unless the environment variable env is yes (true) or
// no (false); any other value is reported on stderr and ignored.
func envChoice(env, yes, no string, def bool) bool {
	switch v := os.Getenv(env); v {
	case "":
	case yes:
		return true
	case no:
		return false
	default:
		fmt.Fprintf(os.Stderr, "switchyard: %s=%q: want %s or %s; keeping the default\n", env, v, yes, no)
	}
	return def
}

// name is the chosen kernel's name: c.yes or c.no.
func (c *kernelChoice) name() string {
	if c.Load() {
		return c.yes
	}
	return c.no
}

// force sets the choice to v until the returned func restores the
// previous one. For tests and benchmarks.
func (c *kernelChoice) force(v bool) (restore func()) {
	old := c.Swap(v)
	return func() { c.Store(old) }
}

// GemvOrder names the order the single-token kernels read W in on this
// machine: "sequential" or "interleaved" (see GemvOrderEnv).
func GemvOrder() string { return gemvSequential.name() }

// forceGemvOrder makes the kernels read W row-sequentially (seq) or four
// rows interleaved until the returned func restores the previous order.
func forceGemvOrder(seq bool) (restore func()) { return gemvSequential.force(seq) }

// GemmBroadcastEnv overrides how the AVX-512 GEMM micro-kernels (float32
// and VDPBF16PS) feed A to their FMAs: "register" (each A scalar broadcast
// once into a register that its row's two FMAs read) or "embedded" (each
// FMA broadcasts it from memory itself: one instruction fewer per row, one
// load more). Both compute the same bits in the same order.
const GemmBroadcastEnv = "SWITCHYARD_GEMM_BROADCAST"

// gemmRegBroadcast says whether the register-broadcast micro-kernels run.
// On the AMD EPYC (Zen 5) VM, BenchmarkMicroKernel gives 216 GFLOP/s with
// them against 199 embedded on one core, BenchmarkMicroKernelDot 438-443
// against 381-397: there the loads, not the FMAs, bound the embedded
// kernel (30 loads per 28 FMAs). On the Intel Xeon the embedded form
// measured ~10% faster when the kernels were written and has not been
// measured since. So the default is register on AMD and embedded
// elsewhere; GemmBroadcastEnv overrides it.
var gemmRegBroadcast = kernelChoice{env: GemmBroadcastEnv, yes: "register", no: "embedded"}

// GemmBroadcast names how the AVX-512 GEMM micro-kernels broadcast A on
// this machine: "register" or "embedded" (see GemmBroadcastEnv).
func GemmBroadcast() string { return gemmRegBroadcast.name() }

// forceGemmBroadcast selects the register-broadcast (reg) or embedded
// micro-kernels until the returned func restores the previous choice.
func forceGemmBroadcast(reg bool) (restore func()) { return gemmRegBroadcast.force(reg) }

// GemmSlabsEnv overrides the cache blocking of the AVX-512 GEMM: "deep"
// (slabs up to 2048 deep, chunks of one B micro-panel: avx512Deep) or
// "shallow" (slabs of 256, chunks of 256 columns: archParams). They differ
// in the order float32 rounding adds the slabs' partial sums, and in
// speed.
const GemmSlabsEnv = "SWITCHYARD_GEMM_SLABS"

// gemmDeepSlabs says whether the AVX-512 GEMM runs the deep blocking: by
// default on AMD, where it measured 1.02-1.20x the shallow one on a Zen 5
// VM on every product timed but the two smallest, which it left level
// (see avx512Deep); the shallow one was tuned on the Intel Xeon and has
// not been compared there since.
var gemmDeepSlabs = kernelChoice{env: GemmSlabsEnv, yes: "deep", no: "shallow"}

// GemmSlabs names the AVX-512 GEMM's blocking on this machine: "deep" or
// "shallow" (see GemmSlabsEnv).
func GemmSlabs() string { return gemmDeepSlabs.name() }

// forceGemmSlabs selects the deep (true) or shallow blocking until the
// returned func restores the previous choice.
func forceGemmSlabs(deep bool) (restore func()) { return gemmDeepSlabs.force(deep) }

// KernelConfig describes the kernels this machine runs, for benchmark
// headers: the GEMM family, how its AVX-512 micro-kernels broadcast A and
// which blocking it runs, and the order the single-token kernels read W
// in.
func KernelConfig() string {
	arch := gemmArch(activeArch.Load())
	s := "gemm " + arch.String()
	if arch == archAVX512 {
		s += " (A broadcast: " + GemmBroadcast() + ", slabs: " + GemmSlabs() + ")"
	}
	return s + ", gemv order " + GemvOrder()
}
