package serve

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/safetensors"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

const goldenRoot = "../../testdata/golden"

// The golden models have 320-token vocabularies, like this tokenizer.
const gpt2Tok = goldenRoot + "/tokenizer_bpe_gpt2/tokenizer.json"

var goldenModels = []string{"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3_bf16"}

// golden is a golden model with its greedy-generation reference:
// prompts [B][P] and the tokens transformers generated from them [B][10].
type golden struct {
	m                  *model.Model
	prompts, generated [][]int32
}

func loadGolden(t testing.TB, name string) golden {
	t.Helper()
	dir := filepath.Join(goldenRoot, name)
	ck, err := model.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	m, err := ck.Load(model.LoadOptions{KeepBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g := golden{m: m}
	for _, q := range []struct {
		name string
		dst  *[][]int32
	}{{"prompt_ids", &g.prompts}, {"generated_ids", &g.generated}} {
		info, err := f.Info(q.name)
		if err != nil {
			t.Fatal(err)
		}
		v, err := f.Int64(q.name)
		if err != nil {
			t.Fatal(err)
		}
		B, T := info.Shape[0], info.Shape[1]
		for b := 0; b < B; b++ {
			row := make([]int32, T)
			for i := range row {
				row[i] = int32(v[b*T+i])
			}
			*q.dst = append(*q.dst, row)
		}
	}
	return g
}

var (
	tokOnce sync.Once
	tokGPT2 *tokenizer.Tokenizer
	tokErr  error
)

func gpt2(t testing.TB) *tokenizer.Tokenizer {
	tokOnce.Do(func() { tokGPT2, tokErr = tokenizer.Load(gpt2Tok) })
	if tokErr != nil {
		t.Fatal(tokErr)
	}
	return tokGPT2
}

// testServer is a Server behind a real HTTP listener (httptest).
type testServer struct {
	*Server
	srv *httptest.Server
}

// start serves m under the name "golden" (cfg's other fields as given) and
// stops everything, checking for leaked goroutines, when the test ends. It
// serves as `switchyard serve` does: HTTPServer on Listener, on loopback.
func start(t *testing.T, m Model, cfg Config) *testServer {
	t.Helper()
	return startOn(t, m, cfg, nil)
}

// startOn is start with the loopback listener wrapped by wrap (nil: as
// it is) inside Server.Listener's cap.
func startOn(t *testing.T, m Model, cfg Config, wrap func(net.Listener) net.Listener) *testServer {
	t.Helper()
	leakcheck.Check(t)
	if cfg.ModelName == "" {
		cfg.ModelName = "golden"
	}
	s, err := New(m, gpt2(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(nil)
	hs.Config = s.HTTPServer()
	if wrap != nil {
		hs.Listener = wrap(hs.Listener)
	}
	hs.Listener = s.Listener(hs.Listener)
	hs.Start()
	ts := &testServer{Server: s, srv: hs}
	t.Cleanup(func() {
		s.Close()
		ts.srv.Close()
	})
	return ts
}

// post sends body (a string is sent as is, anything else as JSON) and
// returns the status and the response body.
func (ts *testServer) post(t *testing.T, path string, body any) (int, []byte) {
	t.Helper()
	return ts.postCtx(t, context.Background(), path, body)
}

func (ts *testServer) postCtx(t *testing.T, ctx context.Context, path string, body any) (int, []byte) {
	t.Helper()
	resp, err := ts.do(ctx, http.MethodPost, path, body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func (ts *testServer) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			return nil, err
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, ts.srv.URL+path, bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	return ts.srv.Client().Do(req)
}

// sse reads a Server-Sent Events body: the JSON of each data: event before
// "data: [DONE]", which must be the last event.
func sse(t *testing.T, body io.Reader) []json.RawMessage {
	t.Helper()
	var out []json.RawMessage
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	done := false
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		if done {
			t.Fatalf("event after [DONE]: %q", line)
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("stream line %q is not a data: line", line)
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		if !json.Valid([]byte(data)) {
			t.Fatalf("stream event is not JSON: %q", data)
		}
		out = append(out, json.RawMessage(data))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if !done {
		t.Fatalf("stream did not end with data: [DONE] (%d events)", len(out))
	}
	return out
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// metric returns the value of a counter or gauge, or the sample count of a
// histogram, whose labels include want; -1 if there is none.
func (ts *testServer) metric(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := ts.met.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1
}

// gate holds every model step until the test lets it through: one value
// sent on ch lets one step run; closing ch lets all run. It wraps a real
// model, so what runs is real.
type gate struct {
	Model
	ch chan struct{}
}

func newGate(m Model) *gate { return &gate{Model: m, ch: make(chan struct{})} }

func (g *gate) Forward(ctx context.Context, seqs []Seq, tokens [][]int32) ([]float32, error) {
	select {
	case <-g.ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Model.Forward(ctx, seqs, tokens)
}

// stepLog records every model step of the real model it wraps: which
// sequences it fed, where, and how many tokens.
type stepLog struct {
	Model
	mu    sync.Mutex
	steps [][]fed
}

// fed is one sequence's part of a step: n tokens from position at.
type fed struct {
	seq   Seq
	at, n int
}

func (f fed) String() string { return fmt.Sprintf("%d+%d", f.at, f.n) }

func (l *stepLog) Forward(ctx context.Context, seqs []Seq, tokens [][]int32) ([]float32, error) {
	step := make([]fed, len(seqs))
	for b, s := range seqs {
		step[b] = fed{s, s.Len(), len(tokens[b])}
	}
	out, err := l.Model.Forward(ctx, seqs, tokens)
	if err == nil {
		l.mu.Lock()
		l.steps = append(l.steps, step)
		l.mu.Unlock()
	}
	return out, err
}

// log returns the steps so far, oldest first.
func (l *stepLog) log() [][]fed {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.steps)
}

// feeds returns the tokens the steps fed each sequence, in the order the
// sequences first appear, as (position, count) lists: a prompt's chunks
// come first, then one token per step once it decodes.
func feeds(steps [][]fed) (seqs []Seq, of map[Seq][]fed) {
	of = map[Seq][]fed{}
	for _, step := range steps {
		for _, f := range step {
			if _, seen := of[f.seq]; !seen {
				seqs = append(seqs, f.seq)
			}
			of[f.seq] = append(of[f.seq], f)
		}
	}
	return seqs, of
}

// eosModel is a real model that declares other end-of-sequence ids.
type eosModel struct {
	Model
	eos []int32
}

func (m eosModel) EOS() []int32 { return m.eos }

// completion is the part of a /v1/completions answer (or of a chunk) the
// tests read.
type completion struct {
	Object  string `json:"object"`
	Model   string `json:"model"`
	ID      string `json:"id"`
	Choices []struct {
		Text           string  `json:"text"`
		FinishReason   *string `json:"finish_reason"`
		TokenIDs       []int32 `json:"token_ids"`
		PromptTokenIDs []int32 `json:"prompt_token_ids"`
		Message        *struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
		Delta *struct {
			Role    string  `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Usage          *usageJSON `json:"usage"`
	PromptTokenIDs []int32    `json:"prompt_token_ids"`
}

func decode[T any](t *testing.T, raw []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	return v
}

// result is one generation, however it was delivered.
type result struct {
	Text   string
	IDs    []int32
	Finish string
	Usage  usageJSON
}

// complete runs a non-streaming request and returns its result; the
// status must be 200.
func (ts *testServer) complete(t *testing.T, path string, body map[string]any) result {
	t.Helper()
	code, raw := ts.post(t, path, body)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, raw)
	}
	c := decode[completion](t, raw)
	if len(c.Choices) != 1 || c.Choices[0].FinishReason == nil || c.Usage == nil {
		t.Fatalf("answer without one finished choice and usage: %s", raw)
	}
	ch := c.Choices[0]
	r := result{Text: ch.Text, IDs: ch.TokenIDs, Finish: *ch.FinishReason, Usage: *c.Usage}
	if ch.Message != nil {
		r.Text = ch.Message.Content
	}
	return r
}

// streamed runs the same request with stream: true (and usage) and joins
// its chunks; it also returns how many chunks carried text.
func (ts *testServer) streamed(t *testing.T, path string, body map[string]any) (result, int) {
	t.Helper()
	b := map[string]any{"stream": true, "stream_options": map[string]any{"include_usage": true}}
	for k, v := range body {
		b[k] = v
	}
	resp, err := ts.do(context.Background(), http.MethodPost, path, b)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		raw, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d, content type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}
	var r result
	texts := 0
	chat := strings.Contains(path, "chat")
	evs := sse(t, resp.Body)
	for i, ev := range evs {
		c := decode[completion](t, ev)
		wantObj := "text_completion"
		if chat {
			wantObj = "chat.completion.chunk"
		}
		if c.Object != wantObj {
			t.Fatalf("chunk %d object %q, want %q: %s", i, c.Object, wantObj, ev)
		}
		if c.Usage != nil {
			if i != len(evs)-1 || len(c.Choices) != 0 {
				t.Fatalf("usage chunk %d of %d is not the last or has choices: %s", i, len(evs), ev)
			}
			r.Usage = *c.Usage
			continue
		}
		if len(c.Choices) != 1 {
			t.Fatalf("chunk %d has %d choices: %s", i, len(c.Choices), ev)
		}
		ch := c.Choices[0]
		if r.Finish != "" {
			t.Fatalf("chunk after finish_reason: %s", ev)
		}
		text := ch.Text
		if chat {
			if ch.Delta == nil {
				t.Fatalf("chat chunk without delta: %s", ev)
			}
			if i == 0 && ch.Delta.Role != "assistant" {
				t.Fatalf("first chat chunk does not say the role: %s", ev)
			}
			if ch.Delta.Content != nil {
				text = *ch.Delta.Content
			}
		}
		if text != "" {
			texts++
		}
		r.Text += text
		r.IDs = append(r.IDs, ch.TokenIDs...)
		if ch.FinishReason != nil {
			r.Finish = *ch.FinishReason
		}
	}
	if r.Finish == "" {
		t.Fatal("no chunk had a finish_reason")
	}
	return r, texts
}
