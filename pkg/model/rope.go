package model

import (
	"math"
	"sync"
)

// InvFreq returns the rotary inverse frequencies [Dim/2] and the attention
// factor that multiplies cos and sin, following transformers'
// ROPE_INIT_FUNCTIONS (modeling_rope_utils.py) for each rope_type.
// Frequencies are computed in float64 and rounded once to float32, as
// transformers computes them in float32.
func (r *Rope) InvFreq() (inv []float32, attnFactor float64) {
	dim := r.Dim
	half := dim / 2
	base := make([]float64, half)
	for i := range base {
		base[i] = 1 / math.Pow(r.Theta, float64(2*i)/float64(dim))
	}
	attnFactor = 1
	switch r.Type {
	case "linear":
		for i := range base {
			base[i] /= r.Factor
		}
	case "llama3":
		lowWave := float64(r.OriginalMaxPos) / r.LowFreqFactor
		highWave := float64(r.OriginalMaxPos) / r.HighFreqFactor
		for i, f := range base {
			wave := 2 * math.Pi / f
			switch {
			case wave < highWave:
			case wave > lowWave:
				base[i] = f / r.Factor
			default:
				s := (float64(r.OriginalMaxPos)/wave - r.LowFreqFactor) / (r.HighFreqFactor - r.LowFreqFactor)
				base[i] = (1-s)*f/r.Factor + s*f
			}
		}
	case "yarn":
		attnFactor = r.AttentionFactor
		if attnFactor == 0 {
			if r.Mscale != 0 && r.MscaleAllDim != 0 {
				attnFactor = yarnMscale(r.Factor, r.Mscale) / yarnMscale(r.Factor, r.MscaleAllDim)
			} else {
				attnFactor = yarnMscale(r.Factor, 1)
			}
		}
		corr := func(rot float64) float64 {
			return float64(dim) * math.Log(float64(r.OriginalMaxPos)/(rot*2*math.Pi)) / (2 * math.Log(r.Theta))
		}
		low, high := corr(r.BetaFast), corr(r.BetaSlow)
		if r.Truncate {
			low, high = math.Floor(low), math.Ceil(high)
		}
		low, high = math.Max(low, 0), math.Min(high, float64(dim-1))
		if low == high {
			high += 0.001
		}
		for i := range base {
			ramp := math.Min(math.Max((float64(i)-low)/(high-low), 0), 1)
			extrap := 1 - ramp // share of the unscaled frequency
			base[i] = base[i]/r.Factor*(1-extrap) + base[i]*extrap
		}
	}
	inv = make([]float32, half)
	for i, f := range base {
		inv[i] = float32(f)
	}
	return inv, attnFactor
}

// yarnMscale is DeepSeek's yarn_get_mscale: 0.1*m*ln(scale)+1 for scale > 1.
func yarnMscale(scale, m float64) float64 {
	if scale <= 1 {
		return 1
	}
	return 0.1*m*math.Log(scale) + 1
}

// ropeTable caches cos/sin rows per position: row p holds Dim/2 values of
// cos(p*inv[i])*factor and sin(p*inv[i])*factor. Angles are computed as
// float32(p)*inv[i] in float32, as transformers does, then cos/sin in
// float64 and rounded.
type ropeTable struct {
	inv    []float32
	factor float64
	mu     sync.RWMutex
	cos    []float32 // [P, Dim/2]
	sin    []float32 // [P, Dim/2]
}

func newRopeTable(r *Rope) *ropeTable {
	inv, f := r.InvFreq()
	return &ropeTable{inv: inv, factor: f}
}

// at returns cos and sin rows for position p (grows the table as needed).
func (t *ropeTable) at(p int) (cos, sin []float32) {
	h := len(t.inv)
	t.mu.RLock()
	if (p+1)*h <= len(t.cos) {
		cos, sin = t.cos[p*h:(p+1)*h], t.sin[p*h:(p+1)*h]
		t.mu.RUnlock()
		return cos, sin
	}
	t.mu.RUnlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.cos) / h
	if p >= n {
		want := max(p+1, 2*n, 256)
		c := make([]float32, want*h)
		s := make([]float32, want*h)
		copy(c, t.cos)
		copy(s, t.sin)
		for q := n; q < want; q++ {
			for i, f := range t.inv {
				a := float64(float32(q) * f)
				c[q*h+i] = float32(math.Cos(a) * t.factor)
				s[q*h+i] = float32(math.Sin(a) * t.factor)
			}
		}
		t.cos, t.sin = c, s
	}
	return t.cos[p*h : (p+1)*h], t.sin[p*h : (p+1)*h]
}
