// Package serve is Switchyard's OpenAI-compatible HTTP front end with
// continuous batching (what `switchyard serve` and `switchyard quickstart`
// run).
//
// Endpoints:
//
//	GET  /v1/models            the one served model
//	POST /v1/completions       text or token-id prompt; stream or not
//	POST /v1/chat/completions  messages rendered by a chat template; stream or not
//	GET  /health               200 when Config.Ready says so, else 503
//	GET  /metrics              Prometheus text format
//
// Requests accept model, prompt/messages, max_tokens (chat also
// max_completion_tokens), temperature [0, 2] (default 1; 0 is greedy),
// top_p (0, 1], seed, stop (a string or up to MaxStops strings), n = 1
// only, stream, stream_options.include_usage, and vLLM's extensions
// ignore_eos and return_token_ids. Other OpenAI sampling features
// (logprobs, echo, best_of, suffix, penalties, logit_bias, tools) are
// refused with 400 rather than silently ignored; unknown fields are ignored
// (as vLLM does). Streams are Server-Sent Events: `data: {json}\n\n` chunks
// ending with `data: [DONE]\n\n`. Errors are OpenAI's
// {"error": {"message", "type", "param", "code"}} with the HTTP status of
// the failure class (see apiError).
//
// Scheduling: one scheduler goroutine owns the model. Each step it drops
// sequences whose client went away (their KV cache is released with them),
// admits queued requests into free slots (at most Config.MaxSeqs
// sequences, at most Config.MaxPrefillTokens prompt tokens per step), and
// runs a single Model.Forward over every active sequence: one new token for
// each decoding sequence plus the whole prompt of each admitted one. MoE
// layers therefore see the rows of all sequences at once (one expert GEMM,
// one exchange per remote worker per layer). Requests beyond the free slots
// wait in a queue of Config.MaxQueue; when it is full the request is refused
// at once with 429 (no waiting inside the server), so load balancers and
// clients can back off.
//
// Numerics: a sequence decoded alone runs its matrix products as
// matrix-vector products, in a batch as matrix-matrix products, which sum
// in a different order; logits of the same sequence may differ in the last
// bits between the two, so a greedy token can only differ where its top-2
// logits are that close.
package serve
