package optim

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// torchAdamW is a line-by-line float64 transcription of
// torch.optim.adamw._single_tensor_adamw (amsgrad=False).
func torchAdamW(p, g, m, v []float64, step int, lr, b1, b2, eps, wd float64) {
	for i := range p {
		p[i] *= 1 - lr*wd
		m[i] += (g[i] - m[i]) * (1 - b1) // exp_avg.lerp_(grad, 1-beta1)
		v[i] = v[i]*b2 + (1-b2)*g[i]*g[i]
		bc1 := 1 - math.Pow(b1, float64(step))
		bc2 := 1 - math.Pow(b2, float64(step))
		denom := math.Sqrt(v[i])/math.Sqrt(bc2) + eps
		p[i] -= lr / bc1 * m[i] / denom
	}
}

func TestAdamWMatchesTorch(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cfg := AdamWConfig{LR: 0.01, Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, WeightDecay: 0.1}
	o, err := NewAdamW(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := 1000
	w := make([]float32, n)
	p, m, v := make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range w {
		w[i] = float32(r.NormFloat64())
		p[i] = float64(w[i])
	}
	for step := 1; step <= 6; step++ {
		g32 := make([]float32, n)
		g := make([]float64, n)
		for i := range g {
			g32[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(6)-4)))
			g[i] = float64(g32[i])
		}
		lr := cfg.LR * float64(step) / 6
		if err := o.Step([]Param{{Name: "w", W: w, G: g32}}, lr); err != nil {
			t.Fatal(err)
		}
		torchAdamW(p, g, m, v, step, lr, cfg.Beta1, cfg.Beta2, cfg.Eps, cfg.WeightDecay)
		for i := range w {
			if d := math.Abs(float64(w[i]) - p[i]); d > 1e-6*math.Max(1, math.Abs(p[i])) {
				t.Fatalf("step %d element %d: %g, torch %g", step, i, w[i], p[i])
			}
		}
	}
	if st := o.States()["w"]; st.Step != 6 {
		t.Fatalf("state step %d, want 6", st.Step)
	}
}

func TestNilGradientIsSkipped(t *testing.T) {
	o, _ := NewAdamW(DefaultAdamW(0.1))
	w := []float32{1, 2}
	if err := o.Step([]Param{{Name: "w", W: w}}, 0.1); err != nil {
		t.Fatal(err)
	}
	if w[0] != 1 || w[1] != 2 || len(o.States()) != 0 {
		t.Fatalf("a parameter without gradient changed: %v, %d states", w, len(o.States()))
	}
}

func TestClipAndSchedule(t *testing.T) {
	ps := []Param{{Name: "a", G: []float32{3, 0}}, {Name: "b", G: []float32{4}}}
	n := GradNorm(ps)
	if n != 5 {
		t.Fatalf("norm %g, want 5", n)
	}
	f := ClipScale(n, 1)
	Scale(ps, f)
	if got := GradNorm(ps); math.Abs(got-1) > 1e-6 {
		t.Fatalf("clipped norm %g, want 1", got)
	}
	if ClipScale(0.5, 1) != 1 || ClipScale(10, 0) != 1 {
		t.Fatal("clip scale should be 1 below the threshold or when disabled")
	}
	s := Schedule{Peak: 1, Min: 0.1, Warmup: 10, Total: 110}
	for _, c := range []struct {
		step int
		want float64
	}{{0, 0.1}, {9, 1}, {10, 1}, {60, 0.55}, {110, 0.1}, {500, 0.1}} {
		if got := s.LR(c.step); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("LR(%d) = %g, want %g", c.step, got, c.want)
		}
	}
}

func TestInvalidConfig(t *testing.T) {
	_, err := NewAdamW(AdamWConfig{LR: math.NaN(), Beta1: 1, Beta2: -0.1, Eps: 0, WeightDecay: -1})
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"learning rate NaN", "beta1", "beta2", "eps", "weight decay"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not mention %q", err, want)
		}
	}
	o, _ := NewAdamW(DefaultAdamW(1))
	if err := o.Step(nil, math.Inf(1)); err == nil {
		t.Error("infinite step learning rate accepted")
	}
}
