package serve

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// call sends a request with an Authorization header (none if auth is
// "") and returns the status and body.
func (ts *testServer) call(t *testing.T, method, path, auth, body string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, ts.srv.URL+path, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := ts.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// checkUnauthorized checks a 401 in OpenAI's exact error shape:
// {"error": {"message", "type": "invalid_request_error", "param": null,
// "code": "invalid_api_key"}}.
func checkUnauthorized(t *testing.T, what string, code int, b []byte) {
	t.Helper()
	if code != http.StatusUnauthorized {
		t.Errorf("%s: %d %s, want 401", what, code, b)
		return
	}
	checkErrorJSON(t, b, "invalid_request_error", "", "invalid_api_key")
}

// With Config.APIKeys, /v1/* needs "Authorization: Bearer KEY" with any
// one of the keys: a missing or wrong key (a prefix of one, one with a
// suffix, a key without the scheme, two keys glued) gets 401 in OpenAI's
// error shape and generates nothing; /health and /metrics stay open.
func TestAPIKeys(t *testing.T) {
	g := loadGolden(t, "mixtral")
	ts := start(t, FromModel(g.m), Config{APIKeys: []string{"s3cret", "other-key-2", "k"}})
	body := `{"prompt": "hello", "max_tokens": 3, "temperature": 0}`
	for _, tc := range []struct{ path, auth string }{
		{"/v1/completions", ""}, {"/v1/completions", "Bearer wrong"}, {"/v1/completions", "s3cret"},
		{"/v1/chat/completions", "Bearer s3cre"}, {"/v1/chat/completions", "Bearer s3crets"}, {"/v1/models", ""},
		{"/v1/completions", "Bearer "}, {"/v1/completions", "Bearer"}, {"/v1/completions", "Basic s3cret"},
		{"/v1/completions", "Bearer s3cret other-key-2"}, {"/v1/completions", "Bearer  s3cret"}, {"/v1/completions", "Bearer K"},
	} {
		method := http.MethodPost
		if tc.path == "/v1/models" {
			method = http.MethodGet
		}
		code, b := ts.call(t, method, tc.path, tc.auth, body)
		checkUnauthorized(t, fmt.Sprintf("%s with Authorization %q", tc.path, tc.auth), code, b)
	}
	if st := ts.Stats(); st.Steps != 0 {
		t.Errorf("unauthorized requests ran %d model steps", st.Steps)
	}
	for _, auth := range []string{"Bearer s3cret", "Bearer other-key-2", "Bearer k", "bearer k"} {
		if code, b := ts.call(t, http.MethodPost, "/v1/completions", auth, body); code != http.StatusOK {
			t.Errorf("with %q: %d %s", auth, code, b)
		}
	}
	if code, b := ts.call(t, http.MethodGet, "/v1/models", "Bearer other-key-2", ""); code != http.StatusOK {
		t.Errorf("/v1/models with a key: %d %s", code, b)
	}
	for _, p := range []string{"/health", "/metrics"} {
		if code, _ := ts.call(t, http.MethodGet, p, "", ""); code != http.StatusOK {
			t.Errorf("%s without a key: %d, want 200", p, code)
		}
	}
	if n := ts.metric(t, "switchyard_serve_requests_total", map[string]string{"endpoint": "unauthorized", "code": "401"}); n != 12 {
		t.Errorf("%v requests counted as unauthorized, want 12", n)
	}
}

// Config.AuthHealth and AuthMetrics put /health and /metrics behind the
// keys too, each on its own.
func TestAuthHealthAndMetrics(t *testing.T) {
	g := loadGolden(t, "mixtral")
	for _, tc := range []struct {
		health, metrics bool
	}{{true, false}, {false, true}, {true, true}} {
		t.Run(fmt.Sprintf("health=%v,metrics=%v", tc.health, tc.metrics), func(t *testing.T) {
			ts := start(t, FromModel(g.m), Config{APIKeys: []string{"a", "b"}, AuthHealth: tc.health, AuthMetrics: tc.metrics})
			for _, p := range []struct {
				path   string
				locked bool
			}{{"/health", tc.health}, {"/metrics", tc.metrics}} {
				for _, auth := range []string{"", "Bearer c"} {
					code, b := ts.call(t, http.MethodGet, p.path, auth, "")
					if p.locked {
						checkUnauthorized(t, fmt.Sprintf("%s with %q", p.path, auth), code, b)
					} else if code != http.StatusOK {
						t.Errorf("%s with %q: %d, want 200 (open)", p.path, auth, code)
					}
				}
				if code, b := ts.call(t, http.MethodGet, p.path, "Bearer b", ""); code != http.StatusOK {
					t.Errorf("%s with a key: %d %s", p.path, code, b)
				}
			}
		})
	}
}

// Keys that could never be sent (empty, with white space) are refused
// when the server is made, without printing them.
func TestAPIKeysValidated(t *testing.T) {
	for _, keys := range [][]string{{""}, {"ok", "with space"}, {"tab\tkey"}, {"newline\n"}, {" lead"}} {
		_, err := Config{ModelName: "m", APIKeys: keys}.withDefaults()
		if err == nil {
			t.Errorf("keys %q accepted", keys)
			continue
		}
		for _, k := range keys {
			if k != "" && strings.Contains(err.Error(), k) {
				t.Errorf("the error prints the key %q: %v", k, err)
			}
		}
	}
	if _, err := (Config{ModelName: "m", APIKeys: []string{"sk-abc_DEF.123", "k2"}}).withDefaults(); err != nil {
		t.Errorf("valid keys: %v", err)
	}
}

// A max_tokens so large that prompt + max_tokens overflows int64 is refused
// as beyond the context (400 in OpenAI's shape), not accepted, on both
// endpoints and under both names; the message says what is left rather
// than a wrapped-around sum.
func TestMaxTokensOverflow(t *testing.T) {
	g := loadGolden(t, "mixtral")
	ts := start(t, FromModel(g.m), Config{})
	for _, tc := range []struct{ path, body string }{
		{"/v1/completions", `{"prompt": "hello", "max_tokens": 9223372036854775807}`},
		{"/v1/completions", `{"prompt": [1, 2, 3], "max_tokens": 9223372036854775807, "stream": true}`},
		{"/v1/completions", `{"prompt": "hello", "max_tokens": 9223372036854775806}`},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 9223372036854775807}`},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9223372036854775807}`},
		{"/v1/completions", `{"prompt": "hello", "max_tokens": 4294967296}`},
		{"/v1/completions", `{"prompt": [` + repeat("1, ", 200) + `1], "max_tokens": 56}`},
	} {
		code, b := ts.post(t, tc.path, tc.body)
		if code != http.StatusBadRequest {
			t.Errorf("%s %s: %d %s, want 400", tc.path, truncate(tc.body, 60), code, b)
			continue
		}
		checkErrorJSON(t, b, "invalid_request_error", "max_tokens", "context_length_exceeded")
		if strings.Contains(string(b), "-") {
			t.Errorf("%s: the message has a negative number (an overflowed sum?): %s", tc.path, b)
		}
	}
	// Beyond int64 altogether: a 400 for the field's type.
	code, b := ts.post(t, "/v1/completions", `{"prompt": "hello", "max_tokens": 9223372036854775808}`)
	if code != http.StatusBadRequest {
		t.Errorf("max_tokens = 2^63: %d %s, want 400", code, b)
	}
	if st := ts.Stats(); st.Steps != 0 {
		t.Errorf("refused requests ran %d model steps", st.Steps)
	}
	// What fits exactly is accepted: 201 prompt tokens + 55.
	r := ts.complete(t, "/v1/completions", map[string]any{"prompt": slices.Repeat([]int32{1}, 201), "max_tokens": 55, "ignore_eos": true, "temperature": 0})
	if r.Usage.TotalTokens != 256 || r.Finish != "length" {
		t.Errorf("prompt 201 + max_tokens 55 in a context of 256: %+v", r)
	}
}
