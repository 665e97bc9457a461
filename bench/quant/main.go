// Command quant measures what quantizing the routed experts costs in
// quality, on a model trained with `switchyard train` and the held-out
// part of its training text: perplexity, and the mean KL divergence of
// each next-token distribution from the bf16 model's (KL(bf16 || q)), with
// the fraction of positions whose most likely token agrees with bf16's.
//
// The held-out windows are the ones `switchyard train` evaluated on: the
// text is tokenized with the checkpoint's tokenizer and cut with
// train.NewData (same --seq-len, --held-out, --batch as the run). Rows:
//
//	checkpoint  the weights as saved (float32)
//	bf16        routed experts rounded to bfloat16 (the reference for KL)
//	int8, q4    routed experts quantized at load (--quantize)
//
// Dense weights (attention, shared experts, embeddings, lm_head) are the
// checkpoint's in every row.
//
// Usage: go run ./bench/quant -model DIR -text FILE [-seq-len 128 -held-out 0.05]
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/tokenizer"
	"github.com/switchyard/switchyard/pkg/train"
)

func main() {
	dir := flag.String("model", "", "checkpoint folder written by switchyard train (config.json, model.safetensors, tokenizer.json)")
	textPath := flag.String("text", "", "the training text the model was trained on")
	seqLen := flag.Int("seq-len", 128, "tokens per window (the run's --seq-len)")
	heldOut := flag.Float64("held-out", 0.05, "held-out fraction (the run's --held-out)")
	batch := flag.Int("batch", 8, "the run's --batch (only checked: the split needs one batch of training windows)")
	maxWindows := flag.Int("windows", 0, "evaluate only the first N held-out windows (train's own evaluation uses the first --eval-max, 32); 0: all")
	flag.Parse()
	if *dir == "" || *textPath == "" {
		fail(fmt.Errorf("-model and -text are required"))
	}
	text, err := train.ReadText(*textPath)
	if err != nil {
		fail(err)
	}
	tok, err := tokenizer.Load(filepath.Join(*dir, "tokenizer.json"))
	if err != nil {
		fail(err)
	}
	ids := tok.Encode(text)
	tokens := make([]int32, len(ids))
	for i, id := range ids {
		tokens[i] = int32(id)
	}
	data, err := train.NewData(tokens, *seqLen, *batch, *heldOut, 1)
	if err != nil {
		fail(err)
	}
	windows := data.EvalWindows()
	if *maxWindows > 0 {
		windows = windows[:min(len(windows), *maxWindows)]
	}

	ck, err := model.Open(*dir)
	if err != nil {
		fail(err)
	}
	defer ck.Close()
	type row struct {
		name string
		m    *model.Model
	}
	var rows []row
	for _, v := range []struct {
		name string
		q    tensor.QFormat
		bf16 bool
	}{{"checkpoint", tensor.QNone, false}, {"bf16", tensor.QNone, true}, {"int8", tensor.QInt8, false}, {"q4", tensor.QQ4, false}} {
		m, store, err := model.Load(ck.Config, ck.Source, model.LoadOptions{Quantize: v.q})
		if err != nil {
			fail(err)
		}
		if v.bf16 {
			roundExperts(store)
		}
		rows = append(rows, row{v.name, m})
	}

	// logp[row] holds, window by window, every position's log-softmax.
	V := ck.Config.Vocab
	nll := make([]float64, len(rows))
	kl := make([]float64, len(rows))
	agree := make([]int, len(rows))
	var positions int
	var bytes [4]int64
	for i, r := range rows {
		bytes[i] = expertBytes(r.m)
	}
	for _, w := range windows {
		logps := make([][]float64, len(rows))
		for i, r := range rows {
			out, err := r.m.Forward(context.Background(), []*model.Seq{r.m.NewSeq()}, [][]int32{w}, model.Options{AllLogits: true})
			if err != nil {
				fail(err)
			}
			logps[i] = logSoftmax(out.Logits, V)
		}
		ref := logps[1] // bf16
		for p := 0; p < len(w)-1; p++ {
			next := w[p+1]
			refRow := ref[p*V : (p+1)*V]
			refTop := argmax(refRow)
			for i := range rows {
				lr := logps[i][p*V : (p+1)*V]
				nll[i] -= lr[next]
				var d float64
				for v, lp := range refRow {
					d += math.Exp(lp) * (lp - lr[v])
				}
				kl[i] += d
				if argmax(lr) == refTop {
					agree[i]++
				}
			}
			positions++
		}
	}
	fmt.Printf("model: %s (%s, %d layers, %d routed experts of %dx%d per MoE layer, top-%d)\n",
		*dir, ck.Config.Family, ck.Config.Layers, ck.Config.MoE.Router.NumExperts, ck.Config.MoE.Inter, ck.Config.Hidden, ck.Config.MoE.Router.TopK)
	fmt.Printf("held-out: %d windows of %d tokens (%d predicted tokens) of %s\n", len(windows), *seqLen, positions, filepath.Base(*textPath))
	fmt.Printf("kernels: %s\n\n", tensor.QuantKernel())
	fmt.Println("| routed experts | expert bytes | perplexity | mean KL vs bf16 (nats) | top-1 agrees with bf16 |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for i, r := range rows {
		fmt.Printf("| %s | %.2f MB | %.4f | %.2e | %.2f%% |\n", r.name, float64(bytes[i])/1e6,
			math.Exp(nll[i]/float64(positions)), kl[i]/float64(positions), 100*float64(agree[i])/float64(positions))
	}
}

// roundExperts rounds every routed expert's float32 matrices to bfloat16,
// held as bf16 (what a bf16 checkpoint of the same weights loads as).
func roundExperts(s *expert.Store) {
	for _, id := range s.IDs() {
		f := s.Get(id)
		for _, m := range []*tensor.Mat{&f.Gate, &f.Up, &f.Down} {
			if m.F32 == nil {
				continue
			}
			b := make([]uint16, len(m.F32))
			tensor.F32ToBF16(b, m.F32)
			*m = tensor.Mat{Rows: m.Rows, Cols: m.Cols, BF16: b}
		}
	}
}

func expertBytes(m *model.Model) int64 {
	s, ok := m.Experts.(*expert.Store)
	if !ok {
		return 0
	}
	return s.Bytes()
}

// logSoftmax returns log-softmax of each row of logits [n, V] in float64.
func logSoftmax(logits []float32, V int) []float64 {
	out := make([]float64, len(logits))
	for r := 0; r*V < len(logits); r++ {
		row := logits[r*V : (r+1)*V]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = math.Max(mx, float64(v))
		}
		var sum float64
		for _, v := range row {
			sum += math.Exp(float64(v) - mx)
		}
		lse := mx + math.Log(sum)
		for j, v := range row {
			out[r*V+j] = float64(v) - lse
		}
	}
	return out
}

func argmax(v []float64) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "quant:", err)
	os.Exit(1)
}
