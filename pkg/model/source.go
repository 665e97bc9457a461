package model

import (
	"fmt"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

// readerSource adapts a safetensors.Reader (one file or a model folder) to Source.
type readerSource struct {
	r    safetensors.Reader
	name string // fallback file name for messages
}

// NewSource adapts a safetensors reader to Source.
func NewSource(r safetensors.Reader, name string) Source { return readerSource{r, name} }

func (s readerSource) Info(name string) (string, []int, bool) {
	ti, err := s.r.Info(name)
	if err != nil {
		return "", nil, false
	}
	return string(ti.DType), ti.Shape, true
}
func (s readerSource) Float32(name string) ([]float32, error) { return s.r.Float32(name) }
func (s readerSource) BF16(name string) ([]uint16, error)     { return s.r.BF16(name) }
func (s readerSource) File(name string) string {
	if ti, err := s.r.Info(name); err == nil && ti.File != "" {
		return ti.File
	}
	return s.name
}

// Checkpoint is an opened model folder: its config and its weights, read
// lazily (only the tensors a Load asks for are read from disk).
type Checkpoint struct {
	Dir    string
	Config *Config
	Quant  *QuantConfig // config.json's quantization_config; nil if unquantized
	Set    *safetensors.Set
	Source Source // dequantizes FP8 weights as they are read when Quant is set
}

// Open reads dir/config.json and opens the folder's safetensors (single file
// or sharded with model.safetensors.index.json) without reading weights.
// An FP8 block-quantized checkpoint (see QuantConfig) gets a Source that
// dequantizes each weight when it is read.
func Open(dir string) (*Checkpoint, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	q, err := LoadQuantConfig(dir)
	if err != nil {
		return nil, err
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	src := NewSource(set, dir)
	if q != nil {
		src = NewFP8Source(src, q)
	}
	return &Checkpoint{Dir: dir, Config: cfg, Quant: q, Set: set, Source: src}, nil
}

// Close releases the open files.
func (c *Checkpoint) Close() error { return c.Set.Close() }

// Load loads the checkpoint's model (see the package-level Load).
func (c *Checkpoint) Load(opts LoadOptions) (*Model, error) {
	m, _, err := Load(c.Config, c.Source, opts)
	return m, err
}
