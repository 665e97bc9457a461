// Command oci writes a container image as an OCI image layout tarball,
// without Docker or a registry: one layer holding the given files on a
// minimal root filesystem, and a config with the entrypoint, user,
// environment and labels. scripts/k8s/images.sh runs it for the Switchyard
// and etcd images of the local Kubernetes overlay (deploy/k8s/overlays/local)
// and imports the tarballs with `ctr -n k8s.io images import`.
//
//	oci -name localhost/switchyard:local -out switchyard.tar \
//	    -entrypoint /usr/local/bin/switchyard -user 65532:65532 \
//	    -file /usr/local/bin/worker=bin/worker -label org.opencontainers.image.version=dev
//
// It prints "NAME DIGEST": the digest of the image manifest, the one a pod
// spec pins with NAME@DIGEST (after `ctr images import --digests`).
//
// The root filesystem, besides the -file entries (their parent folders
// are created, owned by root, 0755):
//
//	/etc/passwd, /etc/group   root and the -user (named nonroot, as in
//	                          distroless), so the uid has a name and a home
//	/etc/nsswitch.conf        "hosts: files dns" (Go's resolver reads it)
//	/home/nonroot             the user's home, 0700, owned by the user
//	/tmp                      1777 (the manifests mount an emptyDir here
//	                          where the root filesystem is read-only)
//
// Files must be static: an ELF with a program interpreter (a dynamically
// linked binary) is refused, since the image has no C library.
//
// No shell, no CA certificates: every connection the images make is
// verified against the Switchyard CA mounted from a Secret.
//
// The output is reproducible: every timestamp (files, history, config) is
// -epoch (default $SOURCE_DATE_EPOCH, else 0), entries are sorted, owners
// fixed, so the same binaries give the same digest.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Spec is one image: its reference and everything in it.
type Spec struct {
	// Name is the reference containerd imports the image under
	// (annotation io.containerd.image.name), e.g. localhost/switchyard:local.
	Name string
	// Entrypoint and Cmd of the config; the manifests set command: anyway.
	Entrypoint, Cmd []string
	// UID and GID the image runs as (USER uid:gid); not 0.
	UID, GID int
	// Env is KEY=VALUE; PATH and HOME are added unless given.
	Env []string
	// Labels of the config (org.opencontainers.image.*).
	Labels map[string]string
	// Files are copied into the root filesystem.
	Files []File
	// Arch is the GOARCH of the binaries (the image's architecture).
	Arch string
	// Created is every timestamp in the image.
	Created time.Time
}

// File is one file of the root filesystem.
type File struct {
	Path string // absolute path in the image, e.g. /usr/local/bin/worker
	Mode int64  // permission bits, e.g. 0o755
	Data []byte
}

// userName is the name of the image's user in /etc/passwd (distroless
// calls uid 65532 "nonroot" too).
const userName = "nonroot"

// Validate reports every problem of s at once.
func (s Spec) Validate() error {
	var errs []error
	if s.Name == "" {
		errs = append(errs, errors.New("no image name"))
	}
	if len(s.Entrypoint) == 0 && len(s.Cmd) == 0 {
		errs = append(errs, errors.New("neither entrypoint nor cmd"))
	}
	if s.UID <= 0 || s.GID <= 0 {
		errs = append(errs, fmt.Errorf("user %d:%d: want a non-root uid and gid", s.UID, s.GID))
	}
	if s.Arch == "" {
		errs = append(errs, errors.New("no architecture"))
	}
	seen := map[string]bool{}
	for _, f := range s.Files {
		clean := path.Clean(f.Path)
		switch {
		case !path.IsAbs(f.Path) || clean != f.Path || clean == "/":
			errs = append(errs, fmt.Errorf("file %q: want a clean absolute path", f.Path))
		case seen[clean] || reserved[strings.TrimPrefix(clean, "/")]:
			errs = append(errs, fmt.Errorf("file %q: given twice or one the image makes itself", f.Path))
		}
		seen[clean] = true
		if dynamic(f.Data) {
			errs = append(errs, fmt.Errorf("file %q: a dynamically linked executable (the image has no C library; build with CGO_ENABLED=0)", f.Path))
		}
	}
	return errors.Join(errs...)
}

// dynamic reports whether b is an ELF file with a program interpreter.
func dynamic(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false // not ELF
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true
		}
	}
	return false
}

// reserved are the paths rootfs writes itself (no leading slash).
var reserved = map[string]bool{
	"etc/passwd": true, "etc/group": true, "etc/nsswitch.conf": true,
	"tmp": true, "home": true, "home/" + userName: true,
}

// rootfs returns the image's one layer: an uncompressed tar, entries
// sorted by path, parents before children.
func rootfs(s Spec) ([]byte, error) {
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	entries := map[string]*entry{}
	file := func(name string, mode int64, uid, gid int, data []byte) {
		entries[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(data))}, data: data}
	}
	dir := func(name string, mode int64, uid, gid int) {
		entries[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: gid}}
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:/home/%s:/sbin/nologin\n", userName, s.UID, s.GID, userName, userName)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", userName, s.GID)
	file("etc/passwd", 0o644, 0, 0, []byte(passwd))
	file("etc/group", 0o644, 0, 0, []byte(group))
	file("etc/nsswitch.conf", 0o644, 0, 0, []byte("hosts: files dns\n"))
	dir("tmp", 0o1777, 0, 0)
	dir("home/"+userName, 0o700, s.UID, s.GID)
	for _, f := range s.Files {
		file(strings.TrimPrefix(f.Path, "/"), f.Mode, 0, 0, f.Data)
	}
	// Every parent folder, root-owned 0755 unless made above.
	for name := range entries {
		for p := path.Dir(name); p != "."; p = path.Dir(p) {
			if _, ok := entries[p]; !ok {
				dir(p, 0o755, 0, 0)
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	slices.Sort(names) // "a" < "a/b": parents first
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.ModTime = s.Created
		e.hdr.Format = tar.FormatPAX
		e.hdr.Uname, e.hdr.Gname = "", ""
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("rootfs %s: %w", n, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("rootfs %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Image assembles s: its rootfs layer (gzip) and an OCI config and
// manifest.
func Image(s Spec) (v1.Image, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	fsTar, err := rootfs(s)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(fsTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	created := v1.Time{Time: s.Created}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: created, CreatedBy: "scripts/k8s/oci", Comment: "root filesystem"},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = created
	cf.OS, cf.Architecture = "linux", s.Arch
	cf.Config.Entrypoint = slices.Clone(s.Entrypoint)
	cf.Config.Cmd = slices.Clone(s.Cmd)
	cf.Config.User = fmt.Sprintf("%d:%d", s.UID, s.GID)
	cf.Config.WorkingDir = "/"
	cf.Config.Env = withDefaults(s.Env, "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/"+userName)
	cf.Config.Labels = s.Labels
	return mutate.ConfigFile(img, cf)
}

// withDefaults appends each KEY=VALUE of defaults whose key env lacks.
func withDefaults(env []string, defaults ...string) []string {
	out := slices.Clone(env)
	for _, d := range defaults {
		k, _, _ := strings.Cut(d, "=")
		if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") }) {
			out = append(out, d)
		}
	}
	return out
}

// WriteLayout writes img as an OCI image layout tarball to w: oci-layout,
// index.json (one manifest, annotated with the name containerd imports
// it under and the OCI ref name, its tag) and blobs/sha256/*.
func WriteLayout(w io.Writer, img v1.Image, name, arch string, mtime time.Time) error {
	dir, err := os.MkdirTemp("", "oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	ann := map[string]string{
		"io.containerd.image.name":          name,
		"org.opencontainers.image.ref.name": tagOf(name),
	}
	if err := p.AppendImage(img, layout.WithAnnotations(ann), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})); err != nil {
		return err
	}
	return tarDir(w, dir, mtime)
}

// tagOf returns the tag of a reference ("local" of localhost/switchyard:local),
// or "latest" when it has none.
func tagOf(ref string) string {
	if i := strings.LastIndexAny(ref, ":/"); i >= 0 && ref[i] == ':' {
		return ref[i+1:]
	}
	return "latest"
}

// tarDir writes the files under dir to w as a tar, sorted, with fixed
// times and owners.
func tarDir(w io.Writer, dir string, mtime time.Time) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		names = append(names, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		return err
	}
	slices.Sort(names)
	tw := tar.NewWriter(w)
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		h := &tar.Header{Name: n, ModTime: mtime, Format: tar.FormatPAX, Mode: 0o644, Typeflag: tar.TypeReg, Size: fi.Size()}
		if fi.IsDir() {
			h.Name, h.Mode, h.Typeflag, h.Size = n+"/", 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.IsDir() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "oci:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fl := flag.NewFlagSet("oci", flag.ContinueOnError)
	var (
		name       = fl.String("name", "", "image reference containerd imports it under, e.g. localhost/switchyard:local")
		out        = fl.String("out", "", "the OCI image layout tarball to write")
		entrypoint = fl.String("entrypoint", "", "entrypoint, words separated by spaces")
		cmd        = fl.String("cmd", "", "cmd, words separated by spaces")
		user       = fl.String("user", "65532:65532", "uid:gid the image runs as")
		arch       = fl.String("arch", runtime.GOARCH, "architecture of the binaries")
		epoch      = fl.Int64("epoch", defaultEpoch(), "every timestamp in the image, seconds since 1970 (default $SOURCE_DATE_EPOCH, else 0)")
		files      listFlag
		env        listFlag
		labels     listFlag
	)
	fl.Var(&files, "file", "PATH=SRC[:MODE]: copy SRC to PATH in the image (MODE octal, default 0755); repeatable")
	fl.Var(&env, "env", "KEY=VALUE of the config; repeatable")
	fl.Var(&labels, "label", "KEY=VALUE label; repeatable")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *out == "" || fl.NArg() > 0 {
		return errors.New("usage: oci -name REF -out FILE.tar -entrypoint CMD [-file PATH=SRC[:MODE]]... (see -h)")
	}
	s := Spec{
		Name:       *name,
		Entrypoint: strings.Fields(*entrypoint),
		Cmd:        strings.Fields(*cmd),
		Env:        env,
		Labels:     map[string]string{},
		Arch:       *arch,
		Created:    time.Unix(*epoch, 0).UTC(),
	}
	uid, gid, ok := strings.Cut(*user, ":")
	var err1, err2 error
	s.UID, err1 = strconv.Atoi(uid)
	s.GID, err2 = strconv.Atoi(gid)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("-user %q: want uid:gid", *user)
	}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("-label %q: want KEY=VALUE", l)
		}
		s.Labels[k] = v
	}
	for _, f := range files {
		dst, src, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("-file %q: want PATH=SRC[:MODE]", f)
		}
		mode := int64(0o755)
		if i := strings.LastIndexByte(src, ':'); i >= 0 {
			m, err := strconv.ParseInt(src[i+1:], 8, 32)
			if err != nil {
				return fmt.Errorf("-file %q: mode: %v", f, err)
			}
			src, mode = src[:i], m
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		s.Files = append(s.Files, File{Path: dst, Mode: mode, Data: data})
	}
	img, err := Image(s)
	if err != nil {
		return fmt.Errorf("image %s: %w", s.Name, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := WriteLayout(f, img, s.Name, s.Arch, s.Created); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("layout %s: %w", *out, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s %s\n", s.Name, digest)
	return err
}

func defaultEpoch() int64 {
	if v, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64); err == nil {
		return v
	}
	return 0
}
