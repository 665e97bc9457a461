package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/switchyard/switchyard/pkg/auth"
	"sigs.k8s.io/yaml"
)

// issued runs Write into a temporary folder and returns it with the
// Secrets of secrets.yaml by name.
func issued(t *testing.T, c Config) (string, map[string]secretObj) {
	t.Helper()
	dir := t.TempDir()
	if err := Write(dir, c); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "secrets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]secretObj{}
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(b), -1)[1:] {
		var s secretObj
		if err := yaml.UnmarshalStrict([]byte(doc), &s); err != nil {
			t.Fatalf("secrets.yaml: %v\n%s", err, doc)
		}
		if s.Metadata.Namespace != c.Namespace || s.APIVersion != "v1" || s.Kind != "Secret" {
			t.Errorf("secret %s: %s/%s in namespace %q", s.Metadata.Name, s.APIVersion, s.Kind, s.Metadata.Namespace)
		}
		out[s.Metadata.Name] = s
	}
	return dir, out
}

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func pool(t *testing.T, b []byte) *x509.CertPool {
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatal("no CA")
	}
	return p
}

// TestSecrets: every Secret the manifests mount exists with the keys they
// read; each identity chains to the Switchyard CA and names the role and
// name its pod runs as (a worker's: its pod name, its --id); etcd's server
// certificate is valid for every name a client dials, its peer
// certificate chains to the separate peer CA only.
func TestSecrets(t *testing.T) {
	c := DefaultConfig()
	c.Workers = 2
	_, secrets := issued(t, c)
	tlsKeys := []string{"ca.crt", "tls.crt", "tls.key"}
	keys := map[string][]string{
		SecretEtcdServer:  tlsKeys,
		SecretEtcdPeer:    tlsKeys,
		SecretCoordinator: tlsKeys,
		SecretFrontend:    tlsKeys,
		SecretTrainClient: tlsKeys,
		SecretWorkers:     {"ca.crt", "worker-0.crt", "worker-0.key", "worker-1.crt", "worker-1.key"},
		SecretAPIKey:      {"api-keys"},
	}
	for name, want := range keys {
		s, ok := secrets[name]
		if !ok {
			t.Errorf("no Secret %s", name)
			continue
		}
		var got []string
		for k := range s.Data {
			got = append(got, k)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("Secret %s: keys %v, want %v", name, got, want)
		}
	}
	if len(secrets) != len(keys) {
		t.Errorf("%d Secrets, want %d", len(secrets), len(keys))
	}
	ca := secrets[SecretCoordinator].Data["ca.crt"]
	swPool := pool(t, ca)
	identity := func(crt []byte, want auth.Identity) {
		t.Helper()
		cert := parseCert(t, crt)
		if _, err := cert.Verify(x509.VerifyOptions{Roots: swPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("%s: %v", want, err)
		}
		got, err := auth.IdentityOf(cert)
		if err != nil || got != want || cert.Subject.CommonName != auth.EtcdUser(want.Role) {
			t.Errorf("identity %v (CN %q), %v; want %v (CN %q)", got, cert.Subject.CommonName, err, want, auth.EtcdUser(want.Role))
		}
	}
	identity(secrets[SecretCoordinator].Data["tls.crt"], auth.Identity{Role: auth.RoleCoordinator, Name: "coordinator"})
	identity(secrets[SecretFrontend].Data["tls.crt"], auth.Identity{Role: auth.RoleFrontend, Name: "frontend"})
	identity(secrets[SecretTrainClient].Data["tls.crt"], auth.Identity{Role: auth.RoleClient, Name: "train"})
	w := secrets[SecretWorkers].Data
	identity(w["worker-0.crt"], auth.Identity{Role: auth.RoleWorker, Name: "worker-0"})
	identity(w["worker-1.crt"], auth.Identity{Role: auth.RoleWorker, Name: "worker-1"})
	if !bytes.Equal(w["ca.crt"], ca) || !bytes.Equal(secrets[SecretEtcdServer].Data["ca.crt"], ca) {
		t.Error("the workers' or etcd's ca.crt is not the Switchyard CA")
	}
	for _, k := range []string{"worker-0", "worker-1"} {
		if _, err := auth.New(w[k+".crt"], w[k+".key"], w["ca.crt"]); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}

	srv := parseCert(t, secrets[SecretEtcdServer].Data["tls.crt"])
	for _, host := range []string{"etcd-client", "etcd-client.switchyard.svc", "etcd-client.switchyard.svc.cluster.local", "etcd-0.etcd-peer.switchyard.svc", "etcd-2.etcd-peer.switchyard.svc.cluster.local", "localhost", "127.0.0.1"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: swPool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("etcd server certificate for %s: %v", host, err)
		}
	}
	if len(srv.URIs) != 0 {
		t.Errorf("etcd server certificate has URI SANs %v: it must be no Switchyard identity", srv.URIs)
	}
	peer := secrets[SecretEtcdPeer].Data
	peerCert := parseCert(t, peer["tls.crt"])
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := peerCert.Verify(x509.VerifyOptions{Roots: pool(t, peer["ca.crt"]), DNSName: "etcd-0.etcd-peer.switchyard.svc", KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("etcd peer certificate: %v", err)
		}
	}
	if _, err := peerCert.Verify(x509.VerifyOptions{Roots: swPool}); err == nil {
		t.Error("the etcd peer certificate chains to the Switchyard CA: any Switchyard certificate could join etcd")
	}
	if bytes.Equal(peer["ca.crt"], ca) {
		t.Error("etcd's peer CA is the Switchyard CA")
	}
	if k := secrets[SecretAPIKey].Data["api-keys"]; len(bytes.TrimSpace(k)) < 32 {
		t.Errorf("API key %q too short", k)
	}
}

// TestHandshake: a front end reaches worker-1 over mutual TLS with the
// files as the pods mount them, and a worker's certificate is accepted as
// an etcd client by a server presenting etcd's certificate.
func TestHandshake(t *testing.T) {
	c := DefaultConfig()
	c.Workers = 2
	_, s := issued(t, c)
	w := s[SecretWorkers].Data
	worker, err := auth.New(w["worker-1.crt"], w["worker-1.key"], w["ca.crt"])
	if err != nil {
		t.Fatal(err)
	}
	fe := s[SecretFrontend].Data
	front, err := auth.New(fe["tls.crt"], fe["tls.key"], fe["ca.crt"])
	if err != nil {
		t.Fatal(err)
	}
	handshake(t, worker.ServerConfig(nil), front.ClientConfig(auth.Is(auth.Identity{Role: auth.RoleWorker, Name: "worker-1"})))

	es := s[SecretEtcdServer].Data
	kp, err := tls.X509KeyPair(es["tls.crt"], es["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	etcdSrv := &tls.Config{Certificates: []tls.Certificate{kp}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool(t, es["ca.crt"]), MinVersion: tls.VersionTLS13}
	cl := worker.EtcdClientConfig()
	cl.ServerName = "etcd-client"
	handshake(t, etcdSrv, cl)
}

func handshake(t *testing.T, srv, cl *tls.Config) {
	t.Helper()
	a, b := net.Pipe()
	errc := make(chan error, 1)
	go func() {
		errc <- tls.Server(a, srv).Handshake()
		a.Close() // not the TLS conn: its close_notify would wait on the unread pipe
	}()
	cc := tls.Client(b, cl)
	if err := cc.Handshake(); err != nil {
		t.Errorf("client handshake: %v", err)
	}
	b.Close()
	if err := <-errc; err != nil {
		t.Errorf("server handshake: %v", err)
	}
}

// TestReuse: a second run keeps both CAs and the API key, so pods holding
// the first run's certificates keep trusting the second run's.
func TestReuse(t *testing.T) {
	c := DefaultConfig()
	c.Workers = 1
	dir, first := issued(t, c)
	if err := Write(dir, c); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "secrets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range [][]byte{first[SecretCoordinator].Data["ca.crt"], first[SecretEtcdPeer].Data["ca.crt"], first[SecretAPIKey].Data["api-keys"]} {
		y, _ := yaml.Marshal(map[string][]byte{"v": k})
		if !bytes.Contains(b, bytes.TrimPrefix(bytes.TrimSpace(y), []byte("v: "))) {
			t.Errorf("a CA or the API key changed on the second run")
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err == nil {
		t.Error("empty config accepted")
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Error(err)
	}
}
