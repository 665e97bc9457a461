// Package trainconf is the plain-data description of a training run:
// JobConfig (what to train, on what, for how long) and StepConfig (the
// optimizer, schedule, clipping and losses of each step), with their
// defaults. pkg/train runs it (train.JobConfig and train.StepConfig are
// these types); internal/jobs stores it in a job's spec in etcd. It holds no
// trainer code, so the control plane (the coordinator's job scheduler)
// can carry a job without linking the trainer (docs/ARCHITECTURE.md,
// section 7).
package trainconf

import (
	"errors"
	"fmt"
	"math"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
)

// JobConfig describes a training run. Zero values take the defaults noted
// on each field (see DefaultJobConfig). It is stored as JSON in a job's
// spec, so it holds data only.
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

	// ExpertReplicas is how many workers of a distributed job hold a copy
	// of each routed expert (default 1; at most the number of workers).
	// Callers spread over the copies; the copies' gradients are
	// all-reduced so they take identical steps.
	ExpertReplicas int
}

// DefaultJobConfig returns the defaults for a from-scratch run.
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

// Validate reports every problem of c (errors.Join). Whether Preset names
// a known preset is the trainer's check (train.Prepare).
func (c *JobConfig) Validate() error {
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
	return errors.Join(errs...)
}

// StepConfig holds the per-step settings.
type StepConfig struct {
	AdamW optim.AdamWConfig
	// Schedule gives each step's learning rate; its Peak should equal
	// AdamW.LR. A zero Schedule means constant AdamW.LR.
	Schedule optim.Schedule
	// MaxGradNorm clips the global gradient norm (dense and experts
	// together) as clip_grad_norm_ does; 0 disables clipping.
	MaxGradNorm float64
	Loss        model.LossConfig
	// BiasUpdateSpeed is u of DeepSeek-V3's aux-loss-free balancing: after
	// each step every MoE layer with an e_score_correction_bias does
	// b_i += u * sign(mean_load - load_i). 0 disables it.
	BiasUpdateSpeed float64
}

// LR returns the learning rate of step (counted from 0).
func (c StepConfig) LR(step int) float64 {
	if c.Schedule == (optim.Schedule{}) {
		return c.AdamW.LR
	}
	return c.Schedule.LR(step)
}
