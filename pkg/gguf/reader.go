package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// File is a parsed GGUF file: its metadata and tensor infos, with the
// tensor data read on demand. Safe for concurrent reads.
type File struct {
	Version    uint32
	KV         []KV         // in file order
	Tensors    []TensorInfo // in file order
	Alignment  int64        // bytes
	DataOffset int64        // absolute offset of the data section

	r       io.ReaderAt
	size    int64
	kvIndex map[string]int
	tIndex  map[string]int
	closer  io.Closer
}

// Open opens and parses the file at path; Close closes it.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("gguf: %w", err)
	}
	g, err := Read(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	g.closer = f
	return g, nil
}

// Close closes the file if Open opened it.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	c := f.closer
	f.closer = nil
	return c.Close()
}

// Get returns the value of key.
func (f *File) Get(key string) (Value, bool) {
	i, ok := f.kvIndex[key]
	if !ok {
		return Value{}, false
	}
	return f.KV[i].Value, true
}

// Tensor returns the info of the named tensor.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	i, ok := f.tIndex[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Tensors[i], true
}

// ReadTensor returns the named tensor's data bytes (without padding).
func (f *File) ReadTensor(name string) ([]byte, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("gguf: no tensor %q", name)
	}
	size, _ := t.Size() // checked by Read
	buf := make([]byte, size)
	if size == 0 {
		// A zero-length tensor (a 0 dimension) may sit at the very end
		// of the file, where ReadAt of nothing reports EOF.
		return buf, nil
	}
	if _, err := f.r.ReadAt(buf, f.DataOffset+int64(t.Offset)); err != nil {
		return nil, fmt.Errorf("gguf: reading tensor %q: %w", name, err)
	}
	return buf, nil
}

// Read parses the GGUF file of size bytes that r holds, validating the
// whole header (see the package documentation). Tensor data is not read.
func Read(r io.ReaderAt, size int64) (*File, error) {
	d := &dec{br: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 1<<16), size: size}
	f, err := d.file()
	if err != nil {
		return nil, err
	}
	f.r, f.size = r, size
	return f, nil
}

// dec reads little-endian values from the start of a file, knowing how many
// bytes are left so that no length read from the file is trusted further
// than the file reaches.
type dec struct {
	br   *bufio.Reader
	off  int64
	size int64
	buf  [8]byte
}

func (d *dec) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrCorrupt, d.off, fmt.Sprintf(format, args...))
}

func (d *dec) left() int64 { return d.size - d.off }

func (d *dec) read(p []byte, what string) error {
	if int64(len(p)) > d.left() {
		return d.corrupt("file ends (%d bytes) while reading %s (%d bytes)", d.size, what, len(p))
	}
	if _, err := io.ReadFull(d.br, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return d.corrupt("file ends while reading %s", what)
		}
		return fmt.Errorf("gguf: reading %s at byte %d: %w", what, d.off, err)
	}
	d.off += int64(len(p))
	return nil
}

func (d *dec) u8(what string) (uint8, error) {
	err := d.read(d.buf[:1], what)
	return d.buf[0], err
}

func (d *dec) u16(what string) (uint16, error) {
	err := d.read(d.buf[:2], what)
	return binary.LittleEndian.Uint16(d.buf[:2]), err
}

func (d *dec) u32(what string) (uint32, error) {
	err := d.read(d.buf[:4], what)
	return binary.LittleEndian.Uint32(d.buf[:4]), err
}

func (d *dec) u64(what string) (uint64, error) {
	err := d.read(d.buf[:8], what)
	return binary.LittleEndian.Uint64(d.buf[:8]), err
}

// count reads a uint64 count of items of at least min bytes each and checks
// that the rest of the file can hold them.
func (d *dec) count(what string, min int64) (int, error) {
	n, err := d.u64(what)
	if err != nil {
		return 0, err
	}
	if min < 1 {
		min = 1
	}
	if n > uint64(d.left()/min) {
		return 0, d.corrupt("%s = %d cannot fit in the %d bytes left", what, n, d.left())
	}
	return int(n), nil
}

func (d *dec) str(what string) (string, error) {
	n, err := d.count(what+" length", 1)
	if err != nil {
		return "", err
	}
	b := make([]byte, n)
	if err := d.read(b, what); err != nil {
		return "", err
	}
	return string(b), nil
}

func (d *dec) file() (*File, error) {
	magic, err := d.u32("magic")
	if err != nil {
		return nil, err
	}
	if magic != Magic {
		return nil, d.corrupt("bad magic %#08x, want %#08x (\"GGUF\")", magic, Magic)
	}
	f := &File{Alignment: DefaultAlignment}
	if f.Version, err = d.u32("version"); err != nil {
		return nil, err
	}
	if f.Version != 2 && f.Version != 3 {
		return nil, d.corrupt("version %d is not supported (only 2 and 3)", f.Version)
	}
	nt, err := d.count("tensor count", 8+4+8+4+8)
	if err != nil {
		return nil, err
	}
	nkv, err := d.count("metadata count", 8+4+1)
	if err != nil {
		return nil, err
	}
	f.KV = make([]KV, 0, nkv)
	f.kvIndex = make(map[string]int, nkv)
	for i := 0; i < nkv; i++ {
		key, err := d.str(fmt.Sprintf("key %d", i))
		if err != nil {
			return nil, err
		}
		if key == "" {
			return nil, d.corrupt("key %d is empty", i)
		}
		if _, dup := f.kvIndex[key]; dup {
			return nil, d.corrupt("duplicate key %q", key)
		}
		t, err := d.u32(fmt.Sprintf("type of %q", key))
		if err != nil {
			return nil, err
		}
		v, err := d.value(ValueType(t), key)
		if err != nil {
			return nil, err
		}
		if key == KeyAlignment {
			a, ok := v.v.(uint32)
			if !ok || a == 0 || a&(a-1) != 0 {
				return nil, d.corrupt("%s = %v (%s) must be a uint32 power of two", KeyAlignment, v, v.typ)
			}
			f.Alignment = int64(a)
		}
		f.kvIndex[key] = len(f.KV)
		f.KV = append(f.KV, KV{Key: key, Value: v})
	}
	f.Tensors = make([]TensorInfo, 0, nt)
	f.tIndex = make(map[string]int, nt)
	for i := 0; i < nt; i++ {
		t, err := d.tensorInfo(i)
		if err != nil {
			return nil, err
		}
		if _, dup := f.tIndex[t.Name]; dup {
			return nil, d.corrupt("duplicate tensor %q", t.Name)
		}
		f.tIndex[t.Name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, t)
	}
	data, ok := padTo(d.off, f.Alignment)
	if !ok || data > d.size && nt > 0 {
		return nil, d.corrupt("data section at byte %d is past the end of the %d-byte file", data, d.size)
	}
	f.DataOffset = data
	// ggml requires each offset to be the padded size of everything before
	// it, which also rules out overlaps.
	var want int64
	for _, t := range f.Tensors {
		size, err := t.Size()
		if err != nil {
			return nil, d.corrupt("%v", err)
		}
		if t.Offset != uint64(want) {
			return nil, d.corrupt("tensor %q has offset %d, want %d", t.Name, t.Offset, want)
		}
		if size > d.size-data-want {
			return nil, d.corrupt("tensor %q (%d bytes at data offset %d) extends past the end of the %d-byte file", t.Name, size, want, d.size)
		}
		padded, ok := padTo(size, f.Alignment)
		if !ok || want > math.MaxInt64-padded {
			return nil, d.corrupt("tensor %q: offsets overflow", t.Name)
		}
		want += padded
	}
	return f, nil
}

func (d *dec) tensorInfo(i int) (TensorInfo, error) {
	var t TensorInfo
	var err error
	if t.Name, err = d.str(fmt.Sprintf("tensor %d name", i)); err != nil {
		return t, err
	}
	if t.Name == "" {
		return t, d.corrupt("tensor %d has an empty name", i)
	}
	nd, err := d.u32(fmt.Sprintf("tensor %q n_dims", t.Name))
	if err != nil {
		return t, err
	}
	if nd < 1 || nd > MaxDims {
		return t, d.corrupt("tensor %q has %d dimensions, want 1 to %d", t.Name, nd, MaxDims)
	}
	t.Dims = make([]uint64, nd)
	for j := range t.Dims {
		if t.Dims[j], err = d.u64(fmt.Sprintf("tensor %q ne[%d]", t.Name, j)); err != nil {
			return t, err
		}
	}
	typ, err := d.u32(fmt.Sprintf("tensor %q type", t.Name))
	if err != nil {
		return t, err
	}
	t.Type = GGMLType(typ)
	if t.Offset, err = d.u64(fmt.Sprintf("tensor %q offset", t.Name)); err != nil {
		return t, err
	}
	if _, err := t.Size(); err != nil {
		return t, d.corrupt("%v", err)
	}
	return t, nil
}

// value reads a value of type t for key.
func (d *dec) value(t ValueType, key string) (Value, error) {
	if !t.valid() {
		return Value{}, d.corrupt("key %q has unknown value type %d", key, uint32(t))
	}
	if t != TypeArray {
		x, err := d.scalar(t, key)
		return Value{typ: t, v: x}, err
	}
	et, err := d.u32(fmt.Sprintf("element type of %q", key))
	if err != nil {
		return Value{}, err
	}
	elem := ValueType(et)
	if !elem.valid() {
		return Value{}, d.corrupt("key %q: array of unknown type %d", key, et)
	}
	if elem == TypeArray {
		return Value{}, d.corrupt("key %q: nested arrays are not supported", key)
	}
	n, err := d.count(fmt.Sprintf("length of %q", key), elem.minSize())
	if err != nil {
		return Value{}, err
	}
	v := Value{typ: TypeArray, elem: elem}
	switch elem {
	case TypeUint8:
		xs := make([]uint8, n)
		err = d.read(xs, key)
		v.v = xs
	case TypeString:
		xs := make([]string, n)
		for i := range xs {
			if xs[i], err = d.str(fmt.Sprintf("%s[%d]", key, i)); err != nil {
				break
			}
		}
		v.v = xs
	default:
		v.v, err = d.fixedArray(elem, n, key)
	}
	return v, err
}

// fixedArray reads n fixed-size scalars of type t into a typed slice.
func (d *dec) fixedArray(t ValueType, n int, key string) (any, error) {
	var err error
	each := func(f func(i int) error) {
		for i := 0; i < n && err == nil; i++ {
			err = f(i)
		}
	}
	get := func(i int) (any, error) { return d.scalar(t, fmt.Sprintf("%s[%d]", key, i)) }
	switch t {
	case TypeInt8:
		xs := make([]int8, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(int8); return e })
		return xs, err
	case TypeUint16:
		xs := make([]uint16, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(uint16); return e })
		return xs, err
	case TypeInt16:
		xs := make([]int16, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(int16); return e })
		return xs, err
	case TypeUint32:
		xs := make([]uint32, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(uint32); return e })
		return xs, err
	case TypeInt32:
		xs := make([]int32, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(int32); return e })
		return xs, err
	case TypeFloat32:
		xs := make([]float32, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(float32); return e })
		return xs, err
	case TypeBool:
		xs := make([]bool, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(bool); return e })
		return xs, err
	case TypeUint64:
		xs := make([]uint64, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(uint64); return e })
		return xs, err
	case TypeInt64:
		xs := make([]int64, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(int64); return e })
		return xs, err
	case TypeFloat64:
		xs := make([]float64, n)
		each(func(i int) error { x, e := get(i); xs[i], _ = x.(float64); return e })
		return xs, err
	}
	return nil, d.corrupt("key %q: unexpected array type %s", key, t)
}

// scalar reads one scalar of type t (not TypeArray).
func (d *dec) scalar(t ValueType, what string) (any, error) {
	switch t {
	case TypeUint8:
		return d.u8(what)
	case TypeInt8:
		x, err := d.u8(what)
		return int8(x), err
	case TypeUint16:
		return d.u16(what)
	case TypeInt16:
		x, err := d.u16(what)
		return int16(x), err
	case TypeUint32:
		return d.u32(what)
	case TypeInt32:
		x, err := d.u32(what)
		return int32(x), err
	case TypeFloat32:
		x, err := d.u32(what)
		return math.Float32frombits(x), err
	case TypeBool:
		x, err := d.u8(what)
		if err == nil && x > 1 {
			return false, d.corrupt("%s: bool byte %d is neither 0 nor 1", what, x)
		}
		return x == 1, err
	case TypeString:
		return d.str(what)
	case TypeUint64:
		return d.u64(what)
	case TypeInt64:
		x, err := d.u64(what)
		return int64(x), err
	case TypeFloat64:
		x, err := d.u64(what)
		return math.Float64frombits(x), err
	}
	return nil, d.corrupt("%s: unexpected type %s", what, t)
}
