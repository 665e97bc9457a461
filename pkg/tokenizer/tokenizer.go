package tokenizer

import (
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// ErrUnknownID is wrapped by decode errors for an id that has no token.
var ErrUnknownID = errors.New("unknown token id")

// Tokenizer is a byte-level BPE tokenizer loaded from a tokenizer.json. It
// is immutable after loading except for an internal word cache, and safe for
// concurrent use.
type Tokenizer struct {
	name string // file it was loaded from, for messages

	model       *bpe
	normalizers []norm.Form // applied in order; empty: none
	steps       []preStep   // pre-tokenizers in order; the last is ByteLevel

	// tokens[id] is the token string of id (added tokens take precedence
	// over the model vocabulary); has[id] says whether id is assigned.
	tokens []string
	has    []bool

	added          []AddedToken
	addedByContent map[string]int // content -> index into added
	addedByID      map[int]int    // id -> index into added
	rawSet         matchSet       // added tokens with Normalized == false
	normSet        matchSet       // added tokens with Normalized == true, by normalized content

	// decBytes[decOff[id]:decOff[id+1]] is what the ByteLevel decoder turns
	// id's token into.
	decBytes  []byte
	decOff    []int32
	isSpecial []bool // by id

	special SpecialTokens

	// src is what Marshal writes back as loaded.
	src fileParts
}

// preStep is one pre-tokenizer: a Split (match != nil) or ByteLevel.
type preStep struct {
	match          matcher
	byteLevel      bool
	addPrefixSpace bool
	useRegex       bool
}

// AddedToken is an entry of tokenizer.json's added_tokens, matched in the
// input before pre-tokenization.
type AddedToken struct {
	ID      int
	Content string
	// Special tokens are the ones DecodeSkipSpecial drops.
	Special bool
	// SingleWord: only match when not preceded or followed by a word
	// character (\w: letters, marks, decimal digits, connector punctuation).
	SingleWord bool
	// LStrip / RStrip: the match also swallows the white space before /
	// after it.
	LStrip, RStrip bool
	// Normalized: matched in the normalized text against the normalized
	// content; otherwise matched in the raw text.
	Normalized bool
}

// SpecialTokens holds the ids of the conventional special tokens, -1 where
// unknown.
type SpecialTokens struct {
	BOS, EOS, PAD, UNK int
}

// Name returns the path the tokenizer was loaded from ("" for one made by
// Train).
func (t *Tokenizer) Name() string { return t.name }

// VocabSize is one more than the largest id, counting the model vocabulary
// and the added tokens; ids in [0, VocabSize) without a token are holes.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// IDToToken returns the token string of id (an added token's content, or the
// model's byte-level token such as "Ġthe"); ok is false if id has none.
func (t *Tokenizer) IDToToken(id int) (tok string, ok bool) {
	if i, ok := t.addedByID[id]; ok {
		return t.added[i].Content, true
	}
	if id < 0 || id >= len(t.tokens) || !t.has[id] {
		return "", false
	}
	return t.tokens[id], true
}

// TokenToID returns the id of an added token's content or of a model token.
func (t *Tokenizer) TokenToID(tok string) (int, bool) {
	if i, ok := t.addedByContent[tok]; ok {
		return t.added[i].ID, true
	}
	id, ok := t.model.vocab[tok]
	return id, ok
}

// IsSpecial reports whether id's token is the content of a special added
// token.
func (t *Tokenizer) IsSpecial(id int) bool {
	return id >= 0 && id < len(t.isSpecial) && t.isSpecial[id]
}

// AddedTokens returns a copy of the added tokens, in file order.
func (t *Tokenizer) AddedTokens() []AddedToken { return append([]AddedToken(nil), t.added...) }

// Special returns the bos/eos/pad/unk ids: from tokenizer_config.json when
// loaded with LoadDir, else from the post-processor template or well-known
// special token names (see the package documentation).
func (t *Tokenizer) Special() SpecialTokens { return t.special }

// Encode tokenizes text without adding special tokens, exactly as
// tokenizers' encode(text, add_special_tokens=False).
func (t *Tokenizer) Encode(text string) []int {
	ids, _ := t.encode(text, false)
	return ids
}

// EncodeTokens is Encode that also returns each id's token string as
// tokenizers' Encoding.tokens has it (for an added token, the matched text,
// which includes white space swallowed by lstrip/rstrip).
func (t *Tokenizer) EncodeTokens(text string) (ids []int, tokens []string) {
	return t.encode(text, true)
}

func (t *Tokenizer) encode(text string, wantTokens bool) ([]int, []string) {
	e := encoder{t: t, wantTokens: wantTokens, ids: make([]int, 0, len(text)/3+1)}
	t.splitAdded(text, &t.rawSet, func(piece string, added int) {
		if added >= 0 {
			e.addToken(t.added[added].ID, piece)
			return
		}
		t.splitAdded(t.normalize(piece), &t.normSet, func(piece string, added int) {
			if added >= 0 {
				e.addToken(t.added[added].ID, piece)
				return
			}
			e.preTokenize(piece, 0)
		})
	})
	return e.ids, e.tokens
}

type encoder struct {
	t          *Tokenizer
	wantTokens bool
	ids        []int
	tokens     []string
}

func (e *encoder) addToken(id int, text string) {
	e.ids = append(e.ids, id)
	if e.wantTokens {
		e.tokens = append(e.tokens, text)
	}
}

// preTokenize runs pre-tokenizer k and the ones after it on piece, then the
// model on every resulting pre-token. Pieces stay raw bytes throughout: the
// ByteLevel byte-to-code-point mapping is a bijection applied inside the
// model, which is equivalent because ByteLevel is always the last step.
func (e *encoder) preTokenize(piece string, k int) {
	if piece == "" {
		return
	}
	if k == len(e.t.steps) {
		n := len(e.ids)
		e.ids = e.t.model.appendWord(e.ids, piece)
		if e.wantTokens {
			for _, id := range e.ids[n:] {
				e.tokens = append(e.tokens, e.t.tokens[id])
			}
		}
		return
	}
	st := &e.t.steps[k]
	if st.byteLevel {
		if st.addPrefixSpace && piece[0] != ' ' {
			piece = " " + piece
		}
		if !st.useRegex {
			e.preTokenize(piece, k+1)
			return
		}
		splitIsolated(piece, matchGPT2, func(p string) { e.preTokenize(p, k+1) })
		return
	}
	splitIsolated(piece, st.match, func(p string) { e.preTokenize(p, k+1) })
}

// normalize applies the normalizers in order.
func (t *Tokenizer) normalize(s string) string {
	for _, f := range t.normalizers {
		s = f.String(s)
	}
	return s
}

// splitAdded cuts s at the added tokens found by tr and calls fn on every
// piece in order, with the index of the added token or -1 for text between
// tokens. It follows tokenizers' AddedVocabulary::find_matches, including
// its quirks: after a match the scan resumes at the end of the token itself,
// not of the white space that rstrip swallowed.
func (t *Tokenizer) splitAdded(s string, tr *matchSet, fn func(piece string, added int)) {
	if s == "" {
		return
	}
	if !tr.any {
		fn(s, -1)
		return
	}
	done := 0 // end of the last emitted piece (start_offset)
	for from := 0; from < len(s); {
		start, stop, idx := tr.find(s, from)
		if start < 0 {
			break
		}
		from = stop
		a := &t.added[idx]
		if a.SingleWord {
			if (start > 0 && endsWithWord(s[:start])) || (stop < len(s) && startsWithWord(s[stop:])) {
				continue
			}
		}
		if a.LStrip {
			start = max(leadingSpaceStart(s[:start]), done)
		}
		if a.RStrip {
			stop += trailingSpaceLen(s[stop:])
		}
		if done < start {
			fn(s[done:start], -1)
		}
		start = min(start, stop) // tokenizers panics here; we emit an empty match
		fn(s[start:stop], idx)
		done = stop
	}
	if done < len(s) {
		fn(s[done:], -1)
	}
}

// isWordRune is Rust regex's Unicode \w: Alphabetic, M, Nd, Pc, Join_Control.
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsMark(r) || unicode.Is(unicode.Nd, r) ||
		unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Nl, r) ||
		unicode.Is(unicode.Other_Alphabetic, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return isWordRune(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return isWordRune(r)
}

// leadingSpaceStart is where the trailing white space of s begins.
func leadingSpaceStart(s string) int {
	i := len(s)
	for i > 0 {
		r, w := utf8.DecodeLastRuneInString(s[:i])
		if !unicode.IsSpace(r) {
			break
		}
		i -= w
	}
	return i
}

// trailingSpaceLen is the length of the leading white space of s.
func trailingSpaceLen(s string) int {
	i := 0
	for i < len(s) {
		r, w := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsSpace(r) {
			break
		}
		i += w
	}
	return i
}

// Decode turns ids back into text with the ByteLevel decoder, keeping
// special tokens. Byte sequences that are not valid UTF-8 (a generation cut
// in the middle of a character) become U+FFFD as in Rust's
// String::from_utf8_lossy. An id without a token is an error wrapping
// ErrUnknownID (tokenizers would skip it silently).
func (t *Tokenizer) Decode(ids []int) (string, error) {
	b, err := t.DecodeBytes(ids, false)
	if err != nil {
		return "", err
	}
	return lossyString(b), nil
}

// DecodeSkipSpecial is Decode without the special tokens
// (skip_special_tokens=True).
func (t *Tokenizer) DecodeSkipSpecial(ids []int) (string, error) {
	b, err := t.DecodeBytes(ids, true)
	if err != nil {
		return "", err
	}
	return lossyString(b), nil
}

// DecodeBytes returns the raw bytes the ids stand for, before any UTF-8
// repair; for a byte-complete vocabulary DecodeBytes(Encode(s)) is s byte for
// byte, even for invalid UTF-8 (normalized, and with the spaces of
// add_prefix_space, if the tokenizer has those).
func (t *Tokenizer) DecodeBytes(ids []int, skipSpecial bool) ([]byte, error) {
	n := 0
	for _, id := range ids {
		if err := t.checkID(id); err != nil {
			return nil, err
		}
		n += int(t.decOff[id+1] - t.decOff[id])
	}
	out := make([]byte, 0, n)
	for _, id := range ids {
		out = t.appendTokenBytes(out, id, skipSpecial)
	}
	return out, nil
}

func (t *Tokenizer) checkID(id int) error {
	if id < 0 || id >= len(t.tokens) {
		return fmt.Errorf("decode: id %d outside vocabulary of size %d: %w", id, len(t.tokens), ErrUnknownID)
	}
	if _, ok := t.IDToToken(id); !ok {
		return fmt.Errorf("decode: id %d has no token (vocabulary size %d): %w", id, len(t.tokens), ErrUnknownID)
	}
	return nil
}

func (t *Tokenizer) appendTokenBytes(dst []byte, id int, skipSpecial bool) []byte {
	if skipSpecial && t.isSpecial[id] {
		return dst
	}
	return append(dst, t.decBytes[t.decOff[id]:t.decOff[id+1]]...)
}
