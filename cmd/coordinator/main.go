// Command coordinator runs a Switchyard coordinator: it campaigns for
// leadership of a cluster in etcd and, while leading, places every
// registered model's experts on the registered workers, re-placing them as
// workers join and leave. Several coordinators may run; one leads.
//
// With no --etcd endpoints it starts an embedded single-node etcd (the
// default, one-machine setup) that workers and `switchyard status` reach at
// --listen-client-urls.
//
// Stdout carries only machine-readable lines (scripts rely on them):
//
//	coordinator: etcd=<endpoints, comma-separated> cluster=<name> name=<coordinator> model=<fingerprint or -> grpc=<host:port or ->
//	coordinator: leader=true name=<coordinator>     (and leader=false when it stops leading)
//
// The first line appears once etcd serves and --model is registered. Logs
// go to stderr. SIGINT or SIGTERM resigns leadership, closes etcd and exits
// with status 0.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/switchyard/switchyard/internal/authflags"
	"github.com/switchyard/switchyard/internal/coordinator"
	"github.com/switchyard/switchyard/internal/embedetcd"
	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/internal/quantflag"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/membership"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/tensor"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type options struct {
	etcd        string
	dataDir     string
	clientURLs  string
	peerURLs    string
	clusterName string
	modelDir    string
	elemBytes   int
	quantize    tensor.QFormat
	replicas    int
	expect      int
	grace       time.Duration
	migWait     time.Duration
	name        string
	sessionTTL  time.Duration
	probeEvery  time.Duration
	evictAfter  time.Duration
	gossipAddr  string
	grpcAddr    string
	httpAddr    string
	logLevel    string
	tls         auth.Files
	etcdRBAC    bool
}

func run(args []string, stdout, stderr io.Writer) int {
	var o options
	host, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:           "coordinator",
		Short:         "Leader-elected expert placement for a Switchyard cluster",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return serve(ctx, o, stdout, stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.etcd, "etcd", "", "etcd endpoints, comma-separated; empty starts an embedded single-node etcd")
	f.StringVar(&o.dataDir, "data-dir", "", "embedded etcd data directory (empty: a temporary one, deleted on exit)")
	f.StringVar(&o.clientURLs, "listen-client-urls", "http://127.0.0.1:2379", "embedded etcd client URL (port 0 picks a free port; the chosen one is printed)")
	f.StringVar(&o.peerURLs, "listen-peer-urls", "http://127.0.0.1:2380", "embedded etcd peer URL (port 0 allowed)")
	f.StringVar(&o.clusterName, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix)")
	f.StringVar(&o.modelDir, "model", "", "model folder (config.json) to register and place")
	f.IntVar(&o.elemBytes, "elem-bytes", 4, "bytes per weight element as workers hold them (4: float32, 2: bf16)")
	f.Var(quantflag.Value(&o.quantize), "quantize", "workers hold the routed experts quantized: int8 or q4 (placement is sized for it; start the workers with the same --quantize)")
	f.IntVar(&o.replicas, "replicas", 1, "copies of each expert on distinct workers")
	f.IntVar(&o.expect, "expect-workers", 0, "place a model that has no placement yet only once this many of its workers registered (or --placement-grace passed); 0: at once")
	f.DurationVar(&o.grace, "placement-grace", coordinator.DefaultPlacementGrace, "longest wait for --expect-workers after becoming leader")
	f.DurationVar(&o.migWait, "migration-wait", coordinator.DefaultMigrationWait, "make-before-break: keep moved experts' old copies until the new owners report them loaded, at most this long; 0: drop them at once")
	f.StringVar(&o.name, "name", fmt.Sprintf("%s-%d", host, os.Getpid()), "this coordinator's name in the election")
	f.DurationVar(&o.sessionTTL, "session-ttl", coordinator.DefaultSessionTTL, "leader lease TTL: a killed leader is replaced within it; the leader keeps its term through etcd stalls the lease outlives (10s rides through etcd's own leader changes)")
	f.DurationVar(&o.probeEvery, "probe-interval", coordinator.DefaultProbeInterval, "how often the leader asks each worker for its health")
	f.DurationVar(&o.evictAfter, "evict-after", coordinator.DefaultEvictAfter, "revoke the lease of a worker that answered no health probe for this long while others answered (0: no probes; a worker is gone when its lease runs out)")
	f.StringVar(&o.gossipAddr, "gossip-addr", "", "join the workers' gossip at this host:port for early failure hints (empty: off)")
	f.StringVar(&o.httpAddr, "http", "", "serve Prometheus metrics (/metrics) and the cluster dashboard (/dashboard/) over plain HTTP on this host:port (port 0: a free one; empty: off)")
	f.StringVar(&o.grpcAddr, "grpc", "", "serve the read-only Coordinator gRPC service (Status, GetPlacement) on this host:port (port 0: a free one; empty: off)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	authflags.Register(f, &o.tls)
	f.BoolVar(&o.etcdRBAC, "etcd-rbac", false, "with TLS and an external --etcd whose authentication is off: create the Switchyard roles and users and turn it on (the embedded etcd always gets them)")
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(stderr, "coordinator:", err)
		return 1
	}
	return 0
}

func serve(ctx context.Context, o options, stdout, stderr io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	lg := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if o.elemBytes != 2 && o.elemBytes != 4 {
		return fmt.Errorf("--elem-bytes %d: want 4 or 2", o.elemBytes)
	}
	if o.probeEvery <= 0 || o.evictAfter < 0 {
		return fmt.Errorf("--probe-interval %v, --evict-after %v: want > 0, >= 0", o.probeEvery, o.evictAfter)
	}
	if o.expect < 0 || o.grace <= 0 || o.migWait < 0 {
		return fmt.Errorf("--expect-workers %d, --placement-grace %v, --migration-wait %v: want >= 0, > 0, >= 0", o.expect, o.grace, o.migWait)
	}
	migWait := o.migWait
	if migWait == 0 {
		migWait = -1 // coordinator.Config: negative turns make-before-break off
	}
	creds, err := auth.Load(o.tls)
	if err != nil {
		return err
	}
	scheme := "http://"
	if creds != nil {
		if creds.Self.Role != auth.RoleCoordinator {
			return fmt.Errorf("--tls-cert is for %s; a coordinator needs a coordinator/<name> certificate", creds.Self)
		}
		scheme = "https://"
	}

	endpoints := registry.SplitEndpoints(o.etcd)
	if len(endpoints) == 0 {
		cfg := embedetcd.DefaultConfig()
		cfg.Name = o.name
		cfg.Dir = o.dataDir
		cfg.ClientURL = withScheme(o.clientURLs, scheme)
		cfg.PeerURL = withScheme(o.peerURLs, scheme)
		// With TLS the embedded etcd serves with this coordinator's
		// certificate and requires client certificates of the same CA.
		cfg.TLS = o.tls
		srv, err := embedetcd.Start(ctx, cfg)
		if err != nil {
			return err
		}
		defer srv.Close() // last: after the client and its watches
		endpoints = srv.Endpoints()
		lg.Info("embedded etcd serving", "endpoints", endpoints, "data-dir", srv.Dir())
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cli, err := registry.DialTLS(dctx, endpoints, creds)
	cancel()
	if err != nil {
		return err
	}
	defer cli.Close()
	reg, err := registry.New(cli, o.clusterName)
	if err != nil {
		return err
	}
	if creds != nil {
		// Role-based access in etcd: only coordinators may write
		// placements (see registry.EnableRBAC). The embedded etcd is set up
		// at its first start; an external one with --etcd-rbac (or by its
		// administrator).
		if len(registry.SplitEndpoints(o.etcd)) == 0 || o.etcdRBAC {
			if err := reg.EnableRBAC(ctx); err != nil {
				return err
			}
		}
		// The gossip key exists before any worker asks for it (workers
		// may read it, not create it).
		if _, err := reg.GossipKey(ctx); err != nil {
			return err
		}
	}

	fp := "-"
	if o.modelDir != "" {
		rec, err := registry.ModelRecordFromDir(o.modelDir, o.elemBytes)
		if err != nil {
			return err
		}
		if o.quantize != tensor.QNone {
			cfg, err := model.LoadConfig(o.modelDir)
			if err != nil {
				return err
			}
			rec.SetQuantize(cfg, o.quantize)
		}
		if err := reg.PutModel(ctx, rec); err != nil {
			return err
		}
		fp = rec.Fingerprint
		lg.Info("model registered", "fingerprint", fp, "path", rec.Path, "moe_layers", len(rec.MoELayers),
			"experts", rec.Experts, "expert_bytes", rec.ExpertBytes, "dense_bytes", rec.DenseBytes)
	}

	var gossip *membership.Node
	if o.gossipAddr != "" {
		gcfg := membership.DefaultConfig("coordinator/" + o.name)
		host, port, err := splitHostPort(o.gossipAddr)
		if err != nil {
			return fmt.Errorf("--gossip-addr: %w", err)
		}
		gcfg.BindAddr, gcfg.BindPort = host, port
		gcfg.Meta = membership.Meta{Protocol: cluster.ProtocolVersion, Role: "coordinator"}
		if creds != nil {
			if gcfg.SecretKey, err = reg.GossipKey(ctx); err != nil {
				return err
			}
		}
		if gossip, err = membership.Start(gcfg); err != nil {
			return err
		}
		defer gossip.Shutdown()
		lg.Info("gossip", "addr", gossip.Addr())
	}

	var probe coordinator.Prober
	if o.evictAfter > 0 {
		hp := coordinator.NewHealthProbe(creds)
		defer hp.Close()
		probe = hp
	}
	c, err := coordinator.New(coordinator.Config{
		Probe:         probe,
		ProbeInterval: o.probeEvery,
		EvictAfter:    o.evictAfter,
		Registry:      reg,
		Name:          o.name,
		SessionTTL:    o.sessionTTL,
		Replicas:      o.replicas,
		Gossip:        gossip,
		Logger:        lg,

		ExpectWorkers:  o.expect,
		PlacementGrace: o.grace,
		MigrationWait:  migWait,
	})
	if err != nil {
		return err
	}
	grpcShown := "-"
	if o.grpcAddr != "" {
		lis, err := net.Listen("tcp", o.grpcAddr)
		if err != nil {
			return fmt.Errorf("--grpc: %w", err)
		}
		var opts []grpc.ServerOption
		if creds != nil {
			// Any identity of the cluster's CA may read the status.
			opts = append(opts, grpc.Creds(creds.ServerCreds(nil)))
		}
		gs := grpc.NewServer(opts...)
		pb.RegisterCoordinatorServer(gs, &coordinator.Service{Registry: reg, Name: o.name})
		go gs.Serve(lis)
		defer gs.Stop()
		grpcShown = lis.Addr().String()
		lg.Info("coordinator gRPC service", "addr", grpcShown)
	}
	if o.httpAddr != "" {
		url, stop, err := serveHTTP(ctx, o.httpAddr, c, reg)
		if err != nil {
			return fmt.Errorf("--http: %w", err)
		}
		defer stop()
		lg.Info("coordinator HTTP: metrics and dashboard", "url", url)
		fmt.Fprintf(stdout, "coordinator: http=%s\n", url)
	}
	fmt.Fprintf(stdout, "coordinator: etcd=%s cluster=%s name=%s model=%s grpc=%s\n", strings.Join(endpoints, ","), reg.Cluster(), o.name, fp, grpcShown)

	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	// The job scheduler runs beside the placement coordinator; every
	// coordinator runs one (its writes are compare-and-swap).
	go (&jobs.Scheduler{Jobs: jobs.NewStore(cli, reg.Cluster()), Registry: reg, Log: lg}).Run(ctx)
	for {
		leading, changed := c.Leading()
		select {
		case <-changed:
			if now, _ := c.Leading(); now != leading {
				fmt.Fprintf(stdout, "coordinator: leader=%v name=%s\n", now, o.name)
			}
		case err := <-done:
			if err != nil {
				return err
			}
			if gossip != nil {
				gossip.Leave(time.Second)
			}
			lg.Info("stopped", "cause", context.Cause(ctx))
			return nil
		}
	}
}

// withScheme adds scheme ("http://" or "https://") to a URL given as
// host:port; "http://" given explicitly becomes https:// under TLS (the
// flags' defaults are http), anything else stays as given.
func withScheme(u, scheme string) string {
	if scheme == "https://" && strings.HasPrefix(u, "http://") {
		return "https://" + strings.TrimPrefix(u, "http://")
	}
	if strings.Contains(u, "://") {
		return u
	}
	return scheme + u
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port of %q: %w", s, err)
	}
	return host, port, nil
}
