package safetensors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxHeaderSize is the largest JSON header accepted, in bytes. It is the
// reference implementation's limit; real headers are a few MB at most.
const MaxHeaderSize = 100_000_000

// entry is one tensor as declared in a header, after validation.
type entry struct {
	name  string
	dtype DType
	shape []int
	begin int64 // data_offsets[0]: bytes from the start of the data buffer
	end   int64 // data_offsets[1], exclusive
}

func (e *entry) numel() int64 { return (e.end - e.begin) / int64(e.dtype.Size()) }

// header is a parsed and validated JSON header.
type header struct {
	meta    map[string]string // __metadata__; nil when absent
	entries map[string]*entry
}

// parseHeader parses the JSON header hdr of file and validates it against a
// data buffer of dataLen bytes: known dtypes, shapes whose byte size matches
// data_offsets, and offsets that tile the buffer exactly, without holes or
// overlaps. Duplicate keys at any level are errors (encoding/json would
// silently keep the last one), so the parser walks tokens itself.
func parseHeader(file string, hdr []byte, dataLen int64) (*header, error) {
	p := &headerParser{file: file, dec: json.NewDecoder(bytes.NewReader(hdr))}
	if !utf8.Valid(hdr) {
		return nil, p.corrupt("", nil, "header is not valid UTF-8")
	}
	p.dec.UseNumber()
	tok, err := p.dec.Token()
	if err == io.EOF {
		return nil, p.corrupt("", nil, "header is empty")
	}
	if err != nil {
		return nil, p.corrupt("", err, "header is not valid JSON")
	}
	if tok != json.Delim('{') {
		return nil, p.corrupt("", nil, "header is not a JSON object")
	}
	h := &header{entries: make(map[string]*entry)}
	seenMeta := false
	for p.dec.More() {
		tok, err := p.token("", "reading a tensor name")
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, p.corrupt("", nil, "header is not valid JSON: object key is not a string")
		}
		if key == "__metadata__" {
			if seenMeta {
				return nil, p.corrupt("", nil, "__metadata__ appears twice in the header")
			}
			seenMeta = true
			if h.meta, err = p.metadata(); err != nil {
				return nil, err
			}
			continue
		}
		if _, dup := h.entries[key]; dup {
			return nil, p.corrupt(key, nil, "declared twice in the header")
		}
		e, err := p.tensor(key, dataLen)
		if err != nil {
			return nil, err
		}
		h.entries[key] = e
	}
	if _, err := p.token("", "closing the header object"); err != nil {
		return nil, err
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.corrupt("", err, "data after the header's JSON object (only space padding is allowed)")
	}
	if err := checkLayout(file, h.entries, dataLen); err != nil {
		return nil, err
	}
	return h, nil
}

type headerParser struct {
	file string
	dec  *json.Decoder
}

func (p *headerParser) corrupt(tensor string, cause error, format string, args ...any) error {
	return newErr(ErrCorrupt, p.file, tensor, cause, fmt.Sprintf(format, args...))
}

// token reads the next JSON token; running out of input is an error.
func (p *headerParser) token(tensor, what string) (json.Token, error) {
	tok, err := p.dec.Token()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, p.corrupt(tensor, err, "header is not valid JSON (%s)", what)
	}
	return tok, nil
}

// metadata parses the value of "__metadata__": null or an object of strings.
func (p *headerParser) metadata() (map[string]string, error) {
	tok, err := p.token("", "reading __metadata__")
	if err != nil || tok == nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, p.corrupt("", nil, "__metadata__ is not an object of strings")
	}
	m := make(map[string]string)
	for p.dec.More() {
		tok, err := p.token("", "reading a __metadata__ key")
		if err != nil {
			return nil, err
		}
		k, _ := tok.(string)
		if _, dup := m[k]; dup {
			return nil, p.corrupt("", nil, "__metadata__ key %q appears twice", k)
		}
		if tok, err = p.token("", "reading a __metadata__ value"); err != nil {
			return nil, err
		}
		v, ok := tok.(string)
		if !ok {
			return nil, p.corrupt("", nil, "__metadata__ value for %q is not a string", k)
		}
		m[k] = v
	}
	_, err = p.token("", "closing __metadata__")
	return m, err
}

// tensor parses and checks one tensor declaration.
func (p *headerParser) tensor(name string, dataLen int64) (*entry, error) {
	tok, err := p.token(name, "reading the declaration")
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, p.corrupt(name, nil, "declaration is not a JSON object")
	}
	var (
		dtype        string
		shape, offs  []uint64
		seen         = map[string]bool{}
		haveShape    bool
		haveOffsets  bool
		haveDTypeStr bool
	)
	for p.dec.More() {
		tok, err := p.token(name, "reading a field name")
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, p.corrupt(name, nil, "field %q appears twice", key)
		}
		seen[key] = true
		switch key {
		case "dtype":
			if tok, err = p.token(name, "reading dtype"); err != nil {
				return nil, err
			}
			s, ok := tok.(string)
			if !ok {
				return nil, p.corrupt(name, nil, "dtype is not a string")
			}
			dtype, haveDTypeStr = s, true
		case "shape":
			if shape, err = p.uints(name, "shape"); err != nil {
				return nil, err
			}
			haveShape = true
		case "data_offsets":
			if offs, err = p.uints(name, "data_offsets"); err != nil {
				return nil, err
			}
			haveOffsets = true
		default: // unknown fields are ignored, as the reference does
			var skip json.RawMessage
			if err := p.dec.Decode(&skip); err != nil {
				return nil, p.corrupt(name, err, "header is not valid JSON (field %q)", key)
			}
		}
	}
	if _, err := p.token(name, "closing the declaration"); err != nil {
		return nil, err
	}
	switch {
	case !haveDTypeStr:
		return nil, p.corrupt(name, nil, "declaration has no dtype")
	case !haveShape:
		return nil, p.corrupt(name, nil, "declaration has no shape")
	case !haveOffsets:
		return nil, p.corrupt(name, nil, "declaration has no data_offsets")
	}
	d := DType(dtype)
	if d.Size() == 0 {
		return nil, p.corrupt(name, nil, "unknown dtype %q", dtype)
	}
	if len(offs) != 2 {
		return nil, p.corrupt(name, nil, "data_offsets has %d numbers, want 2", len(offs))
	}
	e := &entry{name: name, dtype: d, shape: make([]int, len(shape))}
	for i, v := range shape {
		if v > math.MaxInt {
			return nil, p.corrupt(name, nil, "shape %s: dimension %d does not fit in an int", fmtUints(shape), v)
		}
		e.shape[i] = int(v)
	}
	nbytes, ok := byteSize(d, e.shape)
	if !ok {
		return nil, p.corrupt(name, nil, "shape %s of %s overflows int64 bytes", fmtUints(shape), d)
	}
	begin, end := offs[0], offs[1]
	switch {
	case end < begin:
		return nil, p.corrupt(name, nil, "data_offsets [%d,%d] end before they begin", begin, end)
	case end > uint64(dataLen):
		return nil, p.corrupt(name, nil, "data_offsets [%d,%d] reach past the end of the %d-byte data buffer (truncated file?)", begin, end, dataLen)
	case int64(end-begin) != nbytes:
		return nil, p.corrupt(name, nil, "data_offsets [%d,%d] hold %d bytes, shape %s %s needs %d", begin, end, end-begin, fmtUints(shape), d, nbytes)
	}
	e.begin, e.end = int64(begin), int64(end)
	return e, nil
}

// uints parses a JSON array of non-negative integers that fit in int64.
func (p *headerParser) uints(name, field string) ([]uint64, error) {
	tok, err := p.token(name, "reading "+field)
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('[') {
		return nil, p.corrupt(name, nil, "%s is not an array of non-negative integers", field)
	}
	var out []uint64
	for p.dec.More() {
		if tok, err = p.token(name, "reading "+field); err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, p.corrupt(name, nil, "%s is not an array of non-negative integers", field)
		}
		s := string(num)
		if strings.HasPrefix(s, "-") {
			return nil, p.corrupt(name, nil, "%s has negative value %s", field, s)
		}
		v, err := strconv.ParseUint(s, 10, 63) // at most MaxInt64
		if errors.Is(err, strconv.ErrRange) {
			return nil, p.corrupt(name, nil, "%s value %s overflows int64", field, s)
		}
		if err != nil {
			return nil, p.corrupt(name, nil, "%s value %s is not an integer", field, s)
		}
		out = append(out, v)
	}
	_, err = p.token(name, "closing "+field)
	return out, err
}

// byteSize returns the size in bytes of a tensor of dtype d and shape, and
// false if it overflows int64 or a dimension is negative.
func byteSize(d DType, shape []int) (int64, bool) {
	n := int64(d.Size())
	for _, s := range shape {
		if s < 0 {
			return 0, false
		}
		if s == 0 {
			n = 0
			continue
		}
		if n > math.MaxInt64/int64(s) {
			// Overflow, unless a later dimension is zero.
			return 0, slices.Contains(shape, 0)
		}
		n *= int64(s)
	}
	return n, true
}

// checkLayout verifies that the tensors' data_offsets tile [0, dataLen)
// exactly: no holes, no overlaps, no trailing bytes.
func checkLayout(file string, entries map[string]*entry, dataLen int64) error {
	order := make([]*entry, 0, len(entries))
	for _, e := range entries {
		order = append(order, e)
	}
	slices.SortFunc(order, func(a, b *entry) int {
		if a.begin != b.begin {
			return cmp.Compare(a.begin, b.begin)
		}
		if a.end != b.end {
			return cmp.Compare(a.end, b.end)
		}
		return strings.Compare(a.name, b.name)
	})
	var pos int64
	var prev *entry
	for _, e := range order {
		switch {
		case e.begin < pos:
			return newErr(ErrCorrupt, file, e.name, nil, fmt.Sprintf(
				"data_offsets [%d,%d] overlap tensor %q at [%d,%d]", e.begin, e.end, prev.name, prev.begin, prev.end))
		case e.begin > pos:
			return newErr(ErrCorrupt, file, e.name, nil, fmt.Sprintf(
				"data_offsets [%d,%d] leave a hole: bytes [%d,%d) of the data buffer belong to no tensor", e.begin, e.end, pos, e.begin))
		}
		pos, prev = e.end, e
	}
	if pos != dataLen {
		return newErr(ErrCorrupt, file, "", nil, fmt.Sprintf(
			"tensors cover %d bytes but the data buffer holds %d: bytes [%d,%d) belong to no tensor", pos, dataLen, pos, dataLen))
	}
	return nil
}

// fmtShape formats a shape as the header spells it: [4,4].
func fmtShape(shape []int) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range shape {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s))
	}
	b.WriteByte(']')
	return b.String()
}

func fmtUints(v []uint64) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(s, 10))
	}
	b.WriteByte(']')
	return b.String()
}
