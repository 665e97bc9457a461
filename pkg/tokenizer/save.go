package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/switchyard/switchyard/internal/atomicfile"
)

// fileParts are the parts of a tokenizer.json that Marshal writes back as
// they were loaded: the ones Encode does not model (truncation, padding,
// post-processor) and the ones it models but cannot print (a Split's
// literal pattern, say). nil stands for absent.
type fileParts struct {
	version, truncation, padding json.RawMessage
	normalizer, preTokenizer     json.RawMessage
	postProcessor, decoder       json.RawMessage
	// modelOpts are the model's keys other than vocab and merges, in file
	// order (type, dropout, unk_token, ..., ignore_merges).
	modelOpts []rawField
	// mergesAsStrings: merges were "a b" strings (files written before
	// tokenizers 0.20) rather than ["a", "b"] pairs.
	mergesAsStrings bool
}

type rawField struct {
	key   string
	value json.RawMessage
}

// fileDoc is a whole tokenizer.json.
type fileDoc struct {
	fileParts
	// added are written in this order: file order, which decides between
	// added tokens that normalize alike (tokenizers writes them sorted by
	// id, so its files keep their order).
	added  []AddedToken
	vocab  []vocabEntry // written in this order
	merges [][2]string  // in rank order
}

type vocabEntry struct {
	token string
	id    int
}

// defaultModelOpts are the BPE options tokenizers writes for a plain
// byte-level model, in its order.
func defaultModelOpts() []rawField {
	f := func(k, v string) rawField { return rawField{k, json.RawMessage(v)} }
	return []rawField{
		f("type", `"BPE"`), f("dropout", "null"), f("unk_token", "null"),
		f("continuing_subword_prefix", "null"), f("end_of_word_suffix", "null"),
		f("fuse_unk", "false"), f("byte_fallback", "false"), f("ignore_merges", "false"),
	}
}

// Marshal returns the tokenizer as a tokenizer.json that Load reads back to
// a tokenizer with the same vocabulary, merges, added tokens and
// pre-tokenization, and that Hugging Face tokenizers loads: the keys in
// tokenizers' order, vocab by id, merges by rank, added tokens in file
// order, formatted as tokenizers' save(pretty=True) formats them (two-space
// indent, non-ASCII unescaped, no final newline). The parts Encode ignores
// (truncation, padding, post_processor, unknown model options) are written
// back as loaded. For a file that tokenizers itself wrote, the result is
// the same bytes. Names from tokenizer_config.json (LoadDir) are not part
// of tokenizer.json and are not written.
func (t *Tokenizer) Marshal() ([]byte, error) {
	merges, err := t.mergeStrings()
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: marshal: %w", t.name, err)
	}
	d := &fileDoc{fileParts: t.src, added: t.added, merges: merges}
	d.vocab = make([]vocabEntry, 0, len(t.model.vocab))
	for s, id := range t.model.vocab {
		d.vocab = append(d.vocab, vocabEntry{s, id})
	}
	sort.Slice(d.vocab, func(i, j int) bool {
		a, b := d.vocab[i], d.vocab[j]
		return a.id < b.id || (a.id == b.id && a.token < b.token)
	})
	data, err := d.marshal()
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: marshal: %w", t.name, err)
	}
	return data, nil
}

// mergeStrings returns the merges of t in rank order as token strings.
func (t *Tokenizer) mergeStrings() ([][2]string, error) {
	byID := map[int]string{}
	for s, id := range t.model.vocab {
		if old, ok := byID[id]; !ok || s < old {
			byID[id] = s
		}
	}
	type ranked struct {
		rank int32
		key  uint64
		id   int32
	}
	list := make([]ranked, 0, len(t.model.merges))
	for k, m := range t.model.merges {
		list = append(list, ranked{m.rank, k, m.id})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].rank < list[j].rank })
	out := make([][2]string, len(list))
	for i, r := range list {
		a, c := byID[int(int32(r.key>>32))], byID[int(int32(uint32(r.key)))]
		if got, ok := t.model.vocab[a+c]; !ok || got != int(r.id) {
			return nil, fmt.Errorf("merge %d (%q %q): the vocabulary maps several tokens to one id, so the merge cannot be written back", i, a, c)
		}
		out[i] = [2]string{a, c}
	}
	return out, nil
}

// Save writes Marshal's output to path atomically: into a temporary file in
// the same directory, synced, then renamed over path, so that path is never
// a partly written file.
func (t *Tokenizer) Save(path string) error {
	data, err := t.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, 0o644, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return fmt.Errorf("tokenizer save: %w", err)
	}
	return nil
}

// marshal writes d compactly in tokenizers' key order, then formats it.
func (d *fileDoc) marshal() ([]byte, error) {
	var b bytes.Buffer
	raw := func(key string, v json.RawMessage, def string) {
		b.Write(appendJSONString(nil, key))
		b.WriteByte(':')
		if len(bytes.TrimSpace(v)) == 0 {
			b.WriteString(def)
		} else {
			b.Write(v)
		}
	}
	b.WriteByte('{')
	raw("version", d.version, `"1.0"`)
	b.WriteByte(',')
	raw("truncation", d.truncation, "null")
	b.WriteByte(',')
	raw("padding", d.padding, "null")
	b.WriteString(`,"added_tokens":[`)
	for i, a := range d.added {
		if i > 0 {
			b.WriteByte(',')
		}
		js, err := json.Marshal(addedTokenJSON{
			ID: &a.ID, Content: a.Content, SingleWord: a.SingleWord, LStrip: a.LStrip,
			RStrip: a.RStrip, Normalized: &a.Normalized, Special: a.Special,
		})
		if err != nil {
			return nil, err
		}
		b.Write(js)
	}
	b.WriteString("],")
	raw("normalizer", d.normalizer, "null")
	b.WriteByte(',')
	raw("pre_tokenizer", d.preTokenizer, "null")
	b.WriteByte(',')
	raw("post_processor", d.postProcessor, "null")
	b.WriteByte(',')
	raw("decoder", d.decoder, "null")
	b.WriteString(`,"model":{`)
	opts := d.modelOpts
	if !hasKey(opts, "type") {
		opts = append([]rawField{{"type", json.RawMessage(`"BPE"`)}}, opts...)
	}
	for _, f := range opts {
		raw(f.key, f.value, "null")
		b.WriteByte(',')
	}
	b.WriteString(`"vocab":{`)
	for i, v := range d.vocab {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(appendJSONString(nil, v.token))
		fmt.Fprintf(&b, ":%d", v.id)
	}
	b.WriteString(`},"merges":[`)
	for i, m := range d.merges {
		if i > 0 {
			b.WriteByte(',')
		}
		if d.mergesAsStrings {
			b.Write(appendJSONString(nil, m[0]+" "+m[1]))
			continue
		}
		b.WriteByte('[')
		b.Write(appendJSONString(nil, m[0]))
		b.WriteByte(',')
		b.Write(appendJSONString(nil, m[1]))
		b.WriteByte(']')
	}
	b.WriteString("]}}")
	return prettyJSON(b.Bytes())
}

func hasKey(fs []rawField, key string) bool {
	for _, f := range fs {
		if strings.EqualFold(f.key, key) {
			return true
		}
	}
	return false
}

// orderedFields returns the members of a JSON object in order; a repeated
// key keeps its first place and its last value, as encoding/json reads it.
func orderedFields(raw json.RawMessage) ([]rawField, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var out []rawField
	at := map[string]int{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		if i, ok := at[key]; ok {
			out[i].value = v
			continue
		}
		at[key] = len(out)
		out = append(out, rawField{key, v})
	}
	return out, nil
}

// prettyJSON formats data as serde_json's pretty printer does, which is what
// tokenizers' save(pretty=True) writes: two-space indent, "key": value, one
// member or element per line, {} and [] when empty, strings escaped by
// appendJSONString, numbers as written.
func prettyJSON(data []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	p := printer{dec: dec, out: make([]byte, 0, len(data)+len(data)/2)}
	if err := p.value(0); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after JSON value")
	}
	return p.out, nil
}

type printer struct {
	dec *json.Decoder
	out []byte
}

func (p *printer) newline(depth int) {
	p.out = append(p.out, '\n')
	for i := 0; i < depth; i++ {
		p.out = append(p.out, ' ', ' ')
	}
}

func (p *printer) value(depth int) error {
	tok, err := p.dec.Token()
	if err != nil {
		return err
	}
	switch v := tok.(type) {
	case json.Delim:
		closing := byte('}')
		if v == '[' {
			closing = ']'
		}
		p.out = append(p.out, byte(v))
		n := 0
		for ; p.dec.More(); n++ {
			if n > 0 {
				p.out = append(p.out, ',')
			}
			p.newline(depth + 1)
			if v == '{' {
				key, err := p.dec.Token()
				if err != nil {
					return err
				}
				p.out = appendJSONString(p.out, key.(string))
				p.out = append(p.out, ':', ' ')
			}
			if err := p.value(depth + 1); err != nil {
				return err
			}
		}
		if _, err := p.dec.Token(); err != nil {
			return err
		}
		if n > 0 {
			p.newline(depth)
		}
		p.out = append(p.out, closing)
	case string:
		p.out = appendJSONString(p.out, v)
	case json.Number:
		p.out = append(p.out, v...)
	case bool:
		if v {
			p.out = append(p.out, "true"...)
		} else {
			p.out = append(p.out, "false"...)
		}
	case nil:
		p.out = append(p.out, "null"...)
	}
	return nil
}

// appendJSONString appends s as a JSON string the way serde_json escapes
// it: only the quote, the backslash and control characters below 0x20
// (\b \t \n \f \r, others as lower-case \u00xx); everything else, DEL and
// non-ASCII included, as is.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\r':
			dst = append(dst, '\\', 'r')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
