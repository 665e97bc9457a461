package tokenizer

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// mergeWordNaive is the reference BPE: repeatedly merge the adjacent pair
// with the lowest rank, the leftmost one on ties, until none has a rank.
func mergeWordNaive(m *bpe, raw string) []int {
	var ids []int32
	for _, s := range m.initialSymbols(nil, raw) {
		ids = append(ids, s.id)
	}
	for {
		best, bestRank, bestID := -1, int32(0), int32(0)
		for i := 0; i+1 < len(ids); i++ {
			if mg, ok := m.merges[pairKey(ids[i], ids[i+1])]; ok && (best < 0 || mg.rank < bestRank) {
				best, bestRank, bestID = i, mg.rank, mg.id
			}
		}
		if best < 0 {
			break
		}
		ids[best] = bestID
		ids = append(ids[:best+1], ids[best+2:]...)
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

func TestMergeWordMatchesNaive(t *testing.T) {
	corpus := englishText(40_000)
	tok := mustParse(t, trainedJSON(t, corpus, 400))
	r := rand.New(rand.NewPCG(3, 4))
	words := strings.Fields(corpus)
	check := func(w string) {
		t.Helper()
		got := tok.model.mergeWord(nil, w)
		want := mergeWordNaive(tok.model, w)
		if !slices.Equal(got, want) {
			t.Fatalf("%q: got %v want %v", w, got, want)
		}
	}
	for i := 0; i < 3000; i++ {
		w := words[r.IntN(len(words))]
		if r.IntN(2) == 0 {
			w = " " + w
		}
		if r.IntN(4) == 0 { // glue words together for long chains
			w += words[r.IntN(len(words))] + words[r.IntN(len(words))]
		}
		check(w)
		check(randomText(r, 8, true))
	}
	check(strings.Repeat(" ", 5000)) // long runs use the heap path heavily
	check(strings.Repeat("the", 1000))
}

func TestMissingByteSymbols(t *testing.T) {
	// Remove the symbol of byte 'q' (and every merge using it).
	build := func(unk any, fuse bool) *Tokenizer {
		m := goldenJSON(t, "tokenizer_bpe_gpt2")
		model := m["model"].(map[string]any)
		delete(model["vocab"].(map[string]any), "q")
		model["unk_token"] = unk
		model["fuse_unk"] = fuse
		return mustParse(t, m)
	}
	noUnk := build(nil, false)
	if got, want := noUnk.Encode("qqaq"), noUnk.Encode("a"); !reflect.DeepEqual(got, want) {
		t.Errorf("no unk: got %v want %v (bytes without a symbol are dropped)", got, want)
	}
	unk := build("<|endoftext|>", false)
	a := unk.Encode("a")[0]
	if got, want := unk.Encode("qqaq"), []int{0, 0, a, 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("unk: got %v want %v", got, want)
	}
	fused := build("<|endoftext|>", true)
	if got, want := fused.Encode("qqaq"), []int{0, a, 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("fuse_unk: got %v want %v", got, want)
	}
	if got := fused.Special().UNK; got != 0 {
		t.Errorf("Special().UNK = %d, want 0", got)
	}
}

func TestIgnoreMerges(t *testing.T) {
	// "Ġer" is in the vocabulary but no merge produces it from Ġ + e + r
	// (merge order: e r, then nothing joins Ġ and er).
	m := goldenJSON(t, "tokenizer_bpe_gpt2")
	model := m["model"].(map[string]any)
	vocab := model["vocab"].(map[string]any)
	vocab["Ġer"] = float64(len(vocab))
	plain := mustParse(t, m)
	model["ignore_merges"] = true
	ignoring := mustParse(t, m)
	if got := len(plain.Encode(" er")); got != 2 {
		t.Errorf("without ignore_merges: %d tokens, want 2 (Ġ, er)", got)
	}
	if got, want := ignoring.Encode(" er"), []int{len(vocab) - 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("with ignore_merges: got %v want %v", got, want)
	}
}
