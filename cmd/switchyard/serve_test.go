package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/dashboard"
	"github.com/switchyard/switchyard/internal/serve"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

const gpt2TokPath = goldenRoot + "/tokenizer_bpe_gpt2/tokenizer.json" // the golden models' 320-token vocabulary

// goldenPromptIDs are mixtral's and qwen2_moe's first golden prompt and
// the 10 tokens transformers generated from it greedily
// (testdata/golden/*/golden.safetensors).
var goldenPromptIDs = map[string][2][]int32{
	"mixtral":   {{237, 137, 317, 30, 206, 291}, {231, 185, 74, 172, 172, 102, 18, 222, 222, 222}},
	"qwen2_moe": {{286, 87, 221, 115, 224, 278}, {269, 69, 99, 281, 235, 312, 281, 235, 312, 281}},
}

// apiResult is what the serve tests compare between servers.
type apiResult struct {
	Text   string
	IDs    []int32
	Finish string
}

// completeAt posts a /v1/completions request to base and returns its
// result (status 200 required).
func completeAt(t *testing.T, base string, body map[string]any) apiResult {
	t.Helper()
	raw, _ := json.Marshal(body)
	resp, err := http.Post(base+"/v1/completions", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var c struct {
		Choices []struct {
			Text         string  `json:"text"`
			TokenIDs     []int32 `json:"token_ids"`
			FinishReason string  `json:"finish_reason"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("answer %s: %v", b, err)
	}
	return apiResult{c.Choices[0].Text, c.Choices[0].TokenIDs, c.Choices[0].FinishReason}
}

// streamAt posts the same request with stream: true and joins the text.
func streamAt(t *testing.T, base string, body map[string]any) string {
	t.Helper()
	b := map[string]any{"stream": true}
	for k, v := range body {
		b[k] = v
	}
	raw, _ := json.Marshal(b)
	resp, err := http.Post(base+"/v1/completions", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var c struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			t.Fatalf("%v: %s", err, data)
		}
		for _, ch := range c.Choices {
			text.WriteString(ch.Text)
		}
	}
	if !done {
		t.Fatal("stream did not end with [DONE]")
	}
	return text.String()
}

// inProcess serves the golden model in this process (experts local) and
// returns its URL: the reference the cluster's answers are compared with.
func inProcess(t *testing.T, name string) string { return inProcessQ(t, name, tensor.QNone) }

// inProcessQ is inProcess with the routed experts quantized to q.
func inProcessQ(t *testing.T, name string, q tensor.QFormat) string {
	return inProcessDir(t, filepath.Join(goldenRoot, name), q)
}

// inProcessDir serves the model folder dir in this process.
func inProcessDir(t *testing.T, dir string, q tensor.QFormat) string {
	t.Helper()
	ck, err := model.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	m, err := ck.Load(model.LoadOptions{KeepBF16: true, Quantize: q})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(gpt2TokPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := serve.New(serve.FromModel(m), tok, serve.DefaultConfig("golden"))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		s.Close()
		hs.Close()
	})
	return hs.URL
}

// TestServeCommandInProcess runs the serve command's code with --workers 0
// (no processes): the API it brings up answers the golden completion, and
// stopping it returns cleanly.
func TestServeCommandInProcess(t *testing.T) {
	var got apiResult
	var stderr bytes.Buffer
	err := runServe(context.Background(), serveOptions{
		ModelDir: filepath.Join(goldenRoot, "mixtral"), Tokenizer: gpt2TokPath, Workers: 0, Listen: "127.0.0.1:0",
		Grace: time.Second, Serve: serve.DefaultConfig("golden"), Stderr: &stderr, Prefix: "serve",
		OnReady: func(ctx context.Context, url string, stop func()) {
			defer stop()
			got = completeAt(t, url, map[string]any{"prompt": goldenPromptIDs["mixtral"][0], "max_tokens": 10, "temperature": 0, "return_token_ids": true})
			// The dashboard of a server without a cluster: its own traffic.
			resp, err := http.Get(url + "/dashboard/api/state")
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var st dashboard.State
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || resp.StatusCode != 200 {
				t.Errorf("dashboard state: %d, %v", resp.StatusCode, err)
			} else if st.Serving.Requests != 1 || st.Serving.GeneratedToks != 10 || len(st.Workers) != 0 {
				t.Errorf("in-process dashboard: %+v; want 1 request, 10 generated tokens, no workers", st.Serving)
			}
		},
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !slices.Equal(got.IDs, goldenPromptIDs["mixtral"][1]) {
		t.Errorf("generated %v, want %v", got.IDs, goldenPromptIDs["mixtral"][1])
	}
	if !regexp.MustCompile(`(?m)^serve: ready: http://127\.0\.0\.1:\d+ `).MatchString(stderr.String()) {
		t.Errorf("no ready line with the URL:\n%s", stderr.String())
	}
	for _, args := range [][]string{{"serve"}, {"serve", "--model", filepath.Join(goldenRoot, "mixtral"), "--workers", "-1"}, {"serve", "--model", t.TempDir()}} {
		if code, _, _ := runCLI(args...); code == 0 {
			t.Errorf("%v: exit 0", args)
		}
	}
}

// switchyardBinary builds the real switchyard binary into the test's
// temporary directory.
func switchyardBinary(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "switchyard")
	if out, err := exec.Command("go", "build", "-o", exe, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// proc is a running switchyard process with its output.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	exited         chan struct{}
	err            error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startBinary(t *testing.T, exe, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(exe, args...), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// waitExit waits up to d for the process to exit.
func (p *proc) waitExit(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("still running after %v\nstderr:\n%s", d, p.stderr.String())
	}
}

var readyRE = regexp.MustCompile(`(?m)^(?:serve|quickstart): ready: (https?://127\.0\.0\.1:\d+) `)

// waitReady waits for the ready line and returns its URL.
func (p *proc) waitReady(t *testing.T, d time.Duration) string {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if m := readyRE.FindStringSubmatch(p.stderr.String()); m != nil {
			return m[1]
		}
		select {
		case <-tick.C:
		case <-p.exited:
			t.Fatalf("exited before it was ready (%v)\nstderr:\n%s", p.err, p.stderr.String())
		case <-deadline.C:
			t.Fatalf("not ready after %v\nstderr:\n%s", d, p.stderr.String())
		}
	}
}

// checkWorkersGone checks that every worker pid printed on stderr has
// exited.
func checkWorkersGone(t *testing.T, stderr string, n int) {
	t.Helper()
	pids := regexp.MustCompile(`pid=(\d+)`).FindAllStringSubmatch(stderr, -1)
	if len(pids) < n {
		t.Fatalf("found %d worker pids on stderr, want %d:\n%s", len(pids), n, stderr)
	}
	for _, m := range pids {
		pid, _ := strconv.Atoi(m[1])
		if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
			t.Errorf("worker process %d still exists (kill 0: %v)", pid, err)
		}
	}
}

// TestServeE2E is the CLI contract of `serve --model DIR --workers N
// --listen ADDR` (DESIGN section 9): the real binary starts etcd, a
// coordinator and 2 worker processes, prints one ready line with its URL,
// /health answers 200, completions (single, concurrent, streamed) with
// every expert on the workers equal the in-process answers and the golden
// tokens, and SIGINT shuts it down cleanly (exit 0, workers gone).
func TestServeE2E(t *testing.T) {
	if os.Getenv("SWITCHYARD_E2E") != "1" {
		t.Skip("end-to-end cluster test: set SWITCHYARD_E2E=1")
	}
	model := "qwen2_moe"
	dir, _ := filepath.Abs(filepath.Join(goldenRoot, model))
	tok, _ := filepath.Abs(gpt2TokPath)
	exe := switchyardBinary(t)
	start := time.Now()
	p := startBinary(t, exe, t.TempDir(), "serve", "--model", dir, "--tokenizer", tok, "--workers", "2", "--listen", "127.0.0.1:0", "--served-model-name", "golden")
	url := p.waitReady(t, 90*time.Second)
	t.Logf("ready after %v at %s", time.Since(start).Round(time.Millisecond), url)

	resp, err := http.Get(url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/health: %d", resp.StatusCode)
	}
	ref := inProcess(t, model)
	reqs := []map[string]any{
		{"model": "golden", "prompt": goldenPromptIDs[model][0], "max_tokens": 10, "temperature": 0, "return_token_ids": true},
		{"prompt": "Of the Refractions of Light", "max_tokens": 30, "temperature": 0.8, "seed": 4, "return_token_ids": true},
		{"prompt": [][]int32{{3, 141, 59}}, "max_tokens": 20, "temperature": 1, "top_p": 0.9, "seed": 9, "return_token_ids": true},
	}
	want := make([]apiResult, len(reqs))
	for i, r := range reqs {
		want[i] = completeAt(t, ref, r)
		got := completeAt(t, url, r)
		if !slices.Equal(got.IDs, want[i].IDs) || got.Text != want[i].Text || got.Finish != want[i].Finish {
			t.Errorf("request %d: cluster %+v, in-process %+v", i, got, want[i])
		}
		if s := streamAt(t, url, r); s != want[i].Text {
			t.Errorf("request %d streamed %q, want %q", i, s, want[i].Text)
		}
	}
	if !slices.Equal(want[0].IDs, goldenPromptIDs[model][1]) {
		t.Errorf("greedy golden prompt: %v, transformers %v", want[0].IDs, goldenPromptIDs[model][1])
	}
	// The same requests at once: batched on the cluster.
	var wg sync.WaitGroup
	got := make([]apiResult, len(reqs))
	errs := make([]error, len(reqs))
	t0 := time.Now()
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw, _ := json.Marshal(r)
			resp, err := http.Post(url+"/v1/completions", "application/json", bytes.NewReader(raw))
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			var c struct {
				Choices []struct {
					Text         string  `json:"text"`
					TokenIDs     []int32 `json:"token_ids"`
					FinishReason string  `json:"finish_reason"`
				} `json:"choices"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || len(c.Choices) != 1 {
				errs[i] = fmt.Errorf("status %d: %v", resp.StatusCode, err)
				return
			}
			got[i] = apiResult{c.Choices[0].Text, c.Choices[0].TokenIDs, c.Choices[0].FinishReason}
		}()
	}
	wg.Wait()
	t.Logf("%d concurrent requests on the cluster in %v", len(reqs), time.Since(t0).Round(time.Millisecond))
	for i := range reqs {
		if errs[i] != nil {
			t.Fatalf("concurrent request %d: %v", i, errs[i])
		}
		if !slices.Equal(got[i].IDs, want[i].IDs) || got[i].Text != want[i].Text {
			t.Errorf("concurrent request %d: %+v, in-process %+v", i, got[i], want[i])
		}
	}
	resp, err = http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`switchyard_serve_requests_total\{code="200",endpoint="completions"\} 9\n`).Match(metrics) {
		t.Errorf("/metrics does not count the 9 completions:\n%s", metrics)
	}

	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	p.waitExit(t, 30*time.Second)
	if p.err != nil {
		t.Fatalf("exit after SIGINT: %v\nstderr:\n%s", p.err, p.stderr.String())
	}
	errOut := p.stderr.String()
	for _, s := range []string{"serve: shutting down", "serve: workers and etcd stopped"} {
		if !strings.Contains(errOut, s) {
			t.Errorf("stderr lacks %q:\n%s", s, errOut)
		}
	}
	checkWorkersGone(t, errOut, 2)
}

// TestServeQuantizedE2E: `serve --workers 2 --quantize q4` (DESIGN section
// 9) starts workers that hold the routed experts as 4-bit codes; greedy
// and sampled completions equal those of the same model quantized in one
// process (the kernels give a row the same result in any batch, on any
// worker), and differ from the unquantized model's somewhere (the flag
// took effect). A front end asking a cluster for another format than it
// serves is refused with the cause.
func TestServeQuantizedE2E(t *testing.T) {
	if os.Getenv("SWITCHYARD_E2E") != "1" {
		t.Skip("end-to-end cluster test: set SWITCHYARD_E2E=1")
	}
	name := "mixtral"
	dir, _ := filepath.Abs(filepath.Join(goldenRoot, name))
	tok, _ := filepath.Abs(gpt2TokPath)
	exe := switchyardBinary(t)
	p := startBinary(t, exe, t.TempDir(), "serve", "--model", dir, "--tokenizer", tok, "--workers", "2", "--quantize", "q4", "--listen", "127.0.0.1:0")
	url := p.waitReady(t, 90*time.Second)
	if !strings.Contains(p.stderr.String(), "routed experts q4") {
		t.Errorf("no quantization in the load line:\n%s", p.stderr.String())
	}
	ref, plain := inProcessQ(t, name, tensor.QQ4), inProcess(t, name)
	differs := false
	for i, r := range []map[string]any{
		{"prompt": goldenPromptIDs[name][0], "max_tokens": 16, "temperature": 0, "return_token_ids": true},
		{"prompt": "Of the Refractions of Light", "max_tokens": 24, "temperature": 0.8, "seed": 4, "return_token_ids": true},
		{"prompt": [][]int32{{3, 141, 59}}, "max_tokens": 24, "temperature": 0, "return_token_ids": true},
	} {
		got, want := completeAt(t, url, r), completeAt(t, ref, r)
		if !slices.Equal(got.IDs, want.IDs) {
			t.Errorf("request %d: cluster %v, in-process q4 %v", i, got.IDs, want.IDs)
		}
		if !slices.Equal(completeAt(t, plain, r).IDs, want.IDs) {
			differs = true
		}
	}
	if !differs {
		t.Error("q4 completions all equal the unquantized model's: was anything quantized?")
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	p.waitExit(t, 30*time.Second)
	if p.err != nil {
		t.Fatalf("exit after SIGINT: %v\nstderr:\n%s", p.err, p.stderr.String())
	}
}

// TestServeFP8E2E: an FP8 block-quantized copy of every golden model
// (model.WriteFP8: e4m3 weights with 128x128 scale blocks, sharded so
// weights and scales sit in different files) served with its routed
// experts on 2 worker processes, each dequantizing only the experts it
// loads, answers exactly as the same copy served in one process.
func TestServeFP8E2E(t *testing.T) {
	if os.Getenv("SWITCHYARD_E2E") != "1" {
		t.Skip("end-to-end cluster test: set SWITCHYARD_E2E=1")
	}
	exe := switchyardBinary(t)
	tok, _ := filepath.Abs(gpt2TokPath)
	for _, name := range []string{"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3_bf16"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := model.WriteFP8(filepath.Join(goldenRoot, name), dir, [2]int{128, 128}, 64<<10); err != nil {
				t.Fatal(err)
			}
			if ck, err := model.Open(dir); err != nil || ck.Quant == nil || len(ck.Set.Files()) < 2 {
				t.Fatalf("FP8 copy: %v (quantization %+v)", err, ck)
			} else {
				ck.Close()
			}
			p := startBinary(t, exe, t.TempDir(), "serve", "--model", dir, "--tokenizer", tok, "--workers", "2", "--listen", "127.0.0.1:0")
			url := p.waitReady(t, 90*time.Second)
			ref := inProcessDir(t, dir, tensor.QNone)
			for i, r := range []map[string]any{
				{"prompt": [][]int32{{3, 141, 59, 200, 17}}, "max_tokens": 12, "temperature": 0, "return_token_ids": true},
				{"prompt": "Of the Refractions of Light", "max_tokens": 12, "temperature": 0.8, "seed": 4, "return_token_ids": true},
			} {
				got, want := completeAt(t, url, r), completeAt(t, ref, r)
				if !slices.Equal(got.IDs, want.IDs) || len(got.IDs) == 0 {
					t.Errorf("request %d: 2 workers %v, one process %v", i, got.IDs, want.IDs)
				}
			}
			if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			p.waitExit(t, 30*time.Second)
		})
	}
}
