package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// sample builds a small file description with every metadata value type and
// each encodable tensor type, and the tensors' data.
func sample(t testing.TB) ([]KV, []TensorInfo, [][]byte) {
	t.Helper()
	kv := []KV{
		{"general.architecture", String("llama")},
		{"u8", Of(uint8(7))}, {"i8", Of(int8(-7))},
		{"u16", Of(uint16(65535))}, {"i16", Of(int16(-300))},
		{"u32", Uint32(1 << 31)}, {"i32", Int32(-5)},
		{"f32", Float32(1.5e-6)}, {"bool", Bool(true)},
		{"str", String("héllo")}, {"u64", Uint64(1 << 40)},
		{"i64", Of(int64(-1 << 40))}, {"f64", Of(math.Pi)},
		{"tokens", Array([]string{"a", "Ġb", ""})},
		{"types", Array([]int32{1, 3, 5})},
		{"bytes", Array([]uint8{1, 2, 3})},
		{"flags", Array([]bool{true, false})},
		{"f32s", Array([]float32{1, -2.5})},
		{"empty", Array([]uint64{})},
	}
	r := rand.New(rand.NewPCG(1, 2))
	var infos []TensorInfo
	var data [][]byte
	for i, c := range []struct {
		name string
		typ  GGMLType
		dims []uint64
	}{
		{"f32", F32, []uint64{3, 5}},
		{"f16", F16, []uint64{7}},
		{"bf16", BF16, []uint64{4, 2, 3}},
		{"q8", Q8_0, []uint64{64, 3}},
		{"one", F32, []uint64{1, 1, 1, 1}},
	} {
		ti := TensorInfo{Name: c.name, Type: c.typ, Dims: c.dims}
		n, _ := ti.NumElements()
		x := make([]float32, n)
		for j := range x {
			x[j] = float32(r.NormFloat64()) * float32(i+1)
		}
		size, err := ti.Size()
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, size)
		if err := Encode(c.typ, b, x); err != nil {
			t.Fatal(err)
		}
		infos = append(infos, ti)
		data = append(data, b)
	}
	return kv, infos, data
}

func encodeFile(t testing.TB, kv []KV, infos []TensorInfo, data [][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, kv, infos)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range data {
		// Write in uneven pieces: the writer must track tensor boundaries.
		for len(d) > 0 {
			k := min(len(d), 5)
			if _, err := w.Write(d[:k]); err != nil {
				t.Fatal(err)
			}
			d = d[k:]
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	kv, infos, data := sample(t)
	b := encodeFile(t, kv, infos, data)
	f, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if f.Version != Version || f.Alignment != DefaultAlignment || f.DataOffset%DefaultAlignment != 0 {
		t.Fatalf("version %d alignment %d data offset %d", f.Version, f.Alignment, f.DataOffset)
	}
	if len(f.KV) != len(kv) {
		t.Fatalf("%d keys, want %d", len(f.KV), len(kv))
	}
	for i, p := range kv {
		got := f.KV[i]
		if got.Key != p.Key || !got.Value.Equal(p.Value) {
			t.Errorf("kv %d: got %s=%v (%s/%s), want %s=%v (%s/%s)", i, got.Key, got.Value, got.Value.Type(), got.Value.ElemType(), p.Key, p.Value, p.Value.Type(), p.Value.ElemType())
		}
	}
	var off uint64
	for i, ti := range infos {
		got, ok := f.Tensor(ti.Name)
		if !ok {
			t.Fatalf("tensor %q missing", ti.Name)
		}
		if got.Type != ti.Type || !slices.Equal(got.Dims, ti.Dims) || got.Offset != off {
			t.Errorf("tensor %q: got %v %v offset %d, want %v %v offset %d", ti.Name, got.Type, got.Dims, got.Offset, ti.Type, ti.Dims, off)
		}
		if got.Offset%DefaultAlignment != 0 {
			t.Errorf("tensor %q offset %d not aligned", ti.Name, got.Offset)
		}
		raw, err := f.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, data[i]) {
			t.Errorf("tensor %q: data differs", ti.Name)
		}
		size, _ := ti.Size()
		off += uint64((size + DefaultAlignment - 1) / DefaultAlignment * DefaultAlignment)
	}
	if got := int64(len(b)); got != f.DataOffset+int64(off) {
		t.Errorf("file is %d bytes, want data offset %d + padded data %d", got, f.DataOffset, off)
	}
	if s, ok := f.Get("str"); !ok || s.String() != "héllo" {
		t.Errorf("Get(str) = %v, %v", s, ok)
	}
	if u, ok := mustGet(t, f, "u32").Uint(); !ok || u != 1<<31 {
		t.Errorf("u32 = %d", u)
	}
	if ints, ok := mustGet(t, f, "types").Ints(); !ok || len(ints) != 3 || ints[2] != 5 {
		t.Errorf("types = %v", ints)
	}
}

func mustGet(t *testing.T, f *File, key string) Value {
	t.Helper()
	v, ok := f.Get(key)
	if !ok {
		t.Fatalf("key %q missing", key)
	}
	return v
}

// TestCustomAlignment: general.alignment changes the padding of the header
// and of every tensor, and the reader follows it.
func TestCustomAlignment(t *testing.T) {
	kv := []KV{{KeyAlignment, Uint32(64)}}
	infos := []TensorInfo{{Name: "a", Type: F32, Dims: []uint64{3}}, {Name: "b", Type: F16, Dims: []uint64{5}}}
	b := encodeFile(t, kv, infos, [][]byte{make([]byte, 12), make([]byte, 10)})
	f, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	if f.Alignment != 64 || f.DataOffset%64 != 0 || f.Tensors[1].Offset != 64 || len(b) != int(f.DataOffset)+128 {
		t.Fatalf("alignment %d data %d offsets %d, %d, len %d", f.Alignment, f.DataOffset, f.Tensors[0].Offset, f.Tensors[1].Offset, len(b))
	}
}

// TestHeaderBytes pins the exact layout of a tiny file against the format
// as gguf-py writes it.
func TestHeaderBytes(t *testing.T) {
	infos := []TensorInfo{{Name: "w", Type: F32, Dims: []uint64{2, 1}}}
	b := encodeFile(t, []KV{{"k", Uint32(9)}}, infos, [][]byte{make([]byte, 8)})
	var want bytes.Buffer
	le := func(v any) { binary.Write(&want, binary.LittleEndian, v) }
	le(Magic)
	le(uint32(3))
	le(uint64(1))
	le(uint64(1))
	le(uint64(1))
	want.WriteString("k")
	le(uint32(TypeUint32))
	le(uint32(9))
	le(uint64(1))
	want.WriteString("w")
	le(uint32(2))
	le(uint64(2))
	le(uint64(1))
	le(uint32(F32))
	le(uint64(0))
	for want.Len()%32 != 0 {
		want.WriteByte(0)
	}
	want.Write(make([]byte, 32)) // 8 data bytes padded to 32
	if !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("bytes\n got %x\nwant %x", b, want.Bytes())
	}
}

func TestWriterErrors(t *testing.T) {
	ok := TensorInfo{Name: "a", Type: F32, Dims: []uint64{4}}
	for _, c := range []struct {
		name    string
		kv      []KV
		tensors []TensorInfo
		want    string
	}{
		{"duplicate key", []KV{{"a", Bool(true)}, {"a", Bool(false)}}, nil, "duplicate key"},
		{"empty key", []KV{{"", Bool(true)}}, nil, "empty"},
		{"zero value", []KV{{"a", Value{}}}, nil, "no value"},
		{"bad alignment", []KV{{KeyAlignment, Uint32(24)}}, nil, "power of two"},
		{"duplicate tensor", nil, []TensorInfo{ok, ok}, "duplicate tensor"},
		{"no dims", nil, []TensorInfo{{Name: "x", Type: F32}}, "dimensions"},
		{"five dims", nil, []TensorInfo{{Name: "x", Type: F32, Dims: []uint64{1, 1, 1, 1, 1}}}, "dimensions"},
		{"unknown type", nil, []TensorInfo{{Name: "x", Type: 99, Dims: []uint64{1}}}, "unknown ggml type"},
		{"q8 row", nil, []TensorInfo{{Name: "x", Type: Q8_0, Dims: []uint64{48, 2}}}, "multiple of the Q8_0 block"},
		{"overflow", nil, []TensorInfo{{Name: "x", Type: F32, Dims: []uint64{1 << 40, 1 << 40}}}, "overflow"},
	} {
		_, err := NewWriter(&bytes.Buffer{}, c.kv, c.tensors)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrInvalid mentioning %q", c.name, err, c.want)
		}
	}
	// Too few and too many bytes.
	w, err := NewWriter(&bytes.Buffer{}, nil, []TensorInfo{ok})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(make([]byte, 3))
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), `"a" has 3 of its 16 bytes`) {
		t.Errorf("short tensor: %v", err)
	}
	w, _ = NewWriter(&bytes.Buffer{}, nil, []TensorInfo{ok})
	if _, err := w.Write(make([]byte, 17)); err == nil {
		t.Error("17 bytes into a 16-byte file: no error")
	}
}

// TestReadRejects: truncation anywhere and targeted corruptions are errors
// wrapping ErrCorrupt, never panics.
func TestReadRejects(t *testing.T) {
	kv, infos, data := sample(t)
	b := encodeFile(t, kv, infos, data)
	f, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	// The last tensor's data ends before the file does (padding); any cut
	// before its end must fail.
	last := f.Tensors[len(f.Tensors)-1]
	lastSize, _ := last.Size()
	end := f.DataOffset + int64(last.Offset) + lastSize
	for n := int64(0); n < end; n++ {
		_, err := Read(bytes.NewReader(b[:n]), n)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d of %d bytes: err = %v, want ErrCorrupt", n, len(b), err)
		}
	}
	corrupt := func(name string, off int, v []byte, want string) {
		t.Helper()
		c := bytes.Clone(b)
		copy(c[off:], v)
		_, err := Read(bytes.NewReader(c), int64(len(c)))
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want ErrCorrupt mentioning %q", name, err, want)
		}
	}
	u32 := func(x uint32) []byte { return binary.LittleEndian.AppendUint32(nil, x) }
	u64 := func(x uint64) []byte { return binary.LittleEndian.AppendUint64(nil, x) }
	corrupt("magic", 0, []byte("GGUG"), "bad magic")
	corrupt("version", 4, u32(1), "version 1")
	corrupt("tensor count", 8, u64(1<<60), "tensor count")
	corrupt("kv count", 16, u64(1<<60), "metadata count")
	corrupt("key length", 24, u64(1<<62), "length")
	// first key "general.architecture": type at 24+8+20
	corrupt("value type", 52, u32(77), "unknown value type")
}

// TestReadRejectsWhatWriteRejects: an empty key or tensor name, which
// NewWriter refuses, is corrupt on input too (found by FuzzRead).
func TestReadRejectsWhatWriteRejects(t *testing.T) {
	hdr := func(nt, nkv uint64) []byte {
		b := []byte("GGUF")
		b = binary.LittleEndian.AppendUint32(b, 3)
		b = binary.LittleEndian.AppendUint64(b, nt)
		return binary.LittleEndian.AppendUint64(b, nkv)
	}
	str := func(b []byte, s string) []byte {
		return append(binary.LittleEndian.AppendUint64(b, uint64(len(s))), s...)
	}
	emptyKey := str(hdr(0, 1), "")
	emptyKey = binary.LittleEndian.AppendUint32(emptyKey, uint32(TypeBool))
	emptyKey = append(emptyKey, 1)
	emptyName := str(hdr(1, 0), "")
	emptyName = binary.LittleEndian.AppendUint32(emptyName, 1)           // n_dims
	emptyName = binary.LittleEndian.AppendUint64(emptyName, 4)           // ne[0]
	emptyName = binary.LittleEndian.AppendUint32(emptyName, uint32(F32)) // type
	emptyName = binary.LittleEndian.AppendUint64(emptyName, 0)           // offset
	emptyName = append(emptyName, make([]byte, 64)...)
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{{"empty key", emptyKey, "key 0 is empty"}, {"empty tensor name", emptyName, "empty name"}} {
		_, err := Read(bytes.NewReader(c.b), int64(len(c.b)))
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrCorrupt mentioning %q", c.name, err, c.want)
		}
	}
}

func TestQ8_0MatchesReference(t *testing.T) {
	// Hand-computed block: amax 127 gives d = 1, codes are roundf(x): halves
	// go away from zero.
	x := make([]float32, QK8_0)
	x[0], x[1], x[2], x[3], x[4] = 127, -2.5, 2.5, 0.49, -126.5
	b := make([]byte, blockQ8_0)
	QuantizeQ8_0(b, x)
	if d := binary.LittleEndian.Uint16(b); d != 0x3c00 {
		t.Fatalf("scale bits %#x, want 0x3c00 (1.0)", d)
	}
	want := []int8{127, -3, 3, 0, -127}
	for i, w := range want {
		if got := int8(b[2+i]); got != w {
			t.Errorf("code %d = %d, want %d", i, got, w)
		}
	}
	// All zeros: d = 0, id = 0, codes 0.
	z := make([]byte, blockQ8_0)
	QuantizeQ8_0(z, make([]float32, QK8_0))
	if !bytes.Equal(z, make([]byte, blockQ8_0)) {
		t.Errorf("zero block encodes to %x", z)
	}
}

// TestQ8_0Bound: dequantized values are within half a step (plus the
// binary16 rounding of the scale) of the input.
func TestQ8_0Bound(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	x := make([]float32, 64*QK8_0)
	for i := range x {
		x[i] = float32(r.NormFloat64() * math.Pow(10, float64(i/QK8_0%7-3)))
	}
	b := make([]byte, len(x)/QK8_0*blockQ8_0)
	if err := Encode(Q8_0, b, x); err != nil {
		t.Fatal(err)
	}
	y := make([]float32, len(x))
	if err := Decode(Q8_0, y, b); err != nil {
		t.Fatal(err)
	}
	for blk := 0; blk < len(x)/QK8_0; blk++ {
		bound := Q8_0Bound(x[blk*QK8_0 : (blk+1)*QK8_0])
		for j := blk * QK8_0; j < (blk+1)*QK8_0; j++ {
			if e := math.Abs(float64(x[j] - y[j])); e > bound {
				t.Fatalf("value %d: |%g - %g| = %g > bound %g", j, x[j], y[j], e, bound)
			}
		}
	}
}

func TestFloatEncodings(t *testing.T) {
	x := []float32{0, 1, -2.5, 65504, 1e-8, float32(math.Inf(-1)), 3.14159}
	for _, typ := range []GGMLType{F32, F16, BF16} {
		n, _ := EncodedSize(typ, len(x))
		b := make([]byte, n)
		if err := Encode(typ, b, x); err != nil {
			t.Fatal(err)
		}
		y := make([]float32, len(x))
		if err := Decode(typ, y, b); err != nil {
			t.Fatal(err)
		}
		for i := range x {
			rel := math.Abs(float64(x[i]-y[i])) / math.Max(math.Abs(float64(x[i])), 1e-30)
			tol := map[GGMLType]float64{F32: 0, F16: 1.0 / 2048, BF16: 1.0 / 256}[typ]
			if x[i] == 1e-8 && typ == F16 {
				continue // below binary16's subnormal precision
			}
			if !(rel <= tol) && !(math.IsInf(float64(x[i]), 0) && x[i] == y[i]) {
				t.Errorf("%s: %g -> %g", typ, x[i], y[i])
			}
		}
	}
}

func TestOpenFile(t *testing.T) {
	kv, infos, data := sample(t)
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := os.WriteFile(path, encodeFile(t, kv, infos, data), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(f.Tensors) != len(infos) {
		t.Fatalf("%d tensors", len(f.Tensors))
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing.gguf")); err == nil {
		t.Error("opening a missing file: no error")
	}
}
