package safetensors

import (
	"bytes"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/switchyard/switchyard/pkg/tensor"
)

var allDTypes = []DType{BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64}

// Every dtype survives a write and a read byte for byte, each tensor's data
// is aligned to its element size, and Info reports what was written.
func TestRoundTripRawAllDTypes(t *testing.T) {
	var tensors []Tensor
	for k, d := range allDTypes {
		shape := []int{2, 3}
		data := make([]byte, 6*d.Size())
		for i := range data {
			data[i] = byte(k*31 + i)
		}
		tensors = append(tensors, Tensor{Name: "t." + string(d), DType: d, Shape: shape, Data: data})
	}
	path := filepath.Join(t.TempDir(), "all.safetensors")
	meta := map[string]string{"format": "pt", "note": "all \"dtypes\"\n"}
	if err := Write(path, tensors, meta); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := f.Metadata(); !mapsEqual(got, meta) {
		t.Errorf("metadata %v, want %v", got, meta)
	}
	if len(f.Names()) != len(tensors) {
		t.Fatalf("%d names, want %d", len(f.Names()), len(tensors))
	}
	for _, want := range tensors {
		info, err := f.Info(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if info.DType != want.DType || !slices.Equal(info.Shape, want.Shape) || info.Size != int64(len(want.Data)) || info.File != path {
			t.Errorf("%s: info %+v", want.Name, info)
		}
		if info.NumElements() != 6 {
			t.Errorf("%s: %d elements, want 6", want.Name, info.NumElements())
		}
		if info.Offset%int64(want.DType.Size()) != 0 {
			t.Errorf("%s: offset %d not aligned to %d", want.Name, info.Offset, want.DType.Size())
		}
		got, err := f.Raw(want.Name)
		if err != nil || !bytes.Equal(got, want.Data) {
			t.Errorf("%s: Raw = %v, %v; want %v", want.Name, got, err, want.Data)
		}
		dst := make([]byte, len(want.Data))
		if err := f.ReadRaw(want.Name, dst); err != nil || !bytes.Equal(dst, want.Data) {
			t.Errorf("%s: ReadRaw = %v, %v", want.Name, dst, err)
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// The typed constructors and accessors agree, including conversions, over
// tensors longer than the read chunk and of awkward lengths.
func TestRoundTripTyped(t *testing.T) {
	const n = chunkBytes/2 + 12345 // several chunks for every dtype, not a multiple of any
	f32 := make([]float32, n)
	f64 := make([]byte, 8*n)
	bf := make([]uint16, n)
	h := make([]uint16, n)
	i64 := make([]int64, n)
	i32 := make([]int32, n)
	i16 := make([]byte, 2*n)
	i8 := make([]byte, n)
	for i := range n {
		f32[i] = float32(i)*0.37 - 1000
		le.PutUint64(f64[8*i:], math.Float64bits(float64(i)*1e-3-7))
		bf[i] = uint16(i * 7919)
		h[i] = uint16(i*104729) & 0x7bff // finite halves, both signs
		i64[i] = int64(i)*1e12 - 5e15
		i32[i] = int32(i*40503) - 1<<30
		le.PutUint16(i16[2*i:], uint16(int16(i-30000)))
		i8[i] = byte(int8(i))
	}
	f32[1] = float32(math.Inf(-1))
	f32[2] = float32(math.NaN())
	f32[3] = 1e-42 // subnormal
	tensors := []Tensor{
		F32Tensor("f32", []int{n}, f32),
		F32AsBF16Tensor("f32bf16", []int{n}, f32),
		BF16Tensor("bf16", []int{1, n}, bf),
		F16Tensor("f16", []int{n, 1}, h),
		{Name: "f64", DType: F64, Shape: []int{n}, Data: f64},
		I64Tensor("i64", []int{n}, i64),
		I32Tensor("i32", []int{n}, i32),
		{Name: "i16", DType: I16, Shape: []int{n}, Data: i16},
		{Name: "i8", DType: I8, Shape: []int{n}, Data: i8},
		{Name: "u8", DType: U8, Shape: []int{n}, Data: i8},
		{Name: "u16", DType: U16, Shape: []int{n}, Data: i16},
		F32Tensor("scalar", nil, []float32{42}),
		F32Tensor("empty", []int{0, 4}, nil),
	}
	path := filepath.Join(t.TempDir(), "typed.safetensors")
	if err := Write(path, tensors, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Metadata() != nil {
		t.Errorf("metadata %v, want nil", f.Metadata())
	}

	sameBits := func(name string, got, want []float32) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
		}
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s[%d] = %v, want %v", name, i, got[i], want[i])
			}
		}
	}
	got, err := f.Float32("f32", n)
	if err != nil {
		t.Fatal(err)
	}
	sameBits("f32", got, f32)

	rounded := make([]uint16, n)
	tensor.F32ToBF16(rounded, f32)
	want := make([]float32, n)
	tensor.BF16ToF32(want, rounded)
	got, err = f.Float32("f32bf16")
	if err != nil {
		t.Fatal(err)
	}
	sameBits("f32bf16", got, want)

	bits, err := f.BF16("bf16", 1, n)
	if err != nil || !slices.Equal(bits, bf) {
		t.Fatalf("BF16 = %v", err)
	}
	tensor.BF16ToF32(want, bf)
	dst := make([]float32, n)
	if err := f.ReadFloat32("bf16", dst, 1, n); err != nil {
		t.Fatal(err)
	}
	sameBits("bf16", dst, want)

	for i, v := range h {
		want[i] = tensor.F16ToF32One(v)
	}
	got, err = f.Float32("f16")
	if err != nil {
		t.Fatal(err)
	}
	sameBits("f16", got, want)

	for i := range n {
		want[i] = float32(math.Float64frombits(le.Uint64(f64[8*i:])))
	}
	got, err = f.Float32("f64")
	if err != nil {
		t.Fatal(err)
	}
	sameBits("f64", got, want)

	ints := make([]int64, n)
	if err := f.ReadInt64("i64", ints, n); err != nil || !slices.Equal(ints, i64) {
		t.Fatalf("i64: %v", err)
	}
	checkInts := func(name string, conv func(i int) int64) {
		t.Helper()
		got, err := f.Int64(name)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range got {
			if v != conv(i) {
				t.Fatalf("%s[%d] = %d, want %d", name, i, v, conv(i))
			}
		}
	}
	checkInts("i32", func(i int) int64 { return int64(i32[i]) })
	checkInts("i16", func(i int) int64 { return int64(int16(i - 30000)) })
	checkInts("u16", func(i int) int64 { return int64(uint16(int16(i - 30000))) })
	checkInts("i8", func(i int) int64 { return int64(int8(i)) })
	checkInts("u8", func(i int) int64 { return int64(uint8(i)) })

	if v, err := f.Float32("scalar"); err != nil || len(v) != 1 || v[0] != 42 {
		t.Errorf("scalar = %v, %v", v, err)
	}
	if info, _ := f.Info("scalar"); len(info.Shape) != 0 || info.NumElements() != 1 {
		t.Errorf("scalar info %+v", info)
	}
	if v, err := f.Float32("empty", 0, 4); err != nil || len(v) != 0 {
		t.Errorf("empty = %v, %v", v, err)
	}
}

// Accessors refuse the wrong dtype, shape or buffer length, and unknown
// names, with errors naming the file and tensor.
func TestAccessorErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "acc.safetensors")
	err := Write(path, []Tensor{
		F32Tensor("w", []int{2, 3}, seq(1, 6)),
		I64Tensor("ids", []int{2}, []int64{1, 2}),
		{Name: "u64", DType: U64, Shape: []int{1}, Data: make([]byte, 8)},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	_, err = f.Float32("nope")
	wantErr(t, err, ErrNotFound, path, `tensor "nope"`, "not found")
	_, err = f.Info("nope")
	wantErr(t, err, ErrNotFound, `tensor "nope"`)
	_, err = f.Float32("ids")
	wantErr(t, err, ErrDType, path, `tensor "ids"`, "dtype I64")
	_, err = f.BF16("w")
	wantErr(t, err, ErrDType, `tensor "w"`, "dtype F32, want BF16")
	_, err = f.Int64("w")
	wantErr(t, err, ErrDType, `tensor "w"`)
	_, err = f.Int64("u64")
	wantErr(t, err, ErrDType, `tensor "u64"`)
	_, err = f.Float32("w", 3, 2)
	wantErr(t, err, ErrShape, `tensor "w"`, "shape [2,3], want [3,2]")
	err = f.ReadFloat32("w", make([]float32, 5))
	wantErr(t, err, ErrShape, `tensor "w"`, "destination holds 5 elements")
	err = f.ReadInt64("ids", make([]int64, 3), 2)
	wantErr(t, err, ErrShape, `tensor "ids"`)
	err = f.ReadRaw("w", make([]byte, 23))
	wantErr(t, err, ErrShape, `tensor "w"`, "destination is 23 bytes, tensor holds 24")
	err = f.ReadBF16("w", nil)
	wantErr(t, err, ErrDType, `tensor "w"`)
	if f.Has("nope") || !f.Has("w") {
		t.Error("Has is wrong")
	}
}

// The writer's output matches the reference implementation byte for byte
// (vectors from its own tests), including the space padding.
func TestEncodeMatchesReference(t *testing.T) {
	data := make([]byte, 0, 24)
	for _, v := range []float32{0, 1, 2, 3, 4, 5} {
		data = le.AppendUint32(data, math.Float32bits(v))
	}
	got := encode(t, []Tensor{{Name: "attn.0", DType: F32, Shape: []int{1, 2, 3}, Data: data}}, nil)
	want := append(crafted(`{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}`, 0), data...)
	if !bytes.Equal(got, want) {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	got = encode(t, []Tensor{{Name: "attn0", DType: F32, Shape: []int{1, 1, 2, 3}, Data: data}}, nil)
	want = append(crafted(`{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       `, 0), data...)
	if !bytes.Equal(got, want) {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
	if got := encode(t, nil, nil); !bytes.Equal(got, crafted(`{}      `, 0)) {
		t.Errorf("empty: got %q", got)
	}
	got = encode(t, nil, map[string]string{"framework": "pt"})
	if want := crafted(`{"__metadata__":{"framework":"pt"}}     `, 0); !bytes.Equal(got, want) {
		t.Errorf("metadata only: got %q, want %q", got, want)
	}
	// Bigger dtypes first, then names; control characters escaped as serde_json does.
	got = encode(t, []Tensor{
		F32Tensor("a", []int{1}, []float32{1}),
		I64Tensor("z", []int{1}, []int64{2}),
		{Name: "b\x01\"<é>", DType: U8, Shape: []int{1}, Data: []byte{3}},
	}, nil)
	hdr := `{"z":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"b\u0001\"<é>":{"dtype":"U8","shape":[1],"data_offsets":[12,13]}}`
	if !bytes.HasPrefix(got[8:], []byte(hdr)) {
		t.Errorf("header %q, want %q", got[8:8+len(hdr)], hdr)
	}
	f, err := NewFile(bytes.NewReader(got), int64(len(got)), "mixed")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := f.Raw("b\x01\"<é>"); err != nil || !bytes.Equal(b, []byte{3}) {
		t.Errorf("escaped name: %v, %v", b, err)
	}
}

// The writer refuses bad input, reporting every problem at once.
func TestWriteValidation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.safetensors")
	err := Write(path, []Tensor{
		F32Tensor("ok", []int{2}, []float32{1, 2}),
		F32Tensor("short", []int{2, 2}, []float32{1, 2, 3}),
		{Name: "raw", DType: BF16, Shape: []int{3}, Data: make([]byte, 5)},
		{Name: "weird", DType: "F4", Shape: []int{2}, Data: make([]byte, 1)},
		{Name: "neg", DType: F32, Shape: []int{-1}},
		F32Tensor("ok", []int{2}, []float32{1, 2}),
		F32Tensor("__metadata__", []int{1}, []float32{1}),
		F32Tensor("", []int{1}, []float32{1}),
		F32Tensor("bad\xff", []int{1}, []float32{1}),
	}, nil)
	wantErr(t, err, ErrShape, path, `tensor "short": 3 elements given, shape [2,2] needs 4`,
		`tensor "raw": Data is 5 bytes, shape [3] BF16 needs 6`, `tensor "neg"`)
	for _, kind := range []error{ErrDType, ErrInvalid} {
		if !errors.Is(err, kind) {
			t.Errorf("error does not match %v", kind)
		}
	}
	for _, s := range []string{`"weird": unknown dtype "F4"`, `"ok": name given twice`, `"__metadata__": name is reserved`, "empty name", "not valid UTF-8"} {
		if !bytes.Contains([]byte(err.Error()), []byte(s)) {
			t.Errorf("error lacks %q:\n%v", s, err)
		}
	}
	if _, statErr := Open(path); statErr == nil {
		t.Error("a file was written despite the errors")
	}
}
