// Package auth gives Switchyard's processes identities and mutual TLS.
//
// Every process of a secured cluster holds a certificate signed by the
// cluster's CA. The certificate names the process with exactly one URI
// subject alternative name,
//
//	spiffe://switchyard/<role>/<name>     e.g. spiffe://switchyard/worker/w1
//
// where role is worker, frontend, coordinator or client (the CLI). Peers
// authenticate each other with that identity, not with host names: a
// front end dialling worker w1 at the address etcd gives for w1 accepts
// only a certificate that says worker/w1, so a process that registered
// another worker's address (or holds another worker's address after a
// restart) is refused. Host names are checked only on connections to etcd,
// whose certificates may come from elsewhere (cert-manager) and name hosts.
//
// The package holds no network code: it builds crypto/tls configurations
// and reads identities from verified certificates. Callers wire them into
// gRPC (credentials.NewTLS), raw TCP (tls.Client, tls.Server), the etcd
// client and the embedded etcd.
package auth

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Role is the kind of process a certificate is for.
type Role string

// The roles. A process's role decides what it may call: workers serve and
// run training ranks, front ends call workers' serving experts,
// coordinators run the control plane, clients are the CLI (train, status).
const (
	RoleWorker      Role = "worker"
	RoleFrontend    Role = "frontend"
	RoleCoordinator Role = "coordinator"
	RoleClient      Role = "client"
)

// EtcdRootUser is etcd's administrator, the common name of the
// certificate CA.IssueRoot signs.
const EtcdRootUser = "root"

// EtcdUser is the etcd user of a role: the common name of its
// certificates ("switchyard-worker", ...), which etcd maps to a user when
// its authentication is on.
func EtcdUser(r Role) string { return "switchyard-" + string(r) }

// Roles lists every role.
var Roles = []Role{RoleWorker, RoleFrontend, RoleCoordinator, RoleClient}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool {
	for _, v := range Roles {
		if r == v {
			return true
		}
	}
	return false
}

// uriScheme and uriHost make the identity URI: spiffe://switchyard/<role>/<name>.
const (
	uriScheme = "spiffe"
	uriHost   = "switchyard"
)

// Identity is who a certificate says a process is.
type Identity struct {
	Role Role
	// Name is the worker ID, or a free name for the other roles (e.g. the
	// front end's pod name). Non-empty, no '/' or spaces.
	Name string
}

// String is "<role>/<name>".
func (id Identity) String() string { return string(id.Role) + "/" + id.Name }

// IsZero reports whether id is the zero Identity (no TLS: nobody).
func (id Identity) IsZero() bool { return id == Identity{} }

// URI is the certificate's URI SAN for id.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: uriScheme, Host: uriHost, Path: "/" + string(id.Role) + "/" + id.Name}
}

// Validate reports what is wrong with id, if anything.
func (id Identity) Validate() error {
	if !id.Role.Valid() {
		return fmt.Errorf("auth: role %q, want one of %v", id.Role, Roles)
	}
	if id.Name == "" || strings.ContainsAny(id.Name, "/ \t\n") {
		return fmt.Errorf("auth: name %q must be non-empty without '/' or spaces", id.Name)
	}
	return nil
}

// ParseIdentity reads "<role>/<name>" (as String writes it).
func ParseIdentity(s string) (Identity, error) {
	role, name, ok := strings.Cut(s, "/")
	id := Identity{Role: Role(role), Name: name}
	if !ok {
		return Identity{}, fmt.Errorf("auth: identity %q, want <role>/<name>", s)
	}
	return id, id.Validate()
}

// IdentityOf reads the identity of a certificate: its one URI SAN of the
// form spiffe://switchyard/<role>/<name>. It does not verify the
// certificate (the TLS handshake did).
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme || u.Host != uriHost {
			continue
		}
		id, err := ParseIdentity(strings.TrimPrefix(u.Path, "/"))
		if err != nil {
			return Identity{}, fmt.Errorf("auth: certificate %q: %w", cert.Subject.CommonName, err)
		}
		found = append(found, id)
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return Identity{}, fmt.Errorf("auth: certificate %q names no Switchyard identity (a URI SAN %s://%s/<role>/<name>)", cert.Subject.CommonName, uriScheme, uriHost)
	default:
		return Identity{}, fmt.Errorf("auth: certificate %q names %d identities, want one", cert.Subject.CommonName, len(found))
	}
}

// PeerIdentity is the identity of the peer of a completed TLS handshake:
// the leaf of its verified chain.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, errors.New("auth: the peer presented no certificate")
	}
	return IdentityOf(cs.PeerCertificates[0])
}

// Files names the PEM files of a process's credentials: the flags
// --tls-cert, --tls-key and --tls-ca of every daemon and client.
type Files struct {
	Cert string // this process's certificate (its chain may follow)
	Key  string // its private key
	CA   string // the cluster's CA certificate(s): peers must chain to it
}

// Configured reports whether any of the three is set.
func (f Files) Configured() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Load reads the files. It returns nil, nil when none is set (TLS off) and
// an error naming what is missing when only some are.
func Load(f Files) (*Credentials, error) {
	if !f.Configured() {
		return nil, nil
	}
	var missing []string
	for _, p := range []struct{ flag, v string }{{"--tls-cert", f.Cert}, {"--tls-key", f.Key}, {"--tls-ca", f.CA}} {
		if p.v == "" {
			missing = append(missing, p.flag)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("auth: TLS needs --tls-cert, --tls-key and --tls-ca together; missing %s", strings.Join(missing, ", "))
	}
	read := func(name, p string) ([]byte, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("auth: %s: %w", name, err)
		}
		return b, nil
	}
	certPEM, err := read("--tls-cert", f.Cert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read("--tls-key", f.Key)
	if err != nil {
		return nil, err
	}
	caPEM, err := read("--tls-ca", f.CA)
	if err != nil {
		return nil, err
	}
	c, err := New(certPEM, keyPEM, caPEM)
	if err != nil {
		return nil, err
	}
	c.files = f
	return c, nil
}

// Credentials are one process's certificate, key and the CA it trusts. A
// nil *Credentials means TLS is off; its methods then return nil configs.
type Credentials struct {
	// Self is the identity in this process's certificate.
	Self  Identity
	cert  tls.Certificate
	roots *x509.CertPool
	caPEM []byte
	files Files // when loaded from files (the embedded etcd wants paths)
}

// New builds credentials from PEM: the certificate must chain to caPEM and
// name one identity.
func New(certPEM, keyPEM, caPEM []byte) (*Credentials, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("auth: certificate and key: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("auth: the CA file holds no PEM certificate")
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("auth: certificate: %w", err)
		}
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("auth: this process's certificate does not chain to the CA: %w", err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return nil, err
	}
	return &Credentials{Self: id, cert: cert, roots: roots, caPEM: caPEM}, nil
}

// Files returns the files the credentials were loaded from (zero when
// built in memory).
func (c *Credentials) Files() Files {
	if c == nil {
		return Files{}
	}
	return c.files
}

// CAPEM returns the CA certificate(s) the credentials trust, PEM.
func (c *Credentials) CAPEM() []byte { return c.caPEM }

// Matcher decides whether a peer's identity may be on the other end of a
// connection; nil accepts any identity the CA signed.
type Matcher func(Identity) error

// Is accepts exactly want.
func Is(want Identity) Matcher {
	return func(got Identity) error {
		if got != want {
			return fmt.Errorf("auth: peer is %s, want %s", got, want)
		}
		return nil
	}
}

// AnyRole accepts any identity with one of roles.
func AnyRole(roles ...Role) Matcher {
	return func(got Identity) error {
		for _, r := range roles {
			if got.Role == r {
				return nil
			}
		}
		return fmt.Errorf("auth: peer is %s, want a %v", got, roles)
	}
}

// verifyPeer checks a handshake's peer chain against the CA for usage and
// then its identity with m (nil: any).
func (c *Credentials) verifyPeer(cs tls.ConnectionState, usage x509.ExtKeyUsage, m Matcher) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("auth: the peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: c.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("auth: peer certificate: %w", err)
	}
	id, err := IdentityOf(cs.PeerCertificates[0])
	if err != nil {
		return err
	}
	if m != nil {
		return m(id)
	}
	return nil
}

// ServerConfig is the TLS configuration of a listener: TLS 1.3, a client
// certificate chaining to the CA required, and its identity accepted by m
// (nil: any identity the CA signed; services then authorize per call with
// PeerIdentity). Nil when c is nil.
func (c *Credentials) ServerConfig(m Matcher) *tls.Config {
	if c == nil {
		return nil
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.roots,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.verifyPeer(cs, x509.ExtKeyUsageClientAuth, m)
		},
	}
}

// ClientConfig is the TLS configuration of a connection to another
// Switchyard process: this process's certificate, the server's chain
// verified against the CA and its identity (not its host name) accepted
// by m. Nil when c is nil.
func (c *Credentials) ClientConfig(m Matcher) *tls.Config {
	if c == nil {
		return nil
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.cert},
		// The chain and the identity are verified below; host names are
		// not what identifies a Switchyard process.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.verifyPeer(cs, x509.ExtKeyUsageServerAuth, m)
		},
	}
}

// EtcdClientConfig is the TLS configuration of an etcd client: this
// process's certificate as its client certificate and the server verified
// the usual way, chain and host name, against the CA (etcd's certificates
// name hosts and may come from another issuer in the same CA bundle). Nil
// when c is nil.
func (c *Credentials) EtcdClientConfig() *tls.Config {
	if c == nil {
		return nil
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12, // etcd may be built with older settings
		Certificates: []tls.Certificate{c.cert},
		RootCAs:      c.roots,
	}
}

// PEMBlocks encodes DER blocks of typ as PEM.
func PEMBlocks(typ string, ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: d})...)
	}
	return out
}

// pemDecode returns the bytes of the first PEM block of b.
func pemDecode(b []byte) ([]byte, string) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, ""
	}
	return blk.Bytes, blk.Type
}
