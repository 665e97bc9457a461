package verify

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestGoldenCopiesMatchOriginals checks that testdata/golden is a
// byte-for-byte copy of the shared reference data, when that is present
// (it is beside the repository on development machines, not in a clean CI
// clone, where the committed copies are all there is).
func TestGoldenCopiesMatchOriginals(t *testing.T) {
	orig := filepath.Join("..", "..", "..", "shared", "golden")
	if _, err := os.Stat(orig); err != nil {
		t.Skipf("no shared golden data at %s (clean clone): nothing to compare", orig)
	}
	copyRoot := filepath.Join("..", "..", "testdata", "golden")
	n := 0
	err := filepath.WalkDir(orig, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(orig, p)
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		got, err := os.ReadFile(filepath.Join(copyRoot, rel))
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the shared original", rel)
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no golden files found")
	}
}
