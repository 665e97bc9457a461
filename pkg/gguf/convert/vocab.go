package convert

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/switchyard/switchyard/pkg/gguf"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// Token types (gguf-py's TokenType).
const (
	TokenNormal      = 1
	TokenUnknown     = 2
	TokenControl     = 3
	TokenUserDefined = 4
	TokenUnused      = 5
	TokenByte        = 6
)

// specialTypes are SpecialVocab's special token types that GGUFWriter has a
// key for (cls has none and is skipped there too).
var specialTypes = []struct{ typ, key string }{
	{"bos", "tokenizer.ggml.bos_token_id"},
	{"eos", "tokenizer.ggml.eos_token_id"},
	{"unk", "tokenizer.ggml.unknown_token_id"},
	{"sep", "tokenizer.ggml.seperator_token_id"}, // sic, as gguf-py spells it
	{"pad", "tokenizer.ggml.padding_token_id"},
	{"mask", "tokenizer.ggml.mask_token_id"},
}

// tokJSON is the part of tokenizer.json the vocabulary needs beyond what
// pkg/tokenizer exposes.
type tokJSON struct {
	Model struct {
		Merges []json.RawMessage `json:"merges"`
	} `json:"model"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Normalizer   json.RawMessage `json:"normalizer"`
}

// vocab writes the tokenizer keys as TextModel._set_vocab_gpt2 does and
// returns notes for the user.
func vocab(kv *kvList, v *Vocab, c *model.Config, raw *rawConfig) ([]string, error) {
	t := v.Tokenizer
	var tj tokJSON
	if err := json.Unmarshal(v.JSON, &tj); err != nil {
		return nil, fmt.Errorf("convert: tokenizer.json: %w", err)
	}
	if t.VocabSize() > c.Vocab {
		return nil, fmt.Errorf("convert: tokenizer.json has ids up to %d, beyond the model's vocab_size %d", t.VocabSize()-1, c.Vocab)
	}
	pre, err := PreTokenizer(tj.PreTokenizer)
	if err != nil {
		return nil, err
	}
	var notes []string
	if len(tj.Normalizer) > 0 && string(tj.Normalizer) != "null" {
		notes = append(notes, "tokenizer.json has a normalizer, which llama.cpp's gpt2 vocabulary does not apply (as with the converter)")
	}
	added := map[int]tokenizer.AddedToken{}
	for _, a := range t.AddedTokens() {
		added[a.ID] = a
	}
	tokens := make([]string, c.Vocab)
	types := make([]int32, c.Vocab)
	for id := range tokens {
		tok, ok := t.IDToToken(id)
		switch a, isAdded := added[id]; {
		case !ok:
			tokens[id], types[id] = fmt.Sprintf("[PAD%d]", id), TokenUnused
		case isAdded && (a.Special || looksSpecial(tok)):
			tokens[id], types[id] = tok, TokenControl
		case isAdded:
			// Pre-normalize user-defined spaces as the converter does.
			tokens[id], types[id] = strings.ReplaceAll(tok, "\u2581", " "), TokenUserDefined
		default:
			tokens[id], types[id] = tok, TokenNormal
		}
	}
	merges, err := mergeStrings(tj.Model.Merges)
	if err != nil {
		return nil, err
	}
	kv.add("tokenizer.ggml.model", gguf.String("gpt2"))
	kv.add("tokenizer.ggml.pre", gguf.String(pre))
	kv.add("tokenizer.ggml.tokens", gguf.Array(tokens))
	kv.add("tokenizer.ggml.token_type", gguf.Array(types))
	if len(merges) > 0 {
		kv.add("tokenizer.ggml.merges", gguf.Array(merges))
	}
	ids, adds, tmpl, err := specialVocab(v, raw)
	if err != nil {
		return nil, err
	}
	for _, s := range specialTypes {
		if id, ok := ids[s.typ]; ok {
			kv.add(s.key, gguf.Uint32(uint32(id)))
		}
	}
	for _, typ := range []string{"bos", "eos", "sep"} {
		if b, ok := adds[typ]; ok {
			kv.add("tokenizer.ggml.add_"+typ+"_token", gguf.Bool(b))
		}
	}
	if tmpl != "" {
		kv.add("tokenizer.chat_template", gguf.String(tmpl))
	}
	return notes, nil
}

// looksSpecial is TextModel.does_token_look_special.
func looksSpecial(s string) bool {
	switch s {
	case "<pad>", "<mask>", "<2mass>", "[@BOS@]":
		return true
	}
	return strings.HasPrefix(s, "<|") && strings.HasSuffix(s, "|>") ||
		strings.HasPrefix(s, "<｜") && strings.HasSuffix(s, "｜>") ||
		strings.HasPrefix(s, "<unused") && strings.HasSuffix(s, ">")
}

// mergeStrings renders tokenizer.json's merges as SpecialVocab does: "a b"
// strings are kept; [a, b] pairs are joined by a space, with spaces inside
// a or b written as U+0120.
func mergeStrings(raw []json.RawMessage) ([]string, error) {
	out := make([]string, len(raw))
	for i, m := range raw {
		var s string
		if json.Unmarshal(m, &s) == nil {
			out[i] = s
			continue
		}
		var pair []string
		if err := json.Unmarshal(m, &pair); err != nil || len(pair) != 2 {
			return nil, fmt.Errorf("convert: tokenizer.json merge %d is neither \"a b\" nor [a, b]", i)
		}
		sp := strings.NewReplacer(" ", "\u0120")
		out[i] = sp.Replace(pair[0]) + " " + sp.Replace(pair[1])
	}
	return out, nil
}

// specialVocab is gguf-py's SpecialVocab for a gpt2 vocabulary: the ids of
// the special token types (from tokenizer_config.json's *_token looked up
// among tokenizer.json's added tokens, then config.json's *_token_id), the
// add_*_token flags and the chat template of tokenizer_config.json.
// TemplateProcessing post-processors, which SpecialVocab also inspects, are
// not.
func specialVocab(v *Vocab, raw *rawConfig) (ids map[string]int, adds map[string]bool, tmpl string, err error) {
	ids, adds = map[string]int{}, map[string]bool{}
	var cfg map[string]json.RawMessage
	if v.ConfigJSON != nil {
		if err := json.Unmarshal(v.ConfigJSON, &cfg); err != nil {
			return nil, nil, "", fmt.Errorf("convert: tokenizer_config.json: %w", err)
		}
	}
	added := map[string]int{}
	for _, a := range v.Tokenizer.AddedTokens() {
		if _, dup := added[a.Content]; !dup { // the first match, as SpecialVocab
			added[a.Content] = a.ID
		}
	}
	for _, s := range append(specialTypes, struct{ typ, key string }{"cls", ""}) {
		if b, ok := cfg["add_"+s.typ+"_token"]; ok {
			var flag bool
			if json.Unmarshal(b, &flag) == nil {
				adds[s.typ] = flag
			}
		}
		content, ok := tokenContent(cfg[s.typ+"_token"])
		if !ok {
			continue
		}
		if id, ok := added[content]; ok {
			ids[s.typ] = id
		}
	}
	for _, s := range specialTypes {
		if _, done := ids[s.typ]; done {
			continue
		}
		if id, ok := raw.int(s.typ + "_token_id"); ok {
			if id < 0 {
				return nil, nil, "", fmt.Errorf("convert: config.json %s_token_id = %d", s.typ, id)
			}
			ids[s.typ] = id
		}
	}
	if b, ok := cfg["chat_template"]; ok {
		var s string
		if json.Unmarshal(b, &s) == nil {
			tmpl = s
		}
	}
	return ids, adds, tmpl, nil
}

// tokenContent reads a tokenizer_config.json *_token entry: a string or an
// object with a string content.
func tokenContent(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil && obj.Content != nil {
		return *obj.Content, true
	}
	return "", false
}

// ErrPreTokenizer is wrapped when tokenizer.json's pre-tokenizer is none of
// the ones PreTokenizer names.
var ErrPreTokenizer = errors.New("pre-tokenizer has no llama.cpp name")

// preStep is one pre-tokenizer of tokenizer.json.
type preStep struct {
	Type          string            `json:"type"`
	PreTokenizers []json.RawMessage `json:"pretokenizers"`
	UseRegex      *bool             `json:"use_regex"`
	AddPrefix     *bool             `json:"add_prefix_space"`
	Pattern       struct {
		Regex *string `json:"Regex"`
	} `json:"pattern"`
}

// PreTokenizer names tokenizer.json's pre-tokenizer as llama.cpp's
// tokenizer.ggml.pre, by its structure:
//
//	ByteLevel (GPT-2 regex, no prefix space)                   "gpt-2"
//	Split(Qwen2 regex) + ByteLevel (no regex)                  "qwen2"
//	Split(Llama-3 regex) + ByteLevel (no regex)                "llama-bpe"
//	Split(digits) + Split(CJK) + Split(DeepSeek-V3) + ByteLevel "deepseek-v3"
//
// The converter instead hashes the ids of a test string, which names the
// same pre-tokenizers for the released tokenizers of these families (GPT-2,
// GPT-NeoX/OLMoE, Qwen1.5-3, Llama-3 and DeepSeek-V3; llama.cpp gives
// "gpt-2" and OLMoE's "olmo" the same regex). Anything else is an error
// wrapping ErrPreTokenizer.
func PreTokenizer(raw json.RawMessage) (string, error) {
	var steps []preStep
	var flatten func(json.RawMessage) error
	flatten = func(r json.RawMessage) error {
		var s preStep
		if err := json.Unmarshal(r, &s); err != nil {
			return err
		}
		if s.Type == "Sequence" {
			for _, sub := range s.PreTokenizers {
				if err := flatten(sub); err != nil {
					return err
				}
			}
			return nil
		}
		steps = append(steps, s)
		return nil
	}
	if len(raw) == 0 || string(raw) == "null" {
		return "", fmt.Errorf("convert: tokenizer.json has no pre_tokenizer: %w", ErrPreTokenizer)
	}
	if err := flatten(raw); err != nil {
		return "", fmt.Errorf("convert: tokenizer.json pre_tokenizer: %w", err)
	}
	var sig []string
	for _, s := range steps {
		switch s.Type {
		case "ByteLevel":
			regex := s.UseRegex == nil || *s.UseRegex
			prefix := s.AddPrefix == nil || *s.AddPrefix
			sig = append(sig, fmt.Sprintf("ByteLevel(regex=%v,prefix=%v)", regex, prefix))
		case "Split":
			pat := ""
			if s.Pattern.Regex != nil {
				pat = strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(*s.Pattern.Regex)
			}
			switch pat {
			case tokenizer.PatternQwen2:
				sig = append(sig, "Split(qwen2)")
			case tokenizer.PatternLlama3:
				sig = append(sig, "Split(llama3)")
			case tokenizer.PatternDigits3:
				sig = append(sig, "Split(digits3)")
			case tokenizer.PatternDeepSeekCJK:
				sig = append(sig, "Split(cjk)")
			case tokenizer.PatternDeepSeekMain:
				sig = append(sig, "Split(deepseek)")
			default:
				sig = append(sig, "Split(?)")
			}
		default:
			sig = append(sig, s.Type)
		}
	}
	known := map[string]string{
		"ByteLevel(regex=true,prefix=false)":                                            "gpt-2",
		"Split(qwen2) ByteLevel(regex=false,prefix=false)":                              "qwen2",
		"Split(llama3) ByteLevel(regex=false,prefix=false)":                             "llama-bpe",
		"Split(digits3) Split(cjk) Split(deepseek) ByteLevel(regex=false,prefix=false)": "deepseek-v3",
	}
	key := strings.Join(sig, " ")
	if pre, ok := known[key]; ok {
		return pre, nil
	}
	return "", fmt.Errorf("convert: tokenizer.json pre_tokenizer [%s]: %w", key, ErrPreTokenizer)
}
