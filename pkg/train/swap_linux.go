package train

import "golang.org/x/sys/unix"

// exchangeDirs atomically swaps the directories a and b (renameat2 with
// RENAME_EXCHANGE). It fails where the kernel or filesystem does not
// support it; the caller then falls back to two renames.
func exchangeDirs(a, b string) error {
	return unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE)
}
