// Regenerates hf_bpetrainer_opticks.txt with Hugging Face tokenizers' own
// BpeTrainer (npm package "tokenizers", the Rust library's Node bindings):
//
//   npm install tokenizers@0.23.2
//   node hf_bpetrainer.js ../../../testdata/text/opticks.txt hf_bpetrainer_opticks.txt
//
// The tokenizer is Qwen2's pre-tokenization (Split regex, Isolated, then
// ByteLevel without prefix space or regex) around an empty BPE model.
// Tokenizer.train(files) uses BpeTrainer's defaults (vocab_size 30000,
// min_frequency 0, no special tokens, alphabet: the characters seen) and
// feeds the file line by line, each line with its "\n". Output: a header,
// the SHA-256 of all merges as "a b\n" lines, then the first 1000 merges.
const fs = require('fs');
const os = require('os');
const path = require('path');
const crypto = require('crypto');
const { Tokenizer } = require('tokenizers');

const bl = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
const cfg = {
  version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
  pre_tokenizer: { type: 'Sequence', pretokenizers: [
    { type: 'Split', pattern: { Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" }, behavior: 'Isolated', invert: false },
    bl] },
  post_processor: bl, decoder: bl,
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
    fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab: {}, merges: [] },
};
const tok = Tokenizer.fromString(JSON.stringify(cfg));
tok.train([process.argv[2]]);
const out = path.join(os.tmpdir(), 'hf_bpetrainer_out.json');
tok.save(out, false);
const merges = JSON.parse(fs.readFileSync(out, 'utf8')).model.merges.map((m) => m.join(' '));
const all = merges.map((m) => m + '\n').join('');
fs.writeFileSync(process.argv[3], [
  '# merges learned by tokenizers 0.23.2 BpeTrainer (defaults) from opticks.txt, line by line; see hf_bpetrainer.js',
  `count ${merges.length}`,
  `sha256 ${crypto.createHash('sha256').update(all, 'utf8').digest('hex')}`,
  ...merges.slice(0, 1000),
].join('\n') + '\n');
