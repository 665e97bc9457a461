package allreduce

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// Format is the encoding of float32 data on the wire. Reduction always
// happens in float32.
type Format uint8

const (
	// F32 sends little-endian float32, 4 bytes per element; lossless.
	F32 Format = iota + 1
	// BF16 sends bfloat16 (round to nearest even, tensor.F32ToBF16One),
	// 2 bytes per element: half the traffic, about 3 significant decimal
	// digits per hop.
	BF16
)

func (f Format) String() string {
	switch f {
	case F32:
		return "f32"
	case BF16:
		return "bf16"
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// Size returns the bytes per element on the wire.
func (f Format) Size() int {
	if f == BF16 {
		return 2
	}
	return 4
}

// Lossless reports whether values survive the wire unchanged.
func (f Format) Lossless() bool { return f != BF16 }

// Round returns x as it arrives after one trip over the wire.
func (f Format) Round(x float32) float32 {
	if f == BF16 {
		return math.Float32frombits(uint32(tensor.F32ToBF16One(x)) << 16)
	}
	return x
}

// Pack encodes src into dst (len(dst) == f.Size()*len(src)). With round,
// src is overwritten with the values as the receiver will decode them.
func (f Format) Pack(dst []byte, src []float32, round bool) {
	switch f {
	case F32:
		dst = dst[:4*len(src)]
		if HostLittleEndian {
			copy(dst, AsBytes(src))
			return
		}
		for i, x := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(x))
		}
	case BF16:
		dst = dst[:2*len(src)]
		for i, x := range src {
			h := tensor.F32ToBF16One(x)
			binary.LittleEndian.PutUint16(dst[2*i:], h)
			if round {
				src[i] = math.Float32frombits(uint32(h) << 16)
			}
		}
	default:
		panic(fmt.Sprintf("allreduce: Pack with %v", f))
	}
}

// Apply decodes payload (f.Size()*len(dst) bytes, any alignment) and adds
// it into dst (Reduce) or stores it there (Copy). A payload of the wrong
// length is an error (it came from the network).
func (f Format) Apply(dst []float32, payload []byte, op Op) error {
	if len(payload) != f.Size()*len(dst) {
		return fmt.Errorf("payload of %d bytes for %d %v elements", len(payload), len(dst), f)
	}
	switch {
	case f == F32 && op == Reduce && HostLittleEndian && len(dst) > 0 && uintptr(unsafe.Pointer(&payload[0]))%4 == 0:
		src := unsafe.Slice((*float32)(unsafe.Pointer(&payload[0])), len(dst))
		for i, x := range src {
			dst[i] += x
		}
	case f == F32 && op == Reduce:
		for i := range dst {
			dst[i] += math.Float32frombits(binary.LittleEndian.Uint32(payload[4*i:]))
		}
	case f == F32 && op == Copy && HostLittleEndian:
		copy(AsBytes(dst), payload)
	case f == F32 && op == Copy:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(payload[4*i:]))
		}
	case f == BF16 && op == Reduce:
		for i := range dst {
			dst[i] += math.Float32frombits(uint32(binary.LittleEndian.Uint16(payload[2*i:])) << 16)
		}
	case f == BF16 && op == Copy:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(payload[2*i:])) << 16)
		}
	default:
		return fmt.Errorf("apply %v with format %v", op, f)
	}
	return nil
}

// AsBytes returns the memory of x as bytes (no copy). On a little-endian
// host these are x's F32 wire bytes.
func AsBytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x))
}

// HostLittleEndian reports whether AsBytes yields F32 wire bytes. Runners
// send float32 buffers by reference only when it holds.
var HostLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()
