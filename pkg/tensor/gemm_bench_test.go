package tensor

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// Benchmarks for the shapes Switchyard runs, each reporting GFLOP/s
// (2*m*n*k per call). Threads() = GOMAXPROCS, so `-cpu 1,2` gives the
// single- and two-thread numbers; scripts/bench-gemm.sh compares them with
// OpenBLAS on the same shapes.
//
//	1024^3 NN / NT:     square, the classic comparison point.
//	64x2816x1024 NT:    an expert's FFN matmul for a 64-token batch with
//	                    Hugging Face weights W [N=2816, K=1024] (transB).
//	GEMV 1x2816x1024:   the same layer at decode time (m == 1), f32 and bf16.

type benchShape struct {
	name           string
	m, n, k        int
	transA, transB bool
	bf16           bool
}

var benchShapes = []benchShape{
	{name: "1024x1024x1024_NN", m: 1024, n: 1024, k: 1024},
	{name: "1024x1024x1024_NT", m: 1024, n: 1024, k: 1024, transB: true},
	{name: "64x2816x1024_NT", m: 64, n: 2816, k: 1024, transB: true},
	{name: "64x2816x1024_NT_bf16", m: 64, n: 2816, k: 1024, transB: true, bf16: true},
	{name: "1x2816x1024_NT", m: 1, n: 2816, k: 1024, transB: true},
	{name: "1x2816x1024_NT_bf16", m: 1, n: 2816, k: 1024, transB: true, bf16: true},
}

// benchGemmCall returns one call of Gemm (GemmBF16) on s's shape with
// random operands.
func benchGemmCall(s benchShape) func() {
	rng := rand.New(rand.NewPCG(1, 1))
	lda, ldb := s.k, s.n
	if s.transA {
		lda = s.m
	}
	if s.transB {
		ldb = s.k
	}
	a := make([]float32, s.m*s.k)
	bm := make([]float32, s.k*s.n)
	for i := range a {
		a[i] = rng.Float32() - 0.5
	}
	for i := range bm {
		bm[i] = rng.Float32() - 0.5
	}
	b16 := make([]uint16, len(bm))
	F32ToBF16(b16, bm)
	c := make([]float32, s.m*s.n)
	call := func() {
		if s.bf16 {
			GemmBF16(s.transA, s.transB, s.m, s.n, s.k, 1, a, lda, b16, ldb, 0, c, s.n)
		} else {
			Gemm(s.transA, s.transB, s.m, s.n, s.k, 1, a, lda, bm, ldb, 0, c, s.n)
		}
	}
	return call
}

func benchGemm(b *testing.B, s benchShape) {
	call := benchGemmCall(s)
	call()
	b.ResetTimer()
	for b.Loop() {
		call()
	}
	b.ReportMetric(2*float64(s.m)*float64(s.n)*float64(s.k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkGemmTileOrder compares the two loop orders over a chunk's
// tiles (gemmParams.rowBlock) on the kernel family Gemm picks: each
// iteration times one call A-panel-outer (rowBlock 0) and one call with
// this family's rowBlock (B-panel-outer, or rowBlock 16 where the family's
// own is 0), in alternating order, so load from other tenants hits both
// alike; it reports the median GFLOP/s of each and their ratio.
// Run with -test.benchtime 60x or more.
func BenchmarkGemmTileOrder(b *testing.B) {
	arch := gemmArch(activeArch.Load())
	blocked := archParams[arch].rowBlock
	if blocked == 0 {
		blocked = 16
	}
	shapes := append([]benchShape{{name: "512x2816x1024_NT_bf16", m: 512, n: 2816, k: 1024, transB: true, bf16: true}}, benchShapes[:3]...)
	for _, s := range shapes {
		b.Run(s.name, func(b *testing.B) {
			saved := archParams[arch].rowBlock
			defer func() { archParams[arch].rowBlock = saved }()
			// [0]: A-panel-outer, [1]: blocked
			med := pairedGFLOPS(b, s, func(o int) { archParams[arch].rowBlock = [2]int{0, blocked}[o] })
			b.ReportMetric(med[0], "A-outer-GFLOP/s")
			b.ReportMetric(med[1], fmt.Sprintf("rowBlock%d-GFLOP/s", blocked))
			b.ReportMetric(med[1]/med[0], "ratio")
		})
	}
}

// pairedGFLOPS times s's call under two settings call by call, set(0)
// and set(1) before each, alternating which goes first each iteration of
// b.Loop, so that load from other tenants hits both alike; it returns
// each setting's median GFLOP/s (2*m*n*k per call).
func pairedGFLOPS(b *testing.B, s benchShape, set func(o int)) [2]float64 {
	call := benchGemmCall(s)
	call()
	var secs [2][]float64
	for i := 0; b.Loop(); i++ {
		for j := range 2 {
			o := (i + j) % 2
			set(o)
			t0 := time.Now()
			call()
			secs[o] = append(secs[o], time.Since(t0).Seconds())
		}
	}
	flop := 2 * float64(s.m) * float64(s.n) * float64(s.k)
	var med [2]float64
	for o := range secs {
		slices.Sort(secs[o])
		med[o] = flop / secs[o][len(secs[o])/2] / 1e9
	}
	return med
}

// BenchmarkGemm runs the shapes on the kernel family Gemm picks on this CPU.
func BenchmarkGemm(b *testing.B) {
	for _, s := range benchShapes {
		b.Run(s.name, func(b *testing.B) { benchGemm(b, s) })
	}
}

// BenchmarkGemmArch runs the shapes on every supported kernel family.
func BenchmarkGemmArch(b *testing.B) {
	for _, a := range supportedArchs() {
		for _, s := range benchShapes {
			b.Run(fmt.Sprintf("%s/%s", a, s.name), func(b *testing.B) {
				defer forceArch(a)()
				benchGemm(b, s)
			})
		}
	}
}

// BenchmarkMicroKernel measures the register tile alone on L1/L2-resident
// packed panels (one full MR x NR tile, kc = 256, looping over 8 B panels
// as gemmPacked does): the ceiling the blocked GEMM can approach.
func BenchmarkMicroKernel(b *testing.B) {
	for _, a := range supportedArchs() {
		b.Run(a.String(), func(b *testing.B) { benchMicroKernel(b, a) })
	}
}

func benchMicroKernel(b *testing.B, a gemmArch) {
	pr := archParams[a]
	const kc, panels = 256, 8
	ap := make([]float32, kc*pr.mr)
	bp := make([]float32, panels*kc*pr.nr)
	c := make([]float32, pr.mr*pr.nr*panels)
	for i := range ap {
		ap[i] = 1e-3
	}
	for b.Loop() {
		for q := 0; q < panels; q++ {
			microKernel(a, pr.mr, kc, &ap[0], &bp[q*kc*pr.nr], &c[q*pr.nr], pr.nr*panels, 1, 1, &prefetchCursor{})
		}
	}
	b.ReportMetric(2*float64(pr.mr*pr.nr*kc*panels)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkGemmCompute runs the batched shapes under both compute modes
// side by side (exact float32 products, and ComputeBF16: VDPBF16PS where
// the CPU has AVX512_BF16), plus a 512-token prefill of one expert layer.
// GFLOP/s counts 2*m*n*k in both modes.
func BenchmarkGemmCompute(b *testing.B) {
	shapes := append([]benchShape{{name: "512x2816x1024_NT_bf16", m: 512, n: 2816, k: 1024, transB: true, bf16: true}}, benchShapes[:4]...)
	for _, s := range shapes {
		for _, c := range []Compute{ComputeExact, ComputeBF16} {
			b.Run(fmt.Sprintf("%s/%s", s.name, c), func(b *testing.B) {
				defer SetCompute(SetCompute(c))
				benchGemm(b, s)
			})
		}
	}
}

// BenchmarkMicroKernelDot is BenchmarkMicroKernel for kernDotAvx512 (kc
// = 256 pairs, 512 k): FLOP counts both products of a pair.
func BenchmarkMicroKernelDot(b *testing.B) {
	if !bf16DotSupported(gemmArch(activeArch.Load())) {
		b.Skip("no AVX512_BF16")
	}
	pr := archParams[archAVX512]
	const kc2, panels = 256, 8
	ap := make([]float32, kc2*pr.mr)
	bp := make([]float32, panels*kc2*pr.nr)
	c := make([]float32, pr.mr*pr.nr*panels)
	for b.Loop() {
		for q := 0; q < panels; q++ {
			microKernelDot(pr.mr, kc2, &ap[0], &bp[q*kc2*pr.nr], &c[q*pr.nr], pr.nr*panels, 1, 1, &prefetchCursor{})
		}
	}
	b.ReportMetric(4*float64(pr.mr*pr.nr*kc2*panels)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkGemmSlabs compares the AVX-512 GEMM's two blockings
// (gemmDeepSlabs: deep slabs and narrow chunks, or the shallow ones) call
// by call, alternating which goes first, on the square products, the
// 512-row prefill products, an expert's batches (16 to 200 rows, bf16
// weights [2816, 1024] and [1024, 2816]), two small products and the
// prefill products under --compute bf16. It reports each side's median
// GFLOP/s and their ratio (deep/shallow). GOMAXPROCS sets the threads.
// Run with -test.benchtime 40x or more.
func BenchmarkGemmSlabs(b *testing.B) {
	if gemmArch(activeArch.Load()) != archAVX512 {
		b.Skip("no AVX-512: one blocking")
	}
	type slabCase struct {
		benchShape
		mode Compute
	}
	var cases []slabCase
	add := func(mode Compute, shapes ...benchShape) {
		for _, s := range shapes {
			cases = append(cases, slabCase{s, mode})
		}
	}
	add(ComputeExact, benchShapes[0], benchShapes[1],
		benchShape{name: "2048x2048x2048_NN", m: 2048, n: 2048, k: 2048},
		benchShape{name: "512x2816x1024_NT_bf16", m: 512, n: 2816, k: 1024, transB: true, bf16: true},
		benchShape{name: "512x1024x2816_NT_bf16", m: 512, n: 1024, k: 2816, transB: true, bf16: true},
		benchShape{name: "16x1024x1024_NT_bf16", m: 16, n: 1024, k: 1024, transB: true, bf16: true},
		benchShape{name: "64x2816x1024_NT_bf16", m: 64, n: 2816, k: 1024, transB: true, bf16: true},
		benchShape{name: "64x1024x2816_NT_bf16", m: 64, n: 1024, k: 2816, transB: true, bf16: true},
		benchShape{name: "128x2816x1024_NT_bf16", m: 128, n: 2816, k: 1024, transB: true, bf16: true},
		benchShape{name: "200x1024x1024_NT_bf16", m: 200, n: 1024, k: 1024, transB: true, bf16: true},
		benchShape{name: "64x64x64_NN", m: 64, n: 64, k: 64},
		benchShape{name: "512x512x64_NT", m: 512, n: 512, k: 64, transB: true})
	if bf16DotSupported(archAVX512) {
		add(ComputeBF16,
			benchShape{name: "512x2816x1024_NT_bf16", m: 512, n: 2816, k: 1024, transB: true, bf16: true},
			benchShape{name: "128x2816x1024_NT_bf16", m: 128, n: 2816, k: 1024, transB: true, bf16: true})
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/%s", c.name, c.mode), func(b *testing.B) {
			defer SetCompute(SetCompute(c.mode))
			defer forceGemmSlabs(gemmDeepSlabs.Load())()
			// [0]: shallow, [1]: deep
			med := pairedGFLOPS(b, c.benchShape, func(o int) { gemmDeepSlabs.Store(o == 1) })
			b.ReportMetric(med[0], "shallow-GFLOP/s")
			b.ReportMetric(med[1], "deep-GFLOP/s")
			b.ReportMetric(med[1]/med[0], "deep/shallow")
		})
	}
}
