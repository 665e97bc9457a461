// Command train measures training throughput of a preset on the shipped
// book and the share of step time spent in each component, under one or
// more compute modes side by side, and what bf16 compute costs in
// accuracy.
//
// With -compute exact,bf16 each mode trains its own copy of the same
// initial model and their steps interleave (exact step i, bf16 step i,
// exact step i+1, ...), so load from other processes hits both alike; the
// table gives each mode's ms/step per component and the ratio.
//
// With -curve N both modes train N steps from the same initial model on the
// same batches (interleaved), and the run reports the loss curves'
// difference (mean and max |bf16 - exact| over all steps and over the last
// 50), each model's held-out loss, and the mean KL divergence
// KL(p_exact || p_bf16) of the next-token distributions that the
// exact-trained model gives on the held-out windows when its forward runs
// exact and bf16 (the inference cost of --compute bf16 on a trained model),
// with the top-1 agreement. -curve-out FILE writes both curves as CSV and a
// chart beside it (FILE with .png).
//
// Usage: go run ./bench/train [-preset dsv3-tiny] [-steps 20] [-batch 8] [-seq 128]
//
//	[-compute exact,bf16] [-curve 400 [-curve-out bench/results/train-bf16-curve.csv]]
package main

import (
	"context"
	"flag"
	"fmt"
	"image/color"
	"math"
	"os"
	"runtime"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tensor"
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
	computeList := flag.String("compute", "exact", "compute modes to time side by side, comma-separated: exact, bf16")
	curve := flag.Int("curve", 0, "train this many steps under exact and bf16 from the same start and compare (0: off)")
	curveOut := flag.String("curve-out", "", "with -curve: write the curves as CSV here and a chart beside it (.png)")
	flag.Parse()

	var modes []tensor.Compute
	for _, s := range strings.Split(*computeList, ",") {
		c, err := tensor.ParseCompute(strings.TrimSpace(s))
		check(err)
		modes = append(modes, c)
	}
	if *curve > 0 {
		modes = []tensor.Compute{tensor.ComputeExact, tensor.ComputeBF16}
	}

	book, err := train.ReadText(*text)
	check(err)
	tok, err := tokenizer.Train(book, tokenizer.TrainConfig{VocabSize: *vocab, SpecialTokens: []string{"<|endoftext|>"}})
	check(err)
	hf, err := train.Preset(*preset, tok.VocabSize())
	check(err)
	cfg, err := model.ParseConfig(mustJSON(hf))
	check(err)
	ids := tok.Encode(book)
	tokens := make([]int32, len(ids))
	for i, id := range ids {
		tokens[i] = int32(id)
	}
	heldOut := 0.0
	if *curve > 0 {
		heldOut = 0.05
	}
	data, err := train.NewData(tokens, *seq, *batch, heldOut, 1)
	check(err)
	// One stepper per mode, each from the same seed: identical starts.
	steppers := make([]*train.Stepper, len(modes))
	for i := range modes {
		m, store, err := model.NewRandom(cfg, model.InitOptions{Seed: 1})
		check(err)
		steppers[i], err = train.NewStepper(m, store, train.DefaultJobConfig().Step)
		check(err)
	}
	var nparams int64
	for _, t := range cfg.Tensors() {
		nparams += t.Elems()
	}
	ctx := context.Background()
	stepIn := func(i int, b [][]int32) *train.StepOut {
		tensor.SetCompute(modes[i])
		out, err := steppers[i].TrainStep(ctx, b)
		check(err)
		return out
	}
	fmt.Printf("preset %s (%s, %.2f M parameters), batch %d x %d tokens, GOMAXPROCS %d\n",
		*preset, cfg.Family, float64(nparams)/1e6, *batch, *seq, runtime.GOMAXPROCS(0))
	fmt.Printf("cpu: %s; bf16 compute kernel: %s\n", cpuModel(), tensor.BF16DotKernel())

	if *curve > 0 {
		runCurve(ctx, *curve, *curveOut, data, steppers, stepIn)
		return
	}

	for i := range modes {
		for s := 0; s < 3; s++ {
			stepIn(i, data.BatchAt(s))
		}
	}
	profs := make([]*model.Profile, len(modes))
	for i := range modes {
		profs[i] = steppers[i].Profile()
	}
	el := make([]time.Duration, len(modes))
	last := make([]float64, len(modes))
	for s := 0; s < *steps; s++ {
		for i := range modes {
			t0 := time.Now()
			last[i] = stepIn(i, data.BatchAt(3+s)).Loss
			el[i] += time.Since(t0)
		}
	}
	fmt.Printf("%d timed steps per mode after 3 warm-up steps, modes interleaved step by step\n\n", *steps)
	for i, c := range modes {
		tps := float64(*steps**batch**seq) / el[i].Seconds()
		fmt.Printf("compute %-5s training throughput: %.0f tokens/s (%.1f ms/step), loss after the last step %.3f\n",
			c, tps, el[i].Seconds()*1000/float64(*steps), last[i])
	}
	if len(modes) > 1 {
		fmt.Printf("throughput %s / %s: %.3f\n", modes[1], modes[0], el[0].Seconds()/el[1].Seconds())
	}
	fmt.Println()
	header := fmt.Sprintf("%-34s", "component (forward + backward)")
	for _, c := range modes {
		header += fmt.Sprintf(" %9s %6s", c.String()+" ms", "share")
	}
	if len(modes) > 1 {
		header += fmt.Sprintf(" %9s", modes[1].String()+"/"+modes[0].String())
	}
	fmt.Println(header)
	row := func(name string, part func(p *model.Profile) time.Duration) {
		line := fmt.Sprintf("%-34s", name)
		var ms []float64
		for _, p := range profs {
			d := part(p)
			ms = append(ms, float64(d.Microseconds())/1000/float64(p.Steps))
			line += fmt.Sprintf(" %9.1f %5.1f%%", ms[len(ms)-1], 100*float64(d)/float64(p.Total+p.Optimizer))
		}
		if len(ms) > 1 && ms[0] > 0 {
			line += fmt.Sprintf(" %9.2f", ms[1]/ms[0])
		}
		fmt.Println(line)
	}
	row("attention (MLA/GQA)", func(p *model.Profile) time.Duration { return p.Attention })
	row("router (gate, routing, backward)", func(p *model.Profile) time.Duration { return p.Router })
	row("routed experts", func(p *model.Profile) time.Duration { return p.Experts })
	row("shared experts", func(p *model.Profile) time.Duration { return p.SharedExperts })
	row("dense MLP layers", func(p *model.Profile) time.Duration { return p.DenseMLP })
	row("lm_head + loss", func(p *model.Profile) time.Duration { return p.Head })
	row("norms, embeddings, residuals", func(p *model.Profile) time.Duration {
		return p.Total - p.Attention - p.Router - p.Experts - p.SharedExperts - p.DenseMLP - p.Head
	})
	row("optimizer (clip, AdamW, bias)", func(p *model.Profile) time.Duration { return p.Optimizer })
	row("total", func(p *model.Profile) time.Duration { return p.Total + p.Optimizer })
}

// runCurve trains steppers[0] (exact) and steppers[1] (bf16) n steps on the
// same batches, then compares the curves and the trained models.
func runCurve(ctx context.Context, n int, out string, data *train.Data, steppers []*train.Stepper, stepIn func(int, [][]int32) *train.StepOut) {
	loss := [2][]float64{}
	t0 := time.Now()
	for s := 0; s < n; s++ {
		b := data.BatchAt(s)
		for i := 0; i < 2; i++ {
			loss[i] = append(loss[i], stepIn(i, b).Loss)
		}
		if (s+1)%50 == 0 {
			fmt.Fprintf(os.Stderr, "step %d/%d: exact %.4f bf16 %.4f (%v)\n", s+1, n, loss[0][s], loss[1][s], time.Since(t0).Round(time.Second))
		}
	}
	diff := func(from int) (mean, max float64) {
		for s := from; s < n; s++ {
			d := math.Abs(loss[1][s] - loss[0][s])
			mean += d
			max = math.Max(max, d)
		}
		return mean / float64(n-from), max
	}
	meanAll, maxAll := diff(0)
	tail := max(0, n-50)
	meanTail, maxTail := diff(tail)
	avg := func(x []float64) float64 {
		var s float64
		for _, v := range x {
			s += v
		}
		return s / float64(len(x))
	}
	fmt.Printf("\nloss curves over %d steps, the same start and batches (%v):\n", n, time.Since(t0).Round(time.Second))
	fmt.Printf("  first step: exact %.4f, bf16 %.4f\n", loss[0][0], loss[1][0])
	fmt.Printf("  mean of the last %d steps: exact %.4f, bf16 %.4f (bf16 - exact %+.4f)\n", n-tail, avg(loss[0][tail:]), avg(loss[1][tail:]), avg(loss[1][tail:])-avg(loss[0][tail:]))
	fmt.Printf("  |bf16 - exact| per step: mean %.4f, max %.4f over all steps; mean %.4f, max %.4f over the last %d\n", meanAll, maxAll, meanTail, maxTail, n-tail)

	// Held-out loss of each trained model (each in its own mode), then the
	// exact-trained model's next-token distributions under both modes.
	windows := data.EvalWindows()
	tensor.SetCompute(tensor.ComputeExact)
	ev0, err := train.EvalLoss(ctx, steppers[0].Model, windows)
	check(err)
	tensor.SetCompute(tensor.ComputeBF16)
	ev1, err := train.EvalLoss(ctx, steppers[1].Model, windows)
	check(err)
	fmt.Printf("  held-out loss (%d windows): exact-trained, exact forward %.4f; bf16-trained, bf16 forward %.4f (%+.4f)\n", len(windows), ev0, ev1, ev1-ev0)
	kl, top1, rows := klOf(ctx, steppers[0].Model, windows)
	fmt.Printf("inference: mean KL(exact || bf16) of next-token distributions = %.3g nats over %d held-out positions (exact-trained model); top-1 agreement %.2f%%\n", kl, rows, 100*top1)
	tensor.SetCompute(tensor.ComputeExact)

	if out != "" {
		f, err := os.Create(out)
		check(err)
		fmt.Fprintln(f, "step,loss_exact,loss_bf16")
		for s := 0; s < n; s++ {
			fmt.Fprintf(f, "%d,%.6f,%.6f\n", s+1, loss[0][s], loss[1][s])
		}
		check(f.Close())
		png := strings.TrimSuffix(out, ".csv") + ".png"
		check(plotCurves(png, fmt.Sprintf("training loss, exact vs --compute bf16 (%s)", cpuModel()), loss, 10))
		fmt.Printf("curves: %s, chart %s\n", out, png)
	}
}

// klOf runs m's forward on the windows in both modes and returns the mean
// over positions of KL(p_exact || p_bf16) in nats, the fraction of
// positions whose argmax agrees, and the number of positions.
func klOf(ctx context.Context, m *model.Model, windows [][]int32) (kl, top1 float64, rows int) {
	logits := func(c tensor.Compute) []float32 {
		tensor.SetCompute(c)
		seqs := make([]*model.Seq, len(windows))
		for i := range seqs {
			seqs[i] = m.NewSeq()
		}
		out, err := m.Forward(ctx, seqs, windows, model.Options{AllLogits: true})
		check(err)
		return out.Logits
	}
	p, q := logits(tensor.ComputeExact), logits(tensor.ComputeBF16)
	V := m.Cfg.Vocab
	rows = len(p) / V
	agree := 0
	for r := 0; r < rows; r++ {
		lp, lq := logSoftmax(p[r*V:(r+1)*V]), logSoftmax(q[r*V:(r+1)*V])
		var d float64
		for j := range lp {
			d += math.Exp(lp[j]) * (lp[j] - lq[j])
		}
		kl += d
		if argmax(lp) == argmax(lq) {
			agree++
		}
	}
	return kl / float64(rows), float64(agree) / float64(rows), rows
}

func logSoftmax(x []float32) []float64 {
	ls := tensor.LogSumExp(x)
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v) - ls
	}
	return out
}

func argmax(x []float64) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// cpuModel is the "model name" of /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench train:", err)
		os.Exit(1)
	}
}

// plotCurves writes a PNG of both loss curves (moving averages over smooth
// steps) and of their per-step difference, bf16 - exact.
func plotCurves(path, title string, loss [2][]float64, smooth int) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "step"
	p.Y.Label.Text = "cross-entropy (nats/token), mean of " + fmt.Sprint(smooth) + " steps"
	colors := [3]color.Color{color.RGBA{30, 60, 200, 255}, color.RGBA{220, 80, 30, 255}, color.RGBA{90, 90, 90, 255}}
	series := [3][]float64{loss[0], loss[1], make([]float64, len(loss[0]))}
	for i := range series[2] {
		series[2][i] = loss[1][i] - loss[0][i]
	}
	names := [3]string{"exact", "--compute bf16", "bf16 - exact (per step)"}
	for k, ys := range series {
		xy := make(plotter.XYs, len(ys))
		var sum float64
		for i, y := range ys {
			sum += y
			if i >= smooth {
				sum -= ys[i-smooth]
			}
			v := sum / float64(min(i+1, smooth))
			if k == 2 {
				v = y
			}
			xy[i] = plotter.XY{X: float64(i + 1), Y: v}
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return err
		}
		l.Color = colors[k]
		l.Width = vg.Points(1.2)
		p.Add(l)
		p.Legend.Add(names[k], l)
	}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}
