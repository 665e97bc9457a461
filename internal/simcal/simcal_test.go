package simcal

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/simulate"
	"github.com/switchyard/switchyard/pkg/train"
)

// A quick calibration measures positive, ordered numbers, and what Write
// writes ReadCalibration reads back unchanged.
func TestQuickCalibration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// With a training profile of the golden qwen2_moe, its steps timed for
	// TrainTime (longer than --quick's half second would give less).
	const trainTime = 700 * time.Millisecond
	c, err := Calibrate(ctx, Options{Quick: true, TrainModel: filepath.Join("..", "..", "testdata", "golden", "qwen2_moe"),
		TrainBatch: 1, TrainSeqLen: 16, TrainTime: trainTime, ExpertShape: [2]int{256, 512}})
	if err != nil {
		t.Fatal(err)
	}
	if c.CPU == "" || c.Cores < 1 || c.When == "" {
		t.Errorf("cpu %q, cores %d, when %q", c.CPU, c.Cores, c.When)
	}
	// The timed loop ran for TrainTime (at least MinSteps steps); the
	// median window is one of five. The median window's mean times the
	// step count need not come near the loop's time: a machine busy for
	// two of the windows slows their steps and not the median's.
	if len(c.Train) != 1 || c.Train[0].Timed < trainTime || c.Train[0].TimedSteps < 20 ||
		c.Train[0].Step <= 0 || c.Train[0].Step > c.Train[0].Timed ||
		c.Train[0].Steps > c.Train[0].TimedSteps/5+1 || c.Train[0].Steps < c.Train[0].TimedSteps/5 {
		t.Errorf("training profiles %+v: want one, its steps timed for %v or more, five windows", c.Train, trainTime)
	}
	// Per thread count: a 512-row product runs faster per FLOP than a
	// one-row GEMV (which streams the whole weight for one row).
	byThreads := map[int]map[int]float64{}
	for _, p := range c.GEMM {
		if p.FLOPS <= 0 || p.DType != "f32" {
			t.Errorf("point %+v: want float32 and positive", p)
		}
		if byThreads[p.Threads] == nil {
			byThreads[p.Threads] = map[int]float64{}
		}
		byThreads[p.Threads][p.M] = p.FLOPS
	}
	if len(byThreads) == 0 {
		t.Fatal("no GEMM points")
	}
	for th, m := range byThreads {
		if m[512] <= m[1] {
			t.Errorf("%d threads: %.1f GFLOP/s at M=512, %.1f at M=1: want the product faster per FLOP", th, m[512]/1e9, m[1]/1e9)
		}
	}
	// The expert by rows: every row count of ExpertRows, of the shape
	// asked; 32 rows take longer than one, and less than 32 times as
	// long (one pass over the weights serves every row).
	if len(c.Expert) != len(ExpertRows) {
		t.Fatalf("expert points %+v: want one per ExpertRows", c.Expert)
	}
	for i, p := range c.Expert {
		if p.Rows != ExpertRows[i] || p.Hidden != 256 || p.Inter != 512 || p.DType != "bf16" || p.Seconds <= 0 {
			t.Errorf("expert point %+v: want %d rows of 256 x 512 bf16, positive", p, ExpertRows[i])
		}
	}
	if t1, t32 := c.Expert[0].Seconds, c.Expert[len(c.Expert)-1].Seconds; t32 <= t1 || t32 >= 32*t1 {
		t.Errorf("expert: %.3f ms at 1 row, %.3f at 32: want more, and less than 32 times", t1*1e3, t32*1e3)
	}
	if c.MemBandwidth <= 1e8 || c.AdamParamsPerS <= 1e6 {
		t.Errorf("memory bandwidth %g B/s, AdamW %g parameters/s: implausible", c.MemBandwidth, c.AdamParamsPerS)
	}
	// The round trip of one row is four message sides; a payload's bytes
	// cost something on top.
	if c.ExchangeRTT <= 0 || c.MsgCPU != c.ExchangeRTT/4 || c.MsgBytesPerS <= 0 {
		t.Errorf("exchange round trip %v, per message %v, %g B/s per side", c.ExchangeRTT, c.MsgCPU, c.MsgBytesPerS)
	}
	if c.LinkRate != 0 || c.LinkRTT != 0 {
		t.Errorf("no peer, yet a link of %g B/s, %v", c.LinkRate, c.LinkRTT)
	}
	var buf bytes.Buffer
	if err := Write(&buf, c); err != nil {
		t.Fatal(err)
	}
	back, err := simulate.ReadCalibration(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("read back %+v\nwrote %+v", back, c)
	}
	// The training model runs on it.
	cl, err := simulate.ClusterSpec{Workers: 4}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	shape := simulate.TrainMixtral8x22B()
	shape.Layers = 2
	if _, err := simulate.PredictTrainStep(simulate.TrainConfig{Shape: shape, Cluster: cl, Cal: back}); err != nil {
		t.Error(err)
	}
}

// MeasureLink against ServeLink on loopback: a positive rate and round
// trip.
func TestLink(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- ServeLink(ctx, lis) }()
	rate, rtt, err := MeasureLink(ctx, lis.Addr().String(), true)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeLink: %v", err)
	}
	if rate <= 0 || rtt <= 0 || rtt > time.Second {
		t.Errorf("loopback link: %g B/s, round trip %v", rate, rtt)
	}
}

// MeasureLinkCPU against ServeLink on loopback (both in this process, so
// each core time is counted twice: only its shape is checked): a round
// trip, a positive core time per message and a non-negative one per
// byte; the peer's core time grows. An address nobody serves is an
// error.
func TestLinkCPU(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	done := make(chan error, 1)
	go func() { done <- ServeLink(ctx, lis) }()
	addr := lis.Addr().String()
	c0, err := peerCPU(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	lc, err := MeasureLinkCPU(ctx, addr, true)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	c1, err := peerCPU(ctx, addr)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeLink: %v", err)
	}
	t.Logf("loopback: round trip %v (%v after %v idle), %v per message and side, %.2f ns per byte and side (counted twice)", lc.RTT, lc.IdleRTT, idlePause, lc.MsgWork, lc.ByteWork)
	if lc.RTT <= 0 || lc.IdleRTT <= 0 || lc.MsgWork <= 0 || lc.ByteWork < 0 || c1 <= c0 {
		t.Errorf("link cpu %+v; peer core time %v -> %v", lc, c0, c1)
	}
	// The quick idle round trips (100 forward and backward pairs, 2
	// warm-up) each wait idlePause first.
	if floor := 2 * 102 * idlePause; took < floor {
		t.Errorf("MeasureLinkCPU took %v, less than its idle pauses alone (%v)", took, floor)
	}
	deadAddr := unservedAddr(t)
	if _, err := MeasureLinkCPU(context.Background(), deadAddr, true); err == nil {
		t.Errorf("MeasureLinkCPU of %s, which nobody serves: no error", deadAddr)
	}
}

// ProfileTrain of the golden qwen2_moe: every part positive, the parts
// within the step, the shape read from its config.json, the parameters
// those of the model, the three steps timed in windows of one (the
// median window's one step reported); a bad batch and a folder without
// a model are errors.
func TestProfileTrain(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "golden", "qwen2_moe")
	p, err := ProfileTrain(context.Background(), TrainProfileOptions{Dir: dir, Batch: 2, SeqLen: 16, Threads: 1, Quick: true, WarmupSteps: 2, MinSteps: 3, Target: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", p)
	parts := p.Forward + p.Backward + p.ExpertsForward + p.ExpertsBackward + p.Optimizer
	if p.Forward <= 0 || p.Backward <= 0 || p.ExpertsForward <= 0 || p.ExpertsBackward <= 0 || p.Optimizer <= 0 || parts > p.Step || p.CPU <= 0 {
		t.Errorf("parts %v of a step %v: %+v", parts, p.Step, p)
	}
	if p.TimedSteps < 3 || p.Timed < time.Millisecond || p.Steps != 1 || p.TokensPerRank != 32 || p.SeqLen != 16 || p.Threads != 1 || p.Shape.Name != "" || p.Shape.Hidden != 64 || p.Shape.Experts != 8 || p.Params < 100000 {
		t.Errorf("profile %+v", p)
	}
	if _, err := ProfileTrain(context.Background(), TrainProfileOptions{Dir: dir, Batch: 0, SeqLen: 16}); err == nil {
		t.Error("batch 0: no error")
	}
	if _, err := ProfileTrain(context.Background(), TrainProfileOptions{Dir: t.TempDir(), Batch: 1, SeqLen: 16}); err == nil {
		t.Error("a folder without a model: no error")
	}
}

// MeasureRingCPU against ServeLink on loopback (both members in this
// process, so the core time is counted twice: only its shape is
// checked): both sizes take core time, the larger more, and the per-byte
// figure is positive; the peer's member leaves (a second measurement
// works, so the first one's group ended). An address nobody serves is an
// error.
func TestRingCPU(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ServeLink(ctx, lis) }()
	addr := lis.Addr().String()
	for i := range 2 {
		rc, err := MeasureRingCPU(ctx, addr, true)
		if err != nil {
			t.Fatalf("measurement %d: %v", i, err)
		}
		t.Logf("loopback: %d B all-reduce %v, %d B %v of core time (counted twice): %.2f ns per byte and side", rc.Small, rc.SmallCPU, rc.Big, rc.BigCPU, rc.ByteWork)
		if rc.SmallCPU <= 0 || rc.BigCPU <= rc.SmallCPU || rc.ByteWork <= 0 {
			t.Errorf("ring cpu %+v", rc)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ServeLink: %v", err)
	}
	deadAddr := unservedAddr(t)
	if _, err := MeasureRingCPU(context.Background(), deadAddr, true); err == nil {
		t.Errorf("MeasureRingCPU of %s, which nobody serves: no error", deadAddr)
	}
}

// unservedAddr is a loopback address nobody listens on (a listener's,
// closed).
func unservedAddr(t *testing.T) string {
	t.Helper()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	return addr
}

// medianWindow reports the window whose mean step is the median: a dip
// in two of ten windows (steps 5x slower) leaves it at the undisturbed
// steps' parts, where the mean of every step moves by 80%; one window
// is the mean of every step; more windows than steps is one a step.
func TestMedianWindow(t *testing.T) {
	var steps []train.StepTimes
	for i := range 100 {
		f := time.Duration(1)
		if i >= 30 && i < 50 {
			f = 5
		}
		steps = append(steps, train.StepTimes{Forward: f * time.Millisecond, Optimizer: f * 2 * time.Millisecond, Total: f * 4 * time.Millisecond})
	}
	sum, n := medianWindow(steps, 10)
	if n != 10 || sum.Forward != 10*time.Millisecond || sum.Optimizer != 20*time.Millisecond || sum.Total != 40*time.Millisecond {
		t.Errorf("10 windows: %d steps, sums %+v: want 10 undisturbed steps", n, sum)
	}
	sum, n = medianWindow(steps, 1)
	if n != 100 || sum.Total != (80*4+20*20)*time.Millisecond {
		t.Errorf("1 window: %d steps, total %v: want every step", n, sum.Total)
	}
	sum, n = medianWindow(steps[:3], 5)
	if n != 1 || sum.Total != 4*time.Millisecond {
		t.Errorf("3 steps in 5 windows: %d steps, total %v: want one undisturbed step", n, sum.Total)
	}
}
