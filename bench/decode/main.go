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
// Usage: go run ./bench/decode [-dir DIR] [-tokens N]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

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
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the timed decode steps")
	flag.Parse()

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

	// Weight bytes read per decode token: dense weights except the embedding
	// table (one row is read), plus K experts per MoE layer.
	expertBytes := int64(3*c.Hidden*c.MoE.Inter) * 2
	perToken := m.DenseBytes - m.Embed.Bytes() + int64(c.Hidden)*2
	perToken += int64(c.NumMoELayers()*c.MoE.Router.TopK) * expertBytes

	bw := copyBandwidth(1 << 30)
	rbw := streamBandwidth(1 << 30)

	ctx := context.Background()
	seq := m.NewSeq()
	prompt := []int32{1, 2, 3, 4}
	out, err := m.Forward(ctx, []*model.Seq{seq}, [][]int32{prompt}, model.Options{})
	if err != nil {
		fail(err)
	}
	next := model.Argmax(out.Logits)
	// one warm-up step, then timed steps
	if out, err = m.Forward(ctx, []*model.Seq{seq}, [][]int32{{next}}, model.Options{}); err != nil {
		fail(err)
	}
	next = model.Argmax(out.Logits)
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fail(err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	t0 := time.Now()
	for i := 0; i < *tokens; i++ {
		out, err = m.Forward(ctx, []*model.Seq{seq}, [][]int32{{next}}, model.Options{})
		if err != nil {
			fail(err)
		}
		next = model.Argmax(out.Logits)
	}
	el := time.Since(t0)
	tps := float64(*tokens) / el.Seconds()
	bound := bw / float64(perToken)
	fmt.Printf("decode model: mixtral-style, %d layers, hidden %d, %d experts top-%d, expert inter %d, vocab %d, bf16 weights (%.2f GB)\n",
		c.Layers, c.Hidden, c.MoE.Router.NumExperts, c.MoE.Router.TopK, c.MoE.Inter, c.Vocab,
		float64(m.DenseBytes+int64(c.NumMoELayers()*c.MoE.Router.NumExperts)*expertBytes)/1e9)
	fmt.Printf("threads (GOMAXPROCS)          %d\n", runtime.GOMAXPROCS(0))
	fmt.Printf("weight bytes read per token   %.1f MB\n", float64(perToken)/1e6)
	fmt.Printf("copy bandwidth (STREAM copy)  %.2f GB/s\n", bw/1e9)
	fmt.Printf("bandwidth bound               %.2f tokens/s\n", bound)
	fmt.Printf("decode                        %.2f tokens/s (%d tokens in %v)\n", tps, *tokens, el.Round(time.Millisecond))
	fmt.Printf("decode / bound                %.2f\n", tps/bound)
	rbound := rbw / float64(perToken)
	fmt.Printf("weight-stream bandwidth       %.2f GB/s (bf16 GEMV over 1 GiB, read only)\n", rbw/1e9)
	fmt.Printf("weight-stream bound           %.2f tokens/s\n", rbound)
	fmt.Printf("decode / weight-stream bound  %.2f\n", tps/rbound)
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
