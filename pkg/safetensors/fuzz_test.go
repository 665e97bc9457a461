package safetensors

import (
	"bytes"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// FuzzHeader feeds arbitrary bytes to the file opener. Invariants: it never
// panics; it allocates at most a small multiple of the input (a lying
// header costs nothing); it either returns an *Error naming the file, or a
// File whose tensors lie inside the input, tile its data buffer, read back
// as stored, and re-encode into a file that opens to the same tensors.
func FuzzHeader(f *testing.F) {
	valid := func(ts []Tensor, meta map[string]string) []byte {
		var buf bytes.Buffer
		if _, err := Encode(&buf, ts, meta); err != nil {
			f.Fatal(err)
		}
		return buf.Bytes()
	}
	good := valid([]Tensor{
		F32Tensor("model.layers.0.mlp.gate.weight", []int{2, 3}, seq(1, 6)),
		F32AsBF16Tensor("bf", []int{3}, seq(2, 3)),
		F16Tensor("h", []int{1}, []uint16{0x3c00}),
		I64Tensor("ids", []int{2}, []int64{-1, 5}),
		{Name: "u8", DType: U8, Shape: []int{0}},
		F32Tensor("scalar", nil, []float32{3}),
	}, map[string]string{"format": "pt"})
	f.Add(good)
	for _, n := range []int{0, 4, 8, 9, 20, len(good) / 2, len(good) - 1} {
		f.Add(good[:n])
	}
	f.Add(valid(nil, nil))
	f.Add(crafted(`{"a":{"dtype":"F32","shape":[4,4],"data_offsets":[10,20]}}`, 20))
	f.Add(crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8))
	f.Add(crafted(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12))
	f.Add(crafted(`{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, 0))
	f.Add(append(le.AppendUint64(nil, 1<<62), `{}`...))
	f.Add([]byte("\xff\xff\xff\xff\xff\xff\xff\xff garbage"))
	f.Add([]byte("not a safetensors file at all"))

	f.Fuzz(func(t *testing.T, data []byte) {
		checkFuzzInput(t, data)
		// The same bytes as a header, framed with a correct length and a
		// 64-byte data buffer, so mutations explore the JSON rather than
		// mostly breaking the length field.
		if len(data) <= 1<<16 {
			checkFuzzInput(t, crafted(string(data), 64))
		}
	})
}

// checkFuzzInput opens data as a file and checks the invariants.
func checkFuzzInput(t *testing.T, data []byte) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	file, err := NewFile(bytes.NewReader(data), int64(len(data)), "fuzz.safetensors")
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(64*len(data)+1<<20) {
		t.Fatalf("opening %d bytes allocated %d bytes", len(data), alloc)
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) || !strings.HasPrefix(err.Error(), "safetensors: fuzz.safetensors: ") {
			t.Fatalf("error %q (%T) does not name the file", err, err)
		}
		return
	}
	var ts []Tensor
	var covered int64
	for _, name := range file.Names() {
		info, err := file.Info(name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Offset < file.dataOff || info.Size < 0 || info.Offset+info.Size > int64(len(data)) {
			t.Fatalf("%q: [%d,+%d) outside the data buffer [%d,%d)", name, info.Offset, info.Size, file.dataOff, len(data))
		}
		covered += info.Size
		raw, err := file.Raw(name)
		if err != nil || !bytes.Equal(raw, data[info.Offset:info.Offset+info.Size]) {
			t.Fatalf("%q: Raw = %v", name, err)
		}
		if _, err := file.Float32(name); err != nil && !errors.Is(err, ErrDType) {
			t.Fatalf("%q: Float32: %v", name, err)
		}
		if _, err := file.Int64(name); err != nil && !errors.Is(err, ErrDType) {
			t.Fatalf("%q: Int64: %v", name, err)
		}
		ts = append(ts, Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: raw})
	}
	if covered != int64(len(data))-file.dataOff {
		t.Fatalf("tensors cover %d bytes of a %d-byte data buffer", covered, int64(len(data))-file.dataOff)
	}
	// Whatever we accept, we can write back. (Names we would refuse to
	// write, like "", are allowed in files we read.)
	if slices.Contains(file.Names(), "") {
		return
	}
	var buf bytes.Buffer
	if _, err := Encode(&buf, ts, file.Metadata()); err != nil {
		t.Fatalf("re-encoding an accepted file: %v", err)
	}
	again, err := NewFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()), "again")
	if err != nil {
		t.Fatalf("re-encoded file refused: %v", err)
	}
	for _, tt := range ts {
		raw, err := again.Raw(tt.Name)
		if err != nil || !bytes.Equal(raw, tt.Data) {
			t.Fatalf("%q changed in the round trip: %v", tt.Name, err)
		}
	}
}
