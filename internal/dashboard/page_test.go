package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/dashboard/chromium"
)

// fixedSource is a Source that always returns the same State, after
// delay.
type fixedSource struct {
	st    *State
	delay time.Duration
}

func (f fixedSource) State(ctx context.Context) (*State, error) {
	select {
	case <-time.After(f.delay):
		return f.st, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// failingSource is a Source that always fails.
type failingSource struct{}

func (failingSource) State(context.Context) (*State, error) {
	return nil, errors.New("etcd unreachable")
}

// fixture is a small cluster: two workers (one unhealthy), one model of 3
// MoE layers x 8 experts with 2 replicas and one expert without a live
// copy, one training job with a 50-point loss curve, and serving stats
// from two front ends.
func fixture() *State {
	t0 := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)
	const (
		layers  = 3
		experts = 8
	)
	m := Model{
		Fingerprint:       "fp-0123456789abcdef",
		Name:              "tiny-moe",
		Family:            "qwen3moe",
		Layers:            4,
		Experts:           experts,
		Replicas:          2,
		Epoch:             7,
		OK:                false,
		Verdict:           "1 expert has no live copy",
		Unplaced:          []string{"2/5"},
		GridLayers:        []int{1, 2, 3},
		ImbalanceByExpert: 1.8,
		ImbalanceByWorker: 1.1,
	}
	for l := 0; l < layers; l++ {
		var row []Cell
		for e := 0; e < experts; e++ {
			c := Cell{
				Owners:     []string{"w1", "w2"},
				Live:       2,
				Tokens:     uint64(1000*(l+1) + 10*e + 1),
				TokensPerS: float64(10*l + e + 1),
			}
			if e%2 == 1 {
				c.Owners = []string{"w2", "w1"}
			}
			if l == 2 && e == 5 {
				c = Cell{Owners: []string{"w9"}, Live: 0}
			}
			row = append(row, c)
		}
		m.Grid = append(m.Grid, row)
	}
	job := Job{
		ID: "job-42", State: "running", Workers: 2, Attempt: 1,
		Step: 49, Steps: 100, Loss: 2.7182818284590455, EvalLoss: 2.9,
		TokensPerS: 1234.5, Updated: t0,
	}
	for i := 0; i < 50; i++ {
		job.Curve = append(job.Curve, Point{Step: i, Loss: 5 - 0.05*float64(i) + 0.01*float64(i%3)})
	}
	job.Curve[49].Loss = 2.7182818284590455
	serving := Serving{
		Requests: 1200, Active: 3, Queued: 1, TokensPerS: 321.25, PromptTokensPS: 980.5,
		GeneratedToks: 654321,
		TTFTMs:        Quant{P50: 120, P90: 240, P99: 480},
		ITLMs:         Quant{P50: 12.5, P90: 20, P99: 35},
	}
	for i := 0; i < 30; i++ {
		serving.History = append(serving.History, RatePoint{
			Time: t0.Add(time.Duration(i-30) * 2 * time.Second), Value: 300 + float64(i%7)*5,
		})
	}
	fe1, fe2 := serving, serving
	fe1.Name, fe1.TokensPerS, fe1.History = "fe-a", 200, nil
	fe2.Name, fe2.TokensPerS, fe2.History = "fe-b", 121.25, nil
	return &State{
		Time:    t0,
		Cluster: "/switchyard/test",
		Leader:  "coord-1",
		Workers: []Worker{
			{ID: "w1", Addr: "10.0.0.1:7070", Model: m.Fingerprint, Healthy: true, TTLSeconds: 9,
				BudgetBytes: 8 << 30, Experts: 24, HeldBytes: 3 << 30, Epoch: 7, Tokens: 123456, TokensPerS: 88.5},
			{ID: "w2", Addr: "10.0.0.2:7070", Model: m.Fingerprint, Healthy: false, TTLSeconds: 2,
				BudgetBytes: 0, Experts: 23, HeldBytes: 2900 << 20, Epoch: 6, Tokens: 6543, TokensPerS: 0},
		},
		Models:   []Model{m},
		Jobs:     []Job{job},
		Serving:  serving,
		Frontend: []Serving{fe1, fe2},
	}
}

// element is one start tag of the dumped DOM.
type element struct {
	tag   string
	attrs map[string]string
	pos   int // offset of the tag in the document
}

var (
	tagRE  = regexp.MustCompile(`<([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[^\s=>/]+(?:="[^"]*")?)*)\s*/?>`)
	attrRE = regexp.MustCompile(`([^\s=>/]+)(?:="([^"]*)")?`)
)

// elements lists the start tags of an HTML document as Chromium serializes
// it (attribute values always double-quoted).
func elements(doc string) []element {
	var out []element
	for _, m := range tagRE.FindAllStringSubmatchIndex(doc, -1) {
		e := element{tag: strings.ToLower(doc[m[2]:m[3]]), attrs: map[string]string{}, pos: m[0]}
		for _, a := range attrRE.FindAllStringSubmatch(doc[m[4]:m[5]], -1) {
			e.attrs[strings.ToLower(a[1])] = html.UnescapeString(a[2])
		}
		out = append(out, e)
	}
	return out
}

func (e element) hasClass(c string) bool {
	for _, f := range strings.Fields(e.attrs["class"]) {
		if f == c {
			return true
		}
	}
	return false
}

func find(els []element, tag, class string) []element {
	var out []element
	for _, e := range els {
		if e.tag == tag && (class == "" || e.hasClass(class)) {
			out = append(out, e)
		}
	}
	return out
}

func findChromium(t *testing.T) {
	t.Helper()
	if _, err := chromium.Find(); err != nil {
		t.Skip(`headless Chromium is needed: install the Debian package "chromium"`)
	}
}

// TestPageRendersState loads the page in headless Chromium and checks the
// DOM it built from api/state. The Source answers after 1 s of real time,
// more than the 500 ms virtual-time budget: the data is in the DOM only
// because Chromium's virtual clock stops while a fetch is pending (see
// chromium.DumpDOM).
func TestPageRendersState(t *testing.T) {
	findChromium(t)
	t.Parallel()
	st := fixture()
	srv := httptest.NewServer(Handler(fixedSource{st: st, delay: time.Second}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	doc, err := chromium.DumpDOM(ctx, srv.URL+Prefix, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dumped %d bytes of DOM in %v", len(doc), time.Since(start).Round(time.Millisecond))
	els := elements(doc)

	bodies := find(els, "body", "")
	if len(bodies) != 1 {
		t.Fatalf("%d <body> elements in the dumped DOM", len(bodies))
	}
	if b := bodies[0]; b.attrs["data-loaded"] != "1" || b.attrs["data-updated"] != st.Time.Format(time.RFC3339Nano) {
		t.Fatalf("the page did not render the state: body data-loaded=%q data-updated=%q (want 1, %s); DOM:\n%s",
			b.attrs["data-loaded"], b.attrs["data-updated"], st.Time.Format(time.RFC3339Nano), doc)
	}
	for _, want := range []string{st.Cluster, st.Leader, ">live<"} {
		if !strings.Contains(doc, want) {
			t.Errorf("the header does not show %q", want)
		}
	}

	t.Run("workers", func(t *testing.T) {
		rows := find(els, "tr", "worker")
		if len(rows) != len(st.Workers) {
			t.Fatalf("%d worker rows, want %d", len(rows), len(st.Workers))
		}
		for i, w := range st.Workers {
			if got := rows[i].attrs["data-id"]; got != w.ID {
				t.Errorf("worker row %d: data-id %q, want %q", i, got, w.ID)
			}
			if got, want := rows[i].attrs["data-healthy"], strconv.FormatBool(w.Healthy); got != want {
				t.Errorf("worker %s: data-healthy %q, want %q", w.ID, got, want)
			}
		}
		if !strings.Contains(doc, "3.0 GiB / 8.0 GiB") {
			t.Error(`worker w1's held/budget is not shown as "3.0 GiB / 8.0 GiB"`)
		}
	})

	t.Run("grid", func(t *testing.T) {
		m := st.Models[0]
		grids := find(els, "table", "grid")
		if len(grids) != 1 || grids[0].attrs["data-model"] != m.Fingerprint {
			t.Fatalf("grids: %+v, want one with data-model=%s", grids, m.Fingerprint)
		}
		cells := find(els, "td", "cell")
		if want := len(m.Grid) * m.Experts; len(cells) != want {
			t.Fatalf("%d grid cells, want %d", len(cells), want)
		}
		seen := map[string]bool{}
		noLive := 0
		for _, c := range cells {
			l, err1 := strconv.Atoi(strings.TrimPrefix(c.attrs["data-layer"], "L"))
			e, err2 := strconv.Atoi(c.attrs["data-expert"])
			if err1 != nil || err2 != nil {
				t.Fatalf("cell with bad data-layer/data-expert: %v", c.attrs)
			}
			row := -1
			for i, gl := range m.GridLayers {
				if gl == l {
					row = i
				}
			}
			if row < 0 || e < 0 || e >= m.Experts {
				t.Fatalf("cell of layer %d expert %d is not in the fixture", l, e)
			}
			key := fmt.Sprint(l, "/", e)
			if seen[key] {
				t.Errorf("cell %s twice", key)
			}
			seen[key] = true
			want := m.Grid[row][e]
			if got := c.attrs["data-tokens"]; got != strconv.FormatUint(want.Tokens, 10) {
				t.Errorf("cell %s: data-tokens %q, want %d", key, got, want.Tokens)
			}
			if got := c.attrs["data-owners"]; got != strings.Join(want.Owners, ",") {
				t.Errorf("cell %s: data-owners %q, want %q", key, got, strings.Join(want.Owners, ","))
			}
			if got := c.attrs["data-live"]; got != strconv.Itoa(want.Live) {
				t.Errorf("cell %s: data-live %q, want %d", key, got, want.Live)
			}
			if !strings.Contains(c.attrs["title"], strings.Join(want.Owners, ", ")) {
				t.Errorf("cell %s: title %q does not list the owners", key, c.attrs["title"])
			}
			if want.Live == 0 {
				noLive++
				if !c.hasClass("nolive") {
					t.Errorf("cell %s has no live copy but is not marked: class %q", key, c.attrs["class"])
				}
			} else {
				if c.hasClass("nolive") {
					t.Errorf("cell %s has %d live copies but is marked nolive", key, want.Live)
				}
				if !strings.Contains(c.attrs["style"], "background") {
					t.Errorf("cell %s is not coloured: style %q", key, c.attrs["style"])
				}
			}
		}
		if noLive != 1 {
			t.Errorf("%d cells without a live copy, want 1", noLive)
		}
		if !strings.Contains(doc, m.Verdict) || !strings.Contains(doc, "2/5") {
			t.Errorf("the verdict %q and the unplaced expert 2/5 are not shown", m.Verdict)
		}
	})

	t.Run("loss chart", func(t *testing.T) {
		j := st.Jobs[0]
		charts := find(els, "div", "loss-chart")
		if len(charts) != 1 || charts[0].attrs["data-job"] != j.ID {
			t.Fatalf("loss charts: %+v, want one for job %s", charts, j.ID)
		}
		c := charts[0]
		if got := c.attrs["data-points"]; got != strconv.Itoa(len(j.Curve)) {
			t.Errorf("data-points %q, want %d", got, len(j.Curve))
		}
		last := j.Curve[len(j.Curve)-1]
		if got := c.attrs["data-last-step"]; got != strconv.Itoa(last.Step) {
			t.Errorf("data-last-step %q, want %d", got, last.Step)
		}
		if got, err := strconv.ParseFloat(c.attrs["data-last-loss"], 64); err != nil || got != last.Loss {
			t.Errorf("data-last-loss %q, want %v", c.attrs["data-last-loss"], last.Loss)
		}
		// uPlot draws on a canvas inside the container.
		end := strings.Index(doc[c.pos:], "</section>")
		if end < 0 || !strings.Contains(doc[c.pos:c.pos+end], "<canvas") {
			t.Error("the loss chart has no <canvas>: uPlot did not draw it")
		}
	})

	t.Run("serving", func(t *testing.T) {
		var sv *element
		for i, e := range els {
			if e.attrs["id"] == "serving" {
				sv = &els[i]
			}
		}
		if sv == nil {
			t.Fatal("no #serving element")
		}
		got, err := strconv.ParseFloat(sv.attrs["data-tokens-per-s"], 64)
		if err != nil || got != st.Serving.TokensPerS {
			t.Errorf("#serving data-tokens-per-s %q, want %v", sv.attrs["data-tokens-per-s"], st.Serving.TokensPerS)
		}
		if !strings.Contains(doc[sv.pos:], "<canvas") {
			t.Error("the serving history chart has no <canvas>")
		}
		if n := len(find(els, "tr", "frontend")); n != len(st.Frontend) {
			t.Errorf("%d front-end rows, want %d", n, len(st.Frontend))
		}
	})

	if file := os.Getenv("DASHBOARD_SCREENSHOT"); file != "" {
		if err := chromium.Screenshot(ctx, srv.URL+Prefix, file, 1280, 1400, 500*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot saved to %s", file)
	}
}

// changingSource serves a new State at each call, then fails: the clock
// moves 2 s a call; job-1's curve has 10 points a call, job-2 appears at
// the second call and job-1 is gone from the third; the fourth call and
// those after fail.
type changingSource struct {
	mu    sync.Mutex
	calls int
	last  *State // the last State served
}

const failFrom = 4

func (c *changingSource) State(context.Context) (*State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.calls >= failFrom {
		return nil, errors.New("etcd unreachable")
	}
	st := fixture()
	st.Time = st.Time.Add(time.Duration(c.calls) * 2 * time.Second)
	job := st.Jobs[0]
	st.Jobs = nil
	for _, id := range []string{"job-1", "job-2"} {
		if id == "job-1" && c.calls >= 3 || id == "job-2" && c.calls < 2 {
			continue
		}
		j := job
		j.ID = id
		j.Curve = nil
		for i := 0; i < 10*c.calls; i++ {
			j.Curve = append(j.Curve, Point{Step: i, Loss: 3 + float64(c.calls) - 0.01*float64(i)})
		}
		st.Jobs = append([]Job{j}, st.Jobs...)
	}
	c.last = st
	return st, nil
}

// TestPageRefreshes lets the page poll several times (in virtual time):
// it shows the latest State, with one chart per job (charts of jobs gone
// removed, uPlot instances reused, not stacked), and when a poll fails it
// says so in the status line and keeps showing the last State.
func TestPageRefreshes(t *testing.T) {
	findChromium(t)
	t.Parallel()
	src := &changingSource{}
	srv := httptest.NewServer(Handler(src))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Polls at about 0, 2, 4 and 6 s of virtual time (the fourth fails);
	// the budget ends before the fifth.
	doc, err := chromium.DumpDOM(ctx, srv.URL+Prefix, 7*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	calls, st := src.calls, src.last
	src.mu.Unlock()
	if calls < failFrom {
		t.Fatalf("the page polled %d times in 7 s of virtual time, want %d", calls, failFrom)
	}
	els := elements(doc)
	if b := find(els, "body", ""); len(b) != 1 || b[0].attrs["data-updated"] != st.Time.Format(time.RFC3339Nano) {
		t.Fatalf("body %v: the page does not show the last State (of %s)", b, st.Time.Format(time.RFC3339Nano))
	}
	if !strings.Contains(doc, "error: etcd unreachable") {
		t.Error("the status line does not show the failed poll's error")
	}
	charts := find(els, "div", "loss-chart")
	if len(charts) != len(st.Jobs) {
		t.Fatalf("%d loss charts, want %d (jobs %v)", len(charts), len(st.Jobs), st.Jobs)
	}
	for i, j := range st.Jobs {
		c := charts[i]
		if c.attrs["data-job"] != j.ID || c.attrs["data-points"] != strconv.Itoa(len(j.Curve)) {
			t.Errorf("chart %d: job %q with %q points, want %s with %d", i, c.attrs["data-job"], c.attrs["data-points"], j.ID, len(j.Curve))
		}
	}
	// One uPlot per loss chart plus the serving chart.
	if n, want := len(find(els, "div", "uplot")), len(st.Jobs)+1; n != want {
		t.Errorf("%d uPlot charts in the page, want %d", n, want)
	}
	if n := len(find(els, "tr", "worker")); n != len(st.Workers) {
		t.Errorf("%d worker rows after %d polls, want %d", n, calls, len(st.Workers))
	}
	if n := len(find(els, "td", "cell")); n != 24 {
		t.Errorf("%d grid cells after %d polls, want 24", n, calls)
	}
}

// TestPageEmptyState checks the page renders a State with nothing in it
// ("none" lines instead of empty tables and charts).
func TestPageEmptyState(t *testing.T) {
	findChromium(t)
	t.Parallel()
	st := &State{Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Cluster: "/empty"}
	srv := httptest.NewServer(Handler(fixedSource{st: st}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	doc, err := chromium.DumpDOM(ctx, srv.URL+Prefix, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(doc, `data-loaded="1"`) {
		t.Fatalf("the page did not render the empty state; DOM:\n%s", doc)
	}
	for _, want := range []string{"No workers registered.", "No models served.", "No training jobs.", "No front ends.", "No serving history."} {
		if !strings.Contains(doc, want) {
			t.Errorf("the empty page does not say %q", want)
		}
	}
	if strings.Contains(doc, "<canvas") {
		t.Error("the empty page draws a chart")
	}
}

func TestHandlerAssets(t *testing.T) {
	st := fixture()
	srv := httptest.NewServer(Handler(fixedSource{st: st}))
	defer srv.Close()

	get := func(t *testing.T, path string) (*http.Response, []byte) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	cases := []struct{ path, ctype string }{
		{Prefix, "text/html"},
		{Prefix + "index.html", "text/html"},
		{Prefix + "static/app.js", "javascript"},
		{Prefix + "static/style.css", "text/css"},
		{Prefix + "static/uplot.iife.min.js", "javascript"},
		{Prefix + "static/uplot.min.css", "text/css"},
		{Prefix + "static/LICENSE-uplot", "text/plain"},
		{Prefix + "api/state", "application/json"},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			resp, body := get(t, c.path)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", resp.Status)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, c.ctype) {
				t.Errorf("Content-Type %q, want %s", ct, c.ctype)
			}
			if len(body) == 0 {
				t.Error("empty body")
			}
		})
	}

	// Every asset the page references is served.
	_, page := get(t, Prefix)
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(string(page), -1)
	if len(refs) < 4 {
		t.Errorf("index.html references %d assets, want the two scripts and two style sheets", len(refs))
	}
	for _, r := range refs {
		resp, _ := get(t, Prefix+r[1])
		if resp.StatusCode != http.StatusOK {
			t.Errorf("index.html references %s: %s", r[1], resp.Status)
		}
	}

	t.Run("api/state", func(t *testing.T) {
		resp, body := get(t, Prefix+"api/state")
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control %q", cc)
		}
		var got State
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(st)
		again, _ := json.Marshal(&got)
		if string(want) != string(again) {
			t.Errorf("api/state round trip differs:\n got %s\nwant %s", again, want)
		}
	})

	t.Run("api/state error", func(t *testing.T) {
		srv := httptest.NewServer(Handler(failingSource{}))
		defer srv.Close()
		resp, err := http.Get(srv.URL + Prefix + "api/state")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e map[string]string
		if resp.StatusCode != http.StatusServiceUnavailable || json.NewDecoder(resp.Body).Decode(&e) != nil || e["error"] == "" {
			t.Errorf("status %s, body %v; want 503 with an error", resp.Status, e)
		}
	})

	t.Run("POST", func(t *testing.T) {
		for _, p := range []string{Prefix, Prefix + "api/state", Prefix + "static/app.js"} {
			resp, err := http.Post(srv.URL+p, "application/json", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("POST %s: %s, want 405", p, resp.Status)
			}
		}
	})

	t.Run("not found", func(t *testing.T) {
		for _, p := range []string{Prefix + "static/nope.js", Prefix + "nope"} {
			if resp, _ := get(t, p); resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s: %s, want 404", p, resp.Status)
			}
		}
	})
}

// TestAssetsAreLocal checks the page loads nothing from outside the
// server: no absolute URLs in our own assets (the vendored uPlot and its
// LICENSE name its home page in comments only).
func TestAssetsAreLocal(t *testing.T) {
	abs := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|(?:src|href)\s*=\s*["']?/`)
	for _, name := range []string{"index.html", "app.js", "style.css"} {
		b, err := fs.ReadFile(assets, "assets/"+name)
		if err != nil {
			t.Fatal(err)
		}
		if m := abs.FindString(string(b)); m != "" {
			t.Errorf("%s references %q: every URL must be relative", name, m)
		}
	}
	for _, name := range []string{"uplot.iife.min.js", "uplot.min.css", "LICENSE-uplot"} {
		if _, err := fs.Stat(assets, "assets/"+name); err != nil {
			t.Errorf("vendored %s: %v", name, err)
		}
	}
}
