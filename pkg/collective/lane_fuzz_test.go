package collective

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// FuzzLaneHeader: parseLaneHeader accepts exactly the headers with no
// unknown flags, a payload-less goodbye or a payload within the limit,
// and what it accepts re-encodes to the same bytes. Seeds sit at the
// edges of the 32-bit fields and of int64 limits.
func FuzzLaneHeader(f *testing.F) {
	le := binary.LittleEndian
	header := func(payload uint32, flags uint32, m *pb.CollectiveChunk) []byte {
		h := make([]byte, laneHeader)
		putLaneHeader(h, 0, m, flags)
		le.PutUint32(h, payload)
		return h
	}
	full := &pb.CollectiveChunk{Step: math.MaxUint32, Op: math.MaxUint64, Offset: math.MaxUint64, Total: math.MaxUint64, Format: math.MaxInt32}
	for _, s := range []struct {
		payload, flags uint32
		max            int64
	}{
		{4, 0, 1 << 10}, {0, laneBye, 0}, {1, laneBye, 1 << 10},
		{math.MaxUint32, 0, math.MaxInt64}, {math.MaxUint32, 0, math.MaxUint32}, {math.MaxUint32, 0, math.MaxUint32 - 1},
		{1 << 31, 0, math.MaxInt32}, {math.MaxInt32, 0, math.MaxInt32}, {1, 0, -1}, {0, 0, math.MinInt64},
		{0, math.MaxUint32, 1 << 10}, {0, 2, 1 << 10}, {0, laneBye | 1<<31, 1 << 10},
	} {
		f.Add(header(s.payload, s.flags, full), s.max)
		f.Add(header(s.payload, s.flags, &pb.CollectiveChunk{}), s.max)
	}
	f.Add([]byte{}, int64(laneMaxPayload))
	f.Fuzz(func(t *testing.T, data []byte, maxPayload int64) {
		if int64(int(maxPayload)) != maxPayload {
			t.Skip("limit does not fit an int here")
		}
		hdr := make([]byte, laneHeader)
		copy(hdr, data)
		n, flags := le.Uint32(hdr[0:]), le.Uint32(hdr[36:])
		m, size, bye, err := parseLaneHeader(hdr, int(maxPayload))
		wantErr := flags&^laneBye != 0 || (flags == laneBye && n != 0) || (flags == 0 && int64(n) > maxPayload)
		if (err != nil) != wantErr {
			t.Fatalf("payload %d, flags %#x, limit %d: err = %v, want an error: %v", n, flags, maxPayload, err, wantErr)
		}
		switch {
		case err != nil:
			if m != nil || bye {
				t.Fatalf("error %v with a chunk or goodbye", err)
			}
		case bye:
			if m != nil || size != 0 || flags != laneBye {
				t.Fatalf("goodbye with chunk %v, size %d, flags %#x", m, size, flags)
			}
		default:
			if size < 0 || int64(size) > maxPayload || uint64(size) != uint64(n) {
				t.Fatalf("size %d for payload field %d, limit %d", size, n, maxPayload)
			}
			again := make([]byte, laneHeader)
			putLaneHeader(again, size, m, 0)
			if !bytes.Equal(again, hdr) {
				t.Fatalf("re-encoded header differs:\n%x\n%x", again, hdr)
			}
		}
	})
}

// FuzzLaneHello: a lane opening's hello as serveLane reads it
// (readLaneMsg, then parseLaneHello: proto.Unmarshal and checkHello), with
// and without TLS and from several peers. readLaneMsg takes exactly the
// well-formed length prefixes; an accepted hello names this group,
// protocol, size and rank and a valid source rank other than this one,
// whose identity, with TLS, is the connection's. Seeds carry sizes and
// ranks near 2^32 (which a 32-bit int would wrap).
func FuzzLaneHello(f *testing.F) {
	const n, rank = 4, 1
	ca, err := auth.NewCA("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	ids := []auth.Identity{worker(1), worker(2), worker(3), worker(4)}
	creds, err := ca.Credentials(ids[rank])
	if err != nil {
		f.Fatal(err)
	}
	// The connection's peer, by the fuzzer's choice: a member, a
	// non-member or nobody (plaintext).
	peers := append(append([]auth.Identity(nil), ids...), worker(9), auth.Identity{})
	group := func(secure bool) *Group {
		cfg := Config{Group: "job-7/epoch-3", Rank: rank, Peers: []string{"a:1", "b:1", "c:1", "d:1"}, Identities: ids}
		if secure {
			cfg.TLS = creds
		}
		return &Group{cfg: cfg, n: n, rank: rank}
	}
	plain, secure := group(false), group(true)

	msg := func(b []byte) []byte {
		var out bytes.Buffer
		if err := writeLaneMsg(&out, b); err != nil {
			f.Fatal(err)
		}
		return out.Bytes()
	}
	hello := func(edit func(h *pb.CollectiveHello)) []byte {
		h := &pb.CollectiveHello{Group: "job-7/epoch-3", SourceRank: 0, DestRank: rank, Size: n, Protocol: cluster.ProtocolVersion, Window: 4}
		edit(h)
		b, err := proto.Marshal(h)
		if err != nil {
			f.Fatal(err)
		}
		return msg(b)
	}
	for src := range uint32(n) {
		f.Add(hello(func(h *pb.CollectiveHello) { h.SourceRank = src }), true, uint8(src))
		f.Add(hello(func(h *pb.CollectiveHello) { h.SourceRank = src }), false, uint8(src))
	}
	for _, v := range []uint32{math.MaxUint32, math.MaxUint32 - 2, 1 << 31, math.MaxInt32, n} {
		f.Add(hello(func(h *pb.CollectiveHello) { h.SourceRank = v }), true, uint8(0))
		f.Add(hello(func(h *pb.CollectiveHello) { h.SourceRank = v }), false, uint8(0))
		f.Add(hello(func(h *pb.CollectiveHello) { h.DestRank = v }), false, uint8(0))
		f.Add(hello(func(h *pb.CollectiveHello) { h.Size = v }), false, uint8(0))
		f.Add(hello(func(h *pb.CollectiveHello) { h.Window = v }), true, uint8(0))
	}
	f.Add(hello(func(h *pb.CollectiveHello) { h.SourceRank, h.Size = math.MaxUint32, math.MaxUint32 }), false, uint8(0))
	for _, size := range []uint32{0, 1, laneHelloMax, laneHelloMax + 1, math.MaxInt32, 1 << 31, math.MaxUint32} {
		b := binary.LittleEndian.AppendUint32(nil, size)
		f.Add(b, false, uint8(0))
		f.Add(append(b, 0x08, 0x01), true, uint8(0))
	}
	f.Add([]byte{1, 0}, false, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, tlsOn bool, p uint8) {
		raw, err := readLaneMsg(bytes.NewReader(data))
		var size uint32
		if len(data) >= 4 {
			size = binary.LittleEndian.Uint32(data)
		}
		if ok := len(data) >= 4 && size <= laneHelloMax && uint64(len(data)-4) >= uint64(size); (err == nil) != ok {
			t.Fatalf("readLaneMsg of %d bytes (prefix %d): %v", len(data), size, err)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(raw, data[4:4+size]) {
			t.Fatalf("readLaneMsg returned %d bytes, not the %d after the prefix", len(raw), size)
		}
		g, peer := plain, peers[int(p)%len(peers)]
		if tlsOn {
			g = secure
		}
		h, err := g.parseLaneHello(raw, peer)
		if err != nil {
			if h != nil {
				t.Fatalf("refused hello returned: %v", err)
			}
			if errors.Is(err, errPeerIdentity) && (!tlsOn || peer == ids[int(parsedSource(raw))%n]) {
				t.Fatalf("identity refusal %q for peer %s, TLS %v", err, peer, tlsOn)
			}
			return
		}
		switch {
		case h.Group != g.cfg.Group, h.Protocol != cluster.ProtocolVersion, h.Size != n, h.DestRank != rank:
			t.Fatalf("accepted a hello for another group, protocol, size or rank: %v", h)
		case h.SourceRank >= n || h.SourceRank == rank:
			t.Fatalf("accepted source rank %d of %d (this member is %d)", h.SourceRank, n, rank)
		case tlsOn && peer != ids[h.SourceRank]:
			t.Fatalf("accepted rank %d's hello (%s) from %s", h.SourceRank, ids[h.SourceRank], peer)
		}
		if !tlsOn { // no identity: the peer does not matter
			if _, err := g.parseLaneHello(raw, worker(9)); err != nil {
				t.Fatalf("plaintext hello accepted from %s, refused from worker/w9: %v", peer, err)
			}
		}
	})
}

// parsedSource is a hello's source rank (0 if it does not decode).
func parsedSource(raw []byte) uint32 {
	h := &pb.CollectiveHello{}
	_ = proto.Unmarshal(raw, h)
	return h.SourceRank
}
