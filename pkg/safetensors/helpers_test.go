package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// crafted builds a file by hand: the 8-byte length of hdr, hdr, and
// dataLen bytes of data (byte i is i mod 251, so misplaced reads show).
func crafted(hdr string, dataLen int) []byte {
	b := make([]byte, 8, 8+len(hdr)+dataLen)
	binary.LittleEndian.PutUint64(b, uint64(len(hdr)))
	b = append(b, hdr...)
	for i := range dataLen {
		b = append(b, byte(i%251))
	}
	return b
}

// writeBytes stores b as dir/name and returns the path.
func writeBytes(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// encode returns the bytes Encode writes.
func encode(t *testing.T, tensors []Tensor, meta map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := Encode(&buf, tensors, meta)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("Encode returned %d bytes written, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

// wantErr checks err matches kind with errors.Is, is an *Error, and that its
// message contains every one of subs.
func wantErr(t *testing.T, err, kind error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v containing %q", kind, subs)
	}
	if kind != nil && !errors.Is(err, kind) {
		t.Errorf("error %q does not match %v", err, kind)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Errorf("error %q (%T) is not an *Error", err, err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "safetensors: ") {
		t.Errorf("error %q lacks the safetensors: prefix", msg)
	}
	for _, s := range subs {
		if !strings.Contains(msg, s) {
			t.Errorf("error %q does not contain %q", msg, s)
		}
	}
}

// seq returns n float32 tagged with tag: tag*1e4 + i.
func seq(tag, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(tag*10000 + i)
	}
	return v
}
