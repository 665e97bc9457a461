package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
	"github.com/switchyard/switchyard/pkg/train/trainconf"
)

// JobConfig describes a training run (defined in pkg/train/trainconf,
// which the job store shares without linking the trainer).
type JobConfig = trainconf.JobConfig

// DefaultJobConfig returns the defaults for a from-scratch run
// (trainconf.DefaultJobConfig).
func DefaultJobConfig() JobConfig { return trainconf.DefaultJobConfig() }

// validate reports every problem of c, the preset's name included.
func validate(c *JobConfig) error {
	err := c.Validate()
	if c.Preset != "" {
		if _, perr := Preset(c.Preset, 2); perr != nil {
			err = errors.Join(err, perr)
		}
	}
	return err
}

// Result summarizes a finished run.
type Result struct {
	Steps      int
	Losses     []float64   // every step's training loss (from step 1)
	Evals      []EvalPoint // held-out evaluations
	TokensPerS float64     // training throughput of this run
	Checkpoint string      // the last checkpoint written
	Params     int64       // parameters of the model
}

// Prepared is everything a run needs before weights are loaded: the
// model's config and tokenizer, the tokenized data, and where the weights
// come from. Every rank of a distributed job prepares the same Prepared
// from the same JobConfig (deterministically), then loads only its part.
type Prepared struct {
	Cfg       JobConfig
	HFConfig  []byte // config.json
	TokJSON   []byte // tokenizer.json
	TokCfg    []byte // tokenizer_config.json (may be nil)
	Model     *model.Config
	Data      *Data
	TextHash  string
	State     *TrainerState // resumed trainer state (nil: fresh run)
	ResumeDir string        // the checkpoint resumed from ("" if none)
	Params    int64
	// weight source: a folder (checkpoint or --init-from), else random init
	weightsDir string
	log        func(format string, args ...any)
}

// Prepare validates cfg, reads and tokenizes the text, and decides where
// the weights come from (latest checkpoint if resuming, --init-from, or a
// preset). It first removes the unfinished checkpoints a crash left in
// cfg.Out (RemoveStaleCheckpointTemps), logging each. logf receives
// progress messages (may be nil).
func Prepare(cfg JobConfig, logf func(format string, args ...any)) (*Prepared, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := validate(&cfg); err != nil {
		return nil, err
	}
	text, err := ReadText(cfg.Text)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(text))
	p := &Prepared{Cfg: cfg, TextHash: hex.EncodeToString(sum[:]), log: logf}
	// A crash (of this run's predecessor) may have left unfinished
	// checkpoints behind; they would only fill the disk.
	removed, err := RemoveStaleCheckpointTemps(cfg.Out)
	for _, dir := range removed {
		logf("train: removed unfinished checkpoint %s (left by an interrupted run)", dir)
	}
	if err != nil {
		// Not fatal here: a checkpoint that cannot be written fails later.
		logf("train: %v", err)
	}
	if cfg.Resume {
		if p.ResumeDir, err = LatestCheckpoint(cfg.Out); err != nil {
			return nil, err
		}
	}
	switch {
	case p.ResumeDir != "":
		dir := p.ResumeDir
		if err := verifyCheckpoint(dir, true); err != nil {
			return nil, err
		}
		if p.State, err = ReadTrainerState(dir); err != nil {
			return nil, err
		}
		st := p.State
		if st.TextSHA256 != p.TextHash {
			return nil, fmt.Errorf("train: checkpoint %s was trained on a different text (sha256 %s, this text %s)", dir, st.TextSHA256[:12], p.TextHash[:12])
		}
		if st.SeqLen != cfg.SeqLen || st.Batch != cfg.Batch || st.Seed != cfg.Seed {
			return nil, fmt.Errorf("train: checkpoint %s used seq len %d, batch %d, seed %d; this run asks %d, %d, %d (resume needs the same data order)",
				dir, st.SeqLen, st.Batch, st.Seed, cfg.SeqLen, cfg.Batch, cfg.Seed)
		}
		if p.HFConfig, err = os.ReadFile(filepath.Join(dir, "config.json")); err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		if p.Model, err = model.ParseConfig(p.HFConfig); err != nil {
			return nil, fmt.Errorf("train: %s/config.json: %w", dir, err)
		}
		if fp := p.Model.Fingerprint(); fp != st.Fingerprint {
			return nil, fmt.Errorf("train: checkpoint %s holds model %s but its trainer state names %s", dir, fp, st.Fingerprint)
		}
		if cfg.Preset != "" {
			if want, err := presetFingerprint(cfg.Preset, p.Model.Vocab); err != nil || want != st.Fingerprint {
				return nil, fmt.Errorf("train: checkpoint %s is a different model (%s) from preset %q (%s)", dir, st.Fingerprint, cfg.Preset, want)
			}
		}
		p.TokJSON, _ = os.ReadFile(filepath.Join(dir, "tokenizer.json"))
		p.TokCfg, _ = os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
		p.weightsDir = dir
		logf("train: resuming from %s (step %d)", dir, st.Step)
	case cfg.InitFrom != "":
		if err := VerifyCheckpoint(cfg.InitFrom); err != nil {
			return nil, err
		}
		if p.HFConfig, err = os.ReadFile(filepath.Join(cfg.InitFrom, "config.json")); err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		if p.Model, err = model.ParseConfig(p.HFConfig); err != nil {
			return nil, fmt.Errorf("train: %s/config.json: %w", cfg.InitFrom, err)
		}
		tokPath := cfg.Tokenizer
		if tokPath == "" {
			tokPath = filepath.Join(cfg.InitFrom, "tokenizer.json")
		}
		if p.TokJSON, err = os.ReadFile(tokPath); err != nil {
			return nil, fmt.Errorf("train: fine-tuning needs the model's tokenizer: %w", err)
		}
		p.TokCfg, _ = os.ReadFile(filepath.Join(filepath.Dir(tokPath), "tokenizer_config.json"))
		p.weightsDir = cfg.InitFrom
	default:
		if cfg.Preset == "" {
			return nil, errors.New("train: give --preset NAME to train from scratch or --init-from DIR to fine-tune")
		}
		if cfg.Tokenizer != "" {
			if p.TokJSON, err = os.ReadFile(cfg.Tokenizer); err != nil {
				return nil, fmt.Errorf("train: %w", err)
			}
		} else {
			t0 := time.Now()
			tok, err := tokenizer.Train(text, tokenizer.TrainConfig{VocabSize: cfg.VocabSize, SpecialTokens: []string{"<|endoftext|>"}})
			if err != nil {
				return nil, err
			}
			if p.TokJSON, err = tok.Marshal(); err != nil {
				return nil, err
			}
			logf("train: trained a %d-token byte-level BPE tokenizer on %s in %v", tok.VocabSize(), cfg.Text, time.Since(t0).Round(time.Millisecond))
		}
		tok, err := tokenizer.Parse(p.TokJSON, "tokenizer.json")
		if err != nil {
			return nil, err
		}
		hf, _ := Preset(cfg.Preset, tok.VocabSize())
		if eos := tok.Special().EOS; eos >= 0 {
			hf["eos_token_id"] = eos
		}
		if p.HFConfig, err = json.MarshalIndent(hf, "", "  "); err != nil {
			return nil, err
		}
		if p.Model, err = model.ParseConfig(p.HFConfig); err != nil {
			return nil, err
		}
		p.TokCfg = defaultTokenizerConfig(tok)
	}
	tok, err := tokenizer.Parse(p.TokJSON, "tokenizer.json")
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > p.Model.Vocab {
		return nil, fmt.Errorf("train: tokenizer has %d tokens, the model's vocabulary only %d", tok.VocabSize(), p.Model.Vocab)
	}
	ids := tok.Encode(text)
	tokens := make([]int32, len(ids))
	for i, id := range ids {
		tokens[i] = int32(id)
	}
	if p.Data, err = NewData(tokens, cfg.SeqLen, cfg.Batch, cfg.HeldOut, cfg.Seed); err != nil {
		return nil, err
	}
	if p.State == nil {
		p.State = &TrainerState{Version: 1, Seed: cfg.Seed, Fingerprint: p.Model.Fingerprint(), TextSHA256: p.TextHash,
			SeqLen: cfg.SeqLen, Batch: cfg.Batch, HeldOut: cfg.HeldOut}
	}
	p.State.Config = cfg.Step
	for _, s := range p.Model.Tensors() {
		p.Params += s.Elems()
	}
	logf("train: %s model, %.2f M parameters, %d training tokens (%d windows of %d), %d held-out windows; steps %d..%d",
		p.Model.Family, float64(p.Params)/1e6, len(tokens), p.Data.TrainWindows(), cfg.SeqLen, len(p.Data.EvalWindows()), p.State.Step+1, cfg.Steps)
	return p, nil
}

// Load loads the dense weights and the experts experts selects (nil: all),
// float32, from the run's weight source.
func (p *Prepared) Load(experts func(expert.ID) bool) (*model.Model, *expert.Store, error) {
	if p.weightsDir == "" {
		return model.NewRandom(p.Model, model.InitOptions{Seed: p.Cfg.Seed, Experts: experts})
	}
	ck, err := model.Open(p.weightsDir)
	if err != nil {
		return nil, nil, err
	}
	defer ck.Close()
	if ck.Config.Fingerprint() != p.Model.Fingerprint() {
		return nil, nil, fmt.Errorf("train: %s holds model %s, expected %s", p.weightsDir, ck.Config.Fingerprint(), p.Model.Fingerprint())
	}
	return model.Load(ck.Config, ck.Source, model.LoadOptions{Experts: experts})
}

// stepRunner is what the training loop needs from a (single or
// distributed) stepper.
type stepRunner interface {
	trainStep(ctx context.Context, step int) (*StepOut, error)
	eval(ctx context.Context, windows [][]int32) (float64, error)
	save(dir string, state TrainerState) error
	rank() int
	// stopAgreed reports whether the group agreed, in the step just
	// taken, to stop after it (RankJob.Stop); always false in one process.
	stopAgreed() bool
}

// loop runs steps from p.State.Step to the configured total, evaluating
// and checkpointing on schedule; rank 0 reports to prog (nil: silent) and
// keeps the trainer state. Every rank runs the same loop in lockstep.
func (p *Prepared) loop(ctx context.Context, r stepRunner, prog Progress, workers int) (*Result, error) {
	cfg, state := p.Cfg, p.State
	if prog == nil || r.rank() != 0 {
		prog = silent{}
	}
	state.Workers = workers
	res := &Result{Params: p.Params}
	step := state.Step
	save := func() error {
		dir := CheckpointDir(cfg.Out, step)
		if err := r.save(dir, *state); err != nil {
			return err
		}
		res.Checkpoint = dir
		prog.Observe(Event{Step: step, Checkpoint: dir})
		return nil
	}
	evaluate := func() error {
		w := p.Data.EvalWindows()
		if len(w) == 0 || r.rank() != 0 {
			return nil
		}
		w = w[:min(len(w), max(cfg.EvalMax, 1))]
		var total float64
		for i := 0; i < len(w); i += cfg.Batch {
			l, err := r.eval(ctx, w[i:min(i+cfg.Batch, len(w))])
			if err != nil {
				return err
			}
			total += l * float64(min(i+cfg.Batch, len(w))-i)
		}
		loss := total / float64(len(w))
		state.Evals = append(state.Evals, EvalPoint{Step: step, Loss: loss})
		prog.Observe(Event{Step: step, EvalLoss: loss})
		return nil
	}
	start, startStep := time.Now(), step
	for step < cfg.Steps {
		if err := ctx.Err(); err != nil {
			if serr := save(); serr != nil {
				return res, errors.Join(err, serr)
			}
			return res, err
		}
		out, err := r.trainStep(ctx, step)
		if err != nil {
			return res, err
		}
		step++
		state.Step = step
		state.Losses = append(state.Losses, out.Loss)
		state.Tokens += int64(cfg.Batch * cfg.SeqLen)
		tps := float64((step-startStep)*cfg.Batch*cfg.SeqLen) / time.Since(start).Seconds()
		prog.Observe(Event{Step: step, Loss: out.Loss, LR: out.LR, TokensPerS: tps})
		if cfg.EvalEvery > 0 && step%cfg.EvalEvery == 0 && step < cfg.Steps {
			if err := evaluate(); err != nil {
				return res, err
			}
		}
		if r.stopAgreed() && step < cfg.Steps {
			// Every rank saw the same agreement in this step's statistics
			// all-reduce: all save the same step and stop together.
			state.Seconds += time.Since(start).Seconds()
			if err := save(); err != nil {
				return res, err
			}
			res.Steps = step
			res.Losses = state.Losses
			return res, fmt.Errorf("%w after step %d", ErrStopped, step)
		}
		if cfg.SaveEvery > 0 && step%cfg.SaveEvery == 0 && step < cfg.Steps {
			state.Seconds += time.Since(start).Seconds()
			start, startStep = time.Now(), step
			if err := save(); err != nil {
				return res, err
			}
		}
	}
	el := time.Since(start).Seconds()
	if step > startStep {
		res.TokensPerS = float64((step-startStep)*cfg.Batch*cfg.SeqLen) / el
	}
	state.Seconds += el
	if err := evaluate(); err != nil {
		return res, err
	}
	if err := save(); err != nil {
		return res, err
	}
	res.Steps = step
	res.Losses = state.Losses
	res.Evals = state.Evals
	return res, nil
}

// Run trains as configured in this process, reporting to prog (nil:
// silent). It can be interrupted (ctx) and resumed: the run saves a
// checkpoint before returning ctx's error.
func Run(ctx context.Context, cfg JobConfig, prog Progress) (*Result, error) {
	if prog == nil {
		prog = silent{}
	}
	p, err := Prepare(cfg, prog.Logf)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	m, store, err := p.Load(nil)
	if err != nil {
		return nil, err
	}
	stepper, err := NewStepper(m, store, cfg.Step)
	if err != nil {
		return nil, err
	}
	if p.ResumeDir != "" {
		if err := LoadOptimizer(p.ResumeDir, stepper.Opt, store); err != nil {
			return nil, err
		}
		stepper.Step = p.State.Step
	}
	return p.loop(ctx, &localRunner{p: p, s: stepper}, prog, 1)
}

// localRunner runs steps in this process.
type localRunner struct {
	p *Prepared
	s *Stepper
}

func (l *localRunner) rank() int        { return 0 }
func (l *localRunner) stopAgreed() bool { return false }
func (l *localRunner) trainStep(ctx context.Context, step int) (*StepOut, error) {
	return l.s.TrainStep(ctx, l.p.Data.BatchAt(step))
}
func (l *localRunner) eval(ctx context.Context, w [][]int32) (float64, error) {
	return l.s.Eval(ctx, w)
}
func (l *localRunner) save(dir string, st TrainerState) error {
	return WriteCheckpoint(dir, &Checkpoint{HFConfig: l.p.HFConfig, TokenizerJSON: l.p.TokJSON, TokenizerCfg: l.p.TokCfg, Stepper: l.s, State: st})
}

// RankJob is one rank of a distributed training job. Every rank builds it
// from the same JobConfig; Out must be a directory all ranks can write
// (a shared filesystem), since each rank writes the experts it owns into
// the common checkpoint.
type RankJob struct {
	Prepared *Prepared
	Comm     Comm
	// Model is this rank's dense replica (float32) whose Experts reaches
	// every expert of the job (remote owners included) as an
	// expert.Trainer; Owned holds the experts this rank owns.
	Model *model.Model
	Owned *expert.Store
	// Progress, if set, receives rank 0's steps, evaluations and
	// checkpoints (e.g. to publish them in etcd); other ranks are silent.
	Progress Progress
	// Replicas describes experts held by several ranks (nil: one owner each).
	Replicas *Replicas
	// Stop, if set, is asked once per step whether this rank wants the job
	// to stop (e.g. to re-form on more workers). The ranks' answers are
	// OR-ed in the step's statistics all-reduce, so all of them finish the
	// same step, write one coordinated checkpoint and return ErrStopped.
	Stop func() bool
	// OnStep, if set, is called on every rank after each step (e.g. for
	// metrics).
	OnStep func(StepReport)
	// Name is the job's name in traces (the ranks' step spans of one step
	// share a trace derived from it); empty: not traced.
	Name string
}

// StepReport is one rank's view of a finished step.
type StepReport struct {
	Step         int     // steps done
	Loss         float64 // the group's loss of the step
	GradNorm     float64 // global, before clipping
	Tokens       int     // tokens of this rank's rows
	GlobalTokens int     // tokens of the whole batch
	Ranks        int
	Times        StepTimes
}

// ErrStopped is returned (wrapped) by RunRank when the group stopped at a
// rank's request (RankJob.Stop) after writing a checkpoint to resume from.
var ErrStopped = errors.New("train: stopped on request")

// RunRank runs one rank of a distributed job until the last step. Ranks
// take their rows of each global batch (RankRows), all-reduce statistics
// and gradients through Comm, and write coordinated checkpoints: every
// rank its own experts, rank 0 the dense part, the index and the trainer
// state, with barriers between.
func RunRank(ctx context.Context, rj RankJob) (*Result, error) {
	p := rj.Prepared
	s, err := NewDistStepper(rj.Model, rj.Owned, rj.Comm, p.Cfg.Step)
	if err != nil {
		return nil, err
	}
	s.Replicas = rj.Replicas
	s.StopRequest = rj.Stop
	if p.ResumeDir != "" {
		if err := LoadOptimizer(p.ResumeDir, s.Opt, rj.Owned); err != nil {
			return nil, err
		}
		s.Step = p.State.Step
	}
	if rj.Comm.Rank() == 0 {
		if err := os.MkdirAll(p.Cfg.Out, 0o755); err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
	}
	return p.loop(ctx, &distRunner{p: p, s: s, onStep: rj.OnStep, name: rj.Name}, rj.Progress, rj.Comm.Size())
}

// distRunner runs one rank's steps.
type distRunner struct {
	p      *Prepared
	s      *DistStepper
	onStep func(StepReport)
	name   string // the job's, for traces ("": untraced)
}

func (d *distRunner) rank() int        { return d.s.Comm.Rank() }
func (d *distRunner) stopAgreed() bool { return d.s.stopAgreed }

func (d *distRunner) trainStep(ctx context.Context, step int) (*StepOut, error) {
	b := d.p.Data.BatchAt(step)
	lo, hi := RankRows(len(b), d.s.Comm.Size(), d.s.Comm.Rank())
	if d.name != "" {
		var span trace.Span
		ctx, span = startStep(ctx, d.name, step, d.s.Comm.Rank(), d.s.Comm.Size())
		defer span.End()
	}
	out, err := d.s.TrainStep(ctx, b[lo:hi])
	if err == nil && d.onStep != nil {
		seq := d.p.Cfg.SeqLen
		d.onStep(StepReport{
			Step: step + 1, Loss: out.Loss, GradNorm: out.GradNorm, Tokens: (hi - lo) * seq, GlobalTokens: len(b) * seq,
			Ranks: d.s.Comm.Size(), Times: d.s.Last,
		})
	}
	return out, err
}

func (d *distRunner) eval(ctx context.Context, w [][]int32) (float64, error) {
	return EvalLoss(ctx, d.s.Model, w)
}

// barrier waits until every rank reached it.
func (d *distRunner) barrier(ctx context.Context) error {
	return d.s.Comm.Barrier(ctx)
}

func (d *distRunner) save(dir string, st TrainerState) error {
	ctx := context.Background()
	rank := d.s.Comm.Rank()
	tmp := dir + ".tmp"
	var err error
	if rank == 0 {
		tmp, err = BeginCheckpoint(dir)
	}
	if berr := d.barrier(ctx); berr != nil || err != nil {
		return errors.Join(err, berr)
	}
	err = WriteExperts(tmp, d.s.Stepper, d.s.primary) // one writer per expert
	if err == nil && rank == 0 {
		err = WriteDense(tmp, &Checkpoint{HFConfig: d.p.HFConfig, TokenizerJSON: d.p.TokJSON, TokenizerCfg: d.p.TokCfg, Stepper: d.s.Stepper})
	}
	// A failed rank still reaches the barrier so no one waits forever; the
	// missing files then fail FinishCheckpoint's completeness check.
	if berr := d.barrier(ctx); berr != nil || err != nil {
		return errors.Join(err, berr)
	}
	if rank == 0 {
		err = FinishCheckpoint(tmp, dir, d.s.Model.Cfg, st)
	}
	if berr := d.barrier(ctx); berr != nil || err != nil {
		return errors.Join(err, berr)
	}
	return nil
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
