// Package dataroot confines the paths a training job names to a worker's
// data root. A job spec comes from etcd, which anyone who can write the
// cluster's keys controls, so a worker treats every path in it (text,
// tokenizer, model to fine-tune, output directory, ...) as untrusted:
// Resolve maps it to a real path inside the worker's data root or refuses
// it, and the worker reads and writes only the path Resolve returned.
// Cover goes the other way for a local cluster: the narrowest root that
// holds a given set of paths.
package dataroot

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrOutside is wrapped by Resolve's errors for a path that lies outside
// the data root (lexically, or once symbolic links are followed).
var ErrOutside = errors.New("outside the data root")

// Resolve returns the real path that p names under the data root root.
//
// A relative p is joined to root; an absolute p is taken as it is. The
// result is cleaned (filepath.Clean) and its symbolic links are resolved
// (filepath.EvalSymlinks): for a path that does not exist yet, such as an
// output directory, those of its nearest existing ancestor, the rest being
// appended. The resolved path must be root (itself resolved the same way)
// or lie below it, else the error names p, where it leads and the root and
// wraps ErrOutside. So `..` escapes, absolute paths elsewhere and links
// that point out of the root are all refused, whatever their spelling.
//
// An empty p or root, a NUL byte in either, a root that is not an existing
// directory, and a missing ancestor that is a dangling symbolic link (it
// would be followed when the path is created) are errors too.
//
// Resolve checks the filesystem as it is now: it guards against what a
// job spec names, not against a process that rewrites links inside the
// root between the check and the use.
func Resolve(root, p string) (string, error) {
	if root == "" {
		return "", errors.New("dataroot: no data root given")
	}
	if p == "" {
		return "", fmt.Errorf("dataroot: empty path (data root %s)", root)
	}
	if strings.IndexByte(root, 0) >= 0 {
		return "", fmt.Errorf("dataroot: data root %q contains a NUL byte", root)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("dataroot: path %q contains a NUL byte (data root %s)", p, root)
	}
	realRoot, err := resolveRoot(root)
	if err != nil {
		return "", err
	}
	abs := filepath.Clean(p)
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(realRoot, abs)
	}
	real, err := evalExisting(abs)
	if err != nil {
		return "", fmt.Errorf("dataroot: path %q (data root %s): %w", p, root, err)
	}
	if !within(realRoot, real) {
		return "", fmt.Errorf("dataroot: path %q resolves to %s, %w %s", p, real, ErrOutside, realRoot)
	}
	return real, nil
}

// resolveRoot returns root absolute, cleaned, with its links resolved; it
// must be an existing directory.
func resolveRoot(root string) (string, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", fmt.Errorf("dataroot: data root %s: %w", root, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("dataroot: data root %s: %w", root, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("dataroot: data root %s: %w", root, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("dataroot: data root %s is not a directory", root)
	}
	return real, nil
}

// evalExisting resolves the links of abs (absolute and clean), or, if abs
// does not exist, those of its nearest existing ancestor with the missing
// components appended.
func evalExisting(abs string) (string, error) {
	cur, rest := abs, ""
	for {
		real, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		// cur is missing, or is a link whose target is: creating the path
		// would follow such a link wherever it points, so refuse it.
		if _, lerr := os.Lstat(cur); lerr == nil {
			return "", fmt.Errorf("%s is a symbolic link to a missing target", cur)
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return "", err
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// within reports whether p is root or lies below it (both absolute and
// clean).
func within(root, p string) bool {
	if p == root {
		return true
	}
	if !strings.HasSuffix(root, string(filepath.Separator)) {
		root += string(filepath.Separator)
	}
	return strings.HasPrefix(p, root)
}

// Cover returns the deepest directory that holds every one of paths once
// their symbolic links are resolved (a directory itself, a file's folder),
// and each path relative to it, in order: the narrowest data root for
// workers that must reach exactly these paths, and what to submit for
// them. Every path must exist.
func Cover(paths ...string) (root string, rel []string, err error) {
	if len(paths) == 0 {
		return "", nil, errors.New("dataroot: no paths to cover")
	}
	real := make([]string, len(paths))
	for i, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", nil, fmt.Errorf("dataroot: %s: %w", p, err)
		}
		if real[i], err = filepath.EvalSymlinks(abs); err != nil {
			return "", nil, fmt.Errorf("dataroot: %w", err)
		}
		fi, err := os.Stat(real[i])
		if err != nil {
			return "", nil, fmt.Errorf("dataroot: %w", err)
		}
		dir := real[i]
		if !fi.IsDir() {
			dir = filepath.Dir(dir)
		}
		if i == 0 {
			root = dir
		}
		for !within(root, dir) {
			root = filepath.Dir(root)
		}
	}
	rel = make([]string, len(paths))
	for i, r := range real {
		if rel[i], err = filepath.Rel(root, r); err != nil {
			return "", nil, fmt.Errorf("dataroot: %w", err)
		}
	}
	return root, rel, nil
}
