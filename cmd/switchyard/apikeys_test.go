package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/auth"
)

// The keys serve accepts: every --api-key and every key line of
// --api-key-file, or else $SWITCHYARD_API_KEY's comma-separated keys;
// mistakes that would leave the API open are errors that do not print
// the keys.
func TestAPIKeyResolve(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keysFile := write("keys", "# team keys\n\nsk-one\n  sk-two  \n\t# old: sk-revoked\nsk-three#not-a-comment\r\n")
	for _, tc := range []struct {
		name  string
		flags []string
		file  string
		env   string
		want  []string
		err   string
	}{
		{name: "none: open"},
		{name: "blank env: open", env: "  "},
		{name: "several flags", flags: []string{"a", " b "}, want: []string{"a", "b"}},
		{name: "file", file: keysFile, want: []string{"sk-one", "sk-two", "sk-three#not-a-comment"}},
		{name: "flags and file", flags: []string{"a"}, file: keysFile, want: []string{"a", "sk-one", "sk-two", "sk-three#not-a-comment"}},
		{name: "env", env: "e1, e2,e3", want: []string{"e1", "e2", "e3"}},
		{name: "env is only the default", flags: []string{"a"}, env: "e1", want: []string{"a"}},
		{name: "env is only the default (file)", file: keysFile, env: "e1", want: []string{"sk-one", "sk-two", "sk-three#not-a-comment"}},
		{name: "empty flag", flags: []string{"a", ""}, err: "--api-key number 2 is empty"},
		{name: "empty env item", env: "sk-env-1,,sk-env-2", err: "key number 2"},
		{name: "missing file", file: filepath.Join(dir, "nope"), err: "no such file"},
		{name: "empty file", file: write("empty", ""), err: "holds no key"},
		{name: "comments only", file: write("comments", "# sk-commented\n\n   \n"), err: "holds no key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := apiKeyFlags{keys: tc.flags, file: tc.file}
			got, err := a.resolve(tc.env)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				for _, k := range []string{"sk-commented", "sk-env-1", "sk-env-2"} {
					if strings.Contains(err.Error(), k) {
						t.Errorf("the error prints a key: %v", err)
					}
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("keys %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestServeAPIKeysCLI runs `serve` (this test binary as switchyard, experts
// in-process) with keys from several --api-key flags and a key file, and
// then from $SWITCHYARD_API_KEY alone: every key given is accepted, others
// and none get 401 invalid_api_key, --auth-health locks /health, and a
// missing or empty key file stops serve before it serves.
func TestServeAPIKeysCLI(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SWITCHYARD_CLI_MAIN", "1")
	model, _ := filepath.Abs(filepath.Join(goldenRoot, "mixtral"))
	tok, _ := filepath.Abs(gpt2TokPath)
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("# rotated monthly\nfile-key-1\n\nfile-key-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	get := func(t *testing.T, url, path, key string) (int, string) {
		t.Helper()
		method, body := http.MethodGet, ""
		if path == "/v1/completions" {
			method, body = http.MethodPost, `{"prompt": "hello", "max_tokens": 2}`
		}
		req, _ := http.NewRequest(method, url+path, strings.NewReader(body))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	serveArgs := []string{"serve", "--model", model, "--tokenizer", tok, "--workers", "0", "--listen", "127.0.0.1:0"}
	for _, tc := range []struct {
		name       string
		args       []string
		env        string
		good, bad  []string
		healthOpen bool
	}{
		{"flags and file", []string{"--api-key", "flag-key-1", "--api-key", "flag-key-2", "--api-key-file", keyFile, "--auth-health"}, "env-key",
			[]string{"flag-key-1", "flag-key-2", "file-key-1", "file-key-2"}, []string{"", "env-key", "flag-key", "rotated"}, false},
		{"env", nil, "env-key-1,env-key-2", []string{"env-key-1", "env-key-2"}, []string{"", "env-key-1,env-key-2", "flag-key-1"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(apiKeyEnv, tc.env)
			p := startBinary(t, exe, t.TempDir(), append(slices.Clone(serveArgs), tc.args...)...)
			url := p.waitReady(t, 60*time.Second)
			t.Logf("serving at %s", url)
			for _, k := range tc.good {
				if code, b := get(t, url, "/v1/completions", k); code != http.StatusOK {
					t.Errorf("key %q: %d %s", k, code, b)
				}
			}
			for _, k := range tc.bad {
				code, b := get(t, url, "/v1/completions", k)
				if code != http.StatusUnauthorized || !strings.Contains(b, `"code":"invalid_api_key"`) {
					t.Errorf("key %q: %d %s, want 401 invalid_api_key", k, code, b)
				}
			}
			if code, _ := get(t, url, "/health", ""); (code == http.StatusOK) != tc.healthOpen {
				t.Errorf("/health without a key: %d (open: %v)", code, tc.healthOpen)
			}
			if code, _ := get(t, url, "/health", tc.good[0]); code != http.StatusOK {
				t.Errorf("/health with a key: %d", code)
			}
			if code, _ := get(t, url, "/metrics", ""); code != http.StatusOK {
				t.Errorf("/metrics without a key: %d, want 200 (no --auth-metrics)", code)
			}
			if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
				t.Fatal(err)
			}
			p.waitExit(t, 30*time.Second)
			if strings.Contains(p.stderr.String(), tc.good[0]) {
				t.Errorf("stderr shows a key:\n%s", p.stderr.String())
			}
		})
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("# nothing yet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{filepath.Join(t.TempDir(), "missing"), empty} {
		code, _, stderr := runCLI(append(slices.Clone(serveArgs), "--api-key-file", file)...)
		if code == 0 || !strings.Contains(stderr, "--api-key-file") || strings.Contains(stderr, "ready:") {
			t.Errorf("--api-key-file %s: exit %d, stderr:\n%s", file, code, stderr)
		}
	}
}

// TestServeAPIOverHTTPS: --api-tls-cert/--api-tls-key serve the API over
// HTTPS; a client trusting the certificate's CA is served (with its key),
// a plaintext client is not.
func TestServeAPIOverHTTPS(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SWITCHYARD_CLI_MAIN", "1")
	t.Setenv(apiKeyEnv, "")
	certs := t.TempDir()
	if err := auth.WriteDevCA(certs, auth.DevCA{Workers: 1, Frontends: 1}); err != nil {
		t.Fatal(err)
	}
	model, _ := filepath.Abs(filepath.Join(goldenRoot, "mixtral"))
	tok, _ := filepath.Abs(gpt2TokPath)
	p := startBinary(t, exe, t.TempDir(), "serve", "--model", model, "--tokenizer", tok, "--workers", "0", "--listen", "127.0.0.1:0",
		"--api-key", "k1", "--api-tls-cert", filepath.Join(certs, "fe1.crt"), "--api-tls-key", filepath.Join(certs, "fe1.key"))
	url := p.waitReady(t, 60*time.Second)
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("ready URL %s: want https://", url)
	}
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(certs, "ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("ca.crt: %v", err)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, url+"/v1/completions", strings.NewReader(`{"prompt": "hello", "max_tokens": 2}`))
	req.Header.Set("Authorization", "Bearer k1")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTPS completion: %d %s", resp.StatusCode, b)
	}
	if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("answered without TLS 1.2+: %+v", resp.TLS)
	}
	plain := "http://" + strings.TrimPrefix(url, "https://")
	if resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(plain + "/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("the HTTPS port answered a plaintext request with 200")
		}
	}
}
