package embedetcd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Temporary data directories (Config.Dir empty) live under one parent,
// TempParent(), one subdirectory per running server:
//
//	$TMPDIR/switchyard-etcd/etcd-<random>/lock   flock'ed (LOCK_EX) for the server's life
//	$TMPDIR/switchyard-etcd/etcd-<random>/data   etcd's data directory
//
// Close removes the server's own subdirectory. A process killed without
// Close (SIGKILL, a crash) leaves its subdirectory behind, but the kernel
// drops its flock; every Start of a server with temporary data then removes
// each sibling subdirectory whose lock it can take, and never one whose lock
// is held. The lock file is opened close-on-exec, so child processes
// (workers) do not keep it.
//
// A subdirectory is removed only by whoever holds its lock. A new server
// creates its subdirectory, then opens (creating if needed) and locks the
// lock file, and finally checks the lock file it holds is still the one at
// the path; if a concurrent Start took the lock first and removed the
// subdirectory, the new server makes another one.

// tempParentName is the name of the parent under os.TempDir().
const tempParentName = "switchyard-etcd"

// tempPrefix starts the name of every per-server subdirectory.
const tempPrefix = "etcd-"

const lockName = "lock"

// TempParent is the directory holding the temporary data directories of
// embedded servers started with an empty Config.Dir:
// filepath.Join(os.TempDir(), "switchyard-etcd"). os.TempDir honours
// $TMPDIR.
func TempParent() string { return filepath.Join(os.TempDir(), tempParentName) }

// tempDir is one server's locked temporary directory.
type tempDir struct {
	root string   // <parent>/etcd-XXXX; removed by release
	data string   // root/data, etcd's Dir
	lock *os.File // root/lock, flock'ed
}

// release removes the directory (still holding the lock, so no other
// process reclaims it half-removed) and then drops the lock.
func (d *tempDir) release() {
	if d == nil {
		return
	}
	os.RemoveAll(d.root)
	d.lock.Close()
}

// newTempDir reclaims dead servers' directories under TempParent and makes
// a locked one for this server. It returns the paths it reclaimed.
func newTempDir() (*tempDir, []string, error) {
	parent := TempParent()
	if err := ensureParent(parent); err != nil {
		return nil, nil, err
	}
	reclaimed := reclaim(parent)
	var lastErr error
	for range 5 {
		root, err := os.MkdirTemp(parent, tempPrefix)
		if err != nil {
			return nil, reclaimed, err
		}
		f, ok, err := lockDir(root)
		if err != nil {
			os.RemoveAll(root)
			return nil, reclaimed, err
		}
		if !ok {
			// Another Start's reclaim holds it and removes it.
			lastErr = fmt.Errorf("%s was reclaimed while being created", root)
			continue
		}
		d := &tempDir{root: root, data: filepath.Join(root, "data"), lock: f}
		if err := os.Mkdir(d.data, 0o700); err != nil {
			d.release()
			return nil, reclaimed, err
		}
		return d, reclaimed, nil
	}
	return nil, reclaimed, lastErr
}

// ensureParent creates parent (mode 0700) and checks it is a real
// directory owned by this user, not a symlink planted by someone else.
func ensureParent(parent string) error {
	if err := os.Mkdir(parent, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(parent)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", parent)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d, not to this user (%d)", parent, st.Uid, os.Geteuid())
	}
	return nil
}

// lockDir opens (creating if needed) root/lock and tries to take its flock
// without waiting. ok is false when another holds the lock or root (or
// its lock file) was removed or replaced meanwhile; f is then nil.
func lockDir(root string) (f *os.File, ok bool, err error) {
	path := filepath.Join(root, lockName)
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil // root is gone
		}
		return nil, false, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("flock %s: %w", path, err)
	}
	// Is the file we locked still the one at path? A reclaimer may have
	// removed root between our open and our flock.
	fst, err1 := f.Stat()
	pst, err2 := os.Stat(path)
	if err1 != nil || err2 != nil || !os.SameFile(fst, pst) {
		f.Close()
		return nil, false, nil
	}
	return f, true, nil
}

// reclaim removes every subdirectory of parent named etcd-* whose lock can
// be taken (its server died without Close), and returns their paths.
// Errors are skipped: reclaiming is best effort.
func reclaim(parent string) []string {
	ents, err := os.ReadDir(parent)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		root := filepath.Join(parent, e.Name())
		f, ok, err := lockDir(root)
		if err != nil || !ok {
			continue // held by a live server, or gone
		}
		if os.RemoveAll(root) == nil {
			removed = append(removed, root)
		}
		f.Close()
	}
	return removed
}
