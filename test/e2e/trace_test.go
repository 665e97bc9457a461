package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// span is the part of stdouttrace's JSON a test reads.
type span struct {
	Name        string
	SpanContext struct{ TraceID, SpanID string }
	Parent      struct{ TraceID, SpanID string }
	Resource    []struct {
		Key   string
		Value struct{ Value any }
	}
}

func (s span) service() string {
	for _, kv := range s.Resource {
		if kv.Key == "service.name" {
			v, _ := kv.Value.Value.(string)
			return v
		}
	}
	return ""
}

func readSpans(t *testing.T, file string) []span {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []span
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var s span
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("%s: a line is not one span: %v: %.200s", file, err, sc.Text())
		}
		out = append(out, s)
	}
	return out
}

// stopProcess sends SIGTERM to p's group and waits for it to exit (it
// flushes its spans on the way out).
func stopProcess(t *testing.T, p *process) {
	t.Helper()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30 s of SIGTERM", p.cmd.Args[1])
	}
}

// TestTracesFollowARequestAcrossProcesses: with --trace-file, `serve
// --workers 2` and its worker processes append their spans to one file; a
// completion's trace runs from the front end's request span through its
// model steps, MoE layers and expert exchanges to the workers' spans for
// those requests (children of the exchanges, in the same trace). A
// 2-worker training job's ranks put each step's spans in one trace per
// step, with their expert exchanges under them.
func TestTracesFollowARequestAcrossProcesses(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir, _ := filepath.Abs(filepath.Join(goldenDir, "qwen2_moe"))
	file := filepath.Join(t.TempDir(), "spans.json")
	p := startProcess(t, "serve", "--model", dir, "--tokenizer", gpt2Tok, "--workers", "2", "--listen", "127.0.0.1:0",
		"--served-model-name", "m", "--trace-file", file)
	var url string
	waitUntil(t, ctx, "serve ready", func() bool {
		if m := frontEndReady.FindStringSubmatch(p.out.String()); m != nil {
			url = m[1]
			return true
		}
		return false
	})
	if got := complete(ctx, url, servePrompts[0], 4, false); got.Status != 200 {
		t.Fatalf("completion: %d %s", got.Status, got.Body)
	}
	stopProcess(t, p)
	spans := readSpans(t, file)
	byID := map[string]span{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID] = s
	}
	// The request's trace.
	var req span
	for _, s := range spans {
		if s.Name == "serve.completions" {
			req = s
		}
	}
	if req.Name == "" {
		t.Fatalf("no serve.completions span among %d spans", len(spans))
	}
	count := map[string]int{}
	for _, s := range spans {
		if s.SpanContext.TraceID != req.SpanContext.TraceID {
			continue
		}
		count[s.service()+" "+s.Name]++
		if s.Name == "expert.serve" {
			ex, ok := byID[s.Parent.SpanID]
			if !ok || ex.Name != "expert.exchange" || ex.service() != "switchyard-frontend" {
				t.Errorf("worker span %s's parent %s is not a front-end exchange span (%q)", s.SpanContext.SpanID, s.Parent.SpanID, ex.Name)
			}
		}
	}
	for _, want := range []string{
		"switchyard-frontend serve.completions", "switchyard-frontend serve.step", "switchyard-frontend moe.layer",
		"switchyard-frontend expert.exchange", "switchyard-worker expert.serve",
	} {
		if count[want] == 0 {
			t.Errorf("the request's trace has no %q span: %v", want, count)
		}
	}
	if count["switchyard-frontend expert.exchange"] != count["switchyard-worker expert.serve"] {
		t.Errorf("%d exchanges but %d worker spans in the trace", count["switchyard-frontend expert.exchange"], count["switchyard-worker expert.serve"])
	}
	report(t, "traces: one completion (4 tokens) through serve --workers 2: %v", count)
	checkLayerSplit(ctx, t, file)

	// Training: each step's ranks share a trace.
	root := trainingDataRoot(t)
	tfile := filepath.Join(t.TempDir(), "train-spans.json")
	const steps = 3
	tr := startProcess(t, "train", "--workers", "2", "--preset", "dsv3-micro", "--text", filepath.Join(root, "book.txt"),
		"--tokenizer", filepath.Join(root, "tokenizer.json"), "--out", filepath.Join(root, "run"), "--steps", strconv.Itoa(steps),
		"--batch", "4", "--seq-len", "32", "--eval-every", "0", "--save-every", "0", "--warmup", "1", "--trace-file", tfile)
	select {
	case <-tr.exited:
	case <-ctx.Done():
		t.Fatal("train did not finish")
	}
	if tr.err != nil {
		t.Fatalf("train: %v\n%s", tr.err, tr.out.String())
	}
	stepTraces := map[string]int{}
	exchanges := 0
	tspans := readSpans(t, tfile)
	tByID := map[string]span{}
	for _, s := range tspans {
		tByID[s.SpanContext.SpanID] = s
	}
	for _, s := range tspans {
		switch s.Name {
		case "train.step":
			stepTraces[s.SpanContext.TraceID]++
		case "expert.serve":
			if ex := tByID[s.Parent.SpanID]; ex.Name == "expert.exchange" && ex.SpanContext.TraceID == s.SpanContext.TraceID {
				exchanges++
			}
		}
	}
	for tid, n := range stepTraces {
		if n != 2 {
			t.Errorf("trace %s has %d train.step spans, want one per rank (2)", tid, n)
		}
	}
	if len(stepTraces) != steps || exchanges == 0 {
		t.Errorf("%d step traces (want %d), %d worker spans under an exchange (want > 0)", len(stepTraces), steps, exchanges)
	}
	report(t, "traces: a %d-step job on 2 workers: %d step traces of 2 rank spans each, %d expert requests traced into the owners", steps, len(stepTraces), exchanges)
}

// checkLayerSplit runs `bench/serve layers` (the decomposition
// docs/scale/serving.md reports) on a real traced run's spans: every MoE
// layer is complete (each exchange has its owner's span) and the parts
// along the critical destination add up to the layer.
func checkLayerSplit(ctx context.Context, t *testing.T, file string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "go", "run", "../../bench/serve", "layers", file).CombinedOutput()
	if err != nil {
		t.Fatalf("bench/serve layers: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?m)^(\d+) MoE layers \([\d.]+ destinations a layer; (\d+) skipped`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("bench/serve layers: no header in\n%s", out)
	}
	if n, _ := strconv.Atoi(string(m[1])); n < 2 || string(m[2]) != "0" {
		t.Errorf("bench/serve layers: %s layers, %s skipped; want every layer of the completion, none skipped\n%s", m[1], m[2], out)
	}
	means := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if v, err := strconv.ParseFloat(f[len(f)-4], 64); err == nil {
			means[strings.Join(f[:len(f)-4], " ")] = v
		}
	}
	sum := 0.0
	for _, p := range []string{"before send", "send", "to owner", "owner queue", "owner GEMMs", "answer, back"} {
		v, ok := means[p]
		if !ok {
			t.Fatalf("bench/serve layers: no %q row in\n%s", p, out)
		}
		sum += v
	}
	if layer := means["layer"]; layer <= 0 || math.Abs(sum-layer) > 0.005 {
		t.Errorf("bench/serve layers: the parts' means add up to %.3f ms, the layer's mean is %.3f\n%s", sum, layer, out)
	}
	report(t, "traces: bench/serve layers split %s MoE layers; a layer %.3f ms at the mean", m[1], means["layer"])
}
