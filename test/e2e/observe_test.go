package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/switchyard/switchyard/internal/dashboard"
	"github.com/switchyard/switchyard/internal/dashboard/chromium"
	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/pkg/registry"
)

// scrape reads a process's Prometheus metrics page.
func scrape(t *testing.T, ctx context.Context, url string) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape %s: status %d", url, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return fams
}

// series returns family name's samples as label-set -> value (counters,
// gauges; a histogram's sample count).
func series(fams map[string]*dto.MetricFamily, name string) map[string]float64 {
	out := map[string]float64{}
	f := fams[name]
	if f == nil {
		return out
	}
	for _, m := range f.Metric {
		var parts []string
		for _, l := range m.Label {
			parts = append(parts, l.GetName()+"="+l.GetValue())
		}
		key := strings.Join(parts, ",")
		switch {
		case m.Counter != nil:
			out[key] = m.Counter.GetValue()
		case m.Gauge != nil:
			out[key] = m.Gauge.GetValue()
		case m.Histogram != nil:
			out[key] = float64(m.Histogram.GetSampleCount())
		}
	}
	return out
}

func sum(m map[string]float64) float64 {
	s := 0.0
	for _, v := range m {
		s += v
	}
	return s
}

// lineValue is the value after prefix on the first line of file that
// starts with it.
func lineValue(t *testing.T, ctx context.Context, file, prefix string) string {
	t.Helper()
	var v string
	waitUntil(t, ctx, prefix+" in "+filepath.Base(file), func() bool {
		b, _ := os.ReadFile(file)
		for _, l := range strings.Split(string(b), "\n") {
			if s, ok := strings.CutPrefix(l, prefix); ok {
				v = strings.Fields(s)[0]
				return true
			}
		}
		return false
	})
	return v
}

// TestClusterMetricsAndDashboard is issue 16's acceptance test: a local
// cluster (coordinator with --http, 3 workers with --metrics, R = 2), a
// front end joined to it under a serving load and a training job on two
// of the workers. Every process's metrics are scraped and checked against
// what happened: the rows each expert computed on the workers add up,
// expert by expert, to the rows the front end routed to it; each worker's
// rows are what the front end sent it; the ranks' step counts, tokens and
// loss are the job's. The dashboard (coordinator and front end) is opened
// in headless Chromium and must draw the placement grid with the workers'
// token counts and the job's loss curve. Then a worker is SIGKILLed: the
// coordinator's metrics show the placement change and the recovery.
func TestClusterMetricsAndDashboard(t *testing.T) {
	needE2E(t)
	if _, err := chromium.Find(); err != nil {
		t.Fatalf("%v (scripts/test.sh installs it)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	state, dataRoot := t.TempDir(), trainingDataRoot(t)
	dir, _ := filepath.Abs(filepath.Join(goldenDir, "qwen2_moe"))
	etcd := localClusterUp(t, ctx, state, "3", "--model", dir, "--replicas", "2", "--data-root", dataRoot)
	coordURL := lineValue(t, ctx, filepath.Join(state, "coordinator.out"), "coordinator: http=")
	workerURL := map[string]string{}
	for i := 1; i <= 3; i++ {
		workerURL[fmt.Sprintf("w%d", i)] = lineValue(t, ctx, filepath.Join(state, fmt.Sprintf("w%d.out", i)), "worker: metrics=")
	}
	cli, err := registry.Dial(ctx, []string{etcd})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	js := jobs.NewStore(cli, "local")

	// Metrics before any traffic: the workers hold their experts.
	for w, u := range workerURL {
		f := scrape(t, ctx, u)
		if held := sum(series(f, "switchyard_worker_held_experts")); held == 0 {
			t.Errorf("%s: switchyard_worker_held_experts 0 after the placement", w)
		}
		if rss := sum(series(f, "process_resident_memory_bytes")); rss <= 0 {
			t.Errorf("%s: no process_resident_memory_bytes", w)
		}
	}

	feURL, _ := startFrontEnd(t, ctx, etcd, "local", dir)
	const steps = 60
	_, id := trainOnCluster(t, ctx, etcd, steps, 30)
	// Serving load while the job trains: every answer checked.
	want := map[string]string{}
	for _, p := range servePrompts {
		want[p] = generateOneProcess(t, dir, p, 12)
	}
	ld := startLoad(ctx, feURL, 2, want)
	ld.settle(t, ctx, 6)
	ld.check(t, "serving under a training job")
	sp, st := waitJob(t, ctx, js, id, func(sp *jobs.Spec, _ jobs.Status) bool { return sp.State == jobs.Done || sp.State == jobs.Abandoned })
	if sp.State != jobs.Done {
		t.Fatalf("job %s: %s: %s", id, sp.State, sp.Error)
	}

	// Workers report their counters every 2 s: wait until the front end's
	// routed rows and the workers' computed rows agree (they must, once
	// the load stopped), expert by expert.
	var routed, computed map[string]float64
	var fe, coord map[string]*dto.MetricFamily
	workers := map[string]map[string]*dto.MetricFamily{}
	waitUntil(t, ctx, "the workers' expert rows to match the front end's", func() bool {
		fe = scrape(t, ctx, feURL+"/metrics")
		routed = series(fe, "switchyard_frontend_expert_rows_total") // keys "expert=E,layer=L"
		computed = map[string]float64{}
		for w, u := range workerURL {
			workers[w] = scrape(t, ctx, u)
			for k, v := range series(workers[w], "switchyard_worker_expert_tokens_total") {
				computed[k] += v
			}
		}
		if len(routed) == 0 {
			return false
		}
		for k, v := range routed {
			if computed[k] != v {
				return false
			}
		}
		return sum(computed) == sum(routed)
	})
	report(t, "metrics: %d experts routed %.0f rows in all; the workers computed the same rows expert by expert", len(routed), sum(routed))
	// The rows the front end sent each worker are the rows that worker computed.
	sent := series(fe, "switchyard_frontend_exchange_rows_total")
	for w := range workerURL {
		got := sum(series(workers[w], "switchyard_worker_expert_tokens_total"))
		if s := sent["worker="+w]; s != got {
			t.Errorf("front end sent %s %.0f rows; it computed %.0f", w, s, got)
		}
		if reqs := sum(series(workers[w], "switchyard_worker_requests_total")); got > 0 && reqs == 0 {
			t.Errorf("%s computed rows but counts no request", w)
		}
		if q := sum(series(workers[w], "switchyard_worker_queue_seconds")); got > 0 && q == 0 {
			t.Errorf("%s computed rows but observed no queueing time", w)
		}
	}
	if gen := sum(series(fe, "switchyard_serve_generation_tokens_total")); gen == 0 {
		t.Error("front end: no generated tokens counted")
	}
	// Training: both ranks counted every step and their rows' tokens; the
	// loss gauge is the job's last loss.
	var stepsDone, tokens float64
	ranks := 0
	for w := range workerURL {
		s := series(workers[w], "switchyard_train_steps_total")["train_job="+id]
		if s == 0 {
			continue
		}
		ranks++
		stepsDone += s
		tokens += series(workers[w], "switchyard_train_tokens_total")["train_job="+id]
		parts := series(workers[w], "switchyard_train_step_seconds_total")
		total, split := parts["part=total,train_job="+id], 0.0 // labels in name order
		for _, p := range []string{"forward", "backward", "exchange_wait", "allreduce_wait", "optimizer", "barrier"} {
			v := parts["part="+p+",train_job="+id]
			if v < 0 {
				t.Errorf("%s: step part %s = %g", w, p, v)
			}
			split += v
		}
		if total <= 0 || split > total*1.0001 {
			t.Errorf("%s: step parts add up to %g s of %g s total", w, split, total)
		}
		if l := series(workers[w], "switchyard_train_loss")["train_job="+id]; math.Abs(l-st.Loss) > 1e-9*math.Max(1, math.Abs(st.Loss)) {
			t.Errorf("%s: switchyard_train_loss %g, the job's last loss %g", w, l, st.Loss)
		}
		if bw := series(workers[w], "switchyard_train_allreduce_bus_bandwidth_bytes_per_second")["train_job="+id]; bw <= 0 {
			t.Errorf("%s: all-reduce bus bandwidth %g", w, bw)
		}
	}
	if ranks != 2 || stepsDone != 2*steps || tokens != steps*4*32 {
		t.Errorf("training metrics: %d ranks, %.0f rank-steps, %.0f tokens; want 2, %d, %d", ranks, stepsDone, tokens, 2*steps, steps*4*32)
	}
	coord = scrape(t, ctx, coordURL+"/metrics")
	if l := sum(series(coord, "switchyard_coordinator_is_leader")); l != 1 {
		t.Errorf("coordinator: is_leader %g", l)
	}
	if n := sum(series(coord, "switchyard_coordinator_live_workers")); n != 3 {
		t.Errorf("coordinator: live_workers %g, want 3", n)
	}
	if n := series(coord, "switchyard_coordinator_jobs")["state=done"]; n < 1 {
		t.Errorf("coordinator: no done job in switchyard_coordinator_jobs: %v", series(coord, "switchyard_coordinator_jobs"))
	}
	if imb := series(coord, "switchyard_coordinator_expert_load_imbalance"); len(imb) == 0 {
		t.Error("coordinator: no expert load imbalance gauge")
	}

	// The dashboard, in a browser, on the coordinator and on the front end.
	checkDashboard(t, ctx, coordURL+"/dashboard/", id, computed, os.Getenv("SWITCHYARD_DASHBOARD_SCREENSHOT"))
	checkDashboard(t, ctx, feURL+"/dashboard/", id, computed, "")

	// The terminal view of the same state (its refreshing form is tested
	// through a pseudo-terminal in internal/top).
	topOut := startProcess(t, "top", "--once", "--url", coordURL)
	<-topOut.exited
	if topOut.err != nil {
		t.Fatalf("switchyard top --once: %v\n%s", topOut.err, topOut.out.String())
	}
	for _, s := range []string{"w1", "w2", "w3", id} {
		if !strings.Contains(topOut.out.String(), s) {
			t.Errorf("switchyard top --once does not show %s:\n%s", s, topOut.out.String())
		}
	}

	// A worker's death is a placement change on the coordinator, and the
	// recovery (R = 2 copies on the two survivors) is timed.
	before := series(coord, "switchyard_coordinator_placement_changes_total")
	pid := readPid(t, filepath.Join(state, "w3.pid"))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitUntil(t, ctx, "the coordinator to count w3's loss and the recovery", func() bool {
		coord = scrape(t, ctx, coordURL+"/metrics")
		return sum(series(coord, "switchyard_coordinator_recovery_seconds")) >= 1 &&
			sum(series(coord, "switchyard_coordinator_live_workers")) == 2
	})
	after := series(coord, "switchyard_coordinator_placement_changes_total")
	left := 0.0
	for k, v := range after {
		if strings.Contains(k, "reason=worker_left") {
			left += v - before[k]
		}
	}
	if left < 1 {
		t.Errorf("no worker_left placement change after SIGKILL of w3: before %v, after %v", before, after)
	}
	if n := sum(series(coord, "switchyard_coordinator_worker_losses_total")); n < 1 {
		t.Errorf("worker_losses_total %g after SIGKILL of w3", n)
	}
	h := coord["switchyard_coordinator_recovery_seconds"].Metric[0].Histogram
	report(t, "metrics: w3 SIGKILLed; the coordinator saw %g worker_left placement change(s) and timed the recovery at %.2f s (test saw it after %v)",
		left, h.GetSampleSum()/float64(h.GetSampleCount()), time.Since(killed).Round(100*time.Millisecond))
}

var (
	cellRE  = regexp.MustCompile(`<td[^>]*class="cell[^"]*"[^>]*>`)
	attrRE  = regexp.MustCompile(`data-([a-z-]+)="([^"]*)"`)
	chartRE = regexp.MustCompile(`<div[^>]*class="loss-chart"[^>]*>`)
)

func attrs(tag string) map[string]string {
	out := map[string]string{}
	for _, m := range attrRE.FindAllStringSubmatch(tag, -1) {
		out[m[1]] = m[2]
	}
	return out
}

// checkDashboard opens url in headless Chromium and checks what the page
// drew from live data: one grid cell per routed expert with the workers'
// token count (as the collector saw it: at least what was computed by the
// time metrics agreed, since no load runs now it is equal), every cell
// with two live owners, and the job's loss curve with a point per step.
func checkDashboard(t *testing.T, ctx context.Context, url, job string, computed map[string]float64, screenshot string) {
	t.Helper()
	var dom, problem string
	var cells []string
	drawn := 0.0
	// The page draws what the workers last reported to etcd (every 2 s):
	// wait until it shows every expert with the counts they computed.
	check := func() string {
		var err error
		if dom, err = chromium.DumpDOM(ctx, url, 8*time.Second); err != nil {
			return err.Error()
		}
		if !strings.Contains(dom, `data-loaded="1"`) {
			return "no live data rendered (body data-loaded)"
		}
		cells = cellRE.FindAllString(dom, -1)
		if len(cells) != len(computed) {
			return fmt.Sprintf("%d grid cells; the workers hold %d experts", len(cells), len(computed))
		}
		drawn = 0
		for _, c := range cells {
			a := attrs(c)
			key := "expert=" + a["expert"] + ",layer=" + a["layer"]
			tok, _ := strconv.ParseFloat(a["tokens"], 64)
			if tok != computed[key] {
				return fmt.Sprintf("cell %s shows %g tokens; the workers computed %g", key, tok, computed[key])
			}
			if a["live"] != "2" || len(strings.Split(a["owners"], ",")) != 2 {
				return fmt.Sprintf("cell %s: owners %q, live %s; want 2 live copies", key, a["owners"], a["live"])
			}
			drawn += tok
		}
		if drawn == 0 {
			return "the grid shows no tokens"
		}
		for _, c := range chartRE.FindAllString(dom, -1) {
			a := attrs(c)
			if a["job"] != job {
				continue
			}
			n, _ := strconv.Atoi(a["points"])
			last, _ := strconv.Atoi(a["last-step"])
			loss, _ := strconv.ParseFloat(a["last-loss"], 64)
			if n < 2 || last < 2 || !(loss > 0) {
				return fmt.Sprintf("loss chart of %s: %d points, last step %d, last loss %g", job, n, last, loss)
			}
			if !strings.Contains(dom, "<canvas") {
				return "no chart canvas drawn"
			}
			return ""
		}
		return "no loss chart for job " + job
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for problem = check(); problem != ""; problem = check() {
		select {
		case <-tick.C:
		case <-wctx.Done():
			t.Fatalf("dashboard %s after 90 s: %s", url, problem)
		}
	}
	// The API the page reads is the same State.
	resp, err := http.Get(strings.TrimSuffix(url, "/") + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	var st dashboard.State
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || len(st.Workers) == 0 {
		t.Errorf("%s api/state: %v, %d workers", url, err, len(st.Workers))
	}
	if screenshot != "" {
		if err := chromium.Screenshot(ctx, url, screenshot, 1400, 1100, 8*time.Second); err != nil {
			t.Errorf("screenshot: %v", err)
		} else {
			t.Logf("dashboard screenshot: %s", screenshot)
		}
	}
	report(t, "dashboard %s: %d grid cells with %.0f tokens drawn, loss curve of %s drawn", url, len(cells), drawn, job)
}
