package tokenizer

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const bookPath = "../../testdata/text/opticks.txt"

func readBook(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(bookPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustTrain(t testing.TB, docs []string, cfg TrainConfig) *Tokenizer {
	t.Helper()
	tok, err := TrainDocs(docs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustMerges(t testing.TB, tok *Tokenizer) [][2]string {
	t.Helper()
	m, err := tok.mergeStrings()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// trainReference is the slow reference of the merge loop of TrainDocs: before
// every merge it recounts every pair of every word, then takes the most
// frequent pair, the smallest (left id, right id) on ties, skipping pairs
// that would make a special token.
func trainReference(words []wordCount, specials []string, vocabSize int, minFreq int64) [][2]string {
	var tokens []string
	ids := map[string]int32{}
	add := func(s string) int32 {
		ids[s] = int32(len(tokens))
		tokens = append(tokens, s)
		return ids[s]
	}
	banned := map[string]bool{}
	for _, s := range specials {
		add(s)
		banned[s] = true
	}
	var byteID [256]int32
	for _, b := range byteSymbolOrder() {
		byteID[b] = add(string(byteToRune[b]))
	}
	syms := make([][]int32, len(words))
	for w, wc := range words {
		for i := 0; i < len(wc.word); i++ {
			syms[w] = append(syms[w], byteID[wc.word[i]])
		}
	}
	var merges [][2]string
	for len(tokens) < vocabSize {
		counts := map[[2]int32]int64{}
		for w, s := range syms {
			for i := 0; i+1 < len(s); i++ {
				counts[[2]int32{s[i], s[i+1]}] += words[w].n
			}
		}
		var best [2]int32
		bestN := int64(0)
		for p, n := range counts {
			if banned[tokens[p[0]]+tokens[p[1]]] {
				continue
			}
			if n > bestN || (n == bestN && (p[0] < best[0] || p[0] == best[0] && p[1] < best[1])) {
				best, bestN = p, n
			}
		}
		if bestN == 0 || bestN < minFreq {
			break
		}
		s := tokens[best[0]] + tokens[best[1]]
		id, ok := ids[s]
		if !ok {
			id = add(s)
		}
		merges = append(merges, [2]string{tokens[best[0]], tokens[best[1]]})
		for w, s := range syms {
			out := s[:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, id)
					i++
				} else {
					out = append(out, s[i])
				}
			}
			syms[w] = out
		}
	}
	return merges
}

func TestTrainMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for trial := 0; trial < 40; trial++ {
		var docs []string
		switch trial % 4 {
		case 0:
			docs = []string{englishText(5000 + r.IntN(20000))}
		default:
			for i := 0; i < 1+r.IntN(30); i++ {
				docs = append(docs, "x"+randomText(r, 60, trial%2 == 0))
			}
		}
		specials := [][]string{nil, {"<|endoftext|>"}, {"<|endoftext|>", "the", "Ġs"}}[trial%3]
		cfg := TrainConfig{
			VocabSize:     256 + len(specials) + r.IntN(600),
			MinFrequency:  1 + r.IntN(3),
			SpecialTokens: specials,
			Pattern:       trainPatterns[trial%len(trainPatterns)],
		}
		tok, err := TrainDocs(docs, cfg)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		got := mustMerges(t, tok)
		want := trainReference(countWords(docs, cfg.Pattern, specials), specials, cfg.VocabSize, int64(cfg.MinFrequency))
		if !slices.Equal(got, want) {
			i := 0
			for i < min(len(got), len(want)) && got[i] == want[i] {
				i++
			}
			t.Fatalf("trial %d (%+v): %d merges, reference %d; first difference at %d", trial, cfg, len(got), len(want), i)
		}
	}
}

// bookLines splits text after every "\n", as tokenizers' train(files)
// feeds a file to the trainer.
func bookLines(text string) []string {
	var lines []string
	for text != "" {
		i := strings.IndexByte(text, '\n') + 1
		if i == 0 {
			i = len(text)
		}
		lines = append(lines, text[:i])
		text = text[i:]
	}
	return lines
}

// TestTrainMatchesTokenizersBpeTrainer compares with the merges Hugging
// Face tokenizers' BpeTrainer learned from the book, line by line, with its
// defaults (testdata/hf_bpetrainer.js): no vocabulary limit that matters,
// min_frequency 0, so all 10211 merges until no pair is left. Its
// vocabulary holds only the byte symbols that occur, ours all 256; the
// merges and their order are the same because both lay the symbols out in
// code-point order.
func TestTrainMatchesTokenizersBpeTrainer(t *testing.T) {
	f, err := os.Open("testdata/hf_bpetrainer_opticks.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var count int
	var sum string
	var want [][2]string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "count "):
			count, _ = strconv.Atoi(strings.TrimPrefix(line, "count "))
		case strings.HasPrefix(line, "sha256 "):
			sum = strings.TrimPrefix(line, "sha256 ")
		default:
			a, b, _ := strings.Cut(line, " ")
			want = append(want, [2]string{a, b})
		}
	}
	tok := mustTrain(t, bookLines(readBook(t)), TrainConfig{VocabSize: 1 << 20, MinFrequency: 1})
	got := mustMerges(t, tok)
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Fatalf("merge %d: got %q, tokenizers learned %q", i, got[min(i, len(got)-1)], want[i])
		}
	}
	var all bytes.Buffer
	for _, m := range got {
		fmt.Fprintf(&all, "%s %s\n", m[0], m[1])
	}
	h := sha256.Sum256(all.Bytes())
	if len(got) != count || hex.EncodeToString(h[:]) != sum {
		t.Errorf("%d merges with sha256 %x; tokenizers learned %d with sha256 %s", len(got), h, count, sum)
	}
}

// TestTrainBook trains on the whole book at three sizes: the vocabulary
// has exactly the asked size, the merges are valid, the book round-trips,
// and larger vocabularies compress better.
func TestTrainBook(t *testing.T) {
	book := readBook(t)
	specials := []string{"<|endoftext|>", "<|pad|>"}
	prevRatio := 0.0
	for _, size := range []int{512, 1024, 4096} {
		tok := mustTrain(t, []string{book}, TrainConfig{VocabSize: size, SpecialTokens: specials})
		if tok.VocabSize() != size {
			t.Fatalf("VocabSize() = %d, want %d", tok.VocabSize(), size)
		}
		checkLayout(t, tok, specials)
		ids := tok.Encode(book)
		got, err := tok.Decode(ids)
		if err != nil || got != book {
			t.Fatalf("size %d: the book does not round-trip (%v)", size, err)
		}
		ratio := float64(len(book)) / float64(len(ids))
		t.Logf("vocab %5d: %d tokens, %.3f bytes/token", size, len(ids), ratio)
		if ratio <= prevRatio {
			t.Errorf("vocab %d: %.3f bytes/token, no better than the smaller vocabulary's %.3f", size, ratio, prevRatio)
		}
		prevRatio = ratio
	}
}

// checkLayout checks the id layout (specials, then the 256 byte symbols in
// code-point order, then one token per merge in order) and that every
// merge's parts exist before the token it makes.
func checkLayout(t *testing.T, tok *Tokenizer, specials []string) {
	t.Helper()
	for i, s := range specials {
		if id, ok := tok.TokenToID(s); !ok || id != i || !tok.IsSpecial(i) {
			t.Errorf("special %q: id %d (%v), special %v; want id %d", s, id, ok, tok.IsSpecial(i), i)
		}
		if ids := tok.Encode("x" + s + "y"); len(ids) != 3 || ids[1] != i {
			t.Errorf("Encode(x%sy) = %v, want the special as one id %d in the middle", s, ids, i)
		}
	}
	prev := rune(-1)
	for id := len(specials); id < len(specials)+256; id++ {
		tk, _ := tok.IDToToken(id)
		r := []rune(tk)
		if len(r) != 1 || r[0] <= prev {
			t.Fatalf("id %d is %q, want the byte symbols in code-point order", id, tk)
		}
		prev = r[0]
	}
	next := len(specials) + 256
	for i, m := range mustMerges(t, tok) {
		a, okA := tok.TokenToID(m[0])
		b, okB := tok.TokenToID(m[1])
		id, ok := tok.TokenToID(m[0] + m[1])
		if !okA || !okB || !ok || a >= id || b >= id || id > next || slices.Contains(specials, m[0]+m[1]) {
			t.Fatalf("merge %d %q %q: ids %d %d -> %d (next new id %d)", i, m[0], m[1], a, b, id, next)
		}
		if id == next {
			next++
		}
	}
	if next != tok.VocabSize() {
		t.Errorf("merges made %d tokens, vocabulary has %d", next, tok.VocabSize())
	}
}

func TestTrainDeterministic(t *testing.T) {
	docs := bookLines(readBook(t))[:3000]
	cfg := TrainConfig{VocabSize: 1500, SpecialTokens: []string{"<|endoftext|>"}}
	a, err := mustTrain(t, docs, cfg).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := mustTrain(t, docs, cfg).Marshal()
	// The order of the documents does not matter either.
	shuffled := slices.Clone(docs)
	rand.New(rand.NewPCG(7, 8)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	c, _ := mustTrain(t, shuffled, cfg).Marshal()
	if !bytes.Equal(a, b) || !bytes.Equal(a, c) {
		t.Fatal("same corpus, different tokenizer.json")
	}
}

func TestTrainSpecialTokens(t *testing.T) {
	// Specials in the text are cut out before counting: nothing of
	// "<|endoftext|>" is learned although it is the most frequent string.
	text := strings.Repeat("hello world<|endoftext|>", 500)
	tok := mustTrain(t, []string{text}, TrainConfig{VocabSize: 400, SpecialTokens: []string{"<|endoftext|>"}})
	checkLayout(t, tok, []string{"<|endoftext|>"})
	for _, m := range mustMerges(t, tok) {
		if strings.ContainsAny(m[0]+m[1], "<|>") {
			t.Errorf("merge %q %q learned from a special token", m[0], m[1])
		}
	}
	if ids := tok.Encode("hello world<|endoftext|>"); len(ids) != 3 || ids[2] != 0 {
		t.Errorf("Encode = %v, want [hello, Ġworld, 0]", ids)
	}
	if s := tok.Special(); s.EOS != 0 {
		t.Errorf("Special().EOS = %d, want 0", s.EOS)
	}

	// A special whose content is what a merge would make ("Ġx" is " x"
	// byte-level): the merge is skipped, so the special stays the only id
	// with that string and " x" stays two tokens.
	tok = mustTrain(t, []string{strings.Repeat(" x", 100) + strings.Repeat(" y", 50)}, TrainConfig{VocabSize: 300, SpecialTokens: []string{"Ġx"}})
	if got := mustMerges(t, tok); !slices.Equal(got, [][2]string{{"Ġ", "y"}}) {
		t.Errorf("merges %q, want only Ġ y", got)
	}
	if ids := tok.Encode(" xĠx"); len(ids) != 3 || ids[2] != 0 {
		t.Errorf(`Encode(" xĠx") = %v, want Ġ, x, 0`, ids)
	}
}

func TestTrainMinFrequency(t *testing.T) {
	// Pre-tokens "ab", " ab", " cd": a b occurs twice, every other pair once.
	text := "ab ab cd"
	tests := []struct {
		minFreq int
		want    [][2]string
	}{
		{0, [][2]string{{"a", "b"}}}, // default 2
		{2, [][2]string{{"a", "b"}}},
		{3, nil},
		{1, [][2]string{{"a", "b"}, {"c", "d"}, {"Ġ", "ab"}, {"Ġ", "cd"}}},
	}
	for _, tc := range tests {
		tok := mustTrain(t, []string{text}, TrainConfig{VocabSize: 1000, MinFrequency: tc.minFreq})
		if got := mustMerges(t, tok); !slices.Equal(got, tc.want) {
			t.Errorf("MinFrequency %d: merges %q, want %q", tc.minFreq, got, tc.want)
		}
		if tok.VocabSize() != 256+len(tc.want) {
			t.Errorf("MinFrequency %d: VocabSize %d", tc.minFreq, tok.VocabSize())
		}
	}
}

func TestTrainPatterns(t *testing.T) {
	text := englishText(20000) + " 12345 don'T\r\n\n  x"
	for _, p := range trainPatterns {
		tok := mustTrain(t, []string{text}, TrainConfig{VocabSize: 600, Pattern: p})
		if got, err := tok.Decode(tok.Encode(text)); err != nil || got != text {
			t.Errorf("%.20s: no round trip (%v)", p, err)
		}
		var want []string
		splitIsolated(text, knownPatterns[p], func(s string) { want = append(want, s) })
		if len(tok.steps) != 2 || tok.steps[0].match == nil || !tok.steps[1].byteLevel {
			t.Fatalf("%.20s: steps %+v, want Split then ByteLevel", p, tok.steps)
		}
		var got []string
		splitIsolated(text, tok.steps[0].match, func(s string) { got = append(got, s) })
		if !slices.Equal(got, want) {
			t.Errorf("%.20s: the trained tokenizer does not pre-tokenize with its pattern", p)
		}
	}
}

func TestTrainErrors(t *testing.T) {
	tests := []struct {
		name string
		docs []string
		cfg  TrainConfig
		want []string // all in the message
	}{
		{"zero config", []string{"text"}, TrainConfig{}, []string{"VocabSize 0 is less than the 256 byte symbols plus 0 special tokens (256)"}},
		{"too small for specials", []string{"text"}, TrainConfig{VocabSize: 257, SpecialTokens: []string{"<a>", "<b>"}}, []string{"VocabSize 257", "(258)"}},
		{"several problems", []string{"text"}, TrainConfig{VocabSize: 300, MinFrequency: -1, Pattern: `\p{N}{1,3}`, SpecialTokens: []string{"", "<a>", "<a>", "Ġ"}},
			[]string{"MinFrequency -1 is negative", `Pattern "\\p{N}{1,3}" is not one of`, "SpecialTokens[0] is empty", `SpecialTokens[2] "<a>" is repeated`, `SpecialTokens[3] "Ġ" is a byte symbol`}},
		{"empty text", []string{""}, TrainConfig{VocabSize: 300}, []string{"training text is empty"}},
		{"no documents", nil, TrainConfig{VocabSize: 300}, []string{"training text is empty"}},
		{"only specials", []string{"<s><s>", "<s>"}, TrainConfig{VocabSize: 300, SpecialTokens: []string{"<s>"}}, []string{"training text is empty"}},
	}
	for _, tc := range tests {
		_, err := TrainDocs(tc.docs, tc.cfg)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, w)
			}
		}
	}
	// The smallest valid vocabulary: bytes and specials, no merge.
	tok, err := Train("some text", TrainConfig{VocabSize: 257, SpecialTokens: []string{"<s>"}})
	if err != nil || tok.VocabSize() != 257 || len(mustMerges(t, tok)) != 0 {
		t.Errorf("VocabSize 257 with one special: %v", err)
	}
}

// BenchmarkTrainOpticks4096 trains a 4096-id vocabulary (3839 merges) on
// the 567 KB book, from pre-tokenization to the loaded tokenizer.
func BenchmarkTrainOpticks4096(b *testing.B) {
	book := readBook(b)
	b.SetBytes(int64(len(book)))
	for b.Loop() {
		if _, err := Train(book, TrainConfig{VocabSize: 4096, SpecialTokens: []string{"<|endoftext|>"}}); err != nil {
			b.Fatal(err)
		}
	}
}

// ExampleTrain: the special token is id 0, the byte symbols 1..256, merges
// from 257 on; training stops at 269 ids because no pair occurs twice more.
func ExampleTrain() {
	text := strings.Repeat("the cat sat on the mat.<|endoftext|>", 20)
	tok, err := Train(text, TrainConfig{VocabSize: 270, SpecialTokens: []string{"<|endoftext|>"}})
	if err != nil {
		panic(err)
	}
	ids, toks := tok.EncodeTokens("the cat sat<|endoftext|>")
	fmt.Println(tok.VocabSize(), ids)
	fmt.Printf("%q\n", toks)
	// Output:
	// 269 [259 265 268 0]
	// ["the" "Ġcat" "Ġsat" "<|endoftext|>"]
}

// FuzzTrain trains on arbitrary text (valid UTF-8 or not) with a small
// vocabulary: the merges equal the reference trainer's, the text survives
// Encode and DecodeBytes, and the tokenizer survives Marshal and Parse.
func FuzzTrain(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s, uint16(40), uint8(1))
	}
	f.Add(strings.Repeat("ab", 50)+"<|endoftext|>"+strings.Repeat(" ab", 20), uint16(300), uint8(2))
	f.Fuzz(func(t *testing.T, text string, merges uint16, minFreq uint8) {
		specials := []string{"<|endoftext|>"}
		cfg := TrainConfig{VocabSize: 257 + int(merges%512), MinFrequency: int(minFreq % 4), SpecialTokens: specials}
		tok, err := Train(text, cfg)
		if err != nil {
			if words := countWords([]string{text}, PatternQwen2, specials); len(words) > 0 {
				t.Fatalf("%d words: %v", len(words), err)
			}
			return
		}
		minCount := int64(cfg.MinFrequency)
		if minCount == 0 {
			minCount = 2 // the default
		}
		want := trainReference(countWords([]string{text}, PatternQwen2, specials), specials, cfg.VocabSize, minCount)
		if got := mustMerges(t, tok); !slices.Equal(got, want) {
			t.Fatalf("merges %q, reference %q", got, want)
		}
		ids := tok.Encode(text)
		if b, err := tok.DecodeBytes(ids, false); err != nil || string(b) != text {
			t.Fatalf("DecodeBytes(Encode) = %q, %v", b, err)
		}
		data, err := tok.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(data, "trained.json")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(back.Encode(text), ids) {
			t.Fatal("Encode differs after Marshal and Parse")
		}
	})
}
