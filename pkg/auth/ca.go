package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority held in memory: the development CA of
// scripts/dev-ca.sh and tests. Production clusters use their own issuer
// (cert-manager); certificates need only the URI SAN of Identity.URI.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// PEM is Cert, PEM-encoded (the --tls-ca file).
	PEM []byte
}

// DefaultValidity is how long NewCA's and Issue's certificates are valid.
const DefaultValidity = 365 * 24 * time.Hour

// NewCA makes a self-signed ECDSA P-256 CA named name.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Switchyard"}},
		NotBefore:             now.Add(-time.Hour), // clock skew between hosts
		NotAfter:              now.Add(DefaultValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: PEMBlocks("CERTIFICATE", der)}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// Issue signs a certificate for id, usable as both server and client
// (every Switchyard process is both). hosts become DNS or IP SANs: only
// connections to etcd check them (the coordinator's certificate serves the
// embedded etcd). It returns the certificate and its private key, PEM.
//
// The certificate's common name is EtcdUser(id.Role): etcd, with its
// authentication on, takes a client's user name from it (see
// registry.EnableRBAC).
func (ca *CA) Issue(id Identity, hosts []string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	return ca.issue(id, EtcdUser(id.Role), hosts, validFor)
}

// IssueRoot signs the administrator's certificate: identity client/root,
// common name EtcdRootUser (etcd's root user, who may change users and
// roles once etcd's authentication is on).
func (ca *CA) IssueRoot(validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	return ca.issue(Identity{RoleClient, EtcdRootUser}, EtcdRootUser, LocalHosts, validFor)
}

func (ca *CA) issue(id Identity, cn string, hosts []string, validFor time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := id.Validate(); err != nil {
		return nil, nil, err
	}
	if validFor <= 0 {
		validFor = DefaultValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"Switchyard"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         nil,
	}
	tmpl.URIs = append(tmpl.URIs, id.URI())
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return PEMBlocks("CERTIFICATE", der), PEMBlocks("PRIVATE KEY", kder), nil
}

// Credentials issues a certificate for id and returns it as credentials
// (tests and in-memory clusters).
func (ca *CA) Credentials(id Identity, hosts ...string) (*Credentials, error) {
	c, k, err := ca.Issue(id, hosts, 0)
	if err != nil {
		return nil, err
	}
	return New(c, k, ca.PEM)
}

// DevCA describes the files WriteDevCA makes.
type DevCA struct {
	// Workers is the number of worker certificates, w1..wN (default 8).
	Workers int
	// Frontends is the number of front-end certificates, fe1..feN
	// (default 2).
	Frontends int
	// Hosts are extra host names and IPs on the coordinator's certificate
	// (it also serves the embedded etcd); localhost, 127.0.0.1 and ::1 are
	// always there.
	Hosts []string
}

// LocalHosts are the SANs every development certificate carries.
var LocalHosts = []string{"localhost", "127.0.0.1", "::1"}

// WriteDevCA writes a development CA and certificates into dir:
//
//	ca.crt ca.key                       the CA (keep ca.key away from the cluster)
//	coordinator.crt coordinator.key     coordinator/coordinator (+ etcd's host names)
//	w<i>.crt w<i>.key                   worker/w<i>, i = 1..Workers
//	fe<i>.crt fe<i>.key                 frontend/fe<i>, i = 1..Frontends
//	client.crt client.key               client/admin (the CLI: train, status)
//	root.crt root.key                   client/root, etcd's root user (administration)
//
// Keys are written 0600. An existing CA in dir (ca.crt + ca.key) is reused,
// so adding workers keeps the certificates already handed out valid.
func WriteDevCA(dir string, d DevCA) error {
	if d.Workers == 0 {
		d.Workers = 8
	}
	if d.Frontends == 0 {
		d.Frontends = 2
	}
	if d.Workers < 0 || d.Frontends < 0 {
		return errors.New("auth: negative certificate counts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ca, err := loadOrNewCA(dir)
	if err != nil {
		return err
	}
	write := func(name string, id Identity, hosts []string) error {
		c, k, err := ca.Issue(id, hosts, 0)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name+".crt"), c, 0o644); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name+".key"), k, 0o600)
	}
	hosts := append(append([]string(nil), LocalHosts...), d.Hosts...)
	if err := write("coordinator", Identity{RoleCoordinator, "coordinator"}, hosts); err != nil {
		return err
	}
	if err := write("client", Identity{RoleClient, "admin"}, LocalHosts); err != nil {
		return err
	}
	rc, rk, err := ca.IssueRoot(0)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "root.crt"), rc, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "root.key"), rk, 0o600); err != nil {
		return err
	}
	for i := 1; i <= d.Workers; i++ {
		if err := write(fmt.Sprintf("w%d", i), Identity{RoleWorker, fmt.Sprintf("w%d", i)}, hosts); err != nil {
			return err
		}
	}
	for i := 1; i <= d.Frontends; i++ {
		if err := write(fmt.Sprintf("fe%d", i), Identity{RoleFrontend, fmt.Sprintf("fe%d", i)}, hosts); err != nil {
			return err
		}
	}
	return nil
}

// loadOrNewCA reads dir/ca.crt and dir/ca.key, or makes and writes a new CA.
func loadOrNewCA(dir string) (*CA, error) {
	certPEM, cerr := os.ReadFile(filepath.Join(dir, "ca.crt"))
	keyPEM, kerr := os.ReadFile(filepath.Join(dir, "ca.key"))
	if cerr == nil && kerr == nil {
		return ParseCA(certPEM, keyPEM)
	}
	ca, err := NewCA("Switchyard development CA")
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), PEMBlocks("PRIVATE KEY", kder), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.PEM, 0o644); err != nil {
		return nil, err
	}
	return ca, nil
}

// ParseCA reads a CA certificate and its PKCS#8 key, PEM.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pemDecode(certPEM)
	kb, _ := pemDecode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("auth: CA certificate or key is not PEM")
	}
	cert, err := x509.ParseCertificate(cb)
	if err != nil {
		return nil, fmt.Errorf("auth: CA certificate: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb)
	if err != nil {
		return nil, fmt.Errorf("auth: CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok || !cert.IsCA {
		return nil, errors.New("auth: not a CA certificate and signing key")
	}
	return &CA{Cert: cert, Key: signer, PEM: PEMBlocks("CERTIFICATE", cb)}, nil
}
