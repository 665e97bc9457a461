// Package gguf reads and writes GGUF, the single-file model format of
// llama.cpp and ggml (version 3; version 2 files, which differ only in the
// version number, are read too). It is a pure format package: it knows
// nothing about model families; pkg/gguf/convert maps a Hugging Face
// checkpoint onto llama.cpp's tensor names and metadata keys.
//
// # Format
//
// All integers are little-endian.
//
//	uint32  magic "GGUF" (0x46554747)
//	uint32  version (3)
//	uint64  tensor count
//	uint64  metadata key/value count
//	        key/values:   string key, uint32 value type, value
//	        tensor infos: string name, uint32 n_dims, uint64 ne[n_dims],
//	                      uint32 ggml type, uint64 offset
//	        zero padding to the alignment
//	        tensor data, each tensor zero-padded to the alignment
//
// A string is a uint64 byte length and the bytes (UTF-8, no terminator). An
// array value is a uint32 element type, a uint64 count and the elements;
// arrays of arrays are not supported (llama.cpp writes none). The alignment
// is general.alignment (a uint32 power of two) when the file sets it, else
// DefaultAlignment (32 bytes).
//
// Tensor dimensions are listed innermost first, as ggml's ne: a row-major
// (numpy / PyTorch) array of shape [A, B, C] is ne = [C, B, A], so a
// [rows, cols] weight matrix is ne = [cols, rows] and llama.cpp's expert
// stack of shape [n_expert, n_ff, n_embd] is ne = [n_embd, n_ff, n_expert].
// A tensor's offset counts from the start of the data section; offsets are
// the running sum of the padded sizes of the tensors before it, in file
// order, exactly as ggml's gguf reader requires.
//
// # Tensor types
//
// Read accepts every ggml type of ggml's type-size table (it only needs
// sizes); encoding and decoding is implemented for F32, F16 (IEEE binary16,
// round to nearest even), BF16 (round to nearest even, NaN kept quiet, as
// ggml_compute_fp32_to_bf16) and Q8_0 (blocks of 32 values: a binary16
// scale d = max|x|/127 then 32 int8 codes round(x/d), rounded half away from
// zero, bit for bit as ggml's quantize_row_q8_0_ref). A quantized type needs
// ne[0] to be a multiple of its block size.
//
// # Contracts
//
//   - Writer streams: NewWriter writes the header from the metadata and the
//     tensor infos, then the data of each tensor is written in the declared
//     order through Write (in any number of pieces); the writer inserts the
//     padding. Close reports a tensor left short. Nothing is buffered beyond
//     what the caller passes.
//   - Read validates the whole header before returning: magic, version,
//     counts and lengths against the bytes left in the file (so a lying
//     length costs an error, not memory), duplicate keys and tensor names,
//     value and tensor types, 1 to 4 dimensions without overflow, block
//     divisibility, offsets as ggml expects them and every tensor inside the
//     file. Every failure wraps ErrCorrupt and names the byte offset; it
//     never panics on any input (FuzzRead checks this).
package gguf
