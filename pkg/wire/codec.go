// Package wire is the gRPC codec Switchyard uses for tensor traffic.
//
// Tensor messages are ordinary protobuf messages with one `bytes` field
// holding the raw little-endian payload. Encoding them with the protobuf
// library would copy the payload into a fresh buffer on every send and
// again on every receive. This codec (an encoding.CodecV2) writes the other
// fields with protobuf and then appends the payload field by reference, so
// sends do not copy the payload; receives materialize gRPC's buffers once
// into one slice and alias the payload into it. Because sends are by
// reference, a sender must not reuse a payload buffer until the message is
// known to be consumed (see Marshal). The bytes on the wire
// are standard protobuf, so any protobuf client can read and write them.
//
// A message opts in by implementing RawMessage. Every other message is
// encoded by the standard protobuf codec. Install the codec on both ends
// with grpc.ForceServerCodecV2(wire.Codec{}) and
// grpc.WithDefaultCallOptions(grpc.ForceCodecV2(wire.Codec{})).
package wire

import (
	"fmt"
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Name is the codec's registered content-subtype. It is "proto" so peers
// without this codec still interoperate (the wire format is protobuf).
const Name = "proto"

// RawMessage is a protobuf message carrying a raw payload in a bytes field.
// The payload field must be a singular `bytes` field; its number is returned
// by RawPayloadField. RawPayload returns a pointer to the generated field so
// the codec can read and set it.
type RawMessage interface {
	proto.Message
	RawPayloadField() protowire.Number
	RawPayload() *[]byte
}

// Codec implements encoding.CodecV2.
type Codec struct{}

// Name implements encoding.CodecV2.
func (Codec) Name() string { return Name }

var marshalOpts = proto.MarshalOptions{Deterministic: false}

// Marshal implements encoding.CodecV2.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("wire: cannot marshal %T: not a protobuf message", v)
	}
	rm, raw := m.(RawMessage)
	if !raw {
		b, err := marshalOpts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	p := rm.RawPayload()
	payload := *p
	*p = nil
	head, err := marshalOpts.Marshal(m)
	*p = payload
	if err != nil {
		return nil, err
	}
	if len(payload) == 0 {
		return mem.BufferSlice{mem.SliceBuffer(head)}, nil
	}
	head = protowire.AppendTag(head, rm.RawPayloadField(), protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(len(payload)))
	// The payload buffer is referenced, not copied. grpc-go queues it for
	// its writer goroutine, which may still be reading it after SendMsg
	// returns: the caller must not modify or reuse the buffer until it
	// knows the message has been consumed (e.g. the peer answered).
	return mem.BufferSlice{mem.SliceBuffer(head), mem.SliceBuffer(payload)}, nil
}

// Unmarshal implements encoding.CodecV2.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("wire: cannot unmarshal into %T: not a protobuf message", v)
	}
	rm, raw := m.(RawMessage)
	if !raw {
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		return proto.Unmarshal(buf.ReadOnlyData(), m)
	}
	// One copy: gRPC's receive buffers into a slice the message owns (the
	// payload aliases it).
	b := make([]byte, data.Len())
	data.CopyTo(b)
	return unmarshalRaw(b, rm)
}

// unmarshalRaw decodes b into m, aliasing the payload field into b and
// decoding every other field with protobuf.
func unmarshalRaw(b []byte, m RawMessage) error {
	field := m.RawPayloadField()
	var payload []byte
	found := false
	var rest []byte // every non-payload field (small: the header)
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return fmt.Errorf("wire: bad field tag at byte %d: %w", off, protowire.ParseError(n))
		}
		vlen := protowire.ConsumeFieldValue(num, typ, b[off+n:])
		if vlen < 0 {
			return fmt.Errorf("wire: bad field %d at byte %d: %w", num, off, protowire.ParseError(vlen))
		}
		if num == field && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b[off+n:])
			if m < 0 {
				return fmt.Errorf("wire: bad payload field: %w", protowire.ParseError(m))
			}
			payload, found = v, true
		} else {
			rest = append(rest, b[off:off+n+vlen]...)
		}
		off += n + vlen
	}
	if err := proto.Unmarshal(rest, m); err != nil {
		return err
	}
	if found {
		*m.RawPayload() = payload
	}
	return nil
}

// BufferPool recycles payload buffers of at least a given size. It is a
// thin typed wrapper over sync.Pool for callers that build payloads.
type BufferPool struct{ p sync.Pool }

// Get returns a buffer of length n (contents undefined).
func (bp *BufferPool) Get(n int) []byte {
	if v, ok := bp.p.Get().(*[]byte); ok && cap(*v) >= n {
		return (*v)[:n]
	}
	return make([]byte, n)
}

// Put returns a buffer to the pool.
func (bp *BufferPool) Put(b []byte) {
	b = b[:0]
	bp.p.Put(&b)
}
