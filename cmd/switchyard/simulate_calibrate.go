package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/atomicfile"
	"github.com/switchyard/switchyard/internal/simcal"
	"github.com/switchyard/switchyard/pkg/simulate"
)

// simulateCalibrateCmd is `switchyard simulate calibrate`: the
// simulator's inputs measured on this machine with the real kernels and
// expert transport (internal/simcal), written as a Calibration JSON file
// that `simulate train --calibration FILE` reads.
func simulateCalibrateCmd() *cobra.Command {
	var (
		out, peer, serveLink string
		quick, verbose       bool
		trainModel           string
		trainBatch, trainSeq int
		trainTime            time.Duration
		expertShape          string
		shareProcs           int
		shareChild           string
	)
	cmd := &cobra.Command{
		Use:   "calibrate",
		Short: "Measure this machine's kernels, memory and expert transport for the simulator (Calibration JSON)",
		Long: `Calibrate runs the real code on this machine: pkg/tensor's products as the
models call them (tensor.Linear; float32 weights, bf16 weights, and float32
weights under --compute bf16) at M = 1, 16, 64, 512 rows for three weight
shapes on 1 and all threads; one core's memory bandwidth (a float32 GEMV over
256 MiB); AdamW's rate on one core; and the expert exchange's software cost
(a transport.ExpertServer on loopback reached by a RemoteTrainer: the round
trip of one row, and the per-byte cost of a 16 MiB payload). With --peer it
also measures the link to another host running --serve-link: its raw-TCP
rate and round trip, and the core time the exchange's messages take across
it on both hosts (the peer serves an exchange owner and reports its own CPU
time). With --train-model it also profiles one rank's training step of that
model in one process (--train-batch sequences of --train-seq-len tokens),
which the training model scales its products to where the shape, tokens
and threads match. With --expert it also times one routed expert of that
shape (bf16 weights streamed from memory) over 1 to 32 rows on one thread,
which the serving model takes an expert's cost by rows from (about 2 s
more); with --share-procs N as well, it runs N one-thread processes side by
side, each woken over loopback TCP to compute a few products of that expert,
and measures what sharing the cores adds to a product's core time and what
a wake from idle adds to a message's (the serving model's shared pool
charges both). About 30-60 s (--quick: about 3 s, fewer points). Keep the machine
otherwise idle.`,
		Example: `  switchyard simulate calibrate --out bench/results/calibration-amd.json
  switchyard simulate calibrate --quick
  switchyard simulate calibrate --serve-link :7071              # on host B
  switchyard simulate calibrate --peer hostB:7071 --out cal.json # on host A
  switchyard simulate calibrate --quick --train-model testdata/golden/qwen2_moe --train-batch 2 --train-seq-len 32`,
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			w := cmd.OutOrStdout()
			if serveLink != "" {
				lis, err := net.Listen("tcp", serveLink)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "answering link measurements on %s until interrupted\n", lis.Addr())
				return simcal.ServeLink(ctx, lis)
			}
			opts := simcal.Options{Quick: quick, Peer: peer, TrainModel: trainModel, TrainBatch: trainBatch, TrainSeqLen: trainSeq, TrainTime: trainTime}
			if shareChild != "" && expertShape == "" {
				return fmt.Errorf("--share-child needs --expert")
			}
			if expertShape != "" {
				h, f, ok := strings.Cut(expertShape, "x")
				hi, err1 := strconv.Atoi(h)
				fi, err2 := strconv.Atoi(f)
				if !ok || err1 != nil || err2 != nil || hi <= 0 || fi <= 0 {
					return fmt.Errorf("--expert %q: want HIDDENxINTER, e.g. 1024x2816", expertShape)
				}
				opts.ExpertShape = [2]int{hi, fi}
				if shareChild != "" {
					return simcal.ShareChild(shareChild, hi, fi)
				}
				if shareProcs > 0 {
					if shareProcs < 2 {
						return fmt.Errorf("--share-procs %d: want 2 or more", shareProcs)
					}
					exe, err := os.Executable()
					if err != nil {
						return err
					}
					opts.ShareProcs = shareProcs
					opts.ShareCommand = func(addr string) *exec.Cmd {
						return exec.Command(exe, "simulate", "calibrate", "--share-child", addr, "--expert", expertShape)
					}
				}
			} else if shareProcs > 0 {
				return fmt.Errorf("--share-procs needs --expert")
			}
			if verbose {
				opts.Log = cmd.ErrOrStderr()
			}
			start := time.Now()
			c, err := simcal.Calibrate(ctx, opts)
			if err != nil {
				return err
			}
			if err := printCalibration(w, c); err != nil {
				return err
			}
			fmt.Fprintf(w, "measured in %v\n", time.Since(start).Round(100*time.Millisecond))
			if out == "" {
				return nil
			}
			if err := atomicfile.Write(out, 0o644, func(f io.Writer) error { return simcal.Write(f, c) }); err != nil {
				return err
			}
			fmt.Fprintf(w, "wrote %s\n", out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "write the calibration (JSON) to this file")
	f.BoolVar(&quick, "quick", false, "measure a reduced set in about 3 s (GEMM at M = 1 and 512 of one shape, float32; small buffers)")
	f.BoolVarP(&verbose, "verbose", "v", false, "print each measurement on stderr as it completes")
	f.StringVar(&peer, "peer", "", "host:port of `simulate calibrate --serve-link` on another host: also measure the link (raw TCP rate and round trip)")
	f.StringVar(&serveLink, "serve-link", "", "answer another host's --peer link measurement on this address until interrupted")
	f.StringVar(&trainModel, "train-model", "", "also profile one rank's training step of this model folder in one process (the training model's compute where shape, tokens and threads match)")
	f.StringVar(&expertShape, "expert", "", "also time one routed expert of bf16 weights of this shape (HIDDENxINTER, e.g. 1024x2816) over 1 to 32 rows on one thread (the serving model's expert cost by rows)")
	f.IntVar(&shareProcs, "share-procs", 0, "with --expert, also measure this many one-thread processes sharing the cores, each woken to compute products of that expert (the serving model's cost of sharing; about 10 s)")
	f.StringVar(&shareChild, "share-child", "", "run as a --share-procs child reporting to this address (internal)")
	f.MarkHidden("share-child")
	f.IntVar(&trainBatch, "train-batch", 1, "sequences per rank of the --train-model profile")
	f.IntVar(&trainSeq, "train-seq-len", 128, "tokens per sequence of the --train-model profile")
	f.DurationVar(&trainTime, "train-profile-time", 0, "time the --train-model profile's steps for this long (0: 2s, 500ms with --quick)")
	return cmd
}

// printCalibration prints the CPU and a summary of c: GEMM throughput by
// shape, dtype and threads, then the memory, optimizer and transport
// numbers.
func printCalibration(w io.Writer, c *simulate.Calibration) error {
	fmt.Fprintf(w, "cpu: %s (%d logical cores), %s\n", c.CPU, c.Cores, c.When)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "M\tK\tN\tdtype\tthreads\tGFLOP/s\t\n")
	for _, p := range c.GEMM {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%.1f\t\n", p.M, p.K, p.N, p.DType, p.Threads, p.FLOPS/1e9)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "memory bandwidth (one core, streaming read): %.1f GB/s\n", c.MemBandwidth/1e9)
	if c.AdamParamsPerS > 0 {
		fmt.Fprintf(w, "AdamW (one core): %.0f M parameters/s\n", c.AdamParamsPerS/1e6)
	}
	fmt.Fprintf(w, "expert exchange round trip (loopback, 1 row): %v; per message and side %v (%v of core time); payload %.2f GB/s per side\n",
		c.ExchangeRTT.Round(time.Microsecond), c.MsgCPU.Round(100*time.Nanosecond), c.MsgCPUWork.Round(100*time.Nanosecond), c.MsgBytesPerS/1e9)
	if c.ShareProcs > 0 {
		fmt.Fprintf(w, "sharing the cores among %d one-thread processes: a product of %d rows %v of core time; a wake from idle %v\n",
			c.ShareProcs, c.ShareRows, c.ShareProduct.Round(time.Microsecond), c.WakeWork.Round(time.Microsecond))
	}
	for _, p := range c.Train {
		fmt.Fprintf(w, "training step of %s (%d tokens in sequences of %d, %d threads, one process): %v; dense forward %v, backward %v; experts %v, %v; optimizer %v; %v of core time\n",
			p.Model, p.TokensPerRank, p.SeqLen, p.Threads, p.Step.Round(time.Microsecond), p.Forward.Round(time.Microsecond), p.Backward.Round(time.Microsecond),
			p.ExpertsForward.Round(time.Microsecond), p.ExpertsBackward.Round(time.Microsecond), p.Optimizer.Round(time.Microsecond), p.CPU.Round(time.Microsecond))
	}
	if c.LinkRate > 0 {
		fmt.Fprintf(w, "link: %.2f Gbit/s, round trip %v\n", c.LinkRate*8/1e9, c.LinkRTT)
	}
	if c.LinkMsgCPU > 0 {
		fmt.Fprintf(w, "expert exchange across the link: round trip %v back to back, %v after 5ms idle; core time of both hosts %v per message and side, %.2f ns per byte and side\n",
			c.LinkExchangeRTT.Round(time.Microsecond), c.LinkIdleExchangeRTT.Round(time.Microsecond), c.LinkMsgCPU.Round(100*time.Nanosecond), c.LinkByteCPU)
	}
	return nil
}
