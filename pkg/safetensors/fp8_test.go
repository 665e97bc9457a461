package safetensors

import (
	"math"
	"path/filepath"
	"testing"
)

// TestF8E4M3Values checks the e4m3fn decoding against values torch prints
// for torch.tensor([b], dtype=torch.uint8).view(torch.float8_e4m3fn), and
// the structure of the whole code space: 254 finite values plus two NaNs,
// increasing in each sign half, and symmetric.
func TestF8E4M3Values(t *testing.T) {
	known := []struct {
		b    uint8
		want float64
	}{
		{0x00, 0}, {0x01, 0x1p-9}, {0x07, 7 * 0x1p-9}, {0x08, 0x1p-6}, {0x30, 0.5},
		{0x38, 1}, {0x39, 1.125}, {0x3c, 1.5}, {0x40, 2}, {0x70, 128}, {0x77, 240},
		{0x7e, 448}, {0xb8, -1}, {0xfe, -448}, {0x81, -0x1p-9},
	}
	for _, k := range known {
		if got := F8E4M3ToF32(k.b); float64(got) != k.want {
			t.Errorf("%#02x = %g, want %g", k.b, got, k.want)
		}
	}
	if z := F8E4M3ToF32(0x80); z != 0 || !math.Signbit(float64(z)) {
		t.Errorf("0x80 = %g, want -0", z)
	}
	nans := 0
	for b := 0; b < 256; b++ {
		v := F8E4M3ToF32(uint8(b))
		if v != v {
			nans++
			if b&0x7f != 0x7f {
				t.Errorf("%#02x is NaN, only S.1111.111 should be", b)
			}
			continue
		}
		if math.IsInf(float64(v), 0) {
			t.Errorf("%#02x is infinite: e4m3fn has no infinities", b)
		}
		if b&0x80 == 0 {
			if -v != F8E4M3ToF32(uint8(b|0x80)) {
				t.Errorf("%#02x: negative half is not the mirror", b)
			}
			if b > 0 && !(v > F8E4M3ToF32(uint8(b-1))) {
				t.Errorf("%#02x = %g is not above its predecessor", b, v)
			}
		}
	}
	if nans != 2 {
		t.Errorf("%d NaN encodings, want 2", nans)
	}
}

func TestF8E5M2Values(t *testing.T) {
	for _, k := range []struct {
		b    uint8
		want float64
	}{{0x00, 0}, {0x01, 0x1p-16}, {0x04, 0x1p-14}, {0x3c, 1}, {0x7b, 57344}, {0x7c, math.Inf(1)}, {0xfc, math.Inf(-1)}, {0xc0, -2}} {
		if got := F8E5M2ToF32(k.b); float64(got) != k.want {
			t.Errorf("%#02x = %g, want %g", k.b, got, k.want)
		}
	}
	if v := F8E5M2ToF32(0x7d); v == v {
		t.Errorf("0x7d = %g, want NaN", v)
	}
}

// TestF32ToF8E4M3 checks the encoder: exact values round-trip, midpoints go
// to the even encoding, points just off a midpoint go to the nearest, and
// out-of-range values saturate.
func TestF32ToF8E4M3(t *testing.T) {
	for b := 0; b < 256; b++ {
		if b&0x7f == 0x7f {
			continue
		}
		if got := F32ToF8E4M3(F8E4M3ToF32(uint8(b))); got != uint8(b) {
			t.Errorf("round trip of %#02x gave %#02x", b, got)
		}
	}
	for b := uint8(0); b < 0x7e; b++ {
		lo, hi := F8E4M3ToF32(b), F8E4M3ToF32(b+1)
		mid := (lo + hi) / 2 // exact in float32
		even := b
		if b&1 == 1 {
			even = b + 1
		}
		if got := F32ToF8E4M3(mid); got != even {
			t.Errorf("midpoint %g of %#02x,%#02x gave %#02x, want %#02x", mid, b, b+1, got, even)
		}
		if got := F32ToF8E4M3(math.Nextafter32(mid, 0)); got != b {
			t.Errorf("just below %g gave %#02x, want %#02x", mid, got, b)
		}
		if got := F32ToF8E4M3(math.Nextafter32(mid, 1000)); got != b+1 {
			t.Errorf("just above %g gave %#02x, want %#02x", mid, got, b+1)
		}
	}
	for _, c := range []struct {
		f    float32
		want uint8
	}{{449, 0x7e}, {1e9, 0x7e}, {float32(math.Inf(1)), 0x7e}, {-500, 0xfe}, {0x1p-11, 0x00}, {-0x1p-11, 0x80}, {float32(math.NaN()), 0x7f}} {
		if got := F32ToF8E4M3(c.f); got != c.want {
			t.Errorf("%g gave %#02x, want %#02x", c.f, got, c.want)
		}
	}
}

// TestFloat32ReadsF8 writes F8 tensors and reads them back through Float32.
func TestFloat32ReadsF8(t *testing.T) {
	all := make([]byte, 256)
	for i := range all {
		all[i] = uint8(i)
	}
	path := filepath.Join(t.TempDir(), "f8.safetensors")
	err := Write(path, []Tensor{
		{Name: "e4m3", DType: F8_E4M3, Shape: []int{16, 16}, Data: all},
		{Name: "e5m2", DType: F8_E5M2, Shape: []int{256}, Data: all},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := f.Float32("e4m3", 16, 16)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if w := F8E4M3ToF32(uint8(i)); math.Float32bits(v) != math.Float32bits(w) && !(v != v && w != w) {
			t.Errorf("e4m3 %d: %g, want %g", i, v, w)
		}
	}
	got = make([]float32, 256)
	if err := f.ReadFloat32("e5m2", got); err != nil {
		t.Fatal(err)
	}
	for i, v := range got {
		if w := F8E5M2ToF32(uint8(i)); math.Float32bits(v) != math.Float32bits(w) && !(v != v && w != w) {
			t.Errorf("e5m2 %d: %g, want %g", i, v, w)
		}
	}
}
