package model

import (
	"github.com/switchyard/switchyard/pkg/safetensors"
)

// fileSource adapts one safetensors file to Source.
type fileSource struct{ f *safetensors.File }

func (s fileSource) Info(name string) (string, []int, bool) {
	ti, err := s.f.Info(name)
	if err != nil {
		return "", nil, false
	}
	return string(ti.DType), ti.Shape, true
}
func (s fileSource) Float32(name string) ([]float32, error) { return s.f.Float32(name) }
func (s fileSource) BF16(name string) ([]uint16, error)     { return s.f.BF16(name) }
func (s fileSource) File(name string) string                { return s.f.Path() }
