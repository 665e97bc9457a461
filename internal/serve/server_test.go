package serve

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/switchyard/switchyard/pkg/model"
)

func toInts(ids []int32) []int {
	out := make([]int, len(ids))
	for i, id := range ids {
		out[i] = int(id)
	}
	return out
}

// TestGoldenGreedyCompletion: a greedy /v1/completions request with a
// golden prompt (token ids) returns exactly the tokens transformers
// generated, for every family, with their text, finish_reason "length"
// and the right usage.
func TestGoldenGreedyCompletion(t *testing.T) {
	tok := gpt2(t)
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g := loadGolden(t, name)
			ts := start(t, FromModel(g.m), Config{})
			for b, p := range g.prompts {
				want := g.generated[b]
				r := ts.complete(t, "/v1/completions", map[string]any{
					"model": "golden", "prompt": p, "max_tokens": len(want), "temperature": 0,
					"ignore_eos": true, "return_token_ids": true,
				})
				if !slices.Equal(r.IDs, want) {
					t.Fatalf("prompt %d: generated %v, transformers %v", b, r.IDs, want)
				}
				text, err := tok.DecodeSkipSpecial(toInts(want))
				if err != nil {
					t.Fatal(err)
				}
				if r.Text != text {
					t.Errorf("prompt %d: text %q, want %q", b, r.Text, text)
				}
				if u := (usageJSON{len(p), len(want), len(p) + len(want)}); r.Finish != "length" || r.Usage != u {
					t.Errorf("prompt %d: finish %q usage %+v, want length %+v", b, r.Finish, r.Usage, u)
				}
			}
		})
	}
}

// greedyMargin is the smallest top-1 minus top-2 logit gap along n greedy
// steps of prompt, decoded alone in process.
func greedyMargin(t *testing.T, m *model.Model, prompt []int32, n int) float32 {
	t.Helper()
	s := m.NewSeq()
	toks := prompt
	margin := float32(1e9)
	for i := 0; i < n; i++ {
		out, err := m.Forward(context.Background(), []*model.Seq{s}, [][]int32{toks}, model.Options{})
		if err != nil {
			t.Fatal(err)
		}
		l := slices.Clone(out.Logits)
		best := model.Argmax(l)
		top := l[best]
		l[best] = -1e30
		margin = min(margin, top-l[model.Argmax(l)])
		toks = []int32{best}
	}
	return margin
}

type reply struct {
	code int
	body []byte
	err  error
}

// postAsync sends a request from another goroutine.
func (ts *testServer) postAsync(ctx context.Context, path string, body any) <-chan reply {
	ch := make(chan reply, 1)
	go func() {
		resp, err := ts.do(ctx, http.MethodPost, path, body)
		if err != nil {
			ch <- reply{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- reply{code: resp.StatusCode, body: b, err: err}
	}()
	return ch
}

// TestBatchedEqualsOneAtATime sends the same six requests (greedy and
// seeded sampling, completions and chat, token and text prompts) one at a
// time, then all at once to a server whose first step is held until every
// request is queued, so that they run as one batch: each answer is the
// same. Greedy requests use prompts whose top-2 logit margins are far
// above the rounding differences between batched and single decoding
// (see the package documentation). The batch also runs as two overlapped
// micro-batches (FromModelOverlapped): the same answers.
func TestBatchedEqualsOneAtATime(t *testing.T) {
	tok := gpt2(t)
	for _, tc := range []struct {
		name    string
		overlap bool
	}{{"mixtral", false}, {"deepseek_v3_bf16", false}, {"mixtral", true}, {"deepseek_v3_bf16", true}} {
		name := tc.name
		t.Run(fmt.Sprintf("%s/overlap=%v", name, tc.overlap), func(t *testing.T) {
			g := loadGolden(t, name)
			type req struct {
				path string
				body map[string]any
			}
			reqs := []req{
				{"/v1/completions", map[string]any{"prompt": g.prompts[0], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "return_token_ids": true}},
				{"/v1/completions", map[string]any{"prompt": g.prompts[1], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "return_token_ids": true}},
				{"/v1/completions", map[string]any{"prompt": "The coordinator shards experts", "max_tokens": 24, "temperature": 0, "return_token_ids": true}},
				{"/v1/completions", map[string]any{"prompt": "Light is refracted", "max_tokens": 16, "temperature": 0.9, "top_p": 0.9, "seed": 7, "return_token_ids": true}},
				{"/v1/completions", map[string]any{"prompt": [][]int32{{5, 17, 99}}, "max_tokens": 30, "temperature": 1.2, "seed": 11, "return_token_ids": true}},
				{"/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "Why is the sky blue?"}}, "max_tokens": 12, "temperature": 0, "return_token_ids": true}},
			}
			for i, p := range map[int][]int32{0: g.prompts[0], 1: g.prompts[1]} {
				if mg := greedyMargin(t, g.m, p, 10); mg < 1e-4 {
					t.Fatalf("precondition: request %d's top-2 margin %.3g is too small to compare batched and single decoding", i, mg)
				}
			}
			for i, s := range map[int]string{2: "The coordinator shards experts", 5: "user: Why is the sky blue?\nassistant:"} {
				p := make([]int32, 0)
				for _, id := range tok.Encode(s) {
					p = append(p, int32(id))
				}
				n := reqs[i].body["max_tokens"].(int)
				if mg := greedyMargin(t, g.m, p, n); mg < 1e-4 {
					t.Fatalf("precondition: request %d's top-2 margin %.3g is too small to compare batched and single decoding", i, mg)
				}
			}

			alone := start(t, FromModel(g.m), Config{})
			want := make([]result, len(reqs))
			for i, r := range reqs {
				want[i] = alone.complete(t, r.path, r.body)
			}

			mk := FromModel
			if tc.overlap {
				mk = FromModelOverlapped
			}
			gt := newGate(mk(g.m))
			batched := start(t, gt, Config{MaxSeqs: 8})
			replies := make([]<-chan reply, len(reqs))
			replies[0] = batched.postAsync(context.Background(), reqs[0].path, reqs[0].body)
			waitFor(t, "the first request to be admitted", func() bool { return batched.Stats().Active == 1 })
			for i := 1; i < len(reqs); i++ {
				replies[i] = batched.postAsync(context.Background(), reqs[i].path, reqs[i].body)
			}
			waitFor(t, "every request to be queued", func() bool { return batched.Stats().Queued == len(reqs)-1 })
			close(gt.ch)
			for i, ch := range replies {
				rp := <-ch
				if rp.err != nil || rp.code != http.StatusOK {
					t.Fatalf("request %d: %v status %d: %s", i, rp.err, rp.code, rp.body)
				}
				c := decode[completion](t, rp.body)
				got := result{Text: c.Choices[0].Text, IDs: c.Choices[0].TokenIDs, Finish: *c.Choices[0].FinishReason, Usage: *c.Usage}
				if m := c.Choices[0].Message; m != nil {
					got.Text = m.Content
				}
				if !slices.Equal(got.IDs, want[i].IDs) || got.Text != want[i].Text || got.Finish != want[i].Finish || got.Usage != want[i].Usage {
					t.Errorf("request %d batched:\n%+v\none at a time:\n%+v", i, got, want[i])
				}
			}
			if st := batched.Stats(); st.MaxBatch != len(reqs) {
				t.Errorf("largest batch %d sequences, want all %d in one step", st.MaxBatch, len(reqs))
			}
			if st := alone.Stats(); st.MaxBatch != 1 {
				t.Errorf("one-at-a-time server batched %d sequences", st.MaxBatch)
			}
		})
	}
}

// TestStreamMatchesWhole: streamed chunks (SSE, ending with [DONE])
// concatenate to the text of the same request answered whole, with the
// same tokens, finish_reason and usage, for both endpoints, greedy and
// sampled.
func TestStreamMatchesWhole(t *testing.T) {
	g := loadGolden(t, "qwen3_moe")
	ts := start(t, FromModel(g.m), Config{})
	for _, tc := range []struct {
		path string
		body map[string]any
	}{
		{"/v1/completions", map[string]any{"prompt": "Of the Refractions of Light", "max_tokens": 40, "temperature": 0, "return_token_ids": true}},
		{"/v1/completions", map[string]any{"prompt": "Of the Refractions of Light", "max_tokens": 40, "temperature": 1, "seed": 3, "return_token_ids": true}},
		{"/v1/completions", map[string]any{"prompt": "Of the Refractions of Light", "max_tokens": 40, "temperature": 0, "stop": []string{"e", "zz"}}},
		{"/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Colours?"}}, "max_tokens": 40, "temperature": 0.7, "seed": 5, "return_token_ids": true}},
	} {
		whole := ts.complete(t, tc.path, tc.body)
		str, _ := ts.streamed(t, tc.path, tc.body)
		if str.Text != whole.Text || !slices.Equal(str.IDs, whole.IDs) || str.Finish != whole.Finish || str.Usage != whole.Usage {
			t.Errorf("%s %v:\nstreamed %+v\nwhole    %+v", tc.path, tc.body, str, whole)
		}
		if whole.Usage.CompletionTokens == 0 || whole.Usage.TotalTokens != whole.Usage.PromptTokens+whole.Usage.CompletionTokens {
			t.Errorf("usage %+v", whole.Usage)
		}
	}
}

// TestEndedSequencesAreReused: a request that ended gives its KV cache to
// the model's pool (Model.FreeSeq), the next request prefills into it, and
// its answer is the same as the first's, token for token, with or without
// the overlapped micro-batches.
func TestEndedSequencesAreReused(t *testing.T) {
	g := loadGolden(t, "deepseek_v2_lite")
	for _, mk := range []func(*model.Model) Model{FromModel, FromModelOverlapped} {
		sm := mk(g.m)
		ts := start(t, sm, Config{})
		body := map[string]any{"prompt": "Of the Refractions of Light", "max_tokens": 24, "temperature": 0, "return_token_ids": true}
		first := ts.complete(t, "/v1/completions", body)
		waitFor(t, "the first sequence back in the pool", func() bool {
			free, _, _, _ := sm.(*loaded).pool.Stats()
			return free == 1
		})
		if v := ts.metric(t, "switchyard_serve_kv_pool_bytes", nil); v <= 0 {
			t.Errorf("kv_pool_bytes gauge %v with a sequence in the pool", v)
		}
		second := ts.complete(t, "/v1/completions", body)
		if !slices.Equal(first.IDs, second.IDs) || len(first.IDs) == 0 {
			t.Errorf("the same greedy request: %v on a fresh sequence, %v on a reused one", first.IDs, second.IDs)
		}
		if _, _, hits, gets := sm.(*loaded).pool.Stats(); hits != 1 || gets != 2 {
			t.Errorf("%d of %d sequences came from the pool, want 1 of 2", hits, gets)
		}
	}
}

// TestStreamIsIncremental: each token is sent as soon as it is generated:
// with one model step allowed at a time, a chunk with that step's token
// arrives before the next step may run.
func TestStreamIsIncremental(t *testing.T) {
	g := loadGolden(t, "mixtral")
	gt := newGate(FromModel(g.m))
	ts := start(t, gt, Config{})
	resp, err := ts.do(context.Background(), http.MethodPost, "/v1/completions", map[string]any{
		"prompt": g.prompts[0], "max_tokens": 5, "temperature": 0, "stream": true, "return_token_ids": true, "ignore_eos": true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	readEvent := func() string {
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("stream ended: %v", err)
			}
			if line = strings.TrimSpace(line); line != "" {
				return strings.TrimPrefix(line, "data: ")
			}
		}
	}
	var ids []int32
	for step := 0; step < 5; step++ {
		gt.ch <- struct{}{}
		c := decode[completion](t, []byte(readEvent()))
		if len(c.Choices) != 1 || len(c.Choices[0].TokenIDs) != 1 {
			t.Fatalf("step %d: chunk does not hold exactly this step's token: %+v", step, c)
		}
		ids = append(ids, c.Choices[0].TokenIDs...)
		if fin := c.Choices[0].FinishReason; (fin != nil) != (step == 4) {
			t.Fatalf("step %d: finish_reason %v", step, fin)
		}
	}
	if ev := readEvent(); ev != "[DONE]" {
		t.Fatalf("after the last token: %q, want [DONE]", ev)
	}
	if !slices.Equal(ids, g.generated[0][:5]) {
		t.Errorf("streamed %v, want %v", ids, g.generated[0][:5])
	}
}

// TestStopStrings: the answer ends just before the first occurrence of a
// stop string (never including it, streamed or not), with finish_reason
// "stop", and fewer tokens than max_tokens.
func TestStopStrings(t *testing.T) {
	g := loadGolden(t, "olmoe")
	ts := start(t, FromModel(g.m), Config{})
	base := map[string]any{"prompt": "Experiments concerning light", "max_tokens": 60, "temperature": 0, "ignore_eos": true}
	full := ts.complete(t, "/v1/completions", base)
	if full.Finish != "length" || len(full.Text) < 20 {
		t.Fatalf("reference generation %+v is too short to cut", full)
	}
	// A 3-byte stop string first occurring in the second half.
	stop, at := "", -1
	for k := len(full.Text) / 2; k+3 <= len(full.Text); k++ {
		s := full.Text[k : k+3]
		if utf8.ValidString(s) && strings.Index(full.Text, s) == k {
			stop, at = s, k
			break
		}
	}
	if at < 0 {
		t.Fatalf("no usable stop string in %q", full.Text)
	}
	for _, stops := range []any{stop, []string{"never-generated-ZZZ", stop}} {
		body := map[string]any{"stop": stops}
		for k, v := range base {
			body[k] = v
		}
		whole := ts.complete(t, "/v1/completions", body)
		str, _ := ts.streamed(t, "/v1/completions", body)
		for _, r := range []result{whole, str} {
			if r.Text != full.Text[:at] || r.Finish != "stop" {
				t.Errorf("stop %q: text %q finish %q, want %q stop", stops, r.Text, r.Finish, full.Text[:at])
			}
			if r.Usage.CompletionTokens >= full.Usage.CompletionTokens {
				t.Errorf("stop %q: generated %d tokens, as many as without it", stops, r.Usage.CompletionTokens)
			}
		}
	}
}

// TestEOSStops: generation ends at an end-of-sequence token (counted in
// usage, not shown in the text) with finish_reason "stop", unless
// ignore_eos.
func TestEOSStops(t *testing.T) {
	g := loadGolden(t, "mixtral")
	want := g.generated[0]
	eos := want[3]
	if slices.Index(want, eos) != 3 {
		t.Fatalf("precondition: token %d occurs before position 3 in %v", eos, want)
	}
	ts := start(t, eosModel{FromModel(g.m), []int32{eos}}, Config{})
	body := map[string]any{"prompt": g.prompts[0], "max_tokens": 10, "temperature": 0, "return_token_ids": true}
	r := ts.complete(t, "/v1/completions", body)
	text, _ := gpt2(t).DecodeSkipSpecial(toInts(want[:3]))
	if r.Finish != "stop" || !slices.Equal(r.IDs, want[:4]) || r.Text != text || r.Usage.CompletionTokens != 4 {
		t.Errorf("got %+v, want ids %v text %q finish stop", r, want[:4], text)
	}
	body["ignore_eos"] = true
	if r := ts.complete(t, "/v1/completions", body); r.Finish != "length" || !slices.Equal(r.IDs, want) {
		t.Errorf("ignore_eos: got %+v, want %v", r, want)
	}
}

// TestErrors: every malformed request class is answered with its HTTP
// status and OpenAI's error object.
func TestErrors(t *testing.T) {
	g := loadGolden(t, "qwen2_moe")
	ts := start(t, FromModel(g.m), Config{MaxBodyBytes: 4096})
	long := make([]int, 256) // the golden models' context
	ok := func(extra string) string { return `{"prompt": "hi", "max_tokens": 2` + extra + `}` }
	msgs := `"messages": [{"role": "user", "content": "hi"}]`
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		typ, param, code         string
	}{
		{"malformed JSON", "POST", "/v1/completions", `{"prompt": "hi",`, 400, "invalid_request_error", "", ""},
		{"not an object", "POST", "/v1/completions", `[1, 2]`, 400, "invalid_request_error", "", ""},
		{"null body", "POST", "/v1/completions", `null`, 400, "invalid_request_error", "", ""},
		{"empty body", "POST", "/v1/completions", ``, 400, "invalid_request_error", "", ""},
		{"wrong type", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": "ten"}`, 400, "invalid_request_error", "max_tokens", ""},
		{"unknown model", "POST", "/v1/completions", `{"model": "gpt-4", "prompt": "hi"}`, 404, "invalid_request_error", "model", "model_not_found"},
		{"unknown model (chat)", "POST", "/v1/chat/completions", `{"model": "gpt-4", ` + msgs + `}`, 404, "invalid_request_error", "model", "model_not_found"},
		{"missing prompt", "POST", "/v1/completions", `{"max_tokens": 2}`, 400, "invalid_request_error", "prompt", ""},
		{"empty prompt", "POST", "/v1/completions", `{"prompt": ""}`, 400, "invalid_request_error", "prompt", ""},
		{"empty id list", "POST", "/v1/completions", `{"prompt": []}`, 400, "invalid_request_error", "prompt", ""},
		{"two prompts", "POST", "/v1/completions", `{"prompt": ["a", "b"]}`, 400, "invalid_request_error", "prompt", ""},
		{"prompt of objects", "POST", "/v1/completions", `{"prompt": [{"a": 1}]}`, 400, "invalid_request_error", "prompt", ""},
		{"prompt over the context", "POST", "/v1/completions", fmt.Sprintf(`{"prompt": %s}`, mustJSON(long)), 400, "invalid_request_error", "prompt", "context_length_exceeded"},
		{"prompt + max_tokens over the context", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": 255}`, 400, "invalid_request_error", "max_tokens", "context_length_exceeded"},
		{"token id = vocab", "POST", "/v1/completions", `{"prompt": [1, 320]}`, 400, "invalid_request_error", "prompt", ""},
		{"negative token id", "POST", "/v1/completions", `{"prompt": [-1]}`, 400, "invalid_request_error", "prompt", ""},
		{"huge token id", "POST", "/v1/completions", `{"prompt": [[7, 1000000000000]]}`, 400, "invalid_request_error", "prompt", ""},
		{"fractional token id", "POST", "/v1/completions", `{"prompt": [1.5]}`, 400, "invalid_request_error", "prompt", ""},
		{"temperature < 0", "POST", "/v1/completions", ok(`, "temperature": -0.5`), 400, "invalid_request_error", "temperature", ""},
		{"temperature > 2", "POST", "/v1/completions", ok(`, "temperature": 2.5`), 400, "invalid_request_error", "temperature", ""},
		{"top_p 0", "POST", "/v1/completions", ok(`, "top_p": 0`), 400, "invalid_request_error", "top_p", ""},
		{"top_p > 1", "POST", "/v1/completions", ok(`, "top_p": 1.01`), 400, "invalid_request_error", "top_p", ""},
		{"max_tokens 0", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": 0}`, 400, "invalid_request_error", "max_tokens", ""},
		{"max_tokens < 0", "POST", "/v1/completions", `{"prompt": "hi", "max_tokens": -3}`, 400, "invalid_request_error", "max_tokens", ""},
		{"n 2", "POST", "/v1/completions", ok(`, "n": 2`), 400, "invalid_request_error", "n", ""},
		{"n 2 (chat)", "POST", "/v1/chat/completions", `{"n": 2, ` + msgs + `}`, 400, "invalid_request_error", "n", ""},
		{"empty stop", "POST", "/v1/completions", ok(`, "stop": ""`), 400, "invalid_request_error", "stop", ""},
		{"stop of numbers", "POST", "/v1/completions", ok(`, "stop": [1]`), 400, "invalid_request_error", "stop", ""},
		{"17 stops", "POST", "/v1/completions", ok(`, "stop": ` + mustJSON(strings.Split("abcdefghijklmnopq", ""))), 400, "invalid_request_error", "stop", ""},
		{"logprobs", "POST", "/v1/completions", ok(`, "logprobs": 2`), 400, "invalid_request_error", "logprobs", ""},
		{"echo", "POST", "/v1/completions", ok(`, "echo": true`), 400, "invalid_request_error", "echo", ""},
		{"penalty", "POST", "/v1/completions", ok(`, "presence_penalty": 0.5`), 400, "invalid_request_error", "presence_penalty", ""},
		{"stream_options without stream", "POST", "/v1/completions", ok(`, "stream_options": {"include_usage": true}`), 400, "invalid_request_error", "stream_options", ""},
		{"missing messages", "POST", "/v1/chat/completions", `{"max_tokens": 2}`, 400, "invalid_request_error", "messages", ""},
		{"empty messages", "POST", "/v1/chat/completions", `{"messages": []}`, 400, "invalid_request_error", "messages", ""},
		{"bad role", "POST", "/v1/chat/completions", `{"messages": [{"role": "wizard", "content": "hi"}]}`, 400, "invalid_request_error", "messages[0].role", ""},
		{"image part", "POST", "/v1/chat/completions", `{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}`, 400, "invalid_request_error", "messages[0].content", ""},
		{"tools", "POST", "/v1/chat/completions", `{"tools": [{"type": "function"}], ` + msgs + `}`, 400, "invalid_request_error", "tools", ""},
		{"chat max_tokens over the context", "POST", "/v1/chat/completions", `{"max_completion_tokens": 1000, ` + msgs + `}`, 400, "invalid_request_error", "max_tokens", "context_length_exceeded"},
		{"body over the limit", "POST", "/v1/completions", `{"prompt": "` + strings.Repeat("a", 5000) + `"}`, 413, "invalid_request_error", "", ""},
		{"GET completions", "GET", "/v1/completions", ``, 405, "invalid_request_error", "", ""},
		{"POST models", "POST", "/v1/models", `{}`, 405, "invalid_request_error", "", ""},
		{"unknown path", "GET", "/v1/engines", ``, 404, "invalid_request_error", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := ts.do(context.Background(), tc.method, tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, raw)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content type %q", ct)
			}
			checkErrorJSON(t, raw, tc.typ, tc.param, tc.code)
		})
	}
	if n := ts.metric(t, "switchyard_serve_requests_total", map[string]string{"endpoint": "completions", "code": "400"}); n < 20 {
		t.Errorf("requests_total{completions,400} = %v", n)
	}
	if ts.Stats().Steps != 0 {
		t.Errorf("a malformed request reached the model")
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// checkErrorJSON checks OpenAI's error shape: exactly
// {"error": {"message": string, "type": string, "param": string|null,
// "code": string|null}}.
func checkErrorJSON(t *testing.T, raw []byte, typ, param, code string) {
	t.Helper()
	var top map[string]map[string]any
	if err := json.Unmarshal(raw, &top); err != nil || len(top) != 1 || top["error"] == nil {
		t.Fatalf("not an OpenAI error object: %s", raw)
	}
	e := top["error"]
	if len(e) != 4 {
		t.Errorf("error has fields %v, want message, type, param, code", e)
	}
	if m, _ := e["message"].(string); m == "" {
		t.Errorf("no message: %s", raw)
	}
	if e["type"] != typ {
		t.Errorf("type %v, want %q: %s", e["type"], typ, raw)
	}
	for k, want := range map[string]string{"param": param, "code": code} {
		v, present := e[k]
		switch {
		case !present:
			t.Errorf("%s missing: %s", k, raw)
		case want == "" && v != nil:
			t.Errorf("%s = %v, want null: %s", k, v, raw)
		case want != "" && v != want:
			t.Errorf("%s = %v, want %q: %s", k, v, want, raw)
		}
	}
}

// TestCancelledClientFreesSlot: when a streaming client goes away its
// sequence leaves the batch and its KV cache is released (active
// sequences and KV bytes drop to 0, the request counts as 499), long
// before max_tokens, and the slot serves the next request.
func TestCancelledClientFreesSlot(t *testing.T) {
	g := loadGolden(t, "deepseek_v2_lite")
	gt := newGate(FromModel(g.m))
	ts := start(t, gt, Config{MaxSeqs: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := ts.do(ctx, http.MethodPost, "/v1/completions", map[string]any{"prompt": g.prompts[0], "max_tokens": 200, "stream": true, "ignore_eos": true, "return_token_ids": true})
	if err != nil {
		t.Fatal(err)
	}
	gt.ch <- struct{}{} // prefill: the first token
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: {") {
		t.Fatalf("first chunk %q: %v", line, err)
	}
	waitFor(t, "the sequence's KV cache to be counted", func() bool { st := ts.Stats(); return st.Active == 1 && st.KVCacheBytes > 0 })
	if v := ts.metric(t, "switchyard_serve_active_sequences", nil); v != 1 {
		t.Fatalf("active_sequences gauge %v, want 1", v)
	}
	cancel()
	resp.Body.Close()
	// Let steps run until the scheduler has seen the cancellation.
	waitFor(t, "the cancelled sequence to leave", func() bool {
		select {
		case gt.ch <- struct{}{}:
		case <-time.After(time.Millisecond):
		}
		return ts.Stats().Active == 0
	})
	if st := ts.Stats(); st.KVCacheBytes != 0 {
		t.Errorf("KV cache still holds %d bytes", st.KVCacheBytes)
	}
	if v := ts.metric(t, "switchyard_serve_kv_cache_bytes", nil); v != 0 {
		t.Errorf("kv_cache_bytes gauge %v", v)
	}
	if n := ts.metric(t, "switchyard_serve_generation_tokens_total", nil); n >= 200 {
		t.Errorf("%v tokens generated for a client that left after the first", n)
	}
	waitFor(t, "the request to be counted as 499", func() bool {
		return ts.metric(t, "switchyard_serve_requests_total", map[string]string{"endpoint": "completions", "code": "499"}) == 1
	})
	close(gt.ch)
	if r := ts.complete(t, "/v1/completions", map[string]any{"prompt": g.prompts[1], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "return_token_ids": true}); !slices.Equal(r.IDs, g.generated[1]) {
		t.Errorf("next request in the freed slot: %v, want %v", r.IDs, g.generated[1])
	}
}

// TestQueueFull: with every slot busy and the queue full, a request is
// refused at once with 429 (rate_limit_error, Retry-After); queued
// requests wait for a slot and then complete.
func TestQueueFull(t *testing.T) {
	g := loadGolden(t, "mixtral")
	gt := newGate(FromModel(g.m))
	ts := start(t, gt, Config{MaxSeqs: 1, MaxQueue: 1})
	body := map[string]any{"prompt": g.prompts[0], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	a := ts.postAsync(context.Background(), "/v1/completions", body)
	waitFor(t, "the first request to take the slot", func() bool { return ts.Stats().Active == 1 })
	b := ts.postAsync(context.Background(), "/v1/completions", body)
	waitFor(t, "the second request to queue", func() bool { return ts.Stats().Queued == 1 })
	if v := ts.metric(t, "switchyard_serve_queued_requests", nil); v != 1 {
		t.Errorf("queued_requests gauge %v", v)
	}
	resp, err := ts.do(context.Background(), http.MethodPost, "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), raw)
	}
	checkErrorJSON(t, raw, "rate_limit_error", "", "rate_limit_exceeded")
	close(gt.ch)
	for i, ch := range []<-chan reply{a, b} {
		rp := <-ch
		if rp.err != nil || rp.code != http.StatusOK {
			t.Fatalf("request %d: %v %d %s", i, rp.err, rp.code, rp.body)
		}
		if c := decode[completion](t, rp.body); !slices.Equal(c.Choices[0].TokenIDs, g.generated[0]) {
			t.Errorf("request %d: %v", i, c.Choices[0].TokenIDs)
		}
	}
	if n := ts.metric(t, "switchyard_serve_requests_total", map[string]string{"endpoint": "chat_completions", "code": "429"}); n != 1 {
		t.Errorf("requests_total{chat_completions,429} = %v", n)
	}
}

// TestModelsHealthAndGracefulShutdown: /v1/models lists the model;
// /health follows Config.Ready; Shutdown lets an in-flight request finish,
// then /health and new requests answer 503.
func TestModelsHealthAndGracefulShutdown(t *testing.T) {
	g := loadGolden(t, "qwen2_moe")
	var notReady atomic.Bool
	gt := newGate(FromModel(g.m))
	ts := start(t, gt, Config{ModelName: "tiny-moe", Ready: func(context.Context) error {
		if notReady.Load() {
			return errors.New("worker w2 is not serving")
		}
		return nil
	}})
	resp, err := ts.do(context.Background(), http.MethodGet, "/v1/models", nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	ml := decode[modelListJSON](t, raw)
	if resp.StatusCode != 200 || ml.Object != "list" || len(ml.Data) != 1 || ml.Data[0].ID != "tiny-moe" || ml.Data[0].Object != "model" || ml.Data[0].MaxModelLen != 256 {
		t.Fatalf("/v1/models: %d %s", resp.StatusCode, raw)
	}
	health := func() (int, []byte) {
		resp, err := ts.do(context.Background(), http.MethodGet, "/health", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := health(); code != 200 {
		t.Fatalf("/health %d %s", code, b)
	}
	notReady.Store(true)
	if code, b := health(); code != 503 || !strings.Contains(string(b), "w2 is not serving") {
		t.Fatalf("/health while not ready: %d %s", code, b)
	}
	notReady.Store(false)

	inflight := ts.postAsync(context.Background(), "/v1/completions", map[string]any{"model": "tiny-moe", "prompt": g.prompts[0], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "return_token_ids": true})
	waitFor(t, "the request to start", func() bool { return ts.Stats().Active == 1 })
	shut := make(chan error, 1)
	go func() { shut <- ts.Shutdown(context.Background()) }()
	waitFor(t, "/health to report shutting down", func() bool { code, _ := health(); return code == 503 })
	code, raw := ts.post(t, "/v1/completions", map[string]any{"prompt": "hi"})
	if code != 503 {
		t.Fatalf("a new request while shutting down: %d %s", code, raw)
	}
	checkErrorJSON(t, raw, "server_error", "", "service_unavailable")
	close(gt.ch)
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	rp := <-inflight
	if rp.code != 200 || !slices.Equal(decode[completion](t, rp.body).Choices[0].TokenIDs, g.generated[0]) {
		t.Fatalf("in-flight request during a graceful shutdown: %d %s", rp.code, rp.body)
	}
}

// TestShutdownCutsShortAfterDeadline: requests still running when
// Shutdown's context ends are ended with 503 (non-streaming) or an error
// event before [DONE] (streaming).
func TestShutdownCutsShortAfterDeadline(t *testing.T) {
	g := loadGolden(t, "qwen2_moe")
	gt := newGate(FromModel(g.m))
	ts := start(t, gt, Config{})
	whole := ts.postAsync(context.Background(), "/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 100})
	resp, err := ts.do(context.Background(), http.MethodPost, "/v1/chat/completions", map[string]any{"messages": []map[string]string{{"role": "user", "content": "hi"}}, "stream": true})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	waitFor(t, "both requests to be accepted", func() bool { st := ts.Stats(); return st.Active+st.Queued == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	rp := <-whole
	if rp.code != 503 {
		t.Fatalf("cut-short request: %d %s", rp.code, rp.body)
	}
	checkErrorJSON(t, rp.body, "server_error", "", "service_unavailable")
	evs := sse(t, resp.Body)
	last := evs[len(evs)-1]
	checkErrorJSON(t, last, "server_error", "", "service_unavailable")
}

// TestModelFailure: a failed model step answers 500 server_error and the
// server goes on serving.
func TestModelFailure(t *testing.T) {
	g := loadGolden(t, "mixtral")
	fm := &failing{Model: FromModel(g.m)}
	fm.fail.Store(true)
	ts := start(t, fm, Config{})
	body := map[string]any{"prompt": g.prompts[0], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	code, raw := ts.post(t, "/v1/completions", body)
	if code != 500 || !strings.Contains(string(raw), "worker w1 unreachable") {
		t.Fatalf("%d %s", code, raw)
	}
	checkErrorJSON(t, raw, "server_error", "", "")
	fm.fail.Store(false)
	if r := ts.complete(t, "/v1/completions", body); !slices.Equal(r.IDs, g.generated[0]) {
		t.Errorf("after a failure: %v", r.IDs)
	}
}

type failing struct {
	Model
	fail atomic.Bool
}

func (f *failing) Forward(ctx context.Context, seqs []Seq, tokens [][]int32) ([]float32, error) {
	if f.fail.Load() {
		return nil, errors.New("dispatch layer 1 to worker w1: worker w1 unreachable")
	}
	return f.Model.Forward(ctx, seqs, tokens)
}

// TestChatFormats: without a chat template the prompt is the plain
// "role: content" rendering; with one it is the template's rendering
// (Qwen3's here), its special tokens encoded as their ids, and the
// eos_token (<|im_end|>) ends the answer.
func TestChatFormats(t *testing.T) {
	g := loadGolden(t, "qwen3_moe")
	tok := gpt2(t)
	qwen3 := ChatTemplate{Source: readTemplate(t, "Qwen3-30B-A3B"), EOSToken: "<|im_end|>"}
	msgs := []map[string]any{{"role": "system", "content": "Be brief."}, {"role": "user", "content": []map[string]string{{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}}}}
	imStart, _ := tok.TokenToID("<|im_start|>")
	imEnd, _ := tok.TokenToID("<|im_end|>")
	for _, tc := range []struct {
		name     string
		template ChatTemplate
		want     string
	}{
		{"plain", ChatTemplate{}, "system: Be brief.\nuser: Hello there\nassistant:"},
		{"Qwen3", qwen3, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"},
	} {
		ts := start(t, FromModel(g.m), Config{ChatTemplate: tc.template})
		code, raw := ts.post(t, "/v1/chat/completions", map[string]any{"messages": msgs, "max_tokens": 3, "temperature": 0, "return_token_ids": true})
		if code != 200 {
			t.Fatalf("%s: %d %s", tc.name, code, raw)
		}
		c := decode[completion](t, raw)
		var want []int32
		for _, id := range tok.Encode(tc.want) {
			want = append(want, int32(id))
		}
		if !slices.Equal(c.PromptTokenIDs, want) {
			t.Errorf("%s: prompt %v, want %q = %v", tc.name, c.PromptTokenIDs, tc.want, want)
		}
		if c.Object != "chat.completion" || c.Choices[0].Message == nil || c.Choices[0].Message.Role != "assistant" {
			t.Errorf("%s: answer shape: %s", tc.name, raw)
		}
		templated := tc.template.Source != ""
		if got := len(c.PromptTokenIDs) > 0 && c.PromptTokenIDs[0] == int32(imStart); got != templated {
			t.Errorf("%s: prompt starts with the <|im_start|> id: %v", tc.name, got)
		}
		if got := slices.Contains(ts.lim.chat.stopIDs, int32(imEnd)); got != templated {
			t.Errorf("%s: <|im_end|> stops the answer: %v", tc.name, got)
		}
	}
}

// TestMetrics: the counters and histograms add up over a few requests,
// and /metrics serves them in the Prometheus text format.
func TestMetrics(t *testing.T) {
	g := loadGolden(t, "deepseek_v3_bf16")
	ts := start(t, FromModel(g.m), Config{})
	prompt, gen := 0, 0
	for i := 0; i < 3; i++ {
		r := ts.complete(t, "/v1/completions", map[string]any{"prompt": g.prompts[i%2], "max_tokens": 5 + i, "temperature": 0, "ignore_eos": true})
		prompt += r.Usage.PromptTokens
		gen += r.Usage.CompletionTokens
	}
	for name, want := range map[string]float64{
		"switchyard_serve_prompt_tokens_total":           float64(prompt),
		"switchyard_serve_generation_tokens_total":       float64(gen),
		"switchyard_serve_time_to_first_token_seconds":   3,
		"switchyard_serve_time_per_output_token_seconds": float64(gen - 3),
		"switchyard_serve_e2e_request_latency_seconds":   3,
		"switchyard_serve_active_sequences":              0,
		"switchyard_serve_queued_requests":               0,
	} {
		if got := ts.metric(t, name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := ts.metric(t, "switchyard_serve_requests_total", map[string]string{"endpoint": "completions", "code": "200"}); got != 3 {
		t.Errorf("requests_total{completions,200} = %v", got)
	}
	resp, err := ts.do(context.Background(), http.MethodGet, "/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range []string{
		`switchyard_serve_requests_total{code="200",endpoint="completions"} 3`,
		fmt.Sprintf("switchyard_serve_generation_tokens_total %d", gen),
		"switchyard_serve_time_to_first_token_seconds_count 3",
		"switchyard_serve_active_sequences 0",
	} {
		if !strings.Contains(string(raw), line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}
