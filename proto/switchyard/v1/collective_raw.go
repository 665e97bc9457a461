package switchyardv1

import "google.golang.org/protobuf/encoding/protowire"

// collectiveChunkPayloadField is CollectiveChunk.payload's field number in
// collective.proto.
const collectiveChunkPayloadField protowire.Number = 15

// RawPayloadField implements wire.RawMessage: the number of the bytes field
// that pkg/wire's codec sends by reference.
func (x *CollectiveChunk) RawPayloadField() protowire.Number { return collectiveChunkPayloadField }

// RawPayload implements wire.RawMessage.
func (x *CollectiveChunk) RawPayload() *[]byte { return &x.Payload }
