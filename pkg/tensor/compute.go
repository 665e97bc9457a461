package tensor

import (
	"fmt"
	"math"
	"os"
	"strings"
	"sync/atomic"
)

// Compute is the arithmetic of the packed matrix products: every Gemm and
// GemmBF16 call with at least two rows and two columns of C (prefill,
// batched decode, attention over several tokens, training's forward and
// backward). Single-row products (one token's decode: the GEMV path) and
// everything outside the matrix products (norms, softmax, activations,
// optimizer) are float32 in both modes.
type Compute int32

const (
	// ComputeExact multiplies and sums in float32 (weights stored as
	// bfloat16 are widened exactly). The default.
	ComputeExact Compute = iota
	// ComputeBF16 rounds both operands of each product to bfloat16
	// (nearest even; denormals to zero) and sums pairs of products into
	// float32 accumulators, as torch.autocast(dtype=bfloat16) matmuls do.
	// The kernels run VDPBF16PS on pair panels (half the packed bytes)
	// where the CPU has AVX512_BF16 and it is faster than the float32 FMA
	// (see bf16DotPreferred); elsewhere the same rounded operands run on
	// the float32 kernels (the same products, summed in another order).
	ComputeBF16
)

func (c Compute) String() string {
	switch c {
	case ComputeExact:
		return "exact"
	case ComputeBF16:
		return "bf16"
	}
	return fmt.Sprintf("Compute(%d)", int32(c))
}

// ParseCompute parses "exact" (or "f32", "") and "bf16".
func ParseCompute(s string) (Compute, error) {
	switch s {
	case "", "exact", "f32", "fp32":
		return ComputeExact, nil
	case "bf16":
		return ComputeBF16, nil
	}
	return 0, fmt.Errorf("tensor: unknown compute %q (want exact or bf16)", s)
}

// ComputeEnv names the environment variable that sets the compute mode at
// start-up ("exact" or "bf16"); worker processes started by serve and
// train inherit it. An invalid value is reported on stderr and ignored.
const ComputeEnv = "SWITCHYARD_COMPUTE"

var compute atomic.Int32 // a Compute

func init() {
	if v, ok := os.LookupEnv(ComputeEnv); ok {
		c, err := ParseCompute(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "switchyard: %s: %v; using exact\n", ComputeEnv, err)
			return
		}
		SetCompute(c)
	}
}

// SetCompute sets the compute mode of later matrix products in this
// process and returns the previous one. Safe to call at any time; calls
// already running finish in the mode they started in.
func SetCompute(c Compute) Compute {
	if c != ComputeExact && c != ComputeBF16 {
		panic(fmt.Sprintf("tensor: SetCompute(%d)", int32(c)))
	}
	return Compute(compute.Swap(int32(c)))
}

// CurrentCompute reports the mode set by SetCompute.
func CurrentCompute() Compute { return Compute(compute.Load()) }

// BF16KernelEnv names the environment variable that overrides which
// kernel ComputeBF16 runs where the CPU has AVX512_BF16: "vdpbf16ps" or
// "f32" (the float32 kernels on bf16-rounded operands). Both compute the
// same rounded products; they differ in summation order and speed.
const BF16KernelEnv = "SWITCHYARD_BF16_KERNEL"

// bf16DotPreferred says whether ComputeBF16 runs kernDotAvx512 where the
// CPU has it. VDPBF16PS does two products per lane, but on the Intel Xeon
// this was measured on (Sapphire Rapids class, no AMX exposed) it retires
// one per two cycles against two float32 FMAs per cycle:
// BenchmarkMicroKernelDot 88 GFLOP/s against BenchmarkMicroKernel 155 on
// one core, so the float32 kernels are faster there even on rounded
// operands. On AMD Zen 4 and 5 a 512-bit VDPBF16PS is one operation on
// paired 256-bit units at the FMA's rate (twice the FLOPs: on the Zen 5
// VM BenchmarkMicroKernelDot 396-400 GFLOP/s against BenchmarkMicroKernel
// 196-200, bench/results/bf16-amd.txt), so it is the default on AMD only;
// BF16KernelEnv overrides, and BenchmarkMicroKernelDot against
// BenchmarkMicroKernel settles it on any machine.
var bf16DotPreferred = kernelChoice{env: BF16KernelEnv, yes: "vdpbf16ps", no: "f32"}

// cpuVendor is the vendor_id of /proc/cpuinfo ("GenuineIntel",
// "AuthenticAMD"), or "" where there is none.
func cpuVendor() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "vendor_id" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// BF16DotKernel names the kernel ComputeBF16 runs on this CPU.
func BF16DotKernel() string {
	switch {
	case !bf16DotSupported(gemmArch(activeArch.Load())):
		return "float32 kernels on bf16-rounded operands (no AVX512_BF16)"
	case bf16DotPreferred.Load():
		return "avx512_bf16 VDPBF16PS"
	}
	return "float32 kernels on bf16-rounded operands (VDPBF16PS present but slower on this CPU; " + BF16KernelEnv + "=vdpbf16ps selects it)"
}

// roundBF16 is F32ToBF16One widened back, with denormals flushed to zero
// as VCVTNE2PS2BF16 and VDPBF16PS do.
func roundBF16(f float32) float32 {
	b := math.Float32bits(f)
	if b&0x7f800000 == 0 {
		return math.Float32frombits(b & 0x80000000)
	}
	return math.Float32frombits(uint32(F32ToBF16One(f)) << 16)
}

// roundBF16SliceGeneric applies roundBF16 in place.
func roundBF16SliceGeneric(x []float32) {
	for i, v := range x {
		x[i] = roundBF16(v)
	}
}

// pairBF16Generic is pairBF16Avx512 in Go: dword dst[s*width+j] holds
// bf16(src[2s*width+j]) low and bf16(src[(2s+1)*width+j]) high.
func pairBF16Generic(dst, src []float32, width, pairs int) {
	for s := 0; s < pairs; s++ {
		lo, hi := src[2*s*width:], src[(2*s+1)*width:]
		for j := 0; j < width; j++ {
			l := math.Float32bits(roundBF16(lo[j])) >> 16
			h := math.Float32bits(roundBF16(hi[j])) >> 16
			dst[s*width+j] = math.Float32frombits(h<<16 | l)
		}
	}
}
