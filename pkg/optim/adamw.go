// Package optim holds the optimizer and learning-rate schedule of
// Switchyard's training loop: AdamW exactly as torch.optim.AdamW computes it
// (decoupled weight decay, bias correction), global-norm gradient clipping
// as torch.nn.utils.clip_grad_norm_, and linear warmup + cosine decay.
package optim

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// Param is one tensor to optimize: its weights and their gradient, both
// flat float32 of the same length. A nil G means the parameter received no
// gradient this step (torch's grad is None) and is skipped entirely, weight
// decay included, as torch does.
type Param struct {
	Name string
	W    []float32
	G    []float32
}

// AdamWConfig holds AdamW's hyper-parameters; the defaults are torch's
// except the learning rate.
type AdamWConfig struct {
	LR          float64 // peak learning rate (> 0); the schedule may scale it per step
	Beta1       float64 // first-moment decay, default 0.9
	Beta2       float64 // second-moment decay, default 0.999
	Eps         float64 // denominator epsilon, default 1e-8
	WeightDecay float64 // decoupled decay coefficient, default 0.01
}

// DefaultAdamW returns torch's defaults with the given learning rate.
func DefaultAdamW(lr float64) AdamWConfig {
	return AdamWConfig{LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
}

// Validate reports every invalid field.
func (c AdamWConfig) Validate() error {
	var errs []error
	bad := func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }
	if bad(c.LR) || c.LR <= 0 {
		errs = append(errs, fmt.Errorf("optim: learning rate %g must be a finite number > 0", c.LR))
	}
	if bad(c.Beta1) || c.Beta1 < 0 || c.Beta1 >= 1 {
		errs = append(errs, fmt.Errorf("optim: beta1 %g must be in [0, 1)", c.Beta1))
	}
	if bad(c.Beta2) || c.Beta2 < 0 || c.Beta2 >= 1 {
		errs = append(errs, fmt.Errorf("optim: beta2 %g must be in [0, 1)", c.Beta2))
	}
	if bad(c.Eps) || c.Eps <= 0 {
		errs = append(errs, fmt.Errorf("optim: eps %g must be > 0", c.Eps))
	}
	if bad(c.WeightDecay) || c.WeightDecay < 0 {
		errs = append(errs, fmt.Errorf("optim: weight decay %g must be >= 0", c.WeightDecay))
	}
	return errors.Join(errs...)
}

// State is one parameter's optimizer state.
type State struct {
	Step int       // updates applied to this parameter
	M    []float32 // first moment (exp_avg)
	V    []float32 // second moment (exp_avg_sq)
}

// AdamW is torch.optim.AdamW (amsgrad=False, maximize=False). State is kept
// per parameter name, so parameters can come and go (experts moving between
// workers carry their state along via States/SetState).
type AdamW struct {
	Cfg   AdamWConfig
	state map[string]*State
}

// NewAdamW returns an optimizer; cfg must be valid.
func NewAdamW(cfg AdamWConfig) (*AdamW, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &AdamW{Cfg: cfg, state: map[string]*State{}}, nil
}

// Step applies one update with learning rate lr to every parameter with a
// gradient. Per element, in float64:
//
//	w *= 1 - lr*wd
//	m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
//	w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
func (o *AdamW) Step(params []Param, lr float64) error {
	if math.IsNaN(lr) || math.IsInf(lr, 0) || lr < 0 {
		return fmt.Errorf("optim: learning rate %g is not a finite number >= 0", lr)
	}
	c := o.Cfg
	for _, p := range params {
		if p.G == nil {
			continue
		}
		if len(p.G) != len(p.W) {
			return fmt.Errorf("optim: %s: gradient has %d values, weights %d", p.Name, len(p.G), len(p.W))
		}
		s := o.state[p.Name]
		if s == nil {
			s = &State{M: make([]float32, len(p.W)), V: make([]float32, len(p.W))}
			o.state[p.Name] = s
		}
		if len(s.M) != len(p.W) {
			return fmt.Errorf("optim: %s: state has %d values, weights %d", p.Name, len(s.M), len(p.W))
		}
		s.Step++
		bc1 := 1 - math.Pow(c.Beta1, float64(s.Step))
		bc2 := math.Sqrt(1 - math.Pow(c.Beta2, float64(s.Step)))
		decay := 1 - lr*c.WeightDecay
		stepSize := lr / bc1
		W, G, M, V := p.W, p.G, s.M, s.V
		// Elementwise, so splitting over goroutines changes nothing.
		tensor.ParallelFor(len(W), 1<<14, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				g := float64(G[i])
				w := float64(W[i]) * decay
				m := c.Beta1*float64(M[i]) + (1-c.Beta1)*g
				v := c.Beta2*float64(V[i]) + (1-c.Beta2)*g*g
				M[i], V[i] = float32(m), float32(v)
				W[i] = float32(w - stepSize*m/(math.Sqrt(v)/bc2+c.Eps))
			}
		})
	}
	return nil
}

// States returns the state of every parameter, by name.
func (o *AdamW) States() map[string]*State { return o.state }

// SetState installs the state of one parameter (resuming a checkpoint or
// receiving a moved expert).
func (o *AdamW) SetState(name string, s *State) { o.state[name] = s }

// Names lists the parameters with state, sorted.
func (o *AdamW) Names() []string {
	n := make([]string, 0, len(o.state))
	for k := range o.state {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// GradNorm returns the global L2 norm of the gradients, in float64.
func GradNorm(params []Param) float64 {
	var s float64
	for _, p := range params {
		for _, g := range p.G {
			s += float64(g) * float64(g)
		}
	}
	return math.Sqrt(s)
}

// ClipScale is the factor clip_grad_norm_ multiplies gradients by for a
// global norm `norm` and threshold maxNorm: min(1, maxNorm/(norm+1e-6)).
// maxNorm <= 0 disables clipping (factor 1).
func ClipScale(norm, maxNorm float64) float64 {
	if maxNorm <= 0 {
		return 1
	}
	return math.Min(1, maxNorm/(norm+1e-6))
}

// Scale multiplies every gradient by f.
func Scale(params []Param, f float64) {
	if f == 1 {
		return
	}
	for _, p := range params {
		for i := range p.G {
			p.G[i] = float32(float64(p.G[i]) * f)
		}
	}
}

// Schedule is linear warmup then cosine decay:
//
//	step < Warmup:            lr = Peak * (step+1) / Warmup
//	Warmup <= step < Total:   lr = Min + (Peak-Min) * (1 + cos(pi * p)) / 2,
//	                          p = (step-Warmup) / (Total-Warmup)
//	step >= Total:            lr = Min
//
// Steps count from 0. Total 0 means constant Peak after warmup.
type Schedule struct {
	Peak, Min     float64
	Warmup, Total int
}

// LR returns the learning rate of a step.
func (s Schedule) LR(step int) float64 {
	if step < s.Warmup {
		return s.Peak * float64(step+1) / float64(s.Warmup)
	}
	if s.Total <= 0 {
		return s.Peak
	}
	if step >= s.Total {
		return s.Min
	}
	p := float64(step-s.Warmup) / float64(max(s.Total-s.Warmup, 1))
	return s.Min + (s.Peak-s.Min)*(1+math.Cos(math.Pi*p))/2
}
