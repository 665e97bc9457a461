package tensor

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedAsmIsCurrent regenerates gemm_amd64.s from gemm_asmgen.go
// into a temporary file and fails if the committed file differs, as the
// protobuf check does for proto/: an edit to the generator must come with
// `go generate ./pkg/tensor`.
func TestGeneratedAsmIsCurrent(t *testing.T) {
	gobin := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		if gobin, err = exec.LookPath("go"); err != nil {
			t.Skip("no go command to run the generator") // go test itself always has one
		}
	}
	out := filepath.Join(t.TempDir(), "gemm_amd64.s")
	cmd := exec.Command(gobin, "run", "gemm_asmgen.go", "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run gemm_asmgen.go: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("gemm_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("gemm_amd64.s is not what gemm_asmgen.go generates: run go generate ./pkg/tensor and commit the result")
	}
}
