package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/internal/authflags"
	"github.com/switchyard/switchyard/internal/computeflag"
	"github.com/switchyard/switchyard/internal/dashboard"
	"github.com/switchyard/switchyard/internal/frontend"
	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/internal/quantflag"
	"github.com/switchyard/switchyard/internal/serve"
	"github.com/switchyard/switchyard/internal/tracing"
	"github.com/switchyard/switchyard/internal/workercmd"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/tokenizer"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/transport"
)

// serveOptions is what `switchyard serve` (and quickstart) run.
type serveOptions struct {
	ModelDir  string
	Tokenizer string // tokenizer.json (default ModelDir/tokenizer.json)
	// Workers is the number of local worker processes the routed experts
	// are placed on; 0 runs them in this process.
	Workers int
	// Etcd and Cluster, when Etcd is set, join a running cluster instead:
	// no etcd and no workers are started; the experts are served by the
	// workers registered there (on any host).
	Etcd    []string
	Cluster string
	// WorkerMem, when > 0, is a hard memory limit for each local worker:
	// each runs in a memory cgroup of its own with that limit
	// (localcluster.Options.WorkerMemCap; --mem where cgroups cannot be
	// made). 0: the workers read their cgroup's limit.
	WorkerMem int64
	// Replicas is the coordinator's R on the embedded default (copies of
	// each expert on distinct local workers).
	Replicas int
	// Quantize holds the routed experts in this format (loaded and
	// quantized by whoever holds them: this process, or the local workers).
	// Joining a cluster (Etcd), it must match the model record's.
	Quantize tensor.QFormat
	// Overlap runs each step of 2+ sequences as two overlapped
	// micro-batches (serve.FromModelOverlapped); only with remote experts.
	Overlap bool
	// Trace sends OpenTelemetry spans to a file or collector (off when
	// empty); local workers get the same flags.
	Trace tracing.Config
	// TLS are the front end's certificate files with Etcd (--tls-*): etcd
	// and the expert connections become mutual TLS. The embedded default
	// (Workers) runs plaintext on loopback and refuses them.
	TLS auth.Files
	// APICert and APIKeyPEM (--api-tls-cert, --api-tls-key), when set,
	// serve the OpenAI API over HTTPS (TLS 1.2+) with that certificate:
	// what the API's callers see, unrelated to the cluster's mutual TLS.
	APICert, APIKeyPEM string
	Listen             string        // host:port; port 0 picks a free one
	Grace              time.Duration // how long in-flight requests may finish after a signal
	Serve              serve.Config  // ModelName empty: ModelDir as given (as vLLM names models)
	Stderr             io.Writer
	Prefix             string // of every line printed ("serve")
	// OnReady, if set, runs in its own goroutine once the API answers, with
	// the base URL (http://host:port) and a context that ends when shutdown
	// begins. It may call stop to shut the server down as a signal would.
	// runServe returns only after OnReady has.
	OnReady func(ctx context.Context, url string, stop func())
}

func serveCmd() *cobra.Command {
	o := serveOptions{Serve: serve.DefaultConfig(""), Prefix: "serve"}
	var etcd, workerMem string
	var keys apiKeyFlags
	cmd := &cobra.Command{
		Use:   "serve --model DIR [--workers N | --etcd URLS --cluster NAME] [--listen ADDR]",
		Short: "Serve a model over the OpenAI-compatible HTTP API, experts on workers",
		Long: `serve keeps the model's dense weights (embeddings, attention, norms, routers,
shared experts, lm_head) in this process, sends each MoE layer's token rows to
the workers that hold the routed experts, and serves the OpenAI-compatible API.

Two ways to run it:

  serve --model DIR --workers N        the embedded default: starts an embedded
                                       etcd, a coordinator and N local worker
                                       processes (this binary's worker command)
  serve --model DIR --etcd URLS --cluster NAME
                                       a front end joining a running cluster:
                                       starts no etcd and no workers; follows
                                       the leader's placement for the model in
                                       etcd and sends rows to the workers
                                       registered there, on any host. Several
                                       front ends may serve one cluster.

The API:

  GET  /v1/models
  POST /v1/completions        (stream: true for Server-Sent Events)
  POST /v1/chat/completions   (messages rendered with the model's chat template
                               from tokenizer_config.json, as transformers'
                               apply_chat_template does; without one,
                               "role: content" lines)
  GET  /health                (200 while every expert has a serving copy;
                               503 naming what is missing otherwise)
  GET  /metrics               (Prometheus)

With --api-key KEY (repeatable), --api-key-file FILE or $SWITCHYARD_API_KEY
(comma-separated; used when neither flag is given), /v1/* needs
"Authorization: Bearer KEY" with any one of the keys (401 invalid_api_key
otherwise); /health and /metrics stay open unless --auth-health or
--auth-metrics. Slow clients are cut (request headers 10 s, whole request
60 s, each write of an answer 30 s, idle connections 120 s), and at most
--max-conns connections are open at once.

Requests are batched continuously: up to --max-seqs sequences advance together,
one model step each, and new requests join between steps; up to --max-queue
more wait, and beyond that requests get 429. A step feeds at most
--max-step-tokens tokens, one to each decoding sequence first, so a long prompt
is prefilled in chunks over several steps instead of stalling the others.
--workers 0 runs the experts in this process (no etcd, no workers). One line on
stderr says when it is ready, with the URL. A worker that dies is reported at
once; its experts' other copies (--replicas on the coordinator) serve the
rows of calls in flight. Requests routed to experts with no live copy fail
with 503, naming them. A placement that cannot be made (too little worker
memory) is reported within seconds with the shortfall. SIGINT/SIGTERM stop accepting
requests, let in-flight ones finish for up to --shutdown-grace (then cut them
short), and stop the workers and etcd.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o.Stderr = cmd.ErrOrStderr()
			o.Etcd = registry.SplitEndpoints(etcd)
			if len(o.Etcd) > 0 && cmd.Flags().Changed("workers") {
				return errors.New("serve: --workers starts local workers; --etcd joins a running cluster: give one")
			}
			if len(o.Etcd) == 0 && o.TLS.Configured() {
				return errors.New("serve: --tls-* secure a front end joining a cluster (--etcd); the embedded default (--workers) runs plaintext on loopback")
			}
			apiKeys, err := keys.resolve(os.Getenv(apiKeyEnv))
			if err != nil {
				return fmt.Errorf("serve: %w", err)
			}
			o.Serve.APIKeys = apiKeys
			if workerMem != "auto" {
				var err error
				if o.WorkerMem, err = workercmd.ParseBytes(workerMem); err != nil {
					return fmt.Errorf("serve: --worker-mem: %w", err)
				}
			}
			return runServe(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ModelDir, "model", "", "model folder (config.json, *.safetensors, tokenizer.json)")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer.json to use (default MODEL/tokenizer.json); its tokenizer_config.json, if any, gives the chat template")
	f.StringVar(&o.Serve.ModelName, "served-model-name", "", `the model's name in the API (default: --model as given)`)
	f.IntVar(&o.Workers, "workers", 1, "local worker processes holding the routed experts (0: experts in this process)")
	f.StringVar(&etcd, "etcd", "", "join the running cluster at these etcd endpoints (comma-separated); starts no etcd and no workers")
	f.StringVar(&o.Cluster, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix) with --etcd")
	f.StringVar(&workerMem, "worker-mem", "auto", "hard memory limit of each local worker, e.g. 2GiB: each runs in a memory cgroup of its own with it (passed as --mem if cgroups cannot be made); auto: no cgroup of their own, they read this process's")
	f.IntVar(&o.Replicas, "replicas", 1, "copies of each expert on distinct local workers (embedded default)")
	f.Var(quantflag.Value(&o.Quantize), "quantize", quantflag.Usage+" (with --etcd: the cluster's format, checked)")
	computeflag.Register(f)
	keys.register(cmd)
	f.BoolVar(&o.Serve.AuthHealth, "auth-health", false, "require an API key on /health too (default: open, for probes)")
	f.BoolVar(&o.Serve.AuthMetrics, "auth-metrics", false, "require an API key on /metrics too (default: open, for scrapers)")
	f.StringVar(&o.APICert, "api-tls-cert", "", "serve the API over HTTPS with this certificate (PEM; with --api-tls-key)")
	f.StringVar(&o.APIKeyPEM, "api-tls-key", "", "the private key of --api-tls-cert (PEM)")
	f.IntVar(&o.Serve.MaxConns, "max-conns", o.Serve.MaxConns, "most open HTTP connections (idle keep-alive ones included); more wait to be accepted")
	f.BoolVar(&o.Overlap, "overlap", false, "two-micro-batch overlap: one half of a step's sequences computes attention while the other waits for its experts (remote experts only)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8000", "HTTP address (port 0: a free port)")
	tracing.Register(f, &o.Trace)
	f.IntVar(&o.Serve.MaxSeqs, "max-seqs", o.Serve.MaxSeqs, "sequences generated together (one batch per step)")
	f.IntVar(&o.Serve.MaxQueue, "max-queue", o.Serve.MaxQueue, "requests that may wait for a free sequence slot; more get 429")
	f.IntVar(&o.Serve.MaxStepTokens, "max-step-tokens", o.Serve.MaxStepTokens, "token budget of a model step: one per decoding sequence, the rest to prompts, long ones in chunks (at least --max-seqs)")
	f.DurationVar(&o.Grace, "shutdown-grace", 10*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may finish")
	authflags.Register(f, &o.TLS)
	return cmd
}

// runServe loads the model, starts the local cluster (Workers > 0) and the
// API, and serves until ctx ends; then it shuts down gracefully.
func runServe(ctx context.Context, o serveOptions) error {
	p := o.Prefix
	logf := func(format string, args ...any) { fmt.Fprintf(o.Stderr, p+": "+format+"\n", args...) }
	if o.ModelDir == "" {
		return fmt.Errorf("%s: --model is required", p)
	}
	if o.Workers < 0 {
		return fmt.Errorf("%s: --workers %d must be >= 0", p, o.Workers)
	}
	if o.Serve.ModelName == "" {
		o.Serve.ModelName = o.ModelDir
	}
	tok, template, err := loadServeTokenizer(o.ModelDir, o.Tokenizer)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if err := template.Check(); err != nil { // before loading the model
		return fmt.Errorf("%s: %w", p, err)
	}
	o.Serve.ChatTemplate = template
	start := time.Now()
	// A Switchyard checkpoint's checksums are verified before any weight
	// is read (a folder without checksums.json, e.g. from the Hub, passes).
	if err := train.VerifyCheckpoint(o.ModelDir); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	ck, err := model.Open(o.ModelDir)
	if err != nil {
		return err
	}
	defer ck.Close()
	host, _ := os.Hostname()
	stopTracing, err := tracing.Setup(ctx, o.Trace, "switchyard-frontend", fmt.Sprintf("%s-%d", host, os.Getpid()))
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = stopTracing(sctx) // flush the spans still buffered
	}()
	local := o.Workers == 0 && len(o.Etcd) == 0
	m, err := ck.Load(model.LoadOptions{KeepBF16: true, Quantize: o.Quantize, Experts: func(expert.ID) bool { return local }})
	if err != nil {
		return err
	}
	logf("%s (%s, %d layers, context %d, vocabulary %d%s) loaded in %v",
		o.ModelDir, m.Cfg.Family, m.Cfg.Layers, m.Cfg.MaxPos, m.Cfg.Vocab, quantNote(o.Quantize), time.Since(start).Round(time.Millisecond))
	where := "experts in this process"
	var fe *frontend.Frontend
	switch {
	case len(o.Etcd) > 0:
		rec := registry.NewModelRecord(ck.Config, o.ModelDir, localcluster.ElemBytes(ck, true))
		rec.SetQuantize(ck.Config, o.Quantize)
		if fe, err = joinCluster(ctx, o, rec, logf); err != nil {
			return err
		}
		defer fe.Close()
		where = fmt.Sprintf("experts on the workers of cluster %q at %s", o.Cluster, strings.Join(o.Etcd, ","))
		// /health follows the placement; say when it first serves.
		go func() {
			if pl, err := fe.WaitServing(ctx, func(why error) { logf("not serving yet: %v", why) }, nil); err == nil {
				logf("serving: %s", describePlacement(pl))
			}
		}()
	case !local:
		lc, f, err := startServeCluster(ctx, o, logf)
		if err != nil {
			return err
		}
		fe = f
		defer func() {
			fe.Close()
			lc.Close()
			logf("workers and etcd stopped")
		}()
		go reportExits(ctx, lc, logf)
		where = fmt.Sprintf("experts on %d worker processes", o.Workers)
	}
	if fe != nil {
		m.Experts = fe.Executor
		o.Serve.Ready = fe.Ready
		o.Serve.Collectors = append(o.Serve.Collectors, fe.Collectors()...)
		// The cluster dashboard, read from the cluster's etcd; its loss
		// curves replay the jobs' history from etcd.
		col := dashboard.NewCollector(fe.Registry)
		go func() { _ = col.Run(ctx) }()
		o.Serve.Handlers = map[string]http.Handler{dashboard.Prefix: dashboard.Handler(col)}
	}
	var srvRef atomic.Pointer[serve.Server] // set once the server exists
	if fe == nil {
		// Experts in this process: no cluster to show, only this server's
		// traffic.
		o.Serve.Handlers = map[string]http.Handler{dashboard.Prefix: dashboard.Handler(localDashboard(&srvRef, o.Serve.ModelName))}
	}
	sm := serve.FromModel(m)
	if o.Overlap && fe != nil {
		sm = serve.FromModelOverlapped(m)
		where += ", two-micro-batch overlap"
	}
	srv, err := serve.New(sm, tok, o.Serve)
	if err != nil {
		return err
	}
	srvRef.Store(srv)
	var apiTLS *tls.Config
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("%s: %w", p, err)
	}
	scheme := "http://"
	if o.APICert != "" || o.APIKeyPEM != "" {
		if o.APICert == "" || o.APIKeyPEM == "" {
			ln.Close()
			srv.Close()
			return fmt.Errorf("%s: --api-tls-cert and --api-tls-key go together", p)
		}
		cert, err := tls.LoadX509KeyPair(o.APICert, o.APIKeyPEM)
		if err != nil {
			ln.Close()
			srv.Close()
			return fmt.Errorf("%s: --api-tls-cert/--api-tls-key: %w", p, err)
		}
		// The connection cap counts TCP connections (below); each TLS
		// handshake runs under the server's read timeouts.
		apiTLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
		scheme = "https://"
	}
	url := scheme + displayAddr(ln.Addr().(*net.TCPAddr))
	// Bounded reads (headers, and the body: at most 1 MiB), idle
	// keep-alives and connections, and a deadline on each write rather
	// than on a whole answer, since a stream writes for as long as it
	// generates (serve.Config's timeouts and MaxConns).
	hs := srv.HTTPServer()
	ln = srv.Listener(ln)
	if apiTLS != nil {
		hs.TLSConfig = apiTLS
		ln = tls.NewListener(ln, apiTLS)
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	logf("chat format: %s; up to %d sequences per step, %d more queued", srv.ChatFormat(), srv.Config().MaxSeqs, srv.Config().MaxQueue)
	logf("ready: %s (model %q, %s; OpenAI API under /v1, /health, /metrics, %s)", url, o.Serve.ModelName, where, dashboard.Prefix)

	sctx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	if fe != nil {
		// This front end's traffic, for dashboards and `switchyard top`
		// (registry.FrontendStats, under a lease of its own).
		go fe.Registry.PublishFrontend(sctx, fe.Name(), 2*time.Second, 10*time.Second, frontendStats(srv, fe.Model.Fingerprint), logf)
	}
	onReadyDone := make(chan struct{})
	if o.OnReady != nil {
		go func() {
			defer close(onReadyDone)
			o.OnReady(sctx, url, stopServing)
		}()
	} else {
		close(onReadyDone)
	}
	var serveErr error
	select {
	case <-sctx.Done():
	case serveErr = <-served:
	}
	logf("shutting down: no new requests; in-flight ones may finish for up to %v", o.Grace)
	gctx, cancel := context.WithTimeout(context.Background(), o.Grace)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Shutdown(gctx) }() // closes the listener now, then waits for the handlers
	if err := srv.Shutdown(gctx); err != nil {
		logf("in-flight requests cut short after %v", o.Grace)
	}
	select { // the handlers return once the scheduler has ended their requests
	case <-httpDone:
	case <-time.After(2 * time.Second):
		hs.Close()
	}
	stopServing()
	<-onReadyDone
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("%s: %w", p, serveErr)
	}
	return nil
}

// localDashboard is the dashboard's source when the experts run in this
// process: no workers, placement or jobs, this server's traffic as its
// one front end.
func localDashboard(srv *atomic.Pointer[serve.Server], name string) dashboard.Source {
	stats := func() registry.FrontendStats { return registry.FrontendStats{} }
	var once sync.Once
	return dashboard.SourceFunc(func(context.Context) (*dashboard.State, error) {
		s := srv.Load()
		if s == nil {
			return nil, errors.New("the server is starting")
		}
		once.Do(func() { stats = frontendStats(s, "") })
		f := stats()
		fs := dashboard.Serving{
			Name: name + " (experts in process)", Requests: f.Requests, Active: f.Active, Queued: f.Queued,
			TokensPerS: f.TokensPerS, PromptTokensPS: f.PromptTokensPS, GeneratedToks: f.GeneratedTokens,
			TTFTMs: dashboard.Quant{P50: f.TTFTP50, P90: f.TTFTP90, P99: f.TTFTP99}, ITLMs: dashboard.Quant{P50: f.ITLP50, P90: f.ITLP90, P99: f.ITLP99},
		}
		return &dashboard.State{Time: time.Now(), Cluster: "(none: experts in this process)", Serving: fs, Frontend: []dashboard.Serving{fs}}, nil
	})
}

// frontendStats summarizes srv's traffic over its last 30 s for the
// front end's statistics record.
func frontendStats(srv *serve.Server, model string) func() registry.FrontendStats {
	win := &serve.TrafficWindow{Span: 30 * time.Second}
	return func() registry.FrontendStats {
		t := srv.Traffic()
		s := win.Add(t)
		return registry.FrontendStats{
			Model: model, Time: t.Time, Window: s.Window.Seconds(),
			Requests: t.Requests, Active: t.Active, Queued: t.Queued,
			GeneratedTokens: t.GeneratedTokens, PromptTokens: t.PromptTokens,
			TokensPerS: s.TokensPerS, PromptTokensPS: s.PromptPerS,
			TTFTP50: s.TTFTP50, TTFTP90: s.TTFTP90, TTFTP99: s.TTFTP99,
			ITLP50: s.ITLP50, ITLP90: s.ITLP90, ITLP99: s.ITLP99,
		}
	}
}

// loadServeTokenizer loads the tokenizer (path, or modelDir/tokenizer.json)
// and the chat template of the tokenizer_config.json beside it (zero if
// there is no such file or it has no chat_template).
func loadServeTokenizer(modelDir, path string) (*tokenizer.Tokenizer, serve.ChatTemplate, error) {
	if path == "" {
		path = filepath.Join(modelDir, "tokenizer.json")
	}
	dir := filepath.Dir(path)
	var tok *tokenizer.Tokenizer
	var err error
	if filepath.Base(path) == "tokenizer.json" {
		tok, err = tokenizer.LoadDir(dir)
	} else {
		tok, err = tokenizer.Load(path)
	}
	if err != nil {
		return nil, serve.ChatTemplate{}, fmt.Errorf("%w (give the model's tokenizer with --tokenizer)", err)
	}
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	b, err := os.ReadFile(cfgPath)
	if errors.Is(err, os.ErrNotExist) {
		return tok, serve.ChatTemplate{}, nil
	}
	if err != nil {
		return nil, serve.ChatTemplate{}, err
	}
	ct, err := serve.ParseTokenizerConfig(b)
	if err != nil {
		return nil, serve.ChatTemplate{}, fmt.Errorf("%s: %w", cfgPath, err)
	}
	return tok, ct, nil
}

// frontendLogger turns the front end's log records into "serve: ..." lines.
func frontendLogger(w io.Writer, prefix string) *slog.Logger {
	return slog.New(slog.NewTextHandler(&prefixLines{w: w, prefix: prefix + ": "}, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// prefixLines writes each write (one log record) with a prefix.
type prefixLines struct {
	w      io.Writer
	prefix string
}

func (p *prefixLines) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// joinCluster joins the running cluster at o.Etcd as a front end for rec.
func joinCluster(ctx context.Context, o serveOptions, rec registry.ModelRecord, logf func(string, ...any)) (*frontend.Frontend, error) {
	creds, err := auth.Load(o.TLS)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Prefix, err)
	}
	fe, err := frontend.Join(ctx, frontend.Options{
		Endpoints: o.Etcd, Cluster: o.Cluster, Model: rec, Logger: frontendLogger(o.Stderr, o.Prefix),
		Client: transport.ClientConfig{AttemptTimeout: 2 * time.Second}, TLS: creds,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Prefix, err)
	}
	logf("joined cluster %q at %s as front end for model %s", o.Cluster, strings.Join(o.Etcd, ","), fe.Model.Fingerprint)
	return fe, nil
}

// startServeCluster starts etcd, a coordinator and the workers, joins them
// as a front end, and waits until every expert is served. A worker that
// exits, or a placement the coordinator cannot make (memory shortfall),
// ends the wait at once with the cause.
func startServeCluster(ctx context.Context, o serveOptions, logf func(string, ...any)) (*localcluster.Cluster, *frontend.Frontend, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if len(localcluster.SharedHostEnv(o.Workers, nil)) > 0 {
		// The front end shares the cores with its workers too: its pool
		// threads polling after attention would slow the owners' GEMMs.
		tensor.SetSpin(0)
	}
	lc, err := localcluster.Start(sctx, localcluster.Options{
		ModelDir: o.ModelDir, Command: []string{exe, "worker"}, Workers: o.Workers, Cluster: "serve",
		Replicas: o.Replicas, WorkerMemCap: o.WorkerMem, ExpectWorkers: o.Workers, Quantize: o.Quantize,
		Restart:    true, // a worker that dies comes back (with backoff), as under a supervisor
		WorkerArgs: o.Trace.Args(),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: start %d workers: %w", o.Prefix, o.Workers, err)
	}
	if o.WorkerMem > 0 {
		logf("each worker's memory capped at %d bytes: %s", o.WorkerMem, lc.MemCapMode())
	}
	logf("%s", lc.Describe())
	jo := o
	jo.Etcd, jo.Cluster = lc.Endpoints, "serve"
	fe, err := joinCluster(sctx, jo, lc.Model, logf)
	if err != nil {
		lc.Close()
		return nil, nil, err
	}
	fail := func(err error) (*localcluster.Cluster, *frontend.Frontend, error) {
		fe.Close()
		lc.Close()
		return nil, nil, fmt.Errorf("%s: %w", o.Prefix, err)
	}
	fatal := func() error {
		for _, p := range lc.Procs() {
			select {
			case <-p.Exited():
				return fmt.Errorf("worker %s (pid %d) exited before the model was served (%v); its log ends:\n%s",
					p.ID, p.Pid(), exitCause(p), tailLines(p.Log(), 15))
			default:
			}
		}
		if s := fe.Shortfall(); s != nil {
			return fmt.Errorf("the %d workers cannot hold the model: %s", o.Workers, s.Error+shortBy(s))
		}
		return nil
	}
	pl, err := fe.WaitServing(sctx, func(why error) { logf("waiting: %v", why) }, fatal)
	if err != nil {
		return fail(err)
	}
	logf("%s", describePlacement(pl))
	return lc, fe, nil
}

// shortBy spells out a memory shortfall.
func shortBy(s *registry.PlacementStatus) string {
	return fmt.Sprintf(" (need %.2f GiB for the expert copies, the workers have %.2f GiB: short by %.2f GiB)",
		float64(s.NeedBytes)/(1<<30), float64(s.HaveBytes)/(1<<30), float64(s.NeedBytes-s.HaveBytes)/(1<<30))
}

// describePlacement is a one-line summary: epoch and experts per worker.
func describePlacement(pl *cluster.Placement) string {
	counts := placement.Counts(pl)
	var parts []string
	for _, id := range pl.WorkerIDs() {
		parts = append(parts, fmt.Sprintf("%s=%d", id, counts[id]))
	}
	sort.Strings(parts)
	return fmt.Sprintf("placement epoch %d, experts per worker: %s", pl.Epoch, strings.Join(parts, " "))
}

// reportExits logs, at once, every local worker that exits while serving
// (killed, out of memory, crashed), with the cause and its log's end.
func reportExits(ctx context.Context, lc *localcluster.Cluster, logf func(string, ...any)) {
	for _, p := range lc.Procs() {
		go func() {
			select {
			case <-p.Exited():
				if ctx.Err() == nil {
					logf("worker %s (pid %d) died: %v; its experts' other copies serve, the coordinator re-places the rest, and it is restarted with backoff; its log ends:\n%s",
						p.ID, p.Pid(), exitCause(p), tailLines(p.Log(), 10))
				}
			case <-ctx.Done():
			}
		}()
	}
}

// exitCause describes how a worker process ended (a signal such as SIGKILL
// from the kernel's OOM killer, or an exit status).
func exitCause(p *localcluster.Proc) string {
	var ee *exec.ExitError
	if errors.As(p.Err(), &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			cause := "killed by " + unix.SignalName(ws.Signal())
			if ws.Signal() == syscall.SIGKILL {
				cause += " (out of memory under a cgroup limit, or killed by hand)"
			}
			return cause
		}
		return ee.Error()
	}
	if p.Err() == nil {
		return "exit status 0"
	}
	return p.Err().Error()
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// displayAddr is a as a client dials it: an unspecified host
// (0.0.0.0, ::) becomes 127.0.0.1.
func displayAddr(a *net.TCPAddr) string {
	host := a.IP.String()
	if a.IP == nil || a.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, fmt.Sprint(a.Port))
}
