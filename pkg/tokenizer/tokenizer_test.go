package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

func TestGolden(t *testing.T) {
	for _, name := range goldenDirs {
		t.Run(name, func(t *testing.T) {
			res, err := CheckGolden(filepath.Join(goldenRoot, name))
			if err != nil {
				t.Fatal(err)
			}
			if len(res) < 20 {
				t.Fatalf("only %d cases", len(res))
			}
			for _, r := range res {
				if !r.OK() {
					t.Errorf("%q: %s", r.Text, r.Mismatch)
				}
			}
		})
	}
}

// TestGoldenCopiesMatchShared checks that the repository's copies are still
// byte-identical to ../shared/golden when that directory is present.
func TestGoldenCopiesMatchShared(t *testing.T) {
	shared := filepath.Join("..", "..", "..", "shared", "golden")
	if _, err := os.Stat(shared); err != nil {
		t.Skip("no ../shared/golden")
	}
	for _, name := range goldenDirs {
		for _, f := range []string{"tokenizer.json", "golden.json"} {
			a, errA := os.ReadFile(filepath.Join(shared, name, f))
			b, errB := os.ReadFile(filepath.Join(goldenRoot, name, f))
			if errA != nil || errB != nil || !bytes.Equal(a, b) {
				t.Errorf("%s/%s: copy differs from ../shared/golden (%v, %v)", name, f, errA, errB)
			}
		}
	}
}

func TestCheckGoldenReportsMismatch(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(goldenRoot, "tokenizer_bpe_gpt2", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	golden := `{"cases": [{"text": "hello", "ids": [273, 286, 82], "tokens": ["he", "ll", "o"], "decoded": "hellp"},
		{"text": "hello", "ids": [273, 286, 81], "tokens": ["he", "ll", "p"], "decoded": "help"}]}`
	if err := os.WriteFile(filepath.Join(dir, "golden.json"), []byte(golden), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := CheckGolden(dir)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].OK() || res[0].IDsOK || !res[0].TokensOK || !res[0].DecodedOK {
		t.Errorf("case 0: %+v", res[0])
	}
	if !strings.Contains(res[0].Mismatch, "ids[2]: got 81 want 82 (len 3 vs 3)") {
		t.Errorf("case 0 mismatch %q", res[0].Mismatch)
	}
	if !res[1].IDsOK || res[1].TokensOK || res[1].DecodedOK {
		t.Errorf("case 1: %+v", res[1])
	}
	if !strings.Contains(res[1].Mismatch, `tokens[2]: got "o" want "p"`) || !strings.Contains(res[1].Mismatch, "decoded") {
		t.Errorf("case 1 mismatch %q", res[1].Mismatch)
	}
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	n := 3000
	if testing.Short() {
		n = 300
	}
	for _, name := range goldenDirs {
		tok := loadGolden(t, name)
		for i := 0; i < n; i++ {
			s := randomText(r, 30, false)
			got, err := tok.Decode(tok.Encode(s))
			if err != nil || got != s {
				t.Fatalf("%s: Decode(Encode(%q)) = %q, %v", name, s, got, err)
			}
		}
	}
}

// TestRoundTripInvalidUTF8: the bytes survive exactly; the string is the
// from_utf8_lossy repair of them.
func TestRoundTripInvalidUTF8(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	for _, name := range goldenDirs {
		tok := loadGolden(t, name)
		for i := 0; i < 2000; i++ {
			s := randomText(r, 20, true)
			ids := tok.Encode(s)
			b, err := tok.DecodeBytes(ids, false)
			if err != nil || string(b) != s {
				t.Fatalf("%s: DecodeBytes(Encode(%q)) = %q, %v", name, s, b, err)
			}
			got, _ := tok.Decode(ids)
			if want := lossyString([]byte(s)); got != want {
				t.Fatalf("%s: Decode(Encode(%q)) = %q, want %q", name, s, got, want)
			}
		}
	}
}

// TestLossyMatchesRust: expected strings are what Rust's
// String::from_utf8_lossy returns (one U+FFFD per maximal ill-formed
// subsequence), which differs from strings.ToValidUTF8.
func TestLossyMatchesRust(t *testing.T) {
	const R = "\uFFFD"
	cases := []struct{ in, want string }{
		{"abc", "abc"},
		{"\xff\xff", R + R},
		{"\xe4\xb8", R},
		{"\xe4\xb8A", R + "A"},
		{"\xe4\xb8\xad", "中"},
		{"\xed\xa0\x80", R + R + R}, // surrogate: ED takes 80..9F only
		{"\xc0\xaf", R + R},         // overlong
		{"\xf0\x9f\x9a", R},
		{"\xf0\x9f\x9a\x80\xf0\x9f", "🚀" + R},
		{"\xf4\x90\x80\x80", R + R + R + R}, // above U+10FFFF
		{"a\x80b\xe0\xa0", "a" + R + "b" + R},
	}
	for _, c := range cases {
		if got := lossyString([]byte(c.in)); got != c.want {
			t.Errorf("lossy(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestAddedTokensInText(t *testing.T) {
	for _, name := range goldenDirs {
		tok := loadGolden(t, name)
		parts := []string{"Hello", " world\n", "", "  x", "ïé 🚀", "end"}
		specials := []string{"<|im_start|>", "<|im_end|>", "<|endoftext|>"}
		var text string
		var want []int
		for i, p := range parts {
			text += p
			want = append(want, tok.Encode(p)...)
			if i < len(parts)-1 {
				sp := specials[i%len(specials)]
				text += sp
				id, _ := tok.TokenToID(sp)
				want = append(want, id)
			}
		}
		ids, toks := tok.EncodeTokens(text)
		if !slices.Equal(ids, want) {
			t.Errorf("%s: %q: got %v want %v", name, text, ids, want)
		}
		if got := strings.Count(strings.Join(toks, "|"), "<|im_end|>"); got != 2 {
			t.Errorf("%s: tokens %q: <|im_end|> %d times, want 2", name, toks, got)
		}
		if got, _ := tok.Decode(ids); got != text {
			t.Errorf("%s: decode %q", name, got)
		}
		if got, _ := tok.DecodeSkipSpecial(ids); got != strings.Join(parts, "") {
			t.Errorf("%s: decode skipping special %q", name, got)
		}
		// An incomplete special token is ordinary text.
		if ids := tok.Encode("<|im_end|"); slices.Contains(ids, 2) {
			t.Errorf("%s: partial special token matched: %v", name, ids)
		}
	}
}

// withAdded returns the gpt2 golden tokenizer with extra added tokens (ids
// appended after the vocabulary) and the given normalizer.
func withAdded(t *testing.T, normalizer any, extra ...map[string]any) *Tokenizer {
	t.Helper()
	m := goldenJSON(t, "tokenizer_bpe_gpt2")
	added := m["added_tokens"].([]any)
	for i, a := range extra {
		a["id"] = 320 + i
		for _, k := range []string{"single_word", "lstrip", "rstrip", "normalized", "special"} {
			if _, ok := a[k]; !ok {
				a[k] = false
			}
		}
		added = append(added, a)
	}
	m["added_tokens"] = added
	m["normalizer"] = normalizer
	return mustParse(t, m)
}

// splitView shows how EncodeTokens cut text: added tokens as [content-ish
// matched text], other text decoded back.
func splitView(t *testing.T, tok *Tokenizer, text string) []string {
	t.Helper()
	ids, toks := tok.EncodeTokens(text)
	var out []string
	var run []int
	flush := func() {
		if len(run) > 0 {
			s, err := tok.Decode(run)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
			run = nil
		}
	}
	for i, id := range ids {
		if id >= 320 || id < 3 {
			flush()
			out = append(out, "["+toks[i]+"]")
			continue
		}
		run = append(run, id)
	}
	flush()
	return out
}

// TestAddedTokenFlags mirrors the cases of tokenizers' added_vocabulary.rs
// unit tests (without their Lowercase normalizer).
func TestAddedTokenFlags(t *testing.T) {
	mask := func(lstrip, rstrip, single bool) map[string]any {
		return map[string]any{"content": "<mask>", "lstrip": lstrip, "rstrip": rstrip, "single_word": single}
	}
	cases := []struct {
		tok  *Tokenizer
		in   string
		want []string
	}{
		{withAdded(t, nil, mask(false, false, true)),
			"<mask> My name <mask> A<mask> <mask>ony <mask>",
			[]string{"[<mask>]", " My name ", "[<mask>]", " A<mask> <mask>ony ", "[<mask>]"}},
		{withAdded(t, nil, mask(false, false, true)),
			"<mask>, <mask>- ◌̰<mask>", // a combining mark is a word character
			[]string{"[<mask>]", ", ", "[<mask>]", "- ◌̰<mask>"}},
		{withAdded(t, nil, mask(true, true, true)),
			"Hi <mask> there\t<mask>\t<mask>\u2000",
			[]string{"Hi", "[ <mask> ]", "there", "[\t<mask>\t]", "[<mask>\u2000]"}},
		{withAdded(t, nil,
			map[string]any{"content": "my", "lstrip": true, "rstrip": true},
			map[string]any{"content": "name"},
			map[string]any{"content": "ony", "single_word": true},
			map[string]any{"content": "[CLS]", "special": true},
			map[string]any{"content": "[SEP]", "special": true}),
			"[CLS] my name is Anthony [SEP]",
			[]string{"[[CLS]]", "[ my ]", "[name]", " is Anthony ", "[[SEP]]"}},
		// Longest match wins among tokens starting at the same byte.
		{withAdded(t, nil, map[string]any{"content": "zq"}, map[string]any{"content": "zqj"}),
			"xzqjzq", []string{"x", "[zqj]", "[zq]"}},
	}
	for _, c := range cases {
		if got := splitView(t, c.tok, c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q:\n got %q\nwant %q", c.in, got, c.want)
		}
	}
}

// TestDecodeAddedTokens: added tokens pass through the ByteLevel decoder
// like model tokens, as in tokenizers (issue #1915: "đem" decodes to
// "\x11em"); a token with a character outside the byte table keeps its
// UTF-8.
func TestDecodeAddedTokens(t *testing.T) {
	tok := withAdded(t, nil, map[string]any{"content": "đem"}, map[string]any{"content": "a b"})
	for _, c := range []struct{ in, want string }{{"đem", "\x11em"}, {"a b", "a b"}} {
		ids := tok.Encode(c.in)
		if got, err := tok.Decode(ids); len(ids) != 1 || err != nil || got != c.want {
			t.Errorf("Decode(Encode(%q) = %v) = %q, %v; want %q", c.in, ids, got, err, c.want)
		}
	}
}

func TestNFC(t *testing.T) {
	nfc := map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "NFC"}}}
	tok := withAdded(t, nfc,
		map[string]any{"content": "é!", "normalized": true},
		map[string]any{"content": "e\u0301?", "normalized": false})
	plain := loadGolden(t, "tokenizer_bpe_gpt2")
	if got, want := tok.Encode("cafe\u0301"), plain.Encode("café"); !slices.Equal(got, want) {
		t.Errorf("NFC: got %v want %v", got, want)
	}
	// The normalized token matches the decomposed input after NFC; the raw
	// one matches only its exact bytes, before normalization.
	if got, want := tok.Encode("xe\u0301!"), append(plain.Encode("x"), 320); !slices.Equal(got, want) {
		t.Errorf("normalized added token: got %v want %v", got, want)
	}
	if got, want := tok.Encode("xe\u0301?"), append(plain.Encode("x"), 321); !slices.Equal(got, want) {
		t.Errorf("raw added token: got %v want %v", got, want)
	}
	if got, _ := tok.Decode(tok.Encode("cafe\u0301")); got != "café" {
		t.Errorf("decode %q", got)
	}
}

func TestMergeForms(t *testing.T) {
	m := goldenJSON(t, "tokenizer_bpe_qwen2")
	model := m["model"].(map[string]any)
	var legacy []any
	for _, p := range model["merges"].([]any) {
		pair := p.([]any)
		legacy = append(legacy, pair[0].(string)+" "+pair[1].(string))
	}
	model["merges"] = legacy
	a := mustParse(t, m)
	b := loadGolden(t, "tokenizer_bpe_qwen2")
	text := englishText(4000)
	if !slices.Equal(a.Encode(text), b.Encode(text)) {
		t.Error(`"a b" merges encode differently from [a, b] merges`)
	}
}

func TestPreTokenizerVariants(t *testing.T) {
	plain := loadGolden(t, "tokenizer_bpe_gpt2")
	variant := func(pre any) *Tokenizer {
		m := goldenJSON(t, "tokenizer_bpe_gpt2")
		m["pre_tokenizer"] = pre
		return mustParse(t, m)
	}
	byteLevel := func(prefix, regex bool) map[string]any {
		return map[string]any{"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": true, "use_regex": regex}
	}
	split := func(pattern string) map[string]any {
		return map[string]any{"type": "Split", "pattern": map[string]any{"Regex": pattern}, "behavior": "Isolated", "invert": false}
	}

	// add_prefix_space applies to every piece between added tokens.
	pref := variant(byteLevel(true, true))
	want := append(append([]int{1}, plain.Encode(" user")...), 2)
	if got := pref.Encode("<|im_start|>user<|im_end|>"); !slices.Equal(got, want) {
		t.Errorf("add_prefix_space: got %v want %v", got, want)
	}
	if got, _ := pref.Decode(pref.Encode("hi")); got != " hi" {
		t.Errorf("add_prefix_space decode %q", got)
	}

	// DeepSeek-V3's sequence: digits in threes, CJK runs, then the main
	// regex; ByteLevel without its own regex. The real file writes \r\n of
	// the main regex as JSON escapes, so the pattern holds raw CR and LF.
	rawCRLF := strings.NewReplacer(`\r`, "\r", `\n`, "\n").Replace(PatternDeepSeekMain)
	ds := variant(map[string]any{"type": "Sequence", "pretokenizers": []any{
		split(PatternDigits3), split(PatternDeepSeekCJK), split(rawCRLF), byteLevel(false, false)}})
	cat := func(parts ...string) []int {
		var ids []int
		for _, p := range parts {
			ids = append(ids, plain.Encode(p)...)
		}
		return ids
	}
	if got, want := ds.Encode("x 12345中文ab"), cat("x", " ", "123", "45", "中文", "ab"); !slices.Equal(got, want) {
		t.Errorf("deepseek: got %v want %v", got, want)
	}

	// Llama-3 style: one Split, ByteLevel without regex.
	ll := variant(map[string]any{"type": "Sequence", "pretokenizers": []any{split(PatternLlama3), byteLevel(false, false)}})
	if got, want := ll.Encode("a 12345"), cat("a", " ", "123", "45"); !slices.Equal(got, want) {
		t.Errorf("llama3: got %v want %v", got, want)
	}

	// Digits, individual or in runs.
	for _, c := range []struct {
		individual bool
		want       []int
	}{{true, cat("a", "1", "2", "3", "b")}, {false, cat("a", "123", "b")}} {
		dg := variant(map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Digits", "individual_digits": c.individual}, byteLevel(false, true)}})
		if got := dg.Encode("a123b"); !slices.Equal(got, c.want) {
			t.Errorf("digits individual=%v: got %v want %v", c.individual, got, c.want)
		}
	}

	// A literal String split.
	lit := variant(map[string]any{"type": "Sequence", "pretokenizers": []any{
		map[string]any{"type": "Split", "pattern": map[string]any{"String": "er"}, "behavior": "Isolated"},
		byteLevel(false, false)}})
	if got, want := lit.Encode("workers"), cat("work", "er", "s"); !slices.Equal(got, want) {
		t.Errorf("string split: got %v want %v", got, want)
	}
}

func TestUnsupported(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(m map[string]any)
		want   string
	}{
		{"wordpiece", func(m map[string]any) { m["model"].(map[string]any)["type"] = "WordPiece" }, `model type "WordPiece"`},
		{"unigram", func(m map[string]any) {
			m["model"] = map[string]any{"type": "Unigram", "unk_id": 0, "vocab": []any{[]any{"a", -1.0}}}
		}, `model type "Unigram"`},
		{"byte fallback", func(m map[string]any) { m["model"].(map[string]any)["byte_fallback"] = true }, "byte_fallback"},
		{"dropout", func(m map[string]any) { m["model"].(map[string]any)["dropout"] = 0.1 }, "dropout"},
		{"metaspace", func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Metaspace", "replacement": "▁"}
		}, `pre_tokenizer type "Metaspace"`},
		{"unknown regex", func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"Regex": `\w+`}, "behavior": "Isolated"},
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}}}
		}, `Split regex "\\w+"`},
		{"split behavior", func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"Regex": PatternQwen2}, "behavior": "Removed"},
				map[string]any{"type": "ByteLevel"}}}
		}, `Split behavior "Removed"`},
		{"byte level not last", func(m map[string]any) {
			m["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "ByteLevel"},
				map[string]any{"type": "Split", "pattern": map[string]any{"Regex": PatternQwen2}, "behavior": "Isolated"}}}
		}, "ByteLevel must be the last"},
		{"no pre-tokenizer", func(m map[string]any) { m["pre_tokenizer"] = nil }, "pre_tokenizer is null"},
		{"lowercase", func(m map[string]any) { m["normalizer"] = map[string]any{"type": "Lowercase"} }, `normalizer type "Lowercase"`},
		{"decoder", func(m map[string]any) { m["decoder"] = map[string]any{"type": "Metaspace"} }, `decoder type "Metaspace"`},
		{"no decoder", func(m map[string]any) { m["decoder"] = nil }, "decoder is null"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := goldenJSON(t, "tokenizer_bpe_gpt2")
			c.mutate(m)
			data, _ := json.Marshal(m)
			_, err := Parse(data, "some/tokenizer.json")
			if err == nil {
				t.Fatal("loaded")
			}
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "some/tokenizer.json") {
				t.Errorf("error %q: want ErrUnsupported, %q and the file name", err, c.want)
			}
		})
	}
}

func TestMalformed(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(m map[string]any)
		want   string
	}{
		{"no model", func(m map[string]any) { delete(m, "model") }, `missing "model"`},
		{"vocab list", func(m map[string]any) { m["model"].(map[string]any)["vocab"] = []any{"a"} }, "model.vocab"},
		{"merge unknown token", func(m map[string]any) {
			model := m["model"].(map[string]any)
			model["merges"] = append(model["merges"].([]any), []any{"x", "yz"})
		}, `model.merges[61] "x" "yz": token "yz" not in the vocabulary`},
		{"merge result unknown", func(m map[string]any) { m["model"].(map[string]any)["merges"] = []any{"x y"} }, `token "xy" not in the vocabulary`},
		{"merge without space", func(m map[string]any) { m["model"].(map[string]any)["merges"] = []any{"xy"} }, "not two space-separated"},
		{"merge triple", func(m map[string]any) { m["model"].(map[string]any)["merges"] = []any{[]any{"x", "y", "z"}} }, "neither"},
		{"negative id", func(m map[string]any) { m["model"].(map[string]any)["vocab"].(map[string]any)["zz"] = -4 }, `model.vocab["zz"] = -4`},
		{"sparse id", func(m map[string]any) { m["model"].(map[string]any)["vocab"].(map[string]any)["zz"] = 1e9 }, "too sparse"},
		{"added without id", func(m map[string]any) {
			m["added_tokens"] = append(m["added_tokens"].([]any), map[string]any{"content": "<x>"})
		}, `added_tokens[3] "<x>": missing or negative id`},
		{"unk not in vocab", func(m map[string]any) { m["model"].(map[string]any)["unk_token"] = "<unk>" }, `unk_token "<unk>"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := goldenJSON(t, "tokenizer_bpe_gpt2")
			c.mutate(m)
			data, _ := json.Marshal(m)
			_, err := Parse(data, "bad.json")
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "bad.json") {
				t.Errorf("error %v, want one naming bad.json and containing %q", err, c.want)
			}
		})
	}
	for _, data := range []string{"", "{", "[]", `{"model": 3}`, `{"model": {"type": "BPE"}}`, "null"} {
		if _, err := Parse([]byte(data), "x.json"); err == nil {
			t.Errorf("Parse(%q) succeeded", data)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.json")); err == nil || !strings.Contains(err.Error(), "missing.json") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestDecodeUnknownID(t *testing.T) {
	m := goldenJSON(t, "tokenizer_bpe_gpt2")
	// Leave a hole at id 300 by moving its token to 330.
	vocab := m["model"].(map[string]any)["vocab"].(map[string]any)
	for k, v := range vocab {
		if v.(float64) == 300 {
			vocab[k] = 330.0
		}
	}
	tok := mustParse(t, m)
	if got := tok.VocabSize(); got != 331 {
		t.Fatalf("VocabSize %d, want 331", got)
	}
	for _, c := range []struct {
		id   int
		want string
	}{
		{331, "id 331 outside vocabulary of size 331"},
		{-1, "id -1 outside vocabulary of size 331"},
		{300, "id 300 has no token (vocabulary size 331)"},
	} {
		_, err := tok.Decode([]int{5, c.id})
		if !errors.Is(err, ErrUnknownID) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Decode id %d: %v, want %q", c.id, err, c.want)
		}
		if _, err := tok.NewStreamDecoder(false).Step(c.id); !errors.Is(err, ErrUnknownID) {
			t.Errorf("Step(%d): %v", c.id, err)
		}
		if _, ok := tok.IDToToken(c.id); ok {
			t.Errorf("IDToToken(%d) ok", c.id)
		}
	}
}

func TestStreamDecoder(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, name := range goldenDirs {
		tok := loadGolden(t, name)
		for i := 0; i < 1000; i++ {
			s := randomText(r, 20, i%3 == 0)
			if r.IntN(4) == 0 {
				s += "<|im_end|>" + randomText(r, 5, false)
			}
			ids := tok.Encode(s)
			for _, skip := range []bool{false, true} {
				d := tok.NewStreamDecoder(skip)
				var sb strings.Builder
				for _, id := range ids {
					out, err := d.Step(id)
					if err != nil {
						t.Fatal(err)
					}
					if !utf8.ValidString(out) {
						t.Fatalf("Step returned invalid UTF-8 %q", out)
					}
					if utf8.ValidString(s) && strings.ContainsRune(out, utf8.RuneError) && !strings.ContainsRune(s, utf8.RuneError) {
						t.Fatalf("%q: Step emitted U+FFFD for valid input", s)
					}
					sb.WriteString(out)
				}
				sb.WriteString(d.Flush())
				want, _ := tok.Decode(ids)
				if skip {
					want, _ = tok.DecodeSkipSpecial(ids)
				}
				if sb.String() != want {
					t.Fatalf("%s %q skip=%v: stream %q, Decode %q", name, s, skip, sb.String(), want)
				}
			}
		}
	}

	// 🚀 is four byte tokens here: text appears only with the last byte.
	tok := loadGolden(t, "tokenizer_bpe_gpt2")
	d := tok.NewStreamDecoder(false)
	var outs []string
	for _, id := range tok.Encode("a🚀") {
		out, _ := d.Step(id)
		outs = append(outs, out)
	}
	if want := []string{"a", "", "", "", "🚀"}; !reflect.DeepEqual(outs, want) {
		t.Errorf("steps %q, want %q", outs, want)
	}
	// A sequence cut inside a character: Flush gives what Decode gives.
	ids := tok.Encode("🚀")
	d.Step(ids[0])
	d.Step(ids[1])
	if got, want := d.Flush(), "\uFFFD"; got != want {
		t.Errorf("Flush %q, want %q", got, want)
	}
	if out, _ := d.Step(tok.Encode("b")[0]); out != "b" {
		t.Errorf("after Flush: %q", out)
	}
}

func TestVocabAccessors(t *testing.T) {
	tok := loadGolden(t, "tokenizer_bpe_qwen2")
	if tok.VocabSize() != 320 {
		t.Errorf("VocabSize %d", tok.VocabSize())
	}
	if id, ok := tok.TokenToID("Ġthe"); !ok || id != 291 {
		t.Errorf("TokenToID(Ġthe) = %d, %v", id, ok)
	}
	if s, ok := tok.IDToToken(291); !ok || s != "Ġthe" {
		t.Errorf("IDToToken(291) = %q, %v", s, ok)
	}
	if id, ok := tok.TokenToID("<|im_end|>"); !ok || id != 2 {
		t.Errorf("TokenToID(<|im_end|>) = %d, %v", id, ok)
	}
	if !tok.IsSpecial(2) || tok.IsSpecial(291) {
		t.Error("IsSpecial")
	}
	if got := len(tok.AddedTokens()); got != 3 {
		t.Errorf("%d added tokens", got)
	}
	if got, want := tok.Special(), (SpecialTokens{BOS: -1, EOS: 0, PAD: -1, UNK: -1}); got != want {
		t.Errorf("Special() = %+v, want %+v", got, want)
	}
}

func TestSpecialFromTemplateAndConfig(t *testing.T) {
	m := goldenJSON(t, "tokenizer_bpe_gpt2")
	m["post_processor"] = map[string]any{"type": "TemplateProcessing",
		"single": []any{
			map[string]any{"SpecialToken": map[string]any{"id": "<|im_start|>", "type_id": 0}},
			map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
			map[string]any{"SpecialToken": map[string]any{"id": "<|im_end|>", "type_id": 0}},
		}}
	if got, want := mustParse(t, m).Special(), (SpecialTokens{BOS: 1, EOS: 2, PAD: -1, UNK: -1}); got != want {
		t.Errorf("from template: %+v, want %+v", got, want)
	}

	dir := t.TempDir()
	data, _ := json.Marshal(goldenJSON(t, "tokenizer_bpe_gpt2"))
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), data, 0o644)
	cfg := `{"bos_token": {"content": "<|im_start|>", "special": true}, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": null}`
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(cfg), 0o644)
	tok, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tok.Special(), (SpecialTokens{BOS: 1, EOS: 2, PAD: 0, UNK: -1}); got != want {
		t.Errorf("from tokenizer_config.json: %+v, want %+v", got, want)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"eos_token": "<nope>"}`), 0o644)
	if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), `eos_token "<nope>"`) {
		t.Errorf("bad config: %v", err)
	}
}

func TestConcurrentEncode(t *testing.T) {
	tok := loadGolden(t, "tokenizer_bpe_qwen2")
	text := englishText(20_000)
	want := loadGolden(t, "tokenizer_bpe_qwen2").Encode(text)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				if got := tok.Encode(text); !slices.Equal(got, want) {
					errs <- fmt.Sprintf("goroutine %d: encoding differs", g)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func BenchmarkEncode1MB(b *testing.B) {
	text := englishText(1 << 20)
	tok := mustParse(b, trainedJSON(b, englishText(200_000), 1000))
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Encode(text)
	}
}

// BenchmarkEncodeOpticks encodes 1 MB of real English prose (Newton's
// Opticks, testdata/text/opticks.txt, repeated) with a 2000-merge BPE
// trained on it, starting from an empty word cache every time.
func BenchmarkEncodeOpticks(b *testing.B) {
	book, err := os.ReadFile("../../testdata/text/opticks.txt")
	if err != nil {
		b.Skip(err)
	}
	text := strings.Repeat(string(book), (1<<20)/len(book)+1)[:1<<20]
	data, _ := json.Marshal(trainedJSON(b, string(book), 2000))
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tok, _ := Parse(data, "bench")
		b.StartTimer()
		tok.Encode(text)
	}
}

// BenchmarkEncode1MBCold encodes with an empty word cache every time.
func BenchmarkEncode1MBCold(b *testing.B) {
	text := englishText(1 << 20)
	data, _ := json.Marshal(trainedJSON(b, englishText(200_000), 1000))
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tok, _ := Parse(data, "bench")
		b.StartTimer()
		tok.Encode(text)
	}
}

func BenchmarkDecode(b *testing.B) {
	tok := mustParse(b, trainedJSON(b, englishText(200_000), 1000))
	ids := tok.Encode(englishText(1 << 20))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tok.Decode(ids)
	}
}

func Example() {
	tok, err := Load("../../testdata/golden/tokenizer_bpe_qwen2/tokenizer.json")
	if err != nil {
		panic(err)
	}
	ids, toks := tok.EncodeTokens("<|im_start|>user\nhi there<|im_end|>")
	fmt.Println(ids)
	fmt.Printf("%q\n", toks)
	text, _ := tok.DecodeSkipSpecial(ids)
	fmt.Printf("%q\n", text)
	// Output:
	// [1 87 85 259 201 74 75 262 319 71 2]
	// ["<|im_start|>" "u" "s" "er" "Ċ" "h" "i" "Ġt" "her" "e" "<|im_end|>"]
	// "user\nhi there"
}
