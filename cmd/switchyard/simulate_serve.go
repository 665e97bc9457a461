package main

import (
	"encoding/json"
	"fmt"
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

// serveRow is one predicted serving configuration.
type serveRow struct {
	workers, frontends int
	nic                string
	batch              int
	skew               string // "0", "1.0", "trace"
	hot                int
	choice             simulate.ReplicaChoice
	res                *simulate.ServeResult
	err                error
}

func simulateServeCmd() *cobra.Command {
	var (
		modelName, clusterFile, workersS, nicS, batchS, frontendsS, memory, memBWS, reserveS  string
		zipfS, hotS, choiceS, traceFile, calFile, plotDir, plotPrefix, loadRateS, sourceRateS string
		cores, replicas, contextN, steps, hostsPerLeaf                                        int
		oversub                                                                               float64
		latency, detect                                                                       time.Duration
		seed                                                                                  uint64
		recovery                                                                              bool
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Predict MoE serving on a cluster: tokens/s, inter-token latency, memory, bottleneck, recovery",
		Long: `Serve predicts decode serving of a mixture-of-experts model (pkg/simulate's
serving model): F front ends each decoding a batch of sequences, step after
step, over N workers holding the routed experts as the real placement
(pkg/placement) puts them, the real dispatch plan (pkg/router) and the real
client's choice of copies, with per-message software costs, NIC rates,
latency and the owners' batched GEMMs. It prints one row per configuration
and, with --recovery, the time to restore the copies of a dead worker.

Costs come from --calibration (a file from 'switchyard simulate calibrate');
without one, the built-in calibration is ASSUMED: numbers from the committed
benchmarks of a 2-vCPU Xeon (pkg/simulate.AssumedCalibration), scaled
linearly in cores. See docs/scale/serving.md.`,
		Example: `  switchyard simulate serve --model deepseek-v3 --workers 8,16,32,64,128,256 --nic 25gbit,100gbit \
      --frontends N/4 --cores 64 --memory 768GiB --mem-bandwidth 300GB/s --batch 1,32 --plot-dir /tmp/p
  switchyard simulate serve --model deepseek-v3 --workers 64 --batch 32 --zipf 0,0.5,1 --hot-replicas 0,32 \
      --replica-choice client,rotate,split`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			shape, err := simulate.ShapeByName(modelName)
			if err != nil {
				return err
			}
			spec := simulate.ClusterSpec{Cores: cores, Memory: memory, Latency: latency.String(), Oversubscription: oversub, HostsPerLeaf: hostsPerLeaf}
			if clusterFile != "" {
				if spec, err = serveReadClusterSpec(clusterFile); err != nil {
					return err
				}
			}
			workers, err := parseCounts("--workers", workersS, 0)
			if err != nil {
				return err
			}
			if clusterFile != "" && !cmd.Flags().Changed("workers") {
				workers = []int{spec.Workers}
			}
			nics := splitList(nicS)
			if clusterFile != "" && !cmd.Flags().Changed("nic") {
				nics = []string{spec.NIC}
			}
			batches, err := parseCounts("--batch", batchS, 0)
			if err != nil {
				return err
			}
			hots, err := parseCounts("--hot-replicas", hotS, 0)
			if err != nil {
				return err
			}
			var choices []simulate.ReplicaChoice
			for _, c := range splitList(choiceS) {
				ch, err := simulate.ParseReplicaChoice(c)
				if err != nil {
					return fmt.Errorf("--replica-choice: %w", err)
				}
				choices = append(choices, ch)
			}
			var skews []string
			pops := map[string]simulate.Popularity{}
			if traceFile != "" {
				f, err := os.Open(traceFile)
				if err != nil {
					return err
				}
				tr, err := simulate.ReadRoutingTrace(f)
				f.Close()
				if err != nil {
					return err
				}
				if pops["trace"], err = tr.Popularity(shape); err != nil {
					return err
				}
				skews = []string{"trace"}
			} else {
				for _, z := range splitList(zipfS) {
					s, err := strconv.ParseFloat(z, 64)
					if err != nil || s < 0 || math.IsInf(s, 0) {
						return fmt.Errorf("--zipf %q: want exponents >= 0, e.g. 0,0.5,1", zipfS)
					}
					skews = append(skews, z)
					pops[z] = simulate.ZipfPopularity(shape, s, seed)
				}
			}
			memBW, err := serveBytesRate(memBWS)
			if err != nil {
				return fmt.Errorf("--mem-bandwidth: %w", err)
			}
			reserve, err := simulate.ParseBytes(reserveS)
			if err != nil {
				return fmt.Errorf("--reserve: %w", err)
			}
			cal := simulate.AssumedCalibration()
			calNote := "ASSUMED (built-in: " + cal.CPU + "; per core, scaled linearly; no --calibration given)"
			if calFile != "" {
				f, err := os.Open(calFile)
				if err != nil {
					return err
				}
				cal, err = simulate.ReadCalibration(f)
				f.Close()
				if err != nil {
					return err
				}
				calNote = fmt.Sprintf("%s (measured on %s, %d cores, %s)", calFile, cal.CPU, cal.Cores, cal.When)
			}
			p := shape.Params()
			fmt.Fprintf(out, "model: %s, %.1f B parameters (%.1f B activated), routed expert copy %.1f MB, front end holds %.1f GB\n",
				shape.Name, float64(p.Total)/1e9, float64(p.Activated)/1e9, float64(shape.ExpertBytes())/1e6, float64(shape.FrontendBytes())/1e9)
			fmt.Fprintf(out, "hosts: %s; front ends %s; %d copies of each expert; context %d tokens; calibration: %s\n",
				serveDescribeSpec(spec, memBW, reserve), frontendsS, replicas, contextN, calNote)

			var rows []serveRow
			type recRow struct {
				workers int
				nic     string
				rec     *simulate.Recovery
				err     error
			}
			var recs []recRow
			for _, n := range workers {
				for _, nic := range nics {
					sp := spec
					sp.Workers, sp.NIC = n, nic
					f, err := serveFrontends(frontendsS, n)
					if err != nil {
						return err
					}
					if clusterFile != "" && !cmd.Flags().Changed("frontends") {
						f = max(spec.Frontends, 1)
					}
					sp.Frontends = f
					c, err := sp.Resolve()
					if err != nil {
						return err
					}
					for _, z := range skews {
						for _, hot := range hots {
							pc := simulate.PlaceConfig{Replicas: replicas, HotReplicas: hot, ReserveBytes: reserve}
							pl, perr := simulate.PlaceServe(shape, c, pops[z], pc)
							for _, b := range batches {
								for _, ch := range choices {
									r := serveRow{workers: n, frontends: f, nic: nic, batch: b, skew: z, hot: hot, choice: ch, err: perr}
									if perr == nil {
										r.res, r.err = simulate.PredictServe(simulate.ServeConfig{Model: shape, Cluster: c, Batch: b, Context: contextN,
											Steps: steps, Seed: seed, Popularity: pops[z], Place: pc, Placement: pl, MemBandwidth: memBW,
											Choice: ch}, cal)
									}
									rows = append(rows, r)
								}
							}
							if recovery && z == skews[0] && hot == hots[0] {
								rr := recRow{workers: n, nic: nic, err: perr}
								if perr == nil {
									load := c.Rate
									if loadRateS != "nic" {
										if load, err = serveBytesRate(loadRateS); err != nil || load <= 0 {
											return fmt.Errorf("--load-rate %q: want e.g. 2GB/s, 16gbit or nic", loadRateS)
										}
									}
									src, err := serveBytesRate(sourceRateS)
									if err != nil {
										return fmt.Errorf("--source-rate: %w", err)
									}
									base := pl
									if hot > 0 {
										base, err = simulate.PlaceServe(shape, c, nil, simulate.PlaceConfig{Replicas: replicas, ReserveBytes: reserve})
										if err != nil {
											return err
										}
									}
									rr.rec, rr.err = simulate.PredictRecovery(shape, c, base, pc, simulate.RecoveryConfig{Detect: detect, LoadRate: load, SourceRate: src, Dead: -1})
								}
								recs = append(recs, rr)
							}
						}
					}
				}
			}
			if err := printServeTable(out, rows); err != nil {
				return err
			}
			if recovery {
				loadS := loadRateS
				if loadS == "nic" {
					loadS = "the NIC rate"
				}
				fmt.Fprintf(out, "\nrecovery after the fullest worker dies (detection %v, load at %s per receiver", serveOr(detect, simulate.DefaultEvictAfter+simulate.DefaultProbeInterval), loadS)
				if sourceRateS != "0" {
					fmt.Fprintf(out, ", %s for all together", sourceRateS)
				}
				fmt.Fprintln(out, "):")
				w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
				fmt.Fprintf(w, "workers\tnic\tcopies moved\tGB moved\treceivers\tbusiest receiver GB\tload s\ttotal s\texperts lost\t\tbottleneck\n")
				for _, r := range recs {
					if r.err != nil {
						fmt.Fprintf(w, "%d\t%s\t-\t-\t-\t-\t-\t-\t-\t\t%v\n", r.workers, r.nic, serveShortErr(r.err))
						continue
					}
					x := r.rec
					fmt.Fprintf(w, "%d\t%s\t%d\t%.1f\t%d\t%.1f\t%.2f\t%.2f\t%d\t\t%s\n", r.workers, r.nic, x.Moved, float64(x.MovedBytes)/1e9,
						x.Receivers, float64(x.MaxBytes)/1e9, x.Load.Seconds(), x.Total.Seconds(), x.LostExperts, x.Bottleneck)
				}
				if err := w.Flush(); err != nil {
					return err
				}
			}
			if plotDir != "" {
				var recPts []serveRecPoint
				for _, r := range recs {
					name := "loaded over the " + r.nic + " NIC"
					if loadRateS != "nic" {
						name = fmt.Sprintf("loaded at %s (%s NICs)", loadRateS, r.nic)
					}
					p := serveRecPoint{workers: r.workers, name: name, total: math.NaN()}
					if r.err == nil {
						p.total = r.rec.Total.Seconds()
					}
					recPts = append(recPts, p)
				}
				files, err := plotServe(plotDir, plotPrefix, shape, spec, reserve, rows, recPts)
				if err != nil {
					return err
				}
				for _, f := range files {
					fmt.Fprintln(out, "wrote", f)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelName, "model", "deepseek-v3", "deepseek-v3 or mixtral-8x22b")
	f.StringVar(&clusterFile, "cluster", "", "a cluster file (JSON, pkg/simulate.ClusterSpec) instead of --cores, --memory, --latency, --oversubscription, --hosts-per-leaf; --workers, --nic and --frontends, if given, override it")
	f.StringVar(&workersS, "workers", "8,16,32,64,128,256", "worker counts, comma-separated")
	f.StringVar(&nicS, "nic", "25gbit,100gbit", "NIC rates each way, comma-separated")
	f.StringVar(&frontendsS, "frontends", "1", "front ends: a count, or N/k for one per k workers")
	f.IntVar(&cores, "cores", 32, "cores per host")
	f.StringVar(&memory, "memory", "768GiB", "memory per host")
	f.StringVar(&memBWS, "mem-bandwidth", "0", "a host's memory bandwidth, e.g. 300GB/s (0: cores x the calibration's per-core bandwidth)")
	f.StringVar(&reserveS, "reserve", "48MiB", "memory per worker not for experts (OS, runtime)")
	f.DurationVar(&latency, "latency", 10*time.Microsecond, "one-way latency across the fabric")
	f.Float64Var(&oversub, "oversubscription", 1, "leaf-spine oversubscription (1: non-blocking)")
	f.IntVar(&hostsPerLeaf, "hosts-per-leaf", 32, "hosts under one leaf switch")
	f.StringVar(&batchS, "batch", "1,32", "sequences each front end decodes per step, comma-separated")
	f.IntVar(&contextN, "context", 1024, "cached tokens each sequence attends over (mean)")
	f.IntVar(&replicas, "replicas", 2, "copies of each expert on distinct workers (R)")
	f.StringVar(&hotS, "hot-replicas", "0", "extra copies per MoE layer for the hottest experts (EPLB), comma-separated")
	f.StringVar(&choiceS, "replica-choice", "client", "how a front end sends an expert's rows to its copies, comma-separated: client (the real client: all to the copy with the fewest rows in this call, ties rotated from call to call from an offset of each front end's own), rotate (ties broken by front end), primary (the primary on ties: the client before it rotated them), split (EPLB: rows split over the copies)")
	f.StringVar(&zipfS, "zipf", "0", "Zipf exponents of expert popularity per layer (0: uniform), comma-separated")
	f.StringVar(&traceFile, "trace", "", "a routing trace (layer,expert,count CSV) instead of --zipf")
	f.StringVar(&calFile, "calibration", "", "a calibration file from `switchyard simulate calibrate` (default: the built-in ASSUMED one)")
	f.IntVar(&steps, "steps", 8, "decode steps measured per front end (after 2 of warm-up)")
	f.Uint64Var(&seed, "seed", 1, "seed of the routing draw and the Zipf ranking")
	f.BoolVar(&recovery, "recovery", true, "also predict the recovery from a dead worker")
	f.DurationVar(&detect, "detect", 0, "time to detect a dead worker (0: the coordinator's probes, 2s)")
	f.StringVar(&loadRateS, "load-rate", "2GB/s", "rate at which a worker loads experts: e.g. 2GB/s (local NVMe), 16gbit, or nic")
	f.StringVar(&sourceRateS, "source-rate", "0", "rate of a shared model store all receivers load from (0: none)")
	f.StringVar(&plotDir, "plot-dir", "", "write PNG plots here: PREFIX-tokens, -itl, -memory, -recovery (several worker counts), -skew (several --zipf)")
	f.StringVar(&plotPrefix, "plot-prefix", "serve", "the plots' file name prefix")
	return cmd
}

func serveOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// serveReadClusterSpec reads a cluster file (unknown fields refused).
func serveReadClusterSpec(path string) (simulate.ClusterSpec, error) {
	var s simulate.ClusterSpec
	f, err := os.Open(path)
	if err != nil {
		return s, err
	}
	defer f.Close()
	d := json.NewDecoder(f)
	d.DisallowUnknownFields()
	if err := d.Decode(&s); err != nil {
		return s, fmt.Errorf("cluster file %s: %w", path, err)
	}
	return s, nil
}

func serveDescribeSpec(s simulate.ClusterSpec, memBW float64, reserve int64) string {
	c, err := simulate.ClusterSpec{Workers: 1, Cores: s.Cores, Memory: s.Memory, Latency: s.Latency, Oversubscription: s.Oversubscription, HostsPerLeaf: s.HostsPerLeaf}.Resolve()
	if err != nil {
		return err.Error()
	}
	bw := "cores x calibration"
	if memBW > 0 {
		bw = fmt.Sprintf("%.0f GB/s", memBW/1e9)
	}
	return fmt.Sprintf("%d cores, %.0f GiB (%.1f GiB reserved), memory bandwidth %s, latency %v, oversubscription %g, %d hosts per leaf",
		c.Cores, float64(c.MemoryBytes)/(1<<30), float64(reserve)/(1<<30), bw, c.Latency, c.Oversubscription, c.HostsPerLeaf)
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseCounts reads a comma-separated list of counts of at least least
// (e.g. --workers 8,16,32) for flag.
func parseCounts(flag, s string, least int) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < least {
			return nil, fmt.Errorf("%s %q: want counts of at least %d, comma-separated, like 8,16,32", flag, s, least)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: empty", flag)
	}
	return out, nil
}

// serveFrontends reads --frontends: a count, or N/k (one per k workers,
// at least 1).
func serveFrontends(s string, workers int) (int, error) {
	if k, ok := strings.CutPrefix(s, "N/"); ok {
		d, err := strconv.ParseFloat(k, 64)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("--frontends %q: want a count or N/k", s)
		}
		return max(1, int(math.Round(float64(workers)/d))), nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("--frontends %q: want a count or N/k", s)
	}
	return n, nil
}

// serveBytesRate reads a rate in bytes/s ("2GB/s", "500MiB/s") or bits/s
// ("25gbit"); "0" is 0.
func serveBytesRate(s string) (float64, error) {
	if s == "0" || s == "" {
		return 0, nil
	}
	if b, ok := strings.CutSuffix(s, "/s"); ok {
		v, err := simulate.ParseBytes(b)
		return float64(v), err
	}
	return simulate.ParseRate(s)
}

func serveShortErr(err error) string {
	s := err.Error()
	if i := strings.Index(s, " ("); i > 0 && strings.Contains(s, "does not fit") {
		return s[:i]
	}
	return s
}

func printServeTable(out io.Writer, rows []serveRow) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "workers\tfront ends\tnic\tbatch\tzipf\thot\tcopies\ttokens/s\tITL p50 ms\tITL p99 ms\tGB/worker\tfe/expert/net/sw %%\t\tbottleneck\n")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%d\t%s\t%d\t%s\t%d\t%s\t", r.workers, r.frontends, r.nic, r.batch, r.skew, r.hot, r.choice)
		if r.err != nil {
			fmt.Fprintf(w, "-\t-\t-\t-\t-\t\t%s\n", serveShortErr(r.err))
			continue
		}
		x := r.res
		sp := x.Split
		tot := float64(sp.Total())
		pct := func(d time.Duration) float64 { return 100 * float64(d) / tot }
		fmt.Fprintf(w, "%.1f\t%.1f\t%.1f\t%.1f\t%.0f/%.0f/%.0f/%.0f\t\t%s\n", x.TokensPerS, serveMs(x.ITL50), serveMs(x.ITL99),
			float64(x.Placement.MaxBytes())/1e9, pct(sp.Frontend), pct(sp.Expert), pct(sp.NIC+sp.Latency), pct(sp.Software), x.Bottleneck)
	}
	return w.Flush()
}

func serveMs(d time.Duration) float64 { return float64(d) / 1e6 }

type serveRecPoint struct {
	workers int
	name    string // the series
	total   float64
}

// plotServe writes the PREFIX-*.png plots the rows support: tokens/s,
// ITL and memory per worker against the worker count (more than one
// count), the skew sweep (more than one Zipf exponent), recovery.
func plotServe(dir, prefix string, m simulate.MoEShape, spec simulate.ClusterSpec, reserve int64, rows []serveRow, recs []serveRecPoint) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	write := func(name string, c simulate.Chart) error {
		path := filepath.Join(dir, prefix+"-"+name)
		if err := writeChart(path, c); err != nil {
			return err
		}
		files = append(files, path)
		return nil
	}
	val := func(r serveRow, f func(*simulate.ServeResult) float64) float64 {
		if r.err != nil {
			return math.NaN()
		}
		return f(r.res)
	}
	first := rows[0]
	counts := map[int]bool{}
	skews := map[string]bool{}
	for _, r := range rows {
		counts[r.workers] = true
		skews[r.skew] = true
	}
	fe := fmt.Sprintf("%d front ends", first.frontends)
	for _, r := range rows {
		if r.frontends != first.frontends {
			fe = fmt.Sprintf("%d front ends per %d workers", first.frontends, first.workers)
			break
		}
	}
	if len(counts) > 1 {
		tok := simulate.Chart{Title: m.Name + " decode throughput (" + fe + ")", XLabel: "workers", YLabel: "tokens/s (whole cluster)", LogX: true, LogY: true}
		itl := simulate.Chart{Title: m.Name + " inter-token latency, p50 (" + fe + ")", XLabel: "workers", YLabel: "ms", LogX: true, YZero: true}
		mem := simulate.Chart{Title: m.Name + " routed experts per worker (fullest worker)", XLabel: "workers", YLabel: "GB", LogX: true, YZero: true}
		for _, r := range rows {
			if r.skew != first.skew || r.hot != first.hot || r.choice != first.choice {
				continue
			}
			name := fmt.Sprintf("%s, batch %d", r.nic, r.batch)
			x := float64(r.workers)
			tok.Add(name, x, val(r, func(s *simulate.ServeResult) float64 { return s.TokensPerS }))
			itl.Add(name, x, val(r, func(s *simulate.ServeResult) float64 { return serveMs(s.ITL50) }))
			if r.nic == first.nic && r.batch == first.batch {
				mem.Add("experts held (fullest worker)", x, val(r, func(s *simulate.ServeResult) float64 { return float64(s.Placement.MaxBytes()) / 1e9 }))
				if c, err := (simulate.ClusterSpec{Workers: r.workers, Memory: spec.Memory}).Resolve(); err == nil {
					mem.Add("expert budget (memory less reserve)", x, float64(c.MemoryBytes-reserve)/1e9)
				}
			}
		}
		for _, c := range []struct {
			name string
			c    simulate.Chart
		}{{"tokens.png", tok}, {"itl.png", itl}, {"memory.png", mem}} {
			if err := write(c.name, c.c); err != nil {
				return nil, err
			}
		}
	}
	if len(skews) > 1 {
		sk := simulate.Chart{Title: fmt.Sprintf("%s under routing skew: %d workers, %s, batch %d", m.Name, first.workers, first.nic, first.batch),
			XLabel: "Zipf exponent of expert popularity", YLabel: "tokens/s (whole cluster)", YZero: true}
		for _, r := range rows {
			if r.workers != first.workers || r.nic != first.nic || r.batch != first.batch {
				continue
			}
			s, err := strconv.ParseFloat(r.skew, 64)
			if err != nil {
				continue
			}
			name := map[simulate.ReplicaChoice]string{simulate.ChoiceClient: "the client's choice of copy",
				simulate.ChoiceRotate: "ties rotated by front end", simulate.ChoicePrimary: "the primary on ties",
				simulate.ChoiceSplit: "rows split over copies (EPLB)"}[r.choice]
			if r.hot > 0 {
				name = fmt.Sprintf("+%d hot replicas per layer, %s", r.hot, name)
			} else {
				name = "no hot replicas, " + name
			}
			sk.Add(name, s, val(r, func(s *simulate.ServeResult) float64 { return s.TokensPerS }))
		}
		if err := write("skew.png", sk); err != nil {
			return nil, err
		}
	}
	if len(recs) > 0 && len(counts) > 1 {
		rc := simulate.Chart{Title: m.Name + ": restoring the copies of a dead worker", XLabel: "workers", YLabel: "seconds (detection + load)", LogX: true, YZero: true}
		for _, p := range recs {
			rc.Add(p.name, float64(p.workers), p.total)
		}
		if err := write("recovery.png", rc); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// writeChart draws c to a PNG at path (8 x 4.5 in): each series a line
// with points, broken at NaN values; a log2 X axis ticked at the series'
// Xs when c.LogX.
func writeChart(path string, c simulate.Chart) error {
	if err := c.Validate(); err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = c.Title
	p.X.Label.Text = c.XLabel
	p.Y.Label.Text = c.YLabel
	tx := func(x float64) float64 { return x }
	if c.LogX {
		tx = math.Log2
		var ticks plot.ConstantTicks
		seen := map[float64]bool{}
		for _, s := range c.Series {
			for _, x := range s.X {
				if !seen[x] {
					seen[x] = true
					ticks = append(ticks, plot.Tick{Value: math.Log2(x), Label: strconv.FormatFloat(x, 'g', -1, 64)})
				}
			}
		}
		p.X.Tick.Marker = ticks
	}
	switch {
	case c.LogY:
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	case c.YZero:
		p.Y.Min = 0
	}
	for i, s := range c.Series {
		var seg plotter.XYs
		legend := true
		flush := func() error {
			if len(seg) == 0 {
				return nil
			}
			l, pts, err := plotter.NewLinePoints(seg)
			if err != nil {
				return err
			}
			l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
			l.Dashes = plotutil.Dashes(i)
			pts.Shape = plotutil.Shape(i)
			p.Add(l, pts)
			if legend {
				p.Legend.Add(s.Name, l, pts)
				legend = false
			}
			seg = nil
			return nil
		}
		for j, x := range s.X {
			if math.IsNaN(s.Y[j]) || math.IsInf(s.Y[j], 0) {
				if err := flush(); err != nil {
					return err
				}
				continue
			}
			seg = append(seg, plotter.XY{X: tx(x), Y: s.Y[j]})
		}
		if err := flush(); err != nil {
			return err
		}
	}
	p.Add(plotter.NewGrid())
	var crowded bool
	p.Legend.Top, p.Legend.Left, crowded = serveLegendCorner(c, tx)
	if crowded { // every corner has data: make room above it
		p.Legend.Top = true
		if c.LogY {
			p.Y.Max *= 4
		} else {
			p.Y.Max = p.Y.Min + 1.45*(p.Y.Max-p.Y.Min)
		}
	}
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}

// serveLegendCorner picks the corner of the plot with the fewest data
// points under where the legend goes (the outer 45% of the width, 40% of
// the height), top-left on ties; crowded when every corner has some.
func serveLegendCorner(c simulate.Chart, tx func(float64) float64) (top, left, crowded bool) {
	ty := func(y float64) float64 { return y }
	if c.LogY {
		ty = math.Log10
	}
	x0, x1, y0, y1 := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	if c.YZero && !c.LogY {
		y0 = 0
	}
	for _, s := range c.Series {
		for i, x := range s.X {
			if y := s.Y[i]; !math.IsNaN(y) && !math.IsInf(y, 0) {
				x0, x1 = min(x0, tx(x)), max(x1, tx(x))
				y0, y1 = min(y0, ty(y)), max(y1, ty(y))
			}
		}
	}
	best := -1
	for _, corner := range []struct{ top, left bool }{{true, true}, {true, false}, {false, false}, {false, true}} {
		n := 0
		for _, s := range c.Series {
			for i, x := range s.X {
				y := s.Y[i]
				if math.IsNaN(y) || math.IsInf(y, 0) {
					continue
				}
				fx, fy := 0.5, 0.5
				if x1 > x0 {
					fx = (tx(x) - x0) / (x1 - x0)
				}
				if y1 > y0 {
					fy = (ty(y) - y0) / (y1 - y0)
				}
				if (corner.left && fx < 0.45 || !corner.left && fx > 0.55) && (corner.top && fy > 0.6 || !corner.top && fy < 0.4) {
					n++
				}
			}
		}
		if best < 0 || n < best {
			best, top, left = n, corner.top, corner.left
		}
	}
	return top, left, best > 0
}
