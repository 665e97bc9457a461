package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Why hand-written matchers instead of a regex engine: the Split regexes in
// real tokenizer.json files use the lookahead \s+(?!\S), which Go's regexp
// (RE2) cannot express, and a backtracking engine such as regexp2 is a new
// dependency, allocates per match and follows .NET rather than Oniguruma
// semantics. The handful of patterns that byte-level BPE checkpoints actually
// ship (GPT-2, Qwen2, Llama-3, DeepSeek-V3) are each a short alternation over
// Unicode classes, so each one is written below as a function that returns
// where the pattern's leftmost-first, backtracking match starting at i ends.
// Each was derived alternative by alternative, with the backtracking spelled
// out in comments, and pretok_test.go checks every one against Go's regexp
// on the lookahead-free rewrite of the same pattern. A Split whose regex is
// not in knownPatterns is a load error, never an approximation.

// A matcher returns the end of the match of its pattern that starts at byte
// offset i of s (i < len(s)), or -1 if the pattern does not match at i. It
// never returns i (none of the patterns can match the empty string).
type matcher func(s string, i int) int

// Pattern strings exactly as they appear in tokenizer.json after JSON
// unescaping, except that raw CR and LF characters, which DeepSeek's files
// use inside the classes, are also accepted for the escapes \r and \n.
const (
	// PatternGPT2 is the GPT-2 pre-tokenizer regex; the ByteLevel
	// pre-tokenizer uses it when use_regex is true.
	PatternGPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	// PatternQwen2 is the Qwen2/Qwen3 Split regex (single digits).
	PatternQwen2 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// PatternLlama3 is the Llama-3 / cl100k-style Split regex (digit runs of
	// at most three).
	PatternLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// PatternDigits3 is DeepSeek-V3's first Split: digit runs of at most three.
	PatternDigits3 = `\p{N}{1,3}`
	// PatternDeepSeekCJK is DeepSeek-V3's second Split: runs of CJK
	// ideographs (U+4E00..U+9FA5), hiragana and katakana.
	PatternDeepSeekCJK = "[一-龥\u3040-ゟ゠-ヿ]+"
	// PatternDeepSeekMain is DeepSeek-V3's third Split.
	PatternDeepSeekMain = `[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_` + "`" + `{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// knownPatterns maps each supported Split regex to its matcher.
var knownPatterns = map[string]matcher{
	PatternGPT2:         matchGPT2,
	PatternQwen2:        matchQwen2,
	PatternLlama3:       matchLlama3,
	PatternDigits3:      matchDigits3,
	PatternDeepSeekCJK:  matchDeepSeekCJK,
	PatternDeepSeekMain: matchDeepSeekMain,
}

// Character classes. \s is Unicode White_Space in Oniguruma, as in Go's
// unicode.IsSpace; \p{L}, \p{N}, \p{M}, \p{P}, \p{S} are general categories.
// Go's tables (Unicode 15) may differ from the Oniguruma build of a given
// tokenizers release for code points assigned in later Unicode versions.
const (
	cL    uint8 = 1 << iota // \p{L}
	cN                      // \p{N}
	cSp                     // \s
	cNL                     // \r or \n
	cM                      // \p{M}
	cPS                     // \p{P} or \p{S}
	cASCL                   // [A-Za-z]
	cASCP                   // ASCII punctuation of DeepSeek's first alternative
)

var latin1Class [256]uint8

func init() {
	for r := rune(0); r < 256; r++ {
		latin1Class[r] = classSlow(r)
	}
}

func classSlow(r rune) uint8 {
	var c uint8
	if unicode.IsLetter(r) {
		c |= cL
	}
	if unicode.IsNumber(r) {
		c |= cN
	}
	if unicode.IsSpace(r) {
		c |= cSp
	}
	if r == '\r' || r == '\n' {
		c |= cNL
	}
	if unicode.IsMark(r) {
		c |= cM
	}
	if unicode.IsPunct(r) || unicode.IsSymbol(r) {
		c |= cPS
	}
	if (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
		c |= cASCL
	}
	if r < 0x80 && r > ' ' && r < 0x7F && c&(cL|cN) == 0 {
		c |= cASCP // the 32 characters !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
	}
	return c
}

// at decodes the rune at s[i:] and its class. An invalid byte decodes as
// utf8.RuneError of width 1 and is classed like U+FFFD (a symbol), so that
// every byte of any Go string belongs to exactly one piece.
func at(s string, i int) (rune, int, uint8) {
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1, latin1Class[c]
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	if r < 256 {
		return r, w, latin1Class[r]
	}
	return r, w, classSlow(r)
}

// runWhile returns the end of the run of runes starting at i whose class
// intersects want.
func runWhile(s string, i int, want uint8) int {
	for i < len(s) {
		_, w, c := at(s, i)
		if c&want == 0 {
			break
		}
		i += w
	}
	return i
}

// runOther returns the end of the run of runes starting at i that are none of
// \s, \p{L}, \p{N} (the class [^\s\p{L}\p{N}]).
func runOther(s string, i int) int {
	for i < len(s) {
		_, w, c := at(s, i)
		if c&(cSp|cL|cN) != 0 {
			break
		}
		i += w
	}
	return i
}

// contraction matches 's|'t|'re|'ve|'m|'ll|'d at s[i:], where s[i] is an
// apostrophe; foldCase makes it the (?i:...) group.
func contraction(s string, i int, foldCase bool) int {
	eq := func(j int, c rune) (int, bool) {
		if j >= len(s) {
			return 0, false
		}
		r, w, _ := at(s, j)
		if r == c {
			return w, true
		}
		if foldCase {
			for f := unicode.SimpleFold(c); f != c; f = unicode.SimpleFold(f) {
				if r == f {
					return w, true
				}
			}
		}
		return 0, false
	}
	j := i + 1
	for _, c := range []rune{'s', 't', 'm', 'd'} {
		if w, ok := eq(j, c); ok {
			return j + w
		}
	}
	for _, p := range [][2]rune{{'r', 'e'}, {'v', 'e'}, {'l', 'l'}} {
		if w1, ok := eq(j, p[0]); ok {
			if w2, ok := eq(j+w1, p[1]); ok {
				return j + w1 + w2
			}
		}
	}
	return -1
}

// matchSpaceTail matches the three whitespace alternatives shared by every
// pattern, \s*[\r\n]+ (only if withNewline), \s+(?!\S) and \s+, at i where
// s[i] is white space.
func matchSpaceTail(s string, i int, withNewline bool) int {
	// k: end of the maximal white-space run; last: start of its last rune;
	// nl: end of its last \r or \n, if any.
	k, last, nl := i, i, -1
	for k < len(s) {
		_, w, c := at(s, k)
		if c&cSp == 0 {
			break
		}
		if c&cNL != 0 {
			nl = k + w
		}
		last = k
		k += w
	}
	// \s*[\r\n]+: \s* backtracks from the whole run until [\r\n]+ can match,
	// i.e. to the run's last newline, after which [\r\n]+ takes only that one
	// newline (the rune after it is not a newline, or it would be later).
	if withNewline && nl >= 0 {
		return nl
	}
	// \s+(?!\S): at the end of the text the whole run; otherwise \s+ gives up
	// its last rune so that white space, not \S, follows. With a single rune
	// that fails and the final \s+ takes the run.
	if k == len(s) || last == i {
		return k
	}
	return last
}

// matchGPT2 implements PatternGPT2.
func matchGPT2(s string, i int) int {
	r, w, c := at(s, i)
	if r == '\'' {
		if e := contraction(s, i, false); e >= 0 {
			return e
		}
	}
	// ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: the three classes are
	// disjoint, so the class of the rune after the optional space decides.
	// If the space is taken and no class rune follows, backtracking to no
	// space fails too, because ' ' is in none of the classes.
	j, cj := i, c
	if r == ' ' {
		if i+w >= len(s) {
			return i + w // a lone trailing space: \s+(?!\S) at the end
		}
		j = i + w
		_, _, cj = at(s, j)
	}
	switch {
	case cj&cL != 0:
		return runWhile(s, j, cL)
	case cj&cN != 0:
		return runWhile(s, j, cN)
	case cj&cSp == 0:
		return runOther(s, j)
	}
	return matchSpaceTail(s, i, false)
}

// matchQwen2 implements PatternQwen2.
func matchQwen2(s string, i int) int { return matchQwenStyle(s, i, 1) }

// matchLlama3 implements PatternLlama3.
func matchLlama3(s string, i int) int { return matchQwenStyle(s, i, 3) }

// matchQwenStyle is PatternQwen2 with \p{N}{1,maxDigits} as its third
// alternative.
func matchQwenStyle(s string, i int, maxDigits int) int {
	r, w, c := at(s, i)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r == '\'' {
		if e := contraction(s, i, true); e >= 0 {
			return e
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+: try with the optional rune first; without it
	// the rune itself must be a letter.
	if c&(cNL|cL|cN) == 0 && i+w < len(s) {
		if _, _, c2 := at(s, i+w); c2&cL != 0 {
			return runWhile(s, i+w, cL)
		}
	}
	if c&cL != 0 {
		return runWhile(s, i, cL)
	}
	// \p{N}{1,maxDigits}
	if c&cN != 0 {
		j := i
		for n := 0; n < maxDigits && j < len(s); n++ {
			_, wj, cj := at(s, j)
			if cj&cN == 0 {
				break
			}
			j += wj
		}
		return j
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	j := i
	if r == ' ' && i+w < len(s) {
		j = i + w
	}
	if _, _, cj := at(s, j); cj&(cSp|cL|cN) == 0 {
		return runWhile(s, runOther(s, j), cNL)
	}
	if c&cSp != 0 {
		return matchSpaceTail(s, i, true)
	}
	return -1 // unreachable: every rune is \s, \p{L}, \p{N} or other
}

// matchDigits3 implements PatternDigits3.
func matchDigits3(s string, i int) int {
	j := i
	for n := 0; n < 3 && j < len(s); n++ {
		_, w, c := at(s, j)
		if c&cN == 0 {
			break
		}
		j += w
	}
	if j == i {
		return -1
	}
	return j
}

// matchOneDigit is the Digits pre-tokenizer with individual_digits: every
// \p{N} rune is a piece.
func matchOneDigit(s string, i int) int {
	if _, w, c := at(s, i); c&cN != 0 {
		return i + w
	}
	return -1
}

// matchDigitRun is the Digits pre-tokenizer without individual_digits: runs
// of \p{N} are pieces.
func matchDigitRun(s string, i int) int {
	if e := runWhile(s, i, cN); e > i {
		return e
	}
	return -1
}

func isDeepSeekCJK(r rune) bool {
	return (r >= 0x4E00 && r <= 0x9FA5) || (r >= 0x3040 && r <= 0x309F) || (r >= 0x30A0 && r <= 0x30FF)
}

// matchDeepSeekCJK implements PatternDeepSeekCJK.
func matchDeepSeekCJK(s string, i int) int {
	j := i
	for j < len(s) {
		r, w, _ := at(s, j)
		if !isDeepSeekCJK(r) {
			break
		}
		j += w
	}
	if j == i {
		return -1
	}
	return j
}

// matchDeepSeekMain implements PatternDeepSeekMain.
func matchDeepSeekMain(s string, i int) int {
	r, w, c := at(s, i)
	// [ASCII punctuation][A-Za-z]+
	if c&cASCP != 0 && i+w < len(s) {
		if _, _, c2 := at(s, i+w); c2&cASCL != 0 {
			return runWhile(s, i+w, cASCL)
		}
	}
	// [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
	if c&(cNL|cL|cPS) == 0 && i+w < len(s) {
		if _, _, c2 := at(s, i+w); c2&(cL|cM) != 0 {
			return runWhile(s, i+w, cL|cM)
		}
	}
	if c&(cL|cM) != 0 {
		return runWhile(s, i, cL|cM)
	}
	// ` ?[\p{P}\p{S}]+[\r\n]*`
	j := i
	if r == ' ' && i+w < len(s) {
		j = i + w
	}
	if _, _, cj := at(s, j); cj&cPS != 0 {
		return runWhile(s, runWhile(s, j, cPS), cNL)
	}
	if c&cSp != 0 {
		return matchSpaceTail(s, i, true)
	}
	return -1 // digits and other unmatched runes form the gaps between pieces
}

// splitIsolated is a Split pre-tokenizer with behavior Isolated: every match
// of m and every non-empty stretch between matches becomes a piece, in order.
func splitIsolated(s string, m matcher, emit func(string)) {
	gap, i := 0, 0
	for i < len(s) {
		e := m(s, i)
		if e <= i {
			_, w, _ := at(s, i)
			i += w
			continue
		}
		if gap < i {
			emit(s[gap:i])
		}
		emit(s[i:e])
		i, gap = e, e
	}
	if gap < len(s) {
		emit(s[gap:])
	}
}
