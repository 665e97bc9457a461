package serve

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server. Zero values take the defaults noted on each
// field (DefaultConfig); ModelName is required.
type Config struct {
	// ModelName is the id clients pass as "model" and /v1/models lists.
	// A request without "model" gets this model (as vLLM does).
	ModelName string
	// MaxSeqs is the most sequences decoded together: one Forward call per
	// step covers all of them. Default 16.
	MaxSeqs int
	// MaxQueue is how many accepted requests may wait for a free slot
	// beyond MaxSeqs; a request arriving when the queue is full is refused
	// at once with 429. Default 64.
	MaxQueue int
	// MaxStepTokens is the token budget of one model step (vLLM's
	// max_num_batched_tokens with chunked prefill): every decoding sequence
	// takes its one token first, then the prompts still being prefilled
	// take what is left, oldest first, so a prompt longer than that is fed
	// in chunks over several steps and the decoding sequences keep getting
	// a token every step. Smaller values bound the time per output token of
	// running requests while long prompts arrive; larger ones give long
	// prompts their first token in fewer steps. It must be at least
	// MaxSeqs. Default 512.
	MaxStepTokens int
	// MaxBodyBytes bounds a request body; a larger one is refused with
	// 413. Default 1 MiB.
	MaxBodyBytes int64
	// DefaultCompletionTokens is max_tokens of a /v1/completions request
	// that gives none (OpenAI's and vLLM's 16), capped to the context left
	// after the prompt. Chat requests without one may use the whole rest of
	// the context (as vLLM does).
	DefaultCompletionTokens int
	// MaxStops bounds the stop strings of one request. Default 16.
	MaxStops int
	// ChatTemplate is the model's Hugging Face chat template with its
	// bos_token and eos_token (ParseTokenizerConfig reads them from
	// tokenizer_config.json). New compiles it and renders a one-message
	// conversation with it, failing if either does not work. The zero
	// value renders chats in the plain format (see Server.ChatFormat).
	ChatTemplate ChatTemplate
	// Ready, if set, tells /health whether the model can serve (e.g. every
	// expert's worker is up); nil means always. It should answer within
	// about a second.
	Ready func(ctx context.Context) error
	// APIKeys, if any, are the keys accepted on every /v1/ request as
	// "Authorization: Bearer <key>": any one of them will do. The header is
	// checked against each key in constant time (through SHA-256, so not
	// even a key's length shows in the timing); a request without a valid
	// one gets 401 in OpenAI's error shape (code invalid_api_key) before
	// its body is read. A key must be non-empty and hold no white space or
	// control characters. Empty: the API is open.
	APIKeys []string
	// AuthHealth and AuthMetrics put /health and /metrics behind APIKeys
	// too. Default false: they stay open for probes and scrapers (they
	// reveal no request content; /metrics shows load and token counts).
	AuthHealth, AuthMetrics bool

	// Timeouts of the HTTP server (HTTPServer). Zero takes the default.
	//
	// ReadHeaderTimeout bounds reading a request's headers, from the
	// connection's first byte (or the end of the previous request):
	// a client trickling its headers is cut after it. Default 10 s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, headers and body
	// (at most MaxBodyBytes): a client trickling its body is cut after
	// it (the request gets 408 when the connection still takes it). It
	// does not bound the answer: a stream may go on for as long as it
	// generates. Default 60 s (1 MiB at 17 KiB/s).
	ReadTimeout time.Duration
	// WriteTimeout bounds every single write of an answer, not the
	// answer: the deadline is set afresh before each write and flush
	// (each event of a stream), so a client must take each chunk within
	// it. A client that stops reading is cut at the first write that
	// cannot finish in time; its sequence is then cancelled and its KV
	// cache freed at the scheduler's next step, releasing its slot.
	// Default 30 s.
	WriteTimeout time.Duration
	// IdleTimeout is how long a keep-alive connection may wait for its
	// next request. Default 120 s.
	IdleTimeout time.Duration
	// MaxConns caps the open connections of the listener that Listener
	// wraps (idle keep-alive ones included): at the cap, new connections
	// wait in the kernel's accept queue until one closes. Default 1024.
	MaxConns int

	// Collectors are extra Prometheus collectors served on /metrics with
	// the server's own (e.g. the expert exchange's, from a front end).
	Collectors []prometheus.Collector
	// Handlers are extra HTTP handlers mounted on the API's mux by
	// pattern (e.g. "/dashboard/": the cluster dashboard), behind the API
	// key when AuthMetrics is set.
	Handlers map[string]http.Handler
	// Created is the "created" time /v1/models reports (default: when New
	// ran).
	Created time.Time
}

// DefaultConfig returns the defaults for a model named name.
func DefaultConfig(name string) Config {
	return Config{
		ModelName:               name,
		MaxSeqs:                 16,
		MaxQueue:                64,
		MaxStepTokens:           512,
		MaxBodyBytes:            1 << 20,
		DefaultCompletionTokens: 16,
		MaxStops:                16,
		ReadHeaderTimeout:       10 * time.Second,
		ReadTimeout:             60 * time.Second,
		WriteTimeout:            30 * time.Second,
		IdleTimeout:             120 * time.Second,
		MaxConns:                1024,
	}
}

// withDefaults fills zero fields and validates the result, reporting every
// problem.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig(c.ModelName)
	if c.MaxSeqs == 0 {
		c.MaxSeqs = d.MaxSeqs
	}
	if c.MaxQueue == 0 {
		c.MaxQueue = d.MaxQueue
	}
	if c.MaxStepTokens == 0 {
		c.MaxStepTokens = d.MaxStepTokens
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = d.MaxBodyBytes
	}
	if c.DefaultCompletionTokens == 0 {
		c.DefaultCompletionTokens = d.DefaultCompletionTokens
	}
	if c.MaxStops == 0 {
		c.MaxStops = d.MaxStops
	}
	for _, f := range []struct{ v, d *time.Duration }{
		{&c.ReadHeaderTimeout, &d.ReadHeaderTimeout}, {&c.ReadTimeout, &d.ReadTimeout},
		{&c.WriteTimeout, &d.WriteTimeout}, {&c.IdleTimeout, &d.IdleTimeout},
	} {
		if *f.v == 0 {
			*f.v = *f.d
		}
	}
	if c.MaxConns == 0 {
		c.MaxConns = d.MaxConns
	}
	if c.Created.IsZero() {
		c.Created = time.Now()
	}
	var errs []error
	if c.ModelName == "" {
		errs = append(errs, errors.New("serve: a model name is required"))
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"max sequences", int64(c.MaxSeqs)}, {"max queue", int64(c.MaxQueue)},
		{"max step tokens", int64(c.MaxStepTokens)}, {"max body bytes", c.MaxBodyBytes},
		{"default completion tokens", int64(c.DefaultCompletionTokens)}, {"max stops", int64(c.MaxStops)},
		{"max connections", int64(c.MaxConns)},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("serve: %s %d must be > 0", f.name, f.v))
		}
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"read header timeout", c.ReadHeaderTimeout}, {"read timeout", c.ReadTimeout},
		{"write timeout", c.WriteTimeout}, {"idle timeout", c.IdleTimeout},
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("serve: %s %v must be > 0", f.name, f.v))
		}
	}
	for i, k := range c.APIKeys {
		// The key itself is never printed: only where it is.
		if k == "" {
			errs = append(errs, fmt.Errorf("serve: API key %d of %d is empty", i+1, len(c.APIKeys)))
		} else if strings.IndexFunc(k, func(r rune) bool { return r <= ' ' || r == 0x7f || unicode.IsSpace(r) }) >= 0 {
			errs = append(errs, fmt.Errorf("serve: API key %d of %d holds white space or a control character", i+1, len(c.APIKeys)))
		}
	}
	if (c.AuthHealth || c.AuthMetrics) && len(c.APIKeys) == 0 {
		errs = append(errs, errors.New("serve: putting /health or /metrics behind an API key needs API keys"))
	}
	if c.MaxSeqs > 0 && c.MaxStepTokens > 0 && c.MaxStepTokens < c.MaxSeqs {
		errs = append(errs, fmt.Errorf("serve: max step tokens %d must be at least max sequences %d (each decoding sequence takes one token a step)", c.MaxStepTokens, c.MaxSeqs))
	}
	return c, errors.Join(errs...)
}
