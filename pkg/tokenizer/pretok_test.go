package tokenizer

import (
	"math/rand/v2"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// ws is \s of Oniguruma (Unicode White_Space) as an RE2 class body; RE2's \s
// is ASCII-only. TestWhiteSpaceClass checks it.
const ws = `\t\n\v\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}`

// refPattern is the slow reference for a matcher: Go's regexp (which picks
// the same leftmost-first match as a backtracking engine) on the pattern's
// alternatives before \s+(?!\S), then that lookahead alternative and the
// final \s+ emulated with three more regexps.
type refPattern struct {
	head      *regexp.Regexp
	spaceTail bool
}

var (
	reSpaceToEnd  = regexp.MustCompile(`^[` + ws + `]+\z`)
	reSpaceButOne = regexp.MustCompile(`^([` + ws + `]+)[` + ws + `]`)
	reSpace       = regexp.MustCompile(`^[` + ws + `]+`)
)

func (p refPattern) match(s string, i int) int {
	if loc := p.head.FindStringIndex(s[i:]); loc != nil {
		return i + loc[1]
	}
	if !p.spaceTail {
		return -1
	}
	// \s+(?!\S): the rest is all white space, or the run minus its last rune
	// (which is white space, so not \S) when the run has two runes or more.
	if reSpaceToEnd.MatchString(s[i:]) {
		return len(s)
	}
	if m := reSpaceButOne.FindStringSubmatchIndex(s[i:]); m != nil {
		return i + m[3]
	}
	// \s+
	if loc := reSpace.FindStringIndex(s[i:]); loc != nil {
		return i + loc[1]
	}
	return -1
}

var refPatterns = map[string]refPattern{
	PatternGPT2: {regexp.MustCompile(`^(?:'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^` + ws + `\p{L}\p{N}]+)`), true},
	PatternQwen2: {regexp.MustCompile(`^(?:(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^` + ws +
		`\p{L}\p{N}]+[\r\n]*|[` + ws + `]*[\r\n]+)`), true},
	PatternLlama3: {regexp.MustCompile(`^(?:(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^` + ws +
		`\p{L}\p{N}]+[\r\n]*|[` + ws + `]*[\r\n]+)`), true},
	PatternDigits3:     {regexp.MustCompile(`^\p{N}{1,3}`), false},
	PatternDeepSeekCJK: {regexp.MustCompile(`^[一-龥\x{3040}-ゟ゠-ヿ]+`), false},
	PatternDeepSeekMain: {regexp.MustCompile(`^(?:[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_` + "`" +
		`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|[` + ws + `]*[\r\n]+)`), true},
}

func split(s string, m matcher) []string {
	var out []string
	splitIsolated(s, m, func(p string) { out = append(out, p) })
	return out
}

func TestWhiteSpaceClass(t *testing.T) {
	re := regexp.MustCompile(`^[` + ws + `]$`)
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		if got, want := re.MatchString(string(r)), unicode.Is(unicode.White_Space, r); got != want {
			t.Fatalf("U+%04X: class %v, White_Space %v", r, got, want)
		}
		if unicode.IsSpace(r) != unicode.Is(unicode.White_Space, r) {
			t.Fatalf("U+%04X: unicode.IsSpace differs from White_Space", r)
		}
	}
}

func TestEveryKnownPatternHasReference(t *testing.T) {
	for p := range knownPatterns {
		if _, ok := refPatterns[p]; !ok {
			t.Errorf("no reference for %q", p)
		}
	}
}

func TestSplitExamples(t *testing.T) {
	cases := []struct {
		pattern, in string
		want        []string
	}{
		{PatternGPT2, "Hello world", []string{"Hello", " world"}},
		{PatternGPT2, "   leading", []string{"  ", " leading"}},
		{PatternGPT2, "a  \n b", []string{"a", "  \n", " b"}},
		{PatternGPT2, "end   ", []string{"end", "   "}},
		{PatternGPT2, "I'm Don'T", []string{"I", "'m", " Don", "'", "T"}},
		{PatternGPT2, "x 1234 !!? \u00a0y", []string{"x", " 1234", " !!?", " ", "\u00a0", "y"}},
		{PatternQwen2, "I'M WE'RE we'Ll", []string{"I", "'M", " WE", "'RE", " we", "'Ll"}},
		{PatternQwen2, "x 1234", []string{"x", " ", "1", "2", "3", "4"}},
		{PatternQwen2, "\tfoo\r\n\nbar  \n  baz", []string{"\tfoo", "\r\n\n", "bar", "  \n", " ", " baz"}},
		{PatternQwen2, "a !!\n\nb", []string{"a", " !!\n\n", "b"}},
		{PatternQwen2, "'ſ x", []string{"'ſ", " x"}},
		{PatternLlama3, "x 1234567", []string{"x", " ", "123", "456", "7"}},
		{PatternDigits3, "ab12345c6", []string{"ab", "123", "45", "c", "6"}},
		{PatternDeepSeekCJK, "a中文かなカナb한", []string{"a", "中文かなカナ", "b한"}},
		{PatternDeepSeekMain, "x.yz 12 ,ab é\u0301 !!\n", []string{"x", ".yz", " ", "12", " ,", "ab", " é\u0301", " !!\n"}},
	}
	for _, c := range cases {
		if got := split(c.in, knownPatterns[c.pattern]); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%.20q on %q: got %q want %q", c.pattern, c.in, got, c.want)
		}
	}
}

// TestSplitMatchesReference compares every matcher with its regexp
// reference on random text, valid UTF-8 or not.
func TestSplitMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	n := 3000
	if testing.Short() {
		n = 300
	}
	for i := 0; i < n; i++ {
		s := randomText(r, 24, i%2 == 1)
		for p, m := range knownPatterns {
			checkSplit(t, p, s, m)
		}
	}
}

func checkSplit(t testing.TB, pattern, s string, m matcher) {
	t.Helper()
	got := split(s, m)
	want := split(s, refPatterns[pattern].match)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%.24q on %q:\n got %q\nwant %q", pattern, s, got, want)
	}
	if strings.Join(got, "") != s {
		t.Fatalf("%.24q on %q: pieces %q do not cover the input", pattern, s, got)
	}
}
