package train

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Replacing a checkpoint. A checkpoint directory is never written in
// place: it is assembled in <dir>.tmp, and replaceDir then makes it appear
// as <dir> so that at every instant, and after a crash at any point, a
// complete checkpoint (the old or the new) can be loaded:
//
//   - <dir> does not exist: rename <dir>.tmp to <dir>.
//   - <dir> exists, on Linux: exchange <dir>.tmp and <dir> in one atomic
//     renameat2(RENAME_EXCHANGE), so <dir> itself holds the old checkpoint
//     until the exchange and the new one after it; then remove <dir>.tmp
//     (now the old one).
//   - <dir> exists, elsewhere or where the filesystem refuses the exchange:
//     rename <dir> to <dir>.old, <dir>.tmp to <dir>, and remove <dir>.old.
//     Between the two renames <dir> is missing and <dir>.old holds the
//     complete old checkpoint: LatestCheckpoint returns it then, and the
//     next replacement of <dir> keeps it until the new one is in place.
//
// Only complete checkpoints are ever renamed to <dir> or <dir>.old, so
// whatever carries one of those names is complete. The parent directory is
// fsynced after each rename.

// Steps of replaceDir, as passed to swapHooks.after.
const (
	stepSealed    = "sealed"      // <dir>.tmp complete and fsynced, nothing renamed yet
	stepExchanged = "exchanged"   // <dir> and <dir>.tmp swapped
	stepSetAside  = "set aside"   // <dir> renamed to <dir>.old
	stepRenamed   = "renamed"     // <dir>.tmp renamed to <dir>
	stepRemoved   = "removed old" // the old checkpoint removed
)

// swapHooks lets tests drive replaceDir. The zero value is what
// checkpoints use.
type swapHooks struct {
	// noExchange takes the rename-aside path even where an atomic exchange
	// is available.
	noExchange bool
	// after, if set, is called after each step; an error stops replaceDir
	// right there and is returned, leaving the directories as a crash at
	// that point would.
	after func(step string) error
}

func (h swapHooks) step(name string) error {
	if h.after == nil {
		return nil
	}
	return h.after(name)
}

// oldDir is where replaceDir sets the previous checkpoint of dir aside.
func oldDir(dir string) string { return dir + ".old" }

// replaceDir makes the complete, fsynced directory tmp appear as dir (see
// above).
func replaceDir(tmp, dir string, h swapHooks) error {
	if err := h.step(stepSealed); err != nil {
		return err
	}
	parent := filepath.Dir(dir)
	old := oldDir(dir)
	_, err := os.Lstat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Nothing under the name, perhaps after a crash between the renames
		// of an earlier replacement: <dir>.old (if any) stays until the new
		// checkpoint is in place.
		if err := os.Rename(tmp, dir); err != nil {
			return fmt.Errorf("train: checkpoint: %w", err)
		}
		if err := syncDir(parent); err != nil {
			return err
		}
		if err := h.step(stepRenamed); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("train: checkpoint: %w", err)
	default:
		// <dir> is complete: a stale <dir>.old from an earlier crash goes.
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("train: checkpoint: %w", err)
		}
		if !h.noExchange && exchangeDirs(tmp, dir) == nil {
			if err := syncDir(parent); err != nil {
				return err
			}
			if err := h.step(stepExchanged); err != nil {
				return err
			}
			old = tmp // the exchange left the old checkpoint there
			break
		}
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("train: checkpoint: %w", err)
		}
		if err := syncDir(parent); err != nil {
			return err
		}
		if err := h.step(stepSetAside); err != nil {
			return err
		}
		if err := os.Rename(tmp, dir); err != nil {
			return fmt.Errorf("train: checkpoint: %w", err)
		}
		if err := syncDir(parent); err != nil {
			return err
		}
		if err := h.step(stepRenamed); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("train: checkpoint: remove the replaced checkpoint: %w", err)
	}
	return h.step(stepRemoved)
}
