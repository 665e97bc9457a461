// Package tensor holds the float32 compute kernels Switchyard's models run on:
// GEMM/GEMV (with Go-assembly micro-kernels for AVX-512 and AVX2/FMA picked at
// run time, and a portable Go fallback), RMSNorm, softmax, SiLU, RoPE (with
// YaRN and the other Hugging Face scalings), top-k, and bf16/f16 conversion.
//
// Conventions:
//   - Matrices are row-major flat []float32 slices with an explicit leading
//     dimension (elements between the starts of consecutive rows).
//   - Every fast kernel has a slow, obviously-correct reference named
//     <Kernel>Ref in the same package, and a table test comparing the two on
//     random shapes.
//   - Kernels never allocate on the hot path except where noted; shape
//     mismatches are programmer errors and panic.
//   - This package does no I/O and imports nothing from the network or
//     control planes.
package tensor
