package transport

import (
	"encoding/binary"
	"math/bits"
	"sync"
	"unsafe"
)

// bigEndian reports a big-endian host: tensors travel little-endian, so such
// hosts swap bytes in place after receiving and before sending.
var bigEndian = binary.NativeEndian.Uint16([]byte{0, 1}) == 1

// asBytes views v's memory as bytes (no copy). The bytes are the host's
// representation: little-endian on the machines Switchyard runs on, see
// toWire/fromWire.
func asBytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), len(v)*4)
}

// toWire converts v in place from host to wire (little-endian) byte order;
// fromWire is its inverse. Both are no-ops on little-endian hosts.
func toWire(v []float32) {
	if bigEndian {
		swap32(v)
	}
}

func fromWire(v []float32) {
	if bigEndian {
		swap32(v)
	}
}

func swap32(v []float32) {
	b := asBytes(v)
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
}

// f32Pool recycles float32 buffers in power-of-two size classes, so a
// buffer returned after a large request is not handed out for a tiny one.
// Safe for concurrent use.
type f32Pool struct {
	classes [48]sync.Pool // class k holds *[]float32 of capacity 1<<k
}

// get returns a buffer of length n (contents undefined).
func (p *f32Pool) get(n int) []float32 {
	if n == 0 {
		return nil
	}
	k := bits.Len(uint(n - 1))
	if v, ok := p.classes[k].Get().(*[]float32); ok {
		return (*v)[:n]
	}
	return make([]float32, n, 1<<k)
}

// put recycles b, which must come from get and no longer be referenced
// (including by gRPC: see RemoteExecutor.exchange).
func (p *f32Pool) put(b []float32) {
	c := cap(b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	b = b[:0]
	p.classes[bits.Len(uint(c-1))].Put(&b)
}
