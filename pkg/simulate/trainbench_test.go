package simulate

import (
	"os"
	"strings"
	"testing"
	"time"
)

// Three ranks on one pool of 2 cores take longer than on three hosts of 2
// cores each (their products and messages queue for the same cores); one
// rank is unchanged (nothing of its step overlaps); a pool of three
// hosts' cores is no slower than the pool of 2.
func TestTrainSharedCores(t *testing.T) {
	cl := Cluster{Workers: 3, Cores: 2, MemoryBytes: 1 << 30, Rate: 125e6, Latency: 20 * time.Microsecond, Oversubscription: 1, HostsPerLeaf: 32}
	cfg := TrainConfig{Shape: tinyShape(), Cluster: cl, Cal: tinyCal(), TokensPerRank: 64, SeqLen: 32}
	own := predict(t, cfg)
	cfg.SharedCores = 2
	shared := predict(t, cfg)
	cfg.SharedCores = 6
	wide := predict(t, cfg)
	t.Logf("3 ranks: hosts of 2 cores %v, one pool of 2 cores %v, of 6 cores %v", own.Step, shared.Step, wide.Step)
	if shared.Step <= own.Step {
		t.Errorf("3 ranks: one pool of 2 cores %v, not longer than hosts of their own 2 cores %v", shared.Step, own.Step)
	}
	// 3 ranks' products on 2 cores instead of 6: at most 3 times as long.
	if shared.Step > 3*own.Step+own.Step/10 {
		t.Errorf("3 ranks: one pool of 2 cores %v, beyond 3x hosts of their own %v", shared.Step, own.Step)
	}
	if wide.Step > shared.Step {
		t.Errorf("a pool of 6 cores %v slower than one of 2 %v", wide.Step, shared.Step)
	}

	cl.Workers = 1
	one := TrainConfig{Shape: tinyShape(), Cluster: cl, Cal: tinyCal(), TokensPerRank: 64, SeqLen: 32}
	alone := predict(t, one)
	one.SharedCores = 2
	if p := predict(t, one); p != alone {
		t.Errorf("one rank: shared pool %+v, own cores %+v", p, alone)
	}
	one.SharedCores = -1
	if _, err := PredictTrainStep(one); err == nil {
		t.Error("negative shared cores accepted")
	}
}

// The pool shares by water-filling: two products of width 2 and a
// message of width 1 on 2 cores each get 2/3 of a core; the message
// ends first and the products speed up to a core each.
func TestSharedPool(t *testing.T) {
	var q eventQueue
	p := &sharedPool{q: &q, cores: 2}
	ends := map[string]time.Duration{}
	q.at(0, func(t time.Duration) {
		p.add(t, 1000, 2, func(t time.Duration) { ends["a"] = t }) // 2000 core-ns
		p.add(t, 1000, 2, func(t time.Duration) { ends["b"] = t })
		p.add(t, 200, 1, func(t time.Duration) { ends["m"] = t }) // 200 core-ns
	})
	q.run()
	// m: 200 core-ns at 2/3 core = 300 ns. By then a and b did 200 core-ns
	// each; 1800 left each at 1 core: 300 + 1800.
	if ends["m"] != 300 || ends["a"] != 2100 || ends["b"] != 2100 {
		t.Errorf("ends %v: want m 300, a and b 2100", ends)
	}
}

// benchFile is the committed measurement of a 3-worker step.
const benchFile = "../../bench/results/train-netns.txt"

func readBench(t *testing.T) *TrainBench {
	t.Helper()
	f, err := os.Open(benchFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := ReadTrainBench(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// relErr is (pred - meas) / meas.
func relErr(pred, meas time.Duration) float64 {
	if meas == 0 {
		return 0
	}
	return pred.Seconds()/meas.Seconds() - 1
}

// withCal is b's TrainConfig with a copy of its calibration that mod may
// change.
func withCal(t *testing.T, b *TrainBench, mod func(*TrainConfig)) TrainPrediction {
	t.Helper()
	c, err := b.TrainConfig()
	if err != nil {
		t.Fatal(err)
	}
	cal := *c.Cal
	cal.GEMM = append([]GEMMPoint(nil), cal.GEMM...)
	c.Cal = &cal
	mod(&c)
	return predict(t, c)
}

// TestTrainBench predicts the committed 3-worker run on the emulated
// cluster (bench/results/train-netns.txt, scripts/simulate-validate-train.sh:
// the golden qwen2_moe, 64 tokens a rank, 3 hosts on the machine's 2
// cores) from the run's own calibration and link, and logs each part's
// error. The target is the step within 15%; the model MISSES it:
// it predicts 13.5% of the measured step (-86.5%; every part too short),
// because the work it models is a small part of what the run's CPUs did
// (its products and exchange messages are 4.1 ms of core time a step; the
// run's processes used 42.4 ms, the 2 cores 90% busy; even one rank's
// share alone in one process, no messages, takes 5.2 ms a step against
// the model's 0.8 ms). What this asserts is what the model meets: the
// step's error within [-88%, -85%] (the measured -86.5% with 1.5 points
// of margin; two earlier runs in the same session measured -85.3% and
// -85.4%), every part predicted short, and that models wrong on purpose
// leave that band: products and AdamW twice as fast, the exchange's
// software twice as fast, hosts with cores of their own (no shared pool),
// links 5x faster without the tbf burst. (Links 5x faster with the burst
// scaled too are only logged: with the 500 KB burst a step's traffic
// mostly passes at once, so the link's rate barely enters the model.)
func TestTrainBench(t *testing.T) {
	b := readBench(t)
	meas := b.Mean()
	p, err := PredictTrainBench(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d workers x %d steps, %d tokens a rank, on %d CPUs (%s; load %s before, %s after); link %.1f MB/s raw TCP, round trip %v",
		b.Date, b.Workers, b.Steps, p.Tokens/p.N, b.CPUs, b.CPU, b.LoadBefore, b.LoadAfter, b.Cal.LinkRate/1e6, b.LinkRTT)
	pred := p.Parts()
	mp, pp := meas.Parts(), pred.Parts()
	for i, name := range TrainPartNames {
		t.Logf("  %-15s measured %7.3f ms  predicted %7.3f ms  error %+6.1f%%", name, mp[i].Seconds()*1e3, pp[i].Seconds()*1e3, 100*relErr(pp[i], mp[i]))
		if pp[i] >= mp[i] {
			t.Errorf("%s: predicted %v, measured %v: the model no longer predicts every part short; re-judge the bounds", name, pp[i], mp[i])
		}
	}
	t.Logf("  the model's bottleneck: %s", p.Bottleneck)
	cpuStep := time.Duration(b.JobCPUSeconds / float64(b.Steps) * float64(time.Second))
	t.Logf("  CPU a step: the model's products and exchange messages %v, the run's processes %v (%.0f%% of %d cores over the step)",
		p.CPU, cpuStep, 100*cpuStep.Seconds()/meas.Total.Seconds()/float64(b.CPUs), b.CPUs)
	if b.SingleTokensPerS > 0 {
		one := withCal(t, b, func(c *TrainConfig) { c.Cluster.Workers = 1 })
		t.Logf("  one rank's share in one process (every expert local, no messages): measured %v a step (%.0f tokens/s), the model %v",
			time.Duration(float64(p.Tokens/p.N)/b.SingleTokensPerS*float64(time.Second)), b.SingleTokensPerS, one.Step)
	}
	const lo, hi = -0.88, -0.85
	band := func(name string, q TrainPrediction, want bool) {
		e := relErr(q.Step, meas.Total)
		t.Logf("  %-45s step %8v  error %+6.1f%%", name, q.Step, 100*e)
		if in := e >= lo && e <= hi; in != want {
			t.Errorf("%s: step %v, error %+.1f%%: inside [%.1f%%, %.1f%%] %v, want %v", name, q.Step, 100*e, 100*lo, 100*hi, in, want)
		}
	}
	band("the model", p, true)
	band("products and AdamW 2x faster", withCal(t, b, func(c *TrainConfig) {
		for i := range c.Cal.GEMM {
			c.Cal.GEMM[i].FLOPS *= 2
		}
		c.Cal.AdamParamsPerS *= 2
		c.HostMemBandwidth = 0
		c.Cal.MemBandwidth *= 2
	}), false)
	band("exchange software 2x faster", withCal(t, b, func(c *TrainConfig) { c.Cal.MsgCPU /= 2; c.Cal.MsgBytesPerS *= 2 }), false)
	band("hosts with 2 cores of their own", withCal(t, b, func(c *TrainConfig) { c.SharedCores = 0 }), false)
	band("links 5x faster, no tbf burst", withCal(t, b, func(c *TrainConfig) { c.Cluster.Rate *= 5; c.Burst = 0 }), false)
	q := withCal(t, b, func(c *TrainConfig) { c.Cluster.Rate *= 5; c.Burst *= 5 })
	t.Logf("  %-45s step %8v  error %+6.1f%%", "links 5x faster, burst 5x (not asserted)", q.Step, 100*relErr(q.Step, meas.Total))
}

func TestReadTrainBenchErrors(t *testing.T) {
	for name, text := range map[string]string{
		"empty":       "",
		"no colon":    "date 2026\n",
		"bad worker":  "worker: w1 steps=3 forward=x\n",
		"short parts": "worker: w1 steps=3 forward=1\n",
	} {
		if _, err := ReadTrainBench(strings.NewReader(text)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// A tbf burst that covers a step's messages takes their wire time off the
// step (the buckets start full); the interfaces' busy time counts only
// what the burst did not cover.
func TestTrainBurst(t *testing.T) {
	cl := Cluster{Workers: 2, Cores: 1, MemoryBytes: 1 << 30, Rate: 1e9, Latency: time.Microsecond, Oversubscription: 1, HostsPerLeaf: 32}
	cfg := TrainConfig{Shape: tinyShape(), Cluster: cl, Cal: tinyCal(), TokensPerRank: 32, SeqLen: 32}
	plain := predict(t, cfg)
	cfg.Burst = 1 << 20
	burst := predict(t, cfg)
	if burst.Step >= plain.Step || burst.NIC != 0 || plain.NIC == 0 {
		t.Errorf("step %v (NIC busy %v) on plain links, %v (NIC busy %v) with a 1 MiB burst: want shorter, the NIC idle",
			plain.Step, plain.NIC, burst.Step, burst.NIC)
	}
	cfg.Burst = -1
	if _, err := PredictTrainStep(cfg); err == nil {
		t.Error("negative burst accepted")
	}
}
