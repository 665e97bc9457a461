// Package embedetcd runs a single-node etcd inside the calling process
// (go.etcd.io/etcd/server/v3/embed), the default control store of a
// Switchyard cluster when no external etcd endpoints are given.
//
// Usage:
//
//	srv, err := embedetcd.Start(ctx, embedetcd.DefaultConfig())
//	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints()})
//	...
//	cli.Close() // clients first, especially ones with open watches
//	srv.Close()
//
// Close clients (above all ones with open watches) before the server: the
// server waits for their streams to drain and Close then takes ~7 s.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/switchyard/switchyard/pkg/auth"
)

// Config configures the embedded server. The zero value is not usable; start
// from DefaultConfig or TestConfig and override fields.
type Config struct {
	// Name is the member name, also used in the initial cluster string.
	Name string
	// Dir is the data directory. Empty means a fresh temporary directory
	// under TempParent() that Close removes (nothing survives a restart);
	// it is locked for the server's life, and one left by a killed
	// process is removed by the next Start with an empty Dir (see
	// tempdir.go).
	Dir string
	// ClientURL is where clients connect, e.g. "http://127.0.0.1:2379".
	// Port 0 picks a free port; Server.Endpoints reports the real one.
	ClientURL string
	// PeerURL is the raft peer listener. A single node never dials it, but
	// etcd requires one; port 0 picks a free port.
	PeerURL string
	// TickMs is the raft heartbeat interval and ElectionMs the election
	// timeout, in milliseconds. The minimum lease TTL etcd grants is
	// 1.5 x ElectionMs (rounded up to whole seconds).
	TickMs, ElectionMs uint
	// StartTimeout bounds how long Start waits for the server to be ready
	// (in addition to the caller's context).
	StartTimeout time.Duration
	// LogLevel of etcd's zap logger: "debug", "info", "warn" or "error".
	LogLevel string
	// CompactionRetention, if non-zero, compacts history older than this
	// period (etcd's periodic auto-compaction), so worker stats and lease
	// churn do not grow the database forever. Zero disables it.
	CompactionRetention time.Duration
	// UnsafeNoFsync skips fsync: faster, loses data on power failure. For
	// tests.
	UnsafeNoFsync bool
	// InitialCluster, when set, makes the server one member of a cluster
	// of several: "name1=peerURL1,name2=peerURL2,..." (etcd's
	// --initial-cluster, this member's Name and PeerURL among them; peer
	// ports must be fixed). Empty: a single-node cluster.
	InitialCluster string
	// ClusterState is "new" (default) to form InitialCluster, or
	// "existing" for a member that joins a running cluster.
	ClusterState string
	// TLS, when set, serves clients and peers over TLS only (ClientURL and
	// PeerURL must be https://) and requires client certificates chaining
	// to TLS.CA on both (etcd's --client-cert-auth and
	// --peer-client-cert-auth). The certificate must name the hosts clients
	// dial (etcd clients check host names). Zero: plaintext.
	TLS auth.Files
}

// DefaultConfig is a production-leaning single node on the standard ports:
// clients on 127.0.0.1:2379, peers on 127.0.0.1:2380, etcd's own timing
// (100 ms heartbeat, 1 s election timeout), quiet logs (errors only), one
// hour of history kept, a temporary data directory.
func DefaultConfig() Config {
	return Config{
		Name:                "switchyard",
		ClientURL:           "http://127.0.0.1:2379",
		PeerURL:             "http://127.0.0.1:2380",
		TickMs:              100,  // etcd default heartbeat
		ElectionMs:          1000, // etcd default election timeout; min lease TTL 2 s
		StartTimeout:        30 * time.Second,
		LogLevel:            "error",
		CompactionRetention: time.Hour,
	}
}

// TestConfig is DefaultConfig on free ports, with fast raft timing (10 ms
// ticks, 100 ms election: starts in tens of milliseconds and allows 1 s
// lease TTLs) and no fsync. dir may be empty (a temporary directory).
func TestConfig(dir string) Config {
	c := DefaultConfig()
	c.Dir = dir
	c.ClientURL = "http://127.0.0.1:0"
	c.PeerURL = "http://127.0.0.1:0"
	c.TickMs = 10
	c.ElectionMs = 100
	c.StartTimeout = 10 * time.Second
	c.CompactionRetention = 0
	c.UnsafeNoFsync = true
	return c
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	tmp       *tempDir // Dir was empty: our locked temporary directory
	tmpDir    string   // fallback temporary directory (TempParent unusable)
	reclaimed []string
	closeOnce sync.Once
	closing   atomic.Bool // silences shutdown noise in the logger
}

// Start launches the server and waits until it serves. The context bounds
// the wait (as does cfg.StartTimeout); on failure nothing is left running.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	var errs []error
	if cfg.Name == "" {
		errs = append(errs, errors.New("empty Name"))
	}
	curl, err := url.Parse(cfg.ClientURL)
	if err != nil || curl.Host == "" {
		errs = append(errs, fmt.Errorf("ClientURL %q: want scheme://host:port (%v)", cfg.ClientURL, err))
	}
	purl, err := url.Parse(cfg.PeerURL)
	if err != nil || purl.Host == "" {
		errs = append(errs, fmt.Errorf("PeerURL %q: want scheme://host:port (%v)", cfg.PeerURL, err))
	}
	if cfg.TLS.Configured() {
		if cfg.TLS.Cert == "" || cfg.TLS.Key == "" || cfg.TLS.CA == "" {
			errs = append(errs, errors.New("TLS needs a certificate, a key and a CA"))
		}
		if (curl != nil && curl.Scheme != "https") || (purl != nil && purl.Scheme != "https") {
			errs = append(errs, fmt.Errorf("TLS is configured: ClientURL %q and PeerURL %q must be https://", cfg.ClientURL, cfg.PeerURL))
		}
	} else if (curl != nil && curl.Scheme == "https") || (purl != nil && purl.Scheme == "https") {
		errs = append(errs, errors.New("https:// URLs need TLS certificates"))
	}
	if cfg.TickMs == 0 || cfg.ElectionMs < 5*cfg.TickMs {
		errs = append(errs, fmt.Errorf("TickMs %d, ElectionMs %d: want TickMs > 0 and ElectionMs >= 5 x TickMs", cfg.TickMs, cfg.ElectionMs))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("embedetcd: %w", err)
	}

	s := &Server{}
	dir := cfg.Dir
	if dir == "" {
		td, reclaimed, terr := newTempDir()
		s.reclaimed = reclaimed
		if terr == nil {
			s.tmp, dir = td, td.data
		} else {
			// TempParent is unusable (e.g. another user's): a plain
			// temporary directory, removed by Close but not reclaimed
			// after a crash.
			if dir, err = os.MkdirTemp("", "switchyard-etcd-"); err != nil {
				return nil, fmt.Errorf("embedetcd: %w (and %s: %v)", err, TempParent(), terr)
			}
			s.tmpDir = dir
		}
	}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = dir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	if cfg.InitialCluster != "" {
		ec.InitialCluster = cfg.InitialCluster
		ec.InitialClusterToken = "switchyard"
	}
	if cfg.ClusterState != "" {
		ec.ClusterState = cfg.ClusterState
	}
	ec.TickMs = cfg.TickMs
	ec.ElectionMs = cfg.ElectionMs
	// Clients ping every registry.KeepAliveTime (1 s) to notice a dead
	// member within a session TTL; etcd's default minimum (5 s) would
	// answer pings that frequent on an idle connection with GOAWAY, and a
	// minimum equal to the interval would count a slightly early ping as
	// a strike.
	ec.GRPCKeepAliveMinTime = 500 * time.Millisecond
	ec.Logger = "zap"
	ec.LogLevel = cfg.LogLevel
	if ec.LogLevel == "" {
		ec.LogLevel = "error"
	}
	lg, err := newLogger(ec.LogLevel, &s.closing)
	if err != nil {
		s.removeTmp()
		return nil, fmt.Errorf("embedetcd: LogLevel %q: %w", ec.LogLevel, err)
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	if cfg.TLS.Configured() {
		ti := transport.TLSInfo{CertFile: cfg.TLS.Cert, KeyFile: cfg.TLS.Key, TrustedCAFile: cfg.TLS.CA, ClientCertAuth: true}
		ec.ClientTLSInfo = ti
		ec.PeerTLSInfo = ti
		ec.ClientAutoTLS, ec.PeerAutoTLS = false, false
	}
	if cfg.CompactionRetention > 0 {
		ec.AutoCompactionMode = embed.CompactorModePeriodic
		ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		s.removeTmp()
		return nil, fmt.Errorf("embedetcd: start in %s: %w", dir, err)
	}
	s.etcd = e
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		s.Close()
		return nil, fmt.Errorf("embedetcd: start in %s: %w", dir, err)
	case <-timer.C:
		s.Close()
		return nil, fmt.Errorf("embedetcd: not ready after %v (data dir %s)", timeout, dir)
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("embedetcd: start: %w", ctx.Err())
	}
	for _, l := range e.Clients {
		s.endpoints = append(s.endpoints, curl.Scheme+"://"+l.Addr().String())
	}
	return s, nil
}

// Endpoints are the client URLs with the real bound ports, e.g.
// ["http://127.0.0.1:40321"].
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Reclaimed lists the temporary data directories of dead servers (killed
// without Close) that Start removed, as absolute paths; nil when Dir was
// set or there were none.
func (s *Server) Reclaimed() []string { return append([]string(nil), s.reclaimed...) }

// Dir is the data directory in use.
func (s *Server) Dir() string { return s.etcd.Config().Dir }

// Err reports fatal server errors after Start; it is closed when the server
// stops.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the server and removes a temporary data directory (with its
// lock). Close
// clients with open watches first (see the package comment). It is safe to
// call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		if s.etcd != nil {
			s.etcd.Close()
		}
		s.removeTmp()
	})
}

func (s *Server) removeTmp() {
	if s.tmp != nil {
		s.tmp.release()
		s.tmp = nil
	}
	if s.tmpDir != "" {
		os.RemoveAll(s.tmpDir)
		s.tmpDir = ""
	}
}
