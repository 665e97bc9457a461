package safetensors

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// tempFiles lists the writer's leftover temporary files in dir.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, ".*.tmp*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Write replaces a file atomically; a failed write leaves the old file
// untouched and no temporary file behind.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	if err := Write(path, []Tensor{F32Tensor("w", []int{2}, []float32{1, 2})}, nil); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(path)

	// Invalid input fails before anything is written.
	err := Write(path, []Tensor{F32Tensor("w", []int{3}, []float32{1, 2})}, nil)
	wantErr(t, err, ErrShape, path)

	// A failure in the middle of writing the data.
	boom := errors.New("disk full")
	err = writeAtomic(path, func(w io.Writer) error {
		w.Write([]byte("half a file"))
		return boom
	})
	wantErr(t, err, nil, path, "disk full")
	if !errors.Is(err, boom) {
		t.Errorf("%v does not wrap the cause", err)
	}
	if now, _ := os.ReadFile(path); !slices.Equal(now, old) {
		t.Error("failed write changed the file")
	}
	if tf := tempFiles(t, dir); len(tf) != 0 {
		t.Errorf("temporary files left: %v", tf)
	}

	// A successful rewrite replaces it.
	if err := Write(path, []Tensor{F32Tensor("w", []int{3}, []float32{1, 2, 3})}, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if v, err := f.Float32("w", 3); err != nil || !slices.Equal(v, []float32{1, 2, 3}) {
		t.Errorf("after rewrite: %v, %v", v, err)
	}
	if tf := tempFiles(t, dir); len(tf) != 0 {
		t.Errorf("temporary files left: %v", tf)
	}

	// A folder that does not exist.
	err = Write(filepath.Join(dir, "no", "m.safetensors"), nil, nil)
	wantErr(t, err, os.ErrNotExist, "cannot create a temporary file")
}
