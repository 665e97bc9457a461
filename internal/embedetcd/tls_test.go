package embedetcd

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/pkg/auth"
)

// TestTLSRequiresClientCertificates: with Config.TLS the embedded etcd
// serves https only and answers only clients with a certificate of its CA.
func TestTLSRequiresClientCertificates(t *testing.T) {
	dir, odir := t.TempDir(), t.TempDir()
	if err := auth.WriteDevCA(dir, auth.DevCA{Workers: 1, Frontends: 1}); err != nil {
		t.Fatal(err)
	}
	if err := auth.WriteDevCA(odir, auth.DevCA{Workers: 1, Frontends: 1}); err != nil {
		t.Fatal(err)
	}
	files := func(d, name string) auth.Files {
		return auth.Files{Cert: filepath.Join(d, name+".crt"), Key: filepath.Join(d, name+".key"), CA: filepath.Join(d, "ca.crt")}
	}
	cfg := TestConfig(t.TempDir())
	cfg.TLS = files(dir, "coordinator")
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "https://") {
		t.Fatalf("TLS with http:// URLs: %v", err)
	}
	cfg.ClientURL, cfg.PeerURL = "https://127.0.0.1:0", "https://127.0.0.1:0"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ep := srv.Endpoints()
	if !strings.HasPrefix(ep[0], "https://127.0.0.1:") {
		t.Fatalf("endpoints %v", ep)
	}
	try := func(tc *tls.Config, eps []string) error {
		cli, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: tc, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer cli.Close()
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		_, err = cli.Put(pctx, "/k", "v")
		return err
	}
	load := func(f auth.Files) *auth.Credentials {
		c, err := auth.Load(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	w1 := load(files(dir, "w1"))
	if err := try(w1.EtcdClientConfig(), ep); err != nil {
		t.Fatalf("a worker of the CA: %v", err)
	}
	// No client certificate (the server is trusted): refused.
	noCert := w1.EtcdClientConfig()
	noCert.Certificates = nil
	if err := try(noCert, ep); err == nil {
		t.Fatal("a client without a certificate wrote to etcd")
	}
	// A certificate of another CA: refused.
	stranger := load(files(odir, "w1"))
	st := stranger.EtcdClientConfig()
	st.RootCAs = w1.EtcdClientConfig().RootCAs // it trusts the server, the server does not trust it
	if err := try(st, ep); err == nil {
		t.Fatal("a client of another CA wrote to etcd")
	}
	// Plaintext to the TLS port: refused.
	if err := try(nil, []string{strings.Replace(ep[0], "https://", "http://", 1)}); err == nil {
		t.Fatal("a plaintext client wrote to etcd")
	}
}
