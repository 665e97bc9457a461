package serve

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// longPrompt is n token ids of the golden models' vocabulary, spread over
// it.
func longPrompt(n int) []int32 {
	p := make([]int32, n)
	for i := range p {
		p[i] = int32((i*37 + 11) % 320)
	}
	return p
}

// TestChunkedPrefillMatchesGolden: with a step budget smaller than the
// golden prompts (6 tokens), each prompt is fed in chunks over several
// steps (3+3, 4+2), its first token is sampled only after the last chunk,
// and the greedy tokens are still exactly transformers', for every family;
// time to first token is observed once per request.
func TestChunkedPrefillMatchesGolden(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			g := loadGolden(t, name)
			for _, budget := range []int{3, 4} {
				sl := &stepLog{Model: FromModel(g.m)}
				ts := start(t, sl, Config{MaxSeqs: 1, MaxStepTokens: budget})
				for b, p := range g.prompts {
					want := g.generated[b]
					r := ts.complete(t, "/v1/completions", map[string]any{
						"prompt": p, "max_tokens": len(want), "temperature": 0, "ignore_eos": true, "return_token_ids": true,
					})
					if !slices.Equal(r.IDs, want) {
						t.Fatalf("%d tokens a step, prompt %d: generated %v, transformers %v", budget, b, r.IDs, want)
					}
				}
				seqs, of := feeds(sl.log())
				if len(seqs) != len(g.prompts) {
					t.Fatalf("%d tokens a step: %d sequences in the steps, want %d", budget, len(seqs), len(g.prompts))
				}
				for b, s := range seqs {
					P, n := len(g.prompts[b]), len(g.generated[b])
					var want []fed
					for at := 0; at < P; at += budget {
						want = append(want, fed{s, at, min(budget, P-at)})
					}
					for at := P; at < P+n-1; at++ {
						want = append(want, fed{s, at, 1})
					}
					if !slices.Equal(of[s], want) {
						t.Errorf("%d tokens a step, prompt %d fed as %v, want %v", budget, b, of[s], want)
					}
				}
				prompt, gen := 0, 0
				for b := range g.prompts {
					prompt += len(g.prompts[b])
					gen += len(g.generated[b])
				}
				for metric, want := range map[string]float64{
					"switchyard_serve_time_to_first_token_seconds":   float64(len(g.prompts)),
					"switchyard_serve_time_per_output_token_seconds": float64(gen - len(g.prompts)),
					"switchyard_serve_generation_tokens_total":       float64(gen),
					"switchyard_serve_prompt_tokens_total":           float64(prompt),
				} {
					if got := ts.metric(t, metric, nil); got != want {
						t.Errorf("%d tokens a step: %s = %v, want %v", budget, metric, got, want)
					}
				}
			}
		})
	}
}

// TestLongPromptDoesNotStallDecoding: a 200-token prompt arrives while
// another request is decoding, with a budget of 16 tokens a step. The
// prompt is fed in chunks of 15 over 14 steps, and in every one of them
// the decoding request is fed its next token (it advanced by one token
// each step); no step exceeds the budget; the long prompt's first token
// comes from its whole prompt. Both answers are the tokens they get alone
// with the prompt fed whole (margins checked, see the package
// documentation).
func TestLongPromptDoesNotStallDecoding(t *testing.T) {
	const budget, longLen, longGen = 16, 200, 8
	g := loadGolden(t, "mixtral")
	long := longPrompt(longLen)
	if mg := greedyMargin(t, g.m, long, longGen); mg < 1e-4 {
		t.Fatalf("precondition: the long prompt's top-2 margin %.3g is too small to compare chunked and whole prefill", mg)
	}
	if mg := greedyMargin(t, g.m, g.prompts[0], 10); mg < 1e-4 {
		t.Fatalf("precondition: the golden prompt's top-2 margin %.3g is too small to compare batched and single decoding", mg)
	}
	decoding := map[string]any{"prompt": g.prompts[0], "max_tokens": 40, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	longReq := map[string]any{"prompt": long, "max_tokens": longGen, "temperature": 0, "ignore_eos": true, "return_token_ids": true}
	alone := start(t, FromModel(g.m), Config{})
	wantLong := alone.complete(t, "/v1/completions", longReq).IDs

	sl := &stepLog{Model: FromModel(g.m)}
	gt := newGate(sl)
	ts := start(t, gt, Config{MaxSeqs: 2, MaxStepTokens: budget})
	a := ts.postAsync(context.Background(), "/v1/completions", decoding)
	waitFor(t, "the first request to be admitted", func() bool { return ts.Stats().Active == 1 })
	gt.ch <- struct{}{} // its prefill and first token
	b := ts.postAsync(context.Background(), "/v1/completions", longReq)
	waitFor(t, "the long prompt to be accepted", func() bool { st := ts.Stats(); return st.Active+st.Queued == 2 })
	close(gt.ch)
	var got [2][]int32
	for i, ch := range []<-chan reply{a, b} {
		rp := <-ch
		if rp.err != nil || rp.code != http.StatusOK {
			t.Fatalf("request %d: %v status %d: %s", i, rp.err, rp.code, rp.body)
		}
		got[i] = decode[completion](t, rp.body).Choices[0].TokenIDs
	}
	if !slices.Equal(got[0][:10], g.generated[0]) || len(got[0]) != 40 {
		t.Errorf("decoding request: %v, want 40 tokens starting %v", got[0], g.generated[0])
	}
	if !slices.Equal(got[1], wantLong) {
		t.Errorf("long prompt fed in chunks: %v, fed whole: %v", got[1], wantLong)
	}

	steps := sl.log()
	seqs, of := feeds(steps)
	if len(seqs) != 2 {
		t.Fatalf("%d sequences in the steps, want 2", len(seqs))
	}
	dec, lng := seqs[0], seqs[1]
	prefill := 0 // steps feeding the long prompt
	for i, step := range steps {
		total := 0
		var d, l *fed
		for j := range step {
			total += step[j].n
			switch step[j].seq {
			case dec:
				d = &step[j]
			case lng:
				l = &step[j]
			}
		}
		if total > budget {
			t.Errorf("step %d fed %d tokens, over the budget of %d: %v", i, total, budget, step)
		}
		if l == nil || l.at >= longLen {
			continue
		}
		prefill++
		if d == nil || d.n != 1 {
			t.Errorf("step %d fed the long prompt's tokens %d-%d but not the decoding sequence its one token: %v", i, l.at, l.at+l.n, step)
		}
	}
	if want := (longLen + budget - 2) / (budget - 1); prefill != want {
		t.Errorf("the long prompt was fed over %d steps, want %d (chunks of %d)", prefill, want, budget-1)
	}
	for k, f := range of[dec] {
		if k > 0 && f.at != of[dec][k-1].at+of[dec][k-1].n {
			t.Errorf("the decoding sequence skipped from %v to %v", of[dec][k-1], f)
		}
	}
	lf := of[lng]
	if len(lf) != prefill+longGen-1 || lf[prefill].at != longLen || lf[prefill].n != 1 {
		t.Errorf("the long prompt's steps %v: want %d prompt chunks, then its first token fed at %d", lf, prefill, longLen)
	}
}

// TestCancelMidPrefill: a client that goes away while its long prompt is
// still being fed in chunks frees its slot and KV cache (no token was
// generated, the rest of the prompt is never fed), and the next request
// gets the slot and its golden tokens.
func TestCancelMidPrefill(t *testing.T) {
	const budget, longLen = 4, 40
	g := loadGolden(t, "deepseek_v2_lite")
	sl := &stepLog{Model: FromModel(g.m)}
	gt := newGate(sl)
	ts := start(t, gt, Config{MaxSeqs: 1, MaxStepTokens: budget})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := ts.do(ctx, http.MethodPost, "/v1/completions", map[string]any{"prompt": longPrompt(longLen), "max_tokens": 10, "stream": true})
	if err != nil {
		t.Fatal(err)
	}
	gt.ch <- struct{}{} // the first chunk
	waitFor(t, "the first chunk in the KV cache", func() bool { st := ts.Stats(); return st.Active == 1 && st.KVCacheBytes > 0 })
	if n := ts.metric(t, "switchyard_serve_generation_tokens_total", nil); n != 0 {
		t.Fatalf("%v tokens generated after one chunk of a %d-token prompt", n, longLen)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "the request to be counted as 499", func() bool {
		return ts.metric(t, "switchyard_serve_requests_total", map[string]string{"endpoint": "completions", "code": "499"}) == 1
	})
	// The scheduler may already wait on a step it planned before the
	// client left; let steps run until the sequence has left.
	waitFor(t, "the cancelled sequence to leave", func() bool {
		select {
		case gt.ch <- struct{}{}:
		default:
		}
		return ts.Stats().Active == 0
	})
	if st := ts.Stats(); st.KVCacheBytes != 0 {
		t.Errorf("KV cache still holds %d bytes", st.KVCacheBytes)
	}
	if v := ts.metric(t, "switchyard_serve_kv_cache_bytes", nil); v != 0 {
		t.Errorf("kv_cache_bytes gauge %v", v)
	}
	_, of := feeds(sl.log())
	for _, fs := range of {
		if last := fs[len(fs)-1]; last.at+last.n >= longLen {
			t.Errorf("the cancelled prompt was fed to the end: %v", fs)
		}
	}
	if n := ts.metric(t, "switchyard_serve_generation_tokens_total", nil); n != 0 {
		t.Errorf("%v tokens generated for a client that left during prefill", n)
	}
	if n := ts.metric(t, "switchyard_serve_time_to_first_token_seconds", nil); n != 0 {
		t.Errorf("time to first token observed %v times for a request that got none", n)
	}
	close(gt.ch)
	if r := ts.complete(t, "/v1/completions", map[string]any{"prompt": g.prompts[1], "max_tokens": 10, "temperature": 0, "ignore_eos": true, "return_token_ids": true}); !slices.Equal(r.IDs, g.generated[1]) {
		t.Errorf("next request in the freed slot: %v, want %v", r.IDs, g.generated[1])
	}
}

// TestStepTokensConfig: MaxStepTokens defaults to 512, must be positive
// and at least MaxSeqs (every decoding sequence takes a token a step), and
// every problem is reported at once.
func TestStepTokensConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg        Config
		steps      int      // MaxStepTokens in effect, when valid
		complaints []string // else what the error says
	}{
		{Config{ModelName: "m"}, 512, nil},
		{Config{ModelName: "m", MaxSeqs: 1, MaxStepTokens: 1}, 1, nil},
		{Config{ModelName: "m", MaxSeqs: 600}, 0, []string{"max step tokens 512 must be at least max sequences 600"}},
		{Config{ModelName: "m", MaxStepTokens: 8}, 0, []string{"max step tokens 8 must be at least max sequences 16"}},
		{Config{ModelName: "m", MaxStepTokens: -1}, 0, []string{"max step tokens -1 must be > 0"}},
		{Config{MaxSeqs: -2, MaxStepTokens: -3}, 0, []string{"model name is required", "max sequences -2", "max step tokens -3"}},
	} {
		c, err := tc.cfg.withDefaults()
		if tc.complaints == nil {
			if err != nil || c.MaxStepTokens != tc.steps {
				t.Errorf("%+v: MaxStepTokens %d, error %v; want %d", tc.cfg, c.MaxStepTokens, err, tc.steps)
			}
			continue
		}
		if err == nil {
			t.Errorf("%+v: no error", tc.cfg)
			continue
		}
		for _, want := range tc.complaints {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%+v: %q does not say %q", tc.cfg, err, want)
			}
		}
	}
	if _, err := New(FromModel(loadGolden(t, "mixtral").m), gpt2(t), Config{ModelName: "m", MaxStepTokens: 4}); err == nil {
		t.Error("New accepted 4 tokens a step for 16 sequences")
	}
}
