package tokenizer

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// goldenRoot holds the repository's byte-for-byte copies of
// ../shared/golden (see testdata/golden/README.md).
const goldenRoot = "../../testdata/golden"

var goldenDirs = []string{"tokenizer_bpe_gpt2", "tokenizer_bpe_qwen2"}

func loadGolden(t testing.TB, name string) *Tokenizer {
	t.Helper()
	tok, err := Load(filepath.Join(goldenRoot, name, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// goldenJSON returns the golden tokenizer.json of name decoded into generic
// maps, for tests that derive variants from it.
func goldenJSON(t testing.TB, name string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(goldenRoot, name, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustParse(t testing.TB, m map[string]any) *Tokenizer {
	t.Helper()
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Parse(data, "test.json")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// pieces are the building blocks of random test text: one or more runes of
// every class the patterns distinguish, plus invalid UTF-8 when allowed.
var pieces = []string{
	"a", "b", "Z", "e", "r", "s", "t", "l", "d", "m", "v", "S", "T", "R", "E", "L", "D", "M", "V",
	"ſ", "K", "é", "ß", "Ω", "я", "ñ", "İ", "ǅ", "ʰ",
	"'", "'s", "'S", "'re", "'RE", "'Ll", "'ve", "'d", "'M", "'t", "n't", "I'm",
	"0", "1", "7", "42", "٣", "Ⅻ", "½", "²",
	" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\v", "\f", "\u00a0", "\u3000", "\u2028", "\u0085", "\u2003",
	".", ",", "-", "_", "!", "$", "@", "#", "(", ")", "[", "\\", "`", "~", "«", "¿", "—", "…", "€", "+",
	"🚀", "🙂", "👍🏽", "👩‍💻", "中", "文", "ひ", "カ", "ー", "한", "\u0301", "\u0308", "\u200d", "\u200c",
	"\x00", "\x7f", "\ufffd", "\ue000", "\U0001d11e",
	"hello", " world", "The", " quick", "CamelCase", "snake_case",
}

var invalidPieces = []string{"\xff", "\xe4\xb8", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80"}

// randomText returns up to n random pieces; with invalid it also uses
// ill-formed UTF-8.
func randomText(r *rand.Rand, n int, invalid bool) string {
	var b strings.Builder
	k := r.IntN(n + 1)
	for i := 0; i < k; i++ {
		if invalid && r.IntN(8) == 0 {
			b.WriteString(invalidPieces[r.IntN(len(invalidPieces))])
			continue
		}
		b.WriteString(pieces[r.IntN(len(pieces))])
	}
	return b.String()
}

// englishText returns about n bytes of English-like prose.
func englishText(n int) string {
	words := strings.Fields(`the of and to in a is that for it as was with be by on not he I this are or his
		from at which but have an they you were her she there been one all we their has would when if so no
		coordinator shards experts across workers routes each token its top mixture layers activate only few
		per compute stays small ring reduce sums gradients every sends buffer matter how many latent attention
		caches compressed vector instead full keys values register lease seconds expires gone quick brown fox
		jumps over lazy dog don't can't won't it's we've they'll I'm you'd model training inference checkpoint`)
	r := rand.New(rand.NewPCG(1, 2))
	var b strings.Builder
	for b.Len() < n {
		w := words[r.IntN(len(words))]
		if r.IntN(12) == 0 {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		b.WriteString(w)
		switch r.IntN(20) {
		case 0:
			b.WriteString(". ")
		case 1:
			b.WriteString(", ")
		case 2:
			b.WriteString("\n")
		case 3:
			b.WriteString(" 2024 ")
		default:
			b.WriteByte(' ')
		}
	}
	return b.String()
}

// trainedJSON returns the golden gpt2 tokenizer.json with its vocabulary and
// merges replaced by numMerges merges learned from corpus by plain BPE
// training (most frequent pair first), so that tests and benchmarks see
// realistic merge chains. Merges are written in the "a b" string form.
func trainedJSON(t testing.TB, corpus string, numMerges int) map[string]any {
	t.Helper()
	m := goldenJSON(t, "tokenizer_bpe_gpt2")
	vocab := map[string]int{"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
	for b := 0; b < 256; b++ {
		vocab[string(byteToRune[b])] = len(vocab)
	}
	// Word frequencies over the GPT-2 pre-tokens of the corpus.
	freq := map[string]int{}
	splitIsolated(corpus, matchGPT2, func(p string) { freq[p]++ })
	type word struct {
		syms []string
		n    int
	}
	var words []word
	for p, n := range freq {
		var syms []string
		for i := 0; i < len(p); i++ {
			syms = append(syms, string(byteToRune[p[i]]))
		}
		words = append(words, word{syms, n})
	}
	sort.Slice(words, func(i, j int) bool { return strings.Join(words[i].syms, "") < strings.Join(words[j].syms, "") })
	var merges []any
	for len(merges) < numMerges {
		counts := map[[2]string]int{}
		for _, w := range words {
			for i := 0; i+1 < len(w.syms); i++ {
				counts[[2]string{w.syms[i], w.syms[i+1]}] += w.n
			}
		}
		var best [2]string
		bestN := 0
		for p, n := range counts {
			if n > bestN || (n == bestN && (p[0]+" "+p[1]) < (best[0]+" "+best[1])) {
				best, bestN = p, n
			}
		}
		if bestN < 2 {
			break
		}
		merges = append(merges, best[0]+" "+best[1])
		if _, ok := vocab[best[0]+best[1]]; !ok {
			vocab[best[0]+best[1]] = len(vocab)
		}
		for wi := range words {
			s := words[wi].syms
			out := s[:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, best[0]+best[1])
					i++
				} else {
					out = append(out, s[i])
				}
			}
			words[wi].syms = out
		}
	}
	model := m["model"].(map[string]any)
	model["vocab"] = vocab
	model["merges"] = merges
	return m
}
