package collective

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/pkg/allreduce"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/wire"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// worker is the identity of worker w<i>.
func worker(i int) auth.Identity {
	return auth.Identity{Role: auth.RoleWorker, Name: fmt.Sprintf("w%d", i)}
}

// secured is an in-process group on 127.0.0.1 with plain listeners and
// the default dialer (so connections are *net.TCPConn underneath, where
// the lanes' raw system calls would apply): rank r is worker w<r+1>, with
// a certificate from ca when ca is set, plaintext otherwise.
type secured struct {
	*members
	ca    *auth.CA // nil: plaintext
	ids   []auth.Identity
	addrs []string
}

func mustCA(t testing.TB, name string) *auth.CA {
	t.Helper()
	ca, err := auth.NewCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustCreds(t testing.TB, ca *auth.CA, id auth.Identity) *auth.Credentials {
	t.Helper()
	c, err := ca.Credentials(id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newSecured starts n members (cfg applied to each) without connecting
// them; connect does.
func newSecured(t testing.TB, n int, ca *auth.CA, cfg func(*Config)) *secured {
	t.Helper()
	s := &secured{members: &members{groups: make([]*Group, n), nets: make([]*faultNet, n)}, ca: ca}
	liss := make([]net.Listener, n)
	for r := range n {
		liss[r] = mustListen(t)
		s.addrs = append(s.addrs, liss[r].Addr().String())
		s.ids = append(s.ids, worker(r+1))
		s.nets[r] = newFaultNet() // unused: members.close resumes them
	}
	for r := range n {
		conf := Config{Group: t.Name(), Rank: r, Peers: s.addrs}
		if ca != nil {
			conf.TLS, conf.Identities = mustCreds(t, ca, s.ids[r]), s.ids
		}
		if cfg != nil {
			cfg(&conf)
		}
		g, err := New(conf, liss[r])
		if err != nil {
			t.Fatal(err)
		}
		s.groups[r] = g
	}
	t.Cleanup(s.close)
	return s
}

func (s *secured) connect(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s.each(t, func(r int, g *Group) error { return g.Connect(ctx) })
}

// grpcClient dials addr like a member does, with creds.
func grpcClient(t *testing.T, addr string, creds credentials.TransportCredentials) pb.CollectiveClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(wire.Codec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewCollectiveClient(conn)
}

// laneHello writes a lane opening (magic, length-prefixed hello) on conn
// and returns the answer: "" when accepted, the reason when refused, or
// the error when the connection gave none.
func laneHello(conn net.Conn, h *pb.CollectiveHello) (string, error) {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := proto.Marshal(h)
	if err != nil {
		return "", err
	}
	if _, err := io.WriteString(conn, laneMagic); err != nil {
		return "", err
	}
	if err := writeLaneMsg(conn, b); err != nil {
		return "", err
	}
	answer, err := readLaneMsg(conn)
	return string(answer), err
}

// runOps runs, on every member, a small all-reduce (lanes), a medium
// ring (lanes while a share fits one chunk, frames above laneMaxPayload
// written beside the reads), a large one (the pipelined gRPC ring where
// ChunkBytes is smaller than a share) of random values and an all-to-all
// of tagged blocks, and returns each member's results.
func runOps(t *testing.T, c *members) (small, medium, large [][]float32, blocks [][][]byte) {
	t.Helper()
	n := len(c.groups)
	rng := rand.New(rand.NewSource(1))
	input := func(L int) [][]float32 {
		x := make([][]float32, n)
		for r := range x {
			x[r] = make([]float32, L)
			for i := range x[r] {
				x[r][i] = float32(rng.NormFloat64())
			}
		}
		return x
	}
	small, medium, large = input(1000), input(40_000), input(300_000) // 4 KB, 160 KB and 1.2 MB
	blocks = make([][][]byte, n)
	size := func(r, s int) int { return 1 + (r*7+s*3)%5*3000 }
	c.each(t, func(r int, g *Group) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := g.AllReduce(ctx, small[r]); err != nil {
			return fmt.Errorf("small all-reduce: %w", err)
		}
		if err := g.AllReduce(ctx, medium[r]); err != nil {
			return fmt.Errorf("medium all-reduce: %w", err)
		}
		if err := g.AllReduce(ctx, large[r]); err != nil {
			return fmt.Errorf("large all-reduce: %w", err)
		}
		send := make([][]byte, n)
		for s := range n {
			send[s] = blockTag(r, s, size(r, s))
		}
		var err error
		if blocks[r], err = g.AllToAll(ctx, send, nil); err != nil {
			return fmt.Errorf("all-to-all: %w", err)
		}
		for s := range n {
			if want := blockTag(s, r, size(s, r)); string(blocks[r][s]) != string(want) {
				return fmt.Errorf("all-to-all: block from %d: %d bytes, want %d (tagged %d->%d)", s, len(blocks[r][s]), len(want), s, r)
			}
		}
		return nil
	})
	return small, medium, large, blocks
}

// TestTLSOperationsMatchPlaintext: a group with mutual TLS runs small
// all-reduces and rings of one chunk a step (64 KiB chunks here) on its
// lanes and larger rings on gRPC, and all-to-all, with
// results bit for bit those of the same group in plaintext; its lanes are
// TLS connections that never use the raw socket calls (the polling read
// included: LanePoll keeps its default), and it shuts down gracefully.
func TestTLSOperationsMatchPlaintext(t *testing.T) {
	checkLeaks(t)
	const n = 4
	cfg := func(c *Config) { c.ChunkBytes = 64 << 10 }
	plain := newSecured(t, n, nil, cfg)
	plain.connect(t)
	wantSmall, wantMedium, wantLarge, wantBlocks := runOps(t, plain.members)
	plain.close()

	s := newSecured(t, n, mustCA(t, "test"), cfg)
	s.connect(t)
	for _, g := range s.groups {
		for r := range n {
			if r == g.rank {
				continue
			}
			if lo := g.lanes[r]; lo.raw {
				t.Errorf("rank %d -> %d: raw writes on a TLS lane", g.rank, r)
			}
			if _, ok := g.lanes[r].conn.(*tls.Conn); !ok {
				t.Errorf("rank %d -> %d: lane is a %T, want *tls.Conn", g.rank, r, g.lanes[r].conn)
			}
		}
	}
	g0, l0 := s.delivered()
	small, medium, large, blocks := runOps(t, s.members)
	g1, l1 := s.delivered()
	if l1 == l0 {
		t.Errorf("no lane traffic: gRPC delivered %d, lanes %d", g1-g0, l1-l0)
	}
	for _, g := range s.groups {
		for r := range n {
			if r == g.rank {
				continue
			}
			if l := g.lin[r]; l.rc != nil {
				t.Errorf("rank %d <- %d: raw reads on a TLS lane", g.rank, r)
			}
			if _, ok := g.lin[r].conn.(*tls.Conn); !ok {
				t.Errorf("rank %d <- %d: lane is a %T, want *tls.Conn", g.rank, r, g.lin[r].conn)
			}
		}
	}
	same := func(what string, got, want [][]float32) {
		for r := range got {
			for i := range got[r] {
				if math.Float32bits(got[r][i]) != math.Float32bits(want[r][i]) {
					t.Fatalf("%s: rank %d element %d = %v with TLS, %v in plaintext", what, r, i, got[r][i], want[r][i])
				}
			}
		}
	}
	same("small all-reduce", small, wantSmall)
	same("medium all-reduce", medium, wantMedium)
	same("large all-reduce", large, wantLarge)
	for r := range blocks {
		for q := range blocks[r] {
			if string(blocks[r][q]) != string(wantBlocks[r][q]) {
				t.Fatalf("all-to-all: rank %d's block from %d differs from plaintext", r, q)
			}
		}
	}
	if _, err := s.groups[1].Ping(context.Background(), 0); err != nil {
		t.Errorf("ping between members: %v", err)
	}
	s.each(t, func(r int, g *Group) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return g.Shutdown(ctx)
	})
}

// otherCAClient is a TLS client configuration with a certificate for
// id from another CA; it does not check the server, so only the
// server's check can stop it.
func otherCAClient(t *testing.T, id auth.Identity) *tls.Config {
	t.Helper()
	certPEM, keyPEM, err := mustCA(t, "other").Issue(id, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}
}

// TestTLSRefusesOtherCA: a peer whose certificate (naming a member,
// worker w2) comes from another CA gets no lane and no gRPC call, and
// neither does a certificate of the right CA for a worker outside the
// group; the members carry on.
func TestTLSRefusesOtherCA(t *testing.T) {
	checkLeaks(t)
	s := newSecured(t, 3, mustCA(t, "test"), nil)
	s.connect(t)
	for name, conf := range map[string]*tls.Config{
		"other CA":   otherCAClient(t, s.ids[1]),
		"non-member": mustCreds(t, s.ca, worker(9)).ClientConfig(auth.Is(s.ids[0])),
	} {
		conn, err := tls.Dial("tcp", s.addrs[0], conf)
		if err == nil { // TLS 1.3: the server judges the client after the client's handshake returns
			t.Cleanup(func() { conn.Close() })
			var answer string
			answer, err = laneHello(conn, s.groups[1].hello(0))
			if err == nil {
				t.Errorf("%s: lane answered %q", name, answer)
			}
		}
		t.Logf("%s: lane: %v", name, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = grpcClient(t, s.addrs[0], credentials.NewTLS(conf)).Ping(ctx, &pb.CollectivePing{Nonce: 1})
		cancel()
		if err == nil {
			t.Errorf("%s: ping answered", name)
		}
		t.Logf("%s: ping: %v", name, err)
	}
	runOps(t, s.members)
}

// TestTLSIdentityBinding: worker w2, a member holding a valid
// certificate, claims to be rank 0 (worker w1) towards rank 2, on a lane
// and on a gRPC Exchange, before the members connect: both are refused
// naming both identities, and the real rank 0 then connects and the group
// works. w2 may ping (it is a member).
func TestTLSIdentityBinding(t *testing.T) {
	checkLeaks(t)
	s := newSecured(t, 3, mustCA(t, "test"), nil)
	w2 := mustCreds(t, s.ca, s.ids[1])
	forged := s.groups[0].hello(2) // rank 0's hello to rank 2
	check := func(what, msg string) {
		t.Logf("%s: %s", what, msg)
		for _, want := range []string{"rank 0", s.ids[0].String(), s.ids[1].String()} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: %q does not name %q", what, msg, want)
			}
		}
	}

	conn, err := tls.Dial("tcp", s.addrs[2], w2.ClientConfig(auth.Is(s.ids[2])))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	answer, err := laneHello(conn, forged)
	if err != nil || answer == "" {
		t.Fatalf("forged lane hello: answer %q, %v; want a refusal", answer, err)
	}
	check("lane", answer)

	client := grpcClient(t, s.addrs[2], w2.ClientCreds(auth.Is(s.ids[2])))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.Exchange(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.CollectiveChunk{Hello: forged}); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("forged Exchange hello: %v, want PermissionDenied", err)
	}
	check("Exchange", status.Convert(err).Message())
	if _, err := client.Ping(ctx, &pb.CollectivePing{Nonce: 1}); err != nil {
		t.Errorf("ping from member w2: %v", err)
	}

	s.connect(t)
	runOps(t, s.members)
}

// TestTLSRefusesPlaintext: plaintext clients of a TLS group, a raw TCP
// lane opening and an insecure gRPC client, get nothing.
func TestTLSRefusesPlaintext(t *testing.T) {
	checkLeaks(t)
	s := newSecured(t, 3, mustCA(t, "test"), nil)
	s.connect(t)
	conn, err := net.Dial("tcp", s.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if answer, err := laneHello(conn, s.groups[1].hello(0)); err == nil {
		t.Errorf("plaintext lane: answered %q", answer)
	} else {
		t.Logf("plaintext lane: %v", err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("plaintext lane: the member did not close the connection: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = grpcClient(t, s.addrs[0], insecure.NewCredentials()).Ping(ctx, &pb.CollectivePing{Nonce: 1})
	if err == nil {
		t.Error("plaintext gRPC: ping answered")
	}
	t.Logf("plaintext gRPC: %v", err)
	runOps(t, s.members)
}

// TestTLSHandshakeDeadline: connections that never finish their TLS
// handshake (silent, or a ClientHello cut short) do not keep members from
// connecting, and each member closes them after HandshakeTimeout.
func TestTLSHandshakeDeadline(t *testing.T) {
	checkLeaks(t)
	const timeout = time.Second
	s := newSecured(t, 3, mustCA(t, "test"), func(c *Config) { c.HandshakeTimeout = timeout })
	var stalled []net.Conn
	// Timed from before the first dial: the server's deadline starts at
	// its accept, which may come before this goroutine is scheduled again
	// on a busy machine.
	opened := time.Now()
	for _, addr := range s.addrs {
		for _, first := range [][]byte{nil, {0x16, 0x03, 0x01, 0x02, 0x00, 0x01}} { // silent; a record header and 1 byte of 512
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(first); err != nil {
				t.Fatal(err)
			}
			stalled = append(stalled, conn)
		}
	}
	s.connect(t)
	runOps(t, s.members)
	for i, conn := range stalled {
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err := io.ReadAll(conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("stalled connection %d still open after %v", i, time.Since(opened))
		}
	}
	// Every stalled connection was dialed after opened, so it cannot have
	// been closed for its deadline sooner than timeout after opened.
	if d := time.Since(opened); d < timeout {
		t.Errorf("stalled connections closed after %v, before HandshakeTimeout %v", d, timeout)
	}
}

// TestTLSConfigErrors: TLS needs one valid, distinct identity per rank,
// this member's own being its certificate's.
func TestTLSConfigErrors(t *testing.T) {
	creds := mustCreds(t, mustCA(t, "test"), worker(1))
	peers := []string{"a:1", "b:1", "c:1"}
	cases := map[string]struct {
		rank int
		ids  []auth.Identity
		want []string
	}{
		"missing":   {0, nil, []string{"0 Identities, 3 Peers"}},
		"short":     {0, []auth.Identity{worker(1), worker(2)}, []string{"2 Identities, 3 Peers"}},
		"duplicate": {0, []auth.Identity{worker(1), worker(2), worker(2)}, []string{"Identities[1] = Identities[2] = worker/w2"}},
		"invalid":   {0, []auth.Identity{worker(1), {Role: "boss", Name: "x"}, worker(3)}, []string{"Identities[1]", "role"}},
		"not self":  {1, []auth.Identity{worker(1), worker(2), worker(3)}, []string{"Identities[1] = worker/w2", "certificate is worker/w1"}},
	}
	for name, tc := range cases {
		_, err := New(Config{Group: "g", Rank: tc.rank, Peers: peers, TLS: creds, Identities: tc.ids}, nil)
		for _, want := range tc.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want %q", name, err, want)
			}
		}
	}
	// Without TLS, Identities are not needed.
	lis := mustListen(t)
	g, err := New(Config{Group: "g", Rank: 0, Peers: peers}, lis)
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
}

// TestTLSPeerNames: errors of a TLS group name a peer's identity next to
// its address.
func TestTLSPeerNames(t *testing.T) {
	s := newSecured(t, 2, mustCA(t, "test"), nil)
	if got, want := s.groups[0].peerName(1), fmt.Sprintf("rank 1 (%s, worker/w2)", s.addrs[1]); got != want {
		t.Errorf("peerName = %q, want %q", got, want)
	}
}

// BenchmarkSmallAllReduceTLS compares, side by side, a 4 KiB
// recursive-doubling all-reduce of 4 members in plaintext (raw TCP: the
// lanes' raw system calls apply; with and without LanePoll's polling,
// which TLS lanes do not do) and with mutual TLS, on the lanes and over
// gRPC (SmallOverGRPC), and a 1 MiB ring all-reduce (gRPC). cpu-ns/
// member-op includes polling.
func BenchmarkSmallAllReduceTLS(b *testing.B) {
	const n = 4
	noPoll := func(c *Config) { c.LanePoll = -1 }
	clusters := map[string]*secured{
		"plain":        newSecured(b, n, nil, nil),
		"plain-nopoll": newSecured(b, n, nil, noPoll), // TLS lanes do not poll either
		"tls":          newSecured(b, n, mustCA(b, "bench"), nil),
	}
	for _, c := range clusters {
		c.connect(b)
	}
	variants := []struct {
		name     string
		elems    int
		alg      allreduce.Algorithm
		overGRPC bool
	}{
		{"lanes-4KiB", 1024, allreduce.RecursiveDoubling, false},
		{"grpc-4KiB", 1024, allreduce.RecursiveDoubling, true},
		{"ring-1MiB", 1 << 18, allreduce.Ring, false},
	}
	for range 2 {
		for _, v := range variants {
			for _, sec := range []string{"plain", "plain-nopoll", "tls"} {
				c := clusters[sec]
				b.Run(v.name+"/"+sec, func(b *testing.B) {
					b.SetBytes(int64(4 * v.elems))
					cpu0 := cpuTime()
					c.each(b, func(r int, g *Group) error {
						buf := make([]float32, v.elems)
						for range b.N {
							if err := g.AllReduceWith(context.Background(), buf, ReduceOptions{Algorithm: v.alg, SmallOverGRPC: v.overGRPC}); err != nil {
								return err
							}
						}
						return nil
					})
					b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*n), "cpu-ns/member-op")
				})
			}
		}
	}
}
