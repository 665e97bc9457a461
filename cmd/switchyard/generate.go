package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/computeflag"
	"github.com/switchyard/switchyard/internal/quantflag"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/tokenizer"
	"github.com/switchyard/switchyard/pkg/train"
)

func generateCmd() *cobra.Command {
	var (
		modelDir, prompt, tokPath string
		maxTokens                 int
		samp                      model.SamplerConfig
		quant                     tensor.QFormat
	)
	cmd := &cobra.Command{
		Use:   "generate --model DIR --prompt TEXT --max-tokens N [--temperature T --top-p P --seed S]",
		Short: "Continue a prompt; streams only the generated text to stdout",
		Long: `generate loads DIR (config.json, *.safetensors, tokenizer.json), encodes the
prompt, and streams the continuation (not the prompt) to stdout as tokens are
chosen. A Switchyard checkpoint's files are first checked against its
checksums (a mismatch names the file). Diagnostics go to stderr. Temperature 0
(the default) is greedy; otherwise tokens are sampled from softmax(logits/T),
restricted to the top-p nucleus, with a reproducible --seed. Generation stops
at max tokens or an end-of-sequence token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if modelDir == "" {
				return errors.New("generate: --model is required")
			}
			if maxTokens <= 0 {
				return fmt.Errorf("generate: --max-tokens %d must be > 0", maxTokens)
			}
			if err := samp.Validate(); err != nil {
				return fmt.Errorf("generate: %w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			start := time.Now()
			// A Switchyard checkpoint's files must match their checksums.
			if err := train.VerifyCheckpoint(modelDir); err != nil {
				return fmt.Errorf("generate: %w", err)
			}
			if tokPath == "" {
				tokPath = filepath.Join(modelDir, "tokenizer.json")
			}
			tok, err := tokenizer.Load(tokPath)
			if err != nil {
				return fmt.Errorf("generate: %w", err)
			}
			ck, err := model.Open(modelDir)
			if err != nil {
				return err
			}
			defer ck.Close()
			m, err := ck.Load(model.LoadOptions{KeepBF16: true, Quantize: quant})
			if err != nil {
				return err
			}
			ids := tok.Encode(prompt)
			if len(ids) == 0 {
				return errors.New("generate: the prompt encodes to no tokens")
			}
			p := make([]int32, len(ids))
			for i, id := range ids {
				if id >= m.Cfg.Vocab {
					return fmt.Errorf("generate: prompt token %d has id %d, beyond the model's vocabulary of %d (tokenizer and model do not match)", i, id, m.Cfg.Vocab)
				}
				p[i] = int32(id)
			}
			var stops []int32
			for _, e := range m.Cfg.EOS {
				stops = append(stops, int32(e))
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "generate: %s (%s, %d layers%s), loaded in %v; prompt %d tokens\n",
				modelDir, m.Cfg.Family, m.Cfg.Layers, quantNote(quant), time.Since(start).Round(time.Millisecond), len(p))
			out := bufio.NewWriter(cmd.OutOrStdout())
			dec := tok.NewStreamDecoder(true)
			var decErr error
			genStart := time.Now()
			toks, err := m.Generate(ctx, [][]int32{p}, model.GenerateConfig{MaxTokens: maxTokens, Sampler: samp, StopIDs: stops}, func(_ int, id int32) {
				s, err := dec.Step(int(id))
				if err != nil && decErr == nil {
					decErr = err
				}
				out.WriteString(s)
				out.Flush()
			})
			out.WriteString(dec.Flush())
			out.WriteString("\n")
			out.Flush()
			if err != nil {
				return err
			}
			if decErr != nil {
				return fmt.Errorf("generate: decode: %w", decErr)
			}
			el := time.Since(genStart)
			fmt.Fprintf(cmd.ErrOrStderr(), "generate: %d tokens in %v (%.1f tokens/s)\n", len(toks[0]), el.Round(time.Millisecond), float64(len(toks[0]))/el.Seconds())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&modelDir, "model", "", "model folder (config.json, *.safetensors, tokenizer.json)")
	f.StringVar(&prompt, "prompt", "", "text to continue")
	f.StringVar(&tokPath, "tokenizer", "", "tokenizer.json to use (default MODEL/tokenizer.json)")
	f.Var(quantflag.Value(&quant), "quantize", quantflag.Usage)
	computeflag.Register(f)
	f.IntVar(&maxTokens, "max-tokens", 64, "new tokens to generate")
	f.Float64Var(&samp.Temperature, "temperature", 0, "sampling temperature; 0 is greedy")
	f.Float64Var(&samp.TopP, "top-p", 1, "nucleus sampling threshold in (0, 1]")
	f.Uint64Var(&samp.Seed, "seed", 0, "random seed for sampling")
	return cmd
}

// quantNote describes --quantize in a load line: "" or ", experts int8
// (kernel avx512-vnni)".
func quantNote(q tensor.QFormat) string {
	if q == tensor.QNone {
		return ""
	}
	return fmt.Sprintf(", routed experts %v (%s kernels)", q, tensor.QuantKernel())
}
