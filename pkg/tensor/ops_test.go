package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

func randVec(r *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = (r.Float32()*2 - 1) * scale
	}
	return v
}

// relErr returns ||a-b|| / max(||b||, tiny).
func relErr(a, b []float32) float64 {
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	return math.Sqrt(num) / math.Max(math.Sqrt(den), 1e-30)
}

func TestElementwiseKernelsMatchReferences(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 7, 16, 63, 64, 65, 1000, 4097} {
		for _, scale := range []float32{1e-3, 1, 30} {
			x := randVec(r, n, scale)
			w := randVec(r, n, 2)

			got, want := make([]float32, n), make([]float32, n)
			RMSNorm(got, x, w, 1e-6)
			RMSNormRef(want, x, w, 1e-6)
			if e := relErr(got, want); e > 1e-6 {
				t.Errorf("RMSNorm n=%d scale=%g: rel err %g", n, scale, e)
			}

			copy(got, x)
			copy(want, x)
			Softmax(got)
			SoftmaxRef(want)
			if e := relErr(got, want); e > 1e-6 {
				t.Errorf("Softmax n=%d scale=%g: rel err %g", n, scale, e)
			}

			SwiGLU(got, x, w)
			SwiGLURef(want, x, w)
			if e := relErr(got, want); e > 1e-6 {
				t.Errorf("SwiGLU n=%d scale=%g: rel err %g", n, scale, e)
			}

			if n%2 == 0 {
				cos, sin := make([]float32, n/2), make([]float32, n/2)
				for i := range cos {
					a := r.Float64() * 2 * math.Pi
					cos[i], sin[i] = float32(math.Cos(a)), float32(math.Sin(a))
				}
				for _, inter := range []bool{false, true} {
					copy(got, x)
					copy(want, x)
					if inter {
						RopeInterleaved(got, cos, sin)
					} else {
						RopeHalf(got, cos, sin)
					}
					RopeRef(want, cos, sin, inter)
					if e := relErr(got, want); e > 1e-6 {
						t.Errorf("Rope interleaved=%v n=%d: rel err %g", inter, n, e)
					}
				}
			}
		}
	}
}

func TestSoftmaxMaskedRows(t *testing.T) {
	inf := float32(math.Inf(-1))
	x := []float32{inf, 0, inf, 0}
	Softmax(x)
	if x[0] != 0 || x[2] != 0 || x[1] != 0.5 || x[3] != 0.5 {
		t.Fatalf("masked softmax = %v", x)
	}
	y := []float32{inf, inf}
	Softmax(y)
	if y[0] != 0 || y[1] != 0 {
		t.Fatalf("all-masked softmax = %v, want zeros", y)
	}
}

func TestTopKMatchesStableSort(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 8, 16, 64, 257} {
		for k := 1; k <= min(n, 9); k++ {
			x := randVec(r, n, 1)
			// force ties
			for i := 0; i < n/4; i++ {
				x[r.IntN(n)] = x[r.IntN(n)]
			}
			got, want := make([]int32, k), make([]int32, k)
			TopK(got, x, k)
			TopKRef(want, x, k)
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("n=%d k=%d: TopK %v, reference %v", n, k, got, want)
				}
			}
		}
	}
	nan := float32(math.NaN())
	idx := make([]int32, 2)
	TopK(idx, []float32{nan, 1, 2}, 2)
	if idx[0] != 2 || idx[1] != 1 {
		t.Fatalf("TopK with NaN = %v, want [2 1]", idx)
	}
}

func TestConversions(t *testing.T) {
	// bf16 round trip of representable values is exact; rounding is to nearest even.
	for _, f := range []float32{0, 1, -2.5, 3.140625, float32(math.Inf(1)), 1e-40} {
		b := F32ToBF16One(f)
		var out [1]float32
		BF16ToF32(out[:], []uint16{b})
		if f == 3.140625 || f == 0 || f == 1 || f == -2.5 || math.IsInf(float64(f), 0) {
			if out[0] != f {
				t.Errorf("bf16 round trip %g -> %g", f, out[0])
			}
		}
	}
	if got := F32ToBF16One(math.Float32frombits(0x3f808000)); got != 0x3f80 { // tie -> even
		t.Errorf("tie rounding: got %#x want 0x3f80", got)
	}
	if got := F32ToBF16One(math.Float32frombits(0x3f818000)); got != 0x3f82 {
		t.Errorf("tie rounding odd: got %#x want 0x3f82", got)
	}
	if b := F32ToBF16One(float32(math.NaN())); b&0x7f80 != 0x7f80 || b&0x7f == 0 {
		t.Errorf("NaN -> %#x is not NaN", b)
	}
	// f16: every value against the closed form.
	for h := 0; h < 1<<16; h++ {
		got := F16ToF32One(uint16(h))
		sign := 1.0
		if h&0x8000 != 0 {
			sign = -1
		}
		e, m := (h>>10)&0x1f, h&0x3ff
		var want float64
		switch {
		case e == 0:
			want = sign * float64(m) * math.Pow(2, -24)
		case e == 31 && m == 0:
			want = sign * math.Inf(1)
		case e == 31:
			if got == got {
				t.Fatalf("f16 %#x: want NaN, got %g", h, got)
			}
			continue
		default:
			want = sign * (1 + float64(m)/1024) * math.Pow(2, float64(e-15))
		}
		if float64(got) != want {
			t.Fatalf("f16 %#x: got %g want %g", h, got, want)
		}
	}
}

func TestLogSumExp(t *testing.T) {
	x := []float32{1, 2, 3}
	want := math.Log(math.E + math.Exp(2) + math.Exp(3))
	if got := LogSumExp(x); math.Abs(got-want) > 1e-12 {
		t.Errorf("LogSumExp(1,2,3) = %v, want %v", got, want)
	}
	// Shifted by 1000: e^1000 overflows float64, the max shift does not.
	big := []float32{1001, 1002, 1003}
	if got := LogSumExp(big); math.Abs(got-(want+1000)) > 1e-9 {
		t.Errorf("LogSumExp(1001..1003) = %v, want %v", got, want+1000)
	}
	inf := float32(math.Inf(-1))
	for _, x := range [][]float32{nil, {inf, inf}} {
		if got := LogSumExp(x); !math.IsInf(got, -1) {
			t.Errorf("LogSumExp(%v) = %v, want -Inf", x, got)
		}
	}
	if got := LogSumExp([]float32{inf, 0}); got != 0 {
		t.Errorf("LogSumExp(-Inf, 0) = %v, want 0", got)
	}
}
