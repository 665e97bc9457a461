package collective

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/switchyard/switchyard/pkg/allreduce"
	"github.com/switchyard/switchyard/pkg/auth"
)

// Defaults for the zero fields of Config.
const (
	// DefaultChunkBytes is the largest payload of one message: 1 MiB keeps
	// per-message overhead (headers, acks, a goroutine hand-off, about
	// 20-50 us of CPU) under 1% at 1-10 Gbit/s while a 64 MiB ring segment
	// still pipelines in 16 chunks.
	DefaultChunkBytes = 1 << 20
	// DefaultWindow is the number of chunks a member keeps in flight to one
	// peer (sent, not yet acknowledged). Two would hide one chunk's
	// turnaround; four also absorbs scheduling jitter on busy hosts.
	DefaultWindow = 4
	// DefaultOpTimeout bounds an operation whose context has no earlier
	// deadline: about 2 GiB of all-reduce at 1 Gbit/s.
	DefaultOpTimeout = 60 * time.Second
	// DefaultProbeTimeout is how long a timed-out operation waits for
	// peers to answer a ping before naming the ones that did not.
	DefaultProbeTimeout = 250 * time.Millisecond
	// DefaultAllToAllChunkBytes is the all-to-all chunk: with Window = 4
	// at most 1 MiB is in flight per member, about 8 ms at 1 Gbit/s, which
	// keeps a link busy but not much more (see AllToAll). Measured in the
	// emulated cluster (4 x 1 Gbit/s, 1 MiB per peer): 256 KiB chunks
	// 0.98-1.0 C, 1 MiB chunks 0.81-0.87 C.
	DefaultAllToAllChunkBytes = 256 << 10
	// DefaultLanePoll is Config.LanePoll's default: about two bare round
	// trips of the emulated links (scripts/bench-collectives.sh).
	DefaultLanePoll = 50 * time.Microsecond
	// DefaultIOBufferBytes is the gRPC read and write buffer of each
	// connection (gRPC's default is 32 KiB): larger buffers mean fewer
	// system calls per chunk.
	DefaultIOBufferBytes = 256 << 10
	// DefaultHandshakeTimeout is Config.HandshakeTimeout's default: a
	// member that connects sends its TLS handshake, first bytes and hello
	// at once, so only a stranger or a stopped process takes this long.
	DefaultHandshakeTimeout = 10 * time.Second
)

// Config configures one member of a Group. Zero fields take the defaults
// above; New validates the result and reports every problem.
type Config struct {
	// Group names the group and its epoch (e.g. "job-7/epoch-3"). Members
	// refuse streams that name another group, so members of a re-formed
	// group never mix with the old one. Required.
	Group string
	// Rank is this member's rank: 0 <= Rank < len(Peers).
	Rank int
	// Peers holds every member's address (host:port) by rank.
	// Peers[Rank] is this member's own advertised address (used in
	// messages; New serves on the listener it is given).
	Peers []string

	// ChunkBytes is the largest payload of one message, in bytes, in
	// [4 KiB, 16 MiB], a multiple of 4. Default DefaultChunkBytes.
	ChunkBytes int
	// Window is the number of chunks in flight per peer (all-reduce) or in
	// total (all-to-all), >= 2. Default DefaultWindow.
	Window int
	// AllToAllChunkBytes is the largest payload of one all-to-all message,
	// in bytes, in [4 KiB, ChunkBytes]. Default
	// min(DefaultAllToAllChunkBytes, ChunkBytes).
	AllToAllChunkBytes int

	// SmallBytes: AllReduce uses recursive doubling for buffers of at most
	// this many bytes (4 per element) and the ring above. Zero means
	// allreduce.DefaultSmallBytes; negative means always the ring.
	SmallBytes int
	// Algorithm forces an all-reduce algorithm; allreduce.Auto (zero)
	// chooses by size with SmallBytes.
	Algorithm allreduce.Algorithm
	// SmallOverGRPC sends the messages of the all-reduces run step by step
	// (one message per peer and step: recursive doubling or the tree within
	// one chunk, the ring while a member's share fits one chunk) over the
	// gRPC streams, as untracked copies, instead of the direct TCP lanes
	// (lane.go). A 4 KiB all-reduce of 4 members costs each
	// 21-23 us of CPU over lanes and 42-45 us over gRPC
	// (BenchmarkSmallAllReduceRunners, loopback); this switch exists to
	// compare the two. Every member must use the same setting (like
	// Algorithm): a mismatch fails the operation by its deadline. Default
	// false (lanes).
	SmallOverGRPC bool
	// LanePoll is how long a member waiting for a small all-reduce's
	// message on a lane keeps polling the socket (a non-blocking read,
	// then sched_yield so other processes on the core run) before it
	// sleeps in the netpoller. Polling skips the wake-up of a sleeping
	// thread, 10-20 us on a VM, at each step; the cost is at most LanePoll
	// of yielding CPU per wait. Linux only; negative disables. Default
	// DefaultLanePoll.
	LanePoll time.Duration
	// Format is the all-reduce wire format; zero means allreduce.F32.
	// allreduce.BF16 halves the traffic; sums are still formed in float32.
	Format allreduce.Format

	// OpTimeout bounds every operation: the earlier of now+OpTimeout and
	// the context's deadline applies. Default DefaultOpTimeout.
	OpTimeout time.Duration
	// ProbeTimeout is how long a failed operation pings the peers, so that
	// its error names the members that stopped answering. It is reserved
	// at the end of each operation's deadline, so a timed-out operation
	// returns by its deadline (at most ProbeTimeout after it on a host too
	// busy to run the operation's goroutines on time). Default
	// DefaultProbeTimeout.
	ProbeTimeout time.Duration

	// IOBufferBytes is the gRPC read and write buffer per connection.
	// Default DefaultIOBufferBytes.
	IOBufferBytes int
	// Dial opens a connection to a peer's address; nil means a plain TCP
	// net.Dialer. Tests use it to inject faults. With TLS it is the raw
	// connection underneath: the group runs the handshake over it.
	Dial func(ctx context.Context, addr string) (net.Conn, error)

	// TLS, when set, secures the group with mutual TLS 1.3 (see doc.go,
	// "Security"): every connection to this member's listener, gRPC or
	// lane, must present a certificate from TLS's CA naming one of
	// Identities, and a peer may speak only for the rank whose identity
	// its certificate names; this member dials rank r expecting
	// Identities[r]. Pass the process's credentials (auth.Load of its
	// --tls-* files). Nil means plaintext: anyone who can reach the
	// listener may join as any rank (trusted networks only).
	TLS *auth.Credentials
	// Identities holds every member's identity by rank, as its
	// certificate names it. Training ranks are workers: Identities[r] =
	// auth.Identity{Role: auth.RoleWorker, Name: <the worker ID the
	// scheduler assigned rank r>}, and Identities[Rank] must be TLS.Self.
	// Required with TLS (len(Identities) == len(Peers), no duplicates);
	// ignored without.
	Identities []auth.Identity
	// HandshakeTimeout bounds how long this member's listener waits for
	// a new connection's TLS handshake, its first bytes and, for a lane,
	// its hello; a connection that takes longer is closed. Each
	// connection waits in its own goroutine, so a slow one never holds up
	// others. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
}

// withDefaults returns c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.ChunkBytes == 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.AllToAllChunkBytes == 0 {
		c.AllToAllChunkBytes = min(DefaultAllToAllChunkBytes, c.ChunkBytes)
	}
	if c.SmallBytes == 0 {
		c.SmallBytes = allreduce.DefaultSmallBytes
	}
	if c.Format == 0 {
		c.Format = allreduce.F32
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.IOBufferBytes == 0 {
		c.IOBufferBytes = DefaultIOBufferBytes
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.LanePoll == 0 {
		c.LanePoll = DefaultLanePoll
	}
	if c.Dial == nil {
		var d net.Dialer
		c.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("collective: "+format, args...)) }
	if c.Group == "" {
		bad("Group is empty")
	}
	if len(c.Peers) == 0 {
		bad("Peers is empty")
	}
	if c.Rank < 0 || c.Rank >= len(c.Peers) {
		bad("Rank %d out of range [0, %d)", c.Rank, len(c.Peers))
	}
	for r, a := range c.Peers {
		if a == "" {
			bad("Peers[%d] is empty", r)
		}
	}
	if c.ChunkBytes < 4<<10 || c.ChunkBytes > 16<<20 || c.ChunkBytes%4 != 0 {
		bad("ChunkBytes = %d, want a multiple of 4 in [4 KiB, 16 MiB]", c.ChunkBytes)
	}
	if c.AllToAllChunkBytes < 4<<10 || c.AllToAllChunkBytes > c.ChunkBytes {
		bad("AllToAllChunkBytes = %d, want [4 KiB, ChunkBytes = %d]", c.AllToAllChunkBytes, c.ChunkBytes)
	}
	if c.Window < 2 {
		bad("Window = %d, want >= 2", c.Window)
	}
	if c.Algorithm > allreduce.Tree {
		bad("Algorithm = %v", c.Algorithm)
	}
	if c.Format != allreduce.F32 && c.Format != allreduce.BF16 {
		bad("Format = %v, want f32 or bf16", c.Format)
	}
	if c.OpTimeout < 0 || c.ProbeTimeout < 0 {
		bad("OpTimeout = %v, ProbeTimeout = %v, want >= 0", c.OpTimeout, c.ProbeTimeout)
	}
	if c.IOBufferBytes < 4<<10 {
		bad("IOBufferBytes = %d, want >= 4 KiB", c.IOBufferBytes)
	}
	if c.HandshakeTimeout < 0 {
		bad("HandshakeTimeout = %v, want >= 0", c.HandshakeTimeout)
	}
	if c.TLS != nil {
		errs = append(errs, c.validateIdentities()...)
	}
	return errors.Join(errs...)
}

// validateIdentities checks Identities against Peers and TLS.Self (TLS
// set).
func (c Config) validateIdentities() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("collective: "+format, args...)) }
	if len(c.Identities) != len(c.Peers) {
		bad("TLS needs Identities for every rank: %d Identities, %d Peers", len(c.Identities), len(c.Peers))
		return errs
	}
	rankOf := make(map[auth.Identity]int, len(c.Identities))
	for r, id := range c.Identities {
		if err := id.Validate(); err != nil {
			bad("Identities[%d] = %q: %v", r, id, err)
			continue
		}
		if s, dup := rankOf[id]; dup {
			bad("Identities[%d] = Identities[%d] = %s: each rank needs its own identity", s, r, id)
		}
		rankOf[id] = r
	}
	if c.Rank >= 0 && c.Rank < len(c.Identities) && c.Identities[c.Rank] != c.TLS.Self {
		bad("Identities[%d] = %s, but this member's certificate is %s", c.Rank, c.Identities[c.Rank], c.TLS.Self)
	}
	return errs
}
