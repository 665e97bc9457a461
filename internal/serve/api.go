package serve

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// apiError is an error answered in OpenAI's shape,
// {"error": {"message", "type", "param", "code"}}, with an HTTP status:
//
//	401 invalid_request_error  Config.APIKeys are set and the request lacks
//	                           "Authorization: Bearer <key>" with one of
//	                           them (code invalid_api_key)
//	400 invalid_request_error  malformed JSON, a field of the wrong type, a
//	                           missing or empty prompt, a value out of range,
//	                           an unsupported feature (n != 1, logprobs, ...),
//	                           a token id outside the vocabulary, a prompt
//	                           plus max_tokens beyond the context
//	                           (code context_length_exceeded)
//	404 invalid_request_error  an unknown model (code model_not_found) or path
//	405 invalid_request_error  a wrong method
//	408 invalid_request_error  the request was not read within
//	                           Config.ReadTimeout (code request_timeout)
//	413 invalid_request_error  a body over Config.MaxBodyBytes
//	429 rate_limit_error       the queue is full (code rate_limit_exceeded)
//	500 server_error           the model failed (e.g. no worker answered)
//	503 server_error           shutting down, or /health not ready, or
//	                           routed experts with no live copy (code
//	                           experts_unavailable; the message names them)
type apiError struct {
	Status  int
	Message string
	Type    string
	Param   string // "" encodes as null
	Code    string // "" encodes as null
}

func (e *apiError) Error() string { return e.Message }

func invalid(param, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param, Message: fmt.Sprintf(format, args...)}
}

// errorJSON is the body of an error answer.
type errorJSON struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *apiError) body() errorJSON {
	d := errorDetail{Message: e.Message, Type: e.Type}
	if e.Param != "" {
		d.Param = &e.Param
	}
	if e.Code != "" {
		d.Code = &e.Code
	}
	return errorJSON{Error: d}
}

// Requests as clients send them. Pointers tell "absent" (or null) from
// zero values.
type commonRequest struct {
	Model            *string            `json:"model"`
	MaxTokens        *int64             `json:"max_tokens"`
	Temperature      *float64           `json:"temperature"`
	TopP             *float64           `json:"top_p"`
	N                *int64             `json:"n"`
	Stream           *bool              `json:"stream"`
	StreamOptions    *streamOptions     `json:"stream_options"`
	Stop             json.RawMessage    `json:"stop"`
	Seed             *int64             `json:"seed"`
	PresencePenalty  *float64           `json:"presence_penalty"`
	FrequencyPenalty *float64           `json:"frequency_penalty"`
	LogitBias        map[string]float64 `json:"logit_bias"`
	// vLLM extensions.
	IgnoreEOS      *bool `json:"ignore_eos"`
	ReturnTokenIDs *bool `json:"return_token_ids"`
}

type streamOptions struct {
	IncludeUsage *bool `json:"include_usage"`
}

type completionRequest struct {
	commonRequest
	Prompt   json.RawMessage `json:"prompt"`
	Echo     *bool           `json:"echo"`
	Logprobs *int64          `json:"logprobs"`
	BestOf   *int64          `json:"best_of"`
	Suffix   *string         `json:"suffix"`
}

type chatRequest struct {
	commonRequest
	Messages            json.RawMessage `json:"messages"`
	MaxCompletionTokens *int64          `json:"max_completion_tokens"`
	Logprobs            *bool           `json:"logprobs"`
	TopLogprobs         *int64          `json:"top_logprobs"`
	Tools               json.RawMessage `json:"tools"`
	Functions           json.RawMessage `json:"functions"`
	ResponseFormat      json.RawMessage `json:"response_format"`
}

// message is one chat message with its text content.
type message struct {
	Role    string
	Content string
}

// request is a parsed, validated request, before tokenization.
type request struct {
	chat      bool
	model     *string   // nil: the served model
	text      string    // the prompt as text (completions) ...
	ids       []int64   // ... or as token ids (exactly one of text, ids, messages)
	messages  []message // chat
	maxTokens int64     // 0: default
	sampler   model.SamplerConfig
	seeded    bool // sampler.Seed came from the request
	stops     []string
	stream    bool
	usage     bool // stream_options.include_usage
	ignoreEOS bool
	tokenIDs  bool // return_token_ids
}

// decodeJSON unmarshals body into v, turning decoding errors into 400s
// that name the offending field.
func decodeJSON(body []byte, v any) *apiError {
	if len(bytes.TrimSpace(body)) == 0 {
		return invalid("", "the request body is empty; send a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return invalid("", "malformed JSON at byte %d: %v", se.Offset, err)
		case errors.As(err, &te) && te.Field != "":
			f := te.Field
			if i := strings.LastIndexByte(f, '.'); i >= 0 && strings.HasPrefix(f, "commonRequest") {
				f = f[i+1:]
			}
			return invalid(f, "%s: expected %s, got JSON %s", f, jsonKind(te.Type.Kind().String()), te.Value)
		case errors.As(err, &te):
			return invalid("", "the request body must be a JSON object, got JSON %s", te.Value)
		default:
			return invalid("", "malformed JSON: %v", err)
		}
	}
	if bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
		return invalid("", "the request body must be a JSON object, got null")
	}
	return nil
}

// jsonKind names a Go kind the way a JSON user would.
func jsonKind(k string) string {
	switch {
	case strings.HasPrefix(k, "int"), strings.HasPrefix(k, "uint"):
		return "an integer"
	case strings.HasPrefix(k, "float"):
		return "a number"
	case k == "bool":
		return "a boolean"
	case k == "string":
		return "a string"
	case k == "map", k == "struct":
		return "an object"
	case k == "slice":
		return "an array"
	}
	return k
}

// parseCompletion parses and validates a /v1/completions body.
func parseCompletion(body []byte, maxStops int) (*request, *apiError) {
	var cr completionRequest
	if e := decodeJSON(body, &cr); e != nil {
		return nil, e
	}
	r := &request{}
	if e := parseCommon(&cr.commonRequest, r, maxStops); e != nil {
		return nil, e
	}
	switch {
	case cr.Echo != nil && *cr.Echo:
		return nil, invalid("echo", "echo is not supported")
	case cr.Logprobs != nil:
		return nil, invalid("logprobs", "logprobs are not supported")
	case cr.BestOf != nil && *cr.BestOf != 1:
		return nil, invalid("best_of", "best_of %d is not supported: only best_of=1", *cr.BestOf)
	case cr.Suffix != nil && *cr.Suffix != "":
		return nil, invalid("suffix", "suffix is not supported")
	}
	if cr.MaxTokens != nil {
		r.maxTokens = *cr.MaxTokens
		if r.maxTokens < 1 {
			return nil, invalid("max_tokens", "max_tokens %d must be at least 1", r.maxTokens)
		}
	}
	if e := parsePrompt(cr.Prompt, r); e != nil {
		return nil, e
	}
	return r, nil
}

// parsePrompt reads "prompt": a string, an array of token ids, or an array
// holding one of those (one prompt per request).
func parsePrompt(raw json.RawMessage, r *request) *apiError {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return invalid("prompt", "prompt is required: a string or an array of token ids")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return invalid("prompt", "prompt is empty")
		}
		r.text = s
		return nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return invalid("prompt", "prompt must be a string, an array of token ids, or an array holding one of those")
	}
	if len(list) == 0 {
		return invalid("prompt", "prompt is empty")
	}
	first := bytes.TrimSpace(list[0])
	if len(first) > 0 && (first[0] == '"' || first[0] == '[') {
		if len(list) > 1 {
			return invalid("prompt", "%d prompts in one request: only one prompt per request is supported", len(list))
		}
		if first[0] == '"' {
			return parsePrompt(first, r)
		}
		var inner []json.RawMessage
		if json.Unmarshal(first, &inner) != nil {
			return invalid("prompt", "prompt must be a string, an array of token ids, or an array holding one of those")
		}
		if len(inner) == 0 {
			return invalid("prompt", "prompt is empty")
		}
		list = inner
	}
	ids := make([]int64, len(list))
	for i, v := range list {
		if err := json.Unmarshal(v, &ids[i]); err != nil {
			return invalid("prompt", "prompt[%d] = %s is not an integer token id", i, truncate(string(v), 40))
		}
	}
	r.ids = ids
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// parseChat parses and validates a /v1/chat/completions body.
func parseChat(body []byte, maxStops int) (*request, *apiError) {
	var cr chatRequest
	if e := decodeJSON(body, &cr); e != nil {
		return nil, e
	}
	r := &request{chat: true}
	if e := parseCommon(&cr.commonRequest, r, maxStops); e != nil {
		return nil, e
	}
	switch {
	case cr.Logprobs != nil && *cr.Logprobs:
		return nil, invalid("logprobs", "logprobs are not supported")
	case cr.TopLogprobs != nil && *cr.TopLogprobs != 0:
		return nil, invalid("top_logprobs", "top_logprobs are not supported")
	case !isNullOrEmpty(cr.Tools):
		return nil, invalid("tools", "tools are not supported")
	case !isNullOrEmpty(cr.Functions):
		return nil, invalid("functions", "functions are not supported")
	}
	if rf := bytes.TrimSpace(cr.ResponseFormat); len(rf) > 0 && !bytes.Equal(rf, []byte("null")) {
		var f struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(rf, &f) != nil || f.Type != "text" {
			return nil, invalid("response_format", "response_format %s is not supported: only {\"type\": \"text\"}", truncate(string(rf), 60))
		}
	}
	for _, mt := range []struct {
		name string
		v    *int64
	}{{"max_tokens", cr.MaxTokens}, {"max_completion_tokens", cr.MaxCompletionTokens}} {
		if mt.v != nil {
			if *mt.v < 1 {
				return nil, invalid(mt.name, "%s %d must be at least 1", mt.name, *mt.v)
			}
			r.maxTokens = *mt.v // max_completion_tokens, the newer name, wins
		}
	}
	msgs, e := parseMessages(cr.Messages)
	if e != nil {
		return nil, e
	}
	r.messages = msgs
	return r, nil
}

func isNullOrEmpty(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null")) || bytes.Equal(raw, []byte("[]"))
}

// parseMessages reads "messages": a non-empty array of {role, content}
// where content is a string, null, or an array of {"type": "text", "text"}
// parts.
func parseMessages(raw json.RawMessage) ([]message, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, invalid("messages", "messages is required: an array of {\"role\", \"content\"}")
	}
	var list []struct {
		Role    *string         `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, invalid("messages", "messages must be an array of {\"role\": string, \"content\": string or text parts}: %v", err)
	}
	if len(list) == 0 {
		return nil, invalid("messages", "messages is empty")
	}
	out := make([]message, len(list))
	for i, m := range list {
		p := fmt.Sprintf("messages[%d]", i)
		if m.Role == nil {
			return nil, invalid(p+".role", "%s has no role", p)
		}
		switch *m.Role {
		case "system", "developer", "user", "assistant":
		default:
			return nil, invalid(p+".role", "%s role %q is not supported (system, developer, user, assistant)", p, truncate(*m.Role, 40))
		}
		out[i].Role = *m.Role
		c := bytes.TrimSpace(m.Content)
		if len(c) == 0 || bytes.Equal(c, []byte("null")) {
			continue
		}
		if json.Unmarshal(c, &out[i].Content) == nil {
			continue
		}
		var parts []struct {
			Type string  `json:"type"`
			Text *string `json:"text"`
		}
		if json.Unmarshal(c, &parts) != nil {
			return nil, invalid(p+".content", "%s content must be a string or an array of text parts", p)
		}
		var b strings.Builder
		for j, part := range parts {
			if part.Type != "text" || part.Text == nil {
				return nil, invalid(p+".content", "%s content part %d of type %q is not supported: only text parts", p, j, truncate(part.Type, 40))
			}
			b.WriteString(*part.Text)
		}
		out[i].Content = b.String()
	}
	return out, nil
}

// parseCommon validates the fields both endpoints share into r.
func parseCommon(c *commonRequest, r *request, maxStops int) *apiError {
	r.model = c.Model
	if c.N != nil && *c.N != 1 {
		return invalid("n", "n %d is not supported: only n=1 (one choice per request)", *c.N)
	}
	r.sampler = model.SamplerConfig{Temperature: 1, TopP: 1}
	if t := c.Temperature; t != nil {
		if math.IsNaN(*t) || *t < 0 || *t > 2 {
			return invalid("temperature", "temperature %g must be in [0, 2]", *t)
		}
		r.sampler.Temperature = *t
	}
	if p := c.TopP; p != nil {
		if math.IsNaN(*p) || *p <= 0 || *p > 1 {
			return invalid("top_p", "top_p %g must be in (0, 1]", *p)
		}
		r.sampler.TopP = *p
	}
	if c.Seed != nil {
		r.sampler.Seed, r.seeded = uint64(*c.Seed), true
	}
	for _, p := range []struct {
		name string
		v    *float64
	}{{"presence_penalty", c.PresencePenalty}, {"frequency_penalty", c.FrequencyPenalty}} {
		if p.v != nil && *p.v != 0 {
			return invalid(p.name, "%s is not supported (only 0)", p.name)
		}
	}
	if len(c.LogitBias) > 0 {
		return invalid("logit_bias", "logit_bias is not supported")
	}
	r.stream = c.Stream != nil && *c.Stream
	if c.StreamOptions != nil {
		if !r.stream {
			return invalid("stream_options", "stream_options is only allowed with stream: true")
		}
		r.usage = c.StreamOptions.IncludeUsage != nil && *c.StreamOptions.IncludeUsage
	}
	r.ignoreEOS = c.IgnoreEOS != nil && *c.IgnoreEOS
	r.tokenIDs = c.ReturnTokenIDs != nil && *c.ReturnTokenIDs
	stops, e := parseStop(c.Stop, maxStops)
	if e != nil {
		return e
	}
	r.stops = stops
	return nil
}

// parseStop reads "stop": null, a string, or an array of strings.
func parseStop(raw json.RawMessage, maxStops int) ([]string, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var list []string
	var one string
	if json.Unmarshal(raw, &one) == nil {
		list = []string{one}
	} else if json.Unmarshal(raw, &list) != nil {
		return nil, invalid("stop", "stop must be a string or an array of strings")
	}
	if len(list) > maxStops {
		return nil, invalid("stop", "%d stop strings: at most %d are supported", len(list), maxStops)
	}
	for i, s := range list {
		if s == "" {
			return nil, invalid("stop", "stop string %d is empty", i)
		}
	}
	return list, nil
}

// limits is what a request is checked against once parsed.
type limits struct {
	name              string // served model
	tok               *tokenizer.Tokenizer
	vocab             int     // V
	context           int     // max tokens per sequence
	eos               []int32 // end-of-sequence ids (stop unless ignore_eos)
	chat              chatFormat
	defaultCompletion int // max_tokens of completions without one
}

// job is a request ready for the scheduler.
type job struct {
	prompt    []int32
	maxTokens int
	sampler   model.SamplerConfig
	stopIDs   []int32
	stops     []string
}

// prepare checks r against the model (name, vocabulary, context) and
// tokenizes its prompt.
func prepare(r *request, lim limits) (*job, *apiError) {
	if r.model != nil && *r.model != lim.name {
		return nil, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Param: "model", Code: "model_not_found",
			Message: fmt.Sprintf("the model %q does not exist; this server serves %q", truncate(*r.model, 100), lim.name)}
	}
	j := &job{sampler: r.sampler, stops: r.stops}
	var text string
	switch {
	case r.chat:
		var e *apiError
		if text, e = lim.chat.renderChat(r.messages); e != nil {
			return nil, e
		}
		j.stopIDs = append(j.stopIDs, lim.chat.stopIDs...)
	case r.ids != nil:
		j.prompt = make([]int32, len(r.ids))
		for i, id := range r.ids {
			if id < 0 || id >= int64(lim.vocab) {
				return nil, invalid("prompt", "prompt token %d has id %d, outside the model's vocabulary [0, %d)", i, id, lim.vocab)
			}
			j.prompt[i] = int32(id)
		}
	default:
		text = r.text
	}
	if j.prompt == nil {
		ids := lim.tok.Encode(text)
		if len(ids) == 0 {
			return nil, invalid("prompt", "the prompt encodes to no tokens")
		}
		j.prompt = make([]int32, len(ids))
		for i, id := range ids {
			if id >= lim.vocab {
				return nil, invalid("prompt", "prompt token %d has id %d, outside the model's vocabulary [0, %d) (the tokenizer and the model do not match)", i, id, lim.vocab)
			}
			j.prompt[i] = int32(id)
		}
	}
	P := len(j.prompt)
	param := "prompt"
	if r.chat {
		param = "messages"
	}
	if P >= lim.context {
		return nil, &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param, Code: "context_length_exceeded",
			Message: fmt.Sprintf("this model's maximum context length is %d tokens, but the prompt has %d tokens; shorten it (at least one token must be left to generate)", lim.context, P)}
	}
	switch {
	case r.maxTokens > 0:
		// Compared with what the context leaves, never added to the
		// prompt: P + max_tokens overflows int64 for max_tokens near 2^63.
		if left := lim.context - P; r.maxTokens > int64(left) {
			return nil, &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: "max_tokens", Code: "context_length_exceeded",
				Message: fmt.Sprintf("this model's maximum context length is %d tokens and the prompt has %d, which leaves %d for the completion, but max_tokens is %d; reduce the prompt or max_tokens", lim.context, P, left, r.maxTokens)}
		}
		j.maxTokens = int(r.maxTokens)
	case r.chat:
		j.maxTokens = lim.context - P
	default:
		j.maxTokens = min(lim.defaultCompletion, lim.context-P)
	}
	if !r.ignoreEOS {
		j.stopIDs = append(j.stopIDs, lim.eos...)
	}
	return j, nil
}

// Responses.

type usageJSON struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type completionChoice struct {
	Index          int     `json:"index"`
	Text           string  `json:"text"`
	Logprobs       any     `json:"logprobs"` // always null
	FinishReason   *string `json:"finish_reason"`
	PromptTokenIDs []int32 `json:"prompt_token_ids,omitempty"` // return_token_ids (in the first chunk of a stream)
	TokenIDs       []int32 `json:"token_ids,omitempty"`        // return_token_ids
}

// completionJSON is a /v1/completions answer ("text_completion"), and
// each chunk of its stream.
type completionJSON struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   *usageJSON         `json:"usage,omitempty"`
}

type chatMessageJSON struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chatChoice struct {
	Index        int              `json:"index"`
	Message      *chatMessageJSON `json:"message,omitempty"` // whole answers
	Delta        *chatDelta       `json:"delta,omitempty"`   // stream chunks
	Logprobs     any              `json:"logprobs"`          // always null
	FinishReason *string          `json:"finish_reason"`
	TokenIDs     []int32          `json:"token_ids,omitempty"` // return_token_ids
}

// chatJSON is a /v1/chat/completions answer ("chat.completion") and each
// chunk of its stream ("chat.completion.chunk").
type chatJSON struct {
	ID             string       `json:"id"`
	Object         string       `json:"object"`
	Created        int64        `json:"created"`
	Model          string       `json:"model"`
	Choices        []chatChoice `json:"choices"`
	Usage          *usageJSON   `json:"usage,omitempty"`
	PromptTokenIDs []int32      `json:"prompt_token_ids,omitempty"` // return_token_ids
}

type modelJSON struct {
	ID          string `json:"id"`
	Object      string `json:"object"`
	Created     int64  `json:"created"`
	OwnedBy     string `json:"owned_by"`
	MaxModelLen int    `json:"max_model_len"`
}

type modelListJSON struct {
	Object string      `json:"object"`
	Data   []modelJSON `json:"data"`
}
