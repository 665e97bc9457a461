package simulate

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/placement"
)

// TestModelParams: the presets come to their published sizes.
func TestModelParams(t *testing.T) {
	for _, c := range []struct {
		m                MoEShape
		total, activated float64 // billions
		tol              float64
	}{
		{DeepSeekV3(), 671, 37, 0.02},
		{Mixtral8x22B(), 141, 39, 0.02},
	} {
		p := c.m.Params()
		tot, act := float64(p.Total)/1e9, float64(p.Activated)/1e9
		if math.Abs(tot-c.total)/c.total > c.tol || math.Abs(act-c.activated)/c.activated > c.tol {
			t.Errorf("%s: %.2f B total, %.2f B activated; want %g B and %g B within %.0f%%", c.m.Name, tot, act, c.total, c.activated, 100*c.tol)
		}
		t.Logf("%s: %.2f B total (%.2f B routed experts), %.2f B activated; front end %.1f GB, one expert %.1f MB",
			c.m.Name, tot, float64(p.RoutedExperts)/1e9, act, float64(c.m.FrontendBytes())/1e9, float64(c.m.ExpertBytes())/1e6)
	}
	if got := DeepSeekV3().ExpertBytes(); got != 3*7168*2048*2 {
		t.Errorf("DeepSeek-V3 expert copy %d bytes, want 3 x 7168 x 2048 x 2", got)
	}
}

// handShape is one MoE layer of one expert whose every cost the test
// below computes by hand.
func handShape() MoEShape {
	return MoEShape{Name: "hand", Layers: 1, Hidden: 64, ExpertInter: 128, RoutedExperts: 1, TopK: 1, ElemBytes: 4,
		Attn: Attention{Heads: 1, KVHeads: 1, HeadDim: 64}, Vocab: 10}
}

// TestServeHandComputed: one front end, one worker, one core each, batch
// 1, the calibration a single 1 GFLOP/s point and no memory floor: the
// step is the hand-computed sum of its parts, to the nanosecond.
func TestServeHandComputed(t *testing.T) {
	cal := &Calibration{GEMM: []GEMMPoint{{M: 1, K: 64, N: 64, DType: "f32", Threads: 1, FLOPS: 1e9}},
		MsgCPU: 10 * time.Microsecond, MsgBytesPerS: 256e6}
	c := Cluster{Workers: 1, Frontends: 1, Cores: 1, MemoryBytes: 1 << 30, Rate: 256e6, Latency: 5 * time.Microsecond, Oversubscription: 1, HostsPerLeaf: 2}
	r, err := PredictServe(ServeConfig{Model: handShape(), Cluster: c, Steps: 3, Warmup: 1}, cal)
	if err != nil {
		t.Fatal(err)
	}
	ns := func(n int) time.Duration { return time.Duration(n) }
	gemm := func(m, k, n int) time.Duration { return ns(2 * m * k * n) } // at 1 GFLOP/s: 2mkn ns
	front := 4*gemm(1, 64, 64) + gemm(1, 64, 1)                          // q, k, v, o; router
	head := gemm(1, 64, 10)
	bytes := 64*4 + 64                              // one row of f32 + the header
	msg := 10*time.Microsecond + ns(bytes*1000/256) // MsgCPU + bytes at 256 MB/s
	wire := ns(bytes*1000/256) + 5*time.Microsecond // serialization + latency
	expert := 2*gemm(1, 64, 128) + gemm(1, 128, 64)
	want := front + 2*msg + wire + expert + 2*msg + wire + head
	if r.ITL50 != want || r.ITL99 != want {
		t.Errorf("step %v (p50) %v (p99), want %v: front %v, 4 x message %v, 2 x wire %v, expert %v, head %v", r.ITL50, r.ITL99, want, front, msg, wire, expert, head)
	}
	if math.Abs(r.TokensPerS-1/want.Seconds()) > 1e-6 {
		t.Errorf("%v tokens/s, want %v", r.TokensPerS, 1/want.Seconds())
	}
	sp := r.Split
	if sp.Frontend != front+head || sp.Expert != expert || sp.Software != 4*msg || sp.Latency != 10*time.Microsecond || sp.NIC != 2*ns(bytes*1000/256) {
		t.Errorf("split %+v: want front end %v, expert %v, software %v, latency 10us, NIC %v", sp, front+head, expert, 4*msg, 2*ns(bytes*1000/256))
	}
	if sp.Total() != want || r.Exchange != want-front-head {
		t.Errorf("split total %v, exchange %v; want %v and %v", sp.Total(), r.Exchange, want, want-front-head)
	}
}

// wideShape has fat rows (hidden 8192) and next to no compute: its
// exchange is all bytes.
func wideShape() MoEShape {
	return MoEShape{Name: "wide", Layers: 2, Hidden: 8192, ExpertInter: 8, RoutedExperts: 16, TopK: 4, ElemBytes: 2,
		Attn: Attention{Heads: 1, KVHeads: 1, HeadDim: 8}, Vocab: 8}
}

func fastCal() *Calibration {
	return &Calibration{GEMM: []GEMMPoint{{M: 1, K: 64, N: 64, DType: "f32", Threads: 1, FLOPS: 1e15}, {M: 1, K: 64, N: 64, DType: "bf16", Threads: 1, FLOPS: 1e15}},
		MsgCPU: time.Microsecond, MsgBytesPerS: 1e12}
}

// TestServeNICBound: fat rows over 1 Gbit/s links are NIC-bound (named
// so), and doubling the rate nearly doubles tokens/s.
func TestServeNICBound(t *testing.T) {
	run := func(bitsPerS float64) *ServeResult {
		c := Cluster{Workers: 4, Frontends: 1, Cores: 8, MemoryBytes: 1 << 40, Rate: bitsPerS / 8, Latency: 10 * time.Microsecond, Oversubscription: 1, HostsPerLeaf: 32}
		r, err := PredictServe(ServeConfig{Model: wideShape(), Cluster: c, Batch: 64, Steps: 4}, fastCal())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	slow, fast := run(1e9), run(2e9)
	if !strings.HasPrefix(slow.Bottleneck, "NIC") || fast.TokensPerS < 1.8*slow.TokensPerS {
		t.Errorf("1 Gbit/s: %.0f tokens/s (%s); 2 Gbit/s: %.0f tokens/s: want a NIC bottleneck and at least 1.8x", slow.TokensPerS, slow.Bottleneck, fast.TokensPerS)
	}
	// The front end's interface carries every row out and back: it is
	// the busiest (its sending and receiving overlap only in part).
	if slow.Util.Link < 0.5 || !strings.HasPrefix(slow.Util.BusiestLink, "f0") {
		t.Errorf("busiest link %s at %.2f: want the front end's, over half busy", slow.Util.BusiestLink, slow.Util.Link)
	}
	// Across an oversubscribed leaf-spine the same cluster is slower.
	c := Cluster{Workers: 4, Frontends: 1, Cores: 8, MemoryBytes: 1 << 40, Rate: 1e9 / 8, Latency: 10 * time.Microsecond, Oversubscription: 4, HostsPerLeaf: 1}
	r, err := PredictServe(ServeConfig{Model: wideShape(), Cluster: c, Batch: 64, Steps: 4}, fastCal())
	if err != nil {
		t.Fatal(err)
	}
	if r.TokensPerS > 0.3*slow.TokensPerS {
		t.Errorf("every host on its own leaf, 4:1 oversubscribed: %.0f tokens/s, want about a quarter of %.0f", r.TokensPerS, slow.TokensPerS)
	}
}

// skewShape has heavy experts on fast links: expert compute decides.
func skewShape() MoEShape {
	return MoEShape{Name: "skew", Layers: 2, Hidden: 256, ExpertInter: 4096, RoutedExperts: 16, TopK: 2, ElemBytes: 2,
		Attn: Attention{Heads: 1, KVHeads: 1, HeadDim: 8}, Vocab: 8}
}

// TestServeSkew: a Zipf skew lowers tokens/s (the hottest worker's
// GEMMs decide), hot replicas with the rows split over the copies
// (EPLB's dispatch) win most of it back, and with the real client's
// choice (an expert's rows of a call to one copy) they win back less.
func TestServeSkew(t *testing.T) {
	cal := &Calibration{GEMM: []GEMMPoint{{M: 1, K: 256, N: 4096, DType: "bf16", Threads: 1, FLOPS: 1e10}, {M: 1, K: 256, N: 4096, DType: "f32", Threads: 1, FLOPS: 1e10}},
		MsgCPU: time.Microsecond, MsgBytesPerS: 1e12}
	c := Cluster{Workers: 8, Frontends: 4, Cores: 4, MemoryBytes: 1 << 40, Rate: 100e9 / 8, Latency: 10 * time.Microsecond, Oversubscription: 1, HostsPerLeaf: 32}
	m := skewShape()
	run := func(s float64, hot int, choice ReplicaChoice) *ServeResult {
		r, err := PredictServe(ServeConfig{Model: m, Cluster: c, Batch: 64, Popularity: ZipfPopularity(m, s, 1),
			Place: PlaceConfig{HotReplicas: hot}, Choice: choice, Steps: 10}, cal)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	uniform, skewed := run(0, 0, ChoiceClient), run(1.5, 0, ChoiceClient)
	cured, client := run(1.5, 4, ChoiceSplit), run(1.5, 4, ChoiceClient)
	t.Logf("tokens/s: uniform %.0f, Zipf 1.5 %.0f, + 4 hot replicas per layer: rows split %.0f, client's choice %.0f",
		uniform.TokensPerS, skewed.TokensPerS, cured.TokensPerS, client.TokensPerS)
	if skewed.TokensPerS > 0.75*uniform.TokensPerS || !strings.HasPrefix(skewed.Bottleneck, "expert compute") {
		t.Errorf("Zipf 1.5: %.0f tokens/s (%s), want below 75%% of uniform's %.0f and expert-bound", skewed.TokensPerS, skewed.Bottleneck, uniform.TokensPerS)
	}
	if cured.TokensPerS < skewed.TokensPerS+0.5*(uniform.TokensPerS-skewed.TokensPerS) {
		t.Errorf("hot replicas, rows split: %.0f tokens/s, want at least half of the loss (%.0f -> %.0f) back", cured.TokensPerS, uniform.TokensPerS, skewed.TokensPerS)
	}
	if client.TokensPerS >= cured.TokensPerS {
		t.Errorf("the client's choice of copies %.0f tokens/s, rows split %.0f: want the split ahead", client.TokensPerS, cured.TokensPerS)
	}
	// Hot copies go to the hottest experts.
	p := cured.Placement
	pop := ZipfPopularity(m, 1.5, 1)
	hot := argmax(pop[0])
	if p.HotCopies != 8 || len(p.Owners[0][hot]) < 2 {
		t.Errorf("%d hot copies; the hottest expert of layer 0 has %d copies: want 8 and more than 1", p.HotCopies, len(p.Owners[0][hot]))
	}
}

// TestPlaceServe: DeepSeek-V3 in bf16 on 8 hosts of 768 GiB with 2
// copies fits (the real placement, balanced), and on 4 of 512 GiB (2.06
// TB of budget for 2.62 TB of copies) it does not, with an error naming
// the shortfall.
func TestPlaceServe(t *testing.T) {
	m := DeepSeekV3()
	c, err := ClusterSpec{Workers: 8, Memory: "768GiB"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	p, err := PlaceServe(m, c, nil, PlaceConfig{Replicas: 2, ReserveBytes: 32 << 30})
	if err != nil {
		t.Fatal(err)
	}
	all := 2 * m.Params().RoutedExperts * 2
	lo, hi := p.Bytes[0], p.Bytes[0]
	var sum int64
	for _, b := range p.Bytes {
		lo, hi, sum = min(lo, b), max(hi, b), sum+b
	}
	if sum != all || hi-lo > m.ExpertBytes() || hi > p.Budget {
		t.Errorf("8 workers hold %d bytes (%d..%d each, budget %d), want all %d copies' bytes, balanced within one expert", sum, lo, hi, p.Budget, all)
	}
	c.Workers, c.MemoryBytes = 4, 512<<30
	_, err = PlaceServe(m, c, nil, PlaceConfig{Replicas: 2, ReserveBytes: 32 << 30})
	if !errors.Is(err, placement.ErrInsufficientMemory) || !strings.Contains(err.Error(), "short") {
		t.Fatalf("4 workers: %v, want ErrInsufficientMemory naming the shortfall", err)
	}
	t.Log(err)
}

// TestRecovery: when a worker of a 2-copy placement dies, the real
// placement re-places its copies (at least as many move as it held, none
// lost), and the recovery takes the detection plus the busiest
// receiver's load.
func TestRecovery(t *testing.T) {
	m := Mixtral8x22B()
	c, err := ClusterSpec{Workers: 16, Memory: "256GiB"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	pc := PlaceConfig{Replicas: 2}
	p, err := PlaceServe(m, c, nil, pc)
	if err != nil {
		t.Fatal(err)
	}
	r, err := PredictRecovery(m, c, p, pc, RecoveryConfig{LoadRate: 2e9, Dead: 3})
	if err != nil {
		t.Fatal(err)
	}
	held := p.Copies[3]
	if r.Dead != "w0003" || r.Moved < held || r.LostExperts != 0 || r.Detect != 2*time.Second {
		t.Errorf("%+v: want w0003's %d copies (at least) moved, none lost, detection 2 s", r, held)
	}
	if want := r.Detect + rateBytes(r.MaxBytes, 2e9); r.Total != want || r.MaxBytes != int64(r.MaxCopies)*m.ExpertBytes() {
		t.Errorf("total %v, want %v (detection + %d bytes at 2 GB/s)", r.Total, want, r.MaxBytes)
	}
	one, err := PlaceServe(m, c, nil, PlaceConfig{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	r1, err := PredictRecovery(m, c, one, PlaceConfig{Replicas: 1}, RecoveryConfig{LoadRate: 2e9, Dead: -1, SourceRate: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	if r1.LostExperts != one.Copies[0] || !strings.Contains(r1.Bottleneck, "shared model store") {
		t.Errorf("R=1: %d experts lost (worker held %d), bottleneck %q: want all its experts lost and the 1 GB/s store named", r1.LostExperts, one.Copies[0], r1.Bottleneck)
	}
}

func TestPredictServeDeterministic(t *testing.T) {
	c, err := ClusterSpec{Workers: 4, Frontends: 2, Cores: 8, Memory: "64GiB"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	cfg := ServeConfig{Model: smallShape(), Cluster: c, Batch: 8, Context: 64, Popularity: ZipfPopularity(smallShape(), 1, 2), Steps: 4}
	a, err := PredictServe(cfg, AssumedCalibration())
	if err != nil {
		t.Fatal(err)
	}
	b, err := PredictServe(cfg, AssumedCalibration())
	if err != nil {
		t.Fatal(err)
	}
	if a.TokensPerS != b.TokensPerS || a.ITL99 != b.ITL99 || a.Split != b.Split {
		t.Errorf("two runs of one config differ: %+v, %+v", a, b)
	}
}

// serveXeonFile is the Xeon run the serving model was built against.
const serveXeonFile = "../../bench/results/serve-xeon.txt"

func readServeBench(t *testing.T, path string) *ServeBench {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := ReadServeBench(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadServeBench(t *testing.T) {
	b := readServeBench(t, serveXeonFile)
	if b.Cores != 2 || b.Model.Layers != 8 || b.Model.Hidden != 1024 || b.Model.RoutedExperts != 32 || b.Model.TopK != 4 || b.Model.ExpertInter != 2816 {
		t.Fatalf("cores %d, model %+v", b.Cores, b.Model)
	}
	if got := b.Model.ExpertBytes(); got != 17301504 {
		t.Errorf("expert bytes %d, want the file's expert_bytes=17301504", got)
	}
	var netns []ServeBenchRow
	for _, r := range b.Rows {
		if r.Netns {
			netns = append(netns, r)
		}
	}
	if len(netns) < 7 {
		t.Fatalf("%d netns rows, want at least 7", len(netns))
	}
	r := netns[0]
	if r.Config != "netns 4 hosts 1gbit" || r.Clients != 1 || r.Workers != 4 || r.Nominal != 1e9 || r.TokensPerS != 23.05 ||
		r.Exchange != 4709*time.Microsecond || r.Rows != 5.2 || r.Owners != 3662*time.Microsecond || r.RTT != 11700*time.Nanosecond {
		t.Errorf("first netns row %+v", r)
	}
	failed := 0
	for _, r := range netns {
		if r.Failed > 0 {
			failed++
			if !r.OneCoreEach || r.Clients != 1 {
				t.Errorf("row %+v failed; want only the stalled 2-host 1-client run", r)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d rows with failed requests, want 1", failed)
	}
}

// TestPredictServeBench predicts the committed emulated serving runs
// (bench/results/serve.txt) with ServeBenchCalibration (this file's
// in-process rows correcting AssumedCalibration). What it meets, and so
// asserts, on the rows whose requests all succeeded: the mean MoE-layer
// exchange within 25% (predicted -1% to -20%), tokens/s above the
// measured by at most 35% (+10% to +33%); it predicts every row too fast
// (docs/scale/serving.md: the front end and the exchange slow down in
// the emulated cluster's shared cores more than the model says).
func TestPredictServeBench(t *testing.T) {
	b := readServeBench(t, serveXeonFile)
	checks, err := PredictServeBench(b, ServeBenchCalibration(b))
	if err != nil {
		t.Fatal(err)
	}
	judged := 0
	for _, c := range checks {
		mark := ""
		if c.Judged {
			judged++
			if e := c.ExchangeErr(); math.Abs(e) > 0.25 {
				t.Errorf("%s, %d clients: exchange predicted %v, measured %v: %+.0f%%, want within 25%%", c.Row.Config, c.Row.Clients, c.Predicted.Exchange, c.Row.Exchange, 100*e)
			}
			if e := c.TokensErr(); e < 0 || e > 0.35 {
				t.Errorf("%s, %d clients: %.2f tokens/s predicted, %.2f measured: %+.0f%%, want 0 to +35%%", c.Row.Config, c.Row.Clients, c.Predicted.TokensPerS, c.Row.TokensPerS, 100*e)
			}
		} else {
			mark = "  (not judged: " + c.Note + ")"
		}
		t.Logf("%-34s %2d clients: tokens/s %6.2f predicted %6.2f measured (%+4.0f%%); exchange %6.2f / %6.2f ms (%+4.0f%%)%s",
			c.Row.Config, c.Row.Clients, c.Predicted.TokensPerS, c.Row.TokensPerS, 100*c.TokensErr(),
			float64(c.Predicted.Exchange)/1e6, float64(c.Row.Exchange)/1e6, 100*c.ExchangeErr(), mark)
	}
	if judged < 6 {
		t.Errorf("%d rows judged, want 6", judged)
	}
	// The calibration from the file matters: with AssumedCalibration (no
	// in-process correction) the 16-client rows miss tokens/s by more
	// than 40%.
	assumed, err := PredictServeBench(b, AssumedCalibration())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range assumed {
		if c.Judged && c.Row.Clients == 16 && c.TokensErr() < 0.4 {
			t.Errorf("%s, 16 clients, assumed calibration: %+.0f%%: want the uncorrected calibration to miss by over 40%%", c.Row.Config, 100*c.TokensErr())
		}
	}
}

// TestServeDeepSeekBatch1: one sequence per front end is front-end
// bound: every step streams the front end's 34.2 GB of dense weights
// (114 ms at 300 GB/s), so the step is at least that, and the NIC rate
// hardly matters.
func TestServeDeepSeekBatch1(t *testing.T) {
	m := DeepSeekV3()
	run := func(nic string) *ServeResult {
		c, err := ClusterSpec{Workers: 8, Frontends: 2, Cores: 64, Memory: "768GiB", NIC: nic}.Resolve()
		if err != nil {
			t.Fatal(err)
		}
		r, err := PredictServe(ServeConfig{Model: m, Cluster: c, Context: 1024, MemBandwidth: 300e9, Steps: 2,
			Place: PlaceConfig{Replicas: 2, ReserveBytes: 32 << 30}}, AssumedCalibration())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	slow, fast := run("25gbit"), run("100gbit")
	floor := rateBytes(m.FrontendBytes(), 300e9)
	if slow.ITL50 < floor || !strings.HasPrefix(slow.Bottleneck, "front-end compute") {
		t.Errorf("ITL %v (floor %v), bottleneck %q: want front-end bound", slow.ITL50, floor, slow.Bottleneck)
	}
	if fast.TokensPerS > 1.1*slow.TokensPerS {
		t.Errorf("100 GbE %.1f tokens/s, 25 GbE %.1f: want within 10%%", fast.TokensPerS, slow.TokensPerS)
	}
}

// serve4HostsFile is an emulated serving run of 4 worker hosts in which
// every process is one Go thread ("1 thread each"), with each
// configuration's link calibrated in the same run (scripts/bench-serve.sh
// --only in-process,netns, BENCH_SERVE_NETNS=4hosts1thread
// BENCH_SERVE_WINDOWS=2), on the AVX-512 VM of 2026-12-06 02:57 UTC; its
// calibration predates the idle round trip (no wake in the model).
const serve4HostsFile = "../../bench/results/serve-4hosts.txt"

// serve4HostsRuns are the same benchmark on the AVX2 VM, with the idle
// exchange round trip calibrated (Calibration.LinkIdleExchangeRTT): every
// run since the serial model, 2026-12-06 12:26, 12:35, 12:58 and 14:26 UTC
// (the last two by scripts/simulate-validate-serve.sh).
var serve4HostsRuns = []string{
	"../../bench/results/serve-4hosts-avx2-4.txt",
	"../../bench/results/serve-4hosts-avx2-5.txt",
	"../../bench/results/serve-4hosts-avx2-6.txt",
	"../../bench/results/serve-4hosts-avx2-7.txt",
}

// TestServeBenchLegacyExpert: a file without an expert curve
// (serve4HostsRuns) takes the expert from one GEMM point of the 16-client
// row, at the same throughput for any rows (an expert of 12 or 32 rows
// once found the attention points nearer), and that throughput counts
// the rows a layer's experts had (2.7 an expert, not 3): the touched
// experts at their mean rows take the row's experts time a layer.
func TestServeBenchLegacyExpert(t *testing.T) {
	b := readServeBench(t, serve4HostsRuns[0])
	if len(b.Expert) != 0 || b.Routing != nil {
		t.Fatalf("%s: want a file without an expert curve or routing", serve4HostsRuns[0])
	}
	cal := ServeBenchCalibration(b)
	m := b.Model
	dt := "bf16"
	if m.ElemBytes == 4 {
		dt = "f32"
	}
	per := func(rows int) float64 {
		d, err := cal.GEMMTime(rows, m.Hidden, m.ExpertInter, dt, 1)
		if err != nil {
			t.Fatal(err)
		}
		return d.Seconds() / float64(rows)
	}
	for _, rows := range []int{1, 3, 7, 12, 16, 32, 100, 256} {
		if a, b := per(rows), per(1); math.Abs(a/b-1) > 1e-4 { // GEMMTime rounds to the ns
			t.Errorf("expert of %d rows: %.3g s a row against %.3g at one row: want the one point's throughput", rows, a, b)
		}
	}
	// The 16-client row's experts time a layer over the cores, against
	// the experts a step touches at their mean rows (uniform routing, as
	// ServeBenchCalibration takes it for a file without routing).
	var row16 *ServeBenchRow
	for _, r := range inProcessMeans(b.Rows, false) {
		if r.Clients == 16 {
			row16 = &r
		}
	}
	if row16 == nil {
		t.Fatal("no in-process 16-client row")
	}
	E, K, B := float64(m.RoutedExperts), float64(m.TopK), 16.0
	prompts := B / ServeBenchOutput
	tokens := B - prompts + prompts*ServeBenchPrompt
	experts := E * (1 - math.Pow(1-K/E, tokens))
	rows := tokens * K / experts
	want := row16.Experts.Seconds() * B / float64(m.Layers) * float64(b.Cores)
	got := experts * rows * 3 * per(1) // gate, up and down of rows rows each
	t.Logf("%.2f experts of %.2f rows a layer: %.3f ms of one thread, the row's experts %.3f ms", experts, rows, got*1e3, want*1e3)
	if math.Abs(got/want-1) > 1e-4 {
		t.Errorf("the experts a layer take %.4f ms of one thread, the row's %.4f: want them equal", got*1e3, want*1e3)
	}
}

// TestPredictServe4Hosts predicts the 4-host rows of each of
// serve4HostsRuns from the file's own calibration (the mean of its
// in-process windows, before and after the emulated hosts, for the
// compute; each configuration's link calibration for the messages' core
// time and the idle round trip's wake), each row the mean of its two
// windows (BENCH_SERVE_WINDOWS=2). The target is tokens/s within
// 15% on every row where each emulated host is a process of one thread,
// and that is what this asserts on every run (+1%, +5%, +0%, +8%; -5%,
// -6%, +11%, -3%; +13%, +2%, +4%, +0%; +7%, +0%, +10%, +7%). The earlier
// AVX-512 run, serve4HostsFile, gives +7%, +8%, -1%, +6% under the same
// model and is logged, not asserted
// (docs/scale/serving.md has every run). The MoE layer's exchange is
// logged. Models wrong on purpose must miss a row by more than 15%:
// hosts with cores of their own (no shared pool), and the uncorrected
// AssumedCalibration. Rows of other configurations in the files are
// logged.
func TestPredictServe4Hosts(t *testing.T) {
	for _, f := range append([]string{serve4HostsFile}, serve4HostsRuns...) {
		t.Run(filepath.Base(f), func(t *testing.T) { predictServe4Hosts(t, f, f != serve4HostsFile) })
	}
}

// TestPredictLiveServe does the same on a run made just before
// (scripts/simulate-validate-serve.sh sets SWITCHYARD_SERVE_RUN). A run
// with a failed request, or no completion, in a judged row is reported,
// not judged.
func TestPredictLiveServe(t *testing.T) {
	p := os.Getenv("SWITCHYARD_SERVE_RUN")
	if p == "" {
		t.Skip("SWITCHYARD_SERVE_RUN is not set: scripts/simulate-validate-serve.sh runs this on a fresh emulated run (root, about 13 minutes a run; a stage of scripts/test.sh, docs/scale/serving.md)")
	}
	b := readServeBench(t, p)
	// A run that started on a busy machine measures its load, not the
	// model (scripts/bench-serve.sh's BENCH_SERVE_QUIET_WAIT waits up to
	// 2 minutes for it to drop first), as the other live checks judge.
	if len(b.Rows) > 0 && b.Rows[0].Load >= busyLoad {
		t.Skipf("the run started at a load average of %.2f (>= %.1f): not judged", b.Rows[0].Load, busyLoad)
	}
	for _, row := range MeanWindows(b.Rows) {
		if row.Netns && row.OneThreadEach && (row.Failed > 0 || row.OK == 0) {
			t.Skipf("%s, %d clients: %d requests failed, %d completed: not judged", row.Config, row.Clients, row.Failed, row.OK)
		}
	}
	predictServe4Hosts(t, p, true)
}

// serveVariant is a model a 4-host run is predicted with: the model, or
// one wrong on purpose.
type serveVariant struct {
	name string
	cal  *Calibration
	mod  func(*ServeConfig)
	want bool // every row within 15%
}

// serveVariants are the model (b's own calibration) and the models wrong
// on purpose: hosts with cores of their own, the uncorrected
// AssumedCalibration.
func serveVariants(b *ServeBench) []serveVariant {
	cal := ServeBenchCalibration(b)
	return []serveVariant{
		{"the model", cal, nil, true},
		{"hosts with cores of their own", cal, func(c *ServeConfig) { c.SharedCores = 0; c.Cluster.Cores = b.Cores }, false},
		{"AssumedCalibration, uncorrected", AssumedCalibration(), nil, false},
	}
}

// predictRows predicts every emulated row of b (each the mean of its
// windows) with v and each row's own link calibration, logging each.
func predictRows(t *testing.T, b *ServeBench, v serveVariant) []ServeCheck {
	t.Helper()
	for _, row := range MeanWindows(b.Rows) {
		if row.Netns && (row.Link == nil || row.Link.LinkMsgCPU <= 0) {
			t.Fatalf("%s, %d clients: no link calibration in the file", row.Config, row.Clients)
		}
	}
	out, err := predictServeBench(b, v.cal, v.mod)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range out {
		p, row := c.Predicted, c.Row
		t.Logf("%-32s %-40s %2d clients: tokens/s %6.2f predicted %6.2f measured (%+5.1f%%); exchange %6.2f / %6.2f ms (%+5.1f%%)",
			v.name, row.Config, row.Clients, p.TokensPerS, row.TokensPerS, 100*c.TokensErr(),
			float64(p.Exchange)/1e6, float64(row.Exchange)/1e6, 100*c.ExchangeErr())
	}
	return out
}

// predictServe4Hosts checks one file as TestPredictServe4Hosts says;
// assert false only logs the model's rows.
func predictServe4Hosts(t *testing.T, file string, assert bool) {
	b := readServeBench(t, file)
	for _, v := range serveVariants(b) {
		rows, worst := 0, 0.0
		for _, c := range predictRows(t, b, v) {
			if row := c.Row; !row.OneThreadEach || row.Failed > 0 || row.OK == 0 {
				continue
			}
			rows++
			worst = max(worst, math.Abs(c.TokensErr()))
		}
		if rows != 4 {
			t.Fatalf("%d judged rows of one thread each, want 4 (1 and 16 clients at 1 and 10 Gbit/s)", rows)
		}
		if !assert {
			t.Logf("%s: worst tokens/s error %.1f%% (not asserted)", v.name, 100*worst)
			continue
		}
		if within := worst <= 0.15; within != v.want {
			t.Errorf("%s: worst tokens/s error %.1f%%: within 15%% %v, want %v", v.name, 100*worst, within, v.want)
		}
	}
}

// With the in-process rows measured in several windows (before and after
// the emulated hosts), the calibration comes from their mean for each
// client count, whichever order they come in: the same as a file holding
// the mean rows alone, and not the same as one holding either window.
func TestServeBenchCalibrationMeanWindows(t *testing.T) {
	b := readServeBench(t, serve4HostsFile)
	var in, rest []ServeBenchRow
	for _, r := range b.Rows {
		if !r.Netns && r.Workers == 0 {
			in = append(in, r)
		} else {
			rest = append(rest, r)
		}
	}
	if len(in) == 0 {
		t.Fatalf("no in-process rows in %s", serve4HostsFile)
	}
	in = inProcessMeans(in, false) // one row a client count
	slow := make([]ServeBenchRow, len(in))
	mid := make([]ServeBenchRow, len(in))
	for i, r := range in {
		sl := r
		sl.Config = "in-process, again"
		sl.TokensPerS *= 0.8
		sl.Experts = r.Experts * 5 / 4
		sl.Attention = r.Attention * 5 / 4
		slow[i] = sl
		m := r
		m.TokensPerS = (r.TokensPerS + sl.TokensPerS) / 2
		m.Experts = (r.Experts + sl.Experts) / 2
		m.Attention = (r.Attention + sl.Attention) / 2
		mid[i] = m
	}
	with := func(rows ...[]ServeBenchRow) *Calibration {
		c := *b
		c.Rows = nil
		for _, r := range rows {
			c.Rows = append(c.Rows, r...)
		}
		return ServeBenchCalibration(&c)
	}
	want := with(mid, rest)
	for name, got := range map[string]*Calibration{"fast first": with(in, rest, slow), "slow first": with(slow, rest, in)} {
		if !reflect.DeepEqual(got.GEMM, want.GEMM) || got.MemBandwidth != want.MemBandwidth {
			t.Errorf("%s: GEMM %v, bandwidth %g; want the mean window's %v, %g", name, got.GEMM, got.MemBandwidth, want.GEMM, want.MemBandwidth)
		}
	}
	for name, one := range map[string]*Calibration{"fast": with(in, rest), "slow": with(slow, rest)} {
		if reflect.DeepEqual(one.GEMM, want.GEMM) || one.MemBandwidth == want.MemBandwidth {
			t.Errorf("the %s window alone gives the mean's calibration: the test cannot tell them apart", name)
		}
	}
	// MeanWindows: two windows of one configuration become one row, the
	// mean of each, completions summed; other rows stay as they are.
	r1 := ServeBenchRow{Config: "netns 4 hosts 1gbit", Clients: 16, OK: 10, TokensPerS: 60, Exchange: 20 * time.Millisecond}
	r2 := r1
	r2.OK, r2.TokensPerS, r2.Exchange = 12, 70, 30*time.Millisecond
	r3 := ServeBenchRow{Config: "netns 4 hosts 1gbit", Clients: 1, OK: 5, TokensPerS: 40}
	got := MeanWindows([]ServeBenchRow{r1, r3, r2})
	if len(got) != 2 || got[0].TokensPerS != 65 || got[0].OK != 22 || got[0].Exchange != 25*time.Millisecond || got[1] != r3 {
		t.Errorf("MeanWindows: %+v", got)
	}
}

// A configuration's "calibration:" line belongs to the rows after it; a
// failed calibration leaves the next rows without one; a malformed one is
// an error.
func TestReadServeBenchLink(t *testing.T) {
	head := "# cpu: AMD EPYC, 2 cores\n# model: x; mixtral-style, 8 layers, hidden 1024, 32 experts top-4, expert intermediate 2816, vocab 320, bf16\n"
	row := func(name string) string {
		return name + ", 1 client(s): 1 clients, 20.0 s: 15 completions ok, 0 failed, 0 wrong; 802 tokens, 40.10 tokens/s; TTFT p50/p90/p99 1/2/3 ms (12 requests); ITL 22.0/27.0/45.9 ms; CPU busy 84%\n"
	}
	cal := `calibration: {"cpu":"x","cores":1,"when":"w","gemm":[{"M":1,"K":2,"N":3,"dtype":"f32","threads":1,"flops":1e9}],"mem_bandwidth":1e9,"msg_cpu_ns":1000,"msg_bytes_per_s":1e9,"exchange_rtt_ns":4000,"link_msg_cpu_ns":66000,"link_byte_cpu_ns":2,"link_exchange_rtt_ns":170000,"link_rtt_ns":40000}` + "\n"
	text := head + cal + row("netns 4 hosts 1gbit, 1 thread each") + "# link calibration failed: refused\n" + row("netns 4 hosts 10gbit, 1 thread each")
	b, err := ReadServeBench(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Rows) != 2 || b.Rows[0].Link == nil || b.Rows[0].Link.LinkMsgCPU != 66*time.Microsecond || b.Rows[1].Link != nil ||
		!b.Rows[0].OneThreadEach || !b.Rows[0].OneCoreEach {
		t.Errorf("rows %+v", b.Rows)
	}
	if _, err := ReadServeBench(strings.NewReader(head + "calibration: {\"cpu\":\n" + row("netns 4 hosts 1gbit"))); err == nil {
		t.Error("a malformed calibration line: no error")
	}
}

// The link's core time counts only where hosts share cores: on a shared
// pool more of it per message lowers tokens/s and raises the cores'
// message time; on hosts of their own the prediction is the same with or
// without it.
func TestServeLinkWork(t *testing.T) {
	c, err := ClusterSpec{Workers: 4, Frontends: 1, Cores: 1, Memory: "64GiB"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	cfg := ServeConfig{Model: smallShape(), Cluster: c, Batch: 8, Context: 64, Steps: 4, SharedCores: 2}
	run := func(cfg ServeConfig, msg time.Duration) *ServeResult {
		cal := AssumedCalibration()
		cal.LinkMsgCPU, cal.LinkByteCPU, cal.LinkExchangeRTT, cal.LinkRTT = msg, 2, 200*time.Microsecond, 40*time.Microsecond
		r, err := PredictServe(cfg, cal)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := run(cfg, 50*time.Microsecond), run(cfg, 400*time.Microsecond)
	if b.TokensPerS >= a.TokensPerS || b.Util.Software <= a.Util.Software {
		t.Errorf("shared pool: %.1f tokens/s (software %.3f) with 50 us a side, %.1f (%.3f) with 400", a.TokensPerS, a.Util.Software, b.TokensPerS, b.Util.Software)
	}
	own := cfg
	own.SharedCores = 0
	plain, err := PredictServe(own, AssumedCalibration())
	if err != nil {
		t.Fatal(err)
	}
	if r := run(own, 400*time.Microsecond); r.TokensPerS != plain.TokensPerS || r.Split != plain.Split {
		t.Errorf("hosts of their own: %+v with a link calibration, %+v without", r, plain)
	}
}

// TestServeWake: in the serial model (hosts on a shared pool, one thread a
// process) a message that finds its receiver idle waits half the excess
// of LinkIdleExchangeRTT over LinkExchangeRTT. At one client every MoE
// layer wakes its owners and then the front end for their answers, so the
// token takes at least two wakes a layer longer and at most one per
// message; with threads of their own (not serial) or hosts of their own
// the idle round trip changes nothing.
func TestServeWake(t *testing.T) {
	c, err := ClusterSpec{Workers: 4, Frontends: 1, Cores: 1, Memory: "64GiB"}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	m := smallShape()
	cfg := ServeConfig{Model: m, Cluster: c, Batch: 1, Context: 64, Steps: 6, SharedCores: 2, FrontendThreads: 1, WorkerThreads: 1}
	const wake = 300 * time.Microsecond
	run := func(cfg ServeConfig, idle time.Duration) *ServeResult {
		cal := AssumedCalibration()
		cal.LinkMsgCPU, cal.LinkByteCPU, cal.LinkExchangeRTT, cal.LinkRTT = 50*time.Microsecond, 2, 200*time.Microsecond, 40*time.Microsecond
		cal.LinkIdleExchangeRTT = cal.LinkExchangeRTT + idle
		r, err := PredictServe(cfg, cal)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := run(cfg, 0), run(cfg, 2*wake)
	perToken := func(r *ServeResult) time.Duration { return time.Duration(float64(time.Second) / r.TokensPerS) }
	moe := m.Layers - m.DenseLayers
	extra := perToken(b) - perToken(a)
	lo, hi := time.Duration(2*moe)*wake*9/10, time.Duration((1+m.TopK)*moe)*wake
	t.Logf("1 client: %.1f tokens/s, %.1f with a %v wake: %v more a token (want %v..%v)", a.TokensPerS, b.TokensPerS, wake, extra, lo, hi)
	if extra < lo || extra > hi {
		t.Errorf("a %v wake made a token %v longer, want %v..%v", wake, extra, lo, hi)
	}
	for name, other := range map[string]ServeConfig{
		"two threads a process": func() ServeConfig { o := cfg; o.FrontendThreads, o.WorkerThreads = 2, 2; return o }(),
		"hosts of their own":    func() ServeConfig { o := cfg; o.SharedCores = 0; return o }(),
	} {
		if x, y := run(other, 0), run(other, 2*wake); x.TokensPerS != y.TokensPerS {
			t.Errorf("%s: %.3f tokens/s without a wake, %.3f with", name, x.TokensPerS, y.TokensPerS)
		}
	}
}

// TestServeBenchCPU: the "cores:" lines bench/serve writes since
// 2026-12-07 are read into each window's row, averaged over a
// configuration's windows (dropped where a window lacks them), and turned
// into core time per token beside the model's; files from before have
// none.
func TestServeBenchCPU(t *testing.T) {
	const file = "../../bench/results/serve-4hosts-zen5-routed-6.txt"
	old := readServeBench(t, file)
	for _, r := range old.Rows {
		if r.CPU != nil {
			t.Fatalf("%s, %d clients: a CPU split in a file that has none", r.Config, r.Clients)
		}
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// After each netns 1 Gbit/s row's per-token line, a split: the
	// 16-client windows' workers at 1.40 and 1.60 cores; the 10 Gbit/s
	// rows' second 16-client window without one.
	var out []string
	seen := map[string]int{}
	for _, l := range strings.Split(string(raw), "\n") {
		out = append(out, l)
		cfg, _, ok := strings.Cut(l, ": per generated token (ms):")
		if !ok || !strings.HasPrefix(cfg, "netns") {
			continue
		}
		seen[cfg]++
		workers := 0.50 + 0.05*float64(seen[cfg])
		if strings.HasSuffix(cfg, "16 client(s)") {
			workers = 1.2 + 0.2*float64(seen[cfg])
		}
		if strings.Contains(cfg, "10gbit") && strings.HasSuffix(cfg, "16 client(s)") && seen[cfg] == 2 {
			continue
		}
		out = append(out, fmt.Sprintf("%s: cores: front end 0.200, workers %.3f, coordinator 0.020, client 0.010, other 0.100; machine user 1.500 system 0.200 irq 0.030 steal 0.010 of 2", cfg, workers))
	}
	b, err := ReadServeBench(strings.NewReader(strings.Join(out, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range b.Rows {
		if r.Netns && r.CPU != nil {
			n++
		}
	}
	if n != 7 {
		t.Fatalf("%d netns windows with a CPU split, want 7", n)
	}
	checks, err := PredictServeBench(b, ServeBenchCalibration(b))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*ServeBenchCPU{}
	for _, c := range checks {
		got[fmt.Sprintf("%s/%d", c.Row.Config, c.Row.Clients)] = c.Row.CPU
		if c.Cores <= 0 || c.Cores > 2 {
			t.Errorf("%s, %d clients: the model's busy cores %.3f, want in (0, 2]", c.Row.Config, c.Row.Clients, c.Cores)
		}
		pred, cluster, machine, ok := c.CoreMs()
		if c.Row.CPU == nil {
			if ok {
				t.Errorf("%s, %d clients: core time without a split", c.Row.Config, c.Row.Clients)
			}
			continue
		}
		if !ok || math.Abs(pred-1e3*c.Cores/c.Predicted.TokensPerS) > 1e-9 ||
			math.Abs(cluster-1e3*c.Row.CPU.Cluster()/c.Row.TokensPerS) > 1e-9 || math.Abs(machine-1e3*1.73/c.Row.TokensPerS) > 1e-9 {
			t.Errorf("%s, %d clients: CoreMs = %v, %v, %v, %v", c.Row.Config, c.Row.Clients, pred, cluster, machine, ok)
		}
	}
	if c := got["netns 4 hosts 1gbit, 1 thread each/16"]; c == nil || math.Abs(c.Workers-1.5) > 1e-9 || math.Abs(c.Frontend-0.2) > 1e-9 || math.Abs(c.Steal-0.01) > 1e-9 {
		t.Errorf("1 Gbit/s 16 clients: %+v, want the windows' mean (workers 1.5)", c)
	}
	if c := got["netns 4 hosts 1gbit, 1 thread each/1"]; c == nil || math.Abs(c.Workers-0.575) > 1e-9 {
		t.Errorf("1 Gbit/s 1 client: %+v, want workers 0.575", c)
	}
	if c := got["netns 4 hosts 10gbit, 1 thread each/16"]; c != nil {
		t.Errorf("10 Gbit/s 16 clients: %+v, want none (a window without the split)", c)
	}
	// The mean must not have written into the windows' own rows.
	for _, r := range b.Rows {
		if r.CPU != nil && r.Clients == 16 && strings.Contains(r.Config, "1gbit") && r.CPU.Workers != 1.4 && r.CPU.Workers != 1.6 {
			t.Errorf("a 16-client window's split changed: %+v", r.CPU)
		}
	}
}

// TestServeBenchCPURun reads the first run that recorded its CPU split
// (scripts/simulate-validate-serve.sh, Zen 5 VM, 2026-12-07 19:26-19:35
// UTC): every window has one, the in-process front end took nearly both
// cores, the emulated hosts' processes the most of the busy machine, and
// the model's core time a token is within a third of the processes'.
func TestServeBenchCPURun(t *testing.T) {
	b := readServeBench(t, "../../bench/results/serve-4hosts-zen5-routed-7.txt")
	for _, r := range b.Rows {
		c := r.CPU
		if c == nil {
			t.Fatalf("%s, %d clients: no CPU split", r.Config, r.Clients)
		}
		if busy := c.Busy() + c.Steal; busy <= 0 || busy > float64(b.Cores)+0.01 {
			t.Errorf("%s, %d clients: machine busy %.3f of %d cores", r.Config, r.Clients, busy, b.Cores)
		}
		switch {
		case !r.Netns && c.Frontend < 1.5:
			t.Errorf("%s, %d clients: the in-process front end took %.3f cores, want most of both", r.Config, r.Clients, c.Frontend)
		case r.Netns && (c.Workers <= c.Frontend || c.Cluster() < 0.8*c.Busy() || c.Coordinator <= 0):
			t.Errorf("%s, %d clients: %+v: want the workers above the front end, the two most of the machine, the coordinator counted", r.Config, r.Clients, c)
		}
	}
	checks, err := PredictServeBench(b, ServeBenchCalibration(b))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		pred, cluster, _, ok := c.CoreMs()
		if !ok || pred < 0.67*cluster || pred > 1.5*cluster {
			t.Errorf("%s, %d clients: core ms a token %.2f predicted, %.2f measured (%v)", c.Row.Config, c.Row.Clients, pred, cluster, ok)
		}
		// The roles' core time is the shared pool's, split by host.
		u := c.Predicted.Util
		if u.FrontendCores <= 0 || u.WorkerCores <= u.FrontendCores || math.Abs(u.FrontendCores+u.WorkerCores-c.Cores) > 1e-6*c.Cores {
			t.Errorf("%s, %d clients: front end %.4f + workers %.4f cores, the pool %.4f", c.Row.Config, c.Row.Clients, u.FrontendCores, u.WorkerCores, c.Cores)
		}
	}
}

// FuzzReadServeBench: any input parses or fails with an error (never a
// panic); what parses has its header, rows, and non-negative CPU splits,
// and averages over its windows.
func FuzzReadServeBench(f *testing.F) {
	raw, err := os.ReadFile("../../bench/results/serve-4hosts-zen5-routed-7.txt")
	if err != nil {
		f.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	f.Add(strings.Join(lines[:min(len(lines), 30)], "\n"))
	f.Add("# cpu: X, 2 cores\n# model: mixtral-style, 2 layers, hidden 64, 4 experts top-2, expert intermediate 128, vocab 32, bf16\n" +
		"netns 4 hosts 1gbit, 1 thread each, 16 client(s): 16 clients, 20.0 s: 3 completions ok, 0 failed, 0 wrong; 10 tokens, 5.00 tokens/s; TTFT p50/p90/p99 1/2/3 ms (3 requests); ITL 1.0/2.0/3.0 ms; CPU busy 50%\n" +
		"netns 4 hosts 1gbit, 1 thread each, 16 client(s): cores: front end 0.2, workers 1.4, coordinator 0.02, client 0.01, other 0.1; machine user 1.5 system 0.2 irq 0.03 steal 0 of 2\n")
	f.Add("netns 4 hosts 1gbit, 16 client(s): cores: front end 1e9, workers ., coordinator 0, client 0, other 0; machine user 0 system 0 irq 0 steal 0 of 2\n")
	f.Fuzz(func(t *testing.T, in string) {
		b, err := ReadServeBench(strings.NewReader(in))
		if err != nil {
			return
		}
		if b.Cores <= 0 || b.Model.Layers <= 0 || len(b.Rows) == 0 {
			t.Fatalf("parsed without a header or rows: cores %d, layers %d, %d rows", b.Cores, b.Model.Layers, len(b.Rows))
		}
		for _, r := range b.Rows {
			if c := r.CPU; c != nil {
				for _, v := range []float64{c.Frontend, c.Workers, c.Coordinator, c.Client, c.Other, c.User, c.System, c.IRQ, c.Steal} {
					if v < 0 || math.IsNaN(v) {
						t.Fatalf("%s: CPU split %+v", r.Config, *c)
					}
				}
			}
		}
		if m := MeanWindows(b.Rows); len(m) > len(b.Rows) {
			t.Fatalf("%d means of %d rows", len(m), len(b.Rows))
		}
	})
}

// TestServeBenchOneThreadAttention: in-process rows run on one thread
// ("in-process, 1 thread each") give the front end's attention points at
// one thread, the other in-process rows points at the machine's cores; a
// one-thread front end then takes the one-thread rows' attention time,
// not the two-thread rows' as if the attention scaled linearly.
func TestServeBenchOneThreadAttention(t *testing.T) {
	raw, err := os.ReadFile("../../bench/results/serve-4hosts-zen5-routed-7.txt")
	if err != nil {
		t.Fatal(err)
	}
	// The "again" rows once more under the one-thread name, their
	// attention 1.4x (a scaling of 1.4x from one thread to two).
	var extra []string
	for _, l := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(l, "in-process, again, "); ok {
			if m := sbSplitRE.FindStringSubmatch(l); m != nil {
				v, _ := strconv.ParseFloat(m[4], 64)
				rest = strings.Replace(rest, "attention "+m[4], fmt.Sprintf("attention %.3f", 1.4*v), 1)
			}
			extra = append(extra, "in-process, 1 thread each, "+rest)
		}
	}
	if len(extra) == 0 {
		t.Fatal("no in-process rows")
	}
	plain := readServeBench(t, "../../bench/results/serve-4hosts-zen5-routed-7.txt")
	b, err := ReadServeBench(strings.NewReader(string(raw) + "\n" + strings.Join(extra, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	var one int
	for _, r := range b.Rows {
		if strings.HasPrefix(r.Config, "in-process, 1 thread each") {
			one++
			if !r.OneThreadEach || r.Netns || r.Workers != 0 || r.Attention <= 0 {
				t.Errorf("%s: %+v", r.Config, r)
			}
		}
	}
	if one != 4 { // 1 and 16 clients, two windows each
		t.Fatalf("%d one-thread rows parsed, want 4", one)
	}
	two := inProcessMeans(b.Rows, false)
	ones := inProcessMeans(b.Rows, true)
	if len(two) != 2 || len(ones) != 2 {
		t.Fatalf("means: %d two-thread, %d one-thread client counts", len(two), len(ones))
	}
	cal, calPlain := ServeBenchCalibration(b), ServeBenchCalibration(plain)
	dt, h := "bf16", b.Model.Hidden
	for i, tokens := range []int{1, 21} {
		t1, err := cal.GEMMTime(tokens, h, h, dt, 1)
		if err != nil {
			t.Fatal(err)
		}
		t2, _ := cal.GEMMTime(tokens, h, h, dt, b.Cores)
		p1, _ := calPlain.GEMMTime(tokens, h, h, dt, 1)
		p2, _ := calPlain.GEMMTime(tokens, h, h, dt, b.Cores)
		// The one-thread point over the two-thread one is the rows'
		// attention ratio (the mean of both two-thread configurations
		// against 1.4x the "again" rows').
		want := ones[i].Attention.Seconds() / two[i].Attention.Seconds()
		if got := t1.Seconds() / t2.Seconds(); math.Abs(got/want-1) > 0.01 {
			t.Errorf("%d rows: one thread / %d threads = %.3f, want %.3f", tokens, b.Cores, got, want)
		}
		// The two-thread point is the file's without one-thread rows; a
		// file without them scales it linearly to one thread.
		if math.Abs(t2.Seconds()/p2.Seconds()-1) > 1e-6 || math.Abs(p1.Seconds()/p2.Seconds()-float64(b.Cores)) > 1e-4 {
			t.Errorf("%d rows: %v at %d threads (%v without the one-thread rows), %v at one thread without them", tokens, t2, b.Cores, p2, p1)
		}
	}
	// The one-thread emulated rows' front end is charged less.
	withOne, err := PredictServeBench(b, cal)
	if err != nil {
		t.Fatal(err)
	}
	base, err := PredictServeBench(plain, calPlain)
	if err != nil {
		t.Fatal(err)
	}
	for i := range base {
		fe := func(c ServeCheck) float64 { return c.Predicted.Util.FrontendCores / c.Predicted.TokensPerS }
		if r := fe(withOne[i]) / fe(base[i]); r >= 0.95 || r < 0.5 {
			t.Errorf("%s, %d clients: the front end's core time a token x%.3f with one-thread attention points", base[i].Row.Config, base[i].Row.Clients, r)
		}
	}
}

// TestServeSharing: a sharing calibration (Calibration.ShareProduct,
// WakeWork) that agrees with the model's own cost of a product and
// measures no wake changes nothing; products measured dearer make the
// workers' and the front end's core time a token dearer by about as much
// (their compute; not their messages) and the tokens/s lower; a wake's
// core time is charged to the hosts.
func TestServeSharing(t *testing.T) {
	b := readServeBench(t, "../../bench/results/serve-4hosts-zen5-routed-7.txt")
	cal := ServeBenchCalibration(b)
	base, err := PredictServeBench(b, cal)
	if err != nil {
		t.Fatal(err)
	}
	cost, err := newServeCost(b.Model, cal, 0)
	if err != nil {
		t.Fatal(err)
	}
	ref3, err := cost.expert(3, 1) // the model's own product of 3 rows
	if err != nil {
		t.Fatal(err)
	}
	with := func(x float64, wake time.Duration) []ServeCheck {
		t.Helper()
		c := *b
		c.Rows = slices.Clone(b.Rows)
		for i, r := range c.Rows {
			if r.Link == nil {
				continue
			}
			l := *r.Link
			l.ShareProcs, l.ShareRows, l.ShareProduct, l.WakeWork = 4, 3, time.Duration(x*float64(ref3)), wake
			c.Rows[i].Link = &l
		}
		// The file's calibration, now with the sharing's mean.
		cs := ServeBenchCalibration(&c)
		if cs.ShareRows != 3 || cs.ShareProduct != time.Duration(x*float64(ref3)) || cs.WakeWork != wake {
			t.Fatalf("the file's sharing: %d rows, %v, wake %v", cs.ShareRows, cs.ShareProduct, cs.WakeWork)
		}
		checks, err := PredictServeBench(&c, cs)
		if err != nil {
			t.Fatal(err)
		}
		return checks
	}
	same := with(1, 0)
	dear := with(1.25, 0)
	woken := with(1, 100*time.Microsecond)
	worker := func(c ServeCheck) float64 { return c.Predicted.Util.WorkerCores / c.Predicted.TokensPerS }
	fe := func(c ServeCheck) float64 { return c.Predicted.Util.FrontendCores / c.Predicted.TokensPerS }
	for i, c := range base {
		if r := fe(dear[i]) / fe(c); r < 1.10 || r > 1.25 {
			t.Errorf("%s, %d clients: compute 25%% dearer made the front end's core time a token x%.3f", c.Row.Config, c.Row.Clients, r)
		}
		if d := math.Abs(same[i].Predicted.TokensPerS/c.Predicted.TokensPerS - 1); d > 0.002 {
			t.Errorf("%s, %d clients: a sharing that agrees with the model moved tokens/s by %.2f%%", c.Row.Config, c.Row.Clients, 100*d)
		}
		if r := worker(dear[i]) / worker(c); r < 1.12 || r > 1.25 {
			t.Errorf("%s, %d clients: products 25%% dearer made the workers' core time a token x%.3f", c.Row.Config, c.Row.Clients, r)
		}
		if dear[i].Predicted.TokensPerS >= c.Predicted.TokensPerS {
			t.Errorf("%s, %d clients: products 25%% dearer: %.2f tokens/s, %.2f before", c.Row.Config, c.Row.Clients, dear[i].Predicted.TokensPerS, c.Predicted.TokensPerS)
		}
		if r := worker(woken[i]) / worker(c); r <= 1.001 {
			t.Errorf("%s, %d clients: 100 us a wake left the workers' core time a token x%.4f", c.Row.Config, c.Row.Clients, r)
		}
	}
}

// TestServeSteal: a pool the hypervisor takes a tenth of (StealCores)
// makes the core-bound 16-client rows about a tenth slower, each token's
// core time about unchanged; a row's recorded steal reaches its config.
func TestServeSteal(t *testing.T) {
	b := readServeBench(t, "../../bench/results/serve-4hosts-zen5-routed-7.txt")
	cal := ServeBenchCalibration(b)
	for _, row := range MeanWindows(b.Rows) {
		if !row.Netns || row.Clients != 16 {
			continue
		}
		cfg, err := ServeBenchConfig(b, row)
		if err != nil {
			t.Fatal(err)
		}
		if row.CPU == nil || cfg.StealCores != row.CPU.Steal {
			t.Fatalf("%s: steal %v in the config, the row's CPU %+v", row.Config, cfg.StealCores, row.CPU)
		}
		cfg.StealCores = 0
		c := withLink(cal, row.Link)
		base, err := PredictServe(cfg, c)
		if err != nil {
			t.Fatal(err)
		}
		cfg.StealCores = 0.2
		stolen, err := PredictServe(cfg, c)
		if err != nil {
			t.Fatal(err)
		}
		if r := stolen.TokensPerS / base.TokensPerS; r < 0.85 || r > 0.95 {
			t.Errorf("%s: a tenth of the pool stolen: tokens/s x%.3f", row.Config, r)
		}
		core := func(r *ServeResult) float64 { return r.Util.Cores / r.TokensPerS }
		if r := core(stolen) / core(base); r < 0.97 || r > 1.03 {
			t.Errorf("%s: a tenth of the pool stolen: core time a token x%.3f", row.Config, r)
		}
	}
}
