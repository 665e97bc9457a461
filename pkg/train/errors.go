package train

import (
	"errors"
	"io/fs"
	"syscall"
)

// ErrPermanent marks an error that retrying cannot cure (see Permanent).
// Wrap it (fmt.Errorf("...: %w", train.ErrPermanent)) or use
// MarkPermanent.
var ErrPermanent = errors.New("permanent error")

// permanentErrnos are the system errors that do not go away by retrying
// the same operation on the same paths: a full disk (ENOSPC) or quota
// (EDQUOT), a read-only file system (EROFS), missing permission (EACCES,
// EPERM).
var permanentErrnos = []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EACCES, syscall.EPERM}

// Permanent reports whether err cannot go away by retrying: it wraps
// ErrPermanent (see MarkPermanent) or one of the errnos ENOSPC, EDQUOT,
// EROFS, EACCES, EPERM (also through *fs.PathError, *os.LinkError,
// *os.SyscallError and any %w chain, as the checkpoint writer's errors
// keep them), or fs.ErrPermission. Permanent(nil) is false.
//
// A job runner uses it to fail a job at once instead of re-forming it
// from its last checkpoint only to hit the same error again.
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrPermanent) || errors.Is(err, fs.ErrPermission) {
		return true
	}
	for _, e := range permanentErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// MarkPermanent returns err marked permanent: its message is err's, and
// errors.Is finds both err's chain and ErrPermanent in it, so Permanent
// reports true. MarkPermanent(nil) is nil.
func MarkPermanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() []error { return []error{e.err, ErrPermanent} }
