package tokenizer

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestMarshalGoldenIdentical: for files that tokenizers wrote, Marshal
// gives back the same bytes.
func TestMarshalGoldenIdentical(t *testing.T) {
	for _, name := range goldenDirs {
		path := filepath.Join(goldenRoot, name, "tokenizer.json")
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := loadGolden(t, name).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			i := 0
			for i < min(len(got), len(want)) && got[i] == want[i] {
				i++
			}
			t.Errorf("%s: Marshal differs from the file at byte %d: got %q, file %q", name, i,
				got[max(0, i-40):min(len(got), i+40)], want[max(0, i-40):min(len(want), i+40)])
		}
	}
}

// TestSaveLoadRoundTrip: a trained tokenizer saved and loaded again encodes
// and decodes the whole book and random text identically, and saving the
// loaded one writes the same bytes.
func TestSaveLoadRoundTrip(t *testing.T) {
	book := readBook(t)
	specials := []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
	orig := mustTrain(t, []string{book}, TrainConfig{VocabSize: 4096, SpecialTokens: specials})
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenizer.json")
	if err := orig.Save(path); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(loaded.Encode(book), orig.Encode(book)) {
		t.Fatal("the loaded tokenizer encodes the book differently")
	}
	if got, err := loaded.Decode(loaded.Encode(book)); err != nil || got != book {
		t.Fatalf("the loaded tokenizer does not round-trip the book (%v)", err)
	}
	r := rand.New(rand.NewPCG(11, 12))
	for i := 0; i < 2000; i++ {
		s := randomText(r, 30, i%2 == 0)
		if i%5 == 0 {
			s += specials[r.IntN(len(specials))] + randomText(r, 5, false)
		}
		ids := orig.Encode(s)
		if got := loaded.Encode(s); !slices.Equal(got, ids) {
			t.Fatalf("Encode(%q): loaded %v, trained %v", s, got, ids)
		}
		b, err := loaded.DecodeBytes(ids, false)
		if err != nil || string(b) != s {
			t.Fatalf("DecodeBytes(Encode(%q)) = %q, %v", s, b, err)
		}
	}
	if loaded.VocabSize() != orig.VocabSize() || !reflect.DeepEqual(loaded.AddedTokens(), orig.AddedTokens()) || loaded.Special() != orig.Special() {
		t.Errorf("loaded: %d ids, added %+v, special %+v; trained: %d, %+v, %+v", loaded.VocabSize(), loaded.AddedTokens(),
			loaded.Special(), orig.VocabSize(), orig.AddedTokens(), orig.Special())
	}
	saved, _ := os.ReadFile(path)
	again, err := loaded.Marshal()
	if err != nil || !bytes.Equal(again, saved) {
		t.Errorf("re-saving the loaded tokenizer changes the file (%v)", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("the directory holds %d entries, want only tokenizer.json", len(entries))
	}
}

// TestMarshalMirrorsGolden compares a trained tokenizer.json field by field
// with the Qwen2-style file transformers wrote (testdata/golden), trained
// with the same three special tokens.
func TestMarshalMirrorsGolden(t *testing.T) {
	golden, err := os.ReadFile(filepath.Join(goldenRoot, "tokenizer_bpe_qwen2", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	tok := mustTrain(t, []string{englishText(50_000)}, TrainConfig{VocabSize: 400, SpecialTokens: []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}})
	ours, err := tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	g, o := fields(t, golden), fields(t, ours)
	if !slices.Equal(keys(g), keys(o)) {
		t.Fatalf("top-level keys %q, golden %q", keys(o), keys(g))
	}
	for _, k := range []string{"version", "truncation", "padding", "added_tokens", "normalizer"} {
		sameJSON(t, k, o[k], g[k])
	}
	// Qwen2's released files have trim_offsets false; this golden file was
	// trained with the ByteLevel defaults (true), which do not change ids.
	sameJSON(t, "pre_tokenizer", o["pre_tokenizer"], bytes.ReplaceAll(g["pre_tokenizer"], []byte(`"trim_offsets": true`), []byte(`"trim_offsets": false`)))
	if !slices.Equal(keys(fields(t, o["decoder"])), keys(fields(t, g["decoder"]))) {
		t.Errorf("decoder keys %q, golden %q", keys(fields(t, o["decoder"])), keys(fields(t, g["decoder"])))
	}
	sameJSON(t, "post_processor", o["post_processor"], o["decoder"]) // Qwen2's: ByteLevel, like the decoder
	gm, om := fields(t, g["model"]), fields(t, o["model"])
	if !slices.Equal(keys(gm), keys(om)) {
		t.Fatalf("model keys %q, golden %q", keys(om), keys(gm))
	}
	for _, k := range keys(gm) {
		if k != "vocab" && k != "merges" {
			sameJSON(t, "model."+k, om[k], gm[k])
		}
	}
	// The specials and the 256 byte symbols have the golden file's ids, in
	// its order.
	gv, ov := fields(t, gm["vocab"]), fields(t, om["vocab"])
	for i, k := range keys(gv)[:259] {
		if keys(ov)[i] != k || string(ov[k]) != string(gv[k]) {
			t.Fatalf("vocab entry %d: %q: %s, golden %q: %s", i, keys(ov)[i], ov[keys(ov)[i]], k, gv[k])
		}
	}
	var gMerges, oMerges [][]string
	if json.Unmarshal(gm["merges"], &gMerges) != nil || json.Unmarshal(om["merges"], &oMerges) != nil || len(oMerges) != 400-259 || len(oMerges[0]) != 2 {
		t.Errorf("merges are not [a, b] pairs like the golden file's: %.80s", om["merges"])
	}
}

// fields decodes a JSON object keeping its key order.
func fields(t *testing.T, raw []byte) map[string]json.RawMessage {
	t.Helper()
	fs, err := orderedFields(raw)
	if err != nil {
		t.Fatalf("%.60s: %v", raw, err)
	}
	m := map[string]json.RawMessage{"\x00order": nil}
	var order []string
	for _, f := range fs {
		m[f.key] = f.value
		order = append(order, f.key)
	}
	m["\x00order"], _ = json.Marshal(order)
	return m
}

func keys(m map[string]json.RawMessage) []string {
	var order []string
	json.Unmarshal(m["\x00order"], &order)
	return order
}

func sameJSON(t *testing.T, what string, got, want []byte) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("%s: %s, golden %s", what, compactJSON(got), compactJSON(want))
	}
}

func compactJSON(b []byte) string {
	var out bytes.Buffer
	json.Compact(&out, b)
	return out.String()
}

// TestMarshalKeepsLoadedOptions: what Load accepts beyond the trained
// layout survives Marshal and Load.
func TestMarshalKeepsLoadedOptions(t *testing.T) {
	variants := map[string]func(m map[string]any){
		"string merges": func(m map[string]any) {
			model := m["model"].(map[string]any)
			for i, mg := range model["merges"].([]any) {
				p := mg.([]any)
				model["merges"].([]any)[i] = p[0].(string) + " " + p[1].(string)
			}
		},
		"everything": func(m map[string]any) {
			m["normalizer"] = map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "NFC"}}}
			m["pre_tokenizer"] = map[string]any{"type": "Sequence", "pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"String": "--"}, "behavior": "Isolated", "invert": false},
				map[string]any{"type": "Digits", "individual_digits": true},
				map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
			}}
			m["truncation"] = map[string]any{"direction": "Right", "max_length": 512, "strategy": "LongestFirst", "stride": 0}
			m["post_processor"] = map[string]any{"type": "TemplateProcessing",
				"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<|im_start|>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
				"pair":           []any{},
				"special_tokens": map[string]any{}}
			model := m["model"].(map[string]any)
			model["unk_token"] = "<|endoftext|>"
			model["fuse_unk"] = true
			model["ignore_merges"] = true
			model["dropout"] = 0.0
			model["continuing_subword_prefix"] = ""
			added := m["added_tokens"].([]any)
			added = append(added, map[string]any{"id": 500, "content": "<tool>", "single_word": true, "lstrip": true, "rstrip": true, "normalized": true, "special": false})
			m["added_tokens"] = added
		},
	}
	r := rand.New(rand.NewPCG(13, 14))
	for name, edit := range variants {
		m := goldenJSON(t, "tokenizer_bpe_gpt2")
		edit(m)
		first := mustParse(t, m)
		data, err := first.Marshal()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		second, err := Parse(data, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i := 0; i < 500; i++ {
			s := randomText(r, 20, false) + " <tool> --12<|im_end|>"
			if a, b := first.Encode(s), second.Encode(s); !slices.Equal(a, b) {
				t.Fatalf("%s: Encode(%q): %v after Marshal, %v before", name, s, b, a)
			}
		}
		if !reflect.DeepEqual(first.AddedTokens(), second.AddedTokens()) || first.Special() != second.Special() {
			t.Errorf("%s: added tokens or special ids changed", name)
		}
		again, _ := second.Marshal()
		if !bytes.Equal(again, data) {
			t.Errorf("%s: Marshal after Load differs", name)
		}
		var orig, back map[string]any
		raw, _ := json.Marshal(m)
		json.Unmarshal(raw, &orig)
		json.Unmarshal(data, &back)
		for _, k := range []string{"normalizer", "pre_tokenizer", "post_processor", "truncation", "padding"} {
			if !reflect.DeepEqual(orig[k], back[k]) {
				t.Errorf("%s: %s %v, loaded %v", name, k, back[k], orig[k])
			}
		}
		om, bm := orig["model"].(map[string]any), back["model"].(map[string]any)
		for k, v := range om {
			if k != "merges" && !reflect.DeepEqual(v, bm[k]) {
				t.Errorf("%s: model.%s %v, loaded %v", name, k, bm[k], v)
			}
		}
		if name == "string merges" && !bytes.Contains(data, []byte(`"merges": [
      "e r",`)) {
			t.Errorf("merges not written as strings: %.200s", data[bytes.Index(data, []byte(`"merges"`)):])
		}
	}
}

// TestMarshalAmbiguousVocab: when two tokens share the id of a merge's
// part, the merge cannot be named unambiguously; Marshal says so rather
// than write a file that does not load.
func TestMarshalAmbiguousVocab(t *testing.T) {
	m := goldenJSON(t, "tokenizer_bpe_gpt2")
	vocab := m["model"].(map[string]any)["vocab"].(map[string]any)
	vocab["!!"] = vocab["e"] // sorts before "e", so it would name the id
	_, err := mustParse(t, m).Marshal()
	if err == nil || !strings.Contains(err.Error(), `merge 0 ("!!" "r")`) {
		t.Errorf("err = %v", err)
	}
}

func TestSaveAtomic(t *testing.T) {
	tok := loadGolden(t, "tokenizer_bpe_qwen2")
	want, _ := tok.Marshal()
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenizer.json")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tok.Save(path); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	st, _ := os.Stat(path)
	if !bytes.Equal(got, want) || st.Mode().Perm() != 0o644 {
		t.Errorf("after Save over an old file: %d bytes, mode %v", len(got), st.Mode().Perm())
	}
	// A rename that fails (the target is a non-empty directory) leaves the
	// target as it was and no temporary file behind.
	blocked := filepath.Join(dir, "blocked")
	os.MkdirAll(filepath.Join(blocked, "x"), 0o755)
	if err := tok.Save(blocked); err == nil {
		t.Error("Save over a directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(blocked, "x")); err != nil {
		t.Errorf("the directory was disturbed: %v", err)
	}
	if err := tok.Save(filepath.Join(dir, "missing", "tokenizer.json")); err == nil {
		t.Error("Save into a missing directory succeeded")
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"blocked", "tokenizer.json"}) {
		t.Errorf("directory holds %q, want no temporary files", names)
	}
}

func TestAppendJSONString(t *testing.T) {
	tests := map[string]string{
		"plain":           `"plain"`,
		`q"b\`:            `"q\"b\\"`,
		"\b\t\n\f\r":      `"\b\t\n\f\r"`,
		"\x00\x01\x1f":    `"\u0000\u0001\u001f"`,
		"\x7f<>&":         "\"\x7f<>&\"",
		"Ġé中\u2028🚀":      "\"Ġé中\u2028🚀\"",
		"":                `""`,
		"<|endoftext|>\n": `"<|endoftext|>\n"`,
	}
	for in, want := range tests {
		if got := string(appendJSONString(nil, in)); got != want {
			t.Errorf("%q: %s, want %s", in, got, want)
		}
	}
	r := rand.New(rand.NewPCG(15, 16))
	for i := 0; i < 1000; i++ {
		s := randomText(r, 10, false)
		var back string
		if err := json.Unmarshal(appendJSONString(nil, s), &back); err != nil || back != s {
			t.Fatalf("%q: decodes to %q, %v", s, back, err)
		}
	}
}

func TestPrettyJSON(t *testing.T) {
	got, err := prettyJSON([]byte(`{"a":[],"b":{},"c":[1,{"d":null,"e":0.0}],"f":"x"}`))
	want := `{
  "a": [],
  "b": {},
  "c": [
    1,
    {
      "d": null,
      "e": 0.0
    }
  ],
  "f": "x"
}`
	if err != nil || string(got) != want {
		t.Errorf("got %s, %v", got, err)
	}
	if _, err := prettyJSON([]byte(`{} {}`)); err == nil {
		t.Error("trailing value accepted")
	}
}
