package safetensors

import (
	"errors"
	"strconv"
	"strings"
)

// Sentinel errors, for use with errors.Is. Every error this package returns
// is an *Error (or a join of several) wrapping one of them, or only an
// underlying I/O error.
var (
	// ErrCorrupt: a file, header or index breaks the format or is
	// inconsistent (bad JSON, duplicate names, offsets that do not match the
	// shape, holes, overlaps, truncation, a shard missing from a set).
	ErrCorrupt = errors.New("corrupt safetensors data")
	// ErrNotFound: no tensor of that name.
	ErrNotFound = errors.New("tensor not found")
	// ErrDType: the tensor's dtype cannot be read by the accessor used (e.g.
	// BF16 on an F32 tensor), or a tensor given to the writer has an unknown
	// dtype.
	ErrDType = errors.New("unsupported dtype")
	// ErrShape: the tensor's shape differs from the one the caller expects,
	// a destination buffer has the wrong length, or a tensor given to the
	// writer has data that does not match its shape.
	ErrShape = errors.New("shape mismatch")
	// ErrInvalid: an argument to the writer is invalid: an empty, reserved,
	// duplicate or non-UTF-8 name, or a bad shard size.
	ErrInvalid = errors.New("invalid argument")
)

// Error describes one failure, with the file and tensor it concerns.
// Its message reads
//
//	safetensors: <file>: tensor "<name>": <what went wrong>: <cause>
//
// leaving out the parts that are empty.
type Error struct {
	File   string // path of the file, index or folder concerned; "" if none
	Tensor string // tensor name; "" if the problem is not about one tensor
	Kind   error  // a sentinel (ErrCorrupt, ErrNotFound, ...) or nil
	Msg    string // what went wrong
	Err    error  // underlying cause (I/O or JSON error), or nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("safetensors: ")
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	if e.Tensor != "" || e.Kind == ErrNotFound {
		b.WriteString("tensor ")
		b.WriteString(strconv.Quote(e.Tensor))
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the sentinel kind and the underlying cause, so errors.Is
// matches either (e.g. ErrCorrupt and fs.ErrNotExist for a missing shard).
func (e *Error) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

func newErr(kind error, file, tensor string, cause error, msg string) *Error {
	return &Error{File: file, Tensor: tensor, Kind: kind, Msg: msg, Err: cause}
}
