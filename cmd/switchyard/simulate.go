package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/workercmd"
	"github.com/switchyard/switchyard/pkg/allreduce"
	"github.com/switchyard/switchyard/pkg/simulate"
)

// simulateCmd is `switchyard simulate`: predictions of clusters larger
// than this machine (pkg/simulate), and their validation against the
// emulated clusters it can run.
func simulateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Predict what larger clusters do (all-reduce, serving, a training step), from a calibration of this machine",
		Long: `Simulate predicts clusters of many hosts with a discrete-event model
(pkg/simulate) that runs the real code where it is pure: the all-reduce
programs of pkg/allreduce, the placement (pkg/placement, with replicas and
memory budgets), the router's top-k dispatch. Compute and software costs
come from 'simulate calibrate' (the real kernels and expert transport run
on this machine), the hardware from a cluster file or flags.

  allreduce   one all-reduce on N hosts
  serve       a model served by F front ends and N workers
  train       one data + expert parallel training step on N workers
  calibrate   measure this machine's kernels and transport
  validate    predict a measured emulated collectives run`,
	}
	cmd.AddCommand(simulateAllReduceCmd(), simulateValidateCmd(), simulateServeCmd(), simulateTrainCmd(), simulateCalibrateCmd())
	return cmd
}

func simulateAllReduceCmd() *cobra.Command {
	var (
		hostsList, rateS, bytesS, algS string
		latency, msgCPU                time.Duration
		cores                          int
	)
	cmd := &cobra.Command{
		Use:   "allreduce",
		Short: "Predict one all-reduce (e.g. a step's dense gradients) on N hosts",
		Example: `  switchyard simulate allreduce --hosts 16,64,256,1024 --rate 25gbit --bytes 1GiB
  switchyard simulate allreduce --hosts 8 --rate 100gbit --bytes 4MiB --alg rd`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rate, err := simulate.ParseRate(rateS)
			if err != nil {
				return err
			}
			b, err := workercmd.ParseBytes(bytesS)
			if err != nil || b <= 0 || b%4 != 0 {
				return fmt.Errorf("--bytes %q: want a positive multiple of 4 (e.g. 1GiB)", bytesS)
			}
			alg := allreduce.Auto
			switch algS {
			case "auto":
			case "ring":
				alg = allreduce.Ring
			case "rd":
				alg = allreduce.RecursiveDoubling
			case "tree":
				alg = allreduce.Tree
			default:
				return fmt.Errorf("--alg %q: want auto, ring, rd or tree", algS)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(w, "hosts\talg\ttime\tbusbw GB/s\tof link rate\t\n")
			ns, err := parseCounts("--hosts", hostsList, 1)
			if err != nil {
				return err
			}
			for _, n := range ns {
				hosts := make([]simulate.Host, n)
				for i := range hosts {
					hosts[i] = simulate.Host{Rate: rate, Latency: latency, Cores: cores}
				}
				t, used, err := simulate.PredictAllReduce(simulate.AllReduce{Alg: alg, N: n, Bytes: int(b)},
					simulate.Machine{Hosts: hosts}, simulate.Costs{MsgCPU: msgCPU})
				if err != nil {
					return err
				}
				bus := 0.0
				if n > 1 && t > 0 {
					bus = 2 * float64(n-1) / float64(n) * float64(b) / t.Seconds()
				}
				fmt.Fprintf(w, "%d\t%s\t%v\t%.2f\t%.3f\t\n", n, used, t.Round(time.Microsecond), bus/1e9, bus/rate)
			}
			return w.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&hostsList, "hosts", "2,4,8,16,64,256,1024", "host counts (one rank each), comma-separated")
	f.StringVar(&rateS, "rate", "25gbit", "each host's NIC rate each way")
	f.DurationVar(&latency, "latency", 10*time.Microsecond, "one-way latency of a message")
	f.DurationVar(&msgCPU, "msg-cpu", 5*time.Microsecond, "CPU time to send or receive one message (`simulate validate` derives it from a measured run)")
	f.IntVar(&cores, "cores", 4, "cores per host for the per-message software")
	f.StringVar(&bytesS, "bytes", "1GiB", "float32 data to all-reduce")
	f.StringVar(&algS, "alg", "auto", "auto (recursive doubling up to 32 KiB, ring above, as pkg/collective), ring, rd or tree")
	return cmd
}

func simulateValidateCmd() *cobra.Command {
	var file, serveFile string
	var cores int
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Predict a measured emulated run (bench/collectives or bench-serve output) and show the error of every row",
		Example: `  switchyard simulate validate --collectives bench/results/collectives.txt
  switchyard simulate validate --serve bench/results/serve.txt
  scripts/simulate-validate.sh      # a fresh emulated run, then the 15% check`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if serveFile != "" {
				return validateServe(cmd, serveFile)
			}
			fh, err := os.Open(file)
			if err != nil {
				return err
			}
			defer fh.Close()
			runs, err := simulate.ReadCollectives(fh)
			if err != nil {
				return err
			}
			if len(runs) == 0 || runs[0].N != 2 {
				return fmt.Errorf("%s: the first run must be n = 2 (the per-message calibration)", file)
			}
			costs, err := runs[0].Calibrate()
			if err != nil {
				return err
			}
			checks, err := simulate.PredictCollectives(runs, costs, cores)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "calibration: link rate and round trip as each run measured them; %d shared cores; per-message CPU %v with no more ranks than cores (from the n=2 run's smallest all-reduce); the gRPC ring's own CPU %.2f ns per byte moved (from the n=2 run's largest ring on the gRPC streams, less raw TCP's; rings of one chunk a step run on the lanes, at raw TCP's)\n",
				cores, costs.MsgCPU, costs.ByteCPU*1e9)
			for _, r := range runs {
				if r.ByteCPU == 0 {
					continue
				}
				c := r.Costs(true, cores, costs)
				note := fmt.Sprintf("per message %v (no more ranks than cores)", c.MsgCPU)
				if r.N > cores {
					note = fmt.Sprintf("more ranks than cores: per message on each side %v on the gRPC streams, half the machine's CPU per message of the run's busy round trips", c.MsgCPU)
					if l := r.Costs(false, cores, costs); l.MsgCPU != c.MsgCPU {
						note += fmt.Sprintf(", and %v on the lanes, of those round trips polled as the lanes poll", l.MsgCPU)
					}
				}
				fmt.Fprintf(out, "  n=%d: raw TCP %.2f ns per byte moved (a ring on the gRPC streams %.2f); %s\n", r.N, r.ByteCPU*1e9, c.ByteCPU*1e9, note)
			}
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(w, "n\tbytes\talg\tpredicted\tmeasured\terror\t\n")
			for _, c := range checks {
				fmt.Fprintf(w, "%d\t%d\t%s\t%v\t%v\t%+.1f%%\t\n", c.N, c.Bytes, c.Alg, c.Predicted.Round(time.Microsecond), c.Measured.Round(time.Microsecond), 100*c.Err())
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&file, "collectives", "bench/results/collectives.txt", "bench/collectives output (scripts/bench-collectives.sh)")
	cmd.Flags().StringVar(&serveFile, "serve", "", "instead, predict the emulated serving runs of this scripts/bench-serve.sh output (e.g. bench/results/serve.txt), calibrated from its own in-process rows")
	cmd.Flags().IntVar(&cores, "cores", 2, "cores the emulated hosts shared")
	return cmd
}

// validateServe predicts every emulated row of a bench-serve output file
// with the calibration its own in-process rows give
// (simulate.ServeBenchCalibration) and prints the errors.
func validateServe(cmd *cobra.Command, file string) error {
	fh, err := os.Open(file)
	if err != nil {
		return err
	}
	defer fh.Close()
	b, err := simulate.ReadServeBench(fh)
	if err != nil {
		return err
	}
	cal := simulate.ServeBenchCalibration(b)
	checks, err := simulate.PredictServeBench(b, cal)
	if err != nil {
		return err
	}
	// What the model took from the run besides its timings: the routing
	// recorded and the expert measured by rows, where the run has them.
	routing := "uniform (the run recorded none)"
	if b.Routing != nil {
		var rows int64
		for _, r := range b.Routing.Rows {
			rows += r.Count
		}
		routing = fmt.Sprintf("replayed from the run (%d rows over %d layer experts)", rows, len(b.Routing.Rows))
	}
	expert := "from the GEMM points (the run measured no expert by rows)"
	if len(cal.Expert) > 0 {
		expert = fmt.Sprintf("measured by rows (%d points), scaled to the in-process experts", len(cal.Expert))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "routing: %s; expert cost: %s\n", routing, expert)
	w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', tabwriter.AlignRight)
	// The exchange's owners' part (their queue and GEMMs on the critical
	// path) beside it: which half of a missed exchange was missed.
	fmt.Fprintf(w, "configuration\tclients\ttokens/s predicted\tmeasured\terror\tlayer exchange ms predicted\tmeasured\terror\tof which owners' ms predicted\tmeasured\tnote\t\n")
	for _, c := range checks {
		note := ""
		if !c.Judged {
			note = c.Note
		}
		fmt.Fprintf(w, "%s\t%d\t%.2f\t%.2f\t%+.0f%%\t%.3f\t%.3f\t%+.0f%%\t%.3f\t%.3f\t%s\t\n", c.Row.Config, c.Row.Clients,
			c.Predicted.TokensPerS, c.Row.TokensPerS, 100*c.TokensErr(),
			float64(c.Predicted.Exchange)/1e6, float64(c.Row.Exchange)/1e6, 100*c.ExchangeErr(),
			float64(c.Predicted.Owners)/1e6, float64(c.Row.Owners)/1e6, note)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	// Where the run recorded its CPU (bench/serve's "cores:" lines): the
	// core time a token took, the model's against the run's processes'
	// and the machine's, and what the model does not charge.
	var cw *tabwriter.Writer
	for _, c := range checks {
		pred, cluster, machine, ok := c.CoreMs()
		if !ok {
			continue
		}
		if cw == nil {
			fmt.Fprintf(cmd.OutOrStdout(), "\ncore time per generated token (ms; the hosts share the machine's cores), predicted / measured:\n")
			cw = tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(cw, "configuration\tclients\tfront end + workers\terror\tfront end\tworkers\tmachine\tof which coordinator\tother\tsteal\t\n")
		}
		u, p := c.Row.CPU, c.Predicted
		ms := func(cores float64) float64 { return 1e3 * cores / c.Row.TokensPerS }
		pms := func(cores float64) float64 { return 1e3 * cores / p.TokensPerS }
		fmt.Fprintf(cw, "%s\t%d\t%.2f / %.2f\t%+.0f%%\t%.2f / %.2f\t%.2f / %.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", c.Row.Config, c.Row.Clients,
			pred, cluster, 100*(pred-cluster)/cluster, pms(p.Util.FrontendCores), ms(u.Frontend), pms(p.Util.WorkerCores), ms(u.Workers),
			machine, ms(u.Coordinator), ms(u.Other), ms(u.Steal))
	}
	if cw != nil {
		return cw.Flush()
	}
	return nil
}
