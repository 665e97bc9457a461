package simulate

import (
	"fmt"
	"math"
	"os"
	"testing"
	"time"
)

// validated says which rows the collectives model must predict within
// 15%: every row at n = 2 and every all-reduce of at least 16 KiB (its
// messages wire-bound on these links), but the 64 KiB ring at n = 4 and
// 8 (the committed run, on the gRPC streams, measured it at half the link
// rate, busbw/C 0.5, where every other size runs at 0.92-1.0; on the
// lanes n = 4 is now within 1% and n = 8 over-predicted by 13-36%:
// docs/scale/README.md). Known misses, reported but not
// asserted: recursive doubling of <= 4 KiB at n = 4 and 8 (4 and 8
// processes on 2 shared cores). Charged the lanes' polled CPU per message
// (CollectivesRun.Costs), 8 of the 16 such rows of the four runs that
// measured it (2026-12-06) came within 15%, the rows -36% to +8%; charged
// the sleeping round trips' CPU instead, 3 of 16, -10% to +88%.
func validated(c Check) bool {
	if c.N == 2 {
		return true
	}
	return c.Bytes >= 16<<10 && !(c.Alg == "ring" && c.Bytes < 256<<10)
}

// busyLoad is the 1-minute load average at or above which a run is not
// judged: scripts/bench-collectives.sh waits for the load to drop below 3
// before each run (its own previous run included), so a run that started
// at 3 or more started on a busy machine. The emulated hosts share the
// machine's cores, so a busy machine slows their network stacks and the
// run measures the load, not the links (beside a Kubernetes build, at
// load 3.5-3.9, rings ran 25-75% slower than predicted while the run's
// own raw-TCP probe still ran at the link rate).
const busyLoad = 3.0

// readRuns reads a bench/collectives output file.
func readRuns(t *testing.T, path string) []*CollectivesRun {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runs, err := ReadCollectives(f)
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

func checkCollectives(t *testing.T, path string) {
	runs := readRuns(t, path)
	if len(runs) < 3 {
		t.Fatalf("%d runs in %s, want n = 2, 4 and 8", len(runs), path)
	}
	costs, err := runs[0].Calibrate()
	if err != nil {
		t.Fatal(err)
	}
	busy := ""
	for _, r := range runs {
		if r.Load >= busyLoad {
			busy = fmt.Sprintf("run %q started at load %.2f (>= %.1f)", r.Label, r.Load, busyLoad)
		}
	}
	checks, err := PredictCollectives(runs, costs, 2)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range checks {
		mark := ""
		if validated(c) {
			n++
			if e := c.Err(); busy == "" && (e > 0.15 || e < -0.15) {
				t.Errorf("n=%d %d B (%s): predicted %v, measured %v: %+.1f%%, want within 15%%", c.N, c.Bytes, c.Alg, c.Predicted, c.Measured, 100*e)
				mark = "  <- outside 15%"
			}
		} else {
			mark = "  (known miss, not asserted)"
		}
		t.Logf("n=%d %9d B %4s: predicted %12v measured %12v %+6.1f%%%s", c.N, c.Bytes, c.Alg, c.Predicted.Round(time.Microsecond), c.Measured.Round(time.Microsecond), 100*c.Err(), mark)
	}
	if n < 12 {
		t.Errorf("only %d rows validated", n)
	}
	if busy != "" {
		t.Skipf("the machine was busy, so the rows above are not judged: %s; the emulated hosts share its cores (run scripts/simulate-validate.sh on a quiet machine)", busy)
	}

	// The check has teeth: the same prediction with a link 20% faster than
	// measured (or a latency ignoring the measured round trip) must fail it.
	// (A model without the CPU per byte no longer does on fresh runs: since
	// rings of one chunk a step run on the lanes, every validated ring runs
	// at the link's rate, and the bytes' CPU only overlaps the wire.)
	for _, wrong := range []struct {
		name string
		edit func(*CollectivesRun)
	}{
		{"link 20% faster than measured", func(r *CollectivesRun) { r.C *= 1.2 }},
		{"no per-message cost and no latency", func(r *CollectivesRun) {
			r.RTT, r.BusyRTT, r.PolledRTT, r.MsgCPU = time.Nanosecond, 0, 0, 0
		}},
	} {
		var bad []*CollectivesRun
		for _, r := range runs {
			c := *r
			wrong.edit(&c)
			bad = append(bad, &c)
		}
		cs := costs
		if wrong.name == "no per-message cost and no latency" {
			cs.MsgCPU = 0
		}
		checks, err := PredictCollectives(bad, cs, 2)
		if err != nil {
			t.Fatal(err)
		}
		fails := 0
		for _, c := range checks {
			if e := c.Err(); validated(c) && (e > 0.15 || e < -0.15) {
				fails++
			}
		}
		if fails == 0 {
			t.Errorf("a wrong model (%s) passes the 15%% check", wrong.name)
		}
	}
}

// TestPredictCommittedCollectives predicts the committed emulated runs
// (bench/results/collectives.txt: n = 2 and 4 on 1 Gbit/s hosts, n = 8 on
// 500 Mbit/s) from the link each run measured and a per-message cost from
// its n = 2 smallest all-reduce.
func TestPredictCommittedCollectives(t *testing.T) {
	checkCollectives(t, "../../bench/results/collectives.txt")
}

// TestPredictLiveCollectives does the same on a run made just before
// (scripts/simulate-validate.sh sets SWITCHYARD_COLLECTIVES_RUN).
func TestPredictLiveCollectives(t *testing.T) {
	p := os.Getenv("SWITCHYARD_COLLECTIVES_RUN")
	if p == "" {
		t.Skip("SWITCHYARD_COLLECTIVES_RUN is not set: scripts/simulate-validate.sh runs this on a fresh emulated run (root; not a CI stage: a timing check on shared cores whose n = 2 4 KiB row misses 15% in 3 of the 19 runs kept on 2026-12-06, both ways, docs/scale)")
	}
	checkCollectives(t, p)
}

// TestRunCostsByContention: a run with no more ranks than cores keeps the
// n = 2 per-message calibration; with more, each side of a message costs
// half the machine's CPU per message of the run's busy round trips. Every
// byte costs the run's raw-TCP CPU per byte, on the gRPC streams also the
// gRPC path's own; only a ring of several chunks a step runs there.
func TestRunCostsByContention(t *testing.T) {
	for _, c := range []struct {
		n, bytes, chunk int
		streams         bool
	}{
		{2, 16 << 10, 0, false}, // recursive doubling
		{2, 2 << 20, 0, false},  // ring, 1 MiB shares: one chunk a step
		{2, 2<<20 + 4, 0, true}, // a share one element over 1 MiB
		{8, 8 << 20, 0, false},  // 1 MiB shares
		{8, 4 << 20, 256 << 10, true},
	} {
		if got := OnStreams(c.n, c.bytes, c.chunk); got != c.streams {
			t.Errorf("n=%d %d B chunk %d: on the streams %v, want %v", c.n, c.bytes, c.chunk, got, c.streams)
		}
	}
	cal := Costs{MsgCPU: 4 * time.Microsecond, ByteCPU: 1e-9}
	r := &CollectivesRun{N: 8, MsgCPU: 30 * time.Microsecond, ByteCPU: 2e-9}
	for _, c := range []struct {
		streams bool
		cores   int
		msg     time.Duration
		perB    float64
		reason  string
	}{
		{false, 2, 15 * time.Microsecond, 2e-9, "n=8 lanes on 2 cores"},
		{true, 2, 15 * time.Microsecond, 3e-9, "n=8 ring on the streams on 2 cores"},
		{true, 8, 4 * time.Microsecond, 3e-9, "n=8 ring on the streams on 8 cores"},
	} {
		got := r.Costs(c.streams, c.cores, cal)
		if got.MsgCPU != c.msg || math.Abs(got.ByteCPU-c.perB) > 1e-15 {
			t.Errorf("%s: per message %v, per byte %g; want %v, %g", c.reason, got.MsgCPU, got.ByteCPU, c.msg, c.perB)
		}
	}
	// Where the run measured polled round trips, the lanes' messages cost
	// their CPU; the streams' still the sleeping ones'.
	r.PolledMsgCPU = 12 * time.Microsecond
	if got := r.Costs(false, 2, cal); got.MsgCPU != 6*time.Microsecond {
		t.Errorf("n=8 lanes on 2 cores, polled round trips measured: per message %v, want 6us", got.MsgCPU)
	}
	if got := r.Costs(true, 2, cal); got.MsgCPU != 15*time.Microsecond {
		t.Errorf("n=8 ring on the streams on 2 cores, polled round trips measured: per message %v, want 15us", got.MsgCPU)
	}
	if got := r.Costs(false, 8, cal); got.MsgCPU != 4*time.Microsecond {
		t.Errorf("n=8 lanes on 8 cores: per message %v, want the calibration's 4us", got.MsgCPU)
	}
	r.PolledMsgCPU = 0
	// The probe processes' CPU per byte caps the machine's (the rest was
	// other work on the machine), at any n.
	two := &CollectivesRun{N: 2, ByteCPU: 4e-9, ProcByteCPU: 1.5e-9}
	if got := two.Costs(false, 2, cal); got.ByteCPU != 1.5e-9 {
		t.Errorf("n=2 on 2 cores: per byte %g, want the probe processes' 1.5e-9", got.ByteCPU)
	}
	two.ProcByteCPU = 5e-9
	if got := two.Costs(false, 2, cal); got.ByteCPU != 4e-9 {
		t.Errorf("n=2 on 2 cores, the processes above the machine: per byte %g, want the machine's 4e-9", got.ByteCPU)
	}
	r.ProcByteCPU = 1e-9
	if got := r.Costs(false, 2, cal); got.ByteCPU != 1e-9 {
		t.Errorf("n=8 on 2 cores: per byte %g, want the probe processes' 1e-9", got.ByteCPU)
	}
	if got := r.Costs(true, 2, cal); math.Abs(got.ByteCPU-2e-9) > 1e-15 {
		t.Errorf("n=8 on the streams on 2 cores: per byte %g, want the probe processes' 1e-9 plus the gRPC path's 1e-9", got.ByteCPU)
	}
	r.ProcByteCPU = 3e-9
	if got := r.Costs(false, 2, cal); got.ByteCPU != 2e-9 {
		t.Errorf("n=8 on 2 cores, the processes above the machine: per byte %g, want the machine's 2e-9", got.ByteCPU)
	}
	r.ProcByteCPU = 0
	old := &CollectivesRun{N: 8}
	if got := old.Costs(true, 2, Costs{MsgCPU: 4 * time.Microsecond}); got.MsgCPU != 4*time.Microsecond || got.ByteCPU != 0 {
		t.Errorf("a run without the CPU probes: %+v, want the calibration alone", got)
	}
	// The latency is half the shortest round trip.
	r.RTT, r.BusyRTT = 60*time.Microsecond, 200*time.Microsecond
	if got := r.latency(); got != 30*time.Microsecond {
		t.Errorf("latency %v, want 30us", got)
	}
	r.BusyRTT = 20 * time.Microsecond
	if got := r.latency(); got != 10*time.Microsecond {
		t.Errorf("latency %v, want 10us", got)
	}
	r.RTT, r.BusyRTT, r.PolledRTT = 170*time.Microsecond, 310*time.Microsecond, 48*time.Microsecond
	if got := r.latency(); got != 24*time.Microsecond {
		t.Errorf("latency %v, want 24us (the polled round trip's half)", got)
	}
}

// TestByteCPUPipelines: a message's CPU per byte overlaps its wire time
// piece by piece. A 4 MiB ring at n = 2 on a plain link whose copying on
// each side takes half the wire time runs at the link's bound plus about
// a piece per step, not at the sum of copying and wire; a machine with
// one core for both ranks, where the four sides' copying exceeds the
// wire, is CPU-bound.
func TestByteCPUPipelines(t *testing.T) {
	const rate = 1e9 // bytes/s
	hosts := []Host{{Rate: rate, Latency: 10 * time.Microsecond, Cores: 1}, {Rate: rate, Latency: 10 * time.Microsecond, Cores: 1}}
	a := AllReduce{N: 2, Bytes: 4 << 20}
	wire := time.Duration(float64(4<<20) / rate * float64(time.Second)) // 2 steps of 2 MiB
	c := Costs{ByteCPU: 1 / rate}                                       // half of it on each side: half the wire time
	got, _, err := PredictAllReduce(a, Machine{Hosts: hosts}, c)
	if err != nil {
		t.Fatal(err)
	}
	if got < wire || float64(got) > 1.1*float64(wire) {
		t.Errorf("own cores: %v, want within 10%% above the wire's %v (not the serial %v)", got, wire, 2*wire)
	}
	shared, _, err := PredictAllReduce(a, Machine{Hosts: hosts, SharedCores: 1}, c)
	if err != nil {
		t.Fatal(err)
	}
	// Each step: 2 ranks x (send + receive) x half the wire time of 2 MiB
	// on one core = twice the step's wire time.
	if float64(shared) < 1.8*float64(wire) {
		t.Errorf("one shared core: %v, want CPU-bound, about %v", shared, 2*wire)
	}
}

// TestReadCollectivesCPU: the committed fresh run carries every run's
// probes: link rate, both round trips, and the CPU per byte and per
// message.
func TestReadCollectivesCPU(t *testing.T) {
	runs := readRuns(t, "../../bench/results/simulate-validate-run.txt")
	if len(runs) != 3 {
		t.Fatalf("%d runs, want n = 2, 4, 8", len(runs))
	}
	// The gRPC ring's own CPU per byte: the largest ring's busy CPU per
	// byte moved, less raw TCP's, a few ns.
	cal, err := runs[0].Calibrate()
	if err != nil {
		t.Fatal(err)
	}
	if cal.ByteCPU <= 0 || cal.ByteCPU > 10e-9 {
		t.Errorf("the ring's own CPU per byte %g s, want (0, 10 ns]", cal.ByteCPU)
	}
	for _, r := range runs {
		if r.C <= 0 || r.RTT <= 0 || r.BusyRTT <= 0 || r.ByteCPU <= 0 || r.ProcByteCPU <= 0 || r.MsgCPU <= 0 || r.PolledMsgCPU <= 0 || r.CPUs != 2 || r.Host[4<<20] <= 0 {
			t.Errorf("run %q: C %g RTT %v busy %v byte CPU %g (processes %g) msg CPU %v (polled %v) CPUs %d host %v", r.Label, r.C, r.RTT, r.BusyRTT, r.ByteCPU, r.ProcByteCPU, r.MsgCPU, r.PolledMsgCPU, r.CPUs, r.Host)
		}
		if len(r.AllReduce) < 6 {
			t.Errorf("run %q: %d rows", r.Label, len(r.AllReduce))
		}
	}
}

func TestPredictAllReduceShapes(t *testing.T) {
	// A plain 10 Gbit/s link, one core each: the ring's bandwidth term
	// 2(n-1)/n x S / rate dominates 64 MiB at any n.
	for _, n := range []int{2, 4, 16, 64} {
		hosts := make([]Host, n)
		for i := range hosts {
			hosts[i] = Host{Rate: 1.25e9, Latency: 5 * time.Microsecond, Cores: 1}
		}
		got, alg, err := PredictAllReduce(AllReduce{N: n, Bytes: 64 << 20}, Machine{Hosts: hosts}, Costs{MsgCPU: 2 * time.Microsecond})
		if err != nil {
			t.Fatal(err)
		}
		ideal := time.Duration(2 * float64(n-1) / float64(n) * float64(64<<20) / 1.25e9 * float64(time.Second))
		if alg.String() != "ring" || got < ideal || float64(got) > 1.1*float64(ideal) {
			t.Errorf("n=%d: %s %v, want ring within 10%% above the bandwidth bound %v", n, alg, got, ideal)
		}
	}
}

// TestRingClosedForm: the closed form used for huge rings matches the
// event model where both run.
func TestRingClosedForm(t *testing.T) {
	for _, n := range []int{4, 16, 64} {
		for _, b := range []int{64 << 20, 1 << 30} {
			h := Host{Rate: 3.125e9, Latency: 10 * time.Microsecond, Cores: 4}
			hosts := make([]Host, n)
			for i := range hosts {
				hosts[i] = h
			}
			c := Costs{MsgCPU: 5 * time.Microsecond}
			// Iterations 1 but a shared-nothing machine: force the event
			// model by asking for it through a heterogeneous copy.
			hosts[0].Latency++
			des, _, err := PredictAllReduce(AllReduce{N: n, Bytes: b}, Machine{Hosts: hosts}, c)
			if err != nil {
				t.Fatal(err)
			}
			closed := RingTime(n, b, h, c)
			if d := float64(closed-des) / float64(des); d > 0.02 || d < -0.02 {
				t.Errorf("n=%d %d B: closed form %v, event model %v (%+.2f%%)", n, b, closed, des, 100*d)
			}
		}
	}
}
