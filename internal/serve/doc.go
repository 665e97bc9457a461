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
// Chat templates: a chat request's messages become one prompt through the
// model's Hugging Face chat template (Config.ChatTemplate, read from
// tokenizer_config.json by ParseTokenizerConfig), rendered as transformers'
// apply_chat_template(messages, add_generation_prompt=True,
// tokenize=False) does: Jinja (github.com/ardanlabs/jinja) with
// trim_blocks and lstrip_blocks, and a context of messages ({role,
// content}), add_generation_prompt, bos_token, eos_token, tools = none,
// raise_exception and strftime_now. The prompt is tokenized with its
// special tokens as their ids and no BOS added (the template writes it).
// A template that does not compile or cannot render a one-message
// conversation fails New; raise_exception(msg) at request time is a 400
// whose message carries msg. Without a template the prompt is plain
// "role: content" lines, then "assistant:". Tools are refused before any
// template runs.
//
// Access and limits: with Config.APIKeys, /v1/* (and, with AuthHealth or
// AuthMetrics, /health or /metrics) needs "Authorization: Bearer <key>"
// with any of the keys, else 401 invalid_api_key. HTTPServer bounds how
// long a request's headers and whole body may take to arrive
// (Config.ReadHeaderTimeout, ReadTimeout; a body cut short gets 408) and
// how long a connection may idle (IdleTimeout); Handler gives every single
// write of an answer Config.WriteTimeout (a deadline renewed before each
// write and flush, not one over the whole answer, so streams may run as
// long as they generate), so a client that stops reading loses its
// request, its sequence and its KV cache within about WriteTimeout;
// Listener caps open connections (MaxConns); bodies are capped at
// MaxBodyBytes (413). Token counts are checked against what the context
// leaves (never by adding to the prompt, which could overflow): a prompt
// plus max_tokens beyond the context is a 400 context_length_exceeded, and
// the scheduler itself ends any sequence that fills the context with
// finish_reason "length".
//
// Scheduling: one scheduler goroutine owns the model. Each step it drops
// sequences whose client went away (their KV cache is released with them)
// and shares out a budget of Config.MaxStepTokens tokens, as vLLM's chunked
// prefill does: one token to each decoding sequence first, then what is
// left to the prompts still being prefilled, oldest first, then to queued
// requests admitted into free slots (at most Config.MaxSeqs sequences). A
// prompt longer than what is left is fed in chunks over several steps, its
// KV cache growing with each, and its sequence samples its first token
// from the logits of the prompt's last position, in the step that feeds
// it; so a long prompt delays the decoding sequences by at most one step
// of MaxStepTokens tokens, never by its whole prefill. One Model.Forward
// runs over every sequence given tokens, so MoE layers see the rows of all
// of them at once (one expert GEMM, one exchange per remote worker per
// layer). Requests beyond the free slots wait in a queue of
// Config.MaxQueue; when it is full the request is refused at once with 429
// (no waiting inside the server), so load balancers and clients can back
// off.
//
// Numerics: a sequence decoded alone runs its matrix products as
// matrix-vector products, in a batch as matrix-matrix products, which sum
// in a different order; logits of the same sequence may differ in the last
// bits between the two, so a greedy token can only differ where its top-2
// logits are that close. The same holds between a prompt fed in chunks and
// the same prompt fed whole: the products have other shapes.
package serve
