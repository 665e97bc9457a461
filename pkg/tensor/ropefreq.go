package tensor

import "math"

// RopeParams are the rotary-embedding frequency settings of transformers'
// ROPE_INIT_FUNCTIONS (modeling_rope_utils.py): the rope_type and its
// parameters. InvFreq turns them into inverse frequencies; RopeHalf and
// RopeInterleaved apply the rotation.
type RopeParams struct {
	Type  string  // default, linear, yarn, llama3
	Theta float64 // base
	// Dim is the number of rotated dimensions per head (Dh, or Dr for MLA).
	Dim int

	Factor          float64 // linear/yarn/llama3 scaling factor
	OriginalMaxPos  int     // original_max_position_embeddings (yarn, llama3)
	AttentionFactor float64 // yarn: explicit attention factor (0 = derive)
	BetaFast        float64 // yarn, default 32
	BetaSlow        float64 // yarn, default 1
	Mscale          float64 // yarn (DeepSeek): mscale
	MscaleAllDim    float64 // yarn (DeepSeek): mscale_all_dim
	Truncate        bool    // yarn: floor/ceil the correction range (default true)
	LowFreqFactor   float64 // llama3
	HighFreqFactor  float64 // llama3
}

// InvFreq returns the rotary inverse frequencies [Dim/2] and the attention
// factor that multiplies cos and sin, following transformers'
// ROPE_INIT_FUNCTIONS (modeling_rope_utils.py) for each rope_type.
// Frequencies are computed in float64 and rounded once to float32, as
// transformers computes them in float32.
func (r *RopeParams) InvFreq() (inv []float32, attnFactor float64) {
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
				attnFactor = YarnMscale(r.Factor, r.Mscale) / YarnMscale(r.Factor, r.MscaleAllDim)
			} else {
				attnFactor = YarnMscale(r.Factor, 1)
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

// YarnMscale is DeepSeek's yarn_get_mscale: 0.1*m*ln(scale)+1 for scale > 1.
func YarnMscale(scale, m float64) float64 {
	if scale <= 1 {
		return 1
	}
	return 0.1*m*math.Log(scale) + 1
}
