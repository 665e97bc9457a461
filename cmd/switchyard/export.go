package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/atomicfile"
	"github.com/switchyard/switchyard/pkg/gguf"
	"github.com/switchyard/switchyard/pkg/gguf/convert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// exportOptions are the export command's flags.
type exportOptions struct {
	GGUF    string          // output file
	Model   string          // Hugging Face model folder
	OutType convert.OutType // weight matrix type
	NoVocab bool            // write tokenizer.ggml.model "none" even with a tokenizer.json
}

func exportCmd() *cobra.Command {
	var (
		o       exportOptions
		outType string
	)
	cmd := &cobra.Command{
		Use:   "export --gguf OUT.gguf --model DIR [--outtype f32|f16|bf16|q8_0|auto]",
		Short: "Write a model folder as a GGUF file that llama.cpp loads",
		Long: `export converts a Hugging Face model folder (config.json, *.safetensors and,
if present, tokenizer.json) of any supported family into one GGUF file, with
the tensor names, layouts and metadata keys of llama.cpp's own converter
(convert_hf_to_gguf.py): mixtral becomes arch "llama" (Q/K rows permuted),
qwen2_moe "qwen2moe", qwen3_moe "qwen3moe", olmoe "olmoe", deepseek_v2 and
deepseek_v3 "deepseek2". Routed experts are stacked per layer into
blk.N.ffn_{gate,up,down}_exps. Norms, biases and router gates stay F32; the
other matrices take --outtype (q8_0 falls back to f16 for a matrix whose row
is not a multiple of 32, as the converter does). Settings that llama.cpp
would not compute as the checkpoint does (sliding windows, llama3 RoPE,
clip_qkv, ...) are refused with an error naming them.

The file is written to a temporary name beside OUT and renamed when complete,
so a failed export leaves nothing behind. Progress goes to stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := convert.ParseOutType(outType)
			if err != nil {
				return fmt.Errorf("export: --outtype: %w", err)
			}
			o.OutType = t
			return runExport(o, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.GGUF, "gguf", "", "output GGUF file (required)")
	f.StringVar(&o.Model, "model", "", "Hugging Face model folder: config.json, *.safetensors, optional tokenizer.json (required)")
	f.StringVar(&outType, "outtype", "f16", "type of the weight matrices: f32, f16, bf16, q8_0, or auto (bf16 for a bf16 checkpoint, else f16)")
	f.BoolVar(&o.NoVocab, "no-vocab", false, `write no vocabulary (tokenizer.ggml.model "none") even if the folder has a tokenizer.json`)
	return cmd
}

// runExport plans the export, then writes it atomically.
func runExport(o exportOptions, log io.Writer) error {
	if o.GGUF == "" || o.Model == "" {
		return errors.New("export: --gguf and --model are required")
	}
	start := time.Now()
	ck, err := model.Open(o.Model)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer ck.Close()
	cfgJSON, err := os.ReadFile(filepath.Join(o.Model, "config.json"))
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	in := convert.Input{Config: ck.Config, ConfigJSON: cfgJSON, Weights: ck.Source}
	if !o.NoVocab {
		if in.Vocab, err = loadVocab(o.Model); err != nil {
			return fmt.Errorf("export: %w (--no-vocab exports without a vocabulary)", err)
		}
	}
	abs, err := filepath.Abs(o.Model)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	plan, err := convert.Build(in, convert.Config{OutType: o.OutType, Name: filepath.Base(abs)})
	if err != nil {
		return fmt.Errorf("export: %s: %w", o.Model, err)
	}
	vocabNote := `no tokenizer.json: tokenizer.ggml.model "none"`
	if in.Vocab != nil {
		vocabNote = "vocabulary from tokenizer.json"
	} else if o.NoVocab {
		vocabNote = `--no-vocab: tokenizer.ggml.model "none"`
	}
	fmt.Fprintf(log, "export: %s (%s) -> arch %s, outtype %s, %d tensors, %s\n",
		o.Model, ck.Config.Family, plan.Arch, plan.OutType, len(plan.Tensors), vocabNote)
	for _, n := range plan.Notes {
		fmt.Fprintf(log, "export: note: %s\n", n)
	}
	var bytes int64
	progress := func(done int, t gguf.TensorInfo) {
		size, _ := t.Size()
		bytes += size
		fmt.Fprintf(log, "export: [%d/%d] %-32s %-5s %v\n", done, len(plan.Tensors), t.Name, t.Type, t.Dims)
	}
	if err := atomicfile.Write(o.GGUF, 0o644, func(w io.Writer) error { return plan.Write(w, progress) }); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Fprintf(log, "export: wrote %s: %.1f MiB of tensor data in %s\n", o.GGUF, float64(bytes)/(1<<20), time.Since(start).Round(time.Millisecond))
	return nil
}

// loadVocab reads the folder's tokenizer files; nil, nil when it has no
// tokenizer.json.
func loadVocab(dir string) (*convert.Vocab, error) {
	path := filepath.Join(dir, "tokenizer.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	tok, err := tokenizer.LoadDir(dir)
	if err != nil {
		return nil, err
	}
	v := &convert.Vocab{Tokenizer: tok, JSON: data}
	cfg, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	switch {
	case err == nil:
		v.ConfigJSON = cfg
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	return v, nil
}
