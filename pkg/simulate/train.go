package simulate

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/switchyard/switchyard/pkg/allreduce"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/placement"
)

// TrainShape is the model a training-step prediction trains: the sizes
// that decide its compute, its exchange and its memory. (The serving model
// will have its own MoE shape; the two should be unified into one.)
type TrainShape struct {
	Name string
	// Layers is the decoder's layer count; the first DenseLayers of them
	// have a dense MLP of DenseInter features, the rest routed experts.
	Layers, DenseLayers int
	Hidden, Vocab       int
	// Tied: the head shares the embeddings (one matrix, not two).
	Tied bool
	// Heads query heads and KVHeads key-value heads, QKDim and VDim wide
	// each (per head): the attention's T x T products per sequence.
	Heads, KVHeads, QKDim, VDim int
	// AttnProj are the (in, out) features of each projection of a layer's
	// attention, in order (GQA: q, k, v, o; MLA: its low-rank pairs and o).
	AttnProj   [][2]int
	DenseInter int
	// Experts routed experts per MoE layer, TopK per token, ExpertInter
	// the intermediate features of each (SwiGLU: gate, up [F, D], down [D, F]).
	Experts, TopK, ExpertInter int
	// SharedInter is the intermediate width of the MoE layers' shared
	// expert(s), replicated with the dense weights (0: none).
	SharedInter int
}

// TrainMixtral8x22B is Mixtral-8x22B: 56 layers of hidden 6144, 48 query
// and 8 key-value heads of 128, 8 experts of 16384 top-2, vocabulary
// 32768, untied head. 140.6 B parameters, 39.2 B active per token; 5.34 B
// of them dense (replicated and all-reduced), 302 M per routed expert.
func TrainMixtral8x22B() TrainShape {
	d := 6144
	return TrainShape{
		Name: "mixtral-8x22b", Layers: 56, Hidden: d, Vocab: 32768,
		Heads: 48, KVHeads: 8, QKDim: 128, VDim: 128,
		AttnProj: [][2]int{{d, 48 * 128}, {d, 8 * 128}, {d, 8 * 128}, {48 * 128, d}},
		Experts:  8, TopK: 2, ExpertInter: 16384,
	}
}

// TrainDeepSeekV3 is DeepSeek-V3: 61 layers of hidden 7168 (the first 3
// dense, intermediate 18432), MLA attention (128 heads; q rank 1536, kv
// rank 512, 128+64 query/key and 128 value features per head), 256 routed
// experts of 2048 top-8 and one shared expert of 2048, vocabulary 129280.
// 671 B parameters, 37 B active. The multi-token-prediction module is
// left out.
func TrainDeepSeekV3() TrainShape {
	d, h := 7168, 128
	return TrainShape{
		Name: "deepseek-v3", Layers: 61, DenseLayers: 3, Hidden: d, Vocab: 129280,
		Heads: h, KVHeads: h, QKDim: 192, VDim: 128,
		AttnProj:   [][2]int{{d, 1536}, {1536, h * 192}, {d, 512 + 64}, {512, h * (128 + 128)}, {h * 128, d}},
		DenseInter: 18432,
		Experts:    256, TopK: 8, ExpertInter: 2048, SharedInter: 2048,
	}
}

// TrainShapeByName returns the preset named name (mixtral-8x22b,
// deepseek-v3).
func TrainShapeByName(name string) (TrainShape, error) {
	switch name {
	case "mixtral-8x22b":
		return TrainMixtral8x22B(), nil
	case "deepseek-v3":
		return TrainDeepSeekV3(), nil
	}
	return TrainShape{}, fmt.Errorf("simulate: model %q: want mixtral-8x22b or deepseek-v3", name)
}

// MoELayers is the number of layers with routed experts.
func (s TrainShape) MoELayers() int { return s.Layers - s.DenseLayers }

// ExpertParams is one routed expert's parameters (three matrices).
func (s TrainShape) ExpertParams() int64 { return 3 * int64(s.Hidden) * int64(s.ExpertInter) }

// layerDense is the dense parameters of layer l (every rank's replica:
// attention, the two norms, a dense MLP or the router and shared expert).
func (s TrainShape) layerDense(l int) int64 {
	d := int64(s.Hidden)
	n := 2 * d
	for _, p := range s.AttnProj {
		n += int64(p[0]) * int64(p[1])
	}
	if l < s.DenseLayers {
		return n + 3*d*int64(s.DenseInter)
	}
	return n + int64(s.Experts)*d + 3*d*int64(s.SharedInter)
}

// headDense is the final norm and the head (part L of the gradients),
// embedDense the embeddings (part -1; none when tied).
func (s TrainShape) headDense() int64 { return int64(s.Hidden) + int64(s.Vocab)*int64(s.Hidden) }
func (s TrainShape) embedDense() int64 {
	if s.Tied {
		return 0
	}
	return int64(s.Vocab) * int64(s.Hidden)
}

// DenseParams is the parameters every data-parallel rank holds and
// all-reduces: embeddings, head, attention, norms, routers, dense MLPs and
// shared experts.
func (s TrainShape) DenseParams() int64 {
	n := s.headDense() + s.embedDense()
	for l := 0; l < s.Layers; l++ {
		n += s.layerDense(l)
	}
	return n
}

// TotalParams is every parameter; ActiveParams those one token uses.
func (s TrainShape) TotalParams() int64 {
	return s.DenseParams() + int64(s.MoELayers()*s.Experts)*s.ExpertParams()
}

// ActiveParams is the parameters one token's forward uses (the dense ones,
// the head once, and TopK experts per MoE layer).
func (s TrainShape) ActiveParams() int64 {
	return s.DenseParams() - s.embedDense() + int64(s.MoELayers()*s.TopK)*s.ExpertParams()
}

// TrainConfig is one training-step prediction: data parallel over every
// worker of the cluster (one rank per worker, each with TokensPerRank
// tokens of the global batch) and expert parallel over the same workers
// (each routed expert on one worker, placed by pkg/placement with R = 1
// under the workers' memory), as `switchyard train` runs on a cluster.
// Zero fields take the documented defaults.
type TrainConfig struct {
	Shape   TrainShape
	Cluster Cluster
	Cal     *Calibration
	// TokensPerRank is each rank's micro-batch, tokens (default 4096), in
	// sequences of SeqLen tokens (default 1024, at most TokensPerRank; attention is SeqLen^2 per
	// sequence and head, its probabilities kept for the backward).
	TokensPerRank, SeqLen int
	// DType is the Calibration GEMM dtype the products run in: "f32" (the
	// default: training holds float32 weights) or "bf16-compute"
	// (`--compute bf16`). The router is float32 either way.
	DType string
	// WireBF16 all-reduces the gradients as bf16 on the wire (half the
	// bytes); default float32.
	WireBF16 bool
	// BucketBytes is the gradient all-reduce bucket (default 25 MiB, the
	// DistStepper's); ChunkBytes and SmallBytes the collective's chunk
	// (default 1 MiB) and recursive-doubling threshold (default
	// allreduce.DefaultSmallBytes).
	BucketBytes, ChunkBytes, SmallBytes int
	// HostMemBandwidth is one host's memory bandwidth, bytes/s, that the
	// optimizer streams at (default: Cal.MemBandwidth x Cores, at most
	// DefaultHostMemBandwidth).
	HostMemBandwidth float64
	// Burst > 0 makes each direction of every interface a token bucket of
	// Burst bytes refilled at the link's rate, as tc tbf shapes the
	// emulated links (Host.Burst; scripts/netns/cluster.sh: max(rate/250,
	// 64 KiB)): messages the bucket covers pass at once. The buckets start
	// full (the links idled before the step). 0: plain links (real NICs).
	Burst int
	// SharedCores > 0 runs every host on one pool of that many cores, as
	// the emulated cluster of network namespaces shares one machine's
	// (Machine.SharedCores for the all-reduce): every rank's own products,
	// every expert server's products and every message's software are
	// tasks on the one pool, shared by generalized processor sharing (a
	// product may use up to Cluster.Cores threads, a message's software
	// one; when more is asked than the pool has, each task gets an equal
	// share, a narrower task's unused share going to the others). The
	// bucket all-reduces are timed on a Machine of the same SharedCores
	// (their own messages contend with each other there, not with the
	// products). With Cluster.Cores = 1 (every process one thread, as
	// the emulated cluster runs them) the model is serial instead
	// (trainSim.serial): each process's work runs on its one thread, the
	// pool's cores run each task to its end in the order tasks became
	// ready, and an idle receiver first wakes. 0: each host has
	// Cluster.Cores cores of its own (a real cluster). A one-rank step is
	// the same either way where SharedCores >= Cluster.Cores.
	SharedCores int
}

// DefaultHostMemBandwidth caps the default host memory bandwidth:
// ASSUMED, two thirds of the ~300 GB/s peak of a socket with 8 DDR5
// channels (a calibration measures one core, not a whole socket).
const DefaultHostMemBandwidth = 200e9

// Bytes per parameter of training state: float32 weights (the master
// copy; training keeps no lower-precision copy), a float32 gradient and
// AdamW's two float32 moments. The optimizer streams adamBytes per
// parameter: it reads the weight, gradient and moments and writes the
// weight and moments.
const (
	stateBytes = 16
	adamBytes  = 28
)

// TrainMemory is one worker's training memory, bytes.
type TrainMemory struct {
	// Dense is the replica's weights, gradients and AdamW moments
	// (stateBytes per dense parameter), Experts the same for the routed
	// experts it owns.
	Dense, Experts int64
	// Activations is what its own forward keeps for the backward (per
	// token and layer: the residual stream and norm inputs, the attention
	// projections before and after RoPE/norm, the attention output, the
	// T x T probabilities per head, the router's logits and the experts'
	// outputs; plus the head's logits), ExpertActivations what its experts
	// keep for every rank's rows between their forward and backward
	// (input row, gate, up and their product: D + 3F floats per row).
	Activations, ExpertActivations int64
}

// Total is the sum of the parts.
func (m TrainMemory) Total() int64 { return m.Dense + m.Experts + m.Activations + m.ExpertActivations }

// TrainPrediction is one predicted training step. Forward, Backward,
// ExchangeWait, AllReduceWait, Optimizer and Barrier mean what
// train.StepTimes's parts mean (disjoint; averaged over the ranks, whose
// steps all end at the barrier, so they sum to Step): Forward and Backward
// the rank's own compute (queueing behind expert requests on its host
// included), ExchangeWait the routed experts through the executor (local
// ones included), AllReduceWait the statistics and gradient-norm
// all-to-alls and the wait for the bucketed gradient all-reduce after the
// backward, Optimizer AdamW over the dense replica and the own experts,
// Barrier the end-of-step barrier.
type TrainPrediction struct {
	N                                                                  int // ranks = workers
	Tokens                                                             int // tokens per step (N x TokensPerRank)
	Step                                                               time.Duration
	Forward, Backward, ExchangeWait, AllReduceWait, Optimizer, Barrier time.Duration
	// Other is the work outside those parts, before the forward: with a
	// TrainProfile, its step less its parts (zeroing the gradients and
	// the statistics' sums); else 0.
	Other time.Duration
	// TokensPerS is Tokens / Step.
	TokensPerS float64
	// Owners is how many workers own experts. What the busiest host used
	// of each resource during the step: HostCompute its products (its
	// rank's and the expert rows it served; at the full rate), OwnerGEMM
	// the expert rows it served, NIC the busiest direction of its
	// interface (exchange and all-reduce), ExchangeNIC that of the
	// exchange alone, MsgCPU its per-message software divided by its
	// cores.
	Owners                                           int
	HostCompute, OwnerGEMM, NIC, ExchangeNIC, MsgCPU time.Duration
	// CPU is the core time the step's modeled work takes over all hosts:
	// every product (own and served) on Cluster.Cores threads and every
	// exchange message's software (the all-reduces' and all-to-alls'
	// message costs left out).
	CPU time.Duration
	// Straggle is the part of AllReduceWait spent waiting for the slowest
	// rank rather than for the network (mean over ranks): for the last
	// rank's forward at the statistics all-to-all, and for the last
	// rank's backward, whose buckets every all-reduce needs.
	Straggle time.Duration
	// AllReduce is the gradient all-reduce from its first bucket's start
	// to its last bucket's end (most of it overlaps the backward),
	// AllReduceBytes what it summed per rank (float32).
	AllReduce      time.Duration
	AllReduceBytes int64
	// Memory is the worker needing the most; Fits whether it fits the
	// cluster's memory per host (if not, the placement ignored the
	// budgets and the times are what the step would take with enough).
	Memory TrainMemory
	Fits   bool
	// Bottleneck names what limits the step.
	Bottleneck string
}

// Compute is the ranks' own compute, forward and backward.
func (p TrainPrediction) Compute() time.Duration { return p.Forward + p.Backward }

// PredictTrainStep predicts one training step with a discrete-event model
// of the code's schedule (pkg/train's DistStepper, pkg/transport's
// RemoteTrainer and ExpertServer, pkg/collective):
//
//   - Each host has one compute resource (the products run one at a time
//     on all its cores: its rank's own dense products and the expert
//     requests its ExpertServer serves, first come first served, as the
//     server's one GEMM goroutine runs training requests one at a time),
//     a pool of Cores cores for per-message software, and a network
//     interface of Rate each way (CrossLeafRate to hosts under another
//     leaf).
//   - Forward, per layer: attention and router products (Calibration's
//     GEMMTime for each shape, f32 on Cores threads; the per-head T x T
//     products single-threaded, Cores at a time); then the expert exchange:
//     one request per owner of the layer's experts with the rank's rows
//     for them (routing assumed balanced: TokensPerRank x TopK / Experts
//     rows per expert), each message costing MsgCPU + bytes/MsgBytesPerS
//     on a core of the sender and of the receiver, the sender's interface
//     for bytes/rate, the latency and the receiver's interface; the owner
//     runs the three SwiGLU products of each of its experts; the answer
//     (the same bytes) comes back the same way; the rank's own experts
//     are computed in process (SetLocal: no socket). Then the shared
//     expert. After the last layer, the head; then the statistics
//     all-to-all, which every rank waits for.
//   - Backward: twice the forward's products, layer by layer in reverse,
//     with the same exchange (dy out, dx back). Each layer's dense
//     gradients are final after its attention backward; they are queued
//     in buckets of at least BucketBytes (whole parts, as DistStepper
//     groups them) to one all-reduce at a time, which starts once every
//     rank queued the bucket and the previous bucket ended, takes
//     PredictAllReduce's time (the ring's closed form for big rings) and
//     moves its bytes through every interface, shared first come first
//     served with the exchange in pieces of 16 MiB.
//   - Then the gradient-norm all-to-all, AdamW over the dense replica and
//     the own experts (adamBytes per parameter at the host's memory
//     bandwidth, or Calibration.AdamParamsPerS per core where that is
//     slower), and the barrier (an all-to-all of empty messages).
//
// Where the calibration has a TrainProfile of the same shape, tokens per
// rank, sequence length and threads (Calibration.TrainProfile), the
// products are scaled to its measured parts (dense forward, experts'
// forward), the backward to its measured ratios and the optimizer to its
// time per parameter, and its remainder runs before each rank's forward
// (TrainPrediction.Other): each call's software and the element-wise work
// are then in. On a SharedCores pool with the link's core time calibrated
// (Calibration.LinkMsgCPU), every message side, each all-to-all (sends,
// then once every rank sent, receives), each bucket's ring (4(n-1) sides a
// rank beside its wire time) and the optimizer are tasks on the pool.
//
// Not modeled: element-wise work without a profile (norms, softmax, SiLU,
// residuals, embeddings: 4% of a measured single-process step of a larger
// model, bench/results/train.txt), routing skew, the message software
// competing with the products for cores (except on a SharedCores pool),
// and TCP's fair sharing (interfaces serve whole messages in order).
func PredictTrainStep(c TrainConfig) (TrainPrediction, error) {
	if err := c.defaults(); err != nil {
		return TrainPrediction{}, err
	}
	s := newTrainSim(c)
	if err := s.prepare(); err != nil {
		return TrainPrediction{}, err
	}
	s.run()
	return s.result(), nil
}

func (c *TrainConfig) defaults() error {
	if c.Cal == nil {
		return errors.New("simulate: train: no calibration")
	}
	if c.TokensPerRank == 0 {
		c.TokensPerRank = 4096
	}
	if c.SeqLen == 0 {
		c.SeqLen = min(1024, c.TokensPerRank)
	}
	if c.DType == "" {
		c.DType = "f32"
	}
	if c.BucketBytes == 0 {
		c.BucketBytes = 25 << 20
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = 1 << 20
	}
	if c.SmallBytes == 0 {
		c.SmallBytes = allreduce.DefaultSmallBytes
	}
	cl := c.Cluster
	if c.HostMemBandwidth == 0 {
		c.HostMemBandwidth = min(c.Cal.MemBandwidth*float64(cl.Cores), DefaultHostMemBandwidth)
	}
	sh := c.Shape
	var errs []error
	if cl.Workers < 1 || cl.Cores < 1 || cl.Rate <= 0 || cl.HostsPerLeaf < 1 || cl.Oversubscription < 1 {
		errs = append(errs, fmt.Errorf("cluster: %d workers, %d cores, rate %g B/s, %d hosts per leaf, oversubscription %g (resolve a ClusterSpec)",
			cl.Workers, cl.Cores, cl.Rate, cl.HostsPerLeaf, cl.Oversubscription))
	}
	if c.TokensPerRank < 1 || c.SeqLen < 1 || c.TokensPerRank%c.SeqLen != 0 {
		errs = append(errs, fmt.Errorf("tokens per rank %d, sequence length %d: want a positive multiple of the sequence length", c.TokensPerRank, c.SeqLen))
	}
	if sh.Layers < 1 || sh.Hidden < 1 || sh.Vocab < 1 || sh.Heads < 1 || len(sh.AttnProj) == 0 || sh.DenseLayers < 0 || sh.DenseLayers > sh.Layers ||
		(sh.MoELayers() > 0 && (sh.Experts < 1 || sh.TopK < 1 || sh.TopK > sh.Experts || sh.ExpertInter < 1)) {
		errs = append(errs, fmt.Errorf("model shape %q is incomplete", sh.Name))
	}
	if c.Cal.MsgBytesPerS <= 0 || c.Cal.MemBandwidth <= 0 || c.Cal.MsgCPU < 0 || c.HostMemBandwidth <= 0 {
		errs = append(errs, fmt.Errorf("calibration: msg_bytes_per_s %g, mem_bandwidth %g, msg_cpu %v: want positive rates", c.Cal.MsgBytesPerS, c.Cal.MemBandwidth, c.Cal.MsgCPU))
	}
	if c.SharedCores < 0 || c.Burst < 0 {
		errs = append(errs, fmt.Errorf("shared cores %d, burst %d: want >= 0", c.SharedCores, c.Burst))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("simulate: train: %w", err)
	}
	return nil
}

// trainSim is one step's simulation.
type trainSim struct {
	c     TrainConfig
	n     int
	q     eventQueue
	hosts []trainHost
	ranks []trainRank

	// Products, per layer (forward; the backward takes twice as long).
	attn   []time.Duration // attention, norms' products, router: before the exchange
	shared []time.Duration // shared expert (after the exchange) or dense MLP
	head   time.Duration
	// owners[l] lists the hosts owning experts of MoE layer l with the
	// time of one rank's request (forward) and its bytes.
	owners [][]ownerReq
	// buckets of the gradient all-reduce, in the order they are queued.
	buckets   []trainBucket
	trigger   map[int]int // part -> the bucket its OnGrads queues
	arNext    int         // next bucket to run
	arFree    time.Duration
	arFirst   time.Duration
	arEnd     time.Duration
	arBytes   int64
	statsA2A  time.Duration // the statistics all-to-all
	normA2A   time.Duration // the gradient-norm all-to-all
	barrier   time.Duration
	fwdIn     int // ranks done with the forward
	fwdLast   time.Duration
	bwdIn     int
	optTime   []time.Duration // per host
	arRunning bool
	done      bool
	stepEnd   time.Duration
	memory    []TrainMemory
	fits      bool
	nOwners   int
	// pool is the one pool of cores every host runs on (SharedCores > 0).
	pool *sharedPool
	// bwd and exBwd are the backward's time over the forward's, of the
	// rank's own products and of the experts' (2: twice the products;
	// a TrainProfile's measured ratios); other is each rank's work outside
	// the parts (a TrainProfile's step less its parts: zeroing and summing
	// the gradients), run before its forward.
	bwd, exBwd float64
	other      time.Duration
	// prof is the TrainProfile the products are scaled to (nil: the GEMM
	// calibration alone).
	prof *TrainProfile
	// The all-to-alls as tasks on the pool (linkWork; else nil, and the
	// closed forms statsA2A, normA2A and barrier apply).
	statsA, normA, barrierA *a2a
	// fifo, in the serial model (every process one thread on the shared
	// pool: SharedCores > 0 and Cluster.Cores = 1, GOMAXPROCS=1 as the
	// emulated cluster runs), is the pool's cores as it runs them (nil:
	// not serial; see serial). A process does one thing at a time
	// (procThread), and a message that finds its receiver's thread idle
	// first waits wake (Calibration.Wake), as serving's serial model does.
	fifo *fifoPool
	wake time.Duration
}

// a2a is one all-to-all on the pool (linkWork): each rank's n-1 sends
// from when it enters, then, once every rank sent, the latency and each
// rank's n-1 receives; then(r, t) when rank r has every message.
type a2a struct {
	bytes int
	sent  int
	last  time.Duration
	then  func(r int, t time.Duration)
}

// enterA2A is rank r entering a at t.
func (s *trainSim) enterA2A(a *a2a, r int, t time.Duration) {
	d, w := s.sideCost(a.bytes, s.n-1)
	s.wideWork(r, t, d, w, false, func(t time.Duration) {
		a.last = max(a.last, t)
		if a.sent++; a.sent < s.n {
			return
		}
		at := a.last + s.c.Cluster.Latency + rate((s.n-1)*a.bytes, s.c.Cluster.CrossLeafRate())
		for r := range s.n {
			s.q.at(at, func(t time.Duration) {
				s.wideWork(r, t, d, w, true, func(t time.Duration) { a.then(r, t) })
			})
		}
	})
}

type trainHost struct {
	cpu    cpu
	msg    core
	tx, rx bucket
	leaf   int
	// What the step used: served expert products, exchange bytes through
	// each direction of the interface, message software.
	expertBusy   time.Duration
	denseBusy    time.Duration
	arBusy       time.Duration // the gradient all-reduce, each direction
	txBusy       time.Duration
	rxBusy       time.Duration
	msgBusy      time.Duration
	ownedExperts int
	// served queues the expert server's requests (SharedCores).
	served []pooled
	// thread is the process's one thread (trainSim.serial).
	thread procThread
}

// procThread is a process's one thread in the serial model: its tasks
// (the rank's products, the expert server's, every message side's own
// part) run one at a time, in the order they became ready.
type procThread struct {
	busy  bool
	queue []threadTask
}

type threadTask struct {
	d     time.Duration // on one core
	extra float64       // kernel work beside it (message sides): extra x d of core time, one task on the pool
	then  func(time.Duration)
}

type pooled struct {
	d    time.Duration
	then func(time.Duration)
}

type trainRank struct {
	start, fwdEnd, sync, bwdEnd, normEnd, optEnd time.Duration
	// exchange is ExchangeWait (forward and backward), exFwd its
	// forward's share.
	exchange, exFwd time.Duration
}

// ownerReq is one owner's part of a layer's exchange: its host, the time
// of one rank's forward request (all its experts of the layer, in turn)
// and the bytes of the rows each way.
type ownerReq struct {
	host  int
	fwd   time.Duration
	bytes int
}

type trainBucket struct {
	bytes    int64 // float32 gradients
	ready    time.Duration
	in       int // ranks that queued it
	wire     int // bytes through each interface, each way
	overhead time.Duration
}

func newTrainSim(c TrainConfig) *trainSim {
	n := c.Cluster.Workers
	s := &trainSim{c: c, n: n, hosts: make([]trainHost, n), ranks: make([]trainRank, n), trigger: map[int]int{}, bwd: 2, exBwd: 2}
	for h := range s.hosts {
		s.hosts[h].msg = make(core, c.Cluster.Cores)
		s.hosts[h].leaf = h / c.Cluster.HostsPerLeaf
	}
	if c.SharedCores > 0 {
		s.pool = &sharedPool{q: &s.q, cores: float64(c.SharedCores)}
		if c.Cluster.Cores == 1 {
			s.fifo = &fifoPool{q: &s.q, free: c.SharedCores}
			s.wake = c.Cal.Wake()
		}
	}
	return s
}

// serial reports whether the model is serial (fifo).
func (s *trainSim) serial() bool { return s.fifo != nil }

// onThread runs d of host h's work on its process's thread from t (the
// serial model), with extra x d of kernel work beside it (a task of its
// own on the pool that the thread does not wait for), then calls then. recv: a message arriving, which first wakes the thread
// if it is idle.
func (s *trainSim) onThread(h int, t, d time.Duration, extra float64, recv bool, then func(time.Duration)) {
	th := &s.hosts[h].thread
	k := threadTask{d, extra, then}
	if th.busy {
		th.queue = append(th.queue, k)
		return
	}
	th.busy = true
	if recv && s.wake > 0 {
		s.q.at(t+s.wake, func(t time.Duration) { s.runThread(h, t, k) })
		return
	}
	s.runThread(h, t, k)
}

// runThread runs k on host h's thread from t, then the next queued task.
func (s *trainSim) runThread(h int, t time.Duration, k threadTask) {
	if k.extra > 0 {
		s.fifo.add(t, scale(k.d, k.extra), func(time.Duration) {})
	}
	s.fifo.add(t, k.d, func(t time.Duration) {
		th := &s.hosts[h].thread
		if len(th.queue) > 0 {
			next := th.queue[0]
			th.queue = th.queue[1:]
			s.runThread(h, t, next)
		} else {
			th.busy = false
		}
		k.then(t)
	})
}

// gemm is the calibrated time of an (m x k) x (k x n) product on the
// host's cores.
func (s *trainSim) gemm(m, k, n int) (time.Duration, error) {
	return s.c.Cal.GEMMTime(m, k, n, s.c.DType, s.c.Cluster.Cores)
}

// prepare computes the products' times, places the experts and sizes the
// buckets and the small collectives.
func (s *trainSim) prepare() error {
	c, sh := s.c, s.c.Shape
	T, S, d := c.TokensPerRank, c.SeqLen, sh.Hidden
	cores := c.Cluster.Cores
	var errs []error
	add := func(t time.Duration, err error) time.Duration {
		if err != nil {
			errs = append(errs, err)
		}
		return t
	}
	// Attention: the projections on all cores; the per-(sequence, head)
	// T x T products each on one core, cores at a time.
	var attn time.Duration
	for _, p := range sh.AttnProj {
		attn += add(s.gemm(T, p[0], p[1]))
	}
	qk := add(c.Cal.GEMMTime(S, sh.QKDim, S, c.DType, 1))
	pv := add(c.Cal.GEMMTime(S, S, sh.VDim, c.DType, 1))
	waves := (T/S*sh.Heads + cores - 1) / cores
	attn += time.Duration(waves) * (qk + pv)
	ffn := func(rows, f int) time.Duration {
		if f == 0 || rows == 0 {
			return 0
		}
		return 2*add(s.gemm(rows, d, f)) + add(s.gemm(rows, f, d))
	}
	// The router is float32 in every compute mode (LinearExact); a
	// calibration without float32 points times it in the products' dtype.
	router, err := c.Cal.GEMMTime(T, d, max(sh.Experts, 1), "f32", cores)
	if err != nil {
		router = add(s.gemm(T, d, max(sh.Experts, 1)))
	}
	s.attn = make([]time.Duration, sh.Layers)
	s.shared = make([]time.Duration, sh.Layers)
	for l := range sh.Layers {
		s.attn[l] = attn
		if l < sh.DenseLayers {
			s.shared[l] = ffn(T, sh.DenseInter)
		} else {
			s.attn[l] += router
			s.shared[l] = ffn(T, sh.SharedInter)
		}
	}
	s.head = add(s.gemm(T, d, sh.Vocab))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("simulate: train: %w", err)
	}
	if p := c.Cal.TrainProfile(sh, T, S, cores); p != nil && p.Forward > 0 && p.ExpertsForward > 0 {
		// The measured step of this very shape: scale the products to it,
		// so each call's software and the element-wise work between the
		// products are in (the GEMM calibration's throughput alone leaves
		// them out, which at small shapes is most of the step).
		s.prof = p
		var dense, experts time.Duration
		for l := range sh.Layers {
			dense += s.attn[l] + s.shared[l]
			if s.isMoE(l) {
				for e := range sh.Experts {
					experts += ffn(s.rowsPerExpert(e), sh.ExpertInter)
				}
			}
		}
		dense += s.head
		fd := float64(p.Forward) / float64(max(dense, 1))
		for l := range sh.Layers {
			s.attn[l], s.shared[l] = scale(s.attn[l], fd), scale(s.shared[l], fd)
		}
		s.head = scale(s.head, fd)
		fe := float64(p.ExpertsForward) / float64(max(experts, 1))
		inner := ffn
		ffn = func(rows, f int) time.Duration { return scale(inner(rows, f), fe) }
		s.bwd = float64(p.Backward) / float64(p.Forward)
		s.exBwd = float64(p.ExpertsBackward) / float64(p.ExpertsForward)
		s.other = max(p.Step-p.Forward-p.Backward-p.ExpertsForward-p.ExpertsBackward-p.Optimizer, 0)
	}
	if err := s.place(ffn); err != nil {
		return err
	}
	s.sizeBuckets()
	// The statistics all-to-all carries 4 + 2 x MoE layers x experts
	// float64 plus the stop vote; the norm one float64; the barrier none.
	statsBytes := 8 * (5 + 2*sh.MoELayers()*sh.Experts)
	s.statsA2A = s.allToAll(statsBytes)
	s.normA2A = s.allToAll(8)
	s.barrier = s.allToAll(0)
	if s.linkWork() {
		s.statsA = &a2a{bytes: statsBytes, then: func(r int, t time.Duration) {
			s.ranks[r].sync = t
			s.backwardFrom(r, t)
		}}
		s.normA = &a2a{bytes: 8, then: func(r int, t time.Duration) {
			s.ranks[r].normEnd = t
			s.own(r, t, s.optTime[r], func(t time.Duration) {
				s.ranks[r].optEnd = t
				s.enterA2A(s.barrierA, r, t)
			})
		}}
		s.barrierA = &a2a{then: func(r int, t time.Duration) { s.stepEnd = max(s.stepEnd, t) }}
	}
	return nil
}

// allToAll is one AllToAll of b bytes to every other member (pkg/collective's
// AllReduceFloat64 and Barrier): n-1 messages out and in on each member's
// interface and cores, after a latency.
func (s *trainSim) allToAll(b int) time.Duration {
	n := s.n
	if n < 2 {
		return 0
	}
	cl := s.c.Cluster
	msgs := time.Duration((n - 1 + cl.Cores - 1) / cl.Cores)
	return cl.Latency + rate((n-1)*b, s.c.Cluster.CrossLeafRate()) + 2*msgs*s.c.Cal.MsgCPU
}

// rowsPerExpert is how many of a rank's rows go to expert e (balanced
// routing: TokensPerRank x TopK spread evenly).
func (s *trainSim) rowsPerExpert(e int) int {
	sh := s.c.Shape
	r := s.c.TokensPerRank * sh.TopK
	rows := r / sh.Experts
	if e < r%sh.Experts {
		rows++
	}
	return rows
}

// place runs pkg/placement (R = 1) with each expert's training footprint
// (its state and the saved activations of every rank's rows) against each
// worker's memory left after its dense replica and activations, and
// derives each layer's owners and each worker's memory.
func (s *trainSim) place(ffn func(rows, f int) time.Duration) error {
	c, sh := s.c, s.c.Shape
	n, d, F := s.n, int64(sh.Hidden), int64(sh.ExpertInter)
	dense := sh.DenseParams() * stateBytes
	acts := s.activationBytes()
	left := c.Cluster.MemoryBytes - dense - acts
	s.fits = left > 0
	expertBytes := func(e int) int64 {
		return sh.ExpertParams()*stateBytes + int64(n)*int64(s.rowsPerExpert(e))*(d+3*F)*4
	}
	var in placement.Input
	in.Layers = sh.Layers
	in.Replicas = 1
	for l := sh.DenseLayers; l < sh.Layers; l++ {
		for e := range sh.Experts {
			in.Experts = append(in.Experts, placement.Expert{ID: expert.ID{Layer: l, Expert: e}, Bytes: expertBytes(e)})
		}
	}
	ids := map[cluster.WorkerID]int{}
	for h := range n {
		id := cluster.WorkerID(fmt.Sprintf("w%05d", h))
		ids[id] = h
		in.Workers = append(in.Workers, cluster.WorkerInfo{ID: id, Cores: c.Cluster.Cores, MemBytes: max(left, 1)})
	}
	var pl cluster.Placement
	var err error
	if len(in.Experts) > 0 {
		pl, err = placement.Place(in)
		if errors.Is(err, placement.ErrInsufficientMemory) || !s.fits {
			// Does not fit: place by count alone to time the step anyway.
			s.fits = false
			for i := range in.Workers {
				in.Workers[i].MemBytes = 0
			}
			pl, err = placement.Place(in)
		}
		if err != nil {
			return fmt.Errorf("simulate: train: placement: %w", err)
		}
	}
	s.owners = make([][]ownerReq, sh.Layers)
	s.memory = make([]TrainMemory, n)
	for h := range s.memory {
		s.memory[h] = TrainMemory{Dense: dense, Activations: acts}
	}
	owned := make([]int64, n) // expert parameters per host
	for l := sh.DenseLayers; l < sh.Layers; l++ {
		byHost := map[int]int{} // host -> index in owners[l]
		for e := range sh.Experts {
			ws := pl.OwnersOf(expert.ID{Layer: l, Expert: e})
			if len(ws) == 0 {
				return fmt.Errorf("simulate: train: placement left layer %d expert %d without an owner", l, e)
			}
			h := ids[ws[0]]
			i, ok := byHost[h]
			if !ok {
				i = len(s.owners[l])
				byHost[h] = i
				s.owners[l] = append(s.owners[l], ownerReq{host: h})
			}
			rows := s.rowsPerExpert(e)
			o := &s.owners[l][i]
			o.fwd += ffn(rows, sh.ExpertInter)
			o.bytes += rows * sh.Hidden * 4
			owned[h] += sh.ExpertParams()
			s.hosts[h].ownedExperts++
			s.memory[h].Experts += sh.ExpertParams() * stateBytes
			s.memory[h].ExpertActivations += int64(n) * int64(rows) * (d + 3*F) * 4
		}
	}
	s.optTime = make([]time.Duration, n)
	for h := range s.hosts {
		if s.hosts[h].ownedExperts > 0 {
			s.nOwners++
		}
		if s.memory[h].Total() > c.Cluster.MemoryBytes {
			s.fits = false
		}
		s.optTime[h] = s.adamTime(sh.DenseParams() + owned[h])
	}
	return nil
}

// adamTime is AdamW over params parameters on one host: the slower of
// streaming adamBytes per parameter at the host's memory bandwidth and
// the calibrated per-core rate on every core.
func (s *trainSim) adamTime(params int64) time.Duration {
	if p := s.prof; p != nil && p.Params > 0 && p.Optimizer > 0 {
		// The profile's optimizer (clipping, AdamW, the bias update) per
		// parameter.
		return time.Duration(float64(p.Optimizer) * float64(params) / float64(p.Params))
	}
	t := rate(int(params*adamBytes), s.c.HostMemBandwidth)
	if ps := s.c.Cal.AdamParamsPerS; ps > 0 {
		t = max(t, rate(int(params), ps*float64(s.c.Cluster.Cores)))
	}
	return t
}

// activationBytes is what one rank's forward keeps for its backward (see
// TrainMemory.Activations; model.TrainState's layerActs).
func (s *trainSim) activationBytes() int64 {
	c, sh := s.c, s.c.Shape
	d := int64(sh.Hidden)
	var attn int64
	for _, p := range sh.AttnProj[:len(sh.AttnProj)-1] {
		attn += 2 * int64(p[1]) // before and after RoPE / norm
	}
	attn += int64(sh.Heads)*int64(sh.VDim) + int64(sh.Heads)*int64(c.SeqLen) // output, probabilities
	var perToken int64
	for l := range sh.Layers {
		perToken += 4*d + 2 + attn
		if l < sh.DenseLayers {
			perToken += d + 3*int64(sh.DenseInter)
			continue
		}
		perToken += int64(sh.Experts) + int64(sh.TopK)*(d+3) // logits, expert outputs, plan
		if sh.SharedInter > 0 {
			perToken += 2*d + 3*int64(sh.SharedInter)
		}
	}
	perToken += 3*d + int64(sh.Vocab) // final norm, head logits
	return int64(c.TokensPerRank) * perToken * 4
}

// sizeBuckets groups the gradient parts as DistStepper does: parts
// finalize from the head (part L) down to the embeddings (part -1); a
// bucket is queued when the parts not yet queued reach BucketBytes, and at
// the embeddings.
func (s *trainSim) sizeBuckets() {
	sh := s.c.Shape
	size := func(part int) int64 {
		switch {
		case part == sh.Layers:
			return sh.headDense() * 4
		case part < 0:
			return sh.embedDense() * 4
		}
		return sh.layerDense(part) * 4
	}
	var pend int64
	for part := sh.Layers; part >= -1; part-- {
		pend += size(part)
		if pend >= int64(s.c.BucketBytes) || part == -1 {
			if pend > 0 {
				s.trigger[part] = len(s.buckets)
				s.buckets = append(s.buckets, trainBucket{bytes: pend})
				s.arBytes += pend
			}
			pend = 0
		}
	}
	if s.n < 2 {
		return
	}
	cl := s.c.Cluster
	hosts := make([]Host, s.n)
	for i := range hosts {
		// The ring crosses each leaf's uplink with one flow each way, so
		// it runs at the host rate even on an oversubscribed fabric.
		hosts[i] = Host{Rate: cl.Rate, Latency: cl.Latency, Cores: cl.Cores}
	}
	m := Machine{Hosts: hosts, SharedCores: s.c.SharedCores}
	cache := map[int64]time.Duration{}
	for i := range s.buckets {
		b := &s.buckets[i]
		wire := b.bytes
		if s.c.WireBF16 {
			wire /= 2
		}
		wire = (wire + 3) / 4 * 4
		dur, ok := cache[wire]
		if !ok {
			costs := Costs{MsgCPU: s.c.Cal.MsgCPU}
			if s.linkWork() {
				lat, _ := s.sideCost(0, 1)
				costs = Costs{MsgCPU: lat, ByteCPU: 2 * s.c.Cal.RingByteCPU() * 1e-9}
			}
			if s.n <= eventRanks || wire <= int64(s.c.SmallBytes) || s.c.SharedCores > 0 {
				dur, _, _ = PredictAllReduce(AllReduce{N: s.n, Bytes: int(wire), ChunkBytes: s.c.ChunkBytes, SmallBytes: s.c.SmallBytes}, m, costs)
			} else {
				dur = RingTime(s.n, int(wire), hosts[0], costs)
			}
			cache[wire] = dur
		}
		b.wire = int(2 * int64(s.n-1) * wire / int64(s.n))
		b.overhead = max(dur-rate(b.wire, cl.Rate), 0)
	}
}

// eventRanks is the largest group whose bucket all-reduces run
// PredictAllReduce's event model; larger rings take the closed form
// RingTime (within 2% where both run, TestRingClosedForm; the event
// model's time grows with the square of the ranks).
const eventRanks = 64

// linkRate is the rate of a message from host a to host b.
func (s *trainSim) linkRate(a, b int) float64 {
	if s.hosts[a].leaf == s.hosts[b].leaf {
		return s.c.Cluster.Rate
	}
	return s.c.Cluster.CrossLeafRate()
}

// task is work on a host's cores: d of products at the host's full
// rate, then done at its end.
type task struct {
	left time.Duration // work left at the full rate
	then func(time.Duration)
}

// cpu is a host's cores as the products share them: at most two streams
// at once, the rank's own products (one at a time: the rank is one
// goroutine) and the expert server's GEMM goroutine (requests one at a
// time, first come first served), each forking its products over the one
// pool of kernel workers (pkg/tensor's ParallelFor), so two running at
// once progress at half the rate each (processor sharing).
type cpu struct {
	own    *task
	served []*task
	at     time.Duration // when left was last brought up to date
	ver    uint64        // invalidates a scheduled completion
}

func (c *cpu) running() int {
	n := len(c.served)
	if n > 1 {
		n = 1
	}
	if c.own != nil {
		n++
	}
	return n
}

// advance brings the running tasks' work up to t.
func (c *cpu) advance(t time.Duration) {
	if k := time.Duration(c.running()); k > 0 {
		done := (t - c.at) / k
		if c.own != nil {
			c.own.left -= done
		}
		if len(c.served) > 0 {
			c.served[0].left -= done
		}
	}
	c.at = t
}

// own runs d of rank h's own products from t, then calls then.
func (s *trainSim) own(h int, t, d time.Duration, then func(time.Duration)) {
	s.hosts[h].denseBusy += d
	if s.serial() {
		s.onThread(h, t, d, 0, false, then)
		return
	}
	if s.pool != nil {
		s.pool.add(t, d, s.c.Cluster.Cores, then)
		return
	}
	c := &s.hosts[h].cpu
	c.advance(t)
	c.own = &task{left: d, then: then}
	s.reschedule(h, t)
}

// serve queues d of expert products on host h's server from t, then calls
// then.
func (s *trainSim) serve(h int, t, d time.Duration, then func(time.Duration)) {
	s.hosts[h].expertBusy += d
	if s.pool != nil {
		// The server's one GEMM goroutine: requests one at a time, first
		// come first served; the running one is a task on the pool.
		hs := &s.hosts[h]
		hs.served = append(hs.served, pooled{d, then})
		if len(hs.served) == 1 {
			s.serveNext(h, t)
		}
		return
	}
	c := &s.hosts[h].cpu
	c.advance(t)
	c.served = append(c.served, &task{left: d, then: then})
	s.reschedule(h, t)
}

// serveNext runs host h's first queued request on the pool (SharedCores).
func (s *trainSim) serveNext(h int, t time.Duration) {
	hs := &s.hosts[h]
	r := hs.served[0]
	run := func(t, d time.Duration, then func(time.Duration)) { s.pool.add(t, d, s.c.Cluster.Cores, then) }
	if s.serial() {
		run = func(t, d time.Duration, then func(time.Duration)) { s.onThread(h, t, d, 0, false, then) }
	}
	run(t, r.d, func(t time.Duration) {
		hs.served = hs.served[1:]
		if len(hs.served) > 0 {
			s.serveNext(h, t)
		}
		r.then(t)
	})
}

// msgWork runs d of host h's per-message software from t, then calls
// then: on a core of its own (the earliest free), or on the shared pool.
func (s *trainSim) msgWork(h int, t, d time.Duration, recv bool, then func(time.Duration)) {
	s.hosts[h].msgBusy += d
	if s.serial() {
		s.onThread(h, t, d, 0, recv, then)
		return
	}
	if s.pool != nil {
		s.pool.add(t, d, 1, then)
		return
	}
	s.q.at(s.hosts[h].msg.run(t, d), then)
}

// reschedule plans host h's next completion after a change at t.
func (s *trainSim) reschedule(h int, t time.Duration) {
	c := &s.hosts[h].cpu
	c.ver++
	k := time.Duration(c.running())
	if k == 0 {
		return
	}
	next := time.Duration(-1)
	if c.own != nil {
		next = c.own.left
	}
	if len(c.served) > 0 && (next < 0 || c.served[0].left < next) {
		next = c.served[0].left
	}
	ver := c.ver
	s.q.at(t+max(next, 0)*k, func(t time.Duration) {
		if c.ver != ver {
			return
		}
		c.advance(t)
		var fin []*task
		if c.own != nil && c.own.left <= 0 {
			fin = append(fin, c.own)
			c.own = nil
		}
		if len(c.served) > 0 && c.served[0].left <= 0 {
			fin = append(fin, c.served[0])
			c.served[0] = nil
			c.served = c.served[1:]
		}
		s.reschedule(h, t)
		for _, f := range fin {
			f.then(t)
		}
	})
}

// send moves a message of b bytes from host a to host b from t and calls
// then when the receiver has taken it: each step an event, so every
// resource is requested in time order (first come, first served).
func (s *trainSim) send(a, b, bytes int, t time.Duration, then func(time.Duration)) {
	// side runs one side's software of the message on host h from t.
	cpu := s.c.Cal.MsgCPU + rate(bytes, s.c.Cal.MsgBytesPerS)
	side := func(h int, t time.Duration, recv bool, then func(time.Duration)) { s.msgWork(h, t, cpu, recv, then) }
	if s.linkWork() {
		d, w := s.sideCost(bytes, 1)
		side = func(h int, t time.Duration, recv bool, then func(time.Duration)) { s.wideWork(h, t, d, w, recv, then) }
	}
	src, dst := &s.hosts[a], &s.hosts[b]
	s.q.at(t, func(t time.Duration) {
		side(a, t, false, func(t time.Duration) {
			s.wire(src, dst, a, b, bytes, t, func(t time.Duration) { side(b, t, true, then) })
		})
	})
}

// wire passes a message of bytes from host a's interface to host b's
// from t and calls then when the receiver has it.
func (s *trainSim) wire(src, dst *trainHost, a, b, bytes int, t time.Duration, then func(time.Duration)) {
	lat, r := s.c.Cluster.Latency, s.linkRate(a, b)
	h := Host{Rate: r, Burst: s.c.Burst}
	out, busy := passTimed(&src.tx, t, bytes, h)
	src.txBusy += busy
	first := max(out-rate(bytes, r), t) + lat // a burst passes at once
	s.q.at(first, func(t time.Duration) {
		got, busy := passTimed(&dst.rx, t, bytes, h)
		dst.rxBusy += busy
		s.q.at(max(got, out+lat), then)
	})
}

// linkWork reports whether messages are charged the calibrated core time
// across a link (Calibration.LinkMsgCPU) on the shared pool: hosts that
// share one machine's cores, as the emulated cluster's do, where every
// message's kernel and user work takes cores the products need.
func (s *trainSim) linkWork() bool { return s.pool != nil && s.c.Cal.LinkMsgCPU > 0 }

// sideCost is the pool task of k message sides of bytes bytes each
// (linkWork): d, its time alone, and width, the cores it keeps busy, so
// that d x width is the calibrated core time (LinkMsgCPU and LinkByteCPU
// per side) and d its latency (a quarter of the one-row exchange round
// trip across the link less the raw-TCP round trip, per side; the bytes
// at LinkByteCPU).
func (s *trainSim) sideCost(bytes, k int) (d time.Duration, width float64) {
	return s.sideCostAt(bytes, k, s.c.Cal.LinkByteCPU)
}

// sideCostAt is sideCost with the bytes at byteCPU ns a byte and side.
func (s *trainSim) sideCostAt(bytes, k int, byteCPU float64) (d time.Duration, width float64) {
	cal := s.c.Cal
	lat := cal.MsgCPU
	if cal.LinkExchangeRTT > cal.LinkRTT {
		lat = (cal.LinkExchangeRTT - cal.LinkRTT) / 4
	}
	perByte := time.Duration(float64(bytes) * byteCPU)
	work := time.Duration(k) * (cal.LinkMsgCPU + perByte)
	d = time.Duration(k) * (min(lat, cal.LinkMsgCPU) + perByte)
	return d, float64(work) / float64(max(d, 1))
}

// ringSideCost is sideCost for k message sides of the gradient ring, its
// bytes at the ring's own calibrated core time (LinkRingByteCPU) where
// it was measured, else at the exchange's.
func (s *trainSim) ringSideCost(bytes, k int) (d time.Duration, width float64) {
	return s.sideCostAt(bytes, k, s.c.Cal.RingByteCPU())
}

// wideWork runs d of host h's message software on width cores of the
// pool from t, then calls then.
func (s *trainSim) wideWork(h int, t, d time.Duration, width float64, recv bool, then func(time.Duration)) {
	s.hosts[h].msgBusy += scale(d, width)
	if s.serial() {
		s.onThread(h, t, d, max(width-1, 0), recv, then)
		return
	}
	s.pool.addWide(t, d, width, then)
}

// passTimed passes bytes through one direction of an interface from t
// and returns when they are through and how long the interface was busy
// with them (bytes/rate on a plain link; less, or none, where a burst
// covers them).
func passTimed(k *bucket, t time.Duration, bytes int, h Host) (end, busy time.Duration) {
	start := max(t, k.busy)
	end = k.pass(t, bytes, h)
	return end, max(end-start, 0)
}

// exchange is rank r's expert exchange of MoE layer l from t (backward:
// twice the products), calling then when every owner answered.
func (s *trainSim) exchange(r, l int, backward bool, t time.Duration, then func(time.Duration)) {
	owners := s.owners[l]
	pending := len(owners)
	end := t
	done := func(at time.Duration) {
		end = max(end, at)
		if pending--; pending == 0 {
			s.ranks[r].exchange += end - t
			if !backward {
				s.ranks[r].exFwd += end - t
			}
			s.q.at(end, then)
		}
	}
	for _, o := range owners {
		work := o.fwd
		if backward {
			work = scale(work, s.exBwd)
		}
		if o.host == r {
			// In process (RemoteTrainer.SetLocal): the server's GEMM
			// goroutine, no socket.
			s.q.at(t, func(at time.Duration) { s.serve(r, at, work, done) })
			continue
		}
		s.send(r, o.host, o.bytes, t, func(at time.Duration) {
			s.serve(o.host, at, work, func(at time.Duration) { s.send(o.host, r, o.bytes, at, done) })
		})
	}
	if pending == 0 {
		s.q.at(t, then)
	}
}

func (s *trainSim) isMoE(l int) bool { return l >= s.c.Shape.DenseLayers }

// scale is d times f.
func scale(d time.Duration, f float64) time.Duration { return time.Duration(float64(d) * f) }

// forward runs rank r's layer l from t (l = Layers: the head).
func (s *trainSim) forward(r, l int, t time.Duration) {
	if l == s.c.Shape.Layers {
		s.own(r, t, s.head, func(t time.Duration) { s.forwardDone(r, t) })
		return
	}
	s.own(r, t, s.attn[l], func(t time.Duration) {
		next := func(t time.Duration) {
			s.own(r, t, s.shared[l], func(t time.Duration) { s.forward(r, l+1, t) })
		}
		if s.isMoE(l) {
			s.exchange(r, l, false, t, next)
		} else {
			next(t)
		}
	})
}

// forwardDone: the statistics all-to-all needs every rank; then the
// backward starts with the head.
func (s *trainSim) forwardDone(r int, t time.Duration) {
	s.ranks[r].fwdEnd = t
	s.fwdLast = max(s.fwdLast, t)
	if s.statsA != nil && s.n > 1 {
		s.enterA2A(s.statsA, r, t)
		return
	}
	if s.fwdIn++; s.fwdIn < s.n {
		return
	}
	sync := s.fwdLast + s.statsA2A
	for r := range s.ranks {
		s.ranks[r].sync = sync
		s.q.at(sync, func(t time.Duration) { s.backwardFrom(r, t) })
	}
}

// backwardFrom starts rank r's backward at t, with the head.
func (s *trainSim) backwardFrom(r int, t time.Duration) {
	s.own(r, t, scale(s.head, s.bwd), func(t time.Duration) {
		s.grads(r, s.c.Shape.Layers, t)
		s.backward(r, s.c.Shape.Layers-1, t)
	})
}

// backward runs rank r's layer l from t (l = -1: the embeddings, the
// last gradients).
func (s *trainSim) backward(r, l int, t time.Duration) {
	if l < 0 {
		s.grads(r, -1, t)
		s.ranks[r].bwdEnd = t
		s.bwdIn++
		s.maybeFinish()
		return
	}
	s.own(r, t, scale(s.shared[l], s.bwd), func(t time.Duration) {
		next := func(t time.Duration) {
			s.own(r, t, scale(s.attn[l], s.bwd), func(t time.Duration) {
				s.grads(r, l, t)
				s.backward(r, l-1, t)
			})
		}
		if s.isMoE(l) {
			s.exchange(r, l, true, t, next)
		} else {
			next(t)
		}
	})
}

// grads is rank r's OnGrads(part) at t: the part's bucket, if it closes
// one, is queued; a bucket every rank queued runs after the previous one.
func (s *trainSim) grads(r, part int, t time.Duration) {
	i, ok := s.trigger[part]
	if !ok {
		return
	}
	b := &s.buckets[i]
	b.ready = max(b.ready, t)
	if b.in++; b.in == s.n {
		s.runBuckets()
	}
}

// runBuckets starts the next bucket's all-reduce when every rank queued it
// and no other runs (one goroutine all-reduces the buckets in order).
func (s *trainSim) runBuckets() {
	if s.arRunning || s.arNext >= len(s.buckets) || s.buckets[s.arNext].in < s.n {
		return
	}
	b := &s.buckets[s.arNext]
	start := max(b.ready, s.arFree)
	if s.arNext == 0 {
		s.arFirst = start
	}
	s.arNext++
	if s.n < 2 {
		s.arFree = start
		s.runBuckets()
		return
	}
	s.arRunning = true
	// The ring's bytes pass every interface in pieces, so exchange
	// messages interleave; each piece ends when the slowest interface
	// passed it (the ring moves in lockstep), plus its share of the
	// ring's latency and message costs.
	const piece = 16 << 20
	pieces := max((b.wire+piece-1)/piece, 1)
	over := b.overhead / time.Duration(pieces)
	h := Host{Rate: s.c.Cluster.Rate, Burst: s.c.Burst}
	finish := func(t time.Duration) {
		s.arRunning = false
		s.arFree = t
		s.runBuckets()
		s.maybeFinish()
	}
	// On the pool (linkWork), every rank's sends and receives of the
	// ring (2(n-1) of B/n bytes each way) take their core time there
	// too; the bucket ends when the wire and every rank's work are done.
	hostsLeft, chainDone := 0, false
	if s.linkWork() {
		hostsLeft = s.n
		chunk := int(b.bytes / int64(s.n))
		if s.c.WireBF16 {
			chunk /= 2
		}
		d, w := s.ringSideCost(chunk, 4*(s.n-1))
		for h := range s.hosts {
			s.q.at(start, func(t time.Duration) {
				s.wideWork(h, t, d, w, false, func(t time.Duration) {
					if hostsLeft--; hostsLeft == 0 && chainDone {
						finish(t)
					}
				})
			})
		}
	}
	var step func(k int, t time.Duration)
	step = func(k int, t time.Duration) {
		if k == pieces {
			if chainDone = true; hostsLeft == 0 {
				finish(t)
			}
			return
		}
		bytes := b.wire / pieces
		if k == pieces-1 {
			bytes = b.wire - bytes*(pieces-1)
		}
		end := t
		for i := range s.hosts {
			tx, txBusy := passTimed(&s.hosts[i].tx, t, bytes, h)
			rx, rxBusy := passTimed(&s.hosts[i].rx, t, bytes, h)
			end = max(end, tx, rx)
			s.hosts[i].arBusy += max(txBusy, rxBusy)
		}
		s.q.at(end+over, func(t time.Duration) { step(k+1, t) })
	}
	s.q.at(start, func(t time.Duration) { step(0, t) })
}

// maybeFinish ends the step once every rank's backward and every bucket
// are done: the gradient-norm all-to-all, AdamW, the barrier.
func (s *trainSim) maybeFinish() {
	if s.done || s.bwdIn < s.n || s.arNext < len(s.buckets) || s.arRunning {
		return
	}
	s.done = true
	s.arEnd = s.arFree
	start := s.arEnd
	for r := range s.ranks {
		start = max(start, s.ranks[r].bwdEnd)
	}
	if s.normA != nil && s.n > 1 {
		// On the pool: the norm all-to-all, each rank's optimizer as its
		// own products, the barrier.
		for r := range s.ranks {
			s.q.at(start, func(t time.Duration) { s.enterA2A(s.normA, r, t) })
		}
		return
	}
	start += s.normA2A
	for r := range s.ranks {
		s.ranks[r].normEnd = start
		s.ranks[r].optEnd = start + s.optTime[r]
		s.stepEnd = max(s.stepEnd, s.ranks[r].optEnd)
	}
	s.stepEnd += s.barrier
}

func (s *trainSim) run() {
	for r := range s.ranks {
		s.q.at(0, func(t time.Duration) {
			if s.other == 0 {
				s.forward(r, 0, t)
				return
			}
			s.own(r, t, s.other, func(t time.Duration) {
				s.ranks[r].start = t
				s.forward(r, 0, t)
			})
		})
	}
	s.q.run()
}

// result is the step's split (mean over ranks), resources and bottleneck.
func (s *trainSim) result() TrainPrediction {
	c := s.c
	n := time.Duration(s.n)
	p := TrainPrediction{N: s.n, Tokens: s.n * c.TokensPerRank, Step: s.stepEnd, Owners: s.nOwners, Fits: s.fits, AllReduceBytes: s.arBytes}
	var other, fwd, bwd, ex, ar, opt, bar, straggle, bwdLast time.Duration
	for _, r := range s.ranks {
		bwdLast = max(bwdLast, r.bwdEnd)
	}
	for _, r := range s.ranks {
		straggle += (s.fwdLast - r.fwdEnd) + (bwdLast - r.bwdEnd)
		other += r.start
		fwd += r.fwdEnd - r.start - r.exFwd
		bwd += r.bwdEnd - r.sync - (r.exchange - r.exFwd)
		ex += r.exchange
		ar += (r.sync - r.fwdEnd) + (r.normEnd - r.bwdEnd)
		opt += r.optEnd - r.normEnd
		bar += s.stepEnd - r.optEnd
	}
	p.Other, p.Forward, p.Backward, p.ExchangeWait = other/n, fwd/n, bwd/n, ex/n
	p.AllReduceWait, p.Optimizer, p.Barrier, p.Straggle = ar/n, opt/n, bar/n, straggle/n
	// Rounding of the means: the parts sum to the step exactly.
	p.Barrier += p.Step - (p.Other + p.Forward + p.Backward + p.ExchangeWait + p.AllReduceWait + p.Optimizer + p.Barrier)
	if s.n > 1 && len(s.buckets) > 0 {
		p.AllReduce = s.arEnd - s.arFirst
	}
	for h := range s.hosts {
		hs := &s.hosts[h]
		p.HostCompute = max(p.HostCompute, hs.expertBusy+hs.denseBusy)
		p.OwnerGEMM = max(p.OwnerGEMM, hs.expertBusy)
		p.NIC = max(p.NIC, hs.txBusy+hs.arBusy, hs.rxBusy+hs.arBusy)
		p.ExchangeNIC = max(p.ExchangeNIC, hs.txBusy, hs.rxBusy)
		p.MsgCPU = max(p.MsgCPU, hs.msgBusy/time.Duration(c.Cluster.Cores))
		p.CPU += (hs.expertBusy+hs.denseBusy)*time.Duration(c.Cluster.Cores) + hs.msgBusy
		if m := s.memory[h]; m.Total() > p.Memory.Total() {
			p.Memory = m
		}
	}
	if p.Step > 0 {
		p.TokensPerS = float64(p.Tokens) / p.Step.Seconds()
	}
	p.Bottleneck = s.bottleneck(p)
	return p
}

// bottleneck names the resource the busiest host used the largest share
// of the step: its cores (expert rows it served, or its rank's own
// products), its interface (the exchange or the all-reduce), its
// per-message software, or the optimizer; under half the step for all of
// them, the step waits on the ranks' lockstep (the pipeline of expert
// requests filling and draining at every all-to-all).
func (s *trainSim) bottleneck(p TrainPrediction) string {
	type use struct {
		name string
		t    time.Duration
	}
	var opt time.Duration
	for _, o := range s.optTime {
		opt = max(opt, o)
	}
	what := "its rank's own products (attention, head)"
	if 2*p.OwnerGEMM >= p.HostCompute {
		what = fmt.Sprintf("expert GEMMs for every rank's rows; %d of %d hosts own experts", p.Owners, p.N)
	}
	link := "the gradient all-reduce"
	if 2*p.ExchangeNIC >= p.NIC {
		link = "the expert exchange"
	}
	uses := []use{
		{"cores: " + what, p.HostCompute},
		{"NIC: " + link, p.NIC},
		{"per-message software of the exchange", p.MsgCPU},
		{"optimizer (memory bandwidth)", opt},
	}
	best := uses[0]
	for _, u := range uses[1:] {
		if u.t > best.t {
			best = u
		}
	}
	name := fmt.Sprintf("%s (%.0f%% of the step)", best.name, 100*best.t.Seconds()/p.Step.Seconds())
	if p.Step <= 0 {
		name = "nothing"
	} else if 2*best.t < p.Step {
		name = "lockstep: no resource busy half the step; busiest " + name
	}
	if !p.Fits {
		name = fmt.Sprintf("memory: needs %.0f GiB per worker of %.0f GiB; then %s", float64(p.Memory.Total())/(1<<30),
			float64(s.c.Cluster.MemoryBytes)/(1<<30), name)
	}
	return name
}

// eventQueue runs events in time order (ties in the order they were
// scheduled), so resources taken by "busy until" bookkeeping are taken
// first come, first served.
type eventQueue struct {
	h   []event
	seq uint64
}

type event struct {
	t   time.Duration
	seq uint64
	f   func(time.Duration)
}

func (e event) before(o event) bool { return e.t < o.t || (e.t == o.t && e.seq < o.seq) }

// at schedules f at t.
func (q *eventQueue) at(t time.Duration, f func(time.Duration)) {
	q.seq++
	q.h = append(q.h, event{t, q.seq, f})
	i := len(q.h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !q.h[i].before(q.h[p]) {
			break
		}
		q.h[i], q.h[p] = q.h[p], q.h[i]
		i = p
	}
}

// run runs events until none is left.
func (q *eventQueue) run() {
	for len(q.h) > 0 {
		e := q.h[0]
		last := len(q.h) - 1
		q.h[0] = q.h[last]
		q.h[last] = event{}
		q.h = q.h[:last]
		i := 0
		for {
			l, r, m := 2*i+1, 2*i+2, i
			if l < len(q.h) && q.h[l].before(q.h[m]) {
				m = l
			}
			if r < len(q.h) && q.h[r].before(q.h[m]) {
				m = r
			}
			if m == i {
				break
			}
			q.h[i], q.h[m] = q.h[m], q.h[i]
			i = m
		}
		e.f(e.t)
	}
}

// sharedPool is one pool of cores every host's work shares (SharedCores):
// generalized processor sharing. Each task may use up to width cores;
// the pool's cores are split equally among the running tasks, a task
// narrower than its share keeping only its width and the rest going to
// the others (water-filling).
type sharedPool struct {
	q     *eventQueue
	cores float64
	tasks []*sharedTask
	at    time.Duration
	ver   uint64
}

type sharedTask struct {
	left  float64 // work left, ns at the task's full width
	width float64
	rate  float64 // fraction of its full width it now runs at
	then  func(time.Duration)
}

// add runs d (its time on width cores) from t, then calls then.
func (p *sharedPool) add(t, d time.Duration, width int, then func(time.Duration)) {
	p.addWide(t, d, float64(max(width, 1)), then)
}

// addWide is add with a fractional width (> 0): d on width cores is
// d x width of core time.
func (p *sharedPool) addWide(t, d time.Duration, width float64, then func(time.Duration)) {
	p.advance(t)
	p.tasks = append(p.tasks, &sharedTask{left: float64(d), width: width, then: then})
	p.plan(t)
}

// advance brings the running tasks' work up to t.
func (p *sharedPool) advance(t time.Duration) {
	dt := float64(t - p.at)
	for _, k := range p.tasks {
		k.left -= dt * k.rate
	}
	p.at = t
}

// plan shares the cores among the running tasks and schedules the next
// completion.
func (p *sharedPool) plan(t time.Duration) {
	p.ver++
	if len(p.tasks) == 0 {
		return
	}
	order := make([]*sharedTask, len(p.tasks))
	copy(order, p.tasks)
	slices.SortStableFunc(order, func(a, b *sharedTask) int { return cmp.Compare(a.width, b.width) })
	left, m := p.cores, float64(len(order))
	for _, k := range order {
		alloc := min(k.width, left/m)
		k.rate = alloc / k.width
		left -= alloc
		m--
	}
	next := math.Inf(1)
	for _, k := range p.tasks {
		next = min(next, max(k.left, 0)/k.rate)
	}
	ver := p.ver
	p.q.at(t+time.Duration(math.Ceil(next)), func(t time.Duration) {
		if p.ver != ver {
			return
		}
		p.advance(t)
		var fin []*sharedTask
		kept := p.tasks[:0]
		for _, k := range p.tasks {
			if k.left <= 0.5 {
				fin = append(fin, k)
			} else {
				kept = append(kept, k)
			}
		}
		p.tasks = kept
		p.plan(t)
		for _, k := range fin {
			k.then(t)
		}
	})
}

// fifoPool is the shared machine's cores as the kernel runs the serial
// model's one-thread processes: a ready task takes the first free core
// and runs to its end; the others wait in the order they became ready.
// Not processor sharing: three ready tasks on two cores leave a core idle
// while the third runs alone, as the emulated cluster's lockstep ranks do
// (its cores were 78-85% busy over the step). The kernel's time slice
// (EEVDF's base slice, 1.5 ms on 2 CPUs by default) is longer than most
// of these tasks: slicing every task at 1.5 ms moved the predictions of
// seven measured steps by at most 0.5% (2026-12-06), so it is left out.
type fifoPool struct {
	q     *eventQueue
	free  int // idle cores
	ready []fifoTask
}

type fifoTask struct {
	d    time.Duration
	then func(time.Duration)
}

// add runs d on one core from t (after the tasks ready before it), then
// calls then.
func (p *fifoPool) add(t, d time.Duration, then func(time.Duration)) {
	p.ready = append(p.ready, fifoTask{d, then})
	p.dispatch(t)
}

// dispatch starts ready tasks on the idle cores at t.
func (p *fifoPool) dispatch(t time.Duration) {
	for p.free > 0 && len(p.ready) > 0 {
		k := p.ready[0]
		p.ready = p.ready[1:]
		p.free--
		p.q.at(t+k.d, func(t time.Duration) {
			p.free++
			p.dispatch(t)
			k.then(t)
		})
	}
}
