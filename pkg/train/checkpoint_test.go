package train

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestPermanent(t *testing.T) {
	pe := func(errno syscall.Errno) error {
		return fmt.Errorf("train: checkpoint: %w", &fs.PathError{Op: "write", Path: "/x/f", Err: errno})
	}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("connection reset"), false},
		{pe(syscall.ECONNRESET), false},
		{pe(syscall.EIO), false},
		{pe(syscall.ENOSPC), true},
		{pe(syscall.EDQUOT), true},
		{pe(syscall.EROFS), true},
		{pe(syscall.EACCES), true},
		{pe(syscall.EPERM), true},
		{&os.LinkError{Op: "rename", Old: "a", New: "b", Err: syscall.EROFS}, true},
		{os.NewSyscallError("fsync", syscall.ENOSPC), true},
		{fs.ErrPermission, true},
		{ErrPermanent, true},
		{fmt.Errorf("job: %w", ErrPermanent), true},
		{MarkPermanent(errors.New("bad config")), true},
		{fmt.Errorf("wrapped: %w", MarkPermanent(errors.New("bad config"))), true},
	} {
		if got := Permanent(c.err); got != c.want {
			t.Errorf("Permanent(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	if MarkPermanent(nil) != nil {
		t.Error("MarkPermanent(nil) != nil")
	}
	base := pe(syscall.EIO)
	m := MarkPermanent(base)
	if m.Error() != base.Error() || !errors.Is(m, syscall.EIO) {
		t.Errorf("MarkPermanent lost the cause: %v", m)
	}
}

// mountTmpfs mounts a tmpfs of size bytes (extra options opts) on a new
// directory and unmounts it at cleanup; it skips unless root may mount.
func mountTmpfs(t *testing.T, opts string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// TestCheckpointErrorsArePermanent: a full disk and a read-only file
// system fail a checkpoint with an error that Permanent recognizes and
// that names the file.
func TestCheckpointErrorsArePermanent(t *testing.T) {
	vs := newVersions(t)
	for _, c := range []struct {
		name, opts string
		errno      syscall.Errno
	}{
		{"full", "size=64k", syscall.ENOSPC},
		{"read-only", "ro,size=64k", syscall.EROFS},
	} {
		t.Run(c.name, func(t *testing.T) {
			mnt := mountTmpfs(t, c.opts)
			dir := CheckpointDir(mnt, 3)
			err := WriteCheckpoint(dir, vs.ck)
			if err == nil {
				t.Fatal("checkpoint written")
			}
			t.Logf("error: %v", err)
			if !Permanent(err) || !errors.Is(err, c.errno) {
				t.Errorf("Permanent(%v) = %v, errors.Is %v = %v", err, Permanent(err), c.errno, errors.Is(err, c.errno))
			}
			if !strings.Contains(err.Error(), dir+".tmp") {
				t.Errorf("error %q does not name the file (under %s.tmp)", err, dir)
			}
		})
	}
	t.Run("not-writable", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root ignores file modes")
		}
		out := t.TempDir()
		if err := os.Chmod(out, 0o500); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(out, 0o700)
		err := WriteCheckpoint(CheckpointDir(out, 3), vs.ck)
		if !Permanent(err) || !strings.Contains(fmt.Sprint(err), out) {
			t.Errorf("error %v: Permanent %v", err, Permanent(err))
		}
	})
}

// TestRemoveStaleCheckpointTemps: unfinished checkpoints are removed at
// the start of a run, nothing else is, and a resume still finds the
// complete checkpoint.
func TestRemoveStaleCheckpointTemps(t *testing.T) {
	vs := newVersions(t)
	out := t.TempDir()
	good := CheckpointDir(out, 7)
	if err := vs.write(good, 1, swapHooks{}); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of writing checkpoints 9 and 12.
	var stale []string
	for _, step := range []int{9, 12} {
		tmp, err := BeginCheckpoint(CheckpointDir(out, step))
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteDense(tmp, vs.ck); err != nil {
			t.Fatal(err)
		}
		stale = append(stale, tmp)
	}
	// Look-alikes that are not ours to remove.
	keep := []string{"checkpoint-x.tmp", "checkpoint-.tmp", "notes.tmp", "checkpoint-0000009.tmp.bak"}
	for _, name := range keep {
		if err := os.Mkdir(filepath.Join(out, name), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(out, "checkpoint-0000010.tmp"), nil, 0o644); err != nil { // a file, not a folder
		t.Fatal(err)
	}
	keep = append(keep, "checkpoint-0000010.tmp", filepath.Base(good))

	cfg := smallJob(t, out, 2)
	cfg.Resume = true
	var logs []string
	p, err := Prepare(cfg, func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) })
	if err != nil {
		t.Fatal(err)
	}
	if p.ResumeDir != good {
		t.Errorf("resuming from %q, want %s", p.ResumeDir, good)
	}
	for _, tmp := range stale {
		if _, err := os.Stat(tmp); !os.IsNotExist(err) {
			t.Errorf("%s not removed (%v)", tmp, err)
		}
		if !slices.ContainsFunc(logs, func(l string) bool { return strings.Contains(l, tmp) }) {
			t.Errorf("removal of %s not logged: %q", tmp, logs)
		}
	}
	for _, name := range keep {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Errorf("%s was removed: %v", name, err)
		}
	}
	if got, err := RemoveStaleCheckpointTemps(out); err != nil || len(got) != 0 {
		t.Errorf("second pass: %v %v", got, err)
	}
	if got, err := RemoveStaleCheckpointTemps(filepath.Join(out, "missing")); err != nil || got != nil {
		t.Errorf("missing out: %v %v", got, err)
	}
}
