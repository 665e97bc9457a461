// Package safetensors reads and writes the safetensors format that Hugging
// Face checkpoints use, and model folders made of several such files.
//
// # Format
//
// A file is
//
//	[8 bytes]  N, the header length in bytes, little-endian uint64
//	[N bytes]  JSON header, UTF-8, possibly padded at the end with spaces
//	[rest]     data buffer
//
// The header is an object mapping each tensor name to
// {"dtype": "F32", "shape": [4, 4], "data_offsets": [begin, end]}, plus an
// optional "__metadata__" object of string to string. Offsets are in bytes,
// relative to the start of the data buffer; end is exclusive. Data is
// little-endian and row-major (C order). The tensors must tile the data
// buffer exactly: no holes, no overlaps, nothing after the last tensor.
//
// # Reading
//
// Open (one file) and OpenDir (a model folder: sharded with
// model.safetensors.index.json, a single model.safetensors, or loose
// *.safetensors files) return a *File and a *Set, which both implement
// Reader. Opening reads only the 8-byte length and the header, and
// validates the header completely: header length within the file and at
// most MaxHeaderSize, valid UTF-8 JSON with no duplicate keys (which
// encoding/json would silently accept), known dtypes, non-negative shapes
// whose byte size fits in int64 and equals end-begin, offsets inside the
// data buffer, and the exact tiling above. No allocation is sized by the
// header before it has been checked against the file size, so a lying
// header costs an error, not memory.
//
// Tensor data is read later, one tensor at a time, with ReadAt (pread) on
// the open file: a process that owns a few experts of a model larger than
// its memory reads only those. A Set opens each shard on first use. Reads
// are safe from many goroutines at once. Accessors either return a new
// slice the caller owns (Float32, BF16, Int64, Raw) or fill a slice the
// caller provides (ReadFloat32, ReadBF16, ReadInt64, ReadRaw), optionally
// checking the tensor's shape.
//
// # Writing
//
// Write produces the same bytes as the reference implementation for the
// same tensors and metadata (tensors ordered by decreasing dtype alignment,
// then name; header padded with spaces to 8 bytes; metadata keys, which the
// reference leaves in hash order, sorted), written
// atomically: temporary file, fsync, rename, fsync of the folder.
// WriteSharded splits a checkpoint into model-0000i-of-0000n.safetensors
// files plus model.safetensors.index.json. Encode writes the same bytes to
// any io.Writer.
//
// # Errors
//
// Every failure is an *Error (or, where several problems are reported at
// once, as by Write's validation and Set.Verify, an errors.Join of them)
// whose message names the file (and the tensor, where there is one), e.g.
//
//	safetensors: model-00002-of-00003.safetensors: tensor "model.layers.3.mlp.gate.weight": data_offsets [10,20] hold 10 bytes, shape [4,4] F32 needs 64
//
// and which matches one of the sentinels ErrCorrupt, ErrNotFound, ErrDType,
// ErrShape or ErrInvalid with errors.Is, as well as any underlying I/O
// error (fs.ErrNotExist, ...). Malformed input never panics.
package safetensors
