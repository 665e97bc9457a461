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

// slicePool recycles slices in power-of-two size classes, so a buffer
// returned after a large request is not handed out for a tiny one. Reuse
// matters beyond the allocator's work: a worker's heap is mostly expert
// weights, so the garbage collector runs rarely and a fresh buffer is
// usually memory the process has not touched yet, a page fault per 4 KiB
// (on the VMs measured, a decode-sized exchange's three 16 KiB buffers
// cost more than the round trip itself). Safe for concurrent use.
type slicePool[T any] struct {
	classes [48]sync.Pool // class k holds *[]T of capacity 1<<k
}

// f32Pool recycles float32 buffers (requests' rows and results).
type f32Pool = slicePool[float32]

// get returns a slice of length n (contents undefined).
func (p *slicePool[T]) get(n int) []T {
	if n == 0 {
		return nil
	}
	k := bits.Len(uint(n - 1))
	if v, ok := p.classes[k].Get().(*[]T); ok {
		return (*v)[:n]
	}
	return make([]T, n, 1<<k)
}

// put recycles b, which must come from get and no longer be referenced
// (including by gRPC: see RemoteExecutor.exchange).
func (p *slicePool[T]) put(b []T) {
	c := cap(b)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	b = b[:0]
	p.classes[bits.Len(uint(c-1))].Put(&b)
}

// lanePayloads recycles the payloads lanes read (see laneServer.held and
// laneClient.held).
var lanePayloads slicePool[byte]
