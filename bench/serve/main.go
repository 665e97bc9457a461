// Command serve is the client side of the serving benchmark
// (scripts/bench-serve.sh) and of the emulated multi-host serving run
// (scripts/netns/serve-e2e.sh). It runs as subcommands, each a small step
// the scripts chain:
//
//	synth   -dir DIR [shape flags]     generate a Mixtral-style bf16 model into DIR unless it is there
//	info    -dir DIR                   print the model's routed-expert bytes (as workers hold them)
//	refs    -switchyard BIN -model DIR -out FILE
//	                                   greedy answers of `switchyard generate` (one process) per prompt
//	check   -url URL -refs FILE        every prompt through the API, streamed and not, equal to the refs
//	load    -url URL -clients N ...    N clients looping completions: failures, answers checked against
//	                                   -refs, tokens/s, time to first token, inter-token latency; with
//	                                   -metrics the front end's /metrics before and after (see loadResult)
//	restore -etcd URL -cluster C -model DIR -replicas R -gone ID -since NS
//	                                   wait until every expert has R copies again, none on ID, all served
//	tcpping -listen ADDR | -addr ADDR  raw-TCP ping-pong round trip
//	report  -out FILE RESULT.json...   the markdown table of load results
//	exchange -listen ADDR | -addr ADDR the expert exchange's own cost between two hosts (exchange.go)
//	layers  TRACE.jsonl...             a traced run's MoE layers split along the critical path (layers.go)
//
// Every request sends $SWITCHYARD_API_KEY (if set) as its bearer key and
// $SWITCHYARD_MODEL_NAME (default "m") as the model.
//
// Latencies are measured at the client: TTFT from sending the request to
// the first streamed chunk carrying a token, inter-token latency (ITL) as
// the gap between consecutive chunks divided by the tokens the later chunk
// carries (the server sends a chunk per step, so that is one token unless
// the client fell behind). Only requests inside the measuring window count.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/switchyard/switchyard/internal/rawsock"
	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmds := map[string]func([]string) error{
		"synth": synth, "info": info, "refs": refs, "check": check, "load": load,
		"restore": restore, "tcpping": tcpping, "report": report, "exchange": exchange,
		"layers": layers,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		usage()
	}
	if err := run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: serve synth|info|refs|check|load|restore|tcpping|report|exchange|layers [flags] (see the package comment)")
	os.Exit(2)
}

// prompts are the completion prompts, one per client in turn.
var prompts = []string{
	"The coordinator shards experts",
	"Of the Refractions of Light",
	"When a worker dies, its experts",
	"a b c d e f g",
	"Every front end holds the dense weights and",
	"Light which is reflected from the surface",
	"The placement gives each expert two copies",
	"In the year of our Lord",
}

// ---- synth, info ----

func synth(args []string) error {
	fs := flag.NewFlagSet("synth", flag.ExitOnError)
	dir := fs.String("dir", "", "model folder (generated only if missing)")
	layers := fs.Int("layers", 8, "decoder layers (all MoE)")
	hidden := fs.Int("hidden", 1024, "hidden size D")
	experts := fs.Int("experts", 32, "routed experts per layer E")
	topk := fs.Int("topk", 4, "experts per token K")
	inter := fs.Int("inter", 2816, "expert intermediate size F")
	vocab := fs.Int("vocab", 320, "vocabulary size (320: the gpt2-style test tokenizer's)")
	tok := fs.String("tokenizer", "testdata/golden/tokenizer_bpe_gpt2/tokenizer.json", "tokenizer.json copied into the model folder")
	seed := fs.Uint64("seed", 1, "weight seed")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("-dir is required")
	}
	if _, err := os.Stat(filepath.Join(*dir, "config.json")); err == nil {
		fmt.Printf("synth: %s (cached)\n", *dir)
		return printInfo(*dir)
	}
	hf := map[string]any{
		"model_type": "mixtral", "vocab_size": *vocab, "hidden_size": *hidden,
		"intermediate_size": *inter, "num_hidden_layers": *layers,
		"num_attention_heads": *hidden / 64, "num_key_value_heads": max(*hidden/256, 1),
		"num_local_experts": *experts, "num_experts_per_tok": *topk,
		"max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
		"rope_theta": 1e6, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
	}
	// Generate beside the target and rename: a folder with a config.json
	// is always complete.
	tmp := fmt.Sprintf("%s.tmp-%d", strings.TrimSuffix(*dir, "/"), os.Getpid())
	defer os.RemoveAll(tmp)
	t0 := time.Now()
	if _, err := model.Synthesize(tmp, hf, model.SynthOptions{Seed: *seed, DType: "BF16", Std: 0.02, MaxShardBytes: 2 << 30}); err != nil {
		return err
	}
	b, err := os.ReadFile(*tok)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "tokenizer.json"), b, 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*dir), 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, *dir); err != nil {
		return err
	}
	fmt.Printf("synth: %s generated in %v\n", *dir, time.Since(t0).Round(time.Second))
	return printInfo(*dir)
}

func info(args []string) error {
	fs := flag.NewFlagSet("info", flag.ExitOnError)
	dir := fs.String("dir", "", "model folder")
	fs.Parse(args)
	return printInfo(*dir)
}

// printInfo prints the model's sizes as bf16-keeping workers hold them.
func printInfo(dir string) error {
	rec, err := registry.ModelRecordFromDir(dir, 2)
	if err != nil {
		return err
	}
	n := int64(len(rec.MoELayers) * rec.Experts)
	fmt.Printf("model: routed_expert_bytes=%d experts=%d expert_bytes=%d dense_bytes=%d (%.2f GiB of experts, %.2f GB in all)\n",
		n*rec.ExpertBytes, n, rec.ExpertBytes, rec.DenseBytes, float64(n*rec.ExpertBytes)/(1<<30), float64(n*rec.ExpertBytes+rec.DenseBytes)/1e9)
	return nil
}

// ---- refs, check ----

func refs(args []string) error {
	fs := flag.NewFlagSet("refs", flag.ExitOnError)
	bin := fs.String("switchyard", "switchyard", "the switchyard binary")
	dir := fs.String("model", "", "model folder")
	maxTokens := fs.Int("max-tokens", 12, "tokens per answer")
	out := fs.String("out", "", "JSON file: prompt -> greedy answer")
	fs.Parse(args)
	want := map[string]string{}
	for _, p := range prompts {
		cmd := exec.Command(*bin, "generate", "--model", *dir, "--prompt", p, "--max-tokens", strconv.Itoa(*maxTokens), "--temperature", "0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		b, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("generate %q: %v\n%s", p, err, stderr.String())
		}
		want[p] = strings.TrimSuffix(string(b), "\n")
	}
	b, _ := json.MarshalIndent(want, "", "  ")
	return os.WriteFile(*out, b, 0o644)
}

func readRefs(path string) (map[string]string, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]string
	return m, json.Unmarshal(b, &m)
}

func check(args []string) error {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	url := fs.String("url", "", "API base URL")
	refsFile := fs.String("refs", "", "answers from refs")
	maxTokens := fs.Int("max-tokens", 12, "tokens per answer (as refs)")
	label := fs.String("label", "check", "prefix of the lines printed")
	fs.Parse(args)
	want, err := readRefs(*refsFile)
	if err != nil {
		return err
	}
	bad := 0
	for _, p := range prompts {
		for _, stream := range []bool{false, true} {
			c := complete(context.Background(), *url, request{prompt: p, maxTokens: *maxTokens, stream: stream})
			switch {
			case c.err != "":
				bad++
				fmt.Printf("%s: %q stream=%v: FAILED: %s\n", *label, p, stream, c.err)
			case c.text != want[p]:
				bad++
				fmt.Printf("%s: %q stream=%v: MISMATCH %q, one process %q\n", *label, p, stream, c.text, want[p])
			default:
				fmt.Printf("%s: %q stream=%v: ok, %q\n", *label, p, stream, c.text)
			}
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d answers differ from one process", bad, 2*len(prompts))
	}
	return nil
}

// ---- the HTTP client ----

type request struct {
	prompt    string
	maxTokens int
	stream    bool
	ignoreEOS bool
}

// answer is one completion as the client saw it.
type answer struct {
	text     string
	err      string // "" when it succeeded
	canceled bool   // the client gave up (end of a window)
	sent     time.Time
	first    time.Time   // first token (streamed)
	chunks   []time.Time // arrival of each token-carrying chunk (streamed)
	tokens   []int       // tokens in each chunk
	nTokens  int
}

// apiKey and modelName are what every request sends: the key from
// $SWITCHYARD_API_KEY (the first, if comma-separated; none: no
// Authorization header) and the served model's name from
// $SWITCHYARD_MODEL_NAME (default "m", what the scripts serve with
// --served-model-name).
var apiKey, modelName = func() (string, string) {
	k, _, _ := strings.Cut(os.Getenv("SWITCHYARD_API_KEY"), ",")
	m := os.Getenv("SWITCHYARD_MODEL_NAME")
	if m == "" {
		m = "m"
	}
	return strings.TrimSpace(k), m
}()

func complete(ctx context.Context, url string, r request) answer {
	body := map[string]any{"model": modelName, "prompt": r.prompt, "max_tokens": r.maxTokens, "temperature": 0,
		"stream": r.stream, "return_token_ids": true}
	if r.ignoreEOS {
		body["ignore_eos"] = true
	}
	raw, _ := json.Marshal(body)
	a := answer{sent: time.Now()}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.err, a.canceled = err.Error(), ctx.Err() != nil
		return a
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		a.err = fmt.Sprintf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		return a
	}
	type choice struct {
		Text     string  `json:"text"`
		TokenIDs []int32 `json:"token_ids"`
	}
	if !r.stream {
		var c struct {
			Choices []choice `json:"choices"`
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			err = json.Unmarshal(b, &c)
		}
		if err != nil || len(c.Choices) != 1 {
			a.err, a.canceled = fmt.Sprintf("bad answer (%v): %s", err, b), ctx.Err() != nil
			return a
		}
		a.text, a.nTokens = c.Choices[0].Text, len(c.Choices[0].TokenIDs)
		return a
	}
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<22)
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
		now := time.Now()
		var c struct {
			Choices []choice `json:"choices"`
			Error   any      `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil || c.Error != nil {
			a.err = "stream error event: " + data
			return a
		}
		n := 0
		for _, ch := range c.Choices {
			text.WriteString(ch.Text)
			n += len(ch.TokenIDs)
		}
		if n > 0 {
			if a.first.IsZero() {
				a.first = now
			}
			a.chunks = append(a.chunks, now)
			a.tokens = append(a.tokens, n)
			a.nTokens += n
		}
	}
	if !done {
		a.err, a.canceled = fmt.Sprintf("stream ended without [DONE] (%v)", sc.Err()), ctx.Err() != nil
		return a
	}
	a.text = text.String()
	return a
}

// ---- load ----

// loadResult is one load run, as written to -json.
type loadResult struct {
	Label      string    `json:"label"`
	Config     string    `json:"config"`
	Clients    int       `json:"clients"`
	MaxTokens  int       `json:"max_tokens"`
	Date       string    `json:"date"`
	CPU        string    `json:"cpu"`
	Window     float64   `json:"window_s"`
	OK         int       `json:"ok"`
	Failed     int       `json:"failed"`
	Wrong      int       `json:"wrong"`
	Failures   []string  `json:"failures,omitempty"`
	Tokens     int       `json:"tokens"` // tokens received inside the window
	TokensPerS float64   `json:"tokens_per_s"`
	TTFT       []float64 `json:"ttft_ms"` // p50 p90 p99; null: no sample
	ITL        []float64 `json:"itl_ms"`  // p50 p90 p99; null: no sample
	Requests   int       `json:"requests_ttft"`
	CPUBusy    float64   `json:"cpu_busy"` // machine-wide busy fraction in the window (1 = every core)
	// CPUSplit is where the window's CPU went, in cores: by role (front
	// end, workers, coordinator, this client; their processes' own time)
	// and by kind (user, system, interrupts, steal).
	CPUSplit *CPUSplit `json:"cpu_split,omitempty"`
	// From the front end's /metrics (-metrics), per generated token in the
	// window, milliseconds: forward parts.
	PerToken map[string]float64 `json:"per_token_ms,omitempty"`
	// MoE layer exchanges in the window: mean seconds and rows per
	// exchange, and exchanges per generated token.
	LayerExchangeMs float64 `json:"layer_exchange_ms,omitempty"`
	// LayerServedMs is the owners' part of LayerExchangeMs, as they
	// report it (batcher queue and GEMMs): the difference is the
	// exchange's own cost (network and software).
	LayerServedMs   float64 `json:"layer_served_ms,omitempty"`
	LayerExchanges  float64 `json:"layer_exchanges,omitempty"`
	RowsPerExchange float64 `json:"rows_per_exchange,omitempty"`
	WorkerCallMs    float64 `json:"worker_call_ms,omitempty"`
	Steps           float64 `json:"steps,omitempty"`
	// Routing is the token rows routed to each expert in the window
	// ([MoE layer][expert], from switchyard_frontend_expert_rows_total;
	// layers in ascending order of their index, RoutingLayers): the
	// workload's routing, which the serving model replays
	// (simulate.RoutingTrace).
	Routing       [][]int64 `json:"routing,omitempty"`
	RoutingLayers []int     `json:"routing_layers,omitempty"`
	// Link, when the run was on emulated hosts: rate (bit/s), raw-TCP
	// round trip (ms) and hidden size, for the transfer-time estimate.
	LinkBps   float64 `json:"link_bps,omitempty"`
	LinkRTTms float64 `json:"link_rtt_ms,omitempty"`
	// LinkIdleRTTms: the same round trip with the hosts idle before each
	// (tcpping -gap, as ping measures), the way a decode step's per-layer
	// messages find them.
	LinkIdleRTTms float64 `json:"link_idle_rtt_ms,omitempty"`
	Hidden        int     `json:"hidden,omitempty"`
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "", "API base URL")
	clients := fs.Int("clients", 8, "concurrent clients, each looping requests")
	warmup := fs.Duration("warmup", 0, "run this long before the measuring window")
	duration := fs.Duration("duration", 10*time.Second, "measuring window")
	drain := fs.Bool("drain", true, "after the window, let requests in flight finish (and count them); false cancels them")
	maxTokens := fs.Int("max-tokens", 12, "max_tokens of each request")
	ignoreEOS := fs.Bool("ignore-eos", false, "generate max-tokens tokens every time")
	streamMode := fs.String("stream", "mixed", "always, never, or mixed (alternate)")
	refsFile := fs.String("refs", "", "check every answer against these (prompt -> text)")
	metrics := fs.Bool("metrics", false, "scrape URL/metrics before and after the window")
	jsonOut := fs.String("json", "", "write the result here")
	label := fs.String("label", "load", "prefix of the lines printed")
	config := fs.String("config", "", "configuration name for the report")
	linkRate := fs.String("link-rate", "", "emulated link rate (tc syntax, e.g. 1gbit) for the report")
	linkRTT := fs.Float64("link-rtt-ms", 0, "raw-TCP round trip of the link (ms) for the report")
	linkIdleRTT := fs.Float64("link-idle-rtt-ms", 0, "raw-TCP round trip of the link with the hosts idle before each (tcpping -gap; ms) for the report")
	modelDir := fs.String("model", "", "model folder (hidden size for the report)")
	strict := fs.Bool("fail-on-error", false, "exit with status 1 if any request failed or answered wrong")
	stagger := fs.Bool("stagger", false, "the first request of client c (0..N-1) asks for (c+1)/N of -max-tokens, so the clients' requests do not start and end in lockstep (use with -ignore-eos)")
	fs.Parse(args)
	want, err := readRefs(*refsFile)
	if err != nil {
		return err
	}
	if want != nil && *ignoreEOS {
		return fmt.Errorf("-refs answers are greedy answers that stop at EOS: drop -ignore-eos")
	}
	res := loadResult{Label: *label, Config: *config, Clients: *clients, MaxTokens: *maxTokens,
		Date: time.Now().UTC().Format("2006-01-02 15:04Z"), CPU: cpuModel()}
	if *linkRate != "" {
		res.LinkBps = rateBps(*linkRate)
		res.LinkRTTms = *linkRTT
		res.LinkIdleRTTms = *linkIdleRTT
	}
	if *modelDir != "" {
		if cfg, err := model.LoadConfig(*modelDir); err == nil {
			res.Hidden = cfg.Hidden
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu      sync.Mutex
		answers []answer
		wg      sync.WaitGroup
	)
	start := time.Now()
	winStart := start.Add(*warmup)
	winEnd := winStart.Add(*duration)
	stopIssuing := make(chan struct{})
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopIssuing:
					return
				default:
				}
				p := prompts[(c+i)%len(prompts)]
				stream := *streamMode == "always" || (*streamMode == "mixed" && (c+i)%2 == 0)
				n := *maxTokens
				if *stagger && i == 0 {
					n = max(1, *maxTokens*(c+1) / *clients)
				}
				a := complete(ctx, *url, request{prompt: p, maxTokens: n, stream: stream, ignoreEOS: *ignoreEOS})
				a.text = p + "\x00" + a.text // keep the prompt for the check
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
			}
		}()
	}
	sleepUntil(winStart)
	var before map[string]float64
	if *metrics {
		if before, err = scrape(*url); err != nil {
			return err
		}
	}
	cpu0, cpuErr := readCPU()
	sleepUntil(winEnd)
	cpu1, cpuErr1 := readCPU()
	var after map[string]float64
	if *metrics {
		if after, err = scrape(*url); err != nil {
			return err
		}
	}
	close(stopIssuing)
	if !*drain {
		cancel()
	}
	wg.Wait()
	end := time.Now()
	if *drain {
		winEnd = end
	}
	res.Window = winEnd.Sub(winStart).Seconds()
	if cpuErr == nil && cpuErr1 == nil {
		split := cpuSplit(cpu0, cpu1)
		res.CPUBusy = (split.Busy() + split.Steal) / float64(split.Cores)
		res.CPUSplit = &split
	}

	var ttft, itl []float64
	for _, a := range answers {
		prompt, text, _ := strings.Cut(a.text, "\x00")
		switch {
		case a.canceled && !*drain:
		case a.err != "":
			res.Failed++
			res.Failures = append(res.Failures, fmt.Sprintf("%s %q: %s", a.sent.Format("15:04:05.000"), prompt, a.err))
		case want != nil && text != want[prompt]:
			res.Wrong++
			res.Failures = append(res.Failures, fmt.Sprintf("%s %q: %q, want %q", a.sent.Format("15:04:05.000"), prompt, text, want[prompt]))
		default:
			res.OK++
		}
		in := func(t time.Time) bool { return !t.Before(winStart) && t.Before(winEnd) }
		if !a.first.IsZero() && in(a.first) && !a.sent.Before(winStart) {
			ttft = append(ttft, a.first.Sub(a.sent).Seconds()*1e3)
		}
		for i, t := range a.chunks {
			if !in(t) {
				continue
			}
			res.Tokens += a.tokens[i]
			if i > 0 {
				gap := t.Sub(a.chunks[i-1]).Seconds() * 1e3 / float64(a.tokens[i])
				for range a.tokens[i] {
					itl = append(itl, gap)
				}
			}
		}
		if len(a.chunks) == 0 && a.err == "" && in(a.sent) { // not streamed: count its tokens
			res.Tokens += a.nTokens
		}
	}
	res.TokensPerS = float64(res.Tokens) / res.Window
	res.TTFT, res.ITL, res.Requests = percentiles(ttft), percentiles(itl), len(ttft)
	if *metrics {
		res.fromMetrics(before, after)
	}
	fmt.Printf("%s: %d clients, %.1f s: %d completions ok, %d failed, %d wrong; %d tokens, %.2f tokens/s; TTFT p50/p90/p99 %s ms (%d requests); ITL %s ms; CPU busy %.0f%%\n",
		*label, *clients, res.Window, res.OK, res.Failed, res.Wrong, res.Tokens, res.TokensPerS, fmtP(res.TTFT), res.Requests, fmtP(res.ITL), 100*res.CPUBusy)
	if res.PerToken != nil {
		fmt.Printf("%s: per generated token (ms): total %.2f attention %.2f experts %.2f rest %.2f; MoE layer exchange mean %.3f ms (%.1f rows), of which the owners' %.3f ms, the exchange's own %.3f ms; worker call mean %.3f ms\n",
			*label, res.PerToken["total"], res.PerToken["attention"], res.PerToken["experts"], res.PerToken["rest"], res.LayerExchangeMs, res.RowsPerExchange,
			res.LayerServedMs, res.LayerExchangeMs-res.LayerServedMs, res.WorkerCallMs)
	}
	if res.CPUSplit != nil {
		fmt.Printf("%s: %s\n", *label, res.CPUSplit)
	}
	if len(res.Routing) > 0 {
		fmt.Printf("%s: routing (rows per expert in the window, by MoE layer): %s\n", *label, fmtRouting(res.RoutingLayers, res.Routing))
	}
	for _, f := range res.Failures[:min(len(res.Failures), 10)] {
		fmt.Printf("%s: failure: %s\n", *label, f)
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if *strict && res.Failed+res.Wrong > 0 {
		return fmt.Errorf("%d requests failed and %d answered wrong, want 0", res.Failed, res.Wrong)
	}
	if *strict && res.OK == 0 {
		return fmt.Errorf("no request succeeded")
	}
	return nil
}

func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

// fromMetrics fills the per-token split and the exchange times from two
// scrapes of the front end's /metrics.
func (r *loadResult) fromMetrics(before, after map[string]float64) {
	d := func(name string, labels ...string) float64 {
		return sumMetric(after, name, labels...) - sumMetric(before, name, labels...)
	}
	toks := d("switchyard_serve_generation_tokens_total")
	if toks <= 0 {
		return
	}
	r.PerToken = map[string]float64{}
	for _, part := range []string{"attention", "router", "experts", "shared_experts", "dense_mlp", "head", "total"} {
		r.PerToken[part] = d("switchyard_serve_forward_seconds_total", `part="`+part+`"`) * 1e3 / toks
	}
	r.PerToken["rest"] = r.PerToken["total"] - r.PerToken["attention"] - r.PerToken["experts"]
	r.Steps = d("switchyard_serve_batch_sequences_count")
	if n := d("switchyard_frontend_layer_exchange_seconds_count"); n > 0 {
		r.LayerExchanges = n
		r.LayerExchangeMs = d("switchyard_frontend_layer_exchange_seconds_sum") * 1e3 / n
		if m := d("switchyard_frontend_layer_served_seconds_count"); m > 0 {
			r.LayerServedMs = d("switchyard_frontend_layer_served_seconds_sum") * 1e3 / m
		}
		r.RowsPerExchange = d("switchyard_frontend_exchange_rows_total") / n
	}
	if n := d("switchyard_frontend_exchange_seconds_count"); n > 0 {
		r.WorkerCallMs = d("switchyard_frontend_exchange_seconds_sum") * 1e3 / n
	}
	r.RoutingLayers, r.Routing = routingDelta(before, after)
}

// routingDelta is the rows routed to each (layer, expert) between two
// scrapes (switchyard_frontend_expert_rows_total{layer,expert}): the MoE
// layers in ascending order and, for each, its experts' rows (experts the
// front end never routed to count 0, up to the highest index seen in any
// layer). Nil when the scrapes have no such counters.
func routingDelta(before, after map[string]float64) ([]int, [][]int64) {
	type key struct{ layer, expert int }
	rows := map[key]int64{}
	layers := map[int]bool{}
	experts := 0
	for k, v := range after {
		name, lab, ok := strings.Cut(k, "{")
		if !ok || name != "switchyard_frontend_expert_rows_total" {
			continue
		}
		l, e := labelInt(lab, "layer"), labelInt(lab, "expert")
		if l < 0 || e < 0 {
			continue
		}
		rows[key{l, e}] = int64(math.Round(v - before[k]))
		layers[l] = true
		experts = max(experts, e+1)
	}
	if len(rows) == 0 {
		return nil, nil
	}
	ls := slices.Sorted(maps.Keys(layers))
	out := make([][]int64, len(ls))
	for i, l := range ls {
		out[i] = make([]int64, experts)
		for e := range out[i] {
			out[i][e] = rows[key{l, e}]
		}
	}
	return ls, out
}

// labelInt is the integer value of label name in a metric's label text
// (`expert="3",layer="0"}`), or -1.
func labelInt(labels, name string) int {
	_, rest, ok := strings.Cut(labels, name+`="`)
	if !ok {
		return -1
	}
	v, _, _ := strings.Cut(rest, `"`)
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// fmtRouting writes a routing as simulate.ReadServeBench reads it:
// "LAYER:ROWS,ROWS,...;LAYER:..." (each layer's experts in order).
func fmtRouting(layers []int, rows [][]int64) string {
	var b strings.Builder
	for i, l := range layers {
		if i > 0 {
			b.WriteByte(';')
		}
		fmt.Fprintf(&b, "%d:", l)
		for e, n := range rows[i] {
			if e > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatInt(n, 10))
		}
	}
	return b.String()
}

// scrape reads url/metrics: "name{labels}" -> value.
func scrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		m[l[:i]] = v
	}
	return m, sc.Err()
}

// sumMetric sums the samples of metric name whose labels contain every
// one of labels (e.g. `part="experts"`).
func sumMetric(m map[string]float64, name string, labels ...string) float64 {
	s := 0.0
	for k, v := range m {
		n, rest, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(rest, l)
		}
		if ok {
			s += v
		}
	}
	return s
}

func percentiles(xs []float64) []float64 {
	if len(xs) == 0 {
		return nil
	}
	sort.Float64s(xs)
	p := func(q float64) float64 { return xs[min(len(xs)-1, int(math.Ceil(q*float64(len(xs))))-1)] }
	return []float64{p(.5), p(.9), p(.99)}
}

func fmtP(p []float64) string {
	if len(p) != 3 {
		return "-"
	}
	return fmt.Sprintf("%.1f/%.1f/%.1f", p[0], p[1], p[2])
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return fmt.Sprintf("%s, %d cores", strings.TrimSpace(v), nproc(b))
		}
	}
	return "unknown"
}

func nproc(cpuinfo []byte) int { return strings.Count(string(cpuinfo), "\nprocessor") + 1 }

// rateBps reads a tc rate (1gbit, 500mbit, ...).
func rateBps(s string) float64 {
	s = strings.ToLower(s)
	for _, u := range []struct {
		suf  string
		mult float64
	}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}} {
		if v, ok := strings.CutSuffix(s, u.suf); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f * u.mult
		}
	}
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

// ---- restore ----

func restore(args []string) error {
	fs := flag.NewFlagSet("restore", flag.ExitOnError)
	etcd := fs.String("etcd", "", "etcd endpoints")
	clusterName := fs.String("cluster", registry.DefaultCluster, "cluster name")
	dir := fs.String("model", "", "model folder")
	replicas := fs.Int("replicas", 2, "copies every expert must have again")
	gone := fs.String("gone", "", "the worker that died")
	since := fs.Int64("since", 0, "when it died (Unix nanoseconds; 0: now)")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after")
	fs.Parse(args)
	t0 := time.Now()
	if *since != 0 {
		t0 = time.Unix(0, *since)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	rec, err := registry.ModelRecordFromDir(*dir, 2)
	if err != nil {
		return err
	}
	cli, err := registry.Dial(ctx, registry.SplitEndpoints(*etcd))
	if err != nil {
		return err
	}
	defer cli.Close()
	reg, err := registry.New(cli, *clusterName)
	if err != nil {
		return err
	}
	cond := func(p *cluster.Placement) bool {
		for _, l := range rec.MoELayers {
			for e := 0; e < rec.Experts; e++ {
				ws := p.OwnersOf(expert.ID{Layer: l, Expert: e})
				if len(ws) != *replicas || slices.Contains(ws, cluster.WorkerID(*gone)) {
					return false
				}
			}
		}
		return true
	}
	p, _, err := reg.WaitPlacement(ctx, rec.Fingerprint, cond)
	if err != nil {
		return fmt.Errorf("placement not back to %d copies without %s: %w", *replicas, *gone, err)
	}
	placed := time.Since(t0)
	pool, err := transport.NewPool(transport.ClientConfig{Worker: "bench-restore", Model: rec.Fingerprint})
	if err != nil {
		return err
	}
	defer pool.Close()
	if p, err = worker.WaitServing(ctx, reg, pool, rec.Fingerprint, cond); err != nil {
		return err
	}
	counts := map[cluster.WorkerID]int{}
	for _, w := range p.WorkerIDs() {
		counts[w] = len(p.Owned(w))
	}
	fmt.Printf("restore: placement epoch %d back to %d copies of every expert on %v (experts per worker %v) %.2f s after the kill, served by all of them after %.2f s\n",
		p.Epoch, *replicas, p.WorkerIDs(), counts, placed.Seconds(), time.Since(t0).Seconds())
	return nil
}

// ---- tcpping ----

func tcpping(args []string) error {
	fs := flag.NewFlagSet("tcpping", flag.ExitOnError)
	listen := fs.String("listen", "", "serve: echo every message back")
	addr := fs.String("addr", "", "client: ping this server")
	n := fs.Int("n", 2000, "round trips")
	size := fs.Int("size", 64, "message bytes")
	gap := fs.Duration("gap", 0, "idle time before each round trip, as ping's interval (0: back to back); the hosts' CPUs idle between messages, as a decoding front end's and its owners' do between layers")
	poll := fs.Duration("poll", 0, "poll each socket read for up to this long before sleeping (as SWITCHYARD_LANE_POLL makes expert lanes do; internal/rawsock), on the side given the flag")
	gemm := fs.Int("gemm-inter", 0, "server: before echoing each whole message run 4 of 32 expert FFNs of width 1024 and this intermediate width on one row (what an owner does between a decode request and its answer) and send its time in the message's first 8 bytes; client: subtract that time from each round trip (both sides need the flag and the same -size, at least 8)")
	fs.Parse(args)
	if *gemm > 0 && *size < 8 {
		return fmt.Errorf("-gemm-inter needs -size 8 or more (got %d)", *size)
	}
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		var ffns []*expert.FFN
		if *gemm > 0 {
			r := rand.New(rand.NewPCG(1, 2))
			for e := 0; e < 32; e++ {
				ffns = append(ffns, randomFFN(r, 1024, *gemm))
			}
		}
		fmt.Printf("tcpping: listening on %s\n", ln.Addr())
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer c.Close()
				c.(*net.TCPConn).SetNoDelay(true)
				if *poll > 0 {
					c = rawsock.Wrap(c, *poll) // else as before: io.Copy may splice
				}
				if ffns == nil {
					io.Copy(c, c)
					return
				}
				buf := make([]byte, *size)
				x, y, h := make([]float32, 1024), make([]float32, 1024), make([]float32, 2**gemm)
				for i := 0; ; i++ {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					t := time.Now()
					for k := 0; k < 4; k++ {
						ffns[(i*4+k*7)%len(ffns)].Forward(y, x, 1, h)
					}
					binary.LittleEndian.PutUint64(buf, uint64(time.Since(t)))
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ { // the server may be starting
		if c, err = net.Dial("tcp", *addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	c.(*net.TCPConn).SetNoDelay(true)
	if *poll > 0 {
		c = rawsock.Wrap(c, *poll)
	}
	buf := make([]byte, *size)
	rtts := make([]float64, 0, *n)
	for i := 0; i < *n+100; i++ {
		if *gap > 0 {
			time.Sleep(*gap)
		}
		t := time.Now()
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if i >= 100 { // warm-up
			rtt := time.Since(t)
			if *gemm > 0 {
				rtt -= time.Duration(binary.LittleEndian.Uint64(buf))
			}
			rtts = append(rtts, rtt.Seconds()*1e6)
		}
	}
	p := percentiles(rtts)
	what := ""
	if *gemm > 0 {
		what = fmt.Sprintf(" (minus the server's 4 expert GEMMs of intermediate %d)", *gemm)
	}
	fmt.Printf("tcpping: %d round trips%s of %d bytes to %s, %v apart, polling %v: p50 %.1f us, p90 %.1f us, p99 %.1f us\n", *n, what, *size, *addr, *gap, *poll, p[0], p[1], p[2])
	fmt.Printf("rtt_ms=%.4f\n", p[0]/1e3)
	return nil
}

// ---- report ----

func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	out := fs.String("out", "", "write the markdown table here too")
	fs.Parse(args)
	var rs []loadResult
	for _, f := range fs.Args() {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var r loadResult
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		rs = append(rs, r)
	}
	var b strings.Builder
	if len(rs) > 0 {
		fmt.Fprintf(&b, "Serving benchmark, %s; cpu: %s. Client-side latencies in ms (p50/p90/p99); per-token split from the front end's /metrics (forward time per generated token, ms).\n\n", rs[0].Date, rs[0].CPU)
	}
	b.WriteString("| configuration | clients | tokens/s | TTFT ms p50/p90/p99 | ITL ms p50/p90/p99 | ms/token: attention | experts (exchange + remote) | rest | MoE layer exchange ms (rows) | of which owners' compute ms | exchange's own ms | link RTT + transfer ms | idle-link RTT + transfer ms | CPU busy |\n")
	b.WriteString("|---|---:|---:|---|---|---:|---:|---:|---|---:|---:|---|---|---:|\n")
	for _, r := range rs {
		att, exp, rest := "-", "-", "-"
		if r.PerToken != nil {
			att, exp, rest = fmt.Sprintf("%.2f", r.PerToken["attention"]), fmt.Sprintf("%.2f", r.PerToken["experts"]), fmt.Sprintf("%.2f", r.PerToken["rest"])
		}
		exch, link, idle, owners, own := "-", "-", "-", "-", "-"
		if r.LayerExchanges > 0 {
			exch = fmt.Sprintf("%.3f (%.1f)", r.LayerExchangeMs, r.RowsPerExchange)
			owners = fmt.Sprintf("%.3f", r.LayerServedMs)
			own = fmt.Sprintf("%.3f", r.LayerExchangeMs-r.LayerServedMs)
		}
		if r.LinkBps > 0 && r.Hidden > 0 && r.RowsPerExchange > 0 {
			transfer := 2 * r.RowsPerExchange * float64(r.Hidden) * 4 * 8 / r.LinkBps * 1e3
			link = fmt.Sprintf("%.3f + %.3f = %.3f", r.LinkRTTms, transfer, r.LinkRTTms+transfer)
			if r.LinkIdleRTTms > 0 {
				idle = fmt.Sprintf("%.3f + %.3f = %.3f", r.LinkIdleRTTms, transfer, r.LinkIdleRTTms+transfer)
			}
		}
		fmt.Fprintf(&b, "| %s | %d | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f%% |\n",
			r.Config, r.Clients, r.TokensPerS, fmtP(r.TTFT), fmtP(r.ITL), att, exp, rest, exch, owners, own, link, idle, 100*r.CPUBusy)
	}
	fmt.Print(b.String())
	if *out != "" {
		return os.WriteFile(*out, []byte(b.String()), 0o644)
	}
	return nil
}
