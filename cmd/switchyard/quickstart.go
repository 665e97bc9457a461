package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/cli"
	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/internal/serve"
	"github.com/switchyard/switchyard/pkg/train"
)

// opticks is testdata/text/opticks.txt (Newton's Opticks, public domain),
// embedded so quickstart runs from any directory. The copy must stay
// byte-identical (TestQuickstartTextIsTheShippedBook).
//
//go:embed quickstart_opticks.txt
var opticks []byte

// quickstartOptions are quickstart's settings (flags).
type quickstartOptions struct {
	Steps       int    // training steps (batch 8 x 128 tokens each)
	Workers     int    // local worker processes (0: train and serve in this process)
	Listen      string // HTTP address of the API
	Out         string // where the text, checkpoints and loss curve go
	Preset      string // model preset (pkg/train)
	Prompt      string // of the demo completion
	MaxTokens   int    // of the demo completion
	ExitAfter   bool   // stop after the demo completion instead of serving on
	ServedModel string // model name in the API
}

func quickstartCmd() *cobra.Command {
	o := quickstartOptions{Steps: 300, Workers: 2, Listen: "127.0.0.1:8000", Out: "switchyard-quickstart",
		Preset: "dsv3-tiny", Prompt: "The Rays of Light", MaxTokens: 60, ServedModel: "opticks"}
	cmd := &cobra.Command{
		Use:   "quickstart [--steps N] [--workers N] [--listen ADDR] [--out DIR] [--exit-after-demo]",
		Short: "Train a small MoE on the bundled book on local workers, then serve it",
		Long: `quickstart is the one-command demo. It starts an embedded etcd, a coordinator and
--workers local worker processes, trains a small DeepSeek-V3-style MoE (preset
dsv3-tiny, 4.6 M parameters) from scratch on the text the binary carries
(Newton's Opticks) with the experts split among the workers, showing progress;
then it serves the trained model over the OpenAI-compatible API (exactly as
'switchyard serve' does), shows one streamed completion, prints a curl command
to try, and serves until Ctrl-C.

The default 300 steps take about 2 minutes on 2 CPU cores. Everything lands in
--out (text, checkpoints, loss.png); running quickstart again with the same
--out continues an interrupted run, or serves the finished one at once.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runQuickstart(ctx, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Steps, "steps", o.Steps, "training steps (batch 8 x 128 tokens)")
	f.IntVar(&o.Workers, "workers", o.Workers, "local worker processes holding the experts (0: everything in this process)")
	f.StringVar(&o.Listen, "listen", o.Listen, "HTTP address of the API (port 0: a free port)")
	f.StringVar(&o.Out, "out", o.Out, "output directory (text, checkpoints, loss curve)")
	f.StringVar(&o.Preset, "preset", o.Preset, "model preset: "+strings.Join(train.PresetNames(), ", "))
	f.StringVar(&o.Prompt, "prompt", o.Prompt, "prompt of the demo completion")
	f.IntVar(&o.MaxTokens, "max-tokens", o.MaxTokens, "tokens of the demo completion")
	f.BoolVar(&o.ExitAfter, "exit-after-demo", false, "exit after the demo completion instead of serving until Ctrl-C")
	return cmd
}

func runQuickstart(ctx context.Context, o quickstartOptions, stdout, stderr io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "quickstart: "+format+"\n", args...) }
	if o.Steps < 1 || o.Workers < 0 || o.MaxTokens < 1 {
		return fmt.Errorf("quickstart: --steps %d and --max-tokens %d must be >= 1, --workers %d >= 0", o.Steps, o.MaxTokens, o.Workers)
	}
	out, err := filepath.Abs(o.Out)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	text := filepath.Join(out, "opticks.txt")
	if old, err := os.ReadFile(text); err != nil || !bytes.Equal(old, opticks) {
		if err := os.WriteFile(text, opticks, 0o644); err != nil {
			return fmt.Errorf("quickstart: %w", err)
		}
	}
	cfg := train.DefaultJobConfig()
	cfg.Text, cfg.Out, cfg.Preset, cfg.Steps, cfg.Resume = text, out, o.Preset, o.Steps, true
	cfg.Step.Schedule.Warmup = min(cfg.Step.Schedule.Warmup, max(1, o.Steps/5))
	cfg.Step.Schedule.Total = o.Steps
	cfg.EvalEvery, cfg.SaveEvery = 100, 100

	ckpt, done, err := finishedCheckpoint(out, o.Steps)
	if err != nil {
		return err
	}
	if ckpt != "" {
		logf("%s already holds the model trained for %d steps; serving it (remove the folder to train again)", ckpt, done)
	} else {
		start := time.Now()
		logf("training %s on Newton's Opticks for %d steps (batch %d x %d tokens) into %s", o.Preset, o.Steps, cfg.Batch, cfg.SeqLen, out)
		if o.Workers == 0 {
			prog, curve := localProgress(stderr, cfg)
			res, err := train.Run(ctx, cfg, prog)
			if err != nil {
				return quickstartInterrupted(ctx, err)
			}
			prog.Done()
			if curve.err != nil {
				return curve.err
			}
			ckpt = res.Checkpoint
		} else if ckpt, err = quickstartTrain(ctx, cfg, o.Workers, stderr, logf); err != nil {
			return quickstartInterrupted(ctx, err)
		}
		logf("trained in %v; checkpoint %s, loss curve %s", time.Since(start).Round(time.Second), ckpt, filepath.Join(out, "loss.png"))
	}

	// Whether just trained or found from an earlier run, the checkpoint
	// must match its checksums before it is served.
	if err := train.VerifyCheckpoint(ckpt); err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	var demoErr error
	so := serveOptions{ModelDir: ckpt, Workers: o.Workers, Listen: o.Listen, Grace: 5 * time.Second,
		Serve: serve.DefaultConfig(o.ServedModel), Stderr: stderr, Prefix: "quickstart"}
	so.OnReady = func(ctx context.Context, url string, stop func()) {
		if err := quickstartDemo(ctx, url, o, stdout); err != nil && ctx.Err() == nil {
			demoErr = err
		}
		if demoErr != nil || o.ExitAfter {
			stop()
			return
		}
		fmt.Fprintf(stdout, "\nServing %q at %s until Ctrl-C. Try:\n\n", o.ServedModel, url)
		fmt.Fprintf(stdout, "  curl %s/v1/completions -H 'Content-Type: application/json' \\\n    -d '{\"model\": %q, \"prompt\": \"Of the Colours of\", \"max_tokens\": 60, \"temperature\": 0.8, \"top_p\": 0.95}'\n\n", url, o.ServedModel)
		fmt.Fprintf(stdout, "  (add \"stream\": true for Server-Sent Events; chat: %s/v1/chat/completions; metrics: %s/metrics)\n", url, url)
	}
	if err := runServe(ctx, so); err != nil {
		return err
	}
	return demoErr // runServe returns after OnReady did
}

// quickstartInterrupted explains what an interrupted training leaves.
func quickstartInterrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("quickstart: interrupted; run it again with the same --out to continue from the last checkpoint: %w", err)
	}
	return err
}

// finishedCheckpoint returns out's latest checkpoint and its step count
// if it has at least steps steps, else "".
func finishedCheckpoint(out string, steps int) (string, int, error) {
	dir, err := train.LatestCheckpoint(out)
	if err != nil || dir == "" {
		return "", 0, err
	}
	st, err := train.ReadTrainerState(dir)
	if err != nil {
		return "", 0, err
	}
	if st.Step >= steps {
		return dir, st.Step, nil
	}
	return "", 0, nil
}

// quickstartTrain runs cfg as a job on a local cluster of n workers (as
// `train --workers n` does) with a progress bar (or lines when stderr is
// not a terminal), and returns the final checkpoint.
func quickstartTrain(ctx context.Context, cfg train.JobConfig, n int, stderr io.Writer, logf func(string, ...any)) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	// The workers' data root is the output folder, which holds the text
	// too; the job names both relative to it.
	root, submit, err := localJob(cfg)
	if err != nil {
		return "", err
	}
	// Jobs-only workers: each rank loads what it trains when the job starts.
	lc, err := localcluster.Start(ctx, localcluster.Options{
		Command: []string{exe, "worker"}, Workers: n, Cluster: "train", WidenBF16: true, DataRoot: root,
		Restart: true, // a worker that dies comes back, as under a supervisor
	})
	if err != nil {
		return "", err
	}
	defer lc.Close()
	logf("local cluster: %s; data root %s", lc.Describe(), root)
	store := jobs.NewStore(lc.Client, "train")
	id := strings.NewReplacer(".", "-").Replace("quickstart-" + time.Now().UTC().Format("20060102-150405.000"))
	if err := store.Submit(ctx, jobs.Spec{ID: id, Job: submit, Workers: n}); err != nil {
		return "", err
	}
	startStep := 0
	if cfg.Resume {
		if dir, err := train.LatestCheckpoint(cfg.Out); err == nil && dir != "" {
			if st, err := train.ReadTrainerState(dir); err == nil {
				startStep = st.Step
			}
		}
	}
	prog := cli.NewProgress(stderr, cfg.Steps, startStep)
	prog.Interval = 5 * time.Second
	curve := &lossCurve{out: cfg.Out}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	last, attempt := startStep, 0
	for {
		select {
		case <-ctx.Done():
			prog.Done()
			return "", ctx.Err()
		case <-t.C:
		}
		sp, _, err := store.Get(ctx, id)
		if err != nil {
			return "", err
		}
		st, _ := store.Status(ctx, id)
		if sp.Attempt != attempt && sp.Attempt > 1 {
			prog.Logf("quickstart: training job re-formed (attempt %d, ranks %v): %s", sp.Attempt, sp.Assigned, sp.Error)
		}
		attempt = sp.Attempt
		if st.Step > last {
			prog.Step(st.Step, st.Loss, st.TokensPerS, cfg.Step.LR(st.Step-1))
			last = st.Step
		}
		curve.checkpoint(st.Checkpoint)
		switch sp.State {
		case jobs.Done:
			prog.Done()
			if curve.err != nil {
				return "", curve.err
			}
			msg := fmt.Sprintf("%d steps on %d workers, loss %.4f", st.Step, n, st.Loss)
			if st.EvalLoss != 0 {
				msg += fmt.Sprintf(", held-out %.4f", st.EvalLoss)
			}
			logf("%s, %.0f tokens/s", msg, st.TokensPerS)
			return st.Checkpoint, nil
		case jobs.Abandoned:
			prog.Done()
			return "", errors.New("quickstart: training job abandoned: " + sp.Error)
		}
	}
}

// quickstartDemo streams one completion from the server at url and prints
// the prompt and the generated text on stdout.
func quickstartDemo(ctx context.Context, url string, o quickstartOptions, stdout io.Writer) error {
	body, _ := json.Marshal(map[string]any{"model": o.ServedModel, "prompt": o.Prompt, "max_tokens": o.MaxTokens,
		"temperature": 0.8, "top_p": 0.95, "seed": 1, "stream": true, "stream_options": map[string]any{"include_usage": true}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("quickstart: demo completion: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("quickstart: demo completion: %s: %s", resp.Status, b)
	}
	fmt.Fprintf(stdout, "\nprompt:     %s\ncompletion: ", o.Prompt)
	var finish string
	var usage struct {
		CompletionTokens int `json:"completion_tokens"`
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c struct {
			Choices []struct {
				Text         string  `json:"text"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Usage *json.RawMessage `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return fmt.Errorf("quickstart: demo completion: %w", err)
		}
		if c.Error != nil {
			return fmt.Errorf("quickstart: demo completion: %s", c.Error.Message)
		}
		if c.Usage != nil {
			_ = json.Unmarshal(*c.Usage, &usage)
		}
		for _, ch := range c.Choices {
			fmt.Fprint(stdout, ch.Text)
			if ch.FinishReason != nil {
				finish = *ch.FinishReason
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("quickstart: demo completion: %w", err)
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "\n(finish_reason %s, %d tokens in %v, %.0f tokens/s)\n", finish, usage.CompletionTokens, el.Round(time.Millisecond), float64(usage.CompletionTokens)/el.Seconds())
	return nil
}
