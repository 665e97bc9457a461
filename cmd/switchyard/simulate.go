package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
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
		Short: "Predict what larger clusters do (collectives so far), validated against emulated hosts",
		Long: `Simulate predicts clusters of many hosts with a discrete-event model
(pkg/simulate) that runs the real schedules of the code where they are pure.
Built so far: all-reduce (the pkg/allreduce programs, chunk by chunk, over
hosts with a NIC rate, a latency and cores). Serving and training-step models
are not built yet.`,
	}
	cmd.AddCommand(simulateAllReduceCmd(), simulateValidateCmd())
	return cmd
}

// parseRate reads a link rate such as 25gbit, 100gbit, 500mbit or a
// number of bits/s, returning bytes/s.
func parseRate(s string) (float64, error) {
	l := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	switch {
	case strings.HasSuffix(l, "gbit"):
		mult, l = 1e9, strings.TrimSuffix(l, "gbit")
	case strings.HasSuffix(l, "mbit"):
		mult, l = 1e6, strings.TrimSuffix(l, "mbit")
	}
	v, err := strconv.ParseFloat(l, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("rate %q: want e.g. 25gbit, 500mbit or bits/s", s)
	}
	return v * mult / 8, nil
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
			rate, err := parseRate(rateS)
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
			for _, f := range strings.Split(hostsList, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n < 1 {
					return fmt.Errorf("--hosts %q: want counts like 16,64,256", hostsList)
				}
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
	var file string
	var cores int
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Predict a measured emulated run (bench/collectives output) and show the error of every row",
		Example: `  switchyard simulate validate --collectives bench/results/collectives.txt
  scripts/simulate-validate.sh      # a fresh emulated run, then the 15% check`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			fmt.Fprintf(out, "calibration: link rate and round trip as each run measured them; per-message CPU %v (from the n=2 run's smallest all-reduce); %d shared cores\n", costs.MsgCPU, cores)
			w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(w, "n\tbytes\talg\tpredicted\tmeasured\terror\t\n")
			for _, c := range checks {
				fmt.Fprintf(w, "%d\t%d\t%s\t%v\t%v\t%+.1f%%\t\n", c.N, c.Bytes, c.Alg, c.Predicted.Round(time.Microsecond), c.Measured.Round(time.Microsecond), 100*c.Err())
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&file, "collectives", "bench/results/collectives.txt", "bench/collectives output (scripts/bench-collectives.sh)")
	cmd.Flags().IntVar(&cores, "cores", 2, "cores the emulated hosts shared")
	return cmd
}
