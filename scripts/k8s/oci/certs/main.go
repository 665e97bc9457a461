// Command certs issues the certificates of the local Kubernetes overlay
// (deploy/k8s/overlays/local) and writes them as the Secrets its pods
// mount, in place of production's cert-manager (deploy/k8s/examples/
// cert-manager.yaml). scripts/k8s/certs.sh runs it.
//
//	certs -dir DIR [-namespace switchyard] [-workers 4] [-cluster-domain cluster.local]
//
// It writes into DIR (0700; keys 0600):
//
//	ca.crt ca.key                   the Switchyard CA (reused if present)
//	etcd-peer-ca.crt etcd-peer-ca.key  the etcd peer CA (reused if present)
//	etcd-server.crt/.key            etcd's client-facing certificate
//	etcd-peer.crt/.key              the members' peer certificate
//	coordinator.crt/.key            coordinator/coordinator
//	frontend.crt/.key               frontend/frontend
//	worker-<i>.crt/.key             worker/worker-<i>, i = 0..workers-1:
//	                                the worker StatefulSet's pod names
//	train.crt/.key                  client/train (examples/train-job.yaml)
//	admin.crt/.key                  client/admin (the CLI from outside)
//	root.crt/.key                   client/root, etcd's root user
//	api-key                         the front ends' API key (reused if present)
//	secrets.yaml                    every Secret the overlay mounts
//
// The names and DNS names are those of the manifests: etcd's certificates
// name the Services etcd-client and etcd-peer of the namespace, as
// cert-manager.yaml's do; identities are spiffe://switchyard/<role>/<name>
// with the common name switchyard-<role> (auth.CA.Issue), the etcd user.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/switchyard/switchyard/pkg/auth"
	"sigs.k8s.io/yaml"
)

// Config says what to issue.
type Config struct {
	// Namespace of the Secrets and of the Services etcd's certificates name.
	Namespace string
	// Workers is the number of worker certificates: worker-0 .. worker-(N-1).
	Workers int
	// WorkerSet is the worker StatefulSet's name, the prefix of its pods.
	WorkerSet string
	// ClusterDomain is the cluster's DNS domain (kubelet clusterDomain).
	ClusterDomain string
}

// DefaultConfig fits deploy/k8s with the local overlay.
func DefaultConfig() Config {
	return Config{Namespace: "switchyard", Workers: 4, WorkerSet: "worker", ClusterDomain: "cluster.local"}
}

// Validate reports every problem of c.
func (c Config) Validate() error {
	var errs []error
	if c.Namespace == "" || c.WorkerSet == "" || c.ClusterDomain == "" {
		errs = append(errs, fmt.Errorf("namespace %q, worker set %q, cluster domain %q: none may be empty", c.Namespace, c.WorkerSet, c.ClusterDomain))
	}
	if c.Workers < 1 {
		errs = append(errs, fmt.Errorf("workers %d: want at least 1", c.Workers))
	}
	return errors.Join(errs...)
}

// Leaf is one certificate to issue.
type Leaf struct {
	// File is the base name in DIR: File.crt and File.key.
	File string
	// ID is the Switchyard identity (URI SAN; common name switchyard-<role>),
	// nil for etcd's own certificates, which are no Switchyard identity.
	ID *auth.Identity
	// Root: etcd's root user (auth.CA.IssueRoot).
	Root bool
	// CN and the usages of etcd's certificates.
	CN     string
	Server bool
	Client bool
	// Peer: signed by the etcd peer CA, not the Switchyard CA.
	Peer bool
	// Hosts are DNS names and IPs (SANs).
	Hosts []string
}

// Secret is one Secret of the overlay: its keys and the files of DIR they hold.
type Secret struct {
	Name string
	Type string            // kubernetes.io/tls or Opaque
	Keys map[string]string // key -> file in DIR
}

// The Secrets the manifests mount (deploy/k8s/*.yaml and the overlay's
// worker patch).
const (
	SecretEtcdServer  = "etcd-server-tls"
	SecretEtcdPeer    = "etcd-peer-tls"
	SecretCoordinator = "switchyard-coordinator-tls"
	SecretFrontend    = "switchyard-frontend-tls"
	SecretTrainClient = "switchyard-train-client-tls"
	SecretWorkers     = "switchyard-worker-tls"
	SecretAPIKey      = "switchyard-api-key"
)

// Plan lists the certificates and Secrets of c. Pure.
func Plan(c Config) ([]Leaf, []Secret) {
	id := func(r auth.Role, name string) *auth.Identity { return &auth.Identity{Role: r, Name: name} }
	ns, dom := c.Namespace, c.ClusterDomain
	// Every name a client dials etcd by: the client Service, each member
	// under the headless Service (advertised client URLs), and localhost
	// for kubectl port-forward (deploy/k8s/examples/cert-manager.yaml).
	etcdHosts := []string{
		"etcd-client", "etcd-client." + ns, "etcd-client." + ns + ".svc", "etcd-client." + ns + ".svc." + dom,
		"*.etcd-peer." + ns + ".svc", "*.etcd-peer." + ns + ".svc." + dom,
		"localhost", "127.0.0.1",
	}
	peerHosts := []string{"*.etcd-peer." + ns + ".svc", "*.etcd-peer." + ns + ".svc." + dom}
	leaves := []Leaf{
		{File: "etcd-server", CN: "etcd-client", Server: true, Hosts: etcdHosts},
		{File: "etcd-peer", CN: "etcd-peer", Server: true, Client: true, Peer: true, Hosts: peerHosts},
		{File: "coordinator", ID: id(auth.RoleCoordinator, "coordinator")},
		{File: "frontend", ID: id(auth.RoleFrontend, "frontend")},
		{File: "train", ID: id(auth.RoleClient, "train")},
		{File: "admin", ID: id(auth.RoleClient, "admin")},
		{File: "root", Root: true},
	}
	tlsSecret := func(name, file, ca string) Secret {
		return Secret{Name: name, Type: "kubernetes.io/tls", Keys: map[string]string{"tls.crt": file + ".crt", "tls.key": file + ".key", "ca.crt": ca}}
	}
	workers := Secret{Name: SecretWorkers, Type: "Opaque", Keys: map[string]string{"ca.crt": "ca.crt"}}
	for i := range c.Workers {
		name := fmt.Sprintf("%s-%d", c.WorkerSet, i)
		leaves = append(leaves, Leaf{File: name, ID: id(auth.RoleWorker, name)})
		workers.Keys[name+".crt"] = name + ".crt"
		workers.Keys[name+".key"] = name + ".key"
	}
	secrets := []Secret{
		tlsSecret(SecretEtcdServer, "etcd-server", "ca.crt"),
		tlsSecret(SecretEtcdPeer, "etcd-peer", "etcd-peer-ca.crt"),
		tlsSecret(SecretCoordinator, "coordinator", "ca.crt"),
		tlsSecret(SecretFrontend, "frontend", "ca.crt"),
		tlsSecret(SecretTrainClient, "train", "ca.crt"),
		workers,
		{Name: SecretAPIKey, Type: "Opaque", Keys: map[string]string{"api-keys": "api-key"}},
	}
	return leaves, secrets
}

// Write issues everything of c into dir and writes dir/secrets.yaml.
func Write(dir string, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := loadOrNewCA(dir, "ca", "Switchyard local CA")
	if err != nil {
		return err
	}
	peerCA, err := loadOrNewCA(dir, "etcd-peer-ca", "etcd peer local CA")
	if err != nil {
		return err
	}
	leaves, secrets := Plan(c)
	for _, l := range leaves {
		var crt, key []byte
		switch {
		case l.Root:
			crt, key, err = ca.IssueRoot(0)
		case l.ID != nil:
			crt, key, err = ca.Issue(*l.ID, l.Hosts, 0)
		case l.Peer:
			crt, key, err = issueEtcd(peerCA, l)
		default:
			crt, key, err = issueEtcd(ca, l)
		}
		if err != nil {
			return fmt.Errorf("certificate %s: %w", l.File, err)
		}
		if err := writeFiles(dir, l.File, crt, key); err != nil {
			return err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "api-key")); errors.Is(err, os.ErrNotExist) {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "api-key"), []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
			return err
		}
	}
	y, err := SecretsYAML(dir, c.Namespace, secrets)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "secrets.yaml"), y, 0o600)
}

// issueEtcd signs one of etcd's certificates: no URI SAN (etcd is no
// Switchyard identity, and Switchyard processes refuse it as a peer), the
// usages of l.
func issueEtcd(ca *auth.CA, l Leaf) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: l.CN, Organization: []string{"Switchyard"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(auth.DefaultValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if l.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range l.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
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
	return auth.PEMBlocks("CERTIFICATE", der), auth.PEMBlocks("PRIVATE KEY", kder), nil
}

func writeFiles(dir, base string, crt, key []byte) error {
	if err := os.WriteFile(filepath.Join(dir, base+".crt"), crt, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, base+".key"), key, 0o600)
}

// loadOrNewCA reads dir/base.crt and .key, or makes a CA and writes them.
func loadOrNewCA(dir, base, name string) (*auth.CA, error) {
	crt, cerr := os.ReadFile(filepath.Join(dir, base+".crt"))
	key, kerr := os.ReadFile(filepath.Join(dir, base+".key"))
	if cerr == nil && kerr == nil {
		return auth.ParseCA(crt, key)
	}
	ca, err := auth.NewCA(name)
	if err != nil {
		return nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	return ca, writeFiles(dir, base, ca.PEM, auth.PEMBlocks("PRIVATE KEY", kder))
}

// secretObj is a v1 Secret; []byte values marshal as base64, as data wants.
type secretObj struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   secretMeta        `json:"metadata"`
	Type       string            `json:"type"`
	Data       map[string][]byte `json:"data"`
}

type secretMeta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels"`
}

// SecretsYAML renders secrets from the files of dir, one YAML document each.
func SecretsYAML(dir, namespace string, secrets []Secret) ([]byte, error) {
	var b strings.Builder
	b.WriteString("# Written by scripts/k8s/certs.sh for deploy/k8s/overlays/local: private keys.\n")
	for _, s := range secrets {
		o := secretObj{
			APIVersion: "v1", Kind: "Secret", Type: s.Type, Data: map[string][]byte{},
			Metadata: secretMeta{Name: s.Name, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/part-of": "switchyard"}},
		}
		for k, f := range s.Keys {
			v, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return nil, fmt.Errorf("secret %s key %s: %w", s.Name, k, err)
			}
			o.Data[k] = v
		}
		y, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return []byte(b.String()), nil
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "certs:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	c := DefaultConfig()
	fl := flag.NewFlagSet("certs", flag.ContinueOnError)
	dir := fl.String("dir", "", "folder for the CAs, certificates, keys and secrets.yaml")
	fl.StringVar(&c.Namespace, "namespace", c.Namespace, "namespace of the Secrets and etcd's Services")
	fl.IntVar(&c.Workers, "workers", c.Workers, "worker certificates: <worker-set>-0 .. -(N-1)")
	fl.StringVar(&c.WorkerSet, "worker-set", c.WorkerSet, "the worker StatefulSet's name")
	fl.StringVar(&c.ClusterDomain, "cluster-domain", c.ClusterDomain, "the cluster's DNS domain")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *dir == "" || fl.NArg() > 0 {
		return errors.New("usage: certs -dir DIR [-namespace NS] [-workers N] [-worker-set NAME] [-cluster-domain D]")
	}
	if err := Write(*dir, c); err != nil {
		return err
	}
	_, err := fmt.Fprintf(stdout, "certs: dir=%s namespace=%s workers=%d secrets=%s\n", *dir, c.Namespace, c.Workers, filepath.Join(*dir, "secrets.yaml"))
	return err
}
