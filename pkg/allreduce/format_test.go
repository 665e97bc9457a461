package allreduce

import (
	"math"
	"math/rand"
	"testing"

	"github.com/switchyard/switchyard/pkg/tensor"
)

func TestFormatRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	src := make([]float32, 1001)
	for i := range src {
		src[i] = float32(rng.NormFloat64() * 100)
	}
	src[3], src[4] = float32(math.Inf(-1)), float32(math.NaN())

	// F32: lossless, and Pack's bytes are AsBytes's on this host.
	b := make([]byte, 4*len(src))
	F32.Pack(b, src, true)
	if HostLittleEndian && string(b) != string(AsBytes(src)) {
		t.Fatal("F32.Pack differs from the float32 memory")
	}
	got := make([]float32, len(src))
	if err := F32.Apply(got, b[:], Copy); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, src); i >= 0 {
		t.Fatalf("F32 copy: element %d = %v, want %v", i, got[i], src[i])
	}

	// BF16: the bits are tensor.F32ToBF16's; decoding is tensor.BF16ToF32.
	want16 := make([]uint16, len(src))
	tensor.F32ToBF16(want16, src)
	wantF := make([]float32, len(src))
	tensor.BF16ToF32(wantF, want16)
	b = make([]byte, 2*len(src)+1) // odd offset: payloads need not be aligned
	rounded := append([]float32(nil), src...)
	BF16.Pack(b[1:], rounded, true)
	for i, h := range want16 {
		if g := uint16(b[1+2*i]) | uint16(b[2+2*i])<<8; g != h {
			t.Fatalf("BF16 element %d: bits %#04x, want %#04x", i, g, h)
		}
	}
	if i := firstDiff(rounded, wantF); i >= 0 {
		t.Fatalf("BF16 round-back: element %d = %v, want %v", i, rounded[i], wantF[i])
	}
	if err := BF16.Apply(got, b[1:], Copy); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, wantF); i >= 0 {
		t.Fatalf("BF16 copy: element %d = %v, want %v", i, got[i], wantF[i])
	}
	for i := range got {
		got[i] = 1
	}
	if err := BF16.Apply(got, b[1:], Reduce); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if w := 1 + wantF[i]; math.Float32bits(got[i]) != math.Float32bits(w) && !(math.IsNaN(float64(w)) && math.IsNaN(float64(got[i]))) {
			t.Fatalf("BF16 reduce: element %d = %v, want %v", i, got[i], w)
		}
	}
	if BF16.Round(src[0]) != wantF[0] || F32.Round(src[0]) != src[0] {
		t.Fatal("Round disagrees with Pack")
	}
	if err := F32.Apply(got, b, Reduce); err == nil {
		t.Fatal("payload of the wrong length applied")
	}
}

func BenchmarkApplyReduce(b *testing.B) {
	for _, f := range []Format{F32, BF16} {
		b.Run(f.String(), func(b *testing.B) {
			dst := make([]float32, 1<<18)
			payload := make([]byte, f.Size()*len(dst)+1)[1:]
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				if err := f.Apply(dst, payload, Reduce); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPack(b *testing.B) {
	for _, f := range []Format{F32, BF16} {
		b.Run(f.String(), func(b *testing.B) {
			src := make([]float32, 1<<18)
			dst := make([]byte, f.Size()*len(src))
			b.SetBytes(int64(len(dst)))
			for b.Loop() {
				f.Pack(dst, src, true)
			}
		})
	}
}

// TestApplyAlignments reduces the same values from payloads at every
// alignment (the aligned fast path and the byte-wise path must agree).
func TestApplyAlignments(t *testing.T) {
	src := []float32{1.5, -2, 3.25, 1e-3, 7}
	for off := range 4 {
		b := make([]byte, 4*len(src)+off)[off:]
		F32.Pack(b, src, false)
		dst := []float32{1, 1, 1, 1, 1}
		if err := F32.Apply(dst, b, Reduce); err != nil {
			t.Fatal(err)
		}
		for i := range dst {
			if dst[i] != 1+src[i] {
				t.Fatalf("offset %d element %d: %v, want %v", off, i, dst[i], 1+src[i])
			}
		}
	}
}
