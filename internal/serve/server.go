package serve

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/propagation"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// Server serves one model over the OpenAI-compatible HTTP API (see the
// package documentation). New starts its scheduler; Shutdown stops it.
type Server struct {
	cfg   Config
	model Model
	tok   *tokenizer.Tokenizer
	lim   limits
	met   *metrics

	ctx    context.Context // the scheduler's; cancelled to abort everything
	cancel context.CancelFunc
	done   chan struct{} // closed when the scheduler has returned
	wake   chan struct{} // capacity 1: a request was queued

	mu       sync.Mutex
	waiting  []*genRequest // FIFO, at most cfg.MaxQueue
	draining bool          // no new requests

	keys [][sha256.Size]byte // SHA-256 of each of Config.APIKeys

	inflight sync.WaitGroup // accepted requests that have not ended
	conns    atomic.Int64   // open connections of the listeners Listener wrapped
	active   atomic.Int64   // sequences in the scheduler
	kvBytes  atomic.Int64   // their KV cache bytes
	steps    atomic.Int64   // Forward calls
	maxBatch atomic.Int64   // most sequences in one Forward call
}

// New returns a server for m with tokenizer tok and starts its scheduler.
func New(m Model, tok *tokenizer.Tokenizer, cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if m == nil || tok == nil {
		return nil, errors.New("serve: a model and a tokenizer are required")
	}
	chat, err := newChatFormat(cfg.ChatTemplate, tok)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, model: m, tok: tok, done: make(chan struct{}), wake: make(chan struct{}, 1)}
	for _, k := range cfg.APIKeys {
		s.keys = append(s.keys, sha256.Sum256([]byte(k)))
	}
	eos := m.EOS()
	if len(eos) == 0 {
		if id := tok.Special().EOS; id >= 0 {
			eos = []int32{int32(id)}
		}
	}
	s.lim = limits{name: cfg.ModelName, tok: tok, vocab: m.Vocab(), context: m.MaxContext(), eos: eos,
		chat: chat, defaultCompletion: cfg.DefaultCompletionTokens}
	s.met = newMetrics(s)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.run()
	return s, nil
}

// Config returns the configuration in effect (defaults filled in).
func (s *Server) Config() Config { return s.cfg }

// ChatFormat describes how chat messages become a prompt.
func (s *Server) ChatFormat() string { return s.lim.chat.String() }

// Stats is a snapshot of the scheduler.
type Stats struct {
	Active       int   // sequences being generated
	Queued       int   // requests waiting for a slot
	KVCacheBytes int64 // held by the active sequences' caches
	Steps        int64 // model steps (Forward calls) so far
	MaxBatch     int   // most sequences in one step so far
}

// Stats returns the scheduler's current state.
func (s *Server) Stats() Stats {
	return Stats{Active: int(s.active.Load()), Queued: s.queued(), KVCacheBytes: s.kvBytes.Load(),
		Steps: s.steps.Load(), MaxBatch: int(s.maxBatch.Load())}
}

// Shutdown stops accepting requests (they get 503, /health too), waits
// until the accepted ones have finished or ctx ends, then ends whatever is
// left with an error and stops the scheduler. It returns ctx's error if
// requests had to be cut short. Safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	idle := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(idle)
	}()
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.cancel()
	<-s.done
	<-idle
	return err
}

// Close ends every request at once and stops the scheduler.
func (s *Server) Close() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.Shutdown(ctx)
}

// Handler returns the HTTP API. Every write of every answer must end
// within Config.WriteTimeout (see deadlineWriter); the read and idle
// timeouts and the connection cap are the http.Server's and the
// listener's (HTTPServer, Listener).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/models", s.authorized(http.HandlerFunc(s.handleModels)))
	mux.Handle("/v1/completions", s.authorized(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.handleGenerate(w, r, false) })))
	mux.Handle("/v1/chat/completions", s.authorized(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.handleGenerate(w, r, true) })))
	var health, metrics http.Handler = http.HandlerFunc(s.handleHealth), promhttp.HandlerFor(s.met.reg, promhttp.HandlerOpts{})
	if s.cfg.AuthHealth {
		health = s.authorized(health)
	}
	if s.cfg.AuthMetrics {
		metrics = s.authorized(metrics)
	}
	mux.Handle("/health", health)
	mux.Handle("/metrics", metrics)
	for pattern, h := range s.cfg.Handlers {
		if s.cfg.AuthMetrics {
			h = s.authorized(h)
		}
		mux.Handle(pattern, h)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Message: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dw := &deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), d: s.cfg.WriteTimeout}
		dw.extend() // the connection's deadline outlives a keep-alive request: renew it for this one
		mux.ServeHTTP(dw, r)
	})
}

// HTTPServer returns an http.Server for Handler with Config's read and idle
// timeouts (ReadHeaderTimeout, ReadTimeout, IdleTimeout). It has no
// http.Server.WriteTimeout, which would bound a whole answer and so every
// stream: Handler sets a deadline before each write instead
// (Config.WriteTimeout). The caller may add TLS and serves it on
// Listener(ln).
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{Handler: s.Handler(), ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout: s.cfg.ReadTimeout, IdleTimeout: s.cfg.IdleTimeout}
}

// deadlineWriter is a ResponseWriter every Write and Flush of which must
// end within d: the connection's write deadline is set afresh before each
// (http.ResponseController.SetWriteDeadline), so a stream may last as long
// as it generates but a client that stops reading makes the write fail
// within d and the handler return (ending its sequence).
type deadlineWriter struct {
	http.ResponseWriter
	rc *http.ResponseController // of ResponseWriter
	d  time.Duration
}

// extend moves the write deadline to d from now. Writers without
// deadlines (httptest.ResponseRecorder) answer ErrNotSupported: no
// deadline then.
func (w *deadlineWriter) extend() { _ = w.rc.SetWriteDeadline(time.Now().Add(w.d)) }

func (w *deadlineWriter) Write(b []byte) (int, error) {
	w.extend()
	return w.ResponseWriter.Write(b)
}

// FlushError is what http.ResponseController.Flush calls.
func (w *deadlineWriter) FlushError() error {
	w.extend()
	return w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection's own writer
// (read deadlines).
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// authorized wraps h with the Config.APIKeys check (none when there are no
// keys): a request without "Authorization: Bearer <one of the keys>" gets
// 401 invalid_api_key and never reaches h.
func (s *Server) authorized(h http.Handler) http.Handler {
	if len(s.keys) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Get("Authorization")
		if !s.keyOK(got) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="switchyard"`)
			msg := "Incorrect API key provided: send it as \"Authorization: Bearer <key>\""
			if got == "" {
				msg = "You didn't provide an API key: send it as \"Authorization: Bearer <key>\""
			}
			writeError(w, &apiError{Status: http.StatusUnauthorized, Type: "invalid_request_error", Code: "invalid_api_key", Message: msg})
			s.count("unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// keyOK reports whether an Authorization header value is "Bearer <key>"
// (the scheme in any case) for one of Config.APIKeys. The token's SHA-256
// is compared with every key's in constant time, with no early exit, so
// the time taken shows neither which key matched nor how much of one did,
// nor a key's length.
func (s *Server) keyOK(header string) bool {
	scheme, token, _ := strings.Cut(header, " ")
	sum := sha256.Sum256([]byte(token))
	match := 0
	for i := range s.keys {
		match |= subtle.ConstantTimeCompare(sum[:], s.keys[i][:])
	}
	return match == 1 && strings.EqualFold(scheme, "Bearer")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(marshal(v))
}

// marshal encodes v as one line of JSON, leaving <, > and & as they are
// (generated text is not HTML).
func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("serve: encode %T: %v", v, err)) // only our own response types are encoded
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.Status == http.StatusTooManyRequests || e.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.Status, e.body())
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) int {
	w.Header().Set("Allow", allow)
	writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Type: "invalid_request_error",
		Message: fmt.Sprintf("%s %s is not allowed; use %s", r.Method, r.URL.Path, allow)})
	return http.StatusMethodNotAllowed
}

func (s *Server) count(endpoint string, code int) {
	s.met.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		s.count("models", methodNotAllowed(w, r, http.MethodGet))
		return
	}
	writeJSON(w, http.StatusOK, modelListJSON{Object: "list", Data: []modelJSON{{
		ID: s.cfg.ModelName, Object: "model", Created: s.cfg.Created.Unix(), OwnedBy: "switchyard", MaxModelLen: s.lim.context,
	}}})
	s.count("models", http.StatusOK)
}

// handleHealth answers 200 {"status": "ok"} when the server accepts
// requests and Config.Ready agrees, else 503 with the reason.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	var why error
	switch {
	case draining:
		why = errShutdown
	case s.cfg.Ready != nil:
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		why = s.cfg.Ready(ctx)
		cancel()
	}
	if why != nil {
		writeError(w, &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "not_ready", Message: "not ready: " + why.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// handleGenerate serves both generation endpoints.
func (s *Server) handleGenerate(w http.ResponseWriter, r *http.Request, chat bool) {
	endpoint := "completions"
	if chat {
		endpoint = "chat_completions"
	}
	ctx, span := requestSpan(r.Context(), endpoint, propagation.HeaderCarrier(r.Header))
	code := s.generate(w, r.WithContext(ctx), chat)
	endRequestSpan(span, code)
	s.count(endpoint, code)
}

// generate answers one generation request and returns the status it
// ended with (499 when the client went away first).
func (s *Server) generate(w http.ResponseWriter, r *http.Request, chat bool) int {
	if r.Method != http.MethodPost {
		return methodNotAllowed(w, r, http.MethodPost)
	}
	arrived := time.Now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mb *http.MaxBytesError
		switch {
		case errors.As(err, &mb):
			writeError(w, &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error",
				Message: fmt.Sprintf("the request body is over %d bytes", s.cfg.MaxBodyBytes)})
			return http.StatusRequestEntityTooLarge
		case errors.Is(err, os.ErrDeadlineExceeded): // Config.ReadTimeout: a trickling body
			writeError(w, &apiError{Status: http.StatusRequestTimeout, Type: "invalid_request_error", Code: "request_timeout",
				Message: fmt.Sprintf("the request was not received within %v", s.cfg.ReadTimeout)})
			return http.StatusRequestTimeout
		}
		return 499
	}
	var req *request
	var e *apiError
	if chat {
		req, e = parseChat(body, s.cfg.MaxStops)
	} else {
		req, e = parseCompletion(body, s.cfg.MaxStops)
	}
	var j *job
	if e == nil {
		j, e = prepare(req, s.lim)
	}
	if e != nil {
		writeError(w, e)
		return e.Status
	}
	if !req.seeded {
		j.sampler.Seed = rand.Uint64()
	}
	// The sequence lives while ctx does: the client going away ends it,
	// and so does this handler returning early, as when a write of the
	// answer did not finish within Config.WriteTimeout (the client stopped
	// reading); the scheduler then drops it, and its KV cache, at its next
	// step.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	g := &genRequest{ctx: ctx, job: j, arrived: arrived, out: newMailbox()}
	if e := s.submit(g); e != nil {
		writeError(w, e)
		return e.Status
	}
	o := output{s: s, req: req, job: j, chat: chat, created: arrived.Unix()}
	if chat {
		o.id = fmt.Sprintf("chatcmpl-%016x%016x", rand.Uint64(), rand.Uint64())
	} else {
		o.id = fmt.Sprintf("cmpl-%016x%016x", rand.Uint64(), rand.Uint64())
	}
	if req.stream {
		return o.stream(w, ctx, g.out)
	}
	return o.whole(w, ctx, g.out)
}

// output writes one request's answer.
type output struct {
	s       *Server
	req     *request
	job     *job
	chat    bool
	id      string
	created int64
}

// errorFor maps a failed generation to its API error.
func errorFor(err error) *apiError {
	if errors.Is(err, errShutdown) {
		return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "service_unavailable", Message: err.Error()}
	}
	if errors.Is(err, expert.ErrUnavailable) {
		// Some routed experts have no live copy: the request may succeed
		// once the placement is repaired (the error names the experts).
		return &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "experts_unavailable", Message: err.Error()}
	}
	return &apiError{Status: http.StatusInternalServerError, Type: "server_error", Message: "generation failed: " + err.Error()}
}

// whole waits for the end of generation and writes one JSON answer.
func (o *output) whole(w http.ResponseWriter, ctx context.Context, mb *mailbox) int {
	var text []byte
	var ids []int32
	for {
		select {
		case <-mb.notify:
		case <-ctx.Done():
			return 499
		}
		for _, ev := range mb.take() {
			text = append(text, ev.Text...)
			ids = append(ids, ev.IDs...)
			if ev.Err != nil {
				if ctx.Err() != nil {
					return 499
				}
				e := errorFor(ev.Err)
				writeError(w, e)
				return e.Status
			}
			if !ev.last() {
				continue
			}
			finish := ev.Finish
			usage := ev.Usage
			if o.chat {
				resp := chatJSON{ID: o.id, Object: "chat.completion", Created: o.created, Model: o.s.cfg.ModelName,
					Choices: []chatChoice{{Message: &chatMessageJSON{Role: "assistant", Content: string(text)}, FinishReason: &finish}},
					Usage:   &usage}
				if o.req.tokenIDs {
					resp.PromptTokenIDs, resp.Choices[0].TokenIDs = o.job.prompt, ids
				}
				writeJSON(w, http.StatusOK, resp)
			} else {
				resp := completionJSON{ID: o.id, Object: "text_completion", Created: o.created, Model: o.s.cfg.ModelName,
					Choices: []completionChoice{{Text: string(text), FinishReason: &finish}}, Usage: &usage}
				if o.req.tokenIDs {
					resp.Choices[0].PromptTokenIDs, resp.Choices[0].TokenIDs = o.job.prompt, ids
				}
				writeJSON(w, http.StatusOK, resp)
			}
			return http.StatusOK
		}
	}
}

// stream writes the answer as Server-Sent Events: a chunk per batch of
// events, a last chunk with finish_reason, a usage chunk when asked
// (stream_options.include_usage), then "data: [DONE]". A failure after the
// first byte is sent as a data: {"error": ...} event before [DONE], as
// vLLM does.
func (o *output) stream(w http.ResponseWriter, ctx context.Context, mb *mailbox) int {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	if rc.Flush() != nil { // headers now: the client sees the stream open before the first token
		return 499
	}
	send := func(v any) bool {
		if _, err := fmt.Fprintf(w, "data: %s\n\n", marshal(v)); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	first := true
	if o.chat {
		c := o.chatChunk()
		empty := ""
		c.Choices[0].Delta = &chatDelta{Role: "assistant", Content: &empty}
		if o.req.tokenIDs {
			c.PromptTokenIDs = o.job.prompt
		}
		if !send(c) {
			return 499
		}
		first = false
	}
	for {
		select {
		case <-mb.notify:
		case <-ctx.Done():
			return 499
		}
		evs := mb.take()
		var text []byte
		var ids []int32
		var final *event
		for i := range evs {
			text = append(text, evs[i].Text...)
			ids = append(ids, evs[i].IDs...)
			if evs[i].last() {
				final = &evs[i]
				break
			}
		}
		if final != nil && final.Err != nil {
			if ctx.Err() != nil {
				return 499
			}
			e := errorFor(final.Err)
			if !send(e.body()) || !o.done(w, rc) {
				return 499
			}
			return e.Status
		}
		var finish *string
		if final != nil {
			finish = &final.Finish
		}
		if len(text) > 0 || finish != nil || (o.req.tokenIDs && len(ids) > 0) {
			var chunk any
			if o.chat {
				c := o.chatChunk()
				t := string(text)
				c.Choices[0].Delta = &chatDelta{Content: &t}
				if finish != nil && len(text) == 0 {
					c.Choices[0].Delta = &chatDelta{}
				}
				c.Choices[0].FinishReason = finish
				if o.req.tokenIDs {
					c.Choices[0].TokenIDs = ids
				}
				chunk = c
			} else {
				c := completionJSON{ID: o.id, Object: "text_completion", Created: o.created, Model: o.s.cfg.ModelName,
					Choices: []completionChoice{{Text: string(text), FinishReason: finish}}}
				if o.req.tokenIDs {
					c.Choices[0].TokenIDs = ids
					if first {
						c.Choices[0].PromptTokenIDs = o.job.prompt
					}
				}
				chunk = c
			}
			if !send(chunk) {
				return 499
			}
			first = false
		}
		if final == nil {
			continue
		}
		if o.req.usage {
			u := final.Usage
			if o.chat {
				c := o.chatChunk()
				c.Choices, c.Usage = []chatChoice{}, &u
				if !send(c) {
					return 499
				}
			} else if !send(completionJSON{ID: o.id, Object: "text_completion", Created: o.created, Model: o.s.cfg.ModelName,
				Choices: []completionChoice{}, Usage: &u}) {
				return 499
			}
		}
		if !o.done(w, rc) {
			return 499
		}
		return http.StatusOK
	}
}

func (o *output) chatChunk() chatJSON {
	return chatJSON{ID: o.id, Object: "chat.completion.chunk", Created: o.created, Model: o.s.cfg.ModelName, Choices: []chatChoice{{}}}
}

func (o *output) done(w io.Writer, rc *http.ResponseController) bool {
	if _, err := io.WriteString(w, "data: [DONE]\n\n"); err != nil {
		return false
	}
	return rc.Flush() == nil
}
