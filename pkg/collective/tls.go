package collective

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/demux"
)

// Mutual TLS (Config.TLS): the glue between the group and pkg/auth.
//
// The listener's side: each accepted connection runs its TLS handshake in
// the demux's goroutine for that connection (demux.classify), bounded by
// Config.HandshakeTimeout, with serverTLS: TLS 1.3, a client certificate
// from the CA naming one of Config.Identities. The demux then peeks the
// decrypted first bytes as it does in plaintext; the gRPC server reads the
// caller's identity from the finished handshake (auth.Terminated), the
// lane handler from the *tls.Conn.
//
// The dialing side: gRPC with auth.ClientCreds and lanes with tls.Client
// over Config.Dial's connection, each accepting only Identities[r] for
// the peer at Peers[r], so a wrong address is refused too.
//
// Binding: a hello claiming source rank s is accepted only over a
// connection whose certificate names Identities[s] (checkHello).

// laneALPN is the application protocol a lane's TLS client offers; the
// listener offers it next to gRPC's "h2" (which gRPC's client requires).
const laneALPN = "switchyard-lane/1"

// errPeerIdentity marks a hello refused because the connection's
// certificate names someone other than the rank it claims (or nobody).
// The gRPC handlers answer it with codes.PermissionDenied.
var errPeerIdentity = errors.New("peer identity refused")

// serverTLS is the listener's TLS configuration, nil without TLS.
func (c Config) serverTLS() *tls.Config {
	if c.TLS == nil {
		return nil
	}
	sc := c.TLS.ServerConfig(memberOf(c.Identities))
	sc.NextProtos = []string{"h2", laneALPN}
	// Members keep their connections for the group's life and never
	// resume sessions (ClientConfig keeps no session cache): tickets
	// would be sent for nothing.
	sc.SessionTicketsDisabled = true
	return sc
}

// laneTLS is the TLS configuration of this member's lane to rank r.
func (c Config) laneTLS(r int) *tls.Config {
	cc := c.TLS.ClientConfig(auth.Is(c.Identities[r]))
	cc.NextProtos = []string{laneALPN}
	return cc
}

// memberOf accepts the identities of ids (the group's members).
func memberOf(ids []auth.Identity) auth.Matcher {
	return func(got auth.Identity) error {
		if !slices.Contains(ids, got) {
			return fmt.Errorf("auth: peer is %s, not a member of this collective group", got)
		}
		return nil
	}
}

// connIdentity is the verified identity of a lane connection's peer: the
// zero Identity without TLS.
func (g *Group) connIdentity(conn net.Conn) (auth.Identity, error) {
	if g.cfg.TLS == nil {
		return auth.Identity{}, nil
	}
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return auth.Identity{}, fmt.Errorf("collective: %w: plaintext connection on a TLS listener", errPeerIdentity)
	}
	id, err := auth.PeerIdentity(tc.ConnectionState())
	if err != nil {
		return auth.Identity{}, fmt.Errorf("collective: %w: %w", errPeerIdentity, err)
	}
	return id, nil
}

// callIdentity is the verified identity of a gRPC call's peer: the zero
// Identity without TLS.
func (g *Group) callIdentity(ctx context.Context) (auth.Identity, error) {
	if g.cfg.TLS == nil {
		return auth.Identity{}, nil
	}
	id, err := auth.FromContext(ctx)
	if err != nil {
		return auth.Identity{}, fmt.Errorf("collective: %w: %w", errPeerIdentity, err)
	}
	return id, nil
}

// checkPeer verifies that peer (a connection's verified identity) may
// speak for rank src: it must be Identities[src]. Always nil without TLS.
// src must be a valid rank.
func (g *Group) checkPeer(src int, peer auth.Identity) error {
	if g.cfg.TLS == nil {
		return nil
	}
	if want := g.cfg.Identities[src]; peer != want {
		return fmt.Errorf("collective: %w: hello claims rank %d, which is %s, but the connection's certificate is %s", errPeerIdentity, src, want, peer)
	}
	return nil
}

// checkMember verifies that peer is one of the group's members. Always
// nil without TLS.
func (g *Group) checkMember(peer auth.Identity) error {
	if g.cfg.TLS == nil || slices.Contains(g.cfg.Identities, peer) {
		return nil
	}
	return fmt.Errorf("collective: %w: %s is not a member of group %q", errPeerIdentity, peer, g.cfg.Group)
}

// closeConn closes conn without TLS's close_notify alert
// (demux.CloseConn). Both protocols on the listener end on their own
// (HTTP/2's GOAWAY or the stream's end; a lane's goodbye frame), and
// crypto/tls waits up to 5 s to send close_notify to a peer that stopped
// reading, which would stall Close (and closeLanes, under g.mu) on a
// stopped peer.
func closeConn(conn net.Conn) error { return demux.CloseConn(conn) }
