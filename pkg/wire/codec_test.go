package wire

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/apipb"
)

// rawAPI makes apipb.Method (string name = 1, string request_type_url = 2,
// ..., 7 fields) a RawMessage whose "payload" is field 2 — any bytes-typed
// wire field works since strings and bytes share the wire type.
type rawAPI struct {
	*apipb.Method
	payload []byte
}

func (r *rawAPI) RawPayloadField() protowire.Number { return 2 }
func (r *rawAPI) RawPayload() *[]byte               { return &r.payload }

func TestRawMessageRoundTripIsStandardProtobuf(t *testing.T) {
	payload := bytes.Repeat([]byte("tensor-bytes;"), 1000)
	in := &rawAPI{Method: &apipb.Method{Name: "dispatch", ResponseStreaming: true}, payload: payload}
	bs, err := Codec{}.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 || &bs[1].ReadOnlyData()[0] != &payload[0] {
		t.Fatalf("payload was copied or not sent as its own buffer (%d buffers)", len(bs))
	}
	wireBytes := bs.Materialize()

	// A plain protobuf decoder sees the payload in field 2.
	var plain apipb.Method
	if err := proto.Unmarshal(wireBytes, &plain); err != nil {
		t.Fatal(err)
	}
	if plain.Name != "dispatch" || !plain.ResponseStreaming || plain.RequestTypeUrl != string(payload) {
		t.Fatalf("standard decode got %+v", &plain)
	}

	out := &rawAPI{Method: &apipb.Method{}}
	if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(wireBytes)}, out); err != nil {
		t.Fatal(err)
	}
	if out.Name != "dispatch" || !out.ResponseStreaming || !bytes.Equal(out.payload, payload) || out.RequestTypeUrl != "" {
		t.Fatalf("raw decode got name=%q streaming=%v payload %d bytes url=%q", out.Name, out.ResponseStreaming, len(out.payload), out.RequestTypeUrl)
	}
}

func TestPlainMessagesUseProtobuf(t *testing.T) {
	in := &apipb.Method{Name: "health"}
	bs, err := Codec{}.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out apipb.Method
	if err := (Codec{}).Unmarshal(bs, &out); err != nil || out.Name != "health" {
		t.Fatalf("got %+v, %v", &out, err)
	}
}

func TestGarbageIsAnError(t *testing.T) {
	out := &rawAPI{Method: &apipb.Method{}}
	for _, b := range [][]byte{{0xff}, {0x12, 0x10, 'a'}, {0x0a, 0x80}} {
		if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, out); err == nil {
			t.Errorf("% x decoded without error", b)
		}
	}
	if _, err := (Codec{}).Marshal(42); err == nil {
		t.Error("marshaled a non-message")
	}
}

func FuzzUnmarshal(f *testing.F) {
	bs, _ := Codec{}.Marshal(&rawAPI{Method: &apipb.Method{Name: "x"}, payload: []byte{1, 2, 3}})
	f.Add(bs.Materialize())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		out := &rawAPI{Method: &apipb.Method{}}
		_ = Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, out)
	})
}
