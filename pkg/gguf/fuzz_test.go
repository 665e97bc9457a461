package gguf

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// FuzzRead: Read never panics; whatever it accepts can be read tensor by
// tensor, written back and read again to the same metadata, infos and data;
// whatever it rejects is an ErrCorrupt error.
//
//	go test ./pkg/gguf -run '^$' -fuzz FuzzRead -fuzztime 30s
func FuzzRead(f *testing.F) {
	kv, infos, data := sample(f)
	valid := encodeFile(f, kv, infos, data)
	f.Add(valid)
	f.Add(valid[:len(valid)/2])
	f.Add(valid[:40])
	small := encodeFile(f, []KV{{KeyAlignment, Uint32(8)}, {"s", Array([]string{"x"})}},
		[]TensorInfo{{Name: "t", Type: Q8_0, Dims: []uint64{32}}}, [][]byte{make([]byte, 34)})
	f.Add(small)
	f.Add([]byte("GGUF"))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := Read(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		var datas [][]byte
		for _, ti := range g.Tensors {
			d, err := g.ReadTensor(ti.Name)
			if err != nil {
				t.Fatalf("accepted file, but tensor %q unreadable: %v", ti.Name, err)
			}
			datas = append(datas, d)
		}
		var buf bytes.Buffer
		w, err := NewWriter(&buf, g.KV, g.Tensors)
		if err != nil {
			t.Fatalf("accepted file cannot be written back: %v", err)
		}
		for _, d := range datas {
			if _, err := w.Write(d); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		h, err := Read(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatalf("re-written file rejected: %v", err)
		}
		if len(h.KV) != len(g.KV) || len(h.Tensors) != len(g.Tensors) {
			t.Fatalf("round trip: %d/%d keys, %d/%d tensors", len(h.KV), len(g.KV), len(h.Tensors), len(g.Tensors))
		}
		for i := range g.KV {
			if h.KV[i].Key != g.KV[i].Key || !h.KV[i].Value.Equal(g.KV[i].Value) {
				t.Fatalf("round trip: key %d %q differs", i, g.KV[i].Key)
			}
		}
		for i, ti := range g.Tensors {
			hi := h.Tensors[i]
			if hi.Name != ti.Name || hi.Type != ti.Type || !slices.Equal(hi.Dims, ti.Dims) || hi.Offset != ti.Offset {
				t.Fatalf("round trip: tensor %q info differs", ti.Name)
			}
			d, err := h.ReadTensor(ti.Name)
			if err != nil || !bytes.Equal(d, datas[i]) {
				t.Fatalf("round trip: tensor %q data differs (%v)", ti.Name, err)
			}
		}
	})
}
