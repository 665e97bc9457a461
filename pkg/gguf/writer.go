package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Writer writes one GGUF file: NewWriter writes the header, Write the data
// of the tensors in the declared order, Close checks that every tensor got
// all its bytes. A Writer is not safe for concurrent use.
type Writer struct {
	bw    *bufio.Writer
	align int64
	infos []TensorInfo
	sizes []int64
	cur   int   // tensor being filled
	fill  int64 // bytes of tensor cur written so far
	err   error // sticky
}

// NewWriter validates kv and tensors, assigns each tensor its Offset (the
// infos are copied; tensors is not modified) and writes the header to w.
// The alignment is kv's general.alignment if set (a uint32 power of two),
// else DefaultAlignment. Keys and tensor names must be unique and
// non-empty; every value must be valid; every tensor must pass
// TensorInfo.Size.
func NewWriter(w io.Writer, kv []KV, tensors []TensorInfo) (*Writer, error) {
	align, err := validate(kv, tensors)
	if err != nil {
		return nil, err
	}
	wr := &Writer{bw: bufio.NewWriterSize(w, 1<<20), align: align}
	wr.infos = make([]TensorInfo, len(tensors))
	wr.sizes = make([]int64, len(tensors))
	var off int64
	for i, t := range tensors {
		size, _ := t.Size() // checked by validate
		t.Dims = append([]uint64(nil), t.Dims...)
		t.Offset = uint64(off)
		wr.infos[i], wr.sizes[i] = t, size
		padded, ok := padTo(size, align)
		if !ok || off > math.MaxInt64-padded {
			return nil, fmt.Errorf("%w: tensor data larger than 2^63 bytes", ErrInvalid)
		}
		off += padded
	}
	e := &enc{w: wr.bw}
	e.u32(Magic)
	e.u32(Version)
	e.u64(uint64(len(tensors)))
	e.u64(uint64(len(kv)))
	for _, p := range kv {
		e.str(p.Key)
		e.value(p.Value)
	}
	for _, t := range wr.infos {
		e.str(t.Name)
		e.u32(uint32(len(t.Dims)))
		for _, d := range t.Dims {
			e.u64(d)
		}
		e.u32(uint32(t.Type))
		e.u64(t.Offset)
	}
	if e.err == nil {
		e.zeros(padLen(e.n, align))
	}
	if e.err != nil {
		return nil, fmt.Errorf("gguf: writing header: %w", e.err)
	}
	wr.skipEmpty()
	return wr, nil
}

// Tensors returns the tensor infos with their offsets (a copy).
func (w *Writer) Tensors() []TensorInfo { return append([]TensorInfo(nil), w.infos...) }

// Write appends p to the data of the current tensor, moving on to the next
// tensor (after the padding) when one is complete; p may span tensors. It
// fails if p holds more bytes than the remaining tensors declared.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		if w.cur >= len(w.infos) {
			w.err = fmt.Errorf("%w: %d bytes written past the last tensor", ErrInvalid, len(p))
			return n, w.err
		}
		k := min(int64(len(p)), w.sizes[w.cur]-w.fill)
		if _, err := w.bw.Write(p[:k]); err != nil {
			w.err = err
			return n, err
		}
		n += int(k)
		p = p[k:]
		w.fill += k
		if w.fill == w.sizes[w.cur] {
			if err := w.finishTensor(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// finishTensor pads the completed tensor and moves to the next non-empty
// one (empty tensors are complete at once and take no bytes).
func (w *Writer) finishTensor() error {
	e := &enc{w: w.bw}
	e.zeros(padLen(w.sizes[w.cur], w.align))
	if e.err != nil {
		w.err = e.err
		return e.err
	}
	w.cur++
	w.fill = 0
	w.skipEmpty()
	return nil
}

func (w *Writer) skipEmpty() {
	for w.cur < len(w.infos) && w.sizes[w.cur] == 0 {
		w.cur++
	}
}

// Current returns the tensor the next Write goes to; ok is false once every
// tensor is complete.
func (w *Writer) Current() (TensorInfo, bool) {
	if w.cur >= len(w.infos) {
		return TensorInfo{}, false
	}
	return w.infos[w.cur], true
}

// Close flushes the buffered bytes and reports an error if a tensor is
// incomplete. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.cur < len(w.infos) {
		w.err = fmt.Errorf("%w: tensor %q has %d of its %d bytes (%d of %d tensors complete)",
			ErrInvalid, w.infos[w.cur].Name, w.fill, w.sizes[w.cur], w.cur, len(w.infos))
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err = err
		return err
	}
	w.err = errors.New("gguf: writer closed")
	return nil
}

// validate checks a file description and returns its alignment.
func validate(kv []KV, tensors []TensorInfo) (int64, error) {
	var errs []error
	align := int64(DefaultAlignment)
	seen := make(map[string]bool, len(kv))
	for i, p := range kv {
		switch {
		case p.Key == "":
			errs = append(errs, fmt.Errorf("key %d is empty", i))
		case seen[p.Key]:
			errs = append(errs, fmt.Errorf("duplicate key %q", p.Key))
		case !p.Value.Valid():
			errs = append(errs, fmt.Errorf("key %q has no value", p.Key))
		}
		seen[p.Key] = true
		if p.Key == KeyAlignment {
			a, ok := p.Value.Any().(uint32)
			if !ok || a == 0 || a&(a-1) != 0 {
				errs = append(errs, fmt.Errorf("%s = %v must be a uint32 power of two", KeyAlignment, p.Value))
			} else {
				align = int64(a)
			}
		}
	}
	names := make(map[string]bool, len(tensors))
	for _, t := range tensors {
		if t.Name == "" {
			errs = append(errs, errors.New("a tensor has an empty name"))
		}
		if names[t.Name] {
			errs = append(errs, fmt.Errorf("duplicate tensor %q", t.Name))
		}
		names[t.Name] = true
		if _, err := t.Size(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return align, nil
}

// padLen is the number of zero bytes that pad n to a multiple of align.
func padLen(n, align int64) int64 { return (align - n%align) % align }

// enc writes little-endian values and counts the bytes; the first error
// sticks.
type enc struct {
	w   io.Writer
	n   int64
	err error
	buf [8]byte
}

func (e *enc) write(p []byte) {
	if e.err != nil {
		return
	}
	k, err := e.w.Write(p)
	e.n += int64(k)
	e.err = err
}

func (e *enc) u8(x uint8)   { e.buf[0] = x; e.write(e.buf[:1]) }
func (e *enc) u16(x uint16) { binary.LittleEndian.PutUint16(e.buf[:], x); e.write(e.buf[:2]) }
func (e *enc) u32(x uint32) { binary.LittleEndian.PutUint32(e.buf[:], x); e.write(e.buf[:4]) }
func (e *enc) u64(x uint64) { binary.LittleEndian.PutUint64(e.buf[:], x); e.write(e.buf[:8]) }

func (e *enc) str(s string) {
	e.u64(uint64(len(s)))
	if e.err == nil {
		k, err := io.WriteString(e.w, s)
		e.n += int64(k)
		e.err = err
	}
}

var zeroPad [64]byte

func (e *enc) zeros(n int64) {
	for n > 0 {
		k := min(n, int64(len(zeroPad)))
		e.write(zeroPad[:k])
		n -= k
	}
}

// value writes a value's type and payload.
func (e *enc) value(v Value) {
	e.u32(uint32(v.typ))
	if v.typ != TypeArray {
		e.scalar(v.v)
		return
	}
	e.u32(uint32(v.elem))
	e.u64(uint64(v.Len()))
	switch xs := v.v.(type) {
	case []uint8:
		e.write(xs)
	case []int8:
		for _, x := range xs {
			e.u8(uint8(x))
		}
	case []uint16:
		for _, x := range xs {
			e.u16(x)
		}
	case []int16:
		for _, x := range xs {
			e.u16(uint16(x))
		}
	case []uint32:
		for _, x := range xs {
			e.u32(x)
		}
	case []int32:
		for _, x := range xs {
			e.u32(uint32(x))
		}
	case []float32:
		for _, x := range xs {
			e.u32(math.Float32bits(x))
		}
	case []bool:
		for _, x := range xs {
			e.scalar(x)
		}
	case []string:
		for _, x := range xs {
			e.str(x)
		}
	case []uint64:
		for _, x := range xs {
			e.u64(x)
		}
	case []int64:
		for _, x := range xs {
			e.u64(uint64(x))
		}
	case []float64:
		for _, x := range xs {
			e.u64(math.Float64bits(x))
		}
	}
}

func (e *enc) scalar(x any) {
	switch x := x.(type) {
	case uint8:
		e.u8(x)
	case int8:
		e.u8(uint8(x))
	case uint16:
		e.u16(x)
	case int16:
		e.u16(uint16(x))
	case uint32:
		e.u32(x)
	case int32:
		e.u32(uint32(x))
	case float32:
		e.u32(math.Float32bits(x))
	case bool:
		if x {
			e.u8(1)
		} else {
			e.u8(0)
		}
	case string:
		e.str(x)
	case uint64:
		e.u64(x)
	case int64:
		e.u64(uint64(x))
	case float64:
		e.u64(math.Float64bits(x))
	}
}
