package switchyardv1

import "google.golang.org/protobuf/encoding/protowire"

// expertFramePayloadField is ExpertFrame.payload's field number in
// worker.proto.
const expertFramePayloadField protowire.Number = 15

// RawPayloadField implements wire.RawMessage: the number of the bytes field
// that pkg/wire's codec sends by reference.
func (x *ExpertFrame) RawPayloadField() protowire.Number { return expertFramePayloadField }

// RawPayload implements wire.RawMessage.
func (x *ExpertFrame) RawPayload() *[]byte { return &x.Payload }
