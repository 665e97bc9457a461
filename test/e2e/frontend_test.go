package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/transport"
)

const goldenDir = "../../testdata/golden"

var (
	buildOnce   sync.Once
	buildDir    string
	switchyardX string
	buildErr    error
)

// switchyardBin builds the switchyard CLI once per test binary (removed by
// TestMain).
func switchyardBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "switchyard-e2e-bin-"); buildErr != nil {
			return
		}
		switchyardX = filepath.Join(buildDir, "switchyard")
		out, err := exec.Command("go", "build", "-o", switchyardX, "../../cmd/switchyard").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/switchyard: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return switchyardX
}

// syncBuf is a bytes.Buffer safe for a process's writes and our reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// process is a switchyard CLI process started by a test.
type process struct {
	cmd    *exec.Cmd
	out    *syncBuf // stdout and stderr
	exited chan struct{}
	err    error
}

func startProcess(t *testing.T, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(switchyardBin(t), args...), out: &syncBuf{}, exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
		if t.Failed() {
			t.Logf("--- %s output:\n%s", strings.Join(p.cmd.Args, " "), p.out.String())
		}
	})
	return p
}

var frontEndReady = regexp.MustCompile(`(?m)^serve: ready: (http://\S+) `)

// startFrontEnd runs `switchyard serve --etcd ... --cluster ...` for dir
// (with extra flags) and waits until its /health answers 200; it returns
// the API's URL.
func startFrontEnd(t *testing.T, ctx context.Context, etcd, clusterName, dir string, extra ...string) (string, *process) {
	t.Helper()
	p := startProcess(t, append([]string{"serve", "--model", dir, "--tokenizer", gpt2Tok, "--etcd", etcd, "--cluster", clusterName,
		"--listen", "127.0.0.1:0", "--served-model-name", "m"}, extra...)...)
	var url string
	waitUntil(t, ctx, "the front end's ready line", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("front end exited: %v\n%s", p.err, p.out.String())
		default:
		}
		m := frontEndReady.FindStringSubmatch(p.out.String())
		if m != nil {
			url = m[1]
		}
		return m != nil
	})
	waitUntil(t, ctx, "the front end's /health to answer 200", func() bool { return healthCode(url) == http.StatusOK })
	return url, p
}

func healthCode(url string) int {
	resp, err := http.Get(url + "/health")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// completion is one answer of /v1/completions.
type completion struct {
	Text   string
	Status int
	Body   string
}

// complete posts a greedy completion (streamed or not) and returns the
// text; a status other than 200, or a stream that does not end with
// [DONE], is reported in Status/Body.
func complete(ctx context.Context, url, prompt string, maxTokens int, stream bool) completion {
	raw, _ := json.Marshal(map[string]any{"model": "m", "prompt": prompt, "max_tokens": maxTokens, "temperature": 0, "stream": stream})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return completion{Status: -1, Body: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return completion{Status: resp.StatusCode, Body: string(b)}
	}
	if !stream {
		var c struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
		}
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &c); err != nil || len(c.Choices) != 1 {
			return completion{Status: -2, Body: string(b)}
		}
		return completion{Text: c.Choices[0].Text, Status: 200}
	}
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	var all strings.Builder
	done := false
	for sc.Scan() {
		all.WriteString(sc.Text() + "\n")
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
			Error any `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil || c.Error != nil {
			return completion{Status: -3, Body: all.String()}
		}
		for _, ch := range c.Choices {
			text.WriteString(ch.Text)
		}
	}
	if !done {
		return completion{Status: -4, Body: all.String()}
	}
	return completion{Text: text.String(), Status: 200}
}

// generateOneProcess runs `switchyard generate` (every expert in one
// process) greedily and returns its text.
func generateOneProcess(t *testing.T, dir, prompt string, maxTokens int) string {
	t.Helper()
	cmd := exec.Command(switchyardBin(t), "generate", "--model", dir, "--tokenizer", gpt2Tok, "--prompt", prompt,
		"--max-tokens", fmt.Sprint(maxTokens), "--temperature", "0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("generate: %v\n%s", err, stderr.String())
	}
	return strings.TrimSuffix(string(out), "\n")
}

var servePrompts = []string{
	"The coordinator shards experts",
	"Of the Refractions of Light",
	"When a worker dies, its experts",
	"a b c d e f g",
}

// TestFrontEndsJoinLocalCluster: a 3-worker cluster started by
// scripts/local-cluster.sh, and two front ends (`switchyard serve --etcd
// --cluster local`, separate processes that start no etcd and no workers)
// joined to it: greedy completions through each, streamed and not, equal
// `switchyard generate` with every expert in one process. Every process
// here polls its expert lanes (SWITCHYARD_LANE_POLL=2ms, inherited by the
// workers and the front ends): the other serving tests use blocking lanes.
func TestFrontEndsJoinLocalCluster(t *testing.T) {
	needE2E(t)
	t.Setenv(transport.LanePollEnv, "2ms")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir, _ := filepath.Abs(filepath.Join(goldenDir, "qwen2_moe"))
	etcd := localClusterUp(t, ctx, t.TempDir(), "3", "--model", dir)
	urlA, _ := startFrontEnd(t, ctx, etcd, "local", dir)
	urlB, _ := startFrontEnd(t, ctx, etcd, "local", dir)
	ref := map[string]string{}
	for _, prompt := range servePrompts {
		want := generateOneProcess(t, dir, prompt, 12)
		ref[prompt] = want
		for _, fe := range []string{urlA, urlB} {
			for _, stream := range []bool{false, true} {
				got := complete(ctx, fe, prompt, 12, stream)
				if got.Status != 200 {
					t.Fatalf("%s %q stream=%v: status %d: %s", fe, prompt, stream, got.Status, got.Body)
				}
				if got.Text != want {
					t.Errorf("%s %q stream=%v: %q, one process %q", fe, prompt, stream, got.Text, want)
				}
			}
		}
	}
	// Both front ends at once, each batching its own requests.
	var wg sync.WaitGroup
	var bad atomic.Int32
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := []string{urlA, urlB}[i%2]
			prompt := servePrompts[i%len(servePrompts)]
			if got := complete(ctx, url, prompt, 12, i%3 == 0); got.Status != 200 || got.Text != ref[prompt] {
				bad.Add(1)
				t.Errorf("concurrent %d on %s: %+v", i, url, got)
			}
		}()
	}
	wg.Wait()
}

// localClusterUp runs `scripts/local-cluster.sh up N ARGS... --dir state`,
// takes it down when the test ends, and returns the etcd endpoint it
// wrote to state/endpoint.
func localClusterUp(t *testing.T, ctx context.Context, state string, args ...string) string {
	t.Helper()
	script, _ := filepath.Abs("../../scripts/local-cluster.sh")
	what := "local-cluster.sh up " + strings.Join(args, " ")
	up := exec.CommandContext(ctx, script, append(append([]string{"up"}, args...), "--dir", state)...)
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, out)
	} else {
		t.Logf("%s:\n%s", what, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(script, "down", "--dir", state).CombinedOutput(); err != nil {
			t.Errorf("local-cluster.sh down: %v\n%s", err, out)
		}
	})
	b, err := os.ReadFile(filepath.Join(state, "endpoint"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// report logs a result line and, when SWITCHYARD_E2E_REPORT names a file,
// appends it there too (scripts/test.sh prints that file: go test shows a
// passing test's output only with -v).
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	if f := os.Getenv("SWITCHYARD_E2E_REPORT"); f != "" {
		fh, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		fmt.Fprintln(fh, line)
	}
}

// load is a set of clients sending greedy completions in a loop, each
// answer checked against the reference text of its prompt.
type load struct {
	ok, failed, wrong atomic.Int64
	mu                sync.Mutex
	failures          []string
	stop              context.CancelFunc
	done              sync.WaitGroup
}

func startLoad(ctx context.Context, url string, clients int, want map[string]string) *load {
	lctx, cancel := context.WithCancel(ctx)
	l := &load{stop: cancel}
	for c := 0; c < clients; c++ {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			for i := 0; lctx.Err() == nil; i++ {
				prompt := servePrompts[(c+i)%len(servePrompts)]
				got := complete(context.Background(), url, prompt, 12, (c+i)%2 == 0)
				switch {
				case got.Status != 200:
					l.failed.Add(1)
					l.mu.Lock()
					l.failures = append(l.failures, fmt.Sprintf("%s: status %d: %s", time.Now().Format("15:04:05.000"), got.Status, got.Body))
					l.mu.Unlock()
				case got.Text != want[prompt]:
					l.wrong.Add(1)
					l.mu.Lock()
					l.failures = append(l.failures, fmt.Sprintf("%q: %q, want %q", prompt, got.Text, want[prompt]))
					l.mu.Unlock()
				default:
					l.ok.Add(1)
				}
			}
		}()
	}
	return l
}

// settle waits until the clients have completed n more requests (the load
// runs through the moment in question, whatever the machine's speed).
func (l *load) settle(t *testing.T, ctx context.Context, n int64) {
	t.Helper()
	target := l.ok.Load() + l.failed.Load() + l.wrong.Load() + n
	waitUntil(t, ctx, fmt.Sprintf("%d more completions", n), func() bool {
		return l.ok.Load()+l.failed.Load()+l.wrong.Load() >= target
	})
}

// check stops the load and fails the test on any failed or wrong answer.
func (l *load) check(t *testing.T, phase string) {
	t.Helper()
	l.stop()
	l.done.Wait()
	t.Logf("%s: %d completions, %d failed, %d wrong", phase, l.ok.Load(), l.failed.Load(), l.wrong.Load())
	if l.failed.Load()+l.wrong.Load() > 0 {
		for _, f := range l.failures[:min(len(l.failures), 10)] {
			t.Log(f)
		}
		t.Errorf("%s: %d failed and %d wrong completions, want 0", phase, l.failed.Load(), l.wrong.Load())
	}
	if l.ok.Load() == 0 {
		t.Errorf("%s: no completion succeeded", phase)
	}
}

// restored waits until the stored placement gives every expert r copies,
// all on live workers other than gone, and every worker it names serves
// it; it returns how long that took from since.
func restored(t *testing.T, ctx context.Context, lc *localcluster.Cluster, r int, gone cluster.WorkerID, since time.Time) (*cluster.Placement, time.Duration) {
	t.Helper()
	var p *cluster.Placement
	waitUntil(t, ctx, fmt.Sprintf("the placement to be back to %d copies without %s", r, gone), func() bool {
		cur, _, err := lc.Registry.Placement(ctx, lc.Model.Fingerprint)
		if err != nil || cur == nil {
			return false
		}
		set, err := lc.Registry.Workers(ctx)
		if err != nil {
			return false
		}
		live := map[cluster.WorkerID]bool{}
		for _, w := range set.Workers {
			live[w.ID] = true
		}
		for _, l := range lc.Model.MoELayers {
			for e := 0; e < lc.Model.Experts; e++ {
				ws := cur.OwnersOf(expert.ID{Layer: l, Expert: e})
				if len(ws) != r || slices.Contains(ws, gone) {
					return false
				}
				for _, w := range ws {
					if !live[w] {
						return false
					}
				}
			}
		}
		p = cur
		return true
	})
	took := time.Since(since)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := worker.WaitServing(sctx, lc.Registry, lc.Pool, lc.Model.Fingerprint, nil); err != nil {
		t.Fatal(err)
	}
	return p, took
}

// TestServeFailover: R = 2 copies of every expert on 3 worker processes, a
// front end process, 8 concurrent clients. SIGKILL of a worker mid-load
// fails no request and the coordinator restores 2 copies on the survivors;
// SIGSTOP of a worker (it stops answering) fails no request, and after
// SIGCONT it rejoins and takes its share back by live migration; a new
// worker joining mid-load fails no request. Every answer equals `switchyard
// generate` in one process.
func TestServeFailover(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, _ := filepath.Abs(filepath.Join(goldenDir, "qwen2_moe"))
	want := map[string]string{}
	for _, p := range servePrompts {
		want[p] = generateOneProcess(t, dir, p, 12)
	}
	const ttl = 2 * time.Second
	lc := startCluster(t, ctx, localcluster.Options{ModelDir: dir, Workers: 3, Replicas: 2, LeaseTTL: ttl,
		StatsInterval: 100 * time.Millisecond, Cluster: "failover", ExpectWorkers: 3})
	if _, err := lc.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	url, fe := startFrontEnd(t, ctx, lc.Endpoints[0], "failover", dir)

	// SIGKILL w1 under load.
	l := startLoad(ctx, url, 8, want)
	l.settle(t, ctx, 16)
	killed := time.Now()
	lc.Proc("w1").Kill()
	p, took := restored(t, ctx, lc, 2, "w1", killed)
	t.Logf("SIGKILL w1: placement epoch %d back to 2 copies on %v after %v", p.Epoch, p.WorkerIDs(), took.Round(time.Millisecond))
	l.settle(t, ctx, 16)
	l.check(t, "SIGKILL w1")
	report(t, "serve failover: SIGKILL of a worker under 8 clients: %d completions ok, %d failed, %d wrong; 2 copies restored on the survivors %v after the kill (lease TTL %v)",
		l.ok.Load(), l.failed.Load(), l.wrong.Load(), took.Round(time.Millisecond), ttl)
	if !strings.Contains(fe.out.String(), "worker left the cluster") || !strings.Contains(fe.out.String(), "worker=w1") {
		t.Errorf("the front end did not report w1 leaving:\n%s", fe.out.String())
	}

	// A new worker joins mid-load: it takes a share by live migration.
	l = startLoad(ctx, url, 8, want)
	l.settle(t, ctx, 8)
	joined := time.Now()
	if _, err := lc.StartWorker(ctx, "w4"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "w4 to hold experts", func() bool {
		cur, _, err := lc.Registry.Placement(ctx, lc.Model.Fingerprint)
		return err == nil && cur != nil && len(cur.Owned("w4")) > 0
	})
	p, _ = restored(t, ctx, lc, 2, "w1", joined)
	t.Logf("w4 joined: placement epoch %d on %v after %v", p.Epoch, p.WorkerIDs(), time.Since(joined).Round(time.Millisecond))
	l.settle(t, ctx, 16)
	l.check(t, "w4 joins")
	report(t, "serve failover: a worker joining under 8 clients (live migration): %d completions ok, %d failed, %d wrong", l.ok.Load(), l.failed.Load(), l.wrong.Load())

	// SIGSTOP w2 under load: its lease lapses, its copies are re-placed;
	// after SIGCONT it registers again and takes a share back.
	l = startLoad(ctx, url, 8, want)
	l.settle(t, ctx, 8)
	w2 := lc.Proc("w2")
	stopped := time.Now()
	if err := w2.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	p, took = restored(t, ctx, lc, 2, "w2", stopped)
	t.Logf("SIGSTOP w2: placement epoch %d back to 2 copies on %v after %v", p.Epoch, p.WorkerIDs(), took.Round(time.Millisecond))
	stopTook := took
	if err := w2.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, ctx, "w2 to rejoin and hold experts", func() bool {
		cur, _, err := lc.Registry.Placement(ctx, lc.Model.Fingerprint)
		return err == nil && cur != nil && len(cur.Owned("w2")) > 0
	})
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	if _, err := lc.WaitServing(sctx); err != nil {
		t.Fatal(err)
	}
	scancel()
	l.settle(t, ctx, 16)
	l.check(t, "SIGSTOP/SIGCONT w2")
	report(t, "serve failover: SIGSTOP of a worker, then SIGCONT (it rejoins), under 8 clients: %d completions ok, %d failed, %d wrong; 2 copies restored on the others %v after the stop (lease TTL %v)",
		l.ok.Load(), l.failed.Load(), l.wrong.Load(), stopTook.Round(time.Millisecond), ttl)
	if code := healthCode(url); code != http.StatusOK {
		t.Errorf("/health %d after the faults", code)
	}
}

// TestServeNoLiveCopy: with R = 1, a SIGKILLed worker's experts have no
// live copy until the coordinator re-places them: requests routed there
// fail fast with a 503 in OpenAI's error shape naming the experts (never a
// hang or a wrong answer), and once the survivor holds them requests
// succeed again with the right answer.
func TestServeNoLiveCopy(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, _ := filepath.Abs(filepath.Join(goldenDir, "qwen2_moe"))
	want := generateOneProcess(t, dir, servePrompts[1], 12)
	lc := startCluster(t, ctx, localcluster.Options{ModelDir: dir, Workers: 2, LeaseTTL: 5 * time.Second,
		StatsInterval: 100 * time.Millisecond, Cluster: "nolive", ExpectWorkers: 2})
	if _, err := lc.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	url, _ := startFrontEnd(t, ctx, lc.Endpoints[0], "nolive", dir)
	if got := complete(ctx, url, servePrompts[1], 12, false); got.Status != 200 || got.Text != want {
		t.Fatalf("before the fault: %+v, want %q", got, want)
	}
	lc.Proc("w1").Kill()
	killed := time.Now()
	start := time.Now()
	got := complete(ctx, url, servePrompts[1], 12, false)
	took := time.Since(start)
	t.Logf("right after SIGKILL of w1 (lease TTL 5 s): %d after %v: %s", got.Status, took.Round(time.Millisecond), got.Body)
	if got.Status != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503 while w1's experts have no live copy: %s", got.Status, got.Body)
	}
	if took > 3*time.Second {
		t.Errorf("the 503 took %v, want a fast failure", took)
	}
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(got.Body), &e); err != nil || e.Error.Type != "server_error" || e.Error.Code == nil || *e.Error.Code != "experts_unavailable" {
		t.Errorf("503 body %s is not OpenAI's error shape with code experts_unavailable", got.Body)
	}
	if !regexp.MustCompile(`L\d+/E\d+`).MatchString(e.Error.Message) || !strings.Contains(e.Error.Message, "w1") {
		t.Errorf("503 message does not name the experts and the worker: %s", e.Error.Message)
	}
	// The coordinator moves w1's experts to w2 once w1's lease expires.
	waitUntil(t, ctx, "requests to succeed again on the survivor", func() bool {
		got = complete(ctx, url, servePrompts[1], 12, false)
		return got.Status == 200
	})
	t.Logf("served again %v after the kill", time.Since(killed).Round(time.Millisecond))
	if got.Text != want {
		t.Errorf("after re-placement: %q, want %q", got.Text, want)
	}
}

// TestServeMemoryShortfall: workers whose memory budgets cannot hold the
// model: `switchyard status` says so within seconds, naming the
// shortfall, and `serve --workers 2 --worker-mem ...` exits with the
// shortfall instead of waiting out a deadline.
func TestServeMemoryShortfall(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Mixtral-style: 4 layers x 32 experts of 2.25 MiB (bf16): 288 MiB.
	hf := map[string]any{
		"model_type": "mixtral", "vocab_size": 320, "hidden_size": 512, "intermediate_size": 768,
		"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
		"num_local_experts": 32, "num_experts_per_tok": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
		"max_position_embeddings": 128, "tie_word_embeddings": false,
	}
	dir := synth(t, hf, "BF16", 5)
	lc := startCluster(t, ctx, localcluster.Options{ModelDir: dir, Workers: 2, Cluster: "short", WorkerArgs: []string{"--mem", "128MiB"}})
	start := time.Now()
	var out string
	waitUntil(t, ctx, "status to name the shortfall", func() bool {
		b, _ := exec.Command(switchyardBin(t), "status", "--etcd", lc.Endpoints[0], "--cluster", "short").CombinedOutput()
		out = string(b)
		return strings.Contains(out, "short by")
	})
	t.Logf("status after %v:\n%s", time.Since(start).Round(time.Millisecond), out)
	if time.Since(start) > 15*time.Second {
		t.Errorf("status took %v to name the shortfall", time.Since(start))
	}

	start = time.Now()
	p := startProcess(t, "serve", "--model", dir, "--tokenizer", gpt2Tok, "--workers", "2", "--worker-mem", "128MiB", "--listen", "127.0.0.1:0")
	select {
	case <-p.exited:
	case <-time.After(90 * time.Second):
		t.Fatalf("serve still running after 90 s:\n%s", p.out.String())
	}
	took := time.Since(start)
	t.Logf("serve exited after %v: %v\n%s", took.Round(time.Millisecond), p.err, p.out.String())
	if p.err == nil {
		t.Error("serve exited 0 with too little memory")
	}
	if !strings.Contains(p.out.String(), "short by") {
		t.Errorf("serve did not name the shortfall")
	}
}
