package tokenizer

import (
	"errors"
	"fmt"
	"slices"
	"sort"
)

// TrainConfig says what Train learns. The zero value of each field except
// VocabSize means its default.
type TrainConfig struct {
	// VocabSize is the number of ids of the trained tokenizer, counting the
	// special tokens and the 256 byte symbols: training stops once the
	// vocabulary has this many tokens. Required; at least
	// 256+len(SpecialTokens).
	VocabSize int
	// MinFrequency is the fewest occurrences (over the whole corpus) a pair
	// needs to be merged; training stops early when the most frequent pair
	// has fewer. 0 means 2, so that no merge is learned from a single
	// occurrence; 1 merges until every word is one token or VocabSize is
	// reached.
	MinFrequency int
	// SpecialTokens become special added tokens (normalized=false, no
	// strip, not single-word) with ids 0..len-1 in this order. Training cuts
	// their occurrences out of the text first, so no merge learns from or
	// produces them. Each must be non-empty, unique and not a single byte
	// symbol.
	SpecialTokens []string
	// Pattern is the Split regex applied before ByteLevel: PatternQwen2
	// (the default when empty; single digits), PatternLlama3 (digit runs of
	// up to three) or PatternGPT2.
	Pattern string
}

// DefaultTrainConfig is a Qwen2-style byte-level BPE of 32768 ids with
// <|endoftext|> as its only special token (id 0).
func DefaultTrainConfig() TrainConfig {
	return TrainConfig{
		VocabSize:     32768,
		MinFrequency:  2,
		SpecialTokens: []string{"<|endoftext|>"},
		Pattern:       PatternQwen2,
	}
}

// trainPatterns are the Split regexes Train accepts: the ones that cut any
// text into word-sized pieces on their own.
var trainPatterns = []string{PatternQwen2, PatternLlama3, PatternGPT2}

// withDefaults fills the zero-valued defaults and reports every problem of
// the configuration.
func (c TrainConfig) withDefaults() (TrainConfig, error) {
	if c.MinFrequency == 0 {
		c.MinFrequency = 2
	}
	if c.Pattern == "" {
		c.Pattern = PatternQwen2
	}
	var errs []error
	if need := 256 + len(c.SpecialTokens); c.VocabSize < need {
		errs = append(errs, fmt.Errorf("VocabSize %d is less than the 256 byte symbols plus %d special tokens (%d)", c.VocabSize, len(c.SpecialTokens), need))
	}
	if c.MinFrequency < 0 {
		errs = append(errs, fmt.Errorf("MinFrequency %d is negative", c.MinFrequency))
	}
	if !slices.Contains(trainPatterns, c.Pattern) {
		errs = append(errs, fmt.Errorf("Pattern %q is not one of PatternQwen2, PatternLlama3, PatternGPT2", truncate(c.Pattern, 40)))
	}
	seen := map[string]bool{}
	for i, s := range c.SpecialTokens {
		switch {
		case s == "":
			errs = append(errs, fmt.Errorf("SpecialTokens[%d] is empty", i))
		case seen[s]:
			errs = append(errs, fmt.Errorf("SpecialTokens[%d] %q is repeated", i, s))
		case isByteSymbol(s):
			errs = append(errs, fmt.Errorf("SpecialTokens[%d] %q is a byte symbol of the base vocabulary", i, s))
		}
		seen[s] = true
	}
	return c, errors.Join(errs...)
}

func isByteSymbol(s string) bool {
	r := []rune(s)
	if len(r) != 1 {
		return false
	}
	_, ok := runeToByte[r[0]]
	return ok
}

// Train learns a byte-level BPE tokenizer from text; it is TrainDocs with a
// single document.
func Train(text string, cfg TrainConfig) (*Tokenizer, error) {
	return TrainDocs([]string{text}, cfg)
}

// TrainDocs learns a byte-level BPE tokenizer from a corpus of documents,
// the way tokenizers' BpeTrainer does for a ByteLevel tokenizer:
//
//  1. Special tokens are cut out of every document (BpeTrainer would count
//     them as text), and each piece is split by cfg.Pattern (Isolated) into
//     pre-tokens, exactly as Encode splits text; a pre-token never spans two
//     documents. Identical pre-tokens are counted once with their frequency.
//  2. The vocabulary starts as the special tokens (ids 0..S-1) and the 256
//     GPT-2 byte symbols (ids S..S+255, in code-point order of the symbols,
//     as BpeTrainer orders ByteLevel.alphabet(): "!" is id S, "Ġ" S+220).
//  3. While the vocabulary is smaller than cfg.VocabSize, the most frequent
//     adjacent pair of tokens, over all pre-tokens weighted by frequency, is
//     merged everywhere (left to right, non-overlapping) and appended as a
//     merge rule; its token gets the next id, or keeps its id if the same
//     string was already made by another pair. Ties go to the pair with the
//     smallest (left id, right id), as in BpeTrainer, so the result does not
//     depend on the order of words or documents. Training stops early when
//     the best pair occurs fewer than cfg.MinFrequency times, or no pair is
//     left. A pair whose merged string is a special token is skipped.
//
// The result is the tokenizer Marshal writes: Qwen2's layout (no
// normalizer; Split then ByteLevel without prefix space or regex; ByteLevel
// post-processor and decoder), loadable by tokenizers. Its VocabSize is
// cfg.VocabSize unless the pairs ran out first.
func TrainDocs(docs []string, cfg TrainConfig) (*Tokenizer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("tokenizer train: %w", err)
	}
	words := countWords(docs, cfg.Pattern, cfg.SpecialTokens)
	if len(words) == 0 {
		return nil, errors.New("tokenizer train: the training text is empty (no text outside the special tokens)")
	}
	tr := newTrainer(words, cfg.SpecialTokens)
	tr.run(cfg.VocabSize, int64(cfg.MinFrequency))
	data, err := tr.document(cfg.Pattern).marshal()
	if err != nil {
		return nil, fmt.Errorf("tokenizer train: %w", err)
	}
	t, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer train: the trained tokenizer does not load: %w", err)
	}
	return t, nil
}

// wordCount is a distinct pre-token (raw bytes) and how often it occurs.
type wordCount struct {
	word string
	n    int64
}

// countWords pre-tokenizes docs as an encoder with cfg's pre-tokenizer and
// special tokens would, and returns the distinct pre-tokens sorted by
// their bytes.
func countWords(docs []string, pattern string, specials []string) []wordCount {
	m := knownPatterns[pattern]
	var set matchSet
	for i, s := range specials {
		set.add(s, i)
	}
	set.sort()
	freq := map[string]int64{}
	count := func(piece string) {
		splitIsolated(piece, m, func(w string) { freq[w]++ })
	}
	for _, d := range docs {
		splitOut(d, &set, count)
	}
	words := make([]wordCount, 0, len(freq))
	for w, n := range freq {
		words = append(words, wordCount{w, n})
	}
	sort.Slice(words, func(i, j int) bool { return words[i].word < words[j].word })
	return words
}

// splitOut calls fn on every non-empty piece of s between matches of set
// (the special tokens, which have no strip or single-word flags).
func splitOut(s string, set *matchSet, fn func(string)) {
	done := 0
	for set.any && done < len(s) {
		start, stop, _ := set.find(s, done)
		if start < 0 {
			break
		}
		if done < start {
			fn(s[done:start])
		}
		done = stop
	}
	if done < len(s) {
		fn(s[done:])
	}
}

// trainer is the state of the merge loop. Pair counts are kept exactly and
// updated incrementally from the words a merge touches; the heap is lazy:
// an entry's count may be higher than the pair's current count (counts only
// go down while an entry waits), and a popped stale entry is pushed back
// with the current count. A pair whose count goes up (only pairs with the
// token just made) gets a new entry. So every pair with a positive count
// has an entry with at least that count, and the first popped entry whose
// count is current is the most frequent pair, ties to the smallest pair.
type trainer struct {
	syms   [][]int32 // syms[w]: the tokens of word w, merged so far
	freq   []int64   // freq[w]: occurrences of word w
	tokens []string  // id -> byte-level token string (specials first)
	ids    map[string]int32
	nSpec  int
	banned map[string]bool // special contents: never made by a merge

	count   map[uint64]int64   // pairKey(a, b) -> occurrences
	where   map[uint64][]int32 // pairKey(a, b) -> words that had it (may be stale)
	heap    pairHeap
	visited []int32 // visited[w]: 1 + index of the last merge that touched w
	merges  [][2]int32
	touched []uint64 // pairs whose count went up in the current merge
}

func newTrainer(words []wordCount, specials []string) *trainer {
	tr := &trainer{
		ids:    make(map[string]int32),
		nSpec:  len(specials),
		banned: make(map[string]bool),
		count:  make(map[uint64]int64),
		where:  make(map[uint64][]int32),
	}
	for _, s := range specials {
		tr.addToken(s)
		tr.banned[s] = true
	}
	var byteID [256]int32
	for _, b := range byteSymbolOrder() {
		byteID[b] = tr.addToken(string(byteToRune[b]))
	}
	tr.syms = make([][]int32, len(words))
	tr.freq = make([]int64, len(words))
	tr.visited = make([]int32, len(words))
	for w, wc := range words {
		s := make([]int32, len(wc.word))
		for i := 0; i < len(wc.word); i++ {
			s[i] = byteID[wc.word[i]]
		}
		tr.syms[w], tr.freq[w] = s, wc.n
		for i := 0; i+1 < len(s); i++ {
			k := pairKey(s[i], s[i+1])
			tr.count[k] += wc.n
			if l := tr.where[k]; len(l) == 0 || l[len(l)-1] != int32(w) {
				tr.where[k] = append(l, int32(w))
			}
		}
	}
	for k, n := range tr.count {
		tr.heap.push(pairEntry{n, k})
	}
	return tr
}

// byteSymbolOrder returns the 256 bytes sorted by the code point of their
// byte-level symbol: the base vocabulary order.
func byteSymbolOrder() []byte {
	order := make([]byte, 256)
	for i := range order {
		order[i] = byte(i)
	}
	sort.Slice(order, func(i, j int) bool { return byteToRune[order[i]] < byteToRune[order[j]] })
	return order
}

func (tr *trainer) addToken(s string) int32 {
	id := int32(len(tr.tokens))
	tr.tokens = append(tr.tokens, s)
	tr.ids[s] = id
	return id
}

// run merges until the vocabulary has vocabSize tokens or the best pair
// occurs fewer than minFreq times.
func (tr *trainer) run(vocabSize int, minFreq int64) {
	for len(tr.tokens) < vocabSize && len(tr.heap) > 0 {
		top := tr.heap.pop()
		cur := tr.count[top.key]
		if cur != top.n {
			if cur > 0 {
				tr.heap.push(pairEntry{cur, top.key})
			}
			continue
		}
		if cur < max(minFreq, 1) {
			break
		}
		a, b := int32(top.key>>32), int32(uint32(top.key))
		s := tr.tokens[a] + tr.tokens[b]
		if tr.banned[s] {
			delete(tr.count, top.key)
			delete(tr.where, top.key)
			continue
		}
		id, ok := tr.ids[s]
		if !ok {
			id = tr.addToken(s)
		}
		tr.merges = append(tr.merges, [2]int32{a, b})
		tr.apply(top.key, a, b, id)
	}
}

// apply replaces every occurrence of the pair (a, b) by id in the words
// that have it, updating the pair counts, and queues the pairs whose count
// went up.
func (tr *trainer) apply(key uint64, a, b, id int32) {
	stamp := int32(len(tr.merges))
	tr.touched = tr.touched[:0]
	for _, w := range tr.where[key] {
		if tr.visited[w] == stamp {
			continue
		}
		tr.visited[w] = stamp
		tr.mergeWord(w, key, a, b, id)
	}
	delete(tr.count, key)
	delete(tr.where, key)
	slices.Sort(tr.touched)
	for i, k := range tr.touched {
		if i > 0 && k == tr.touched[i-1] {
			continue
		}
		if n := tr.count[k]; n > 0 {
			tr.heap.push(pairEntry{n, k})
		}
	}
}

// mergeWord merges (a, b) into id in word w, left to right. For each
// occurrence, the pairs it formed with its neighbours lose the word's
// frequency and the pairs of id with the same neighbours gain it; the
// neighbour on the left is the already rewritten one, so that adjacent
// occurrences (a b a b -> id id) count correctly.
func (tr *trainer) mergeWord(w int32, key uint64, a, b, id int32) {
	s, n := tr.syms[w], tr.freq[w]
	j := 0
	for i := 0; i < len(s); {
		if i+1 < len(s) && s[i] == a && s[i+1] == b {
			if j > 0 {
				tr.add(pairKey(s[j-1], a), key, -n, w)
				tr.add(pairKey(s[j-1], id), key, n, w)
			}
			if i+2 < len(s) {
				tr.add(pairKey(b, s[i+2]), key, -n, w)
				tr.add(pairKey(id, s[i+2]), key, n, w)
			}
			s[j] = id
			i += 2
		} else {
			s[j] = s[i]
			i++
		}
		j++
	}
	tr.syms[w] = s[:j]
}

// add changes the count of pair k by d for word w; the pair being merged
// (skip) is dropped as a whole afterwards.
func (tr *trainer) add(k, skip uint64, d int64, w int32) {
	if k == skip {
		return
	}
	n := tr.count[k] + d
	if n <= 0 {
		delete(tr.count, k)
		delete(tr.where, k)
		return
	}
	tr.count[k] = n
	if d > 0 {
		if l := tr.where[k]; len(l) == 0 || l[len(l)-1] != w {
			tr.where[k] = append(l, w)
		}
		tr.touched = append(tr.touched, k)
	}
}

// pairEntry is a heap entry: a pair and its count when queued.
type pairEntry struct {
	n   int64
	key uint64
}

// before orders the heap: higher count first, then the smaller pair
// (left id, then right id, which is pairKey's order).
func (e pairEntry) before(o pairEntry) bool {
	return e.n > o.n || (e.n == o.n && e.key < o.key)
}

type pairHeap []pairEntry

func (h *pairHeap) push(e pairEntry) {
	*h = append(*h, e)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !s[i].before(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *pairHeap) pop() pairEntry {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && s[l].before(s[m]) {
			m = l
		}
		if r < n && s[r].before(s[m]) {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

// byteLevelStep is the ByteLevel step of Qwen2's files, used as the last
// pre-tokenizer, the post-processor and the decoder of trained tokenizers.
const byteLevelStep = `{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}`

// document is the trained tokenizer as a tokenizer.json.
func (tr *trainer) document(pattern string) *fileDoc {
	pat := string(appendJSONString(nil, pattern))
	d := &fileDoc{fileParts: fileParts{
		preTokenizer:  []byte(`{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":` + pat + `},"behavior":"Isolated","invert":false},` + byteLevelStep + `]}`),
		postProcessor: []byte(byteLevelStep),
		decoder:       []byte(byteLevelStep),
		modelOpts:     defaultModelOpts(),
	}}
	for i, s := range tr.tokens[:tr.nSpec] {
		d.added = append(d.added, AddedToken{ID: i, Content: s, Special: true})
	}
	d.vocab = make([]vocabEntry, len(tr.tokens))
	for i, s := range tr.tokens {
		d.vocab[i] = vocabEntry{s, i}
	}
	d.merges = make([][2]string, len(tr.merges))
	for i, m := range tr.merges {
		d.merges[i] = [2]string{tr.tokens[m[0]], tr.tokens[m[1]]}
	}
	return d
}
