package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/serve"
	"github.com/switchyard/switchyard/pkg/tokenizer"
	"github.com/switchyard/switchyard/pkg/transport"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// serveOptions is what `switchyard serve` (and quickstart) run.
type serveOptions struct {
	ModelDir  string
	Tokenizer string // tokenizer.json (default ModelDir/tokenizer.json)
	// Workers is the number of local worker processes the routed experts
	// are placed on; 0 runs them in this process.
	Workers int
	Listen  string        // host:port; port 0 picks a free one
	Grace   time.Duration // how long in-flight requests may finish after a signal
	Serve   serve.Config  // ModelName empty: ModelDir as given (as vLLM names models)
	Stderr  io.Writer
	Prefix  string // of every line printed ("serve")
	// OnReady, if set, runs in its own goroutine once the API answers, with
	// the base URL (http://host:port) and a context that ends when shutdown
	// begins. It may call stop to shut the server down as a signal would.
	// runServe returns only after OnReady has.
	OnReady func(ctx context.Context, url string, stop func())
}

func serveCmd() *cobra.Command {
	o := serveOptions{Serve: serve.DefaultConfig(""), Prefix: "serve"}
	cmd := &cobra.Command{
		Use:   "serve --model DIR [--workers N] [--listen ADDR]",
		Short: "Serve a model over the OpenAI-compatible HTTP API, experts on local workers",
		Long: `serve starts an embedded etcd, a coordinator and N local worker processes
(this binary's worker command), places the model's routed experts on the
workers, keeps the dense weights (embeddings, attention, norms, routers, shared
experts, lm_head) in this process, and serves the OpenAI-compatible API:

  GET  /v1/models
  POST /v1/completions        (stream: true for Server-Sent Events)
  POST /v1/chat/completions   (messages rendered with the model's chat template
                               from tokenizer_config.json, as transformers'
                               apply_chat_template does; without one,
                               "role: content" lines)
  GET  /health                (200 once every expert's worker serves)
  GET  /metrics               (Prometheus)

Requests are batched continuously: up to --max-seqs sequences advance together,
one model step each, and new requests join between steps; up to --max-queue
more wait, and beyond that requests get 429. A step feeds at most
--max-step-tokens tokens, one to each decoding sequence first, so a long prompt
is prefilled in chunks over several steps instead of stalling the others.
--workers 0 runs the experts in this process (no etcd, no workers). One line on
stderr says when it is ready, with the URL. SIGINT/SIGTERM stop accepting
requests, let in-flight ones finish for up to --shutdown-grace (then cut them
short), and stop the workers and etcd.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o.Stderr = cmd.ErrOrStderr()
			return runServe(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ModelDir, "model", "", "model folder (config.json, *.safetensors, tokenizer.json)")
	f.StringVar(&o.Tokenizer, "tokenizer", "", "tokenizer.json to use (default MODEL/tokenizer.json); its tokenizer_config.json, if any, gives the chat template")
	f.StringVar(&o.Serve.ModelName, "served-model-name", "", `the model's name in the API (default: --model as given)`)
	f.IntVar(&o.Workers, "workers", 1, "local worker processes holding the routed experts (0: experts in this process)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8000", "HTTP address (port 0: a free port)")
	f.IntVar(&o.Serve.MaxSeqs, "max-seqs", o.Serve.MaxSeqs, "sequences generated together (one batch per step)")
	f.IntVar(&o.Serve.MaxQueue, "max-queue", o.Serve.MaxQueue, "requests that may wait for a free sequence slot; more get 429")
	f.IntVar(&o.Serve.MaxStepTokens, "max-step-tokens", o.Serve.MaxStepTokens, "token budget of a model step: one per decoding sequence, the rest to prompts, long ones in chunks (at least --max-seqs)")
	f.DurationVar(&o.Grace, "shutdown-grace", 10*time.Second, "on SIGINT/SIGTERM, how long in-flight requests may finish")
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
	ck, err := model.Open(o.ModelDir)
	if err != nil {
		return err
	}
	defer ck.Close()
	local := o.Workers == 0
	m, err := ck.Load(model.LoadOptions{KeepBF16: true, Experts: func(expert.ID) bool { return local }})
	if err != nil {
		return err
	}
	logf("%s (%s, %d layers, context %d, vocabulary %d) loaded in %v",
		o.ModelDir, m.Cfg.Family, m.Cfg.Layers, m.Cfg.MaxPos, m.Cfg.Vocab, time.Since(start).Round(time.Millisecond))
	where := "experts in this process"
	if !local {
		lc, client, err := startServeCluster(ctx, o, logf)
		if err != nil {
			return err
		}
		defer func() {
			client.Close()
			lc.Close()
			logf("workers and etcd stopped")
		}()
		m.Experts = client.Executor
		o.Serve.Ready = func(ctx context.Context) error { return placementServed(ctx, lc, client) }
		where = fmt.Sprintf("experts on %d worker processes", o.Workers)
	}
	srv, err := serve.New(serve.FromModel(m), tok, o.Serve)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("%s: %w", p, err)
	}
	url := "http://" + displayAddr(ln.Addr().(*net.TCPAddr))
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	logf("chat format: %s; up to %d sequences per step, %d more queued", srv.ChatFormat(), srv.Config().MaxSeqs, srv.Config().MaxQueue)
	logf("ready: %s (model %q, %s; OpenAI API under /v1, /health, /metrics)", url, o.Serve.ModelName, where)

	sctx, stopServing := context.WithCancel(ctx)
	defer stopServing()
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

// startServeCluster starts etcd, a coordinator and the workers, and waits
// until every expert is served.
func startServeCluster(ctx context.Context, o serveOptions, logf func(string, ...any)) (*localcluster.Cluster, *localcluster.Client, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	lc, err := localcluster.Start(sctx, localcluster.Options{
		ModelDir: o.ModelDir, Command: []string{exe, "worker"}, Workers: o.Workers, Cluster: "serve",
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: start %d workers: %w", o.Prefix, o.Workers, err)
	}
	logf("%s", lc.Describe())
	pl, err := lc.WaitServing(sctx)
	if err != nil {
		for _, w := range lc.Procs() {
			logf("--- worker %s log:\n%s", w.ID, w.Log())
		}
		lc.Close()
		return nil, nil, fmt.Errorf("%s: %w", o.Prefix, err)
	}
	counts := placement.Counts(pl)
	var parts []string
	for _, id := range pl.WorkerIDs() {
		parts = append(parts, fmt.Sprintf("%s=%d", id, counts[id]))
	}
	sort.Strings(parts)
	logf("placement epoch %d, experts per worker: %s", pl.Epoch, strings.Join(parts, " "))
	client, err := lc.NewClient(transport.ClientConfig{Worker: "serve"}, 0)
	if err != nil {
		lc.Close()
		return nil, nil, err
	}
	return lc, client, nil
}

// placementServed is /health's readiness: the client knows a placement
// covering every expert, and each worker it names answers SERVING at that
// epoch or a newer one.
func placementServed(ctx context.Context, lc *localcluster.Cluster, client *localcluster.Client) error {
	pl := client.Placement.Current()
	if pl == nil {
		return errors.New("no expert placement yet")
	}
	if err := pl.Validate(); err != nil {
		return err
	}
	for _, id := range pl.WorkerIDs() {
		c, err := lc.Pool.Client(id, pl.Workers[id].Addr)
		if err != nil {
			return fmt.Errorf("worker %s: %w", id, err)
		}
		resp, err := c.Health(ctx, &pb.HealthRequest{})
		switch {
		case err != nil:
			return fmt.Errorf("worker %s: %w", id, err)
		case resp.GetStatus() != pb.ServingStatus_SERVING_STATUS_SERVING:
			return fmt.Errorf("worker %s: %v", id, resp.GetStatus())
		case resp.GetEpoch() < uint64(pl.Epoch):
			return fmt.Errorf("worker %s serves placement epoch %d, not yet %d", id, resp.GetEpoch(), pl.Epoch)
		}
	}
	return nil
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
