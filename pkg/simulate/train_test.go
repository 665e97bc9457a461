package simulate

import (
	"strings"
	"testing"
	"time"
)

// testCal is a calibration of round numbers: f32 products at 150 GFLOP/s
// per core for M >= 64 (14 at M = 1), 25 us and 1 GB/s per message side.
func testCal() *Calibration {
	var g []GEMMPoint
	for m, f := range map[int]float64{1: 14e9, 16: 100e9, 64: 140e9, 512: 150e9} {
		g = append(g, GEMMPoint{M: m, K: 4096, N: 4096, DType: "f32", Threads: 1, FLOPS: f})
	}
	return &Calibration{GEMM: g, MemBandwidth: 15e9, MsgCPU: 25 * time.Microsecond, MsgBytesPerS: 1e9,
		ExchangeRTT: 100 * time.Microsecond, AdamParamsPerS: 200e6}
}

func resolve(t *testing.T, s ClusterSpec) Cluster {
	t.Helper()
	c, err := s.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func predict(t *testing.T, c TrainConfig) TrainPrediction {
	t.Helper()
	p, err := PredictTrainStep(c)
	if err != nil {
		t.Fatal(err)
	}
	if sum := p.Other + p.Forward + p.Backward + p.ExchangeWait + p.AllReduceWait + p.Optimizer + p.Barrier; sum != p.Step {
		t.Fatalf("N=%d: parts sum to %v, step %v (%+v)", p.N, sum, p.Step, p)
	}
	if p.Straggle > p.AllReduceWait {
		t.Fatalf("N=%d: straggle %v beyond the all-reduce wait %v", p.N, p.Straggle, p.AllReduceWait)
	}
	for name, d := range map[string]time.Duration{"other": p.Other, "forward": p.Forward, "backward": p.Backward, "exchange": p.ExchangeWait,
		"all-reduce": p.AllReduceWait, "optimizer": p.Optimizer, "barrier": p.Barrier} {
		if d < 0 {
			t.Fatalf("N=%d: %s %v < 0", p.N, name, d)
		}
	}
	return p
}

// The presets have the published parameter counts: Mixtral-8x22B 141 B
// (39 B active; the dense part is what scripts/scale-scenarios.sh
// all-reduces), DeepSeek-V3 671 B (37 B active).
func TestTrainShapeParams(t *testing.T) {
	m := TrainMixtral8x22B()
	dense := int64(32768*6144*2 + 56*(6144*6144*2+6144*1024*2+6144*8+6144*2) + 6144)
	if got := m.DenseParams(); got != dense {
		t.Errorf("mixtral dense %d, want %d", got, dense)
	}
	near := func(name string, got int64, want, tol float64) {
		if d := float64(got)/want - 1; d > tol || d < -tol {
			t.Errorf("%s: %.2f B, want %.1f B within %.0f%%", name, float64(got)/1e9, want/1e9, 100*tol)
		}
	}
	near("mixtral total", m.TotalParams(), 140.6e9, 0.01)
	near("mixtral active", m.ActiveParams(), 39.1e9, 0.02)
	d := TrainDeepSeekV3()
	near("deepseek-v3 total", d.TotalParams(), 671e9, 0.01)
	near("deepseek-v3 active", d.ActiveParams(), 37e9, 0.03)
	if _, err := TrainShapeByName("gpt-5"); err == nil {
		t.Error("an unknown model name was accepted")
	}
}

// tinyShape is a one-layer MoE small enough to compute by hand.
func tinyShape() TrainShape {
	return TrainShape{Name: "tiny", Layers: 1, Hidden: 64, Vocab: 100, Heads: 2, KVHeads: 2, QKDim: 32, VDim: 32,
		AttnProj: [][2]int{{64, 64}, {64, 64}, {64, 64}, {64, 64}}, Experts: 2, TopK: 1, ExpertInter: 128}
}

// tinyCal runs every product at 1 GFLOP/s (2mkn ns), messages at 1 GB/s
// (a byte a nanosecond) after 2 us, memory at 1 GB/s, AdamW at 10 M
// parameters/s.
func tinyCal() *Calibration {
	return &Calibration{GEMM: []GEMMPoint{{M: 32, K: 64, N: 64, DType: "f32", Threads: 1, FLOPS: 1e9}},
		MemBandwidth: 1e9, MsgCPU: 2 * time.Microsecond, MsgBytesPerS: 1e9, AdamParamsPerS: 1e7}
}

// A two-rank step of the tiny model, computed by hand: both ranks run
// their attention, send the other rank's expert its 16 rows (and compute
// their own expert's in process), the owner serves its own rank's rows
// first (they arrived first), then the peer's, and answers; then the
// head, the statistics all-to-all, the same backward at twice the
// products, the one gradient bucket's all-reduce, the norm all-to-all,
// AdamW and the barrier.
func TestTrainStepByHand(t *testing.T) {
	ns := func(flops int) time.Duration { return time.Duration(flops) } // 1 GFLOP/s
	const d, T, S, F, V = 64, 32, 32, 128, 100
	attn := 4*ns(2*T*d*d) + 2*(ns(2*S*32*S)+ns(2*S*S*32)) + ns(2*T*d*2) // projections, 2 heads x (QK, PV) on 1 core, router
	X := 2*ns(2*16*d*F) + ns(2*16*F*d)                                  // one expert's 16 rows, forward
	head := ns(2 * T * d * V)
	const msg, lat = 2 * time.Microsecond, time.Microsecond
	b := time.Duration(16 * d * 4) // bytes = ns at 1 GB/s
	c := msg + b                   // per message and side
	// Rank 0's request reaches owner 1 after the sender's software, the
	// link, the latency and the receiver's software; owner 1 is busy with
	// its own rank's rows until attn+X.
	exchange := func(start, work time.Duration) time.Duration {
		arrive := start + c + b + lat + c
		served := max(arrive, start+work) + work
		return served + c + b + lat + c
	}
	a2a := func(bytes int) time.Duration { return lat + time.Duration(bytes) + 2*msg }
	fwd := exchange(attn, X) + head
	bwdStart := fwd + a2a(8*(5+2*1*2))
	bwdEnd := exchange(bwdStart+2*head, 2*X) + 2*attn
	dense := 2*d + 4*d*d + 2*d + (d + V*d) + V*d
	ar, _, err := PredictAllReduce(AllReduce{N: 2, Bytes: 4 * dense}, Machine{Hosts: []Host{{Rate: 1e9, Latency: lat, Cores: 1}, {Rate: 1e9, Latency: lat, Cores: 1}}},
		Costs{MsgCPU: msg})
	if err != nil {
		t.Fatal(err)
	}
	params := dense + 3*d*F
	opt := max(time.Duration(params*adamBytes), time.Duration(params)*100) // memory at 1 GB/s; AdamW at 10 M/s
	want := bwdEnd + ar + a2a(8) + opt + a2a(0)

	cl := Cluster{Workers: 2, Cores: 1, MemoryBytes: 1 << 30, Rate: 1e9, Latency: lat, Oversubscription: 1, HostsPerLeaf: 32}
	p := predict(t, TrainConfig{Shape: tinyShape(), Cluster: cl, Cal: tinyCal(), TokensPerRank: T, SeqLen: S})
	if diff := p.Step - want; diff < -20 || diff > 20 {
		t.Errorf("step %v, by hand %v", p.Step, want)
	}
	wantEx := (exchange(attn, X) - attn) + (exchange(bwdStart+2*head, 2*X) - (bwdStart + 2*head))
	if diff := p.ExchangeWait - wantEx; diff < -20 || diff > 20 {
		t.Errorf("exchange wait %v, by hand %v", p.ExchangeWait, wantEx)
	}
	if p.Owners != 2 || !p.Fits {
		t.Errorf("owners %d, fits %v: want 2 owners, fitting", p.Owners, p.Fits)
	}
}

// One rank computes its experts in process: no message, no all-reduce,
// no barrier; the exchange wait is exactly the expert products.
func TestTrainOneRank(t *testing.T) {
	cl := Cluster{Workers: 1, Cores: 1, MemoryBytes: 1 << 30, Rate: 1e9, Latency: time.Microsecond, Oversubscription: 1, HostsPerLeaf: 32}
	p := predict(t, TrainConfig{Shape: tinyShape(), Cluster: cl, Cal: tinyCal(), TokensPerRank: 32, SeqLen: 32})
	X := time.Duration(2*(2*32*64*128) + 2*32*128*64) // both experts' 16 rows each = 32 rows through 3 products
	if p.ExchangeWait != 3*X {
		t.Errorf("exchange wait %v, want the expert products %v (forward) + %v (backward)", p.ExchangeWait, X, 2*X)
	}
	if p.AllReduceWait != 0 || p.Straggle != 0 || p.Barrier != 0 || p.AllReduce != 0 || p.NIC != 0 || p.MsgCPU != 0 {
		t.Errorf("one rank: all-reduce wait %v, barrier %v, all-reduce %v, NIC %v, message software %v: want all 0",
			p.AllReduceWait, p.Barrier, p.AllReduce, p.NIC, p.MsgCPU)
	}
}

// allReduceBound is a model whose step is its gradient all-reduce: 2 GB
// of dense gradients, products a thousand times faster than a CPU's.
func allReduceBound(t *testing.T, nic string) TrainPrediction {
	s := TrainMixtral8x22B()
	s.Layers = 4
	cal := testCal()
	for i := range cal.GEMM {
		cal.GEMM[i].FLOPS *= 1000
	}
	cal.AdamParamsPerS = 0
	cal.MemBandwidth = 1e12
	return predict(t, TrainConfig{Shape: s, Cal: cal, TokensPerRank: 1024, SeqLen: 1024,
		Cluster: resolve(t, ClusterSpec{Workers: 8, NIC: nic, Memory: "1TiB"})})
}

// Where the all-reduce bounds the step, a NIC twice as fast shortens it
// by about the all-reduce's halving, and the bottleneck says so.
func TestTrainAllReduceBoundNIC(t *testing.T) {
	slow, fast := allReduceBound(t, "25gbit"), allReduceBound(t, "50gbit")
	if !strings.Contains(slow.Bottleneck, "NIC: the gradient all-reduce") {
		t.Errorf("bottleneck %q, want the gradient all-reduce's NIC", slow.Bottleneck)
	}
	if fast.Step >= slow.Step || float64(fast.Step) > 0.6*float64(slow.Step) {
		t.Errorf("step %v at 25gbit, %v at 50gbit: want about half", slow.Step, fast.Step)
	}
	// The wire moves 2(n-1)/n of the gradients each way.
	wire := 2 * 7.0 / 8 * float64(slow.AllReduceBytes) / 25e9 * 8
	if got := slow.AllReduce.Seconds(); got < wire || got > 1.2*wire {
		t.Errorf("all-reduce %v at 25gbit, want the %.3fs its bytes take on the wire (+20%%)", slow.AllReduce, wire)
	}
}

// Mixtral on CPU hosts: every rank's expert rows are computed by the
// experts' owners, one request at a time, so the owners' cores bound the
// step; 16 workers of 256 GiB cannot hold the experts, their AdamW state
// and the activations.
func TestTrainMixtral(t *testing.T) {
	cal := testCal()
	small := predict(t, TrainConfig{Shape: TrainMixtral8x22B(), Cal: cal, Cluster: resolve(t, ClusterSpec{Workers: 16})})
	if small.Fits || !strings.HasPrefix(small.Bottleneck, "memory") {
		t.Errorf("16 workers of 256 GiB: fits %v, bottleneck %q; want not fitting (%.0f GiB)", small.Fits, small.Bottleneck, float64(small.Memory.Total())/(1<<30))
	}
	big := predict(t, TrainConfig{Shape: TrainMixtral8x22B(), Cal: cal, Cluster: resolve(t, ClusterSpec{Workers: 16, Memory: "512GiB"})})
	if !big.Fits || !strings.Contains(big.Bottleneck, "expert GEMMs") {
		t.Errorf("16 workers of 512 GiB: fits %v, bottleneck %q; want fitting, bound by the expert GEMMs", big.Fits, big.Bottleneck)
	}
	// 448 experts on 16 workers: 28 each, with their state.
	if want := 28 * TrainMixtral8x22B().ExpertParams() * stateBytes; big.Memory.Experts != want {
		t.Errorf("expert state %d bytes on the fullest worker, want %d", big.Memory.Experts, want)
	}
	if big.OwnerGEMM > big.Step || big.OwnerGEMM < big.Step/2 {
		t.Errorf("busiest owner's expert GEMMs %v of a %v step", big.OwnerGEMM, big.Step)
	}
	// More cores per host: the owners' products run faster.
	fast := predict(t, TrainConfig{Shape: TrainMixtral8x22B(), Cal: cal, Cluster: resolve(t, ClusterSpec{Workers: 16, Memory: "512GiB", Cores: 64})})
	if r := fast.Step.Seconds() / big.Step.Seconds(); r > 0.6 {
		t.Errorf("64 cores instead of 32: step %v -> %v, want about half", big.Step, fast.Step)
	}
}

func TestTrainConfigErrors(t *testing.T) {
	cl := resolve(t, ClusterSpec{Workers: 2})
	for name, c := range map[string]TrainConfig{
		"no calibration":  {Shape: tinyShape(), Cluster: cl},
		"ragged sequence": {Shape: tinyShape(), Cluster: cl, Cal: tinyCal(), TokensPerRank: 48, SeqLen: 32},
		"no cluster":      {Shape: tinyShape(), Cal: tinyCal()},
		"no dtype points": {Shape: tinyShape(), Cluster: cl, Cal: tinyCal(), DType: "bf16-compute", TokensPerRank: 32},
	} {
		if _, err := PredictTrainStep(c); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
