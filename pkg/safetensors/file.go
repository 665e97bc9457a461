package safetensors

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// Reader is the read API shared by *File (one file) and *Set (a model
// folder), for code that loads weights from either.
//
// Typed accessors come in two forms: X(name, wantShape...) allocates and
// returns a new slice owned by the caller; ReadX(name, dst, wantShape...)
// fills dst, whose length must equal the tensor's element count, and
// allocates nothing of the tensor's size. When wantShape is given, a tensor
// of any other shape is an ErrShape error (a scalar's empty shape cannot be
// asked for this way: pass no shape and check Info). A dtype the accessor
// does not read is an ErrDType error; an unknown name is ErrNotFound.
type Reader interface {
	// Names returns the tensor names, sorted, in a new slice.
	Names() []string
	// Has reports whether a tensor of that name exists.
	Has(name string) bool
	// Info describes one tensor.
	Info(name string) (TensorInfo, error)
	// Raw returns the tensor's bytes as stored (little-endian), in a new
	// slice the caller owns.
	Raw(name string) ([]byte, error)
	// ReadRaw reads the tensor's bytes into dst; len(dst) must be its size.
	ReadRaw(name string, dst []byte) error
	// Float32 reads an F32, BF16, F16, F64, F8_E4M3 or F8_E5M2 tensor as
	// float32 (F64 is rounded; the others convert exactly). F8 tensors are
	// returned as stored: any block scales are the caller's to apply.
	Float32(name string, wantShape ...int) ([]float32, error)
	ReadFloat32(name string, dst []float32, wantShape ...int) error
	// BF16 reads a BF16 tensor as raw bfloat16 bits.
	BF16(name string, wantShape ...int) ([]uint16, error)
	ReadBF16(name string, dst []uint16, wantShape ...int) error
	// Int64 reads an I64, I32, I16, I8, U32, U16 or U8 tensor as int64.
	Int64(name string, wantShape ...int) ([]int64, error)
	ReadInt64(name string, dst []int64, wantShape ...int) error
	// Close releases the open files. Reads must not run concurrently with
	// or after Close.
	Close() error
}

var (
	_ Reader = (*File)(nil)
	_ Reader = (*Set)(nil)
)

// TensorInfo describes one stored tensor.
type TensorInfo struct {
	Name   string
	DType  DType
	Shape  []int  // row-major dimensions; a copy the caller owns; empty for a scalar
	File   string // path of the file holding the tensor
	Offset int64  // absolute offset of the tensor's first byte in File, in bytes
	Size   int64  // length of the tensor's data, in bytes
}

// NumElements returns the number of elements (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	if s := t.DType.Size(); s > 0 {
		return t.Size / int64(s)
	}
	return 0
}

// File is one open safetensors file. Open parses and validates the header;
// tensor data is read on demand with ReadAt (pread), one tensor at a time,
// and the file is never read or mapped as a whole. All methods are safe for
// concurrent use, except Close, which must not race with reads.
type File struct {
	path    string
	r       io.ReaderAt
	closer  io.Closer // the *os.File that Open opened; nil for NewFile
	size    int64     // file size, bytes
	dataOff int64     // absolute offset of the data buffer: 8 + header length, bytes
	meta    map[string]string
	entries map[string]*entry
	names   []string // sorted
}

// Open opens the safetensors file at path, reads and validates its header
// and keeps the file open for reads until Close.
func Open(path string) (*File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, newErr(nil, path, "", ioCause(err), "cannot open")
	}
	st, err := fh.Stat()
	if err != nil {
		fh.Close()
		return nil, newErr(nil, path, "", ioCause(err), "cannot stat")
	}
	if st.IsDir() {
		fh.Close()
		return nil, newErr(nil, path, "", nil, "is a directory, not a safetensors file (use OpenDir)")
	}
	f, err := NewFile(fh, st.Size(), path)
	if err != nil {
		fh.Close()
		return nil, err
	}
	f.closer = fh
	return f, nil
}

// NewFile reads and validates the header of a safetensors file of size
// bytes held by r; name is used as the path in TensorInfo and in error
// messages. It reads only the 8-byte length and the header; tensor data is
// read later, with ReadAt, by the accessors. r must stay valid and
// unchanged while the File is used, and is not closed by Close.
func NewFile(r io.ReaderAt, size int64, name string) (*File, error) {
	f := &File{path: name, r: r, size: size}
	if size < 8 {
		return nil, newErr(ErrCorrupt, name, "", nil, fmt.Sprintf("file is %d bytes, too short for the 8-byte header length (truncated file?)", size))
	}
	var lb [8]byte
	if err := f.readAt("", lb[:], 0); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint64(lb[:])
	switch {
	case n > uint64(size-8):
		return nil, newErr(ErrCorrupt, name, "", nil, fmt.Sprintf("header length %d bytes exceeds the %d bytes after the length field (truncated file?)", n, size-8))
	case n > MaxHeaderSize:
		return nil, newErr(ErrCorrupt, name, "", nil, fmt.Sprintf("header length %d bytes exceeds the %d-byte limit", n, MaxHeaderSize))
	}
	hdr := make([]byte, n) // n <= size-8 and <= MaxHeaderSize: bounded by the file itself
	if err := f.readAt("", hdr, 8); err != nil {
		return nil, err
	}
	f.dataOff = 8 + int64(n)
	h, err := parseHeader(name, hdr, size-f.dataOff)
	if err != nil {
		return nil, err
	}
	f.meta, f.entries = h.meta, h.entries
	f.names = make([]string, 0, len(h.entries))
	for name := range h.entries {
		f.names = append(f.names, name)
	}
	sort.Strings(f.names)
	return f, nil
}

// Path returns the path (or name) the file was opened with.
func (f *File) Path() string { return f.path }

// Metadata returns a copy of the header's __metadata__ map (nil if absent).
func (f *File) Metadata() map[string]string {
	return maps.Clone(f.meta)
}

// Close closes the file if Open opened it.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	if err := f.closer.Close(); err != nil {
		return newErr(nil, f.path, "", ioCause(err), "close")
	}
	return nil
}

// Names implements Reader.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Has implements Reader.
func (f *File) Has(name string) bool { return f.entries[name] != nil }

// Info implements Reader.
func (f *File) Info(name string) (TensorInfo, error) {
	e, err := f.lookup(name)
	if err != nil {
		return TensorInfo{}, err
	}
	return f.info(e), nil
}

func (f *File) info(e *entry) TensorInfo {
	return TensorInfo{
		Name:   e.name,
		DType:  e.dtype,
		Shape:  slices.Clone(e.shape),
		File:   f.path,
		Offset: f.dataOff + e.begin,
		Size:   e.end - e.begin,
	}
}

// Raw implements Reader.
func (f *File) Raw(name string) ([]byte, error) {
	e, err := f.lookup(name)
	if err != nil {
		return nil, err
	}
	dst := make([]byte, e.end-e.begin)
	if err := f.readAt(e.name, dst, f.dataOff+e.begin); err != nil {
		return nil, err
	}
	return dst, nil
}

// ReadRaw implements Reader.
func (f *File) ReadRaw(name string, dst []byte) error {
	e, err := f.lookup(name)
	if err != nil {
		return err
	}
	if int64(len(dst)) != e.end-e.begin {
		return newErr(ErrShape, f.path, name, nil, fmt.Sprintf("destination is %d bytes, tensor holds %d", len(dst), e.end-e.begin))
	}
	return f.readAt(e.name, dst, f.dataOff+e.begin)
}

func isFloat(d DType) bool {
	switch d {
	case F32, BF16, F16, F64, F8_E4M3, F8_E5M2:
		return true
	}
	return false
}

// floatDTypes names the dtypes Float32 reads, for error messages.
const floatDTypes = "F32, BF16, F16, F64, F8_E4M3 or F8_E5M2"

func isBF16(d DType) bool { return d == BF16 }
func isInt(d DType) bool {
	switch d {
	case I64, I32, I16, I8, U32, U16, U8:
		return true
	}
	return false
}

// Float32 implements Reader.
func (f *File) Float32(name string, wantShape ...int) ([]float32, error) {
	e, err := f.check(name, isFloat, floatDTypes, wantShape)
	if err != nil {
		return nil, err
	}
	dst := make([]float32, e.numel())
	if err := f.readFloat32(e, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// ReadFloat32 implements Reader.
func (f *File) ReadFloat32(name string, dst []float32, wantShape ...int) error {
	e, err := f.check(name, isFloat, floatDTypes, wantShape)
	if err != nil {
		return err
	}
	if err := f.checkLen(e, len(dst)); err != nil {
		return err
	}
	return f.readFloat32(e, dst)
}

// BF16 implements Reader.
func (f *File) BF16(name string, wantShape ...int) ([]uint16, error) {
	e, err := f.check(name, isBF16, "BF16", wantShape)
	if err != nil {
		return nil, err
	}
	dst := make([]uint16, e.numel())
	if err := f.readBF16(e, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// ReadBF16 implements Reader.
func (f *File) ReadBF16(name string, dst []uint16, wantShape ...int) error {
	e, err := f.check(name, isBF16, "BF16", wantShape)
	if err != nil {
		return err
	}
	if err := f.checkLen(e, len(dst)); err != nil {
		return err
	}
	return f.readBF16(e, dst)
}

// Int64 implements Reader.
func (f *File) Int64(name string, wantShape ...int) ([]int64, error) {
	e, err := f.check(name, isInt, "I64, I32, I16, I8, U32, U16 or U8", wantShape)
	if err != nil {
		return nil, err
	}
	dst := make([]int64, e.numel())
	if err := f.readInt64(e, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// ReadInt64 implements Reader.
func (f *File) ReadInt64(name string, dst []int64, wantShape ...int) error {
	e, err := f.check(name, isInt, "I64, I32, I16, I8, U32, U16 or U8", wantShape)
	if err != nil {
		return err
	}
	if err := f.checkLen(e, len(dst)); err != nil {
		return err
	}
	return f.readInt64(e, dst)
}

func (f *File) lookup(name string) (*entry, error) {
	e := f.entries[name]
	if e == nil {
		return nil, newErr(ErrNotFound, f.path, name, nil, "not found")
	}
	return e, nil
}

// check looks name up and checks its dtype against ok and its shape
// against wantShape (when given).
func (f *File) check(name string, ok func(DType) bool, want string, wantShape []int) (*entry, error) {
	e, err := f.lookup(name)
	if err != nil {
		return nil, err
	}
	if !ok(e.dtype) {
		return nil, newErr(ErrDType, f.path, name, nil, fmt.Sprintf("dtype %s, want %s", e.dtype, want))
	}
	if len(wantShape) > 0 && !slices.Equal(e.shape, wantShape) {
		return nil, newErr(ErrShape, f.path, name, nil, fmt.Sprintf("shape %s, want %s", fmtShape(e.shape), fmtShape(wantShape)))
	}
	return e, nil
}

func (f *File) checkLen(e *entry, n int) error {
	if int64(n) != e.numel() {
		return newErr(ErrShape, f.path, e.name, nil, fmt.Sprintf("destination holds %d elements, tensor of shape %s has %d", n, fmtShape(e.shape), e.numel()))
	}
	return nil
}

// readAt reads exactly len(p) bytes at absolute offset off.
func (f *File) readAt(tensor string, p []byte, off int64) error {
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return newErr(ErrCorrupt, f.path, tensor, err, fmt.Sprintf("file ends before byte %d (truncated, or changed after it was opened?)", off+int64(len(p))))
	}
	return newErr(nil, f.path, tensor, ioCause(err), fmt.Sprintf("reading bytes [%d,%d)", off, off+int64(len(p))))
}

// chunkBytes is the size of the scratch buffer typed reads decode through,
// in bytes; a multiple of every element size.
const chunkBytes = 256 << 10

type scratch struct {
	b []byte   // raw bytes, chunkBytes long
	u []uint16 // decoded 16-bit values, chunkBytes/2 long
}

var scratchPool = sync.Pool{New: func() any {
	return &scratch{b: make([]byte, chunkBytes), u: make([]uint16, chunkBytes/2)}
}}

// readChunks reads e's data in pieces of at most chunkBytes bytes into
// sc.b and calls fn with each piece and the index of its first element.
func (f *File) readChunks(e *entry, sc *scratch, fn func(b []byte, first int)) error {
	size := int64(e.dtype.Size())
	total := e.end - e.begin
	for done := int64(0); done < total; {
		k := min(int64(chunkBytes), total-done)
		if err := f.readAt(e.name, sc.b[:k], f.dataOff+e.begin+done); err != nil {
			return err
		}
		fn(sc.b[:k], int(done/size))
		done += k
	}
	return nil
}

var le = binary.LittleEndian

func (f *File) readFloat32(e *entry, dst []float32) error {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	switch e.dtype {
	case F32:
		return f.readChunks(e, sc, func(b []byte, first int) {
			d := dst[first : first+len(b)/4]
			for i := range d {
				d[i] = math.Float32frombits(le.Uint32(b[4*i:]))
			}
		})
	case BF16:
		return f.readChunks(e, sc, func(b []byte, first int) {
			u := sc.u[:len(b)/2]
			for i := range u {
				u[i] = le.Uint16(b[2*i:])
			}
			tensor.BF16ToF32(dst[first:first+len(u)], u)
		})
	case F16:
		return f.readChunks(e, sc, func(b []byte, first int) {
			d := dst[first : first+len(b)/2]
			for i := range d {
				d[i] = tensor.F16ToF32One(le.Uint16(b[2*i:]))
			}
		})
	case F64:
		return f.readChunks(e, sc, func(b []byte, first int) {
			d := dst[first : first+len(b)/8]
			for i := range d {
				d[i] = float32(math.Float64frombits(le.Uint64(b[8*i:])))
			}
		})
	case F8_E4M3:
		return f.readChunks(e, sc, func(b []byte, first int) {
			d := dst[first : first+len(b)]
			for i := range d {
				d[i] = f8e4m3[b[i]]
			}
		})
	case F8_E5M2:
		return f.readChunks(e, sc, func(b []byte, first int) {
			d := dst[first : first+len(b)]
			for i := range d {
				d[i] = F8E5M2ToF32(b[i])
			}
		})
	}
	return newErr(ErrDType, f.path, e.name, nil, fmt.Sprintf("dtype %s cannot be read as float32", e.dtype))
}

func (f *File) readBF16(e *entry, dst []uint16) error {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	return f.readChunks(e, sc, func(b []byte, first int) {
		d := dst[first : first+len(b)/2]
		for i := range d {
			d[i] = le.Uint16(b[2*i:])
		}
	})
}

func (f *File) readInt64(e *entry, dst []int64) error {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	size := e.dtype.Size()
	var get func(b []byte) int64
	switch e.dtype {
	case I64:
		get = func(b []byte) int64 { return int64(le.Uint64(b)) }
	case I32:
		get = func(b []byte) int64 { return int64(int32(le.Uint32(b))) }
	case I16:
		get = func(b []byte) int64 { return int64(int16(le.Uint16(b))) }
	case I8:
		get = func(b []byte) int64 { return int64(int8(b[0])) }
	case U32:
		get = func(b []byte) int64 { return int64(le.Uint32(b)) }
	case U16:
		get = func(b []byte) int64 { return int64(le.Uint16(b)) }
	case U8:
		get = func(b []byte) int64 { return int64(b[0]) }
	default:
		return newErr(ErrDType, f.path, e.name, nil, fmt.Sprintf("dtype %s cannot be read as int64", e.dtype))
	}
	return f.readChunks(e, sc, func(b []byte, first int) {
		d := dst[first : first+len(b)/size]
		for i := range d {
			d[i] = get(b[size*i:])
		}
	})
}

// ioCause strips the *fs.PathError wrapper (whose path the *Error already
// names), keeping the errno so errors.Is(err, fs.ErrNotExist) still works.
func ioCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
