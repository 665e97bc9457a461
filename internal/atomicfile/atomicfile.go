// Package atomicfile replaces a file so that readers see the old content or
// the new, never a part: the new content goes to a temporary file in the
// same folder, is fsynced, and is renamed over the path; the folder is then
// fsynced so the rename is durable.
package atomicfile

import (
	"io"
	"os"
	"path/filepath"
)

// Write writes path through fill with permissions perm. On any error the
// temporary file is removed and path is left as it was. File systems that
// cannot sync a folder are tolerated (the file is complete either way).
func Write(path string, perm os.FileMode, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = fill(f); err != nil {
		return err
	}
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
