package model

import "time"

// Profile accumulates wall time per component of training steps (forward
// and backward together). Set TrainState.Prof to collect it; the cost is a
// few time.Now calls per layer.
type Profile struct {
	Attention     time.Duration // projections, RoPE, attention, o_proj (GQA or MLA)
	Router        time.Duration // gate logits, routing, dispatch plan, router backward
	Experts       time.Duration // routed experts through the executor, combine
	SharedExperts time.Duration // shared experts and their gate
	DenseMLP      time.Duration // dense (non-MoE) layers' MLP
	Head          time.Duration // final norm, lm_head, cross-entropy
	Total         time.Duration // whole forward + backward
	Optimizer     time.Duration // clipping, AdamW, bias update (set by the stepper)
	Steps         int
}

// timer adds elapsed time to a Profile field; a nil profile costs nothing.
type timer struct {
	p *Profile
	t time.Time
}

func (p *Profile) start() timer {
	if p == nil {
		return timer{}
	}
	return timer{p: p, t: time.Now()}
}

// lap adds the time since the last lap (or start) to *d.
func (t *timer) lap(d func(*Profile) *time.Duration) {
	if t.p == nil {
		return
	}
	now := time.Now()
	*d(t.p) += now.Sub(t.t)
	t.t = now
}

func attn(p *Profile) *time.Duration   { return &p.Attention }
func rout(p *Profile) *time.Duration   { return &p.Router }
func exps(p *Profile) *time.Duration   { return &p.Experts }
func shared(p *Profile) *time.Duration { return &p.SharedExperts }
func dense(p *Profile) *time.Duration  { return &p.DenseMLP }
func head(p *Profile) *time.Duration   { return &p.Head }
func total(p *Profile) *time.Duration  { return &p.Total }
func skip(p *Profile) *time.Duration   { return new(time.Duration) }
