package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// JobConfig describes a single-process training run. Zero values take the
// defaults noted on each field (see DefaultJobConfig).
type JobConfig struct {
	Out  string // output directory: checkpoints, loss curve (required)
	Text string // training text file, UTF-8 (required)
	// Exactly one of Preset (train from scratch) and InitFrom (fine-tune a
	// Hugging Face folder) unless resuming an existing Out.
	Preset   string
	InitFrom string
	// Resume continues from the latest checkpoint in Out when there is one.
	Resume bool
	// Tokenizer is a tokenizer.json to use. Default: InitFrom's, else one is
	// trained on Text with VocabSize entries (default 1024).
	Tokenizer string
	VocabSize int

	SeqLen    int     // tokens per training window, default 128
	Batch     int     // windows per step, default 8
	Steps     int     // total steps, default 300
	HeldOut   float64 // fraction of windows held out for evaluation, default 0.05
	EvalEvery int     // steps between evaluations, default 50 (0: only at the end)
	EvalMax   int     // held-out windows per evaluation, default 32
	SaveEvery int     // steps between checkpoints, default 100 (the last step is always saved)
	Seed      uint64  // data order and initialization, default 1

	Step StepConfig // optimizer, schedule, clipping, losses

	Progress io.Writer // progress and log lines (nil: silent)
}

// DefaultJobConfig returns the defaults for a from-scratch run of preset.
func DefaultJobConfig() JobConfig {
	return JobConfig{
		VocabSize: 1024, SeqLen: 128, Batch: 8, Steps: 300, HeldOut: 0.05,
		EvalEvery: 50, EvalMax: 32, SaveEvery: 100, Seed: 1,
		Step: StepConfig{
			AdamW:           optim.AdamWConfig{LR: 3e-3, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1},
			Schedule:        optim.Schedule{Peak: 3e-3, Min: 3e-4, Warmup: 20},
			MaxGradNorm:     1.0,
			BiasUpdateSpeed: 1e-3,
		},
	}
}

func (c *JobConfig) validate() error {
	var errs []error
	if c.Out == "" {
		errs = append(errs, errors.New("train: an output directory is required"))
	}
	if c.Text == "" {
		errs = append(errs, errors.New("train: a training text file is required"))
	}
	if c.Preset != "" && c.InitFrom != "" {
		errs = append(errs, errors.New("train: give a preset or a checkpoint to fine-tune, not both"))
	}
	if c.Steps <= 0 || c.SeqLen < 2 || c.Batch < 1 {
		errs = append(errs, fmt.Errorf("train: steps %d, sequence length %d, batch %d must be positive (length >= 2)", c.Steps, c.SeqLen, c.Batch))
	}
	if err := c.Step.AdamW.Validate(); err != nil {
		errs = append(errs, err)
	}
	s := c.Step.Schedule
	for _, v := range []float64{s.Peak, s.Min} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			errs = append(errs, fmt.Errorf("train: learning rate schedule value %g is not a finite number >= 0", v))
		}
	}
	if c.Step.MaxGradNorm < 0 || math.IsNaN(c.Step.MaxGradNorm) {
		errs = append(errs, fmt.Errorf("train: max grad norm %g must be >= 0", c.Step.MaxGradNorm))
	}
	if c.Preset != "" {
		if _, err := Preset(c.Preset, 2); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Result summarizes a finished run.
type Result struct {
	Steps      int
	Losses     []float64   // every step's training loss (from step 1)
	Evals      []EvalPoint // held-out evaluations
	TokensPerS float64     // training throughput of this run
	Checkpoint string      // the last checkpoint written
	LossPNG    string      // the loss curve
	Params     int64       // parameters of the model
}

// Run trains as configured. It can be interrupted (ctx) and resumed: the
// run saves a checkpoint before returning ctx's error.
func Run(ctx context.Context, cfg JobConfig) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	text, err := ReadText(cfg.Text)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(text))
	textHash := hex.EncodeToString(sum[:])
	prog := NewProgress(cfg.Progress, cfg.Steps, 0)
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}

	var (
		m        *model.Model
		store    *expert.Store
		hfConfig []byte
		tokJSON  []byte
		tokCfg   []byte
		state    *TrainerState
		resumeAt string
	)
	if cfg.Resume {
		if resumeAt, err = LatestCheckpoint(cfg.Out); err != nil {
			return nil, err
		}
	}
	switch {
	case resumeAt != "":
		if state, err = ReadTrainerState(resumeAt); err != nil {
			return nil, err
		}
		if state.TextSHA256 != textHash {
			return nil, fmt.Errorf("train: checkpoint %s was trained on a different text (sha256 %s, this text %s)", resumeAt, state.TextSHA256[:12], textHash[:12])
		}
		if state.SeqLen != cfg.SeqLen || state.Batch != cfg.Batch || state.Seed != cfg.Seed {
			return nil, fmt.Errorf("train: checkpoint %s used seq len %d, batch %d, seed %d; this run asks %d, %d, %d (resume needs the same data order)",
				resumeAt, state.SeqLen, state.Batch, state.Seed, cfg.SeqLen, cfg.Batch, cfg.Seed)
		}
		if m, store, err = LoadModel(resumeAt); err != nil {
			return nil, err
		}
		if fp := m.Cfg.Fingerprint(); fp != state.Fingerprint {
			return nil, fmt.Errorf("train: checkpoint %s holds model %s but its trainer state names %s", resumeAt, fp, state.Fingerprint)
		}
		if cfg.Preset != "" {
			if want, err := presetFingerprint(cfg.Preset, m.Cfg.Vocab); err != nil || want != state.Fingerprint {
				return nil, fmt.Errorf("train: checkpoint %s is a different model (%s) from preset %q (%s)", resumeAt, state.Fingerprint, cfg.Preset, want)
			}
		}
		hfConfig, _ = os.ReadFile(filepath.Join(resumeAt, "config.json"))
		tokJSON, _ = os.ReadFile(filepath.Join(resumeAt, "tokenizer.json"))
		tokCfg, _ = os.ReadFile(filepath.Join(resumeAt, "tokenizer_config.json"))
		prog.Logf("train: resuming from %s (step %d)", resumeAt, state.Step)
	case cfg.InitFrom != "":
		if m, store, err = LoadModel(cfg.InitFrom); err != nil {
			return nil, err
		}
		if hfConfig, err = os.ReadFile(filepath.Join(cfg.InitFrom, "config.json")); err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		tokPath := cfg.Tokenizer
		if tokPath == "" {
			tokPath = filepath.Join(cfg.InitFrom, "tokenizer.json")
		}
		if tokJSON, err = os.ReadFile(tokPath); err != nil {
			return nil, fmt.Errorf("train: fine-tuning needs the model's tokenizer: %w", err)
		}
		tokCfg, _ = os.ReadFile(filepath.Join(filepath.Dir(tokPath), "tokenizer_config.json"))
	default:
		if cfg.Preset == "" {
			return nil, errors.New("train: give --preset NAME to train from scratch or --init-from DIR to fine-tune")
		}
		if cfg.Tokenizer != "" {
			if tokJSON, err = os.ReadFile(cfg.Tokenizer); err != nil {
				return nil, fmt.Errorf("train: %w", err)
			}
		} else {
			t0 := time.Now()
			tok, err := tokenizer.Train(text, tokenizer.TrainConfig{VocabSize: cfg.VocabSize, SpecialTokens: []string{"<|endoftext|>"}})
			if err != nil {
				return nil, err
			}
			if tokJSON, err = tok.Marshal(); err != nil {
				return nil, err
			}
			prog.Logf("train: trained a %d-token byte-level BPE tokenizer on %s in %v", tok.VocabSize(), cfg.Text, time.Since(t0).Round(time.Millisecond))
		}
		tok, err := tokenizer.Parse(tokJSON, "tokenizer.json")
		if err != nil {
			return nil, err
		}
		hf, _ := Preset(cfg.Preset, tok.VocabSize())
		if eos := tok.Special().EOS; eos >= 0 {
			hf["eos_token_id"] = eos
		}
		if hfConfig, err = json.MarshalIndent(hf, "", "  "); err != nil {
			return nil, err
		}
		mc, err := model.ParseConfig(hfConfig)
		if err != nil {
			return nil, err
		}
		if m, store, err = model.NewRandom(mc, model.InitOptions{Seed: cfg.Seed}); err != nil {
			return nil, err
		}
		tokCfg = defaultTokenizerConfig(tok)
	}
	tok, err := tokenizer.Parse(tokJSON, "tokenizer.json")
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > m.Cfg.Vocab {
		return nil, fmt.Errorf("train: tokenizer has %d tokens, the model's vocabulary only %d", tok.VocabSize(), m.Cfg.Vocab)
	}
	ids := tok.Encode(text)
	tokens := make([]int32, len(ids))
	for i, id := range ids {
		tokens[i] = int32(id)
	}
	data, err := NewData(tokens, cfg.SeqLen, cfg.Batch, cfg.HeldOut, cfg.Seed)
	if err != nil {
		return nil, err
	}
	stepper, err := NewStepper(m, store, cfg.Step)
	if err != nil {
		return nil, err
	}
	if state != nil {
		if err := LoadOptimizer(resumeAt, stepper.Opt, store); err != nil {
			return nil, err
		}
		stepper.Step = state.Step
	} else {
		state = &TrainerState{Version: 1, Seed: cfg.Seed, Fingerprint: m.Cfg.Fingerprint(), TextSHA256: textHash,
			SeqLen: cfg.SeqLen, Batch: cfg.Batch, HeldOut: cfg.HeldOut}
	}
	state.Config = cfg.Step
	state.Workers = 1
	var nparams int64
	for _, s := range m.Cfg.Tensors() {
		nparams += s.Elems()
	}
	prog.Logf("train: %s model, %.2f M parameters, %d training tokens (%d windows of %d), %d held-out windows; steps %d..%d",
		m.Cfg.Family, float64(nparams)/1e6, len(tokens), data.TrainWindows(), cfg.SeqLen, len(data.EvalWindows()), stepper.Step+1, cfg.Steps)

	res := &Result{Params: nparams}
	save := func() error {
		dir := CheckpointDir(cfg.Out, stepper.Step)
		if err := WriteCheckpoint(dir, &Checkpoint{HFConfig: hfConfig, TokenizerJSON: tokJSON, TokenizerCfg: tokCfg, Stepper: stepper, State: *state}); err != nil {
			return err
		}
		res.Checkpoint = dir
		png := filepath.Join(cfg.Out, "loss.png")
		if err := PlotLoss(png, fmt.Sprintf("%s, %.1f M params", m.Cfg.Family, float64(nparams)/1e6), state.Losses, state.Evals, 20); err != nil {
			return fmt.Errorf("train: loss curve: %w", err)
		}
		res.LossPNG = png
		return nil
	}
	evaluate := func() error {
		w := data.EvalWindows()
		if len(w) == 0 {
			return nil
		}
		w = w[:min(len(w), max(cfg.EvalMax, 1))]
		var total float64
		for i := 0; i < len(w); i += cfg.Batch {
			l, err := stepper.Eval(ctx, w[i:min(i+cfg.Batch, len(w))])
			if err != nil {
				return err
			}
			total += l * float64(min(i+cfg.Batch, len(w))-i)
		}
		loss := total / float64(len(w))
		state.Evals = append(state.Evals, EvalPoint{Step: stepper.Step, Loss: loss})
		prog.Logf("train: step %d held-out loss %.4f", stepper.Step, loss)
		return nil
	}
	start := time.Now()
	startStep := stepper.Step
	for stepper.Step < cfg.Steps {
		if err := ctx.Err(); err != nil {
			if serr := save(); serr != nil {
				return res, errors.Join(err, serr)
			}
			return res, err
		}
		batch := data.BatchAt(stepper.Step)
		out, err := stepper.TrainStep(ctx, batch)
		if err != nil {
			return res, err
		}
		state.Step = stepper.Step
		state.Losses = append(state.Losses, out.Loss)
		state.Tokens += int64(cfg.Batch * cfg.SeqLen)
		el := time.Since(start).Seconds()
		tps := float64((stepper.Step-startStep)*cfg.Batch*cfg.SeqLen) / el
		prog.Step(stepper.Step, out.Loss, tps, out.LR)
		if cfg.EvalEvery > 0 && stepper.Step%cfg.EvalEvery == 0 && stepper.Step < cfg.Steps {
			if err := evaluate(); err != nil {
				return res, err
			}
		}
		if cfg.SaveEvery > 0 && stepper.Step%cfg.SaveEvery == 0 && stepper.Step < cfg.Steps {
			state.Seconds += time.Since(start).Seconds()
			start, startStep = time.Now(), stepper.Step
			if err := save(); err != nil {
				return res, err
			}
		}
	}
	el := time.Since(start).Seconds()
	if stepper.Step > startStep {
		res.TokensPerS = float64((stepper.Step-startStep)*cfg.Batch*cfg.SeqLen) / el
	}
	state.Seconds += el
	if err := evaluate(); err != nil {
		return res, err
	}
	if err := save(); err != nil {
		return res, err
	}
	prog.Done()
	res.Steps = stepper.Step
	res.Losses = state.Losses
	res.Evals = state.Evals
	return res, nil
}

func presetFingerprint(name string, vocab int) (string, error) {
	hf, err := Preset(name, vocab)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(hf)
	c, err := model.ParseConfig(b)
	if err != nil {
		return "", err
	}
	return c.Fingerprint(), nil
}

// defaultTokenizerConfig is a minimal tokenizer_config.json so that
// transformers' AutoTokenizer loads tokenizer.json as a fast tokenizer.
func defaultTokenizerConfig(tok *tokenizer.Tokenizer) []byte {
	cfg := map[string]any{"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20}
	if eos := tok.Special().EOS; eos >= 0 {
		if s, ok := tok.IDToToken(eos); ok {
			cfg["eos_token"] = s
		}
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	return b
}
