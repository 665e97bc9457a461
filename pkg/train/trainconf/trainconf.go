// Package trainconf is the plain-data description of a training run:
// JobConfig (what to train, on what, for how long) and StepConfig (the
// optimizer, schedule, clipping and losses of each step), with their
// defaults. pkg/train runs it (train.JobConfig and train.StepConfig are
// these types); internal/jobs stores it in a job's spec in etcd. It holds no
// trainer code, so the control plane (the coordinator's job scheduler)
// can carry a job without linking the trainer (docs/ARCHITECTURE.md,
// section 12, Packages).
package trainconf

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/train/dataroot"
)

// JobConfig describes a training run. Zero values take the defaults noted
// on each field (see DefaultJobConfig). It is stored as JSON in a job's
// spec, so it holds data only.
//
// Paths (Out, Text, InitFrom, Tokenizer) are used as they are by a run in
// this process (train.Run). A worker running the job for a cluster
// resolves them against its data root first (ResolvePaths): relative
// paths are relative to it, and nothing outside it is read or written.
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
	// trained on Text with VocabSize entries (default 1024, at most
	// MaxVocab).
	Tokenizer string
	VocabSize int

	SeqLen    int     // tokens per training window, default 128, 2..MaxSeqLen
	Batch     int     // windows per step, default 8, 1..MaxBatch
	Steps     int     // total steps, default 300, 1..MaxSteps
	HeldOut   float64 // fraction of windows held out for evaluation, default 0.05, in [0, 1)
	EvalEvery int     // steps between evaluations, default 50 (0: only at the end)
	EvalMax   int     // held-out windows per evaluation, default 32
	SaveEvery int     // steps between checkpoints, default 100 (the last step is always saved)
	Seed      uint64  // data order and initialization, default 1

	Step StepConfig // optimizer, schedule, clipping, losses

	// ExpertReplicas is how many workers of a distributed job hold a copy
	// of each routed expert (default 1; at most the number of workers,
	// and at most MaxExpertReplicas).
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

// Bounds Validate enforces. They are far above any run this trainer can
// do, and low enough that no count derived from them (tokens per step,
// tokens seen, steps) overflows an int64.
const (
	MaxSteps          = 1 << 26 // Steps, and EvalEvery, SaveEvery, the schedule's Warmup and Total
	MaxSeqLen         = 1 << 20 // SeqLen
	MaxBatch          = 1 << 16 // Batch, EvalMax; MaxSteps*MaxBatch*MaxSeqLen = 2^62 tokens
	MaxVocab          = 1 << 22 // VocabSize
	MaxExpertReplicas = 1 << 12 // ExpertReplicas
	MaxPathLen        = 4096    // bytes of each path (Linux's PATH_MAX)
	MaxNameLen        = 256     // bytes of Preset
)

// Validate reports every problem of c (errors.Join): every number must be
// in the range its field documents, finite where it is a float, and every
// path must be well formed (CheckPath). Whether Preset names a known
// preset is the trainer's check (train.Prepare); whether the paths lie in
// a worker's data root is ResolvePaths'.
func (c *JobConfig) Validate() error {
	var errs []error
	if c.Out == "" {
		errs = append(errs, errors.New("train: an output directory is required"))
	}
	if c.Text == "" {
		errs = append(errs, errors.New("train: a training text file is required"))
	}
	for _, p := range c.paths() {
		if *p.path != "" {
			if err := CheckPath(p.name, *p.path); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.Preset != "" && c.InitFrom != "" {
		errs = append(errs, errors.New("train: give a preset or a checkpoint to fine-tune, not both"))
	}
	if len(c.Preset) > MaxNameLen {
		errs = append(errs, fmt.Errorf("train: preset name of %d bytes (at most %d)", len(c.Preset), MaxNameLen))
	}
	ints := []struct {
		name      string
		v, lo, hi int
	}{
		{"steps", c.Steps, 1, MaxSteps},
		{"sequence length", c.SeqLen, 2, MaxSeqLen},
		{"batch", c.Batch, 1, MaxBatch},
		{"vocabulary size", c.VocabSize, 0, MaxVocab},
		{"eval-every", c.EvalEvery, 0, MaxSteps},
		{"eval-max", c.EvalMax, 0, MaxBatch},
		{"save-every", c.SaveEvery, 0, MaxSteps},
		{"expert replicas", c.ExpertReplicas, 0, MaxExpertReplicas},
		{"warmup steps", c.Step.Schedule.Warmup, 0, MaxSteps},
		{"schedule total steps", c.Step.Schedule.Total, 0, MaxSteps},
	}
	for _, f := range ints {
		if f.v < f.lo || f.v > f.hi {
			errs = append(errs, fmt.Errorf("train: %s %d is out of range [%d, %d]", f.name, f.v, f.lo, f.hi))
		}
	}
	if bad(c.HeldOut) || c.HeldOut < 0 || c.HeldOut >= 1 {
		errs = append(errs, fmt.Errorf("train: held-out fraction %g must be in [0, 1)", c.HeldOut))
	}
	if err := c.Step.AdamW.Validate(); err != nil {
		errs = append(errs, err)
	}
	s := c.Step.Schedule
	for _, v := range []float64{s.Peak, s.Min} {
		if bad(v) || v < 0 {
			errs = append(errs, fmt.Errorf("train: learning rate schedule value %g is not a finite number >= 0", v))
		}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"max grad norm", c.Step.MaxGradNorm},
		{"aux loss coefficient", c.Step.Loss.AuxCoef},
		{"z-loss coefficient", c.Step.Loss.ZCoef},
		{"capacity factor", c.Step.Loss.CapacityFactor},
		{"bias update speed", c.Step.BiasUpdateSpeed},
	} {
		if bad(f.v) || f.v < 0 {
			errs = append(errs, fmt.Errorf("train: %s %g must be a finite number >= 0", f.name, f.v))
		}
	}
	return errors.Join(errs...)
}

func bad(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }

// namedPath is one path field of a JobConfig.
type namedPath struct {
	name string
	path *string
}

// paths lists c's path fields.
func (c *JobConfig) paths() []namedPath {
	return []namedPath{{"output directory", &c.Out}, {"text", &c.Text}, {"init-from", &c.InitFrom}, {"tokenizer", &c.Tokenizer}}
}

// CheckPath reports whether p (the name field of a job) is a well-formed
// path: at most MaxPathLen bytes, without NUL bytes. It does not look at
// the filesystem.
func CheckPath(name, p string) error {
	if len(p) > MaxPathLen {
		return fmt.Errorf("train: %s path of %d bytes (at most %d)", name, len(p), MaxPathLen)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("train: %s path %q contains a NUL byte", name, p)
	}
	return nil
}

// ResolvePaths returns c with every path it names resolved against a
// worker's data root (dataroot.Resolve): relative paths are joined to
// root; every path, once cleaned and its symbolic links followed, must
// lie inside root. The error names each path refused, and root.
func (c JobConfig) ResolvePaths(root string) (JobConfig, error) {
	var errs []error
	for _, p := range c.paths() {
		if *p.path == "" {
			continue
		}
		real, err := dataroot.Resolve(root, *p.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("train: %s: %w", p.name, err))
			continue
		}
		*p.path = real
	}
	return c, errors.Join(errs...)
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
