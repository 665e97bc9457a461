package auth

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIdentityRoundTrip(t *testing.T) {
	for _, s := range []string{"worker/w1", "frontend/fe-0", "coordinator/c", "client/admin"} {
		id, err := ParseIdentity(s)
		if err != nil || id.String() != s {
			t.Fatalf("ParseIdentity(%q) = %v, %v", s, id, err)
		}
		if got := id.URI().String(); got != "spiffe://switchyard/"+s {
			t.Fatalf("URI of %s = %s", s, got)
		}
	}
	for _, s := range []string{"", "worker", "worker/", "root/x", "worker/a/b", "worker/a b"} {
		if _, err := ParseIdentity(s); err == nil {
			t.Errorf("ParseIdentity(%q) accepted", s)
		}
	}
}

// handshake runs a TLS handshake between a server and a client config over
// a loopback TCP connection and returns the two sides' errors.
func handshake(t *testing.T, srv, cli *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		if err == nil {
			// TLS 1.3 verifies the client's certificate after the client's
			// handshake returns: read so that a refusal reaches the client.
			_, err = tc.Write([]byte("ok"))
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, cli)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	clientErr = tc.Handshake()
	if clientErr == nil {
		buf := make([]byte, 2)
		_, clientErr = io.ReadFull(tc, buf)
	}
	return <-done, clientErr
}

func mustCreds(t *testing.T, ca *CA, id Identity) *Credentials {
	t.Helper()
	c, err := ca.Credentials(id, LocalHosts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMutualTLSIdentities(t *testing.T) {
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	w1 := Identity{RoleWorker, "w1"}
	w2 := Identity{RoleWorker, "w2"}
	fe := Identity{RoleFrontend, "fe1"}
	srv := mustCreds(t, ca, w1)
	cli := mustCreds(t, ca, fe)

	if se, ce := handshake(t, srv.ServerConfig(AnyRole(RoleFrontend)), cli.ClientConfig(Is(w1))); se != nil || ce != nil {
		t.Fatalf("a front end dialling worker w1: server %v, client %v", se, ce)
	}
	// The client expects w2 at this address: the server's certificate
	// (w1) is refused, whatever its host names.
	if _, ce := handshake(t, srv.ServerConfig(nil), cli.ClientConfig(Is(w2))); ce == nil || !strings.Contains(ce.Error(), "want worker/w2") {
		t.Fatalf("dialling w2 and meeting w1: client error %v", ce)
	}
	// A client certificate from another CA is refused by the server.
	stranger := mustCreds(t, other, fe)
	if se, _ := handshake(t, srv.ServerConfig(nil), stranger.ClientConfig(Is(w1))); se == nil {
		t.Fatal("a client of another CA was accepted")
	}
	// ... and a server of another CA by the client.
	if _, ce := handshake(t, mustCreds(t, other, w1).ServerConfig(nil), cli.ClientConfig(Is(w1))); ce == nil {
		t.Fatal("a server of another CA was accepted")
	}
	// A client without a certificate.
	anon := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	if se, _ := handshake(t, srv.ServerConfig(nil), anon); se == nil {
		t.Fatal("a client without a certificate was accepted")
	}
	// The server's matcher refuses a role it does not serve.
	if se, _ := handshake(t, srv.ServerConfig(AnyRole(RoleCoordinator)), cli.ClientConfig(Is(w1))); se == nil || !strings.Contains(se.Error(), "frontend/fe1") {
		t.Fatalf("a front end at a coordinator-only server: %v", se)
	}
}

func TestLoadNeedsAllThreeAndAChainToTheCA(t *testing.T) {
	if c, err := Load(Files{}); c != nil || err != nil {
		t.Fatalf("no files: %v, %v", c, err)
	}
	if _, err := Load(Files{Cert: "x"}); err == nil || !strings.Contains(err.Error(), "--tls-key, --tls-ca") {
		t.Fatalf("only --tls-cert: %v", err)
	}
	dir := t.TempDir()
	if err := WriteDevCA(dir, DevCA{Workers: 2, Frontends: 1}); err != nil {
		t.Fatal(err)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	c, err := Load(Files{Cert: f("w2.crt"), Key: f("w2.key"), CA: f("ca.crt")})
	if err != nil || c.Self != (Identity{RoleWorker, "w2"}) {
		t.Fatalf("w2: %v, %v", c, err)
	}
	if st, _ := os.Stat(f("w2.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", st.Mode())
	}
	// A second run keeps the CA: the first run's certificates stay valid.
	before, _ := os.ReadFile(f("ca.crt"))
	if err := WriteDevCA(dir, DevCA{Workers: 3, Frontends: 1}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f("ca.crt"))
	if string(before) != string(after) {
		t.Fatal("WriteDevCA replaced an existing CA")
	}
	// A certificate of another CA does not load against this CA.
	odir := t.TempDir()
	if err := WriteDevCA(odir, DevCA{Workers: 1, Frontends: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(Files{Cert: filepath.Join(odir, "w1.crt"), Key: filepath.Join(odir, "w1.key"), CA: f("ca.crt")}); err == nil {
		t.Fatal("a certificate of another CA loaded")
	}
	// Mismatched key.
	if _, err := Load(Files{Cert: f("w1.crt"), Key: f("w2.key"), CA: f("ca.crt")}); err == nil {
		t.Fatal("a certificate with another's key loaded")
	}
}

func TestNoCertificateNoIdentity(t *testing.T) {
	if _, err := PeerIdentity(tls.ConnectionState{}); err == nil {
		t.Fatal("no certificate: no error")
	}
	var nilCreds *Credentials
	if nilCreds.ServerConfig(nil) != nil || nilCreds.ClientConfig(nil) != nil || nilCreds.EtcdClientConfig() != nil {
		t.Fatal("nil credentials made a TLS config")
	}
}
