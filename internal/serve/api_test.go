package serve

import (
	"encoding/json"
	"math"
	"slices"
	"testing"
)

// chatMLTemplate is a minimal ChatML chat template (OpenHermes-2.5's).
var chatMLTemplate = ChatTemplate{Source: "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"}

func testLimits(t testing.TB, template ChatTemplate) limits {
	tok := gpt2(t)
	chat, err := newChatFormat(template, tok)
	if err != nil {
		t.Fatal(err)
	}
	return limits{name: "golden", tok: tok, vocab: 320, context: 256, eos: []int32{0},
		chat: chat, defaultCompletion: 16}
}

// TestParseAcceptsOpenAIShapes: the request shapes OpenAI clients send
// parse to the same job, and absent fields take the documented defaults.
func TestParseAcceptsOpenAIShapes(t *testing.T) {
	lim := testLimits(t, ChatTemplate{})
	ids := func(s string) []int32 {
		var out []int32
		for _, id := range lim.tok.Encode(s) {
			out = append(out, int32(id))
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		chat   bool
		body   string
		prompt []int32
		max    int
		temp   float64
		topP   float64
		stops  []string
		stopID []int32
	}{
		{"string prompt, defaults", false, `{"prompt": "hello"}`, ids("hello"), 16, 1, 1, nil, []int32{0}},
		{"one string in a list", false, `{"prompt": ["hello"], "model": "golden"}`, ids("hello"), 16, 1, 1, nil, []int32{0}},
		{"token ids", false, `{"prompt": [3, 4, 5], "max_tokens": 7, "temperature": 0}`, []int32{3, 4, 5}, 7, 0, 1, nil, []int32{0}},
		{"one id list in a list", false, `{"prompt": [[3, 4]], "top_p": 0.5, "seed": -1}`, []int32{3, 4}, 16, 1, 0.5, nil, []int32{0}},
		{"nulls are absent", false, `{"prompt": "hi", "max_tokens": null, "temperature": null, "stop": null, "n": null, "logprobs": null}`, ids("hi"), 16, 1, 1, nil, []int32{0}},
		{"stop string, ignore_eos", false, `{"prompt": "hi", "stop": "\n", "ignore_eos": true, "n": 1}`, ids("hi"), 16, 1, 1, []string{"\n"}, nil},
		{"default max_tokens capped by the context", false, `{"prompt": [` + repeat("1, ", 250) + `1]}`, slices.Repeat([]int32{1}, 251), 5, 1, 1, nil, []int32{0}},
		{"chat, rest of the context", true, `{"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"]}`, ids("user: hi\nassistant:"), 256 - len(ids("user: hi\nassistant:")), 1, 1, []string{"a", "b"}, []int32{0}},
		{"chat, text parts, max_completion_tokens", true, `{"messages": [{"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}, {"role": "assistant", "content": null}], "max_completion_tokens": 9, "response_format": {"type": "text"}, "logprobs": false}`, ids("user: hi\nassistant: \nassistant:"), 9, 1, 1, nil, []int32{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r *request
			var e *apiError
			if tc.chat {
				r, e = parseChat([]byte(tc.body), 16)
			} else {
				r, e = parseCompletion([]byte(tc.body), 16)
			}
			if e != nil {
				t.Fatalf("refused: %d %s", e.Status, e.Message)
			}
			j, e := prepare(r, lim)
			if e != nil {
				t.Fatalf("refused: %d %s", e.Status, e.Message)
			}
			if !slices.Equal(j.prompt, tc.prompt) || j.maxTokens != tc.max || j.sampler.Temperature != tc.temp || j.sampler.TopP != tc.topP ||
				!slices.Equal(j.stops, tc.stops) || !slices.Equal(j.stopIDs, tc.stopID) {
				t.Errorf("job %+v\nwant prompt %v max %d temperature %g top_p %g stops %q stop ids %v", j, tc.prompt, tc.max, tc.temp, tc.topP, tc.stops, tc.stopID)
			}
		})
	}
}

func repeat(s string, n int) string {
	out := ""
	for range n {
		out += s
	}
	return out
}

// FuzzParseRequest: no request body makes parsing panic; every body is
// either refused with a 4xx OpenAI error or becomes a job within the
// model's limits.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"prompt": "hello", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": ["a", "b"], "stream": true, "stream_options": {"include_usage": true}}`,
		`{"prompt": [[1, 2, 3]], "n": 1, "ignore_eos": true, "return_token_ids": true}`,
		`{"prompt": ["x", "y"]}`, `{"prompt": [1e40]}`, `{"prompt": [-5]}`, `{"prompt": [[[1]]]}`, `{"max_tokens": 1e400}`,
		`{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_completion_tokens": 3}`,
		`{"messages": [{"role": "system", "content": "<|im_start|>"}], "model": "golden", "response_format": {"type": "json_object"}}`,
		`{"messages": null}`, `[]`, `null`, `"x"`, `{"prompt": "a", "stop": [""]}`, `{`, ``, "{\"prompt\": \"\xff\xfe\"}",
		// Overflow: max_tokens at and near 2^63 (P + max_tokens wraps
		// around), beyond int64, negative, and huge n, top_logprobs,
		// best_of, logprobs, seeds and token ids, huge arrays.
		`{"prompt": "hello", "max_tokens": 9223372036854775807}`, `{"prompt": [1, 2], "max_tokens": 9223372036854775806}`,
		`{"prompt": "hello", "max_tokens": 9223372036854775808}`, `{"prompt": "hello", "max_tokens": -9223372036854775808}`,
		`{"prompt": "hello", "max_tokens": -1}`, `{"prompt": "hello", "max_tokens": 0}`, `{"prompt": "hello", "max_tokens": 4294967297}`,
		`{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9223372036854775807}`,
		`{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "max_completion_tokens": 9223372036854775807}`,
		`{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 9223372036854775807, "n": -9223372036854775808}`,
		`{"prompt": "x", "n": 9223372036854775807}`, `{"prompt": "x", "n": 18446744073709551617}`, `{"prompt": "x", "best_of": -1, "logprobs": 9223372036854775807}`,
		`{"prompt": "x", "seed": -9223372036854775808}`, `{"prompt": "x", "seed": 18446744073709551615}`,
		`{"prompt": [2147483648]}`, `{"prompt": [-2147483649]}`, `{"prompt": [9223372036854775807, 1]}`,
		`{"prompt": [` + repeat("1,", 255) + `1], "max_tokens": 1}`, `{"prompt": [` + repeat("1,", 254) + `1], "max_tokens": 9223372036854775807}`,
		`{"prompt": "a", "stop": [` + repeat(`"s",`, 100) + `"s"]}`,
		`{"messages": [` + repeat(`{"role": "user", "content": "hi"},`, 300) + `{"role": "user"}]}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	lim := testLimits(f, chatMLTemplate)
	f.Fuzz(func(t *testing.T, body []byte, chat bool) {
		var r *request
		var e *apiError
		if chat {
			r, e = parseChat(body, 16)
		} else {
			r, e = parseCompletion(body, 16)
		}
		var j *job
		if e == nil {
			j, e = prepare(r, lim)
		}
		if e != nil {
			if e.Status < 400 || e.Status > 499 || e.Message == "" || e.Type == "" {
				t.Fatalf("bad error %+v", e)
			}
			if _, err := json.Marshal(e.body()); err != nil {
				t.Fatal(err)
			}
			return
		}
		P := len(j.prompt)
		// Compared with what the prompt leaves, never added to it: an
		// overflowed P + maxTokens would pass as small.
		if P == 0 || P >= lim.context || j.maxTokens < 1 || j.maxTokens > lim.context-P {
			t.Fatalf("prompt %d tokens, max_tokens %d: outside the context of %d", P, j.maxTokens, lim.context)
		}
		for _, id := range j.prompt {
			if id < 0 || int(id) >= lim.vocab {
				t.Fatalf("token id %d outside the vocabulary", id)
			}
		}
		s := j.sampler
		if err := s.Validate(); err != nil || s.Temperature > 2 || s.TopP <= 0 || math.IsNaN(s.TopP) {
			t.Fatalf("sampler %+v: %v", s, err)
		}
		if len(j.stops) > 16 || slices.Contains(j.stops, "") {
			t.Fatalf("stops %q", j.stops)
		}
	})
}
