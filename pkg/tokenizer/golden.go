package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// CaseResult is the outcome of one golden case.
type CaseResult struct {
	Text      string
	IDsOK     bool // Encode(Text) equals the golden ids
	TokensOK  bool // EncodeTokens(Text) equals the golden tokens
	DecodedOK bool // Decode(golden ids) equals the golden decoded string
	// Mismatch describes the first difference of each failing field, e.g.
	// "ids[3]: got 71 want 259 (len 44 vs 44)" (decoded[i] counts runes);
	// empty when all match.
	Mismatch string
}

// OK reports whether all three fields match.
func (r CaseResult) OK() bool { return r.IDsOK && r.TokensOK && r.DecodedOK }

type goldenFile struct {
	VocabSize *int `json:"vocab_size"`
	Cases     []struct {
		Text    string   `json:"text"`
		IDs     []int    `json:"ids"`
		Tokens  []string `json:"tokens"`
		Decoded string   `json:"decoded"`
	} `json:"cases"`
}

// CheckGolden loads dir/tokenizer.json and compares Encode, EncodeTokens and
// Decode with every case of dir/golden.json (ids without special tokens
// added; decoded keeps special tokens). The error is for files that cannot
// be loaded or a vocab_size that differs from VocabSize; per-case
// differences are in the results.
func CheckGolden(dir string) ([]CaseResult, error) {
	t, err := Load(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "golden.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer golden: %w", err)
	}
	var g goldenFile
	if err := json.Unmarshal(data, &g); err != nil {
		return nil, fmt.Errorf("tokenizer golden %s: %w", path, err)
	}
	if g.VocabSize != nil && *g.VocabSize != t.VocabSize() {
		return nil, fmt.Errorf("tokenizer golden %s: vocab_size %d, tokenizer has %d", path, *g.VocabSize, t.VocabSize())
	}
	res := make([]CaseResult, len(g.Cases))
	for i, c := range g.Cases {
		r := CaseResult{Text: c.Text}
		ids, toks := t.EncodeTokens(c.Text)
		var msgs []string
		if m := firstDiff("ids", ids, c.IDs, strconv.Itoa); m != "" {
			msgs = append(msgs, m)
		} else {
			r.IDsOK = true
		}
		if m := firstDiff("tokens", toks, c.Tokens, strconv.Quote); m != "" {
			msgs = append(msgs, m)
		} else {
			r.TokensOK = true
		}
		dec, err := t.Decode(c.IDs)
		switch {
		case err != nil:
			msgs = append(msgs, err.Error())
		case dec != c.Decoded:
			msgs = append(msgs, firstDiff("decoded", []rune(dec), []rune(c.Decoded), strconv.QuoteRune))
		default:
			r.DecodedOK = true
		}
		for j, m := range msgs {
			if j > 0 {
				r.Mismatch += "; "
			}
			r.Mismatch += m
		}
		res[i] = r
	}
	return res, nil
}

// firstDiff describes the first index where got and want differ, or returns
// "" if they are equal.
func firstDiff[T comparable](name string, got, want []T, show func(T) string) string {
	n := min(len(got), len(want))
	for i := 0; i < n; i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("%s[%d]: got %s want %s (len %d vs %d)", name, i, show(got[i]), show(want[i]), len(got), len(want))
		}
	}
	if len(got) == len(want) {
		return ""
	}
	return fmt.Sprintf("%s: length %d, want %d (first %d equal)", name, len(got), len(want), n)
}
