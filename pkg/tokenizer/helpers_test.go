package tokenizer

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
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
// merges replaced by numMerges merges that Train learns from corpus with the
// GPT-2 pattern (fewer if pairs occurring twice run out), so that tests and
// benchmarks see realistic merge chains. Merges are written in the "a b"
// string form.
func trainedJSON(t testing.TB, corpus string, numMerges int) map[string]any {
	t.Helper()
	specials := []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
	tok, err := Train(corpus, TrainConfig{VocabSize: len(specials) + 256 + numMerges, SpecialTokens: specials, Pattern: PatternGPT2})
	if err != nil {
		t.Fatal(err)
	}
	merges, err := tok.mergeStrings()
	if err != nil {
		t.Fatal(err)
	}
	m := goldenJSON(t, "tokenizer_bpe_gpt2")
	model := m["model"].(map[string]any)
	model["vocab"] = tok.model.vocab
	list := make([]any, len(merges))
	for i, mg := range merges {
		list[i] = mg[0] + " " + mg[1]
	}
	model["merges"] = list
	return m
}
