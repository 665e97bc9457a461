package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

var fuzzTokenizers = sync.OnceValues(func() ([]*Tokenizer, error) {
	var out []*Tokenizer
	for _, name := range goldenDirs {
		tok, err := Load(filepath.Join(goldenRoot, name, "tokenizer.json"))
		if err != nil {
			return nil, err
		}
		out = append(out, tok)
	}
	// DeepSeek-V3's split sequence and a ByteLevel with add_prefix_space,
	// both over the gpt2 vocabulary.
	data, err := os.ReadFile(filepath.Join(goldenRoot, "tokenizer_bpe_gpt2", "tokenizer.json"))
	if err != nil {
		return nil, err
	}
	split := func(p string) map[string]any {
		return map[string]any{"type": "Split", "pattern": map[string]any{"Regex": p}, "behavior": "Isolated"}
	}
	for _, v := range []struct{ pre, normalizer any }{
		{map[string]any{"type": "Sequence", "pretokenizers": []any{split(PatternDigits3), split(PatternDeepSeekCJK),
			split(PatternDeepSeekMain), map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}}}, nil},
		{map[string]any{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}, nil},
		{map[string]any{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}, map[string]any{"type": "NFC"}},
	} {
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			return nil, err
		}
		m["pre_tokenizer"], m["normalizer"] = v.pre, v.normalizer
		b, _ := json.Marshal(m)
		tok, err := Parse(b, "variant")
		if err != nil {
			return nil, err
		}
		out = append(out, tok)
	}
	return out, nil
})

var fuzzSeeds = []string{
	"", " ", "  x", "hello world", "Don't I'M we'Ll", "tokens\n\n\n", "\r\n\t  \u00a0\u3000x",
	"🚀🚀 👩‍💻 中文 日本語 한국어 e\u0301", "<|im_start|>user\nhi<|im_end|>", "<|im_end|", "12345 3.14159",
	"\xff\xe4\xb8 \xed\xa0\x80", "a'ſ 'K", "x.yz ,ab !!\n\n",
}

// FuzzEncode checks, for every fuzz tokenizer (all 256 byte symbols in the
// vocabulary), that Encode never panics and that:
//   - DecodeBytes(Encode(s)) == s byte for byte, valid UTF-8 or not (byte-
//     level BPE covers every byte, and added-token matching and splitting
//     only ever cut s, never change it); with NFC or add_prefix_space, s as
//     those change it (expectedBytes);
//   - Decode(Encode(s)) is from_utf8_lossy of those bytes, hence s itself
//     for valid UTF-8 without normalizer or prefix space;
//   - a StreamDecoder over the ids yields exactly Decode's string;
//   - Encode is deterministic (the second call is served by the cache);
//   - every matcher splits s as its regexp reference does (s up to 1 KB).
func FuzzEncode(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s)
	}
	toks, err := fuzzTokenizers()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for ti, tok := range toks {
			ids := tok.Encode(s)
			b, err := tok.DecodeBytes(ids, false)
			if err != nil {
				t.Fatal(err)
			}
			want := expectedBytes(tok, s)
			if string(b) != want {
				t.Fatalf("tokenizer %d: DecodeBytes(Encode(%q)) = %q", ti, s, b)
			}
			text, err := tok.Decode(ids)
			if err != nil {
				t.Fatal(err)
			}
			if text != lossyString([]byte(want)) || (utf8.ValidString(want) && text != want) {
				t.Fatalf("tokenizer %d: Decode(Encode(%q)) = %q", ti, s, text)
			}
			d := tok.NewStreamDecoder(false)
			var sb strings.Builder
			for _, id := range ids {
				out, err := d.Step(id)
				if err != nil {
					t.Fatal(err)
				}
				sb.WriteString(out)
			}
			if sb.WriteString(d.Flush()); sb.String() != text {
				t.Fatalf("tokenizer %d: stream %q, Decode %q", ti, sb.String(), text)
			}
			if again := tok.Encode(s); !slices.Equal(again, ids) {
				t.Fatalf("tokenizer %d: Encode(%q) not deterministic: %v then %v", ti, s, ids, again)
			}
		}
		if len(s) > 1024 {
			return // the regexp reference is quadratic in the input length
		}
		for p, m := range knownPatterns {
			checkSplit(t, p, s, m)
		}
	})
}

// expectedBytes is what the fuzz tokenizers' pipeline does to the bytes of
// s: the text between added tokens is normalized and, with add_prefix_space,
// gets a leading space; the model and decoder then preserve every byte.
func expectedBytes(tok *Tokenizer, s string) string {
	var b strings.Builder
	tok.splitAdded(s, &tok.rawSet, func(piece string, added int) {
		if added < 0 {
			piece = tok.normalize(piece)
			if st := tok.steps[len(tok.steps)-1]; st.addPrefixSpace && piece != "" && piece[0] != ' ' {
				b.WriteByte(' ')
			}
		}
		b.WriteString(piece)
	})
	return b.String()
}

// FuzzLoad feeds mutated tokenizer.json files to Parse: it must return a
// tokenizer or an error, never panic, and a tokenizer it returns must encode
// and decode without panicking. Marshal must write it back (unless its
// vocabulary gives one id several tokens) as a file that Parse reads to a
// tokenizer encoding alike, and that Marshal writes again unchanged. The golden seeds are 10 KB, which makes the
// fuzzer's input minimization slow; run with -fuzzminimizetime=5s.
func FuzzLoad(f *testing.F) {
	for _, name := range goldenDirs {
		data, err := os.ReadFile(filepath.Join(goldenRoot, name, "tokenizer.json"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3}, "merges": ["a b"]},
		"added_tokens": [{"id": 4, "content": "<x>", "lstrip": true, "rstrip": true, "single_word": true, "normalized": true, "special": true}],
		"normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
			{"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": false},
			{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}]},
		"decoder": {"type": "ByteLevel"}, "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>"}}]}}`))
	f.Add([]byte(`{"model": {"vocab": {"a": 0}, "merges": [["a", "a"]], "unk_token": "a", "fuse_unk": true, "ignore_merges": true},
		"pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "Sequence", "decoders": [{"type": "ByteLevel"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tok, err := Parse(data, "fuzz.json")
		if err != nil {
			return
		}
		for _, s := range fuzzSeeds {
			ids, toks := tok.EncodeTokens(s)
			if len(ids) != len(toks) {
				t.Fatalf("%d ids, %d tokens", len(ids), len(toks))
			}
			if _, err := tok.Decode(ids); err != nil {
				t.Fatalf("Decode(Encode(%q)): %v", s, err)
			}
		}
		n := min(tok.VocabSize(), 4096)
		all := make([]int, 0, n)
		for id := 0; id < n; id++ {
			if _, ok := tok.IDToToken(id); ok {
				all = append(all, id)
			}
		}
		if _, err := tok.Decode(all); err != nil {
			t.Fatal(err)
		}
		tok.Special()

		data2, err := tok.Marshal()
		if err != nil {
			if !strings.Contains(err.Error(), "several tokens to one id") {
				t.Fatal(err)
			}
			return
		}
		tok2, err := Parse(data2, "marshaled.json")
		if err != nil {
			t.Fatalf("Marshal wrote a file that does not load: %v", err)
		}
		for _, s := range fuzzSeeds {
			if a, b := tok.Encode(s), tok2.Encode(s); !slices.Equal(a, b) {
				t.Fatalf("Encode(%q): %v, after Marshal %v", s, a, b)
			}
		}
		if tok.VocabSize() != tok2.VocabSize() || tok.Special() != tok2.Special() || !slices.Equal(tok.AddedTokens(), tok2.AddedTokens()) {
			t.Fatal("VocabSize, Special or AddedTokens changed by Marshal")
		}
		if data3, err := tok2.Marshal(); err != nil || string(data3) != string(data2) {
			t.Fatalf("Marshal is not stable: %v", err)
		}
	})
}
