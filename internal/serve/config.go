package serve

import (
	"context"
	"errors"
	"fmt"
	"time"

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
	// APIKey, if set, is required on every /v1/ request as
	// "Authorization: Bearer <APIKey>" (compared in constant time); others
	// get 401 in OpenAI's error shape. /health and /metrics stay open (for
	// probes and scrapers).
	APIKey string
	// Collectors are extra Prometheus collectors served on /metrics with
	// the server's own (e.g. the expert exchange's, from a front end).
	Collectors []prometheus.Collector
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
	} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("serve: %s %d must be > 0", f.name, f.v))
		}
	}
	if c.MaxSeqs > 0 && c.MaxStepTokens > 0 && c.MaxStepTokens < c.MaxSeqs {
		errs = append(errs, fmt.Errorf("serve: max step tokens %d must be at least max sequences %d (each decoding sequence takes one token a step)", c.MaxStepTokens, c.MaxSeqs))
	}
	return c, errors.Join(errs...)
}
