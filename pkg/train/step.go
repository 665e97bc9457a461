// Package train runs training steps and training jobs for Switchyard
// models: forward, backward, gradient clipping, AdamW, DeepSeek-V3's
// aux-loss-free bias update, and (in job.go) the loop around them: data,
// evaluation and checkpoints, reporting progress through the Progress
// interface. It renders nothing (no progress bar, no plot: the CLI does,
// internal/cli), so a worker running a job links only the trainer.
package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/train/trainconf"
)

// StepConfig holds the per-step settings (defined in pkg/train/trainconf,
// which the job store shares without linking the trainer).
type StepConfig = trainconf.StepConfig

// Stepper trains a model held in one process: its dense weights and the
// routed experts in an expert.Store.
type Stepper struct {
	Model *model.Model
	Store *expert.Store
	Grads *model.Grads
	Opt   *optim.AdamW
	Cfg   StepConfig
	Step  int // steps taken

	state  *model.TrainState
	dense  []model.ParamRef
	gdense []model.ParamRef
}

// NewStepper prepares training of m, whose routed experts are in store
// (both float32: load with KeepBF16 false).
func NewStepper(m *model.Model, store *expert.Store, cfg StepConfig) (*Stepper, error) {
	opt, err := optim.NewAdamW(cfg.AdamW)
	if err != nil {
		return nil, err
	}
	if cfg.MaxGradNorm < 0 || math.IsNaN(cfg.MaxGradNorm) {
		return nil, fmt.Errorf("train: max grad norm %g must be >= 0", cfg.MaxGradNorm)
	}
	g, err := m.NewGrads()
	if err != nil {
		return nil, err
	}
	dense, err := m.DenseParams()
	if err != nil {
		return nil, err
	}
	return &Stepper{Model: m, Store: store, Grads: g, Opt: opt, Cfg: cfg, state: m.NewTrainState(), dense: dense, gdense: g.Params}, nil
}

// Profile turns on per-component timing of the following steps and
// returns the profile they accumulate into.
func (s *Stepper) Profile() *model.Profile {
	s.state.Prof = &model.Profile{}
	return s.state.Prof
}

// Params returns every trainable parameter with its gradient of the last
// backward: dense ones (buffers excluded) and the store's experts that
// received rows (others have G nil and are skipped by AdamW).
func (s *Stepper) Params() []optim.Param {
	var ps []optim.Param
	for i, r := range s.dense {
		if r.Trained {
			ps = append(ps, optim.Param{Name: r.Name, W: *r.Data, G: *s.gdense[i].Data})
		}
	}
	return append(ps, ExpertParams(s.Model.Cfg.Family, s.Store)...)
}

// ExpertParams lists a store's experts as optimizer parameters under their
// hub names, in (layer, expert) order. Every expert has a gradient (zero
// when no token reached it), as transformers' fused expert parameters do.
func ExpertParams(f model.Family, store *expert.Store) []optim.Param {
	ids := store.IDs()
	sortIDs(ids)
	var ps []optim.Param
	for _, id := range ids {
		w := store.Get(id)
		if w == nil {
			continue
		}
		n := model.ExpertTensorNames(f, id.Layer, id.Expert)
		g := store.Grad(id)
		var gg, gu, gd []float32
		if g != nil {
			gg, gu, gd = g.Gate.F32, g.Up.F32, g.Down.F32
		}
		ps = append(ps,
			optim.Param{Name: n[0], W: w.Gate.F32, G: gg},
			optim.Param{Name: n[1], W: w.Up.F32, G: gu},
			optim.Param{Name: n[2], W: w.Down.F32, G: gd})
	}
	return ps
}

// StepOut reports one training step.
type StepOut struct {
	model.StepResult
	LR       float64
	GradNorm float64 // before clipping
}

// ErrNonFinite is returned when the loss or gradient norm is NaN or
// infinite; the step is not applied.
var ErrNonFinite = errors.New("train: non-finite loss or gradient")

// TrainStep runs forward and backward on ids [B][T] and applies the update.
func (s *Stepper) TrainStep(ctx context.Context, ids [][]int32) (*StepOut, error) {
	s.Grads.Zero()
	s.Store.ZeroGrad()
	res, err := s.Model.TrainForward(ctx, s.state, ids, s.Cfg.Loss)
	if err != nil {
		return nil, err
	}
	if err := s.Model.TrainBackward(ctx, s.state, s.Grads); err != nil {
		return nil, err
	}
	s.Store.FinishGrads()
	t0 := time.Now()
	params := s.Params()
	out := &StepOut{StepResult: *res, LR: s.Cfg.LR(s.Step), GradNorm: optim.GradNorm(params)}
	if math.IsNaN(res.Loss) || math.IsInf(res.Loss, 0) || math.IsNaN(out.GradNorm) || math.IsInf(out.GradNorm, 0) {
		return out, fmt.Errorf("%w at step %d: loss %g, grad norm %g", ErrNonFinite, s.Step, res.Loss, out.GradNorm)
	}
	optim.Scale(params, optim.ClipScale(out.GradNorm, s.Cfg.MaxGradNorm))
	if err := s.Opt.Step(params, out.LR); err != nil {
		return out, err
	}
	UpdateScoreBias(s.Model, res.Load, s.Cfg.BiasUpdateSpeed)
	if p := s.state.Prof; p != nil {
		p.Optimizer += time.Since(t0)
		p.Steps++
	}
	s.Step++
	return out, nil
}

// UpdateScoreBias applies DeepSeek-V3's aux-loss-free balancing to every MoE
// layer with a score correction bias: b_i += u * sign(mean_load - load_i),
// load[l][e] being the rows routed to expert e of the l-th MoE layer.
func UpdateScoreBias(m *model.Model, load [][]int, u float64) {
	if u == 0 {
		return
	}
	k := 0
	for l := range m.Layers {
		L := &m.Layers[l]
		if L.MLP != nil {
			continue
		}
		if k >= len(load) {
			return
		}
		ld := load[k]
		k++
		if L.ScoreBias == nil {
			continue
		}
		var mean float64
		for _, v := range ld {
			mean += float64(v)
		}
		mean /= float64(len(ld))
		for e, v := range ld {
			switch {
			case float64(v) < mean:
				L.ScoreBias[e] += float32(u)
			case float64(v) > mean:
				L.ScoreBias[e] -= float32(u)
			}
		}
	}
}

func sortIDs(ids []expert.ID) { slices.SortFunc(ids, expert.Compare) }

// NamedGrad is one parameter's gradient.
type NamedGrad struct {
	Name  string
	Shape []int
	G     []float32
}

// Gradients runs forward and backward on ids without updating anything
// and returns every parameter's gradient (dense, buffers excluded, and the
// store's experts), by hub name.
func (s *Stepper) Gradients(ctx context.Context, ids [][]int32) ([]NamedGrad, error) {
	s.Grads.Zero()
	s.Store.ZeroGrad()
	if _, err := s.Model.TrainForward(ctx, s.state, ids, s.Cfg.Loss); err != nil {
		return nil, err
	}
	if err := s.Model.TrainBackward(ctx, s.state, s.Grads); err != nil {
		return nil, err
	}
	s.Store.FinishGrads()
	var out []NamedGrad
	for i, r := range s.dense {
		if r.Trained {
			out = append(out, NamedGrad{Name: r.Name, Shape: r.Shape, G: *s.gdense[i].Data})
		}
	}
	for _, p := range ExpertParams(s.Model.Cfg.Family, s.Store) {
		out = append(out, NamedGrad{Name: p.Name, Shape: expertShape(s.Model.Cfg, p.Name), G: p.G})
	}
	return out, nil
}

// Eval returns the mean next-token cross-entropy of ids [B][T] with the
// inference forward pass (no activations kept, no gradients).
func (s *Stepper) Eval(ctx context.Context, ids [][]int32) (float64, error) {
	return EvalLoss(ctx, s.Model, ids)
}

// EvalLoss is the mean next-token cross-entropy of m on ids [B][T].
func EvalLoss(ctx context.Context, m *model.Model, ids [][]int32) (float64, error) {
	seqs := make([]*model.Seq, len(ids))
	for i := range seqs {
		seqs[i] = m.NewSeq()
	}
	out, err := m.Forward(ctx, seqs, ids, model.Options{AllLogits: true})
	if err != nil {
		return 0, err
	}
	return model.CrossEntropy(out.Logits, ids, m.Cfg.Vocab), nil
}

func expertShape(c *model.Config, name string) []int {
	D, F := c.Hidden, c.MoE.Inter
	if len(name) > len("down_proj.weight") && (hasSuffix(name, "down_proj.weight") || hasSuffix(name, ".w2.weight")) {
		return []int{D, F}
	}
	return []int{F, D}
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }
