// Package collective runs collective operations (all-reduce, all-to-all)
// among the members of a group over gRPC: the thin runner around the pure
// schedules of pkg/allreduce.
//
// Every member serves the Collective service (proto/switchyard/v1/
// collective.proto) and, after Connect, holds one persistent Exchange
// stream to every other member: data flows from the dialing member to the
// serving one, acknowledgements flow back. All tensor traffic uses
// pkg/wire's codec, so payloads are sent by reference (a float32 buffer
// goes on the wire without being copied) and arrive in one copy.
//
// All-reduces whose every step sends one message per peer (recursive
// doubling or the tree within one chunk; the ring while each member's
// share of the buffer fits one chunk, up to n x ChunkBytes) travel
// instead on a direct lane to every peer, one step at a time: a plain TCP
// connection opened by Connect on the same listener (the first bytes tell
// a lane from gRPC's HTTP/2 preface), one write(2) per message, read
// straight from the socket by the waiting operation. A lane costs less
// than half of gRPC's CPU per message, which is most of a small
// operation's latency on hosts that run several members per core, and
// it needs no acknowledgements: a ring of one chunk a step runs at the
// link's rate on the lanes where the pipelined gRPC runner lost up to a
// third of it (see lane.go; Config.SmallOverGRPC switches the lanes off
// for comparison). Only the ring of several chunks a step, which
// pipelines them within the window below, uses the gRPC streams.
//
// Flow control and buffer ownership: a member keeps at most
// Config.Window chunks (of at most Config.ChunkBytes) unacknowledged per
// peer; the destination acknowledges a chunk once it has taken it off the
// wire into a queue of the same length, so a slow consumer holds back the
// source and memory stays bounded. A payload is referenced (by gRPC's
// writer) until its acknowledgement: F32 ring chunks point into the
// caller's buffer, which the schedule leaves untouched until then; other
// chunks are packed into pooled buffers returned to the pool on
// acknowledgement. An operation returns only when every chunk it sent has
// been acknowledged, so the caller may reuse its buffers at once.
//
// Failure: every operation has a deadline (Config.OpTimeout or the
// context's, whichever is earlier). An operation that times out pings its
// peers for Config.ProbeTimeout (reserved at the end of the deadline) and
// returns an *OpError naming the peer it was waiting for and the peers
// that did not answer; a peer whose stream breaks fails the operation at
// once. Either way the operation tears its streams down (so a stuck send
// cannot hang it, and peers fail fast too) and the Group is broken: form a
// new one, as training steps do (docs/ARCHITECTURE.md, "Failure model").
//
// Security: with Config.TLS every connection to a member's listener, gRPC
// or lane, is mutual TLS 1.3 with a certificate from the cluster's CA
// (pkg/auth) naming one of Config.Identities; plaintext connections and
// other certificates fail the handshake. A hello, which claims a source
// rank, is accepted only from the identity of that rank, so a member cannot
// speak for another, and a member dials rank r expecting Identities[r].
// Lanes then read and write through crypto/tls (no raw system calls, no
// polling; see tls.go). Without TLS anyone who reaches the listener may
// join as any rank: plaintext is for trusted networks only.
//
// Usage, on every member:
//
//	lis, _ := net.Listen("tcp", ":7070")
//	g, err := collective.New(collective.Config{Group: "job-1/epoch-0", Rank: r, Peers: addrs,
//		TLS: creds, Identities: ids}, lis) // ids[r]: worker/<rank r's worker ID>; nil TLS: plaintext
//	...
//	defer g.Close()
//	if err := g.Connect(ctx); err != nil { ... }
//	if err := g.AllReduce(ctx, grads); err != nil { ... } // grads: []float32, same length everywhere
//	recv, err := g.AllToAll(ctx, blocks, recv)            // blocks[s] goes to member s
package collective
