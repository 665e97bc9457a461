package simulate

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"sort"
	"time"
)

// ClusterSpec describes a cluster to simulate: a small file a team writes
// about the machines it means to buy (JSON; `switchyard simulate` reads
// it with --cluster FILE). Zero fields take the documented defaults
// (Defaults).
//
//	{"workers": 64, "frontends": 4, "cores": 32, "memory": "512GiB",
//	 "nic": "25gbit", "latency": "10us", "oversubscription": 3,
//	 "hosts_per_leaf": 16}
type ClusterSpec struct {
	// Workers is the number of expert-serving (or training) hosts.
	Workers int `json:"workers"`
	// Frontends is the number of serving front ends (each on a host of
	// its own, the same kind as a worker's). Default 1.
	Frontends int `json:"frontends,omitempty"`
	// Cores per host. Default 32.
	Cores int `json:"cores,omitempty"`
	// Memory per host, e.g. "512GiB". Default 256GiB.
	Memory string `json:"memory,omitempty"`
	// NIC is each host's network rate each way, e.g. "25gbit". Default
	// 25gbit.
	NIC string `json:"nic,omitempty"`
	// Latency is the one-way latency of a message across the fabric,
	// e.g. "10us". Default 10us.
	Latency string `json:"latency,omitempty"`
	// Oversubscription is the leaf-spine fabric's ratio of host bandwidth
	// under a leaf to the leaf's uplink bandwidth (1: non-blocking).
	// Default 1.
	Oversubscription float64 `json:"oversubscription,omitempty"`
	// HostsPerLeaf is how many hosts share a leaf switch. Default 32.
	HostsPerLeaf int `json:"hosts_per_leaf,omitempty"`
}

// Cluster is a ClusterSpec with its defaults applied and units parsed.
type Cluster struct {
	Workers, Frontends int
	Cores              int
	MemoryBytes        int64
	Rate               float64 // bytes/s each way per host
	Latency            time.Duration
	Oversubscription   float64
	HostsPerLeaf       int
}

// Resolve applies ClusterSpec's defaults and parses its units.
func (s ClusterSpec) Resolve() (Cluster, error) {
	c := Cluster{Workers: s.Workers, Frontends: s.Frontends, Cores: s.Cores,
		Oversubscription: s.Oversubscription, HostsPerLeaf: s.HostsPerLeaf}
	if c.Workers < 1 {
		return c, fmt.Errorf("cluster: workers %d: want at least 1", s.Workers)
	}
	if c.Frontends == 0 {
		c.Frontends = 1
	}
	if c.Cores == 0 {
		c.Cores = 32
	}
	if c.Oversubscription == 0 {
		c.Oversubscription = 1
	}
	if c.HostsPerLeaf == 0 {
		c.HostsPerLeaf = 32
	}
	if c.Frontends < 0 || c.Cores < 0 || c.Oversubscription < 1 || c.HostsPerLeaf < 1 {
		return c, fmt.Errorf("cluster: frontends %d, cores %d, oversubscription %g, hosts_per_leaf %d: want frontends >= 0, cores >= 1, oversubscription >= 1, hosts_per_leaf >= 1",
			s.Frontends, s.Cores, s.Oversubscription, s.HostsPerLeaf)
	}
	var err error
	mem := s.Memory
	if mem == "" {
		mem = "256GiB"
	}
	if c.MemoryBytes, err = ParseBytes(mem); err != nil || c.MemoryBytes <= 0 {
		return c, fmt.Errorf("cluster: memory %q: want e.g. 512GiB", s.Memory)
	}
	nic := s.NIC
	if nic == "" {
		nic = "25gbit"
	}
	if c.Rate, err = ParseRate(nic); err != nil {
		return c, fmt.Errorf("cluster: nic: %w", err)
	}
	lat := s.Latency
	if lat == "" {
		lat = "10us"
	}
	if c.Latency, err = time.ParseDuration(lat); err != nil || c.Latency < 0 {
		return c, fmt.Errorf("cluster: latency %q: want e.g. 10us", s.Latency)
	}
	return c, nil
}

// CrossLeafRate is the rate, bytes/s, one host gets to a host under
// another leaf when every host under its leaf sends off the leaf at once
// (the all-to-all and ring worst case): Rate / Oversubscription. Clusters
// that fit under one leaf never pay it.
func (c Cluster) CrossLeafRate() float64 {
	if c.Workers+c.Frontends <= c.HostsPerLeaf {
		return c.Rate
	}
	return c.Rate / c.Oversubscription
}

// ReadCluster reads a ClusterSpec (JSON, unknown fields refused) and
// resolves it.
func ReadCluster(r io.Reader) (Cluster, error) {
	var s ClusterSpec
	d := json.NewDecoder(r)
	d.DisallowUnknownFields()
	if err := d.Decode(&s); err != nil {
		return Cluster{}, fmt.Errorf("cluster file: %w", err)
	}
	return s.Resolve()
}

// ParseRate reads a link rate such as 25gbit, 100gbit, 500mbit or a
// number of bits/s, returning bytes/s.
func ParseRate(s string) (float64, error) {
	var v float64
	var unit string
	n, _ := fmt.Sscanf(s, "%g%s", &v, &unit)
	mult := 1.0
	switch unit {
	case "gbit", "Gbit", "gbps", "Gbps":
		mult = 1e9
	case "mbit", "Mbit", "mbps", "Mbps":
		mult = 1e6
	case "":
	default:
		n = 0
	}
	if n < 1 || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("rate %q: want e.g. 25gbit, 500mbit or bits/s", s)
	}
	return v * mult / 8, nil
}

// ParseBytes reads a size such as 4GiB, 512MiB, 1.5GB or a number of
// bytes.
func ParseBytes(s string) (int64, error) {
	var v float64
	var unit string
	n, _ := fmt.Sscanf(s, "%g%s", &v, &unit)
	mult := map[string]float64{"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
		"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
	if n < 1 || mult == 0 || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("size %q: want e.g. 512MiB, 4GiB", s)
	}
	return int64(v * mult), nil
}

// Calibration is what `simulate calibrate` measured on a real machine
// with the real kernels and transports (JSON). The serving and training
// models take their compute and software costs from it; a cluster file
// gives the hardware.
type Calibration struct {
	// CPU is the model name of the machine measured, Cores its cores, and
	// When the time (RFC 3339) the calibration ran.
	CPU   string `json:"cpu"`
	Cores int    `json:"cores"`
	When  string `json:"when"`
	// GEMM is the measured throughput of the matrix kernels, one entry per
	// shape, dtype and thread count.
	GEMM []GEMMPoint `json:"gemm"`
	// MemBandwidth is one core's streaming read bandwidth, bytes/s (a
	// decode GEMV's bound).
	MemBandwidth float64 `json:"mem_bandwidth"`
	// MsgCPU is the CPU time, per message and per side, of the expert
	// exchange's transport (one request/answer costs 2 on each side);
	// MsgBytesPerS the per-byte copy cost of a payload on either side.
	MsgCPU       time.Duration `json:"msg_cpu_ns"`
	MsgBytesPerS float64       `json:"msg_bytes_per_s"`
	// MsgCPUWork is the core time (user + system over every thread,
	// getrusage) the one-row loopback round trips used, per message and
	// side, where MsgCPU is its part of the round trip's latency: reported
	// for comparison with LinkMsgCPU; no model reads it (the models take
	// a message's core time from LinkMsgCPU, measured across a link).
	MsgCPUWork time.Duration `json:"msg_cpu_work_ns,omitempty"`
	// ExchangeRTT is a whole expert-exchange round trip to one owner on
	// loopback with nothing computed (client + server software, both
	// ways), the floor of a layer's exchange.
	ExchangeRTT time.Duration `json:"exchange_rtt_ns"`
	// LinkRate (bytes/s) and LinkRTT are what the calibration measured of
	// the link it ran on (raw TCP), when it ran on one; 0 otherwise.
	LinkRate float64       `json:"link_rate,omitempty"`
	LinkRTT  time.Duration `json:"link_rtt_ns,omitempty"`
	// LinkMsgCPU and LinkByteCPU are the core time the expert exchange's
	// messages took across that link on both hosts (getrusage of both
	// processes, kernel included): per message and side, and per byte and
	// side (ns/B) of a large payload's extra; LinkExchangeRTT a one-row
	// round trip across it. The models charge them where hosts share
	// cores (TrainConfig.SharedCores). 0: not measured.
	LinkMsgCPU      time.Duration `json:"link_msg_cpu_ns,omitempty"`
	LinkByteCPU     float64       `json:"link_byte_cpu_ns,omitempty"`
	LinkExchangeRTT time.Duration `json:"link_exchange_rtt_ns,omitempty"`
	// LinkIdleExchangeRTT is that round trip when both processes have
	// idled 5 ms before it (a message waking a sleeping receiver); the
	// serving and training models add Wake to each message that finds
	// its one-thread receiver idle (a shared pool with one thread a
	// process). 0: not measured.
	LinkIdleExchangeRTT time.Duration `json:"link_idle_exchange_rtt_ns,omitempty"`
	// LinkRingByteCPU is the core time per byte and side (ns/B) of
	// pkg/collective's ring all-reduce across that link, both hosts
	// (internal/simcal.MeasureRingCPU): the training model charges it to
	// the gradient buckets' ring messages, whose handling (lanes, float32
	// sums) costs a byte differently from the expert exchange's
	// (LinkByteCPU; on a Zen 5 VM the exchange's figure made the
	// all-reduce wait 46-81% long). 0: not measured (the ring takes
	// LinkByteCPU).
	LinkRingByteCPU float64 `json:"link_ring_byte_cpu_ns,omitempty"`
	// AdamParamsPerS is optim.AdamW's step on one core, parameters/s (it
	// computes each element in float64: compute-bound where memory
	// bandwidth is not); 0 when not measured (the training model then
	// takes the optimizer as bound by memory bandwidth alone).
	AdamParamsPerS float64 `json:"adam_params_per_s,omitempty"`
	// Train are one-rank training steps of real models measured in one
	// process (`simulate calibrate --train-model`); the training model
	// takes its compute from the one matching its prediction.
	Train []TrainProfile `json:"train,omitempty"`
	// Expert is one routed expert's SwiGLU block (expert.FFN.Forward)
	// timed over a range of rows on one thread (`simulate calibrate
	// --expert HIDDENxINTER`), its weights streamed from memory: the
	// serving model's expert cost by rows where the shape matches
	// (ExpertTime), in place of the GEMM points' constant throughput. On
	// a Zen 5 VM it rose 0.66, 0.85, 1.25, 1.48 ms over 1 to 4 rows and
	// stayed at 2.5-3.0 ms from 10 to 24 (past 8 rows the products
	// switch from the skinny kernels to packed panels), where the GEMM
	// point of 3 rows scaled to 12 would say 4.4.
	Expert []ExpertPoint `json:"expert,omitempty"`
	// ShareProduct is a routed expert's product of ShareRows rows (the
	// Expert curve's shape) measured as a worker of a shared machine
	// computes it: in one of ShareProcs one-thread processes side by
	// side, each woken by a message to compute a few products
	// (internal/simcal.MeasureSharing: real processes, the real kernel,
	// loopback sockets; `simulate calibrate --expert HxF --share-procs
	// N`), its process's core time; WakeWork the core time a wake from
	// idle adds to a message's handling (the Go runtime's and the
	// kernel's part). The serving model's serial pool
	// (ServeConfig.SharedCores, one thread a process) scales every
	// process's compute (the workers' products, the front end's layers)
	// by ShareProduct over its own cost of that product, and charges
	// WakeWork to each message that finds its receiver idle. 0: not
	// measured.
	ShareProcs   int           `json:"share_procs,omitempty"`
	ShareRows    int           `json:"share_rows,omitempty"`
	ShareProduct time.Duration `json:"share_product_ns,omitempty"`
	WakeWork     time.Duration `json:"wake_work_ns,omitempty"`
}

// ExpertPoint is one routed expert (Hidden x Inter weights of DType) over
// Rows rows on one thread: Seconds per call.
type ExpertPoint struct {
	Hidden  int     `json:"hidden"`
	Inter   int     `json:"inter"`
	DType   string  `json:"dtype"`
	Rows    int     `json:"rows"`
	Seconds float64 `json:"seconds"`
}

// ExpertTime is one expert of hidden x inter weights of dtype over rows
// rows on one thread from c.Expert: linear between the measured rows
// around it, the first point's time below them, and the last point's time
// per row above them. ok is false when c has no point of that shape.
func (c *Calibration) ExpertTime(hidden, inter int, dtype string, rows int) (d time.Duration, ok bool) {
	var pts []ExpertPoint
	for _, p := range c.Expert {
		if p.Hidden == hidden && p.Inter == inter && p.DType == dtype && p.Rows > 0 && p.Seconds > 0 {
			pts = append(pts, p)
		}
	}
	if len(pts) == 0 || rows <= 0 {
		return 0, false
	}
	slices.SortFunc(pts, func(a, b ExpertPoint) int { return a.Rows - b.Rows })
	sec := func(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }
	if rows <= pts[0].Rows {
		return sec(pts[0].Seconds), true
	}
	for i := 1; i < len(pts); i++ {
		a, b := pts[i-1], pts[i]
		if rows <= b.Rows {
			f := float64(rows-a.Rows) / float64(b.Rows-a.Rows)
			return sec(a.Seconds + f*(b.Seconds-a.Seconds)), true
		}
	}
	last := pts[len(pts)-1]
	return sec(last.Seconds * float64(rows) / float64(last.Rows)), true
}

// TrainProfile is one rank's training step of a real model measured in
// one process (internal/simcal.ProfileTrain): TokensPerRank tokens in
// sequences of SeqLen through the model of Shape (its Name empty) on
// Threads threads, every routed expert in process, no message. The times
// are means over Steps steps of train.StepTimes' parts (since 2026-12-07
// the median one of several runs of consecutive steps, TimedSteps timed
// in all; before, every timed step): Forward and Backward the
// dense part (attention, norms, router, shared expert, head, loss: every
// call's software and element-wise work with the products),
// ExpertsForward and ExpertsBackward the routed experts, Optimizer the
// clipping and AdamW over Params parameters; Step the whole step and CPU
// the process's core time per step. Timed is the wall time of the loop
// that timed all TimedSteps steps (their batches drawn between them; zero
// in profiles written before 2026-12-07's twenty-ninth session).
type TrainProfile struct {
	Model           string        `json:"model"`
	Shape           TrainShape    `json:"shape"`
	TokensPerRank   int           `json:"tokens_per_rank"`
	SeqLen          int           `json:"seq_len"`
	Threads         int           `json:"threads"`
	Steps           int           `json:"steps"`
	TimedSteps      int           `json:"timed_steps,omitempty"`
	Timed           time.Duration `json:"timed_ns,omitempty"`
	Forward         time.Duration `json:"forward_ns"`
	Backward        time.Duration `json:"backward_ns"`
	ExpertsForward  time.Duration `json:"experts_forward_ns"`
	ExpertsBackward time.Duration `json:"experts_backward_ns"`
	Optimizer       time.Duration `json:"optimizer_ns"`
	Step            time.Duration `json:"step_ns"`
	CPU             time.Duration `json:"cpu_ns"`
	Params          int64         `json:"params"`
}

// Bracket is the mean of two profiles of the same step (p taken before a
// measured run, q after it), step for step weighted by each one's timed
// steps: a drift of the machine's speed over the run cancels to first
// order. It fails when q profiles another shape, token count, sequence
// length or thread count.
func (p TrainProfile) Bracket(q TrainProfile) (TrainProfile, error) {
	a, b := p, q
	a.Shape.Name, b.Shape.Name = "", ""
	if a.TokensPerRank != b.TokensPerRank || a.SeqLen != b.SeqLen || a.Threads != b.Threads || a.Params != b.Params || !reflect.DeepEqual(a.Shape, b.Shape) {
		return p, fmt.Errorf("simulate: profiles of different steps (%s: %d tokens, seq %d, %d threads; %s: %d tokens, seq %d, %d threads)",
			p.Model, p.TokensPerRank, p.SeqLen, p.Threads, q.Model, q.TokensPerRank, q.SeqLen, q.Threads)
	}
	if p.Steps < 1 || q.Steps < 1 {
		return p, fmt.Errorf("simulate: a profile of %d and one of %d steps: want at least one each", p.Steps, q.Steps)
	}
	n := time.Duration(p.Steps + q.Steps)
	mean := func(x, y time.Duration) time.Duration {
		return (x*time.Duration(p.Steps) + y*time.Duration(q.Steps)) / n
	}
	r := p
	r.Steps, r.TimedSteps, r.Timed = p.Steps+q.Steps, p.TimedSteps+q.TimedSteps, p.Timed+q.Timed
	r.Forward, r.Backward = mean(p.Forward, q.Forward), mean(p.Backward, q.Backward)
	r.ExpertsForward, r.ExpertsBackward = mean(p.ExpertsForward, q.ExpertsForward), mean(p.ExpertsBackward, q.ExpertsBackward)
	r.Optimizer, r.Step, r.CPU = mean(p.Optimizer, q.Optimizer), mean(p.Step, q.Step), mean(p.CPU, q.CPU)
	return r, nil
}

// RingByteCPU is the gradient ring's core time per byte and side across
// the link, ns/B: LinkRingByteCPU where measured, else LinkByteCPU.
func (c *Calibration) RingByteCPU() float64 {
	if c.LinkRingByteCPU > 0 {
		return c.LinkRingByteCPU
	}
	return c.LinkByteCPU
}

// Wake is what a message waits when its one-thread receiver is asleep:
// half the excess of LinkIdleExchangeRTT over LinkExchangeRTT (a round
// trip wakes both ends once); 0 where either was not measured.
func (c *Calibration) Wake() time.Duration {
	if c.LinkIdleExchangeRTT > c.LinkExchangeRTT && c.LinkExchangeRTT > 0 {
		return (c.LinkIdleExchangeRTT - c.LinkExchangeRTT) / 2
	}
	return 0
}

// TrainProfile returns the profile of shape (its Name ignored) at tokens
// per rank, sequence length and threads, or nil.
func (c *Calibration) TrainProfile(shape TrainShape, tokens, seqLen, threads int) *TrainProfile {
	shape.Name = ""
	for i := range c.Train {
		p := &c.Train[i]
		if p.TokensPerRank == tokens && p.SeqLen == seqLen && p.Threads == threads && reflect.DeepEqual(p.Shape, shape) {
			return p
		}
	}
	return nil
}

// GEMMPoint is one measured kernel throughput: an (M x K) x (K x N)
// product (M tokens, K input features, N output features) in DType
// ("f32", "bf16" weights with f32 activations, "bf16-compute") on Threads
// threads.
type GEMMPoint struct {
	M, K, N int
	DType   string  `json:"dtype"`
	Threads int     `json:"threads"`
	FLOPS   float64 `json:"flops"` // 2*M*K*N / seconds
}

// ReadCalibration reads a Calibration (JSON).
func ReadCalibration(r io.Reader) (*Calibration, error) {
	var c Calibration
	d := json.NewDecoder(r)
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return nil, fmt.Errorf("calibration file: %w", err)
	}
	if len(c.GEMM) == 0 {
		return nil, fmt.Errorf("calibration file: no GEMM points")
	}
	return &c, nil
}

// GEMMTime returns the predicted time of an (m x k) x (k x n) product of
// dtype on threads threads: the measured throughput of the nearest point
// of that dtype (by log-distance in M, then K*N; threads scale the
// nearest thread count's throughput linearly, the assumption a machine
// with more cores than the calibration's needs) applied to 2*m*k*n.
func (c *Calibration) GEMMTime(m, k, n int, dtype string, threads int) (time.Duration, error) {
	if m <= 0 || k <= 0 || n <= 0 {
		return 0, nil
	}
	pts := make([]GEMMPoint, 0, len(c.GEMM))
	for _, p := range c.GEMM {
		if p.DType == dtype && p.FLOPS > 0 {
			pts = append(pts, p)
		}
	}
	if len(pts) == 0 {
		return 0, fmt.Errorf("calibration: no GEMM points of dtype %q", dtype)
	}
	dist := func(p GEMMPoint) float64 {
		dm := math.Log(float64(p.M) / float64(m))
		dkn := math.Log(float64(p.K*p.N) / float64(k*n))
		dt := math.Log(float64(max(p.Threads, 1)) / float64(max(threads, 1)))
		return 4*dm*dm + dkn*dkn + 0.1*dt*dt
	}
	sort.SliceStable(pts, func(i, j int) bool { return dist(pts[i]) < dist(pts[j]) })
	p := pts[0]
	flops := p.FLOPS * float64(max(threads, 1)) / float64(max(p.Threads, 1))
	return time.Duration(2 * float64(m) * float64(k) * float64(n) / flops * float64(time.Second)), nil
}
