// Package tokenizer runs Hugging Face byte-level BPE tokenizers (GPT-2,
// GPT-NeoX/OLMoE, Qwen2/Qwen3, Llama-3, DeepSeek-V3) from their
// tokenizer.json, producing exactly the ids, tokens and text of the
// `tokenizers` library. DeepSeek-V2's pre-tokenizer regexes are not among
// the supported ones; loading it fails with ErrUnsupported.
//
// # Pipeline
//
// Encode(text) is tokenizers' encode(text, add_special_tokens=False):
//
//  1. Added tokens with normalized=false are cut out of the raw text: the
//     leftmost match wins, the longest among those starting at the same byte,
//     with single_word, lstrip and rstrip applied as tokenizers'
//     AddedVocabulary::find_matches does.
//  2. Every other piece is normalized (none, NFC, NFD, NFKC, NFKD, or a
//     Sequence of them) and the added tokens with normalized=true are cut
//     out of it, matched by their normalized content.
//  3. Each remaining piece goes through the pre-tokenizers in order: Split
//     (behavior Isolated, with a literal string or one of the regexes
//     PatternGPT2, PatternQwen2, PatternLlama3, PatternDigits3,
//     PatternDeepSeekCJK, PatternDeepSeekMain), Digits, and finally ByteLevel
//     (add_prefix_space prepends " " to every piece not starting with one;
//     use_regex splits with PatternGPT2).
//  4. Each pre-token's bytes become GPT-2 byte symbols and are merged by
//     merge rank (lowest first, leftmost on ties); ignore_merges, unk_token
//     and fuse_unk behave as in tokenizers. Results are cached per pre-token.
//
// Decode maps every token through the ByteLevel decoder (code points back to
// bytes; a token with any code point outside the byte table, such as an added
// token containing a space, contributes its own UTF-8) and converts the bytes
// as Rust's String::from_utf8_lossy does: one U+FFFD per maximal ill-formed
// subsequence. Added tokens go through the same decoder, bug included: an
// added token "đem" decodes to "\x11em" because đ is the byte-table code
// point of 0x11 (huggingface/tokenizers issues #1392, #1915, #1996).
//
// # Contracts
//
//   - Loading is strict: anything not implemented (WordPiece, Unigram,
//     byte_fallback, dropout, other normalizers, pre-tokenizers or decoders,
//     a Split regex without a matcher, Split behaviors other than Isolated)
//     is an error naming the file and the feature, wrapping ErrUnsupported.
//     The post-processor, truncation and padding are ignored: Encode adds no
//     special tokens and never truncates.
//   - Round trip: for valid UTF-8 s, Decode(Encode(s)) == normalize(s), so s
//     itself when there is no normalizer, provided the vocabulary has all
//     256 byte symbols (every real byte-level vocabulary does; a missing one
//     becomes unk_token, or is dropped as tokenizers drops it). Encode also
//     accepts invalid UTF-8, which Python callers of tokenizers cannot pass:
//     each invalid byte is a one-byte "symbol" character, and
//     DecodeBytes(Encode(s)) returns the bytes of s unchanged while Decode
//     returns them repaired as from_utf8_lossy would.
//   - Decode returns an error wrapping ErrUnknownID for an id outside
//     [0, VocabSize) or without a token; tokenizers would silently skip it.
//   - StreamDecoder: the concatenation of every Step result and Flush equals
//     Decode of the same ids; Step holds back only a trailing incomplete
//     UTF-8 sequence (at most 3 bytes).
//   - Special returns BOS/EOS/PAD/UNK ids, -1 where unknown. LoadDir takes
//     them from tokenizer_config.json; otherwise UNK is model.unk_token, BOS
//     and EOS come from a TemplateProcessing post-processor (special tokens
//     before $A are BOS, after it EOS), and failing that from well-known
//     special contents (<|begin_of_text|>, <s>, <bos>, ... for BOS;
//     <|end_of_text|>, </s>, <eos>, <|endoftext|>, ... for EOS).
//   - A Tokenizer is safe for concurrent use; a StreamDecoder is not.
//
// # Training and writing
//
// Train (TrainDocs for a corpus of documents) learns a byte-level BPE from
// text as tokenizers' BpeTrainer does, with Qwen2's layout: no normalizer,
// Split(PatternQwen2 by default, Isolated) then ByteLevel without prefix
// space or regex, ByteLevel post-processor and decoder. Ids: the special
// tokens 0..S-1 (TrainConfig.SpecialTokens, in order), the 256 byte symbols
// S..S+255 in code-point order ("!" first), then one id per merge. Each
// step merges the most frequent adjacent pair over all pre-tokens, ties to
// the smallest (left id, right id), until TrainConfig.VocabSize ids or no
// pair occurs MinFrequency times; the result depends on nothing but the
// text and the config, and on the book in testdata it equals the merges of
// tokenizers' own trainer. Pair counts are updated incrementally from the
// words a merge touches, with a lazy max-heap: 4096 ids on 570 KB of text
// take about 0.1 s.
//
// Marshal writes any Tokenizer as tokenizer.json in tokenizers' key order
// and pretty format (for a file tokenizers wrote, the same bytes), keeping
// what Encode ignores (truncation, padding, post_processor) as loaded; Save
// writes it atomically. Load(Save(t)) encodes and decodes as t does.
//
// Character classes (\s, \p{L}, \p{N}, ...) come from Go's unicode tables,
// which can differ from the Oniguruma build inside a tokenizers release only
// for code points assigned by a newer Unicode version than either has.
package tokenizer
