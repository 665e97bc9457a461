package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ErrNoPeerIdentity is returned by FromContext when the call did not come
// over mutual TLS.
var ErrNoPeerIdentity = errors.New("auth: the caller presented no certificate")

// FromContext is the identity of a gRPC call's peer, read from the
// verified certificate of its TLS connection.
func FromContext(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, ErrNoPeerIdentity
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, ErrNoPeerIdentity
	}
	return PeerIdentity(ti.State)
}

// ServerCreds are the gRPC transport credentials of a server: mutual TLS
// with ServerConfig(m). Nil when c is nil (use insecure credentials).
func (c *Credentials) ServerCreds(m Matcher) credentials.TransportCredentials {
	if c == nil {
		return nil
	}
	return credentials.NewTLS(c.ServerConfig(m))
}

// ClientCreds are the gRPC transport credentials of a client: mutual TLS
// with ClientConfig(m). Nil when c is nil.
func (c *Credentials) ClientCreds(m Matcher) credentials.TransportCredentials {
	if c == nil {
		return nil
	}
	return credentials.NewTLS(c.ClientConfig(m))
}

// Terminated are the server credentials of a gRPC server whose listener
// already ran the TLS handshake (a tls.Listener shared with other
// protocols, as the collective groups' listener is): each connection must
// be a *tls.Conn, and its state becomes the call's AuthInfo, so
// FromContext works as with ServerCreds.
func Terminated() credentials.TransportCredentials { return terminated{} }

type terminated struct{}

func (terminated) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := unwrapTLS(c)
	if !ok {
		return nil, nil, errors.New("auth: plaintext connection on a TLS listener")
	}
	if err := tc.Handshake(); err != nil {
		return nil, nil, err
	}
	return c, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (terminated) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("auth: Terminated credentials are for servers")
}

func (terminated) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (t terminated) Clone() credentials.TransportCredentials { return t }

func (terminated) OverrideServerName(string) error { return nil }

// TLSConner is a connection wrapping a *tls.Conn (e.g. one with bytes
// already peeked by a demultiplexer).
type TLSConner interface{ TLSConn() *tls.Conn }

func unwrapTLS(c net.Conn) (*tls.Conn, bool) {
	switch v := c.(type) {
	case *tls.Conn:
		return v, true
	case TLSConner:
		return v.TLSConn(), v.TLSConn() != nil
	}
	return nil, false
}
