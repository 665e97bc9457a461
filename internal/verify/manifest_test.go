package verify

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// manifestName is the committed SHA-256 manifest of testdata/golden, in
// sha256sum's format with paths relative to that folder:
//
//	cd testdata/golden && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
const manifestName = "SHA256SUMS"

// TestGoldenManifest holds testdata/golden to its committed manifest on
// every clone: each file's SHA-256 matches, no listed file is missing and
// no file is there that the manifest does not list. It never skips: unlike
// TestGoldenCopiesMatchOriginals it needs nothing outside the repository.
func TestGoldenManifest(t *testing.T) {
	problems, n, err := checkManifest(goldenRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	if n == 0 {
		t.Fatal("the manifest lists no files")
	}
	t.Logf("%d files under %s match %s", n-len(problems), goldenRoot, manifestName)
}

// TestCheckManifestCatchesEveryDifference: a changed byte, a deleted file
// and an added file are each reported, by path.
func TestCheckManifestCatchesEveryDifference(t *testing.T) {
	root := t.TempDir()
	write := func(rel, body string) {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var sums strings.Builder
	for _, f := range []struct{ rel, body string }{{"a.json", "{}"}, {"m/golden.safetensors", "weights"}, {"m/config.json", "cfg"}} {
		write(f.rel, f.body)
		h := sha256.Sum256([]byte(f.body))
		fmt.Fprintf(&sums, "%x  %s\n", h, f.rel)
	}
	write(manifestName, sums.String())
	if problems, n, err := checkManifest(root); err != nil || len(problems) != 0 || n != 3 {
		t.Fatalf("intact tree: %v, %d files, %v", problems, n, err)
	}

	write("m/golden.safetensors", "weightz")
	if err := os.Remove(filepath.Join(root, "m", "config.json")); err != nil {
		t.Fatal(err)
	}
	write("m/extra.bin", "x")
	problems, _, err := checkManifest(root)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"m/config.json: listed in", "m/extra.bin: not listed in", "m/golden.safetensors: sha256"}
	if len(problems) != len(want) {
		t.Fatalf("problems %q, want %d", problems, len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(problems[i], w) {
			t.Errorf("problem %d: %q, want it to start with %q", i, problems[i], w)
		}
	}

	write(manifestName, "not a manifest line\n")
	if _, _, err := checkManifest(root); err == nil {
		t.Error("a malformed manifest was accepted")
	}
}

// checkManifest compares every file under root (but the manifest) with
// root/SHA256SUMS. It returns one problem per differing, missing or
// unlisted file, sorted by path, and how many files the manifest lists; the
// error is for a manifest it cannot read.
func checkManifest(root string) (problems []string, listed int, err error) {
	want, err := readManifest(filepath.Join(root, manifestName))
	if err != nil {
		return nil, 0, err
	}
	seen := map[string]bool{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == manifestName {
			return nil
		}
		if !d.Type().IsRegular() {
			problems = append(problems, fmt.Sprintf("%s: not a regular file (%s)", rel, d.Type()))
			return nil
		}
		seen[rel] = true
		sum, ok := want[rel]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: not listed in %s", rel, manifestName))
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != sum {
			problems = append(problems, fmt.Sprintf("%s: sha256 %x, %s says %s", rel, got, manifestName, sum))
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	for rel := range want {
		if !seen[rel] {
			problems = append(problems, fmt.Sprintf("%s: listed in %s but not there", rel, manifestName))
		}
	}
	slices.Sort(problems)
	return problems, len(want), nil
}

// readManifest parses sha256sum output ("<64 hex digits>  <path>", or
// " *<path>" for binary mode) into path -> hex digest.
func readManifest(file string) (map[string]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sums := map[string]string{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if len(text) < 67 || (text[64:66] != "  " && text[64:66] != " *") {
			return nil, fmt.Errorf("%s:%d: not a sha256sum line: %q", file, line, text)
		}
		sum, rel := text[:64], text[66:]
		if _, err := hex.DecodeString(sum); err != nil || strings.ToLower(sum) != sum {
			return nil, fmt.Errorf("%s:%d: %q is not a lower-case hex SHA-256", file, line, sum)
		}
		if rel != path.Clean(rel) || path.IsAbs(rel) || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("%s:%d: %q is not a clean relative path", file, line, rel)
		}
		if _, dup := sums[rel]; dup {
			return nil, fmt.Errorf("%s:%d: %s listed twice", file, line, rel)
		}
		sums[rel] = sum
	}
	return sums, sc.Err()
}
