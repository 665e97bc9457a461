package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/switchyard/switchyard/pkg/simulate"
)

// assumedCalibration is what `simulate train` runs on without
// --calibration: the serving model's simulate.AssumedCalibration (the
// committed benchmarks of a 2-vCPU Xeon: bench/results/gemm.txt,
// decode.txt, exchange.txt; per core), with float32 points standing in
// for the bf16-compute ones it lacks, and an ASSUMED AdamW rate of 200 M
// parameters/s per core. Not a measurement of the hosts simulated: run
// `switchyard simulate calibrate` and pass its file instead.
func assumedCalibration() *simulate.Calibration {
	c := simulate.AssumedCalibration()
	c.CPU = "ASSUMED (built-in: " + c.CPU + ")"
	for _, p := range c.GEMM {
		if p.DType == "f32" {
			p.DType = "bf16-compute"
			c.GEMM = append(c.GEMM, p)
		}
	}
	c.AdamParamsPerS = 200e6
	return c
}

// trainRow is one predicted configuration.
type trainRow struct {
	nic  string
	pred simulate.TrainPrediction
}

func simulateTrainCmd() *cobra.Command {
	var (
		modelName, workersList, nicList, calFile, clusterFile, plotDir, computeS, wireS string
		tokens, seqLen                                                                  int
		markdown                                                                        bool
	)
	cmd := &cobra.Command{
		Use:   "train",
		Short: "Predict a data+expert-parallel training step on N workers (step split, tokens/s, memory, bottleneck)",
		Long: `Train predicts one training step of a large MoE trained as switchyard train runs
it on a cluster: one data-parallel rank per worker (each with --tokens-per-rank
tokens), the routed experts placed on the same workers by pkg/placement (one
copy each, under the workers' memory), per layer the expert exchange with
their owners (forward and backward), the dense gradients all-reduced in
buckets while the backward runs, then AdamW (pkg/simulate.PredictTrainStep).

Compute and software costs come from --calibration (switchyard simulate
calibrate); without it, from built-in numbers that are ASSUMED, not measured.
The hardware comes from --cluster (a ClusterSpec JSON: cores, memory,
latency, oversubscription, hosts per leaf); --workers and --nic sweep the
worker count and NIC rate over it.`,
		Example: `  switchyard simulate train --calibration bench/results/calibration-amd.json
  switchyard simulate train --workers 64,256 --nic 100gbit --cluster cluster.json --plot-dir /tmp/plots`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			shape, err := simulate.TrainShapeByName(modelName)
			if err != nil {
				return err
			}
			cal := assumedCalibration()
			if calFile != "" {
				f, err := os.Open(calFile)
				if err != nil {
					return err
				}
				cal, err = simulate.ReadCalibration(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", calFile, err)
				}
			}
			var spec simulate.ClusterSpec
			if clusterFile != "" {
				b, err := os.ReadFile(clusterFile)
				if err != nil {
					return err
				}
				// Validate the whole file (unknown fields refused); the
				// sweep replaces its workers and NIC.
				if _, err := simulate.ReadCluster(strings.NewReader(string(b))); err != nil {
					return fmt.Errorf("%s: %w", clusterFile, err)
				}
				if err := json.Unmarshal(b, &spec); err != nil {
					return err
				}
			}
			if nicList == "" {
				nicList = "25gbit,100gbit"
				if spec.NIC != "" {
					nicList = spec.NIC
				}
			}
			dtype := "f32"
			switch computeS {
			case "exact", "f32":
			case "bf16":
				dtype = "bf16-compute"
			default:
				return fmt.Errorf("--compute %q: want exact or bf16", computeS)
			}
			if wireS != "f32" && wireS != "bf16" {
				return fmt.Errorf("--wire %q: want f32 or bf16", wireS)
			}
			ns, err := parseCounts("--workers", workersList, 1)
			if err != nil {
				return err
			}
			var rows []trainRow
			var mem int64
			for _, nic := range splitList(nicList) {
				for _, n := range ns {
					s := spec
					s.Workers, s.NIC = n, nic
					cl, err := s.Resolve()
					if err != nil {
						return err
					}
					mem = cl.MemoryBytes
					p, err := simulate.PredictTrainStep(simulate.TrainConfig{Shape: shape, Cluster: cl, Cal: cal,
						TokensPerRank: tokens, SeqLen: seqLen, DType: dtype, WireBF16: wireS == "bf16"})
					if err != nil {
						return err
					}
					rows = append(rows, trainRow{nic: nic, pred: p})
				}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: %.1f B parameters (%.1f B active; %.2f B dense, all-reduced), %d tokens per rank in sequences of %d; calibration: %s\n",
				shape.Name, float64(shape.TotalParams())/1e9, float64(shape.ActiveParams())/1e9, float64(shape.DenseParams())/1e9,
				firstNonZero(tokens, 4096), firstNonZero(seqLen, min(1024, firstNonZero(tokens, 4096))), cal.CPU)
			if markdown {
				printTrainMarkdown(out, rows)
			} else if err := printTrainTable(out, rows); err != nil {
				return err
			}
			if plotDir != "" {
				files, err := plotTrain(plotDir, shape.Name, rows, mem)
				if err != nil {
					return err
				}
				for _, f := range files {
					fmt.Fprintf(out, "wrote %s\n", f)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelName, "model", "mixtral-8x22b", "model shape: mixtral-8x22b or deepseek-v3")
	f.StringVar(&workersList, "workers", "16,32,64,128,256,512,1024", "worker counts (one rank each, experts on the same workers), comma-separated")
	f.StringVar(&nicList, "nic", "", "NIC rates each way, comma-separated (default: the cluster file's, else 25gbit,100gbit)")
	f.IntVar(&tokens, "tokens-per-rank", 4096, "tokens each rank trains on per step")
	f.IntVar(&seqLen, "seq-len", 1024, "tokens per sequence (attention is seq-len^2 per sequence and head)")
	f.StringVar(&calFile, "calibration", "", "Calibration JSON from `switchyard simulate calibrate` (default: built-in ASSUMED numbers)")
	f.StringVar(&clusterFile, "cluster", "", "ClusterSpec JSON: cores, memory, latency, oversubscription, hosts_per_leaf (default: 32 cores, 256GiB, 10us, non-blocking, 32 hosts per leaf)")
	f.StringVar(&computeS, "compute", "exact", "products in float32 (exact) or with bf16-rounded operands (bf16; needs bf16-compute points in the calibration)")
	f.StringVar(&wireS, "wire", "f32", "gradient all-reduce format on the wire: f32 or bf16")
	f.StringVar(&plotDir, "plot-dir", "", "write train-split-<nic>.png, train-tokens.png and train-memory.png here")
	f.BoolVar(&markdown, "markdown", false, "print a Markdown table")
	return cmd
}

func firstNonZero(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

// secs formats a duration in seconds for tables.
func secs(d time.Duration) string {
	s := d.Seconds()
	switch {
	case s >= 100:
		return fmt.Sprintf("%.0f", s)
	case s >= 1:
		return fmt.Sprintf("%.1f", s)
	}
	return fmt.Sprintf("%.3f", s)
}

func gib(b int64) float64 { return float64(b) / (1 << 30) }

func printTrainTable(w io.Writer, rows []trainRow) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "nic\tworkers\tstep s\tcompute s\texchange s\tall-reduce s\t(straggle s)\toptimizer s\tbarrier s\ttokens/s\tmem/worker GiB\tbottleneck\n")
	for _, r := range rows {
		p := r.pred
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%s\n", r.nic, p.N, secs(p.Step), secs(p.Compute()), secs(p.ExchangeWait),
			secs(p.AllReduceWait), secs(p.Straggle), secs(p.Optimizer), secs(p.Barrier), p.TokensPerS, gib(p.Memory.Total()), p.Bottleneck)
	}
	return tw.Flush()
}

func printTrainMarkdown(w io.Writer, rows []trainRow) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| NIC | workers | step s | compute s | exchange wait s | all-reduce wait s | of it straggle s | optimizer s | tokens/s | memory/worker GiB | bottleneck |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rows {
		p := r.pred
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s | %.0f | %.0f | %s |\n", r.nic, p.N, secs(p.Step), secs(p.Compute()), secs(p.ExchangeWait),
			secs(p.AllReduceWait), secs(p.Straggle), secs(p.Optimizer), p.TokensPerS, gib(p.Memory.Total()), p.Bottleneck)
	}
}

// plotTrain writes the step split per NIC rate, tokens/s and memory per
// worker against the worker count (a log2 axis), and returns the files.
func plotTrain(dir, model string, rows []trainRow, hostMem int64) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var nics []string
	byNIC := map[string][]simulate.TrainPrediction{}
	for _, r := range rows {
		if _, ok := byNIC[r.nic]; !ok {
			nics = append(nics, r.nic)
		}
		byNIC[r.nic] = append(byNIC[r.nic], r.pred)
	}
	xs := func(ps []simulate.TrainPrediction) plotter.Values {
		v := make(plotter.Values, len(ps))
		for i, p := range ps {
			v[i] = math.Log2(float64(p.N))
		}
		return v
	}
	ticks := func(p *plot.Plot, ps []simulate.TrainPrediction) {
		var t plot.ConstantTicks
		for _, q := range ps {
			t = append(t, plot.Tick{Value: math.Log2(float64(q.N)), Label: strconv.Itoa(q.N)})
		}
		p.X.Tick.Marker = t
		p.X.Label.Text = "workers (one rank each; experts on the same workers)"
	}
	var files []string
	save := func(p *plot.Plot, name string) error {
		p.Add(plotter.NewGrid())
		p.Legend.Top, p.Legend.Left = true, true
		path := filepath.Join(dir, name)
		if err := p.Save(8*vg.Inch, 4.5*vg.Inch, path); err != nil {
			return err
		}
		files = append(files, path)
		return nil
	}
	vals := func(ps []simulate.TrainPrediction, f func(simulate.TrainPrediction) float64) plotter.Values {
		v := make(plotter.Values, len(ps))
		for i, p := range ps {
			v[i] = f(p)
		}
		return v
	}
	for _, nic := range nics {
		ps := byNIC[nic]
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s training step split, %s NICs (stacked; mean over ranks)", model, nic)
		p.Y.Label.Text = "seconds per step"
		ticks(p, ps)
		if err := stacked(p, xs(ps),
			"compute (own products)", vals(ps, func(q simulate.TrainPrediction) float64 { return q.Compute().Seconds() }),
			"exchange wait (experts)", vals(ps, func(q simulate.TrainPrediction) float64 { return q.ExchangeWait.Seconds() }),
			"all-reduce wait: for the slowest rank", vals(ps, func(q simulate.TrainPrediction) float64 { return q.Straggle.Seconds() }),
			"all-reduce wait: the rest", vals(ps, func(q simulate.TrainPrediction) float64 { return (q.AllReduceWait - q.Straggle).Seconds() }),
			"optimizer + barrier", vals(ps, func(q simulate.TrainPrediction) float64 { return (q.Optimizer + q.Barrier).Seconds() }),
		); err != nil {
			return nil, err
		}
		if err := save(p, "train-split-"+nic+".png"); err != nil {
			return nil, err
		}
	}
	p := plot.New()
	p.Title.Text = model + " training throughput"
	p.Y.Label.Text = "tokens/s (whole cluster)"
	ticks(p, byNIC[nics[0]])
	for i, nic := range nics {
		ps := byNIC[nic]
		xy := make(plotter.XYs, len(ps))
		for j, q := range ps {
			xy[j] = plotter.XY{X: math.Log2(float64(q.N)), Y: q.TokensPerS}
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return nil, err
		}
		l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		p.Add(l, pts)
		p.Legend.Add(nic+" NICs", l, pts)
	}
	// Linear scaling from the smallest cluster of the first NIC rate.
	if first := byNIC[nics[0]]; len(first) > 1 {
		var ideal plotter.XYs
		for _, q := range first {
			ideal = append(ideal, plotter.XY{X: math.Log2(float64(q.N)), Y: first[0].TokensPerS * float64(q.N) / float64(first[0].N)})
		}
		l, err := plotter.NewLine(ideal)
		if err != nil {
			return nil, err
		}
		l.Color = color.Gray{Y: 140}
		l.Dashes = []vg.Length{vg.Points(2), vg.Points(3)}
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("linear from %d workers", first[0].N), l)
		p.Y.Scale = plot.LogScale{}
		var t plot.ConstantTicks
		for dec := 1.0; dec <= 1e7; dec *= 10 {
			for _, m := range []float64{1, 2, 5} {
				t = append(t, plot.Tick{Value: m * dec, Label: strconv.FormatFloat(m*dec, 'f', -1, 64)})
			}
		}
		p.Y.Tick.Marker = t
	}
	if err := save(p, "train-tokens.png"); err != nil {
		return nil, err
	}
	ps := byNIC[nics[0]]
	p = plot.New()
	p.Title.Text = model + " training memory of the fullest worker (stacked)"
	p.Y.Label.Text = "GiB"
	ticks(p, ps)
	if err := stacked(p, xs(ps),
		"dense replica + AdamW", vals(ps, func(q simulate.TrainPrediction) float64 { return gib(q.Memory.Dense) }),
		"own experts + AdamW", vals(ps, func(q simulate.TrainPrediction) float64 { return gib(q.Memory.Experts) }),
		"own activations", vals(ps, func(q simulate.TrainPrediction) float64 { return gib(q.Memory.Activations) }),
		"experts' saved rows (all ranks)", vals(ps, func(q simulate.TrainPrediction) float64 { return gib(q.Memory.ExpertActivations) }),
	); err != nil {
		return nil, err
	}
	limit := plotter.XYs{{X: xs(ps)[0], Y: gib(hostMem)}, {X: xs(ps)[len(ps)-1], Y: gib(hostMem)}}
	l, err := plotter.NewLine(limit)
	if err != nil {
		return nil, err
	}
	l.Color = color.RGBA{R: 200, A: 255}
	l.Width = vg.Points(1.5)
	l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(l)
	p.Legend.Add(fmt.Sprintf("host memory (%.0f GiB)", gib(hostMem)), l)
	if err := save(p, "train-memory.png"); err != nil {
		return nil, err
	}
	return files, nil
}

// stacked adds bands of values stacked on one another over xs: pairs of
// a legend name and plotter.Values, the first at the bottom.
func stacked(p *plot.Plot, xs plotter.Values, pairs ...any) error {
	base := make([]float64, len(xs))
	for k := 0; k+1 < len(pairs); k += 2 {
		name, vs := pairs[k].(string), pairs[k+1].(plotter.Values)
		var pts plotter.XYs
		top := make([]float64, len(xs))
		for i := range xs {
			top[i] = base[i] + vs[i]
			pts = append(pts, plotter.XY{X: xs[i], Y: top[i]})
		}
		for i := len(xs) - 1; i >= 0; i-- {
			pts = append(pts, plotter.XY{X: xs[i], Y: base[i]})
		}
		poly, err := plotter.NewPolygon(pts)
		if err != nil {
			return err
		}
		poly.Color = plotutil.Color(k / 2)
		poly.LineStyle.Width = 0
		p.Add(poly)
		p.Legend.Add(name, poly)
		base = top
	}
	return nil
}
