package serve

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// With Config.APIKey, /v1/* needs "Authorization: Bearer KEY": a missing
// or wrong key gets 401 in OpenAI's error shape (code invalid_api_key)
// and generates nothing; /health and /metrics stay open.
func TestAPIKey(t *testing.T) {
	g := loadGolden(t, "mixtral")
	ts := start(t, FromModel(g.m), Config{APIKey: "s3cret"})
	call := func(method, path, auth, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.srv.URL+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	body := `{"prompt": "hello", "max_tokens": 3, "temperature": 0}`
	for _, tc := range []struct{ path, auth string }{
		{"/v1/completions", ""}, {"/v1/completions", "Bearer wrong"}, {"/v1/completions", "s3cret"},
		{"/v1/chat/completions", "Bearer s3cre"}, {"/v1/models", ""},
	} {
		method := http.MethodPost
		if tc.path == "/v1/models" {
			method = http.MethodGet
		}
		code, b := call(method, tc.path, tc.auth, body)
		var e struct {
			Error struct {
				Type string  `json:"type"`
				Code *string `json:"code"`
			} `json:"error"`
		}
		if code != http.StatusUnauthorized || json.Unmarshal(b, &e) != nil || e.Error.Type != "invalid_request_error" || e.Error.Code == nil || *e.Error.Code != "invalid_api_key" {
			t.Errorf("%s with Authorization %q: %d %s, want 401 invalid_api_key", tc.path, tc.auth, code, b)
		}
	}
	if st := ts.Stats(); st.Steps != 0 {
		t.Errorf("unauthorized requests ran %d model steps", st.Steps)
	}
	if code, b := call(http.MethodPost, "/v1/completions", "Bearer s3cret", body); code != http.StatusOK {
		t.Errorf("with the key: %d %s", code, b)
	}
	for _, p := range []string{"/health", "/metrics"} {
		if code, _ := call(http.MethodGet, p, "", ""); code != http.StatusOK {
			t.Errorf("%s without a key: %d, want 200", p, code)
		}
	}
}

// A max_tokens so large that prompt + max_tokens overflows int64 is refused
// as beyond the context, not accepted.
func TestMaxTokensOverflow(t *testing.T) {
	g := loadGolden(t, "mixtral")
	ts := start(t, FromModel(g.m), Config{})
	code, b := ts.post(t, "/v1/completions", `{"prompt": "hello", "max_tokens": 9223372036854775807}`)
	if code != http.StatusBadRequest || !strings.Contains(string(b), "context_length_exceeded") {
		t.Fatalf("max_tokens = MaxInt64: %d %s, want 400 context_length_exceeded", code, b)
	}
}
