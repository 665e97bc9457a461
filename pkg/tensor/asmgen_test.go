package tensor

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestGeneratedAsmIsCurrent regenerates gemm_amd64.s and
// gemm_kernels_amd64.go from gemm_asmgen.go into a temporary directory and
// fails if a committed file differs, as the protobuf check does for proto/:
// an edit to the generator must come with `go generate ./pkg/tensor`.
func TestGeneratedAsmIsCurrent(t *testing.T) {
	gobin := filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		if gobin, err = exec.LookPath("go"); err != nil {
			t.Skip("no go command to run the generator") // go test itself always has one
		}
	}
	dir := t.TempDir()
	cmd := exec.Command(gobin, "run", "gemm_asmgen.go", "-o", dir)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go run gemm_asmgen.go: %v\n%s", err, b)
	}
	for _, name := range []string{"gemm_amd64.s", "gemm_kernels_amd64.go"} {
		want, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what gemm_asmgen.go generates: run go generate ./pkg/tensor and commit the result", name)
		}
	}
}

// TestEVEXBytesMatchGNUAs assembles the Intel-syntax comment of every
// BYTE-encoded instruction in gemm_amd64.s (the AVX512_BF16 instructions
// the Go assembler lacks, encoded by gemm_asmgen.go's evex) with GNU as and
// checks that it gives the same bytes.
func TestEVEXBytesMatchGNUAs(t *testing.T) {
	as, err := exec.LookPath("as")
	if err != nil {
		t.Skip("GNU as (binutils) not installed") // the kernel tests still check the arithmetic
	}
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		t.Skip("objcopy (binutils) not installed")
	}
	src, err := os.ReadFile("gemm_amd64.s")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var intel []string
	var want []byte
	for _, line := range strings.Split(string(src), "\n") {
		code, comment, ok := strings.Cut(strings.TrimSpace(line), " // ")
		if !ok || !strings.HasPrefix(code, "BYTE $0x") || seen[line] {
			continue
		}
		seen[line] = true
		intel = append(intel, comment)
		for _, b := range strings.Split(code, ";") {
			v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(b), "BYTE $0x"), 16, 8)
			if err != nil {
				t.Fatalf("bad BYTE directive in %q: %v", line, err)
			}
			want = append(want, byte(v))
		}
	}
	if len(intel) == 0 {
		t.Fatal("no BYTE-encoded instructions found")
	}
	dir := t.TempDir()
	s := filepath.Join(dir, "evex.s")
	if err := os.WriteFile(s, []byte(".intel_syntax noprefix\n"+strings.Join(intel, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	obj, bin := filepath.Join(dir, "evex.o"), filepath.Join(dir, "evex.bin")
	if b, err := exec.Command(as, "-o", obj, s).CombinedOutput(); err != nil {
		t.Fatalf("as: %v\n%s", err, b)
	}
	if b, err := exec.Command(objcopy, "-O", "binary", "-j", ".text", obj, bin).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v\n%s", err, b)
	}
	got, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("GNU as encodes the %d instructions as % x\nthe generator wrote % x", len(intel), got, want)
	}
	t.Logf("%d distinct BYTE-encoded instructions match GNU as", len(intel))
}
