//go:build !linux

package train

import "errors"

// exchangeDirs is not available here: the caller falls back to two
// renames (see replaceDir).
func exchangeDirs(a, b string) error {
	return errors.New("train: no atomic directory exchange on this system")
}
