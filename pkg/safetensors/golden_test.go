package safetensors

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// goldenDir holds the reference checkpoints written by Hugging Face's
// safetensors (see testdata/golden/README.md). The tests above make their
// own fixtures; these are an extra check against the reference
// implementation when the folder is present.
const goldenDir = "../../testdata/golden"

func goldenFiles(t *testing.T) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*", "*.safetensors"))
	if len(files) == 0 {
		t.Skipf("no reference files under %s: this extra check needs the golden folder copied there", goldenDir)
	}
	return files
}

// Our reader accepts every reference file, and our writer, given the same
// tensors and metadata, reproduces it byte for byte (ordering, header
// format, padding).
func TestGoldenReencodesByteIdentical(t *testing.T) {
	for _, path := range goldenFiles(t) {
		t.Run(filepath.Base(filepath.Dir(path))+"/"+filepath.Base(path), func(t *testing.T) {
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var ts []Tensor
			for _, name := range f.Names() {
				info, err := f.Info(name)
				if err != nil {
					t.Fatal(err)
				}
				raw, err := f.Raw(name)
				if err != nil {
					t.Fatal(err)
				}
				ts = append(ts, Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: raw})
			}
			if got := encode(t, ts, f.Metadata()); !bytes.Equal(got, orig) {
				n := 0
				for n < min(len(got), len(orig)) && got[n] == orig[n] {
					n++
				}
				t.Fatalf("re-encoded file differs from the reference at byte %d of %d", n, len(orig))
			}
		})
	}
}

// Every weight of every reference model reads as finite float32 through
// OpenDir; BF16 weights convert exactly as pkg/tensor converts their bits.
func TestGoldenModelsRead(t *testing.T) {
	goldenFiles(t)
	dirs, _ := filepath.Glob(filepath.Join(goldenDir, "*", ModelFile))
	for _, m := range dirs {
		dir := filepath.Dir(m)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			s, err := OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if len(s.Names()) == 0 {
				t.Fatal("no tensors")
			}
			for _, name := range s.Names() {
				info, err := s.Info(name)
				if err != nil {
					t.Fatal(err)
				}
				v, err := s.Float32(name, info.Shape...)
				if err != nil {
					t.Fatal(err)
				}
				for i, x := range v {
					if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
						t.Fatalf("%s[%d] = %v", name, i, x)
					}
				}
				if info.DType == BF16 {
					bits, err := s.BF16(name)
					if err != nil {
						t.Fatal(err)
					}
					want := make([]float32, len(bits))
					tensor.BF16ToF32(want, bits)
					if !slices.Equal(v, want) {
						t.Fatalf("%s: Float32 disagrees with BF16ToF32 of its bits", name)
					}
				}
			}
		})
	}
}

// The golden activations files hold I64 token ids next to F32 tensors.
func TestGoldenIDs(t *testing.T) {
	goldenFiles(t)
	paths, _ := filepath.Glob(filepath.Join(goldenDir, "*", "golden.safetensors"))
	for _, p := range paths {
		f, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		info, err := f.Info("input_ids")
		if err != nil {
			t.Fatal(err)
		}
		ids, err := f.Int64("input_ids", info.Shape...)
		if err != nil || len(ids) == 0 || info.DType != I64 {
			t.Errorf("%s: input_ids %v, %v", p, info, err)
		}
		f.Close()
	}
}
