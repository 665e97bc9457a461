package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// result is one serving request's outcome.
type result struct {
	start, end time.Time
	client     int
	err        string // "" on success
}

// loader runs `clients` concurrent loops posting /v1/completions until ctx
// ends, recording every request.
type loader struct {
	url     string
	clients int
	mu      sync.Mutex
	results []result
}

var prompts = []string{"The light", "Of colours", "When the Sun", "Rays of light which", "The prism"}

func (l *loader) run(ctx context.Context) {
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for c := 0; c < l.clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				body, _ := json.Marshal(map[string]any{
					"model": "m", "prompt": prompts[(i+c)%len(prompts)], "max_tokens": 8, "temperature": 0,
				})
				r := result{start: time.Now(), client: c}
				r.err = l.one(hc, body)
				r.end = time.Now()
				if r.err != "" && ctx.Err() != nil {
					return // the run ended under the request: not an outcome
				}
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
				if r.err != "" {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}(c)
	}
	wg.Wait()
}

func (l *loader) one(hc *http.Client, body []byte) string {
	resp, err := hc.Post(l.url+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != 200 {
		return fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	var out struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Choices) == 0 {
		return fmt.Sprintf("bad answer: %.200s", b)
	}
	return ""
}

func (l *loader) snapshot() []result {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]result(nil), l.results...)
}
