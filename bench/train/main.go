// Command train measures training throughput of a preset on the shipped
// book and the share of step time spent in each component.
//
// Usage: go run ./bench/train [-preset dsv3-tiny] [-steps 20] [-batch 8] [-seq 128]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
	"github.com/switchyard/switchyard/pkg/train"
)

func main() {
	preset := flag.String("preset", "dsv3-tiny", "model preset")
	steps := flag.Int("steps", 20, "timed steps (after 3 warm-up steps)")
	batch := flag.Int("batch", 8, "sequences per step")
	seq := flag.Int("seq", 128, "tokens per sequence")
	text := flag.String("text", "testdata/text/opticks.txt", "training text")
	vocab := flag.Int("vocab", 1024, "tokenizer vocabulary")
	flag.Parse()

	book, err := train.ReadText(*text)
	check(err)
	tok, err := tokenizer.Train(book, tokenizer.TrainConfig{VocabSize: *vocab, SpecialTokens: []string{"<|endoftext|>"}})
	check(err)
	hf, err := train.Preset(*preset, tok.VocabSize())
	check(err)
	cfg, err := model.ParseConfig(mustJSON(hf))
	check(err)
	m, store, err := model.NewRandom(cfg, model.InitOptions{Seed: 1})
	check(err)
	ids := tok.Encode(book)
	tokens := make([]int32, len(ids))
	for i, id := range ids {
		tokens[i] = int32(id)
	}
	data, err := train.NewData(tokens, *seq, *batch, 0, 1)
	check(err)
	sc := train.DefaultJobConfig().Step
	s, err := train.NewStepper(m, store, sc)
	check(err)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		_, err := s.TrainStep(ctx, data.BatchAt(i))
		check(err)
	}
	prof := s.Profile()
	t0 := time.Now()
	var last float64
	for i := 0; i < *steps; i++ {
		out, err := s.TrainStep(ctx, data.BatchAt(3+i))
		check(err)
		last = out.Loss
	}
	el := time.Since(t0)
	var nparams int64
	for _, t := range cfg.Tensors() {
		nparams += t.Elems()
	}
	tps := float64(*steps**batch**seq) / el.Seconds()
	fmt.Printf("preset %s (%s, %.2f M parameters), batch %d x %d tokens, %d steps, GOMAXPROCS %d, loss %.3f\n",
		*preset, cfg.Family, float64(nparams)/1e6, *batch, *seq, *steps, runtime.GOMAXPROCS(0), last)
	fmt.Printf("training throughput: %.0f tokens/s (%.1f ms/step)\n\n", tps, el.Seconds()*1000/float64(*steps))
	step := prof.Total + prof.Optimizer
	other := prof.Total - prof.Attention - prof.Router - prof.Experts - prof.SharedExperts - prof.DenseMLP - prof.Head
	fmt.Printf("%-34s %10s %7s\n", "component (forward + backward)", "ms/step", "share")
	row := func(name string, d time.Duration) {
		fmt.Printf("%-34s %10.1f %6.1f%%\n", name, float64(d.Microseconds())/1000/float64(prof.Steps), 100*float64(d)/float64(step))
	}
	row("attention (MLA/GQA)", prof.Attention)
	row("router (gate, routing, backward)", prof.Router)
	row("routed experts", prof.Experts)
	row("shared experts", prof.SharedExperts)
	row("dense MLP layers", prof.DenseMLP)
	row("lm_head + loss", prof.Head)
	row("norms, embeddings, residuals", other)
	row("optimizer (clip, AdamW, bias)", prof.Optimizer)
	row("total", step)
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench train:", err)
		os.Exit(1)
	}
}
