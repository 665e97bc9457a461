package tensor

import (
	"math"
	"testing"
)

// hfYarn is a float64 transcription of transformers' _compute_yarn_parameters.
func hfYarn(dim int, base, factor float64, origMax int, betaFast, betaSlow, mscale, mscaleAll float64, truncate bool) ([]float64, float64) {
	getMscale := func(scale, m float64) float64 {
		if scale <= 1 {
			return 1
		}
		return 0.1*m*math.Log(scale) + 1
	}
	att := getMscale(factor, 1)
	if mscale != 0 && mscaleAll != 0 {
		att = getMscale(factor, mscale) / getMscale(factor, mscaleAll)
	}
	corr := func(rot float64) float64 {
		return float64(dim) * math.Log(float64(origMax)/(rot*2*math.Pi)) / (2 * math.Log(base))
	}
	low, high := corr(betaFast), corr(betaSlow)
	if truncate {
		low, high = math.Floor(low), math.Ceil(high)
	}
	low, high = math.Max(low, 0), math.Min(high, float64(dim-1))
	if low == high {
		high += 0.001
	}
	out := make([]float64, dim/2)
	for i := range out {
		pos := math.Pow(base, float64(2*i)/float64(dim))
		ramp := math.Min(math.Max((float64(i)-low)/(high-low), 0), 1)
		extrap := 1 - ramp
		out[i] = (1/(factor*pos))*(1-extrap) + (1/pos)*extrap
	}
	return out, att
}

func TestRopeInvFreq(t *testing.T) {
	check := func(name string, got []float32, want []float64) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d frequencies, want %d", name, len(got), len(want))
		}
		for i := range want {
			if d := math.Abs(float64(got[i]) - want[i]); d > 1e-6*want[i] {
				t.Fatalf("%s: inv_freq[%d] = %g, want %g", name, i, got[i], want[i])
			}
		}
	}
	def := RopeParams{Type: "default", Theta: 10000, Dim: 64}
	inv, att := def.InvFreq()
	want := make([]float64, 32)
	for i := range want {
		want[i] = math.Pow(10000, -float64(2*i)/64)
	}
	check("default", inv, want)
	if att != 1 {
		t.Errorf("default attention factor %g", att)
	}
	lin := def
	lin.Type, lin.Factor = "linear", 4
	inv, _ = lin.InvFreq()
	for i := range want {
		want[i] /= 4
	}
	check("linear", inv, want)
	for _, tc := range []struct {
		truncate        bool
		mscale, mscaleA float64
	}{{true, 0, 0}, {false, 0, 0}, {true, 0.707, 0.707}, {true, 1, 0.5}} {
		y := RopeParams{Type: "yarn", Theta: 10000, Dim: 64, Factor: 8, OriginalMaxPos: 4096, BetaFast: 32, BetaSlow: 1,
			Mscale: tc.mscale, MscaleAllDim: tc.mscaleA, Truncate: tc.truncate}
		inv, att := y.InvFreq()
		w, wAtt := hfYarn(64, 10000, 8, 4096, 32, 1, tc.mscale, tc.mscaleA, tc.truncate)
		check("yarn", inv, w)
		if math.Abs(att-wAtt) > 1e-12 {
			t.Errorf("yarn %+v: attention factor %g, want %g", tc, att, wAtt)
		}
	}
	// llama3 keeps high frequencies, divides low ones by the factor.
	l3 := RopeParams{Type: "llama3", Theta: 500000, Dim: 128, Factor: 8, OriginalMaxPos: 8192, LowFreqFactor: 1, HighFreqFactor: 4}
	inv, _ = l3.InvFreq()
	base := math.Pow(500000, 0)
	if math.Abs(float64(inv[0])-base) > 1e-6 {
		t.Errorf("llama3 inv_freq[0] = %g, want %g (unchanged)", inv[0], base)
	}
	last := math.Pow(500000, -float64(126)/128) / 8
	if math.Abs(float64(inv[63])-last) > 1e-6*last {
		t.Errorf("llama3 inv_freq[63] = %g, want %g (divided by the factor)", inv[63], last)
	}
}
