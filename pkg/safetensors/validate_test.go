package safetensors

import (
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// Every malformed file is refused at Open with an ErrCorrupt error that
// names the file and, where there is one, the tensor.
func TestOpenRejectsCorruptFiles(t *testing.T) {
	const ab = `"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}`
	valid := crafted("{"+ab+"}", 12)
	lenOnly := func(n uint64, rest int) []byte {
		b := binary.LittleEndian.AppendUint64(nil, n)
		return append(b, make([]byte, rest)...)
	}
	const gate = "model.layers.3.mlp.gate.weight"
	cases := []struct {
		name string
		file []byte
		subs []string // besides the file name
	}{
		{"empty file", nil, []string{"file is 0 bytes, too short"}},
		{"shorter than the length", []byte{1, 2, 3}, []string{"file is 3 bytes"}},
		{"header longer than file", lenOnly(1000, 10), []string{"header length 1000 bytes exceeds the 10 bytes"}},
		{"header length absurd", lenOnly(1<<63, 10), []string{"header length 9223372036854775808 bytes exceeds"}},
		{"truncated in the header", valid[:40], []string{"exceeds the 32 bytes"}},
		{"truncated in the data", valid[:len(valid)-1], []string{`tensor "b"`, "data_offsets [8,12] reach past the end of the 11-byte data buffer (truncated file?)"}},
		{"empty header", crafted("", 0), []string{"header is empty"}},
		{"spaces only", crafted("        ", 0), []string{"header is empty"}},
		{"invalid JSON", crafted(`{"a":{"dtype":`, 0), []string{"header is not valid JSON"}},
		{"bad JSON syntax", crafted(`{"a" 1}`, 0), []string{"header is not valid JSON"}},
		{"not an object", crafted(`[1,2]`, 0), []string{"header is not a JSON object"}},
		{"not UTF-8", crafted("{\"\xff\":1}", 0), []string{"not valid UTF-8"}},
		{"garbage after the object", crafted("{"+ab+"}  x", 12), []string{"data after the header's JSON object"}},
		{"second object", crafted("{"+ab+"}{}", 12), []string{"data after the header's JSON object"}},
		{"NUL padding", crafted("{"+ab+"}\x00\x00", 12), []string{"data after the header's JSON object"}},
		{"duplicate tensor", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8),
			[]string{`tensor "a": declared twice in the header`}},
		{"duplicate __metadata__", crafted(`{"__metadata__":{},"__metadata__":{}}`, 0), []string{"__metadata__ appears twice"}},
		{"duplicate metadata key", crafted(`{"__metadata__":{"k":"1","k":"2"}}`, 0), []string{`__metadata__ key "k" appears twice`}},
		{"metadata not strings", crafted(`{"__metadata__":{"k":1}}`, 0), []string{`__metadata__ value for "k" is not a string`}},
		{"metadata not an object", crafted(`{"__metadata__":[]}`, 0), []string{"__metadata__ is not an object"}},
		{"duplicate field", crafted(`{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": field "dtype" appears twice`}},
		{"declaration not an object", crafted(`{"a":[1]}`, 0), []string{`tensor "a": declaration is not a JSON object`}},
		{"missing dtype", crafted(`{"a":{"shape":[1],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": declaration has no dtype`}},
		{"missing shape", crafted(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, 4), []string{`tensor "a": declaration has no shape`}},
		{"missing offsets", crafted(`{"a":{"dtype":"F32","shape":[1]}}`, 4), []string{`tensor "a": declaration has no data_offsets`}},
		{"unknown dtype", crafted(`{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, 1), []string{`tensor "a": unknown dtype "F4"`}},
		{"dtype not a string", crafted(`{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": dtype is not a string`}},
		{"negative dimension", crafted(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": shape has negative value -1`}},
		{"fractional dimension", crafted(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": shape value 1.5 is not an integer`}},
		{"dimension overflows", crafted(`{"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": shape value 99999999999999999999 overflows int64`}},
		{"shape product overflows", crafted(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": shape [4294967296,4294967296] of F32 overflows int64 bytes`}},
		{"shape not an array", crafted(`{"a":{"dtype":"F32","shape":"4","data_offsets":[0,4]}}`, 4), []string{`tensor "a": shape is not an array`}},
		{"shape of strings", crafted(`{"a":{"dtype":"F32","shape":["4"],"data_offsets":[0,4]}}`, 4), []string{`tensor "a": shape is not an array of non-negative integers`}},
		{"offsets do not match shape", crafted(`{"`+gate+`":{"dtype":"F32","shape":[4,4],"data_offsets":[10,20]}}`, 20),
			[]string{`tensor "` + gate + `": data_offsets [10,20] hold 10 bytes, shape [4,4] F32 needs 64`}},
		{"offsets backwards", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}`, 8), []string{`tensor "a": data_offsets [8,4] end before they begin`}},
		{"three offsets", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, 8), []string{`tensor "a": data_offsets has 3 numbers, want 2`}},
		{"negative offset", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, 8), []string{`tensor "a": data_offsets has negative value -4`}},
		{"offsets past the buffer", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, 8), []string{`tensor "a": data_offsets [8,12] reach past the end of the 8-byte data buffer`}},
		{"huge offsets", crafted(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[9223372036854775806,9223372036854775807]}}`, 8), []string{`tensor "a"`, "reach past the end"}},
		{"overlap", crafted(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12),
			[]string{`tensor "b": data_offsets [4,12] overlap tensor "a" at [0,8]`}},
		{"same offsets twice", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4),
			[]string{`tensor "b": data_offsets [0,4] overlap tensor "a"`}},
		{"empty tensor inside another", crafted(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}`, 8),
			[]string{`tensor "e": data_offsets [4,4] overlap tensor "a"`}},
		{"hole between tensors", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, 12),
			[]string{`tensor "b": data_offsets [8,12] leave a hole: bytes [4,8)`}},
		{"hole at the start", crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), []string{`tensor "a"`, "hole: bytes [0,4)"}},
		{"trailing bytes", crafted("{"+ab+"}", 13), []string{"tensors cover 12 bytes but the data buffer holds 13"}},
		{"data but no tensors", crafted(`{}`, 3), []string{"tensors cover 0 bytes but the data buffer holds 3"}},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const name = "model-00002-of-00003.safetensors"
			path := writeBytes(t, dir, name, c.file)
			f, err := Open(path)
			if err == nil {
				f.Close()
			}
			wantErr(t, err, ErrCorrupt, append([]string{"safetensors: " + path + ": "}, c.subs...)...)
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}
}

// Files the format allows are accepted: space padding, leading
// whitespace, unknown fields, null metadata, any key order, empty tensors
// at the end, zero-size files of only a header.
func TestOpenAcceptsLenientButValidFiles(t *testing.T) {
	cases := map[string][]byte{
		"padded":         crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}    `, 4),
		"leading spaces": crafted(` {"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4),
		"unknown field":  crafted(`{"a":{"x":{"y":[1,{}]},"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4),
		"null metadata":  crafted(`{"__metadata__":null,"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4),
		"reversed order": crafted(`{"b":{"data_offsets":[4,8],"shape":[1],"dtype":"F32"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 8),
		"empty tensors":  crafted(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"y":{"dtype":"BF16","shape":[5,0],"data_offsets":[4,4]}}`, 4),
		"only a header":  crafted(`{}`, 0),
		"zero dim first": crafted(`{"a":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}`, 0),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			f, err := NewFile(readerAt(b), int64(len(b)), name)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range f.Names() {
				if _, err := f.Raw(n); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

type bytesReaderAt []byte

func readerAt(b []byte) io.ReaderAt { return bytesReaderAt(b) }

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// zeroTail serves prefix and then zeros up to size: a huge file in no memory.
type zeroTail struct {
	prefix []byte
	size   int64
}

func (z *zeroTail) ReadAt(p []byte, off int64) (int, error) {
	if off >= z.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off+int64(n) < z.size {
		if i := off + int64(n); i < int64(len(z.prefix)) {
			p[n] = z.prefix[i]
		} else {
			p[n] = 0
		}
		n++
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// A header length over MaxHeaderSize is refused before anything of that size
// is allocated, even when the file is big enough to hold it.
func TestHeaderOverCap(t *testing.T) {
	z := &zeroTail{prefix: binary.LittleEndian.AppendUint64(nil, MaxHeaderSize+1), size: 1 << 40}
	_, err := NewFile(z, z.size, "big.safetensors")
	wantErr(t, err, ErrCorrupt, "big.safetensors", "header length 100000001 bytes exceeds the 100000000-byte limit")
}

// A file that shrinks after it was opened gives a clear error, not garbage.
func TestReadAfterTruncation(t *testing.T) {
	b := encode(t, []Tensor{F32Tensor("w", []int{4}, seq(0, 4))}, nil)
	r := &shrinking{b: b}
	f, err := NewFile(r, int64(len(b)), "shrinks.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	r.b = b[:len(b)-2]
	_, err = f.Float32("w")
	wantErr(t, err, ErrCorrupt, "shrinks.safetensors", `tensor "w"`, "file ends before byte")
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("%v does not wrap io.ErrUnexpectedEOF", err)
	}
	r.fail = errors.New("disk on fire")
	_, err = f.Raw("w")
	wantErr(t, err, nil, `tensor "w"`, "disk on fire")
	if !errors.Is(err, r.fail) || errors.Is(err, ErrCorrupt) {
		t.Errorf("%v: want the I/O error, not ErrCorrupt", err)
	}
}

type shrinking struct {
	b    []byte
	fail error
}

func (s *shrinking) ReadAt(p []byte, off int64) (int, error) {
	if s.fail != nil {
		return 0, s.fail
	}
	return bytesReaderAt(s.b).ReadAt(p, off)
}

// Error messages have the documented shape.
func TestErrorMessage(t *testing.T) {
	e := &Error{File: "m.safetensors", Tensor: "w", Kind: ErrShape, Msg: "shape [2], want [3]", Err: io.EOF}
	if got, want := e.Error(), `safetensors: m.safetensors: tensor "w": shape [2], want [3]: EOF`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if !errors.Is(e, ErrShape) || !errors.Is(e, io.EOF) || errors.Is(e, ErrCorrupt) {
		t.Error("Unwrap is wrong")
	}
	e = &Error{Kind: ErrNotFound, Msg: "not found"}
	if got := e.Error(); !strings.Contains(got, `tensor "": not found`) {
		t.Errorf("got %q", got)
	}
}
