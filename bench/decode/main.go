// Command decode measures single-sequence decode throughput of a generated
// MoE model and compares it with the memory-bandwidth bound measured in the
// same run.
//
// Decode of one sequence is bound by streaming weights: every step reads the
// dense weights (attention, norms, router, lm_head) and the K experts each
// MoE layer routes to. bound = copy bandwidth / weight bytes read per token.
// Copy bandwidth follows STREAM's convention: (bytes read + bytes written)
// per second of copy(dst, src) over buffers far larger than the caches, best
// of several runs, with as many goroutines as GOMAXPROCS. Decode only reads,
// and a read-only stream moves fewer bytes per second than a copy's reads
// plus writes, so the run also reports the weight-stream bandwidth (the bf16
// GEMV kernel alone over 1 GiB) and the bound it implies.
//
// With -formats (default bf16,int8,q4) the same model decodes with its
// routed experts as loaded (bf16) and quantized as serve --quantize does,
// in interleaved rounds, and the table gives each format's tokens/s, the
// fraction of its own bandwidth bound (its bytes per token are smaller) and
// its speed-up over bf16.
//
// With -prefill N each round also times one forward of an N-token prompt
// (pseudo-random token ids, one batch: prefill) per format. With -brief the
// run prints only machine-readable lines, one per measurement, and skips
// the bandwidth measurements (unless -copybw), the table and the profiled
// pass; -formats may then be any list. scripts/bench-peers.sh runs it so,
// one measurement per process, interleaved with llama.cpp's. Each decode
// and prefill line ends with the measurement's wall and process CPU
// seconds (getrusage: every thread, the kernel pool's spinning included;
// scripts/bench-scaling.sh reads them):
//
//	switchyard: threads=2 format=bf16 round=1 decode_tokens=32 decode_tok_s=33.10 decode_wall_s=0.9668 decode_cpu_s=1.9302
//	switchyard: threads=2 format=bf16 compute=exact round=1 prefill_tokens=512 prefill_tok_s=150.2 attention_ms=... prefill_wall_s=3.4088 prefill_cpu_s=6.7012
//	switchyard: format=bf16 bytes_per_token=661700000
//	switchyard: threads=2 copy_bw_gbs=28.42
//
// Usage:
//
//	go run ./bench/decode [-dir DIR] [-tokens N] [-formats bf16,int8,q4] [-rounds R]
//	    [-prefill N] [-compute exact|bf16] [-threads T] [-brief [-copybw]]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tensor"
)

func main() {
	dir := flag.String("dir", filepath.Join(os.TempDir(), "switchyard-bench-decode"), "where the generated model lives (created if missing)")
	tokens := flag.Int("tokens", 32, "tokens to decode")
	layers := flag.Int("layers", 8, "decoder layers")
	hidden := flag.Int("hidden", 1024, "hidden size")
	experts := flag.Int("experts", 32, "routed experts per layer")
	topk := flag.Int("topk", 4, "experts per token")
	inter := flag.Int("inter", 2816, "expert intermediate size")
	vocab := flag.Int("vocab", 32000, "vocabulary size")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the timed decode steps (with -brief: of every timed measurement, prefill included)")
	formatList := flag.String("formats", "bf16,int8,q4", "routed-expert formats to decode with, side by side: bf16 (as loaded) first, then --quantize values")
	rounds := flag.Int("rounds", 3, "interleaved rounds over the formats")
	prefill := flag.Int("prefill", 0, "also time one forward of a prompt of this many tokens per format and round (0: no prefill)")
	threads := flag.Int("threads", 0, "set GOMAXPROCS (the kernels' threads) to this (0: leave it)")
	brief := flag.Bool("brief", false, "print only machine-readable lines (\"switchyard: ...\"), after an untimed warm-up; no table, no profile, no bandwidths unless -copybw")
	copyBW := flag.Bool("copybw", false, "with -brief: measure the copy bandwidth and print it")
	computeName := flag.String("compute", "exact", "arithmetic of the batched products (prefill): exact or bf16 (tensor.ComputeBF16); single-token decode is exact in both")
	flag.Parse()
	compute, err := tensor.ParseCompute(*computeName)
	if err != nil {
		fail(err)
	}
	tensor.SetCompute(compute)
	if *threads > 0 {
		runtime.GOMAXPROCS(*threads)
	}

	hf := map[string]any{
		"model_type": "mixtral", "vocab_size": *vocab, "hidden_size": *hidden,
		"intermediate_size": *inter, "num_hidden_layers": *layers,
		"num_attention_heads": *hidden / 64, "num_key_value_heads": *hidden / 256,
		"num_local_experts": *experts, "num_experts_per_tok": *topk,
		"max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
		"rope_theta": 1e6, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
	}
	if _, err := os.Stat(filepath.Join(*dir, "config.json")); err != nil {
		fmt.Fprintf(os.Stderr, "generating model in %s ...\n", *dir)
		t0 := time.Now()
		if _, err := model.Synthesize(*dir, hf, model.SynthOptions{Seed: 1, DType: "BF16", Std: 0.02, MaxShardBytes: 2 << 30}); err != nil {
			fail(err)
		}
		fmt.Fprintf(os.Stderr, "generated in %v\n", time.Since(t0).Round(time.Second))
	}
	ck, err := model.Open(*dir)
	if err != nil {
		fail(err)
	}
	defer ck.Close()
	m, err := ck.Load(model.LoadOptions{KeepBF16: true})
	if err != nil {
		fail(err)
	}
	c := m.Cfg
	formats, err := parseFormats(*formatList, *brief)
	if err != nil {
		fail(err)
	}

	// One model per format: the same dense weights, the routed experts as
	// loaded (bf16) or quantized from them, as serve --quantize does.
	bf16Store := m.Experts.(*expert.Store)
	type variant struct {
		name     string
		m        *model.Model
		perToken int64 // weight bytes read per decode token
		tps      []float64
	}
	var vs []*variant
	for _, f := range formats {
		mv := m
		if f != tensor.QNone {
			t0 := time.Now()
			qs, err := quantizeStore(bf16Store, f)
			if err != nil {
				fail(err)
			}
			cp := *m
			cp.Experts = qs
			mv = &cp
			fmt.Fprintf(os.Stderr, "quantized the routed experts to %v in %v\n", f, time.Since(t0).Round(time.Millisecond))
		}
		// Weight bytes read per decode token: dense weights except the
		// embedding table (one row is read), plus K experts per MoE layer.
		eb := int64(3*c.Hidden*c.MoE.Inter) * 2
		if f != tensor.QNone {
			eb = 2*tensor.QBytes(f, c.MoE.Inter, c.Hidden) + tensor.QBytes(f, c.Hidden, c.MoE.Inter)
		}
		per := m.DenseBytes - m.Embed.Bytes() + int64(c.Hidden)*2 + int64(c.NumMoELayers()*c.MoE.Router.TopK)*eb
		name := f.String()
		if f == tensor.QNone {
			name = "bf16"
		}
		vs = append(vs, &variant{name: name, m: mv, perToken: per})
	}

	nthreads := runtime.GOMAXPROCS(0)
	var bw, rbw float64
	if !*brief || *copyBW {
		bw = copyBandwidth(1 << 30)
	}
	if !*brief {
		rbw = streamBandwidth(1 << 30)
	}

	ctx := context.Background()
	// decode runs an empty sequence from the pool: a 4-token prompt, one warm-up step,
	// then n timed steps; it returns tokens/s. greedy holds the last run's
	// tokens (the prompt's argmax, the warm-up step's, then the timed ones).
	// Sequences come from a pool per model and go back after each run, as
	// the serving scheduler's do (model.SeqPool): after the warm-up, a
	// prefill writes into a KV cache the process already holds. Each model
	// also keeps one Workspace for its calls' temporaries, as the serving
	// loop does (internal/serve): without one, every Forward allocated its
	// scratch afresh (about 20 MB for a 512-token prompt), new memory and
	// so page faults, as a 4.6 GB heap of weights keeps the next GC far off.
	pools := map[*model.Model]*model.SeqPool{}
	wss := map[*model.Model]*model.Workspace{}
	wsOf := func(m *model.Model) *model.Workspace {
		if wss[m] == nil {
			wss[m] = new(model.Workspace)
		}
		return wss[m]
	}
	newSeq := func(m *model.Model) *model.Seq {
		if pools[m] == nil {
			pools[m] = m.NewSeqPool()
		}
		return pools[m].Get()
	}
	var greedy []int32
	decode := func(m *model.Model, n int, prof *model.Profile) float64 {
		seq := newSeq(m)
		defer pools[m].Put(seq)
		out, err := m.Forward(ctx, []*model.Seq{seq}, [][]int32{{1, 2, 3, 4}}, model.Options{Workspace: wsOf(m)})
		if err != nil {
			fail(err)
		}
		next := model.Argmax(out.Logits)
		greedy = append(greedy[:0], next)
		if out, err = m.Forward(ctx, []*model.Seq{seq}, [][]int32{{next}}, model.Options{Workspace: wsOf(m)}); err != nil {
			fail(err)
		}
		next = model.Argmax(out.Logits)
		greedy = append(greedy, next)
		t0, c0 := time.Now(), cpuSeconds()
		for i := 0; i < n; i++ {
			if out, err = m.Forward(ctx, []*model.Seq{seq}, [][]int32{{next}}, model.Options{Prof: prof, Workspace: wsOf(m)}); err != nil {
				fail(err)
			}
			next = model.Argmax(out.Logits)
			greedy = append(greedy, next)
		}
		lastWall, lastCPU = time.Since(t0).Seconds(), cpuSeconds()-c0
		return float64(n) / lastWall
	}
	// prompt returns n pseudo-random token ids in [1, vocab) (a fixed LCG,
	// the one bench/peers/llama_bench.c uses).
	prompt := func(n int) []int32 {
		ids := make([]int32, n)
		x := uint32(12345)
		for i := range ids {
			x = x*1103515245 + 12345
			ids[i] = int32(1 + (x>>8)%uint32(c.Vocab-1))
		}
		return ids
	}
	// prefillRate runs one forward of an n-token prompt on an empty
	// sequence from the pool (logits of the last token only, as in
	// serving); it returns tokens/s.
	prefillRate := func(m *model.Model, n int, prof *model.Profile) float64 {
		ids := prompt(n)
		seq := newSeq(m)
		defer pools[m].Put(seq)
		t0, c0 := time.Now(), cpuSeconds()
		out, err := m.Forward(ctx, []*model.Seq{seq}, [][]int32{ids}, model.Options{Prof: prof, Workspace: wsOf(m)})
		if err != nil {
			fail(err)
		}
		el := time.Since(t0)
		lastWall, lastCPU = el.Seconds(), cpuSeconds()-c0
		_ = model.Argmax(out.Logits)
		return float64(n) / el.Seconds()
	}
	if *brief {
		if *copyBW {
			fmt.Printf("switchyard: threads=%d copy_bw_gbs=%.2f\n", nthreads, bw/1e9)
		}
		for _, v := range vs {
			fmt.Printf("switchyard: format=%s bytes_per_token=%d\n", v.name, v.perToken)
		}
		fmt.Printf("switchyard: kernels=%q\n", tensor.KernelConfig())
		if compute == tensor.ComputeBF16 {
			fmt.Printf("switchyard: compute=bf16 kernel=%q\n", tensor.BF16DotKernel())
		}
		// Untimed warm-up, as llama_bench.c does: one prefill of the timed
		// prompt's length (llama.cpp's llama-bench warms up with the test
		// itself), which also grows the Workspace, the KV cache and the
		// pooled scratch to their sizes for it, and a few decode steps.
		// With a 64-token prompt in its place, the first timed 512-token
		// prefill paid for that growth: 38 thousand page faults and 0.6 s
		// of system time at 2 threads on the 2-vCPU AMD EPYC Zen 5 VM
		// (2026-12-07), a fifth of the prefill's CPU time.
		for _, v := range vs {
			if *prefill > 0 {
				prefillRate(v.m, *prefill, nil)
			}
			if *tokens > 0 {
				decode(v.m, min(*tokens, 4), nil)
			}
		}
		if *cpuprofile != "" {
			// -brief profiles every timed measurement (decode and prefill).
			f, err := os.Create(*cpuprofile)
			if err != nil {
				fail(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				fail(err)
			}
			defer func() {
				pprof.StopCPUProfile()
				f.Close()
			}()
		}
		for r := 0; r < *rounds; r++ {
			for _, v := range vs {
				if *tokens > 0 {
					tps := decode(v.m, *tokens, nil)
					fmt.Printf("switchyard: threads=%d format=%s round=%d decode_tokens=%d decode_tok_s=%.3f decode_wall_s=%.4f decode_cpu_s=%.4f\n",
						nthreads, v.name, r+1, *tokens, tps, lastWall, lastCPU)
					if r == 0 {
						fmt.Printf("switchyard: format=%s greedy=%s\n", v.name, joinIDs(greedy[:min(len(greedy), 16)]))
					}
				}
				if *prefill > 0 {
					var p model.Profile
					rate := prefillRate(v.m, *prefill, &p)
					ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
					fmt.Printf("switchyard: threads=%d format=%s compute=%s round=%d prefill_tokens=%d prefill_tok_s=%.3f"+
						" attention_ms=%.1f router_ms=%.1f experts_ms=%.1f head_ms=%.1f total_ms=%.1f prefill_wall_s=%.4f prefill_cpu_s=%.4f\n",
						nthreads, v.name, compute, r+1, *prefill, rate,
						ms(p.Attention), ms(p.Router), ms(p.Experts), ms(p.Head), ms(p.Total), lastWall, lastCPU)
				}
			}
		}
		return
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fail(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	// Interleaved rounds: each round decodes with every format in turn, so
	// a slow stretch of a noisy machine hits them alike.
	pre := make([][]float64, len(vs)) // prefill tokens/s per format and round
	for r := 0; r < *rounds; r++ {
		for i, v := range vs {
			v.tps = append(v.tps, decode(v.m, *tokens, nil))
			if *prefill > 0 {
				pre[i] = append(pre[i], prefillRate(v.m, *prefill, nil))
			}
		}
	}
	// One more pass per format with the model's profile: where a token's
	// time goes (attention, routed experts, lm_head, the rest).
	profs := make([]model.Profile, len(vs))
	for i, v := range vs {
		decode(v.m, *tokens, &profs[i])
	}

	fmt.Printf("decode model: mixtral-style, %d layers, hidden %d, %d experts top-%d, expert inter %d, vocab %d, bf16 weights (%.2f GB)\n",
		c.Layers, c.Hidden, c.MoE.Router.NumExperts, c.MoE.Router.TopK, c.MoE.Inter, c.Vocab,
		float64(m.DenseBytes+bf16Store.Bytes())/1e9)
	fmt.Printf("threads (GOMAXPROCS)          %d\n", nthreads)
	fmt.Printf("float kernels                 %s\n", tensor.KernelConfig())
	fmt.Printf("quantized kernels             %s\n", tensor.QuantKernel())
	fmt.Printf("copy bandwidth (STREAM copy)  %.2f GB/s\n", bw/1e9)
	fmt.Printf("weight-stream bandwidth       %.2f GB/s (bf16 GEMV over 1 GiB, read only)\n", rbw/1e9)
	fmt.Printf("rounds                        %d interleaved, %d tokens each; tokens/s is the median\n\n", *rounds, *tokens)
	fmt.Println("| routed experts | weight bytes read per token | tokens/s | fraction of copy bound | fraction of weight-stream bound | vs bf16 |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, v := range vs {
		tps := median(v.tps)
		// The speed-up is the median of the per-round ratios (each round
		// measures both formats within seconds of each other).
		ratios := make([]float64, len(v.tps))
		for r := range v.tps {
			ratios[r] = v.tps[r] / vs[0].tps[r]
		}
		fmt.Printf("| %s | %.1f MB | %.2f | %.2f | %.2f | %.2fx |\n", v.name, float64(v.perToken)/1e6, tps,
			tps/(bw/float64(v.perToken)), tps/(rbw/float64(v.perToken)), median(ratios))
	}
	fmt.Println()
	fmt.Println("time per token (profiled pass), ms:")
	fmt.Println("| routed experts | attention | router | routed experts | lm_head + final norm | rest | total |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for i, v := range vs {
		p := profs[i]
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(*tokens) }
		rest := p.Total - p.Attention - p.Router - p.Experts - p.Head - p.SharedExperts - p.DenseMLP
		fmt.Printf("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", v.name, ms(p.Attention), ms(p.Router), ms(p.Experts), ms(p.Head), ms(rest), ms(p.Total))
	}
	if *prefill > 0 {
		fmt.Println()
		fmt.Printf("prefill: one forward of a %d-token prompt per round, tokens/s (median of %d):\n", *prefill, *rounds)
		fmt.Println("| routed experts | prefill tokens/s | vs bf16 |")
		fmt.Println("|---|---:|---:|")
		for i, v := range vs {
			ratios := make([]float64, len(pre[i]))
			for r := range pre[i] {
				ratios[r] = pre[i][r] / pre[0][r]
			}
			fmt.Printf("| %s | %.1f | %.2fx |\n", v.name, median(pre[i]), median(ratios))
		}
	}
}

// parseFormats parses -formats: bf16 (the checkpoint's experts) and
// --quantize values; bf16 must come first unless anyFirst (-brief: no
// speed-ups are computed).
func parseFormats(list string, anyFirst bool) ([]tensor.QFormat, error) {
	var out []tensor.QFormat
	for _, s := range strings.Split(list, ",") {
		if s == "bf16" {
			out = append(out, tensor.QNone)
			continue
		}
		f, err := tensor.ParseQFormat(s)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	if len(out) == 0 || (!anyFirst && out[0] != tensor.QNone) {
		return nil, fmt.Errorf("-formats must start with bf16 (the reference of the speed-ups)")
	}
	return out, nil
}

// quantizeStore returns a store of every expert of s quantized to f,
// quantized in parallel.
func quantizeStore(s *expert.Store, f tensor.QFormat) (*expert.Store, error) {
	ids := s.IDs()
	out := make([]*expert.FFN, len(ids))
	errs := make([]error, len(ids))
	tensor.ParallelFor(len(ids), 1, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			src := s.Get(ids[i])
			q := &expert.FFN{Gate: src.Gate, Up: src.Up, Down: src.Down}
			errs[i] = q.Quantize(f)
			out[i] = q
		}
	})
	qs := expert.NewStore()
	for i, id := range ids {
		if errs[i] != nil {
			return nil, errs[i]
		}
		qs.Put(id, out[i])
	}
	return qs, nil
}

// joinIDs writes token ids as 1,2,3.
func joinIDs(ids []int32) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ",")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// streamBandwidth returns the best rate (bytes read per second) at which
// the bf16 GEMV kernel streams a matrix of n bytes from memory: the
// read-only ceiling a decode step can reach on this machine.
func streamBandwidth(n int) float64 {
	const k = 1024
	rows := n / (2 * k)
	w := make([]uint16, rows*k)
	for i := range w {
		w[i] = uint16(i)
	}
	x := make([]float32, k)
	y := make([]float32, rows)
	best := 0.0
	for rep := 0; rep < 5; rep++ {
		t0 := time.Now()
		tensor.GemvTBF16(rows, k, w, k, x, y, 0)
		best = max(best, float64(rows*k*2)/time.Since(t0).Seconds())
	}
	return best
}

// lastWall and lastCPU are the wall and process CPU seconds (every
// thread's user and system time, the kernel pool's spinning between
// parallel calls included) of the last timed decode or prefill.
var lastWall, lastCPU float64

// cpuSeconds is the process's user + system CPU time so far, seconds.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// copyBandwidth returns the best (read+written bytes)/s of copying n bytes,
// split over GOMAXPROCS goroutines.
func copyBandwidth(n int) float64 {
	src := make([]byte, n)
	dst := make([]byte, n)
	for i := range src {
		src[i] = byte(i)
	}
	copy(dst, src) // fault pages in
	p := runtime.GOMAXPROCS(0)
	best := 0.0
	for rep := 0; rep < 5; rep++ {
		t0 := time.Now()
		var wg sync.WaitGroup
		chunk := n / p
		for w := 0; w < p; w++ {
			wg.Add(1)
			go func(lo, hi int) {
				defer wg.Done()
				copy(dst[lo:hi], src[lo:hi])
			}(w*chunk, min((w+1)*chunk, n))
		}
		wg.Wait()
		best = max(best, 2*float64(n)/time.Since(t0).Seconds())
	}
	return best
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "decode:", err)
	os.Exit(1)
}
