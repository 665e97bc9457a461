package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

func testSpec() Spec {
	return Spec{
		Name:       "localhost/switchyard:local",
		Entrypoint: []string{"/usr/local/bin/switchyard"},
		UID:        65532, GID: 65532,
		Labels: map[string]string{"org.opencontainers.image.title": "switchyard"},
		Files: []File{
			{Path: "/usr/local/bin/worker", Mode: 0o755, Data: []byte("worker binary")},
			{Path: "/usr/local/bin/switchyard", Mode: 0o755, Data: []byte("switchyard binary")},
		},
		Arch:    "amd64",
		Created: time.Unix(0, 0).UTC(),
	}
}

// untar reads a tar into name -> header and contents.
func untar(t *testing.T, b []byte) (map[string]*tar.Header, map[string][]byte, []string) {
	t.Helper()
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hdrs, data, order
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name], data[h.Name] = h, d
		order = append(order, h.Name)
	}
}

func TestRootfs(t *testing.T) {
	s := testSpec()
	b, err := rootfs(s)
	if err != nil {
		t.Fatal(err)
	}
	hdrs, data, order := untar(t, b)
	want := map[string]struct {
		mode     int64
		uid, gid int
	}{
		"etc/":                     {0o755, 0, 0},
		"etc/passwd":               {0o644, 0, 0},
		"etc/group":                {0o644, 0, 0},
		"etc/nsswitch.conf":        {0o644, 0, 0},
		"home/":                    {0o755, 0, 0},
		"home/nonroot/":            {0o700, 65532, 65532},
		"tmp/":                     {0o1777, 0, 0},
		"usr/":                     {0o755, 0, 0},
		"usr/local/":               {0o755, 0, 0},
		"usr/local/bin/":           {0o755, 0, 0},
		"usr/local/bin/switchyard": {0o755, 0, 0},
		"usr/local/bin/worker":     {0o755, 0, 0},
	}
	if len(hdrs) != len(want) {
		t.Errorf("entries %v, want %d", order, len(want))
	}
	for name, w := range want {
		h := hdrs[name]
		if h == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if h.Mode != w.mode || h.Uid != w.uid || h.Gid != w.gid || !h.ModTime.Equal(s.Created) {
			t.Errorf("%s: mode %o uid %d gid %d mtime %v, want %o %d %d %v", name, h.Mode, h.Uid, h.Gid, h.ModTime, w.mode, w.uid, w.gid, s.Created)
		}
	}
	if !slices.IsSorted(order) {
		t.Errorf("entries not sorted (parents first): %v", order)
	}
	if got := string(data["etc/passwd"]); !strings.Contains(got, "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd has no entry for 65532:\n%s", got)
	}
	if got := string(data["usr/local/bin/worker"]); got != "worker binary" {
		t.Errorf("worker: %q", got)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		what string
		edit func(*Spec)
	}{
		{"root user", func(s *Spec) { s.UID = 0 }},
		{"no entrypoint", func(s *Spec) { s.Entrypoint = nil }},
		{"relative path", func(s *Spec) { s.Files[0].Path = "usr/bin/x" }},
		{"unclean path", func(s *Spec) { s.Files[0].Path = "/usr/../bin/x" }},
		{"twice", func(s *Spec) { s.Files[1].Path = s.Files[0].Path }},
		{"reserved", func(s *Spec) { s.Files[0].Path = "/etc/passwd" }},
		{"no name", func(s *Spec) { s.Name = "" }},
	} {
		s := testSpec()
		tc.edit(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", tc.what)
		}
	}
	if err := testSpec().Validate(); err != nil {
		t.Error(err)
	}
}

// TestLayout writes the layout tarball twice (same digest, same bytes),
// unpacks it and reads it back with go-containerregistry: the index names
// the image for containerd, the config says what the manifests rely on.
func TestLayout(t *testing.T) {
	s := testSpec()
	var outs [2]bytes.Buffer
	var digests [2]v1.Hash
	for i := range outs {
		img, err := Image(s)
		if err != nil {
			t.Fatal(err)
		}
		if digests[i], err = img.Digest(); err != nil {
			t.Fatal(err)
		}
		if err := WriteLayout(&outs[i], img, s.Name, s.Arch, s.Created); err != nil {
			t.Fatal(err)
		}
	}
	if digests[0] != digests[1] || !bytes.Equal(outs[0].Bytes(), outs[1].Bytes()) {
		t.Errorf("not reproducible: %v vs %v", digests[0], digests[1])
	}
	hdrs, data, _ := untar(t, outs[0].Bytes())
	dir := t.TempDir()
	for name, h := range hdrs {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if h.Typeflag == tar.TypeDir {
			continue
		}
		writeFile(t, p, data[name])
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index: %d manifests, want 1", len(im.Manifests))
	}
	d := im.Manifests[0]
	if d.Digest != digests[0] || d.Annotations["io.containerd.image.name"] != s.Name ||
		d.Annotations["org.opencontainers.image.ref.name"] != "local" || d.Platform == nil || d.Platform.Architecture != "amd64" {
		b, _ := json.Marshal(d)
		t.Errorf("index descriptor %s", b)
	}
	img, err := p.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" || !slices.Equal(c.Entrypoint, s.Entrypoint) || cf.OS != "linux" ||
		!slices.Contains(c.Env, "HOME=/home/nonroot") || c.Labels["org.opencontainers.image.title"] != "switchyard" {
		t.Errorf("config %+v", c)
	}
	mt, err := img.MediaType()
	if err != nil || mt != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest media type %q, %v", mt, err)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("layers %d, %v", len(ls), err)
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	fsTar, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, files, _ := untar(t, fsTar); string(files["usr/local/bin/switchyard"]) != "switchyard binary" {
		t.Error("layer lacks the switchyard binary")
	}
}

// TestDynamic: a dynamically linked executable is refused (the image has
// no C library), a static one and non-ELF files are not.
func TestDynamic(t *testing.T) {
	ls, err := os.ReadFile("/bin/ls")
	if err != nil {
		t.Skip("no /bin/ls to stand for a dynamically linked executable")
	}
	if !dynamic(ls) {
		t.Skip("/bin/ls is static here")
	}
	s := testSpec()
	s.Files[0].Data = ls
	if err := s.Validate(); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("dynamic executable: %v", err)
	}
	if static, err := os.ReadFile("/bin/busybox"); err == nil && dynamic(static) {
		t.Log("/bin/busybox is dynamic here")
	} else if err == nil {
		s.Files[0].Data = static
		if err := s.Validate(); err != nil {
			t.Errorf("static busybox refused: %v", err)
		}
	}
}

func TestTagOf(t *testing.T) {
	for ref, want := range map[string]string{
		"localhost/switchyard:local": "local",
		"localhost:5000/etcd:v3.7.3": "v3.7.3",
		"localhost:5000/etcd":        "latest",
		"switchyard":                 "latest",
	} {
		if got := tagOf(ref); got != want {
			t.Errorf("tagOf(%q) = %q, want %q", ref, got, want)
		}
	}
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
