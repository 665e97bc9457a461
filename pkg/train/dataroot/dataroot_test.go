package dataroot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree makes a data root with a file, a subdirectory and links (inside
// and outside), and a directory outside it; it returns the root (links
// resolved) and the outside directory.
//
//	base/root/text.txt
//	base/root/sub/
//	base/root/in -> sub              (a link that stays inside)
//	base/root/out -> base/outside    (a link that leaves)
//	base/root/passwd -> base/outside/secret
//	base/root/dangling -> base/outside/new (missing target)
//	base/outside/secret
func tree(t testing.TB) (root, outside string) {
	t.Helper()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	root, outside = filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(root, "text.txt"), filepath.Join(outside, "secret")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"in": "sub", "out": outside, "passwd": filepath.Join(outside, "secret"), "dangling": filepath.Join(outside, "new"),
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return root, outside
}

func TestResolve(t *testing.T) {
	root, outside := tree(t)
	ok := []struct{ path, want string }{
		{"text.txt", filepath.Join(root, "text.txt")},
		{"./sub/../text.txt", filepath.Join(root, "text.txt")},
		{".", root},
		{"sub", filepath.Join(root, "sub")},
		{filepath.Join(root, "text.txt"), filepath.Join(root, "text.txt")}, // absolute, inside
		{"in/new/deeper", filepath.Join(root, "sub", "new", "deeper")},     // not yet existing, link inside
		{"runs/one/checkpoints", filepath.Join(root, "runs", "one", "checkpoints")},
		{"sub/..", root},
	}
	for _, tc := range ok {
		got, err := Resolve(root, tc.path)
		if err != nil || got != tc.want {
			t.Errorf("Resolve(root, %q) = %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}
	bad := []struct {
		path, mention string
		outside       bool
	}{
		{"../outside/secret", "outside the data root", true},
		{"../../../../../../etc/passwd", "outside the data root", true},
		{"sub/../../outside", "outside the data root", true},
		{"/etc/passwd", "/etc/passwd", true},
		{filepath.Join(outside, "secret"), "outside the data root", true},
		{root + "/../outside", "outside the data root", true},
		{root + "-sibling/x", "outside the data root", true},   // a prefix of the root's name is not inside
		{"passwd", "outside the data root", true},              // link to a file outside
		{"out", "outside the data root", true},                 // link to a directory outside
		{"out/new-checkpoints", "outside the data root", true}, // not yet existing below a link that leaves
		{"dangling", "missing target", false},                  // would create base/outside/new
		{"dangling/sub", "missing target", false},
		{"", "empty path", false},
		{"text.txt\x00", "NUL", false},
		{"sub\x00/../../outside", "NUL", false},
		{"text.txt/below", "not a directory", false},
	}
	for _, tc := range bad {
		got, err := Resolve(root, tc.path)
		if err == nil {
			t.Errorf("Resolve(root, %q) = %q, want an error", tc.path, got)
			continue
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Resolve(root, %q): error %q does not mention %q", tc.path, err, tc.mention)
		}
		if errors.Is(err, ErrOutside) != tc.outside {
			t.Errorf("Resolve(root, %q): errors.Is(err, ErrOutside) = %v, want %v (%v)", tc.path, !tc.outside, tc.outside, err)
		}
		if tc.outside && !strings.Contains(err.Error(), root) {
			t.Errorf("Resolve(root, %q): error %q does not name the root", tc.path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); err == nil {
		t.Error("Resolve created something outside the root")
	}
}

// A root that is itself a link is resolved first: paths inside its target
// are inside, under either spelling; paths beside it are not.
func TestResolveRootIsALink(t *testing.T) {
	root, outside := tree(t)
	link := filepath.Join(filepath.Dir(root), "root-link")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"text.txt", filepath.Join(link, "text.txt"), filepath.Join(root, "text.txt")} {
		if got, err := Resolve(link, p); err != nil || got != filepath.Join(root, "text.txt") {
			t.Errorf("Resolve(link, %q) = %q, %v", p, got, err)
		}
	}
	if _, err := Resolve(link, filepath.Join(outside, "secret")); !errors.Is(err, ErrOutside) {
		t.Errorf("a path beside the link's target: %v", err)
	}
	if _, err := Resolve(link, "../root-link/../outside/secret"); !errors.Is(err, ErrOutside) {
		t.Errorf("an escape through the link's name: %v", err)
	}
}

func TestResolveBadRoot(t *testing.T) {
	root, _ := tree(t)
	for _, r := range []string{"", filepath.Join(root, "missing"), filepath.Join(root, "text.txt"), root + "\x00"} {
		if got, err := Resolve(r, "x"); err == nil {
			t.Errorf("Resolve(%q, x) = %q, want an error", r, got)
		}
	}
	// A relative root is relative to the working directory.
	t.Chdir(filepath.Dir(root))
	if got, err := Resolve("root", "text.txt"); err != nil || got != filepath.Join(root, "text.txt") {
		t.Errorf("relative root: %q, %v", got, err)
	}
}

// FuzzResolve: whatever the path, Resolve either refuses it or returns a
// clean absolute path inside the root, and creates nothing.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{"", ".", "..", "text.txt", "../outside/secret", "/etc/passwd", "out/x", "in/../../outside",
		"dangling/x", "sub/./../sub//x/", "a\x00b", strings.Repeat("../", 300) + "etc", strings.Repeat("x/", 2000)} {
		f.Add(s)
	}
	root, _ := tree(f)
	f.Fuzz(func(t *testing.T, p string) {
		got, err := Resolve(root, p)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if !filepath.IsAbs(got) || filepath.Clean(got) != got || !within(root, got) {
			t.Fatalf("Resolve(root, %q) = %q: not a clean path inside %s", p, got, root)
		}
	})
}

func TestCover(t *testing.T) {
	root, outside := tree(t)
	base := filepath.Dir(root)
	cases := []struct {
		paths, rel []string
		root       string
	}{
		{[]string{root}, []string{"."}, root},
		{[]string{filepath.Join(root, "sub"), filepath.Join(root, "text.txt")}, []string{"sub", "text.txt"}, root},
		{[]string{filepath.Join(root, "text.txt")}, []string{"text.txt"}, root},
		{[]string{filepath.Join(root, "sub"), filepath.Join(outside, "secret")}, []string{"root/sub", "outside/secret"}, base},
		{[]string{filepath.Join(root, "in"), filepath.Join(root, "passwd")}, []string{"root/sub", "outside/secret"}, base}, // links resolved
		{[]string{"/", root}, []string{".", strings.TrimPrefix(root, "/")}, "/"},
	}
	for _, tc := range cases {
		got, rel, err := Cover(tc.paths...)
		if err != nil || got != tc.root || strings.Join(rel, ",") != strings.Join(tc.rel, ",") {
			t.Errorf("Cover(%q) = %q, %q, %v; want %q, %q", tc.paths, got, rel, err, tc.root, tc.rel)
			continue
		}
		for _, r := range rel { // what Cover returns, Resolve accepts
			if _, err := Resolve(got, r); err != nil {
				t.Errorf("Cover(%q): Resolve(%q, %q): %v", tc.paths, got, r, err)
			}
		}
	}
	if _, _, err := Cover(filepath.Join(root, "missing")); err == nil {
		t.Error("a missing path covered")
	}
	if _, _, err := Cover(); err == nil {
		t.Error("nothing covered")
	}
}
