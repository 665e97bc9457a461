package model

import (
	"fmt"
	"math"
	"slices"
)

// mapSource is an in-memory Source: tensors by hub name, stored either as
// float32 or as bfloat16 bits (what a bf16 checkpoint on the hub holds).
type mapSource struct {
	t map[string]*mapTensor
}

type mapTensor struct {
	dtype string // "F32" or "BF16"
	shape []int
	f32   []float32 // F32 data
	bf16  []uint16  // BF16 bits
}

func newMapSource() *mapSource { return &mapSource{t: map[string]*mapTensor{}} }

// put stores v under name, as BF16 (rounded to nearest even) if bf16.
func (s *mapSource) put(name string, shape []int, v []float32, bf16 bool) {
	mt := &mapTensor{dtype: "F32", shape: slices.Clone(shape)}
	if bf16 {
		mt.dtype = "BF16"
		mt.bf16 = make([]uint16, len(v))
		for i, x := range v {
			mt.bf16[i] = roundBF16(x)
		}
	} else {
		mt.f32 = slices.Clone(v)
	}
	s.t[name] = mt
}

func (s *mapSource) Info(name string) (string, []int, bool) {
	mt, ok := s.t[name]
	if !ok {
		return "", nil, false
	}
	return mt.dtype, slices.Clone(mt.shape), true
}

func (s *mapSource) Float32(name string) ([]float32, error) {
	mt, ok := s.t[name]
	if !ok {
		return nil, fmt.Errorf("mapSource: no tensor %q", name)
	}
	if mt.dtype == "F32" {
		return slices.Clone(mt.f32), nil
	}
	out := make([]float32, len(mt.bf16))
	for i, h := range mt.bf16 {
		out[i] = math.Float32frombits(uint32(h) << 16)
	}
	return out, nil
}

func (s *mapSource) BF16(name string) ([]uint16, error) {
	mt, ok := s.t[name]
	if !ok {
		return nil, fmt.Errorf("mapSource: no tensor %q", name)
	}
	if mt.dtype != "BF16" {
		return nil, fmt.Errorf("mapSource: tensor %q is %s, not BF16", name, mt.dtype)
	}
	return slices.Clone(mt.bf16), nil
}

func (s *mapSource) File(name string) string { return "memory" }

// roundBF16 rounds a finite float32 to bfloat16 bits, nearest even.
func roundBF16(f float32) uint16 {
	b := math.Float32bits(f)
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
