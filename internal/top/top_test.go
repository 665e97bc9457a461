package top

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/switchyard/switchyard/internal/dashboard"
)

// fixture is a small cluster: four workers (one late), one model of two
// MoE layers x four experts whose busiest expert is L3/E2, two jobs (one
// with a falling loss curve) and two front ends.
func fixture() *dashboard.State {
	curve := make([]dashboard.Point, 60)
	for i := range curve {
		curve[i] = dashboard.Point{Step: i * 2, Loss: 8 / float64(1+i)}
	}
	cell := func(rate float64, tokens uint64, owners ...string) dashboard.Cell {
		return dashboard.Cell{Owners: owners, Live: len(owners), Tokens: tokens, TokensPerS: rate}
	}
	return &dashboard.State{
		Time:    time.Date(2026, 3, 4, 12, 30, 5, 0, time.UTC),
		Cluster: "prod-east",
		Leader:  "coord-a",
		Workers: []dashboard.Worker{
			{ID: "w-alpha", Addr: "10.0.0.1:7000", Healthy: true, TTLSeconds: 9, BudgetBytes: 4 << 30, Experts: 3, HeldBytes: 3 << 29, Epoch: 7, Tokens: 120000, TokensPerS: 812.5},
			{ID: "w-beta", Addr: "10.0.0.2:7000", Healthy: true, TTLSeconds: 8, BudgetBytes: 4 << 30, Experts: 3, HeldBytes: 3 << 29, Epoch: 7, Tokens: 90000, TokensPerS: 640},
			{ID: "w-gamma", Addr: "10.0.0.3:7000", Healthy: true, TTLSeconds: 7, Experts: 2, HeldBytes: 1 << 30, Epoch: 7, Tokens: 5000, TokensPerS: 12},
			{ID: "w-delta", Addr: "10.0.0.4:7000", Healthy: false, TTLSeconds: 2, BudgetBytes: 2 << 30, Experts: 0, Epoch: 6},
		},
		Models: []dashboard.Model{{
			Fingerprint: "fp0123456789", Name: "tiny-moe", Family: "mixtral",
			Layers: 4, Experts: 4, Replicas: 2, Epoch: 7, OK: true,
			GridLayers: []int{1, 3},
			Grid: [][]dashboard.Cell{
				{cell(40, 900, "w-alpha"), cell(300, 5000, "w-beta", "w-alpha"), cell(5, 100, "w-gamma"), cell(0, 0, "w-beta")},
				{cell(120, 2000, "w-alpha"), cell(0, 0, "w-beta"), cell(950.5, 77000, "w-gamma", "w-delta"), cell(80, 1500, "w-beta")},
			},
			ImbalanceByExpert: 3.21, ImbalanceByWorker: 1.45,
		}},
		Jobs: []dashboard.Job{
			{ID: "job-7f3a", State: "running", Workers: 3, Attempt: 2, Step: 120, Steps: 1000, Loss: 0.1333, TokensPerS: 15300, Curve: curve},
			{ID: "job-0001", State: "failed", Workers: 2, Attempt: 1, Step: 10, Steps: 10, Loss: 3.2, Error: "worker lost", Curve: curve[:5]},
		},
		Serving: dashboard.Serving{
			Requests: 4321, Active: 3, Queued: 1, TokensPerS: 210.4,
			TTFTMs: dashboard.Quant{P50: 85, P99: 420}, ITLMs: dashboard.Quant{P50: 21.5, P99: 64},
		},
		Frontend: []dashboard.Serving{{Name: "fe-1"}, {Name: "fe-2"}},
	}
}

func render(t *testing.T, st *dashboard.State, w, h int) []string {
	t.Helper()
	var b bytes.Buffer
	if err := Render(&b, st, w, h); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if s == "" {
		return nil
	}
	if !strings.HasSuffix(s, "\n") {
		t.Fatalf("frame does not end in a newline: %q", s)
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// checkFits asserts the frame's size and that it is plain, valid text.
func checkFits(t *testing.T, ls []string, w, h int) {
	t.Helper()
	if len(ls) > h {
		t.Errorf("%dx%d: %d lines", w, h, len(ls))
	}
	for i, l := range ls {
		if n := utf8.RuneCountInString(l); n > w {
			t.Errorf("%dx%d: line %d has %d columns: %q", w, h, i, n, l)
		}
		if !utf8.ValidString(l) || strings.ContainsAny(l, "\x1b\r\t") {
			t.Errorf("%dx%d: line %d is not plain text: %q", w, h, i, l)
		}
	}
}

func index(ls []string, sub string) int {
	for i, l := range ls {
		if strings.Contains(l, sub) {
			return i
		}
	}
	return -1
}

func TestRenderShowsEverything(t *testing.T) {
	ls := render(t, fixture(), 120, 40)
	checkFits(t, ls, 120, 40)
	frame := strings.Join(ls, "\n")
	for _, want := range []string{
		"cluster prod-east", "leader coord-a", "workers 3/4 healthy",
		"w-alpha", "10.0.0.1:7000", "1.5 GiB / 4.0 GiB", "1.0 GiB / -", "812.5", "LATE 2s",
		"L3/E2", "950.5", "77.0k", "w-gamma,w-delta (2/2 live)",
		"job-7f3a", "running", "120/1000", "0.1333", "15.3k", "error: worker lost",
		"210.4 tok/s", "ttft p50/p99 85ms/420ms", "itl p50/p99 22ms/64ms", "active 3", "queued 1", "front ends 2",
		"model tiny-moe", "imbalance by expert 3.21, by worker 1.45", "placement ok",
	} {
		if !strings.Contains(frame, want) {
			t.Errorf("frame lacks %q:\n%s", want, frame)
		}
	}
	if !strings.HasPrefix(ls[0], "switchyard top") {
		t.Errorf("first line is not the header: %q", ls[0])
	}
	// The sections come in order.
	order := []string{"WORKER", "HOT EXPERT", "JOB", "serving", "model tiny-moe"}
	for i := 1; i < len(order); i++ {
		if a, b := index(ls, order[i-1]), index(ls, order[i]); a < 0 || b <= a {
			t.Errorf("%q (line %d) is not above %q (line %d)", order[i-1], a, order[i], b)
		}
	}
	// Experts that computed nothing are not hot.
	if i := index(ls, "L1/E3"); i >= 0 {
		t.Errorf("an idle expert is listed: %q", ls[i])
	}
}

func TestRenderHottestFirst(t *testing.T) {
	ls := render(t, fixture(), 120, 40)
	head := index(ls, "HOT EXPERT")
	want := []string{"L3/E2", "L1/E1", "L3/E0", "L3/E3", "L1/E0", "L1/E2"} // by tokens/s
	for i, w := range want {
		if l := ls[head+1+i]; !strings.HasPrefix(l, w) {
			t.Errorf("hot expert %d: %q, want %s first", i+1, l, w)
		}
	}

	// Before any rate was measured they go by tokens.
	st := fixture()
	for _, row := range st.Models[0].Grid {
		for i := range row {
			row[i].TokensPerS = 0
		}
	}
	ls = render(t, st, 120, 40)
	head = index(ls, "HOT EXPERT")
	for i, w := range []string{"L3/E2", "L1/E1", "L3/E0", "L3/E3", "L1/E0", "L1/E2"} { // by tokens
		if l := ls[head+1+i]; !strings.HasPrefix(l, w) {
			t.Errorf("no rates: hot expert %d: %q, want %s", i+1, l, w)
		}
	}
}

func TestRenderHotAcrossModels(t *testing.T) {
	st := fixture()
	m := st.Models[0]
	m.Name, m.GridLayers = "other-moe", []int{0}
	m.Grid = [][]dashboard.Cell{{{Owners: []string{"w-beta"}, Live: 0, Tokens: 10, TokensPerS: 5000}}}
	st.Models = append(st.Models, m)
	ls := render(t, st, 120, 40)
	head := index(ls, "HOT EXPERT")
	if l := ls[head+1]; !strings.HasPrefix(l, "other-moe") || !strings.Contains(l, "L0/E0") || !strings.Contains(l, "w-beta (0/1 live)") {
		t.Errorf("the other model's expert is not first: %q", l)
	}
	if l := ls[head+2]; !strings.HasPrefix(l, "tiny-moe") || !strings.Contains(l, "L3/E2") {
		t.Errorf("second hot expert: %q", l)
	}
}

func TestRenderFitsAnySize(t *testing.T) {
	big := fixture()
	for i := range 50 {
		big.Workers = append(big.Workers, dashboard.Worker{ID: fmt.Sprintf("w-extra-%02d", i), Addr: "10.1.0.1:7000", Healthy: true})
	}
	for i := range 30 {
		big.Jobs = append(big.Jobs, dashboard.Job{ID: fmt.Sprintf("job-extra-%02d", i), State: "done"})
	}
	long := fixture()
	long.Workers[0].ID = strings.Repeat("very-long-worker-id-", 10)
	long.Jobs[0].Error = strings.Repeat("x", 500)
	for _, st := range []*dashboard.State{fixture(), big, long, {}} {
		for _, sz := range [][2]int{{120, 40}, {100, 30}, {60, 20}, {40, 10}, {20, 5}, {200, 3}, {10, 1}, {1, 1}, {300, 200}} {
			ls := render(t, st, sz[0], sz[1])
			checkFits(t, ls, sz[0], sz[1])
			if len(ls) == 0 {
				t.Errorf("%v: empty frame", sz)
			}
		}
		if ls := render(t, st, 0, 0); len(ls) != 0 {
			t.Errorf("0x0: %q", ls)
		}
	}
}

func TestRenderCutsLongListsKeepsOtherSections(t *testing.T) {
	st := fixture()
	for i := range 50 {
		st.Workers = append(st.Workers, dashboard.Worker{ID: fmt.Sprintf("w-extra-%02d", i), Healthy: true})
	}
	ls := render(t, st, 120, 24)
	checkFits(t, ls, 120, 24)
	if len(ls) != 24 {
		t.Errorf("%d lines, want the whole height (24)", len(ls))
	}
	frame := strings.Join(ls, "\n")
	for _, want := range []string{"more", "L3/E2", "job-7f3a", "serving", "model tiny-moe"} {
		if !strings.Contains(frame, want) {
			t.Errorf("frame lacks %q:\n%s", want, frame)
		}
	}
	// 54 workers; "… N more" says how many are not shown.
	i := index(ls, "more")
	shown := i - index(ls, "WORKER") - 1
	if want := fmt.Sprintf("… %d more", 54-shown); !strings.Contains(ls[i], want) {
		t.Errorf("%q, want %q", ls[i], want)
	}
}

func TestRenderCleansControlCharacters(t *testing.T) {
	st := fixture()
	st.Workers[0].ID = "evil\x1b[2J\x07id"
	st.Jobs[0].Error = "line1\nline2"
	ls := render(t, st, 120, 40)
	checkFits(t, ls, 120, 40)
	if index(ls, "evil?[2J?id") < 0 {
		t.Errorf("cleaned worker ID not shown:\n%s", strings.Join(ls, "\n"))
	}
}

// sparkOf is the sparkline at the end of a job's line.
func sparkOf(l string) []rune {
	r := []rune(l)
	i := len(r)
	for i > 0 && r[i-1] >= '▁' && r[i-1] <= '█' {
		i--
	}
	return r[i:]
}

func TestSparklineFallingLoss(t *testing.T) {
	ls := render(t, fixture(), 120, 40)
	l := ls[index(ls, "job-7f3a")]
	sp := sparkOf(l)
	if len(sp) < minSpark {
		t.Fatalf("no sparkline in %q", l)
	}
	if sp[0] != '█' || sp[len(sp)-1] != '▁' {
		t.Errorf("sparkline %q does not fall from █ to ▁", string(sp))
	}
	for i := 1; i < len(sp); i++ {
		if sp[i] > sp[i-1] {
			t.Errorf("sparkline %q rises at %d", string(sp), i)
		}
	}
	// It draws the curve's last points, as many as fit.
	if got := sparkline(fixture().Jobs[0].Curve, 10); utf8.RuneCountInString(got) != 10 {
		t.Errorf("sparkline of 10: %q", got)
	}
	if got := sparkline([]dashboard.Point{{Loss: 2}, {Loss: 2}}, 10); got != "▁▁" {
		t.Errorf("flat curve: %q", got)
	}
	// A narrow frame has no room for it.
	ls = render(t, fixture(), 50, 40)
	if l := ls[index(ls, "job-7f3a")]; len(sparkOf(l)) > 0 && strings.Contains(ls[index(ls, "JOB")], "CURVE") {
		t.Errorf("sparkline at 50 columns: %q", l)
	}
}

func TestRenderEmptyCluster(t *testing.T) {
	ls := render(t, &dashboard.State{Cluster: "c"}, 80, 20)
	frame := strings.Join(ls, "\n")
	for _, want := range []string{"workers 0/0 healthy", "leader none", "no workers registered", "no expert tokens routed yet", "no training jobs", "no front end publishing", "no models"} {
		if !strings.Contains(frame, want) {
			t.Errorf("frame lacks %q:\n%s", want, frame)
		}
	}
}

// seqSource answers its states in turn (an error for a nil one), then
// the last one again.
type seqSource struct {
	mu    sync.Mutex
	calls int
	seq   []*dashboard.State
}

func (s *seqSource) State(ctx context.Context) (*dashboard.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.seq[min(s.calls, len(s.seq)-1)]
	s.calls++
	if st == nil {
		return nil, errors.New("etcd unreachable")
	}
	return st, nil
}

func TestRunOncePlain(t *testing.T) {
	var b bytes.Buffer
	if err := Run(context.Background(), &b, &seqSource{seq: []*dashboard.State{fixture()}}, Config{Once: true}); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if strings.Contains(s, "\x1b") {
		t.Errorf("--once output has escape codes: %q", s)
	}
	ls := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	checkFits(t, ls, DefaultWidth, DefaultHeight)
	if index(ls, "L3/E2") < 0 || index(ls, "job-7f3a") < 0 {
		t.Errorf("frame:\n%s", s)
	}

	err := Run(context.Background(), &b, &seqSource{seq: []*dashboard.State{nil}}, Config{Once: true})
	if err == nil || !strings.Contains(err.Error(), "etcd unreachable") {
		t.Errorf("once with a failing source: %v", err)
	}
}

func TestRunFramesKeepLastStateOnError(t *testing.T) {
	second := fixture()
	second.Jobs[0].Step = 340
	src := &seqSource{seq: []*dashboard.State{fixture(), nil, second}}
	var b bytes.Buffer
	err := Run(context.Background(), &b, src, Config{Iterations: 3, Interval: time.Millisecond, Width: 80, Height: 24})
	if err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if !strings.HasPrefix(s, hideCursor) || !strings.HasSuffix(s, showCursor+"\n") {
		t.Errorf("cursor not hidden then shown: %q ... %q", s[:min(len(s), 20)], s[max(0, len(s)-20):])
	}
	frames := strings.Split(strings.TrimSuffix(strings.TrimPrefix(s, hideCursor), showCursor+"\n"), clearHome)
	if len(frames) != 4 || frames[0] != "" {
		t.Fatalf("%d frames, want 3: %q", len(frames)-1, s)
	}
	frames = frames[1:]
	for i, f := range frames {
		ls := strings.Split(f, "\n")
		checkFits(t, ls, 80, 24)
		if index(ls, "w-alpha") < 0 {
			t.Errorf("frame %d lacks the workers:\n%s", i+1, f)
		}
	}
	if strings.Contains(frames[0], "fetch failed") || !strings.Contains(frames[1], "fetch failed") || !strings.Contains(frames[1], "etcd unreachable") || !strings.Contains(frames[1], "120/1000") {
		t.Errorf("frame 2 does not show the error over the last state:\n%s", frames[1])
	}
	if strings.Contains(frames[2], "fetch failed") || !strings.Contains(frames[2], "340/1000") {
		t.Errorf("frame 3 does not show the new state:\n%s", frames[2])
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	src := &seqSource{seq: []*dashboard.State{fixture()}}
	var (
		mu sync.Mutex
		b  bytes.Buffer
	)
	drawn := make(chan struct{}) // closed once a frame shows the fixture
	var once sync.Once
	w := lockedWriter{mu: &mu, b: &b, after: func(all string) {
		if strings.Contains(all, "w-alpha") {
			once.Do(func() { close(drawn) })
		}
	}}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, w, src, Config{Interval: time.Hour}) }()
	select {
	case <-drawn:
	case <-time.After(10 * time.Second):
		t.Fatal("no frame drawn")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if !strings.HasSuffix(b.String(), showCursor+"\n") {
		t.Errorf("cursor not shown at the end")
	}
}

// lockedWriter is a buffer safe for Run's writes and the test's reads;
// after, if set, sees the whole output after each write (under the lock).
type lockedWriter struct {
	mu    *sync.Mutex
	b     *bytes.Buffer
	after func(string)
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.b.Write(p)
	if w.after != nil {
		w.after(w.b.String())
	}
	return n, err
}

func TestURLSource(t *testing.T) {
	var (
		mu       sync.Mutex
		gotAuth  string
		fail     bool
		lastAuth = func() string { mu.Lock(); defer mu.Unlock(); return gotAuth }
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		gotAuth = r.Header.Get("Authorization")
		if r.URL.Path != StatePath {
			http.NotFound(w, r)
			return
		}
		if fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "dashboard: etcd down"})
			return
		}
		_ = json.NewEncoder(w).Encode(fixture())
	}))
	defer srv.Close()
	ctx := context.Background()

	for _, base := range []string{srv.URL, srv.URL + "/", strings.TrimPrefix(srv.URL, "http://")} {
		st, err := URLSource{Base: base, APIKey: "k1"}.State(ctx)
		if err != nil {
			t.Fatalf("%s: %v", base, err)
		}
		if st.Cluster != "prod-east" || len(st.Workers) != 4 || len(st.Models[0].Grid) != 2 {
			t.Errorf("%s: state %+v", base, st)
		}
		if a := lastAuth(); a != "Bearer k1" {
			t.Errorf("Authorization %q", a)
		}
	}

	mu.Lock()
	fail = true
	mu.Unlock()
	_, err := URLSource{Base: srv.URL, Client: srv.Client()}.State(ctx)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "dashboard: etcd down") {
		t.Errorf("503: %v", err)
	}
	_, err = URLSource{Base: srv.URL + "/nothing"}.State(ctx)
	if err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), "page not found") {
		t.Errorf("404: %v", err)
	}
}

// Through the real handler: what dashboard.Handler serves, URLSource reads.
func TestURLSourceWithDashboardHandler(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle(dashboard.Prefix, dashboard.Handler(&seqSource{seq: []*dashboard.State{fixture()}}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	st, err := URLSource{Base: srv.URL}.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Jobs[0].ID != "job-7f3a" || len(st.Jobs[0].Curve) != 60 {
		t.Errorf("state %+v", st.Jobs)
	}
}
