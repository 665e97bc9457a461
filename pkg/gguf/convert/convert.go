package convert

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/switchyard/switchyard/pkg/gguf"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// ErrUnsupported is wrapped by errors about checkpoints that llama.cpp could
// load but would not compute as the checkpoint's model does, or could not
// load at all.
var ErrUnsupported = errors.New("not exportable to llama.cpp")

// OutType is the --outtype of convert_hf_to_gguf.py: the type of the weight
// matrices.
type OutType string

const (
	OutF32  OutType = "f32"
	OutF16  OutType = "f16"
	OutBF16 OutType = "bf16"
	OutQ8_0 OutType = "q8_0"
	// OutAuto picks bf16 if the first matrix of the checkpoint is BF16, else
	// f16 (the converter's --outtype auto).
	OutAuto OutType = "auto"
)

// ParseOutType accepts f32, f16, bf16, q8_0 and auto (any case).
func ParseOutType(s string) (OutType, error) {
	switch t := OutType(strings.ToLower(s)); t {
	case OutF32, OutF16, OutBF16, OutQ8_0, OutAuto:
		return t, nil
	}
	return "", fmt.Errorf("unknown outtype %q (want f32, f16, bf16, q8_0 or auto)", s)
}

// fileType is general.file_type (llama_ftype) and the matrix type of each
// concrete OutType.
var fileTypes = map[OutType]struct {
	ftype uint32
	typ   gguf.GGMLType
}{
	OutF32:  {0, gguf.F32},
	OutF16:  {1, gguf.F16},
	OutBF16: {32, gguf.BF16},
	OutQ8_0: {7, gguf.Q8_0},
}

// Config selects what Build writes.
type Config struct {
	// OutType is the type of the weight matrices. Zero value: OutF16, the
	// converter's default.
	OutType OutType
	// Name is general.name (the converter uses the model folder's name).
	// Empty: not written.
	Name string
}

// Input is what a checkpoint folder provides.
type Input struct {
	// Config is the normalized config.json (model.LoadConfig).
	Config *model.Config
	// ConfigJSON is config.json as read: the converter writes some keys only
	// when present, and takes special token ids from it.
	ConfigJSON []byte
	// Weights reads the checkpoint's tensors by hub name.
	Weights model.Source
	// Vocab is the tokenizer; nil writes tokenizer.ggml.model "none".
	Vocab *Vocab
}

// Vocab is a folder's tokenizer files.
type Vocab struct {
	// Tokenizer is tokenizer.json loaded by pkg/tokenizer, which accepts only
	// the byte-level BPE tokenizers it runs exactly.
	Tokenizer *tokenizer.Tokenizer
	// JSON is tokenizer.json as read (merges in file order, pre-tokenizer).
	JSON []byte
	// ConfigJSON is tokenizer_config.json, or nil.
	ConfigJSON []byte
}

// Plan is a complete GGUF file description: its metadata and tensor infos,
// and how to compute each tensor's data from the checkpoint.
type Plan struct {
	Arch    string
	OutType OutType // resolved (never auto)
	KV      []gguf.KV
	Tensors []gguf.TensorInfo
	// Notes are things the user should know (fallbacks, ignored settings).
	Notes []string

	src []source // parallel to Tensors
	in  Input
}

// Build plans the export of in. It reads no tensor data (only dtypes and
// shapes, to check them against the config) and fails, with every problem
// listed, if the checkpoint cannot be exported faithfully.
func Build(in Input, cfg Config) (*Plan, error) {
	c := in.Config
	if c == nil || in.Weights == nil {
		return nil, errors.New("convert: Input needs Config and Weights")
	}
	arch, ok := archOf[c.Family]
	if !ok {
		return nil, fmt.Errorf("convert: model_type %q: %w", c.Family, ErrUnsupported)
	}
	raw, err := parseRaw(in.ConfigJSON)
	if err != nil {
		return nil, err
	}
	p := &Plan{Arch: arch, in: in}
	if p.Notes, err = check(c); err != nil {
		return nil, err
	}
	if p.OutType, err = resolveOutType(cfg.OutType, c, in.Weights); err != nil {
		return nil, err
	}
	if err := p.planTensors(); err != nil {
		return nil, err
	}
	kv := &kvList{arch: arch}
	kv.add("general.architecture", gguf.String(arch))
	kv.add("general.type", gguf.String("model"))
	if cfg.Name != "" {
		kv.add("general.name", gguf.String(cfg.Name))
	}
	hyperparams(kv, c, raw, fileTypes[p.OutType].ftype)
	kv.add("general.quantization_version", gguf.Uint32(2))
	if in.Vocab == nil {
		kv.add("tokenizer.ggml.model", gguf.String("none"))
	} else {
		notes, err := vocab(kv, in.Vocab, c, raw)
		if err != nil {
			return nil, err
		}
		p.Notes = append(p.Notes, notes...)
	}
	p.KV = kv.list
	return p, nil
}

func resolveOutType(t OutType, c *model.Config, w model.Source) (OutType, error) {
	switch t {
	case "":
		return OutF16, nil
	case OutAuto:
		for _, s := range c.Tensors() {
			if len(s.Shape) < 2 {
				continue
			}
			if dt, _, ok := w.Info(s.Name); ok && dt == "BF16" {
				return OutBF16, nil
			}
			return OutF16, nil
		}
		return OutF16, nil
	}
	if _, ok := fileTypes[t]; !ok {
		return "", fmt.Errorf("convert: unknown OutType %q", t)
	}
	return t, nil
}

// Write streams the file to w: the header, then each tensor computed from
// the checkpoint, one tensor (one expert of a stack) in memory at a time.
// progress, if not nil, is called after each tensor.
func (p *Plan) Write(w io.Writer, progress func(done int, t gguf.TensorInfo)) error {
	gw, err := gguf.NewWriter(w, p.KV, p.Tensors)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	var buf []byte
	for i, t := range p.Tensors {
		err := p.src[i].produce(p.in.Weights, func(x []float32) error {
			n, err := gguf.EncodedSize(t.Type, len(x))
			if err != nil {
				return err
			}
			if cap(buf) < n {
				buf = make([]byte, n)
			}
			if err := gguf.Encode(t.Type, buf[:n], x); err != nil {
				return err
			}
			_, err = gw.Write(buf[:n])
			return err
		})
		if err != nil {
			return fmt.Errorf("convert: tensor %s: %w", t.Name, err)
		}
		if cur, ok := gw.Current(); ok && cur.Name == t.Name {
			return fmt.Errorf("convert: tensor %s: produced too few values", t.Name)
		}
		if progress != nil {
			progress(i+1, t)
		}
	}
	if err := gw.Close(); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}

// rawConfig is config.json's top level and its RoPE object, for the keys
// the converter writes only when present.
type rawConfig struct {
	top, rope map[string]json.RawMessage
}

func parseRaw(data []byte) (*rawConfig, error) {
	r := &rawConfig{top: map[string]json.RawMessage{}, rope: map[string]json.RawMessage{}}
	if data == nil {
		return r, nil
	}
	if err := json.Unmarshal(data, &r.top); err != nil {
		return nil, fmt.Errorf("convert: config.json: %w", err)
	}
	for _, k := range []string{"rope_parameters", "rope_scaling"} {
		if r.has(k) {
			if err := json.Unmarshal(r.top[k], &r.rope); err != nil {
				return nil, fmt.Errorf("convert: config.json %s: %w", k, err)
			}
			break
		}
	}
	return r, nil
}

// has reports whether config.json sets key to something other than null.
func (r *rawConfig) has(key string) bool {
	v, ok := r.top[key]
	return ok && string(v) != "null"
}

// ropeHas reports whether the RoPE object sets key.
func (r *rawConfig) ropeHas(key string) bool {
	v, ok := r.rope[key]
	return ok && string(v) != "null"
}

// ropeFloat returns a number of the RoPE object.
func (r *rawConfig) ropeFloat(key string) (float64, bool) {
	var f float64
	if !r.ropeHas(key) || json.Unmarshal(r.rope[key], &f) != nil {
		return 0, false
	}
	return f, true
}

// int returns a top-level integer (ok false when absent, null or not a
// number).
func (r *rawConfig) int(key string) (int, bool) {
	var f float64
	if !r.has(key) || json.Unmarshal(r.top[key], &f) != nil || f != float64(int(f)) {
		return 0, false
	}
	return int(f), true
}

// kvList accumulates metadata in order; a repeated key overwrites the value
// in place, as GGUFWriter.add_key_value does.
type kvList struct {
	arch string
	list []gguf.KV
}

func (l *kvList) add(key string, v gguf.Value) {
	key = strings.ReplaceAll(key, "{arch}", l.arch)
	for i := range l.list {
		if l.list[i].Key == key {
			l.list[i].Value = v
			return
		}
	}
	l.list = append(l.list, gguf.KV{Key: key, Value: v})
}
