package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/authflags"
	"github.com/switchyard/switchyard/internal/cli"
	"github.com/switchyard/switchyard/internal/computeflag"
	"github.com/switchyard/switchyard/internal/tracing"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/train"
)

func trainCmd() *cobra.Command {
	cfg := train.DefaultJobConfig()
	var lr, minLR float64
	var warmup, workers, minWorkers, maxWorkers int
	var etcd, clusterName string
	var tlsFiles auth.Files
	var trace tracing.Config // for the local workers (--workers N): their ranks trace each step
	cmd := &cobra.Command{
		Use:   "train --text FILE --out DIR (--preset NAME | --init-from DIR) [flags]",
		Short: "Train a MoE model on a text file (in this process or on N workers)",
		Long: `train trains a model from scratch (--preset) or fine-tunes a Hugging Face
checkpoint (--init-from) on a UTF-8 text file, with AdamW, warmup + cosine
learning rate, gradient clipping and periodic held-out evaluation.

Checkpoints go to OUT/checkpoint-NNNNNNN in Hugging Face layout (config.json,
model.safetensors, tokenizer.json) plus optimizer and trainer state; verify,
generate and transformers load them. --resume continues from the latest
checkpoint in OUT and reproduces the uninterrupted loss curve exactly.

--workers N trains data- and expert-parallel on N worker processes: each
takes its share of every batch, routed experts are split among them (tokens
travel to their owners over gRPC, forward and backward) and dense gradients
are ring-all-reduced. Without --etcd a local cluster is started (embedded
etcd, coordinator, N workers) whose workers' data root is the deepest folder
holding --out, --text, --tokenizer and --init-from. With --etcd the job is
submitted to that cluster's coordinator and runs on its registered workers:
its paths are then relative to each worker's data root (worker --data-root,
default the worker's working directory), and a path outside it (an absolute
path elsewhere, a ../ escape, a link leading out) fails the job. N workers
reproduce the single-process loss curve.
OUT/loss.png is the loss curve. Ctrl-C saves a checkpoint and stops.

Presets: ` + fmt.Sprint(train.PresetNames()),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Step.AdamW.LR = lr
			cfg.Step.Schedule.Peak = lr
			cfg.Step.Schedule.Min = minLR
			cfg.Step.Schedule.Warmup = warmup
			cfg.Step.Schedule.Total = cfg.Steps
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if workers < 1 {
				return fmt.Errorf("train: --workers %d must be >= 1", workers)
			}
			if maxWorkers == 0 {
				maxWorkers = workers
			}
			if minWorkers == 0 {
				minWorkers = min(workers, maxWorkers)
			}
			if minWorkers < 1 || minWorkers > maxWorkers {
				return fmt.Errorf("train: want 1 <= --min-workers (%d) <= --max-workers (%d)", minWorkers, maxWorkers)
			}
			if maxWorkers > 1 || etcd != "" {
				creds, err := auth.Load(tlsFiles)
				if err != nil {
					return err
				}
				if creds != nil && etcd == "" {
					return errors.New("train: --tls-* secure a job submitted to a cluster (--etcd); the local cluster of --workers runs plaintext on loopback")
				}
				return trainDistributed(ctx, cfg, elastic{min: minWorkers, max: maxWorkers}, registry.SplitEndpoints(etcd), clusterName, creds, trace.Args(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			prog, curve := localProgress(cmd.ErrOrStderr(), cfg)
			res, err := train.Run(ctx, cfg, prog)
			if err != nil {
				if errors.Is(err, context.Canceled) && res != nil && res.Checkpoint != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "train: interrupted; saved %s (resume with --resume)\n", res.Checkpoint)
				}
				return err
			}
			prog.Done()
			if curve.err != nil {
				return curve.err
			}
			last := res.Losses[len(res.Losses)-1]
			fmt.Fprintf(cmd.OutOrStdout(), "train: %d steps, %.2f M parameters, loss %.4f -> %.4f", res.Steps, float64(res.Params)/1e6, res.Losses[0], last)
			if n := len(res.Evals); n > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), ", held-out %.4f", res.Evals[n-1].Loss)
			}
			fmt.Fprintf(cmd.OutOrStdout(), ", %.0f tokens/s\ncheckpoint %s\nloss curve %s\n", res.TokensPerS, res.Checkpoint, curve.path())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Text, "text", "", "training text file (UTF-8)")
	computeflag.Register(f)
	f.StringVar(&cfg.Out, "out", "", "output directory for checkpoints and the loss curve")
	f.StringVar(&cfg.Preset, "preset", "", "train from scratch with this model preset")
	f.StringVar(&cfg.InitFrom, "init-from", "", "fine-tune this Hugging Face model folder")
	f.BoolVar(&cfg.Resume, "resume", false, "continue from the latest checkpoint in --out")
	f.StringVar(&cfg.Tokenizer, "tokenizer", "", "tokenizer.json to use (default: the model's, or train one on --text)")
	f.IntVar(&cfg.VocabSize, "vocab-size", cfg.VocabSize, "vocabulary of a tokenizer trained on --text")
	f.IntVar(&cfg.Steps, "steps", cfg.Steps, "total training steps")
	f.IntVar(&cfg.Batch, "batch", cfg.Batch, "sequences per step")
	f.IntVar(&cfg.SeqLen, "seq-len", cfg.SeqLen, "tokens per sequence")
	f.Float64Var(&lr, "lr", cfg.Step.AdamW.LR, "peak learning rate")
	f.Float64Var(&minLR, "min-lr", cfg.Step.Schedule.Min, "final learning rate of the cosine decay")
	f.IntVar(&warmup, "warmup", cfg.Step.Schedule.Warmup, "linear warmup steps")
	f.Float64Var(&cfg.Step.AdamW.WeightDecay, "weight-decay", cfg.Step.AdamW.WeightDecay, "AdamW decoupled weight decay")
	f.Float64Var(&cfg.Step.MaxGradNorm, "clip", cfg.Step.MaxGradNorm, "global gradient norm clip (0: off)")
	f.Float64Var(&cfg.Step.Loss.AuxCoef, "aux-loss", cfg.Step.Loss.AuxCoef, "load-balancing loss coefficient (softmax routers)")
	f.Float64Var(&cfg.Step.Loss.ZCoef, "z-loss", cfg.Step.Loss.ZCoef, "router z-loss coefficient")
	f.Float64Var(&cfg.Step.Loss.CapacityFactor, "capacity-factor", 0, "expert capacity factor (0: dropless)")
	f.Float64Var(&cfg.Step.BiasUpdateSpeed, "bias-update", cfg.Step.BiasUpdateSpeed, "DeepSeek-V3 aux-loss-free bias update speed (0: off)")
	f.IntVar(&cfg.EvalEvery, "eval-every", cfg.EvalEvery, "steps between held-out evaluations")
	f.IntVar(&cfg.SaveEvery, "save-every", cfg.SaveEvery, "steps between checkpoints")
	f.Float64Var(&cfg.HeldOut, "held-out", cfg.HeldOut, "fraction of the text held out for evaluation")
	f.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed for initialization and data order")
	f.IntVar(&workers, "workers", 1, "train data- and expert-parallel on N workers (a local cluster unless --etcd is given)")
	f.IntVar(&minWorkers, "min-workers", 0, "elastic training: an attempt may start (and re-form after a worker dies) on as few as this many workers (default --workers: a fixed size)")
	f.IntVar(&maxWorkers, "max-workers", 0, "elastic training: an attempt takes up to this many workers (default --workers; the local cluster starts this many)")
	f.IntVar(&cfg.ExpertReplicas, "expert-replicas", 1, "with --workers: workers holding a copy of each routed expert")
	f.StringVar(&etcd, "etcd", "", "submit the job to the cluster at these etcd endpoints (comma-separated); its paths are relative to the workers' --data-root")
	f.StringVar(&clusterName, "cluster", "switchyard", "cluster key prefix in etcd (with --etcd)")
	authflags.Register(f, &tlsFiles)
	tracing.Register(f, &trace)
	return cmd
}

// lossCurve draws OUT/loss.png from each new checkpoint of a run (its
// trainer_state.json) and keeps the first failure.
type lossCurve struct {
	out  string // folder of loss.png ("": the checkpoint's parent)
	last string // the checkpoint drawn last
	err  error
}

func (c *lossCurve) checkpoint(dir string) {
	if dir == "" || dir == c.last {
		return
	}
	c.last = dir
	out := c.out
	if out == "" {
		out = filepath.Dir(dir)
	}
	if _, err := cli.WriteLossCurve(out, dir); err != nil && c.err == nil {
		c.err = err
	}
}

func (c *lossCurve) path() string { return filepath.Join(c.out, cli.LossCurveFile) }

// localProgress renders a run in this process on w (a bar on a terminal)
// and draws the loss curve after every checkpoint.
func localProgress(w io.Writer, cfg train.JobConfig) (*cli.Progress, *lossCurve) {
	curve := &lossCurve{out: cfg.Out}
	prog := cli.NewProgress(w, cfg.Steps, 0)
	prog.OnCheckpoint = curve.checkpoint
	return prog, curve
}
