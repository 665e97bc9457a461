package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/text/unicode/norm"
)

// ErrUnsupported is wrapped by every load error about a tokenizer.json
// feature this package does not implement (a model other than BPE, an
// unknown pre-tokenizer, normalizer or decoder, a Split regex without a
// matcher, ...).
var ErrUnsupported = errors.New("unsupported tokenizer feature")

// maxIDSlack bounds how sparse ids may be: the largest id must be below
// 2*(number of tokens)+maxIDSlack. Real files are dense; the bound keeps a
// corrupt id such as 1e9 from allocating gigabytes.
const maxIDSlack = 1 << 16

// Load reads a Hugging Face tokenizer.json file.
func Load(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return Parse(data, path)
}

// LoadDir reads dir/tokenizer.json and, when present, dir/tokenizer_config.json
// for the names of the bos, eos, pad and unk tokens.
func LoadDir(dir string) (*Tokenizer, error) {
	t, err := Load(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	data, err := os.ReadFile(cfgPath)
	if errors.Is(err, os.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if err := t.applyConfig(data); err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", cfgPath, err)
	}
	return t, nil
}

// Parse builds a Tokenizer from the contents of a tokenizer.json; name (the
// file path, usually) prefixes every error.
func Parse(data []byte, name string) (*Tokenizer, error) {
	t, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", name, err)
	}
	t.name = name
	return t, nil
}

type fileJSON struct {
	Version       json.RawMessage  `json:"version"`
	Truncation    json.RawMessage  `json:"truncation"`
	Padding       json.RawMessage  `json:"padding"`
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    json.RawMessage  `json:"normalizer"`
	PreTokenizer  json.RawMessage  `json:"pre_tokenizer"`
	PostProcessor json.RawMessage  `json:"post_processor"`
	Decoder       json.RawMessage  `json:"decoder"`
	Model         json.RawMessage  `json:"model"`
}

type addedTokenJSON struct {
	ID         *int   `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized *bool  `json:"normalized"` // absent: !special, as AddedToken::from
	Special    bool   `json:"special"`
}

type modelJSON struct {
	Type                    string            `json:"type"`
	Vocab                   json.RawMessage   `json:"vocab"`
	Merges                  []json.RawMessage `json:"merges"`
	Dropout                 *float64          `json:"dropout"`
	UnkToken                *string           `json:"unk_token"`
	ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
	FuseUnk                 bool              `json:"fuse_unk"`
	ByteFallback            bool              `json:"byte_fallback"`
	IgnoreMerges            bool              `json:"ignore_merges"`
}

// typed is the common head of the tagged unions (normalizers,
// pre-tokenizers, decoders, post-processors).
type typed struct {
	Type string `json:"type"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

func parse(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("malformed JSON: %w", err)
	}
	if isNull(f.Model) {
		return nil, errors.New(`missing "model"`)
	}
	t := &Tokenizer{special: SpecialTokens{BOS: -1, EOS: -1, PAD: -1, UNK: -1}}
	var errs []error
	if err := t.parseModel(f.Model); err != nil {
		// Nothing below makes sense without a vocabulary.
		return nil, err
	}
	if err := t.parseAdded(f.AddedTokens); err != nil {
		return nil, err
	}
	if err := t.parseNormalizer(f.Normalizer); err != nil {
		errs = append(errs, err)
	}
	if err := t.parsePreTokenizer(f.PreTokenizer); err != nil {
		errs = append(errs, err)
	}
	if err := parseDecoder(f.Decoder); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	t.buildMatchSets()
	t.buildDecodeTable()
	t.guessSpecial(f.PostProcessor)
	t.src.version, t.src.truncation, t.src.padding = f.Version, f.Truncation, f.Padding
	t.src.normalizer, t.src.preTokenizer = f.Normalizer, f.PreTokenizer
	t.src.postProcessor, t.src.decoder = f.PostProcessor, f.Decoder
	return t, nil
}

func (t *Tokenizer) parseModel(raw json.RawMessage) error {
	var m modelJSON
	if err := json.Unmarshal(raw, &m); err != nil {
		var head typed
		if json.Unmarshal(raw, &head) == nil && head.Type != "" && head.Type != "BPE" {
			return fmt.Errorf("model type %q: %w (only BPE is implemented)", head.Type, ErrUnsupported)
		}
		return fmt.Errorf("malformed model: %w", err)
	}
	if m.Type == "" && m.Merges != nil {
		m.Type = "BPE" // older files leave the untagged model type implicit
	}
	if m.Type != "BPE" {
		if m.Type == "" {
			return errors.New(`model has no "type" and no "merges"`)
		}
		return fmt.Errorf("model type %q: %w (only BPE is implemented)", m.Type, ErrUnsupported)
	}
	var errs []error
	if m.ByteFallback {
		errs = append(errs, fmt.Errorf("model.byte_fallback=true: %w", ErrUnsupported))
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		errs = append(errs, fmt.Errorf("model.dropout=%v (random merges cannot be reproduced): %w", *m.Dropout, ErrUnsupported))
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		errs = append(errs, fmt.Errorf("model.continuing_subword_prefix=%q: %w", *m.ContinuingSubwordPrefix, ErrUnsupported))
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		errs = append(errs, fmt.Errorf("model.end_of_word_suffix=%q: %w", *m.EndOfWordSuffix, ErrUnsupported))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	opts, err := orderedFields(raw)
	if err != nil {
		return fmt.Errorf("malformed model: %w", err)
	}
	for _, f := range opts {
		// encoding/json matched "Vocab" or "MERGES" too.
		if !strings.EqualFold(f.key, "vocab") && !strings.EqualFold(f.key, "merges") {
			t.src.modelOpts = append(t.src.modelOpts, f)
		}
	}
	t.src.mergesAsStrings = len(m.Merges) > 0 && bytes.HasPrefix(bytes.TrimSpace(m.Merges[0]), []byte(`"`))

	var vocab map[string]int
	if err := json.Unmarshal(m.Vocab, &vocab); err != nil || vocab == nil {
		return fmt.Errorf("model.vocab is not an object of token to id: %v", err)
	}
	maxID := -1
	for tok, id := range vocab {
		if id < 0 {
			errs = append(errs, fmt.Errorf("model.vocab[%q] = %d: negative id", tok, id))
		}
		maxID = max(maxID, id)
	}
	if maxID >= 2*len(vocab)+maxIDSlack {
		errs = append(errs, fmt.Errorf("model.vocab: id %d is too sparse for %d tokens", maxID, len(vocab)))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	b := &bpe{merges: make(map[uint64]merge, len(m.Merges)), unk: -1, fuseUnk: m.FuseUnk, ignoreMerges: m.IgnoreMerges, vocab: vocab}
	for i := range b.byteID {
		b.byteID[i] = -1
		if id, ok := vocab[string(byteToRune[i])]; ok {
			b.byteID[i] = int32(id)
		}
	}
	if m.UnkToken != nil {
		id, ok := vocab[*m.UnkToken]
		if !ok {
			return fmt.Errorf("model.unk_token %q is not in the vocabulary", *m.UnkToken)
		}
		b.unk = int32(id)
		t.special.UNK = id
	}
	for i, rawMerge := range m.Merges {
		a, c, err := parseMerge(rawMerge)
		if err != nil {
			errs = append(errs, fmt.Errorf("model.merges[%d]: %w", i, err))
			continue
		}
		ia, okA := vocab[a]
		ic, okC := vocab[c]
		id, okM := vocab[a+c]
		if !okA || !okC || !okM {
			errs = append(errs, fmt.Errorf("model.merges[%d] %q %q: token %q not in the vocabulary", i, a, c, missing(okA, a, okC, c, a+c)))
			continue
		}
		// A repeated pair keeps its last rank, as tokenizers' HashMap collect does.
		b.merges[pairKey(int32(ia), int32(ic))] = merge{rank: int32(i), id: int32(id)}
	}
	if len(errs) > 8 {
		errs = append(errs[:8], fmt.Errorf("... and %d more merge errors", len(errs)-8))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	t.model = b
	t.grow(maxID + 1)
	for tok, id := range vocab {
		t.tokens[id], t.has[id] = tok, true
	}
	return nil
}

func missing(okA bool, a string, okB bool, b, ab string) string {
	switch {
	case !okA:
		return a
	case !okB:
		return b
	}
	return ab
}

// parseMerge accepts both merge forms: "a b" (split at the first space) and
// ["a", "b"].
func parseMerge(raw json.RawMessage) (string, string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		a, b, ok := strings.Cut(s, " ")
		if !ok {
			return "", "", fmt.Errorf("%q is not two space-separated tokens", s)
		}
		return a, b, nil
	}
	var pair []string
	if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
		return "", "", fmt.Errorf("%s is neither \"a b\" nor [a, b]", truncate(string(raw), 40))
	}
	return pair[0], pair[1], nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// grow makes ids [0, n) addressable.
func (t *Tokenizer) grow(n int) {
	for len(t.tokens) < n {
		t.tokens = append(t.tokens, "")
		t.has = append(t.has, false)
	}
}

func (t *Tokenizer) parseAdded(list []addedTokenJSON) error {
	var errs []error
	seen := map[string]bool{}
	for i, a := range list {
		if a.ID == nil || *a.ID < 0 {
			errs = append(errs, fmt.Errorf("added_tokens[%d] %q: missing or negative id", i, a.Content))
			continue
		}
		// tokenizers ignores empty and repeated contents.
		if a.Content == "" || seen[a.Content] {
			continue
		}
		seen[a.Content] = true
		// Like tokenizers, a content already in the model vocabulary keeps
		// the vocabulary's id.
		id := *a.ID
		if vid, ok := t.model.vocab[a.Content]; ok {
			id = vid
		}
		normalized := !a.Special
		if a.Normalized != nil {
			normalized = *a.Normalized
		}
		t.added = append(t.added, AddedToken{
			ID: id, Content: a.Content, Special: a.Special, SingleWord: a.SingleWord,
			LStrip: a.LStrip, RStrip: a.RStrip, Normalized: normalized,
		})
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Ids run to the largest one kept: an ignored entry's id is no token.
	n := len(t.model.vocab)
	for _, a := range t.added {
		n = max(n, a.ID+1)
	}
	if n >= 2*(len(t.model.vocab)+len(list))+maxIDSlack {
		return fmt.Errorf("added_tokens: id %d is too sparse", n-1)
	}
	t.addedByContent = make(map[string]int, len(t.added))
	t.addedByID = make(map[int]int, len(t.added))
	t.grow(n)
	for i, a := range t.added {
		t.addedByContent[a.Content] = i
		t.addedByID[a.ID] = i
		t.has[a.ID] = true
	}
	return nil
}

func (t *Tokenizer) parseNormalizer(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var head struct {
		Type        string            `json:"type"`
		Normalizers []json.RawMessage `json:"normalizers"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return fmt.Errorf("malformed normalizer: %w", err)
	}
	switch head.Type {
	case "NFC":
		t.normalizers = append(t.normalizers, norm.NFC)
	case "NFD":
		t.normalizers = append(t.normalizers, norm.NFD)
	case "NFKC":
		t.normalizers = append(t.normalizers, norm.NFKC)
	case "NFKD":
		t.normalizers = append(t.normalizers, norm.NFKD)
	case "Sequence":
		for _, n := range head.Normalizers {
			if err := t.parseNormalizer(n); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("normalizer type %q: %w (only NFC, NFD, NFKC, NFKD and Sequence)", head.Type, ErrUnsupported)
	}
	return nil
}

type preTokJSON struct {
	Type           string            `json:"type"`
	PreTokenizers  []json.RawMessage `json:"pretokenizers"`
	AddPrefixSpace *bool             `json:"add_prefix_space"`
	UseRegex       *bool             `json:"use_regex"`
	Pattern        struct {
		Regex  *string `json:"Regex"`
		String *string `json:"String"`
	} `json:"pattern"`
	Behavior         string `json:"behavior"`
	Invert           bool   `json:"invert"`
	IndividualDigits bool   `json:"individual_digits"`
}

// canonicalPattern spells raw carriage returns and line feeds as the escapes
// \r and \n, which mean the same to the regex engine: DeepSeek's files write
// them as JSON escapes (raw characters in the pattern), Qwen's as regex
// escapes.
func canonicalPattern(p string) string {
	return strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(p)
}

func (t *Tokenizer) parsePreTokenizer(raw json.RawMessage) error {
	if isNull(raw) {
		return fmt.Errorf("pre_tokenizer is null: %w (byte-level BPE needs a ByteLevel pre-tokenizer)", ErrUnsupported)
	}
	if err := t.appendPreTok(raw, "pre_tokenizer"); err != nil {
		return err
	}
	n := len(t.steps)
	for i, s := range t.steps {
		if s.byteLevel && i != n-1 {
			return fmt.Errorf("pre_tokenizer: ByteLevel must be the last pre-tokenizer of the sequence: %w", ErrUnsupported)
		}
	}
	if n == 0 || !t.steps[n-1].byteLevel {
		return fmt.Errorf("pre_tokenizer: no ByteLevel pre-tokenizer: %w (only byte-level BPE is implemented)", ErrUnsupported)
	}
	return nil
}

func (t *Tokenizer) appendPreTok(raw json.RawMessage, where string) error {
	var p preTokJSON
	if err := json.Unmarshal(raw, &p); err != nil {
		return fmt.Errorf("malformed %s: %w", where, err)
	}
	switch p.Type {
	case "Sequence":
		for i, sub := range p.PreTokenizers {
			if err := t.appendPreTok(sub, fmt.Sprintf("%s.pretokenizers[%d]", where, i)); err != nil {
				return err
			}
		}
	case "ByteLevel":
		// Defaults of tokenizers' ByteLevel::default().
		st := preStep{byteLevel: true, addPrefixSpace: true, useRegex: true}
		if p.AddPrefixSpace != nil {
			st.addPrefixSpace = *p.AddPrefixSpace
		}
		if p.UseRegex != nil {
			st.useRegex = *p.UseRegex
		}
		t.steps = append(t.steps, st)
	case "Split":
		if p.Behavior != "Isolated" {
			return fmt.Errorf("%s: Split behavior %q: %w (only Isolated)", where, p.Behavior, ErrUnsupported)
		}
		if p.Invert {
			return fmt.Errorf("%s: Split invert=true: %w", where, ErrUnsupported)
		}
		switch {
		case p.Pattern.Regex != nil:
			m, ok := knownPatterns[canonicalPattern(*p.Pattern.Regex)]
			if !ok {
				return fmt.Errorf("%s: Split regex %q has no matcher in this package: %w", where, *p.Pattern.Regex, ErrUnsupported)
			}
			t.steps = append(t.steps, preStep{match: m})
		case p.Pattern.String != nil && *p.Pattern.String != "":
			lit := *p.Pattern.String
			t.steps = append(t.steps, preStep{match: func(s string, i int) int {
				if strings.HasPrefix(s[i:], lit) {
					return i + len(lit)
				}
				return -1
			}})
		default:
			return fmt.Errorf("%s: Split without a Regex or non-empty String pattern", where)
		}
	case "Digits":
		// tokenizers splits on char::is_numeric (\p{N}), Isolated when
		// individual_digits, else Contiguous: runs of digits stay together.
		if p.IndividualDigits {
			t.steps = append(t.steps, preStep{match: matchOneDigit})
		} else {
			t.steps = append(t.steps, preStep{match: matchDigitRun})
		}
	default:
		return fmt.Errorf("%s type %q: %w (only ByteLevel, Split, Digits and Sequence)", where, p.Type, ErrUnsupported)
	}
	return nil
}

func parseDecoder(raw json.RawMessage) error {
	if isNull(raw) {
		return fmt.Errorf("decoder is null: %w (byte-level BPE needs a ByteLevel decoder)", ErrUnsupported)
	}
	var d struct {
		Type     string            `json:"type"`
		Decoders []json.RawMessage `json:"decoders"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("malformed decoder: %w", err)
	}
	switch d.Type {
	case "ByteLevel":
		return nil
	case "Sequence":
		if len(d.Decoders) == 1 {
			return parseDecoder(d.Decoders[0])
		}
	}
	return fmt.Errorf("decoder type %q: %w (only ByteLevel)", d.Type, ErrUnsupported)
}

// buildMatchSets indexes the added tokens for matching: non-normalized ones by
// their content, normalized ones by their normalized content, each list
// bucketed by first byte with the longest content first.
func (t *Tokenizer) buildMatchSets() {
	for i, a := range t.added {
		if a.Normalized {
			t.normSet.add(t.normalize(a.Content), i)
		} else {
			t.rawSet.add(a.Content, i)
		}
	}
	t.rawSet.sort()
	t.normSet.sort()
}

func (t *Tokenizer) buildDecodeTable() {
	t.decOff = make([]int32, len(t.tokens)+1)
	t.isSpecial = make([]bool, len(t.tokens))
	specials := map[string]bool{}
	for _, a := range t.added {
		if a.Special {
			specials[a.Content] = true
		}
	}
	for id := range t.tokens {
		tok, ok := t.IDToToken(id)
		if ok {
			t.decBytes = append(t.decBytes, tokenBytes(tok)...)
			// tokenizers skips by content: any id whose token is a special
			// token's content.
			t.isSpecial[id] = specials[tok]
		}
		t.decOff[id+1] = int32(len(t.decBytes))
	}
}

// guessSpecial fills BOS and EOS from the post-processor's template (tokens
// before $A are BOS, after it EOS) or, failing that, from well-known special
// token contents. tokenizer_config.json, read by LoadDir, overrides both.
func (t *Tokenizer) guessSpecial(post json.RawMessage) {
	var pp struct {
		Type       string            `json:"type"`
		Single     []json.RawMessage `json:"single"`
		Processors []json.RawMessage `json:"processors"`
	}
	if !isNull(post) && json.Unmarshal(post, &pp) == nil {
		if pp.Type == "Sequence" {
			for _, p := range pp.Processors {
				t.guessSpecial(p)
			}
		}
		seenSeq := false
		for _, item := range pp.Single {
			var it struct {
				SpecialToken *struct {
					ID string `json:"id"`
				}
				Sequence *struct{}
			}
			if json.Unmarshal(item, &it) != nil {
				continue
			}
			if it.Sequence != nil {
				seenSeq = true
			}
			if it.SpecialToken == nil {
				continue
			}
			if id, ok := t.TokenToID(it.SpecialToken.ID); ok {
				if !seenSeq && t.special.BOS < 0 {
					t.special.BOS = id
				} else if seenSeq && t.special.EOS < 0 {
					t.special.EOS = id
				}
			}
		}
	}
	pick := func(dst *int, names ...string) {
		for _, n := range names {
			if i, ok := t.addedByContent[n]; ok && *dst < 0 && t.added[i].Special {
				*dst = t.added[i].ID
			}
		}
	}
	pick(&t.special.BOS, "<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "<s>", "<bos>", "<|startoftext|>")
	pick(&t.special.EOS, "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>", "<eos>", "<|endoftext|>")
	pick(&t.special.PAD, "<pad>", "<|pad|>", "<|finetune_right_pad_id|>", "<｜▁pad▁｜>")
}

// applyConfig reads bos_token, eos_token, pad_token and unk_token from a
// tokenizer_config.json; each may be a string, an {"content": ...} object
// or null.
func (t *Tokenizer) applyConfig(data []byte) error {
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("malformed JSON: %w", err)
	}
	var errs []error
	set := func(key string, dst *int) {
		raw, ok := cfg[key]
		if !ok || isNull(raw) {
			return
		}
		var s string
		if json.Unmarshal(raw, &s) != nil {
			var obj struct {
				Content string `json:"content"`
			}
			if json.Unmarshal(raw, &obj) != nil {
				errs = append(errs, fmt.Errorf("%s: neither a string nor {\"content\": ...}", key))
				return
			}
			s = obj.Content
		}
		id, ok := t.TokenToID(s)
		if !ok {
			errs = append(errs, fmt.Errorf("%s %q is not a token", key, s))
			return
		}
		*dst = id
	}
	set("bos_token", &t.special.BOS)
	set("eos_token", &t.special.EOS)
	set("pad_token", &t.special.PAD)
	set("unk_token", &t.special.UNK)
	return errors.Join(errs...)
}

// matchSet finds added tokens in text: leftmost match first, longest among
// those starting at the same byte (tokenizers uses Aho-Corasick with
// LeftmostLongest; a first-byte index finds the same matches and is enough
// for the few hundred added tokens of real files).
type matchSet struct {
	byFirst [256][]matchEntry
	any     bool
}

type matchEntry struct {
	content string
	idx     int // index into Tokenizer.added
}

func (tr *matchSet) add(content string, idx int) {
	if content == "" {
		return
	}
	tr.byFirst[content[0]] = append(tr.byFirst[content[0]], matchEntry{content, idx})
	tr.any = true
}

func (tr *matchSet) sort() {
	for i := range tr.byFirst {
		sort.SliceStable(tr.byFirst[i], func(a, b int) bool {
			return len(tr.byFirst[i][a].content) > len(tr.byFirst[i][b].content)
		})
	}
}

// find returns the first match at or after from: its start, end and index
// into Tokenizer.added; start is -1 if there is none.
func (tr *matchSet) find(s string, from int) (start, end, idx int) {
	for p := from; p < len(s); p++ {
		for _, e := range tr.byFirst[s[p]] {
			if strings.HasPrefix(s[p:], e.content) {
				return p, p + len(e.content), e.idx
			}
		}
	}
	return -1, -1, -1
}
