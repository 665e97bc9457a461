package safetensors

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// Tensor is one tensor to write.
type Tensor struct {
	Name  string
	DType DType
	Shape []int // row-major dimensions; empty for a scalar
	// Data holds the elements as stored: little-endian, row-major,
	// product(Shape) * DType.Size() bytes. The typed constructors
	// (F32Tensor, ...) leave it nil and encode from their typed slice while
	// writing, a chunk at a time, without a byte copy of the whole tensor.
	// The writer only reads Data (and the typed slice): the caller keeps
	// ownership and must not modify them until the write returns.
	Data []byte
	src  source
}

// source produces a typed tensor's bytes while writing.
type source interface {
	n() int                       // number of elements
	encode(dst []byte, first int) // fill dst with elements first, first+1, ...
}

// F32Tensor describes an F32 tensor backed by data.
func F32Tensor(name string, shape []int, data []float32) Tensor {
	return Tensor{Name: name, DType: F32, Shape: shape, src: f32Source(data)}
}

// F32AsBF16Tensor describes a BF16 tensor holding data rounded to bfloat16
// (round to nearest even, as torch does).
func F32AsBF16Tensor(name string, shape []int, data []float32) Tensor {
	return Tensor{Name: name, DType: BF16, Shape: shape, src: f32bf16Source(data)}
}

// BF16Tensor describes a BF16 tensor backed by raw bfloat16 bits.
func BF16Tensor(name string, shape []int, bits []uint16) Tensor {
	return Tensor{Name: name, DType: BF16, Shape: shape, src: u16Source(bits)}
}

// F16Tensor describes an F16 tensor backed by raw IEEE binary16 bits.
func F16Tensor(name string, shape []int, bits []uint16) Tensor {
	return Tensor{Name: name, DType: F16, Shape: shape, src: u16Source(bits)}
}

// I64Tensor describes an I64 tensor backed by data.
func I64Tensor(name string, shape []int, data []int64) Tensor {
	return Tensor{Name: name, DType: I64, Shape: shape, src: i64Source(data)}
}

// I32Tensor describes an I32 tensor backed by data.
func I32Tensor(name string, shape []int, data []int32) Tensor {
	return Tensor{Name: name, DType: I32, Shape: shape, src: i32Source(data)}
}

type (
	f32Source     []float32
	f32bf16Source []float32
	u16Source     []uint16
	i64Source     []int64
	i32Source     []int32
)

func (s f32Source) n() int { return len(s) }
func (s f32Source) encode(dst []byte, first int) {
	for i, v := range s[first : first+len(dst)/4] {
		le.PutUint32(dst[4*i:], math.Float32bits(v))
	}
}
func (s f32bf16Source) n() int { return len(s) }
func (s f32bf16Source) encode(dst []byte, first int) {
	for i, v := range s[first : first+len(dst)/2] {
		le.PutUint16(dst[2*i:], tensor.F32ToBF16One(v))
	}
}
func (s u16Source) n() int { return len(s) }
func (s u16Source) encode(dst []byte, first int) {
	for i, v := range s[first : first+len(dst)/2] {
		le.PutUint16(dst[2*i:], v)
	}
}
func (s i64Source) n() int { return len(s) }
func (s i64Source) encode(dst []byte, first int) {
	for i, v := range s[first : first+len(dst)/8] {
		le.PutUint64(dst[8*i:], uint64(v))
	}
}
func (s i32Source) n() int { return len(s) }
func (s i32Source) encode(dst []byte, first int) {
	for i, v := range s[first : first+len(dst)/4] {
		le.PutUint32(dst[4*i:], uint32(v))
	}
}

// validate checks tensors and metadata for writing and returns each
// tensor's size in bytes. All problems are reported, joined.
func validate(file string, tensors []Tensor, metadata map[string]string) ([]int64, error) {
	var errs []error
	sizes := make([]int64, len(tensors))
	seen := make(map[string]bool, len(tensors))
	for i := range tensors {
		t := &tensors[i]
		bad := func(kind error, format string, args ...any) {
			errs = append(errs, newErr(kind, file, t.Name, nil, fmt.Sprintf(format, args...)))
		}
		switch {
		case t.Name == "":
			bad(ErrInvalid, "tensor %d has an empty name", i)
		case t.Name == "__metadata__":
			bad(ErrInvalid, "name is reserved for the header's metadata")
		case !utf8.ValidString(t.Name):
			bad(ErrInvalid, "name is not valid UTF-8")
		case seen[t.Name]:
			bad(ErrInvalid, "name given twice")
		}
		seen[t.Name] = true
		if t.DType.Size() == 0 {
			bad(ErrDType, "unknown dtype %q", t.DType)
			continue
		}
		n, ok := byteSize(t.DType, t.Shape)
		if !ok {
			bad(ErrShape, "shape %s of %s is negative or overflows int64 bytes", fmtShape(t.Shape), t.DType)
			continue
		}
		sizes[i] = n
		switch {
		case t.src != nil && t.Data != nil:
			bad(ErrInvalid, "has both Data and a typed source")
		case t.src != nil && int64(t.src.n())*int64(t.DType.Size()) != n:
			bad(ErrShape, "%d elements given, shape %s needs %d", t.src.n(), fmtShape(t.Shape), n/int64(t.DType.Size()))
		case t.src == nil && int64(len(t.Data)) != n:
			bad(ErrShape, "Data is %d bytes, shape %s %s needs %d", len(t.Data), fmtShape(t.Shape), t.DType, n)
		}
	}
	for k, v := range metadata {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			errs = append(errs, newErr(ErrInvalid, file, "", nil, fmt.Sprintf("metadata %q is not valid UTF-8", k)))
		}
	}
	return sizes, errors.Join(errs...)
}

// plan is a validated file layout, ready to write.
type plan struct {
	header []byte    // JSON header with its space padding; len is a multiple of 8
	order  []*Tensor // tensors in data order
}

// prepare validates and lays out a file as the reference implementation
// does: tensors ordered by decreasing dtype alignment, then by name, and the
// header padded with spaces to a multiple of 8 bytes.
func prepare(file string, tensors []Tensor, metadata map[string]string) (*plan, error) {
	sizes, err := validate(file, tensors, metadata)
	if err != nil {
		return nil, err
	}
	idx := make([]int, len(tensors))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		ta, tb := &tensors[a], &tensors[b]
		if c := cmp.Compare(dtypeRank[tb.DType], dtypeRank[ta.DType]); c != 0 {
			return c
		}
		return strings.Compare(ta.Name, tb.Name)
	})
	var b bytes.Buffer
	b.WriteByte('{')
	if len(metadata) > 0 {
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString(`"__metadata__":{`)
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSONString(&b, k)
			b.WriteByte(':')
			writeJSONString(&b, metadata[k])
		}
		b.WriteByte('}')
		if len(tensors) > 0 {
			b.WriteByte(',')
		}
	}
	p := &plan{order: make([]*Tensor, len(idx))}
	var off int64
	for i, j := range idx {
		t := &tensors[j]
		p.order[i] = t
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSONString(&b, t.Name)
		b.WriteString(`:{"dtype":`)
		writeJSONString(&b, string(t.DType))
		b.WriteString(`,"shape":`)
		b.WriteString(fmtShape(t.Shape))
		b.WriteString(`,"data_offsets":[`)
		b.WriteString(strconv.FormatInt(off, 10))
		b.WriteByte(',')
		off += sizes[j]
		b.WriteString(strconv.FormatInt(off, 10))
		b.WriteString("]}")
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	if b.Len() > MaxHeaderSize {
		return nil, newErr(ErrInvalid, file, "", nil, fmt.Sprintf("header would be %d bytes, over the %d-byte limit", b.Len(), MaxHeaderSize))
	}
	p.header = b.Bytes()
	return p, nil
}

// writeJSONString writes s as a JSON string escaped as serde_json (the
// reference implementation) does: only '"', '\\' and control characters.
func writeJSONString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\b':
			b.WriteString(`\b`)
		case c == '\f':
			b.WriteString(`\f`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&0xf])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

// writeTo writes the whole file: length, header, data.
func (p *plan) writeTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	var lb [8]byte
	le.PutUint64(lb[:], uint64(len(p.header)))
	cw.Write(lb[:])
	cw.Write(p.header)
	var buf []byte
	for _, t := range p.order {
		if t.src == nil {
			cw.Write(t.Data)
			continue
		}
		if buf == nil {
			buf = make([]byte, 64<<10)
		}
		size := t.DType.Size()
		step := len(buf) / size
		for first := 0; first < t.src.n() && cw.err == nil; first += step {
			k := min(step, t.src.n()-first)
			t.src.encode(buf[:k*size], first)
			cw.Write(buf[:k*size])
		}
	}
	return cw.n, cw.err
}

// countWriter counts bytes written and keeps the first error, after which
// it writes nothing.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// Encode writes a complete safetensors file to w, laid out as Write lays it
// out, and returns the number of bytes written. It is not atomic: use
// Write for files.
func Encode(w io.Writer, tensors []Tensor, metadata map[string]string) (int64, error) {
	p, err := prepare("", tensors, metadata)
	if err != nil {
		return 0, err
	}
	return p.writeTo(w)
}

// Write writes tensors and metadata (stored as __metadata__; omitted when
// empty) to a safetensors file at path, laid out as the reference
// implementation lays it out: tensors ordered by decreasing dtype
// alignment, then by name; the header padded with spaces to a multiple of 8
// bytes, so every tensor's data is aligned to its element size.
//
// The write is atomic: the data goes to a temporary file in the same
// folder, which is synced and then renamed over path, and the folder is
// synced. A failure at any point leaves path as it was (absent or the old
// file), never half-written. The file's mode is 0644.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	p, err := prepare(path, tensors, metadata)
	if err != nil {
		return err
	}
	return writeAtomic(path, func(w io.Writer) error {
		_, err := p.writeTo(w)
		return err
	})
}

// writeAtomic writes a file through fill via a temporary file, fsync and
// rename, then fsyncs the folder.
func writeAtomic(path string, fill func(io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return newErr(nil, path, "", ioCause(err), "cannot create a temporary file")
	}
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	fail := func(what string, err error) error {
		return newErr(nil, path, "", ioCause(err), what+" "+tmp.Name())
	}
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := fill(bw); err != nil {
		return fail("writing", err)
	}
	if err := bw.Flush(); err != nil {
		return fail("writing", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail("chmod", err)
	}
	if err := tmp.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := tmp.Close(); err != nil {
		return fail("closing", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fail("renaming", err)
	}
	renamed = true
	if err := syncDir(dir); err != nil {
		return newErr(nil, path, "", ioCause(err), "fsync of folder "+dir)
	}
	return nil
}

// syncDir fsyncs a folder so a rename in it is durable. File systems that
// cannot sync folders (EINVAL) are tolerated.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, syscall.EINVAL) {
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// ShardFileName returns the name of shard i (0-based) of n, as Hugging Face
// names them: model-00001-of-00003.safetensors.
func ShardFileName(i, n int) string {
	return fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, n)
}

// planShards groups tensors of the given sizes (bytes) into shards of at
// most maxBytes of data each, keeping their order, as Hugging Face does: a
// shard is closed when the next tensor would overflow it, and a tensor
// larger than maxBytes gets a shard of its own. It returns at least one
// (possibly empty) shard.
func planShards(sizes []int64, maxBytes int64) [][]int {
	var shards [][]int
	var cur []int
	var curBytes int64
	for i, s := range sizes {
		if len(cur) > 0 && curBytes+s > maxBytes {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, i)
		curBytes += s
	}
	if len(cur) > 0 || len(shards) == 0 {
		shards = append(shards, cur)
	}
	return shards
}

// indexJSON is the layout of model.safetensors.index.json.
type indexJSON struct {
	Metadata  indexMetadata     `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

type indexMetadata struct {
	TotalSize int64 `json:"total_size"` // sum of the tensors' data sizes, bytes
}

// WriteSharded writes tensors as a sharded checkpoint in the folder dir,
// which must exist: files model-00001-of-0000N.safetensors holding at most
// maxShardBytes bytes of tensor data each (a larger tensor gets a shard of
// its own; tensors are assigned in the order given), each with metadata as
// its __metadata__, and model.safetensors.index.json mapping every name to
// its shard, with metadata.total_size. It always writes an index, even for
// one shard.
//
// Every file is written atomically (see Write) and the index last, so an
// interrupted call leaves shards without an index, which OpenDir refuses.
// To never mix two checkpoints, dir must not already hold an index or any
// of the shard names: write each checkpoint into a new folder.
func WriteSharded(dir string, tensors []Tensor, metadata map[string]string, maxShardBytes int64) error {
	if maxShardBytes <= 0 {
		return newErr(ErrInvalid, dir, "", nil, fmt.Sprintf("max shard size %d bytes is not positive", maxShardBytes))
	}
	sizes, err := validate(dir, tensors, metadata)
	if err != nil {
		return err
	}
	groups := planShards(sizes, maxShardBytes)
	names := []string{IndexFile}
	for i := range groups {
		names = append(names, ShardFileName(i, len(groups)))
	}
	for _, name := range names {
		p := filepath.Join(dir, name)
		if _, err := os.Lstat(p); err == nil {
			return newErr(ErrInvalid, p, "", fs.ErrExist, "already exists; write each checkpoint into a new folder")
		} else if !errors.Is(err, fs.ErrNotExist) {
			return newErr(nil, p, "", ioCause(err), "cannot stat")
		}
	}
	idx := indexJSON{WeightMap: make(map[string]string, len(tensors))}
	for i, g := range groups {
		shard := make([]Tensor, len(g))
		for j, k := range g {
			shard[j] = tensors[k]
			idx.WeightMap[tensors[k].Name] = names[i+1]
			idx.Metadata.TotalSize += sizes[k]
		}
		if err := Write(filepath.Join(dir, names[i+1]), shard, metadata); err != nil {
			return err
		}
	}
	return writeAtomic(filepath.Join(dir, IndexFile), func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(idx)
	})
}
