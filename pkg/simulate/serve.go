package simulate

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/placement"
)

// MoEShape is a mixture-of-experts decoder as the serving model sees it:
// the shapes that decide its weights, its per-token compute and its expert
// exchange. Presets: DeepSeekV3, Mixtral8x22B.
type MoEShape struct {
	Name string
	// Layers is the number of decoder layers; the first DenseLayers of
	// them (DeepSeek's first_k_dense_replace) have a dense MLP of
	// DenseInter instead of experts, the rest are MoE layers.
	Layers, DenseLayers int
	Hidden              int
	// RoutedExperts per MoE layer, TopK of them per token, each a SwiGLU
	// FFN (gate, up: Hidden -> ExpertInter; down: back) held by workers.
	RoutedExperts, TopK, ExpertInter int
	// SharedExperts per MoE layer of SharedInter each (0: none; SharedInter
	// 0 means ExpertInter), run by the front end on every token.
	SharedExperts, SharedInter int
	DenseInter                 int
	Attn                       Attention
	Vocab                      int
	// TiedEmbeddings: the head reuses the embedding matrix (one copy).
	TiedEmbeddings bool
	// ElemBytes is the size of one weight as held (2: bf16).
	ElemBytes int
}

// Attention is a decoder layer's attention. MLA (DeepSeek's multi-head
// latent attention) when KVLoRARank > 0: queries through a QLoRARank
// bottleneck (0: a plain projection), keys and values from a cached
// KVLoRARank latent plus a shared QKRopeDim RoPE key; decode runs the
// absorbed form (pkg/model's MLAAuto), attending over the latent. Else
// grouped-query attention of Heads query and KVHeads key/value heads of
// HeadDim, caching keys and values.
type Attention struct {
	Heads                                                 int
	KVHeads, HeadDim                                      int
	QLoRARank, KVLoRARank, QKNopeDim, QKRopeDim, VHeadDim int
}

// MLA reports whether the attention is multi-head latent attention.
func (a Attention) MLA() bool { return a.KVLoRARank > 0 }

// DeepSeekV3 is DeepSeek-V3 (671 B parameters, 37 B activated per token):
// 61 layers, the first 3 dense (intermediate 18432), hidden 7168, 256
// routed experts of intermediate 2048 top-8 and 1 shared, MLA (128 heads,
// q_lora_rank 1536, kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head
// 128), vocabulary 129280, untied head; bf16 weights (the checkpoint is
// fp8; Switchyard's workers hold bf16 unless quantized). The
// multi-token-prediction module (14 B more in the checkpoint) is not
// served.
func DeepSeekV3() MoEShape {
	return MoEShape{
		Name: "DeepSeek-V3", Layers: 61, DenseLayers: 3, Hidden: 7168,
		RoutedExperts: 256, TopK: 8, ExpertInter: 2048, SharedExperts: 1, SharedInter: 2048,
		DenseInter: 18432,
		Attn:       Attention{Heads: 128, QLoRARank: 1536, KVLoRARank: 512, QKNopeDim: 128, QKRopeDim: 64, VHeadDim: 128},
		Vocab:      129280, ElemBytes: 2,
	}
}

// Mixtral8x22B is Mixtral-8x22B (141 B parameters, 39 B activated): 56
// layers, all MoE, hidden 6144, 8 experts of intermediate 16384 top-2,
// GQA with 48 query and 8 key/value heads of 128, vocabulary 32768,
// untied head; bf16 weights.
func Mixtral8x22B() MoEShape {
	return MoEShape{
		Name: "Mixtral-8x22B", Layers: 56, Hidden: 6144,
		RoutedExperts: 8, TopK: 2, ExpertInter: 16384,
		Attn:  Attention{Heads: 48, KVHeads: 8, HeadDim: 128},
		Vocab: 32768, ElemBytes: 2,
	}
}

// ShapeByName returns a preset: "deepseek-v3" or "mixtral-8x22b".
func ShapeByName(name string) (MoEShape, error) {
	switch strings.ToLower(name) {
	case "deepseek-v3", "deepseekv3", "dsv3":
		return DeepSeekV3(), nil
	case "mixtral-8x22b", "mixtral8x22b":
		return Mixtral8x22B(), nil
	}
	return MoEShape{}, fmt.Errorf("model %q: want deepseek-v3 or mixtral-8x22b", name)
}

// Validate checks that the shape is complete.
func (m MoEShape) Validate() error {
	var errs []error
	if m.Layers < 1 || m.DenseLayers < 0 || m.DenseLayers >= m.Layers {
		errs = append(errs, fmt.Errorf("layers %d, dense layers %d: want at least one MoE layer", m.Layers, m.DenseLayers))
	}
	if m.Hidden < 1 || m.ExpertInter < 1 || m.Vocab < 1 || m.ElemBytes < 1 {
		errs = append(errs, fmt.Errorf("hidden %d, expert intermediate %d, vocab %d, element bytes %d: want all >= 1", m.Hidden, m.ExpertInter, m.Vocab, m.ElemBytes))
	}
	if m.RoutedExperts < 1 || m.TopK < 1 || m.TopK > m.RoutedExperts {
		errs = append(errs, fmt.Errorf("%d routed experts, top-%d: want 1 <= top-k <= experts", m.RoutedExperts, m.TopK))
	}
	if m.DenseLayers > 0 && m.DenseInter < 1 {
		errs = append(errs, fmt.Errorf("%d dense layers of intermediate %d", m.DenseLayers, m.DenseInter))
	}
	a := m.Attn
	if a.Heads < 1 || (!a.MLA() && (a.KVHeads < 1 || a.HeadDim < 1 || a.Heads%a.KVHeads != 0)) ||
		(a.MLA() && (a.QKNopeDim < 0 || a.QKRopeDim < 0 || a.QKNopeDim+a.QKRopeDim < 1 || a.VHeadDim < 1)) {
		errs = append(errs, fmt.Errorf("attention %+v: want heads >= 1 and either MLA dims or GQA heads dividing them", a))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("model %s: %w", m.Name, err)
	}
	return nil
}

// MoELayers is the number of layers with routed experts.
func (m MoEShape) MoELayers() int { return m.Layers - m.DenseLayers }

// IsMoE reports whether decoder layer l has routed experts.
func (m MoEShape) IsMoE(l int) bool { return l >= m.DenseLayers && l < m.Layers }

// ExpertBytes is one routed expert copy as a worker holds it:
// 3 x Hidden x ExpertInter weights of ElemBytes.
func (m MoEShape) ExpertBytes() int64 {
	return 3 * int64(m.Hidden) * int64(m.ExpertInter) * int64(m.ElemBytes)
}

func (m MoEShape) sharedInter() int {
	if m.SharedInter > 0 {
		return m.SharedInter
	}
	return m.ExpertInter
}

// weightMatrix is one weight matrix a token's activations go through: In
// features to Out.
type weightMatrix struct{ In, Out int }

func (x weightMatrix) params() int64 { return int64(x.In) * int64(x.Out) }

// attnMatrices are one layer's attention projections.
func (m MoEShape) attnMatrices() []weightMatrix {
	a, h := m.Attn, m.Hidden
	if !a.MLA() {
		return []weightMatrix{{h, a.Heads * a.HeadDim}, {h, a.KVHeads * a.HeadDim}, {h, a.KVHeads * a.HeadDim}, {a.Heads * a.HeadDim, h}}
	}
	qk := a.QKNopeDim + a.QKRopeDim
	var out []weightMatrix
	if a.QLoRARank > 0 {
		out = append(out, weightMatrix{h, a.QLoRARank}, weightMatrix{a.QLoRARank, a.Heads * qk})
	} else {
		out = append(out, weightMatrix{h, a.Heads * qk})
	}
	return append(out,
		weightMatrix{h, a.KVLoRARank + a.QKRopeDim},                      // kv_a_proj_with_mqa
		weightMatrix{a.KVLoRARank, a.Heads * (a.QKNopeDim + a.VHeadDim)}, // kv_b_proj (absorbed at decode: same weights, same products)
		weightMatrix{a.Heads * a.VHeadDim, h})                            // o_proj
}

// attnNorms are one layer's attention norm weights beyond the two
// per-layer RMSNorms (MLA's q_a and kv_a norms).
func (m MoEShape) attnNorms() int64 {
	if m.Attn.MLA() {
		return int64(m.Attn.QLoRARank + m.Attn.KVLoRARank)
	}
	return 0
}

// ParamCount is a model's parameters by part.
type ParamCount struct {
	Attention     int64 // projections and MLA norms, all layers
	RoutedExperts int64 // all layers, all experts
	SharedExperts int64
	DenseMLP      int64 // the dense layers' MLPs
	Routers       int64 // gate weights (and DeepSeek-V3's correction bias)
	Embeddings    int64 // input embedding and output head
	Norms         int64 // per-layer and final RMSNorms
	// Total is every parameter; Activated those one token uses (routed
	// experts counted TopK per MoE layer).
	Total, Activated int64
}

// Params counts m's parameters.
func (m MoEShape) Params() ParamCount {
	var p ParamCount
	var attn int64
	for _, x := range m.attnMatrices() {
		attn += x.params()
	}
	L, ML, h := int64(m.Layers), int64(m.MoELayers()), int64(m.Hidden)
	p.Attention = L * (attn + m.attnNorms())
	expertP := 3 * h * int64(m.ExpertInter)
	p.RoutedExperts = ML * int64(m.RoutedExperts) * expertP
	p.SharedExperts = ML * int64(m.SharedExperts) * 3 * h * int64(m.sharedInter())
	p.DenseMLP = int64(m.DenseLayers) * 3 * h * int64(m.DenseInter)
	p.Routers = ML * int64(m.RoutedExperts) * h
	if m.Attn.MLA() { // DeepSeek-V3's e_score_correction_bias
		p.Routers += ML * int64(m.RoutedExperts)
	}
	p.Embeddings = int64(m.Vocab) * h
	if !m.TiedEmbeddings {
		p.Embeddings *= 2
	}
	p.Norms = L*2*h + h
	p.Total = p.Attention + p.RoutedExperts + p.SharedExperts + p.DenseMLP + p.Routers + p.Embeddings + p.Norms
	p.Activated = p.Total - p.RoutedExperts + ML*int64(m.TopK)*expertP
	return p
}

// FrontendBytes is what a front end holds: every weight but the routed
// experts, at ElemBytes.
func (m MoEShape) FrontendBytes() int64 {
	p := m.Params()
	return (p.Total - p.RoutedExperts) * int64(m.ElemBytes)
}

// ---- Placement ----

// RuntimeReserve is internal/worker.RuntimeReserve (48 MiB): the part of a
// worker's memory that is not for experts, the default of
// PlaceConfig.ReserveBytes. Copied, not imported: this package links no
// daemon code.
const RuntimeReserve int64 = 48 << 20

// PlaceConfig is how the routed experts are placed on the workers.
type PlaceConfig struct {
	// Replicas is R, the copies of each expert on distinct workers
	// (placement.Input.Replicas; 0 means 1).
	Replicas int
	// HotReplicas is EPLB's redundant experts: extra copies per MoE
	// layer, beyond the placement's R, given one at a time to the
	// expert with the most expected rows per copy (its Popularity over
	// its copies), each on the worker with the least expected rows of
	// that layer that does not hold it and has room. Front ends then
	// spread rows over them by the client's rule (fewest rows in flight,
	// primary first). 0: none.
	HotReplicas int
	// ReserveBytes is each worker's memory not for experts (the OS, the
	// runtime, activations). 0 means RuntimeReserve (the worker's own
	// reserve; a real host wants more, see the scenario).
	ReserveBytes int64
}

// ServePlacement is a placement as the serving model uses it: the real
// placement.Place result (Base) plus any hot replicas, by worker index.
type ServePlacement struct {
	Base    cluster.Placement
	Workers []cluster.WorkerID // index -> ID (sorted)
	// Owners[layer][expert] are the worker indices holding the expert,
	// Place's owners first (primary first), then hot replicas.
	Owners [][][]int
	// Bytes and Copies held per worker; Budget is each worker's expert
	// budget (memory less the reserve).
	Bytes     []int64
	Copies    []int
	Budget    int64
	HotCopies int
}

// MaxBytes is the most expert bytes any worker holds.
func (p *ServePlacement) MaxBytes() int64 { return slices.Max(p.Bytes) }

// simWorkerID names worker i of a simulated cluster (sorted as indices).
func simWorkerID(i int) cluster.WorkerID { return cluster.WorkerID(fmt.Sprintf("w%04d", i)) }

// servePlaceInput is the placement.Input for m on workers (each with budget
// bytes for experts).
func servePlaceInput(m MoEShape, workers []cluster.WorkerID, budget int64, replicas int) placement.Input {
	in := placement.Input{Model: m.Name, Layers: m.Layers, Replicas: replicas}
	eb := m.ExpertBytes()
	for l := m.DenseLayers; l < m.Layers; l++ {
		for e := 0; e < m.RoutedExperts; e++ {
			in.Experts = append(in.Experts, placement.Expert{ID: expert.ID{Layer: l, Expert: e}, Bytes: eb})
		}
	}
	for _, id := range workers {
		in.Workers = append(in.Workers, cluster.WorkerInfo{ID: id, Addr: string(id) + ":7070", MemBytes: budget})
	}
	return in
}

// serveExpertBudget is a worker's expert budget on c under pc.
func serveExpertBudget(c Cluster, pc PlaceConfig) (int64, error) {
	reserve := pc.ReserveBytes
	if reserve == 0 {
		reserve = RuntimeReserve
	}
	if c.MemoryBytes <= reserve {
		return 0, fmt.Errorf("simulate: %s of memory per worker leaves nothing for experts after a reserve of %s", fmtBytes(c.MemoryBytes), fmtBytes(reserve))
	}
	return c.MemoryBytes - reserve, nil
}

// PlaceServe places m's routed experts on c's workers with the real
// placement.Place (R copies, each worker's memory less the reserve as its
// budget), then adds pc.HotReplicas hot copies per MoE layer by pop (nil:
// uniform). When the experts do not fit it returns an error wrapping
// placement.ErrInsufficientMemory that names the shortfall.
func PlaceServe(m MoEShape, c Cluster, pop Popularity, pc PlaceConfig) (*ServePlacement, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	budget, err := serveExpertBudget(c, pc)
	if err != nil {
		return nil, err
	}
	ids := make([]cluster.WorkerID, c.Workers)
	for i := range ids {
		ids[i] = simWorkerID(i)
	}
	r := max(pc.Replicas, 1)
	in := servePlaceInput(m, ids, budget, r)
	base, err := placement.Place(in)
	if err != nil {
		var me *placement.MemoryError
		if errors.As(err, &me) {
			need := int64(m.MoELayers()*m.RoutedExperts) * m.ExpertBytes() * int64(min(r, c.Workers))
			have := budget * int64(c.Workers)
			return nil, fmt.Errorf("%s does not fit: %d x %d routed experts of %s x %d copies need %s; %d workers x %s budget (%s memory less %s reserve) have %s, %s short (%w)",
				m.Name, m.MoELayers(), m.RoutedExperts, fmtBytes(m.ExpertBytes()), min(r, c.Workers), fmtBytes(need),
				c.Workers, fmtBytes(budget), fmtBytes(c.MemoryBytes), fmtBytes(c.MemoryBytes-budget), fmtBytes(have), fmtBytes(max(need-have, 0)), err)
		}
		return nil, err
	}
	sp := &ServePlacement{Base: base, Workers: ids, Bytes: make([]int64, c.Workers), Copies: make([]int, c.Workers), Budget: budget}
	sp.fromBase(m)
	if pc.HotReplicas > 0 {
		if err := sp.addHot(m, pop, pc.HotReplicas); err != nil {
			return nil, err
		}
	}
	return sp, nil
}

// fromBase fills Owners, Bytes and Copies from Base.
func (p *ServePlacement) fromBase(m MoEShape) {
	idx := map[cluster.WorkerID]int{}
	for i, id := range p.Workers {
		idx[id] = i
	}
	eb := m.ExpertBytes()
	p.Owners = make([][][]int, m.Layers)
	for l := m.DenseLayers; l < m.Layers; l++ {
		p.Owners[l] = make([][]int, m.RoutedExperts)
		for e := range p.Owners[l] {
			for _, id := range p.Base.OwnersOf(expert.ID{Layer: l, Expert: e}) {
				w := idx[id]
				p.Owners[l][e] = append(p.Owners[l][e], w)
				p.Bytes[w] += eb
				p.Copies[w]++
			}
		}
	}
}

// addHot gives each MoE layer n extra copies (see PlaceConfig.HotReplicas).
func (p *ServePlacement) addHot(m MoEShape, pop Popularity, n int) error {
	eb := m.ExpertBytes()
	N := len(p.Workers)
	load := make([]float64, N)
	for l := m.DenseLayers; l < m.Layers; l++ {
		w := make([]float64, m.RoutedExperts)
		for e := range w {
			w[e] = 1
			if l < len(pop) && pop[l] != nil {
				w[e] = pop[l][e]
			}
		}
		clear(load)
		for e, ws := range p.Owners[l] {
			for _, x := range ws {
				load[x] += w[e] / float64(len(ws))
			}
		}
		for i := 0; i < n; i++ {
			best, bestPer := -1, -1.0
			for e, ws := range p.Owners[l] {
				if len(ws) >= N {
					continue
				}
				if per := w[e] / float64(len(ws)); per > bestPer {
					best, bestPer = e, per
				}
			}
			if best < 0 {
				break // every expert of the layer is on every worker
			}
			ws := p.Owners[l][best]
			to := -1
			for x := 0; x < N; x++ {
				if slices.Contains(ws, x) || p.Bytes[x]+eb > p.Budget {
					continue
				}
				if to < 0 || load[x] < load[to] || (load[x] == load[to] && p.Bytes[x] < p.Bytes[to]) {
					to = x
				}
			}
			if to < 0 {
				return fmt.Errorf("hot replicas: layer %d: no worker has %s free for copy %d of %d (budget %s per worker): %w",
					l, fmtBytes(eb), i+1, n, fmtBytes(p.Budget), placement.ErrInsufficientMemory)
			}
			for _, x := range ws {
				load[x] -= w[best] / float64(len(ws))
				load[x] += w[best] / float64(len(ws)+1)
			}
			load[to] += w[best] / float64(len(ws)+1)
			p.Owners[l][best] = append(ws, to)
			p.Bytes[to] += eb
			p.Copies[to]++
			p.HotCopies++
		}
	}
	return nil
}

// fmtBytes writes b in GB (decimal, as memory is sold: GB for bytes/1e9)
// or MB.
func fmtBytes(b int64) string {
	switch {
	case b >= 1e12:
		return fmt.Sprintf("%.2f TB", float64(b)/1e12)
	case b >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(b)/1e9)
	default:
		return fmt.Sprintf("%.1f MB", float64(b)/1e6)
	}
}

// ---- Costs ----

// serveCost turns shapes into times from a Calibration: a product takes
// the calibrated GEMM time or the time to stream its weights from memory,
// whichever is longer (the roofline a decode GEMV sits on).
type serveCost struct {
	m      MoEShape
	cal    *Calibration
	dtype  string  // GEMM dtype of the weights
	hostBW float64 // a host's memory bandwidth, bytes/s (0: cores x the calibration's per-core)
	memo   map[serveCostKey]time.Duration
	// expert times by rows, on 1 thread and on expertNThreads
	expert1, expertN []time.Duration
	expertNThreads   int
}

type serveCostKey struct {
	m, k, n, threads int
	f32              bool // dtype "f32", else the weights' dtype
	bytes            int64
}

func newServeCost(m MoEShape, cal *Calibration, hostBW float64) (*serveCost, error) {
	if cal == nil || len(cal.GEMM) == 0 {
		return nil, fmt.Errorf("simulate: a calibration with GEMM points is needed")
	}
	c := &serveCost{m: m, cal: cal, dtype: "f32", hostBW: hostBW, memo: map[serveCostKey]time.Duration{}}
	if m.ElemBytes < 4 {
		c.dtype = "bf16"
		if !slices.ContainsFunc(cal.GEMM, func(p GEMMPoint) bool { return p.DType == "bf16" }) {
			c.dtype = "f32" // no bf16 measurement: the float32 kernel's rate, bf16's bytes
		}
	}
	return c, nil
}

// bw is the memory bandwidth threads threads stream weights at.
func (c *serveCost) bw(threads int) float64 {
	b := c.cal.MemBandwidth * float64(max(threads, 1))
	if c.hostBW > 0 && (b == 0 || b > c.hostBW) {
		b = c.hostBW
	}
	return b
}

// gemm is an (m x k) x (k x n) product on threads threads whose operands
// stream bytes from memory.
func (c *serveCost) gemm(m, k, n int, dtype string, threads int, bytes int64) (time.Duration, error) {
	key := serveCostKey{m, k, n, threads, dtype == "f32", bytes}
	if d, ok := c.memo[key]; ok {
		return d, nil
	}
	d, err := c.cal.GEMMTime(m, k, n, dtype, threads)
	if err != nil {
		return 0, err
	}
	if bw := c.bw(threads); bw > 0 && bytes > 0 {
		d = max(d, rateBytes(bytes, bw))
	}
	c.memo[key] = d
	return d, nil
}

func rateBytes(bytes int64, perS float64) time.Duration {
	return time.Duration(float64(bytes) / perS * float64(time.Second))
}

// weights is the product of rows tokens through the matrices (weights of
// ElemBytes) on threads threads.
func (c *serveCost) weights(rows int, ms []weightMatrix, threads int) (time.Duration, error) {
	var t time.Duration
	for _, x := range ms {
		d, err := c.gemm(rows, x.In, x.Out, c.dtype, threads, x.params()*int64(c.m.ElemBytes))
		if err != nil {
			return 0, err
		}
		t += d
	}
	return t, nil
}

// expert is one routed expert over rows rows on threads threads: the
// calibration's measured expert (Calibration.ExpertTime) where it has the
// shape, else its three products from the GEMM points.
func (c *serveCost) expert(rows, threads int) (time.Duration, error) {
	memo := c.expert1
	if threads != 1 {
		if threads != c.expertNThreads {
			c.expertN, c.expertNThreads = nil, threads
		}
		memo = c.expertN
	}
	if rows < len(memo) && memo[rows] > 0 {
		return memo[rows], nil
	}
	h, f := c.m.Hidden, c.m.ExpertInter
	var d time.Duration
	var err error
	if one, ok := c.cal.ExpertTime(h, f, c.dtype, rows); ok {
		// The measured expert on one thread, its rows split over threads,
		// never faster than streaming its weights.
		d = one / time.Duration(max(threads, 1))
		if bw := c.bw(threads); bw > 0 {
			d = max(d, rateBytes(c.m.ExpertBytes(), bw))
		}
	} else {
		d, err = c.weights(rows, []weightMatrix{{h, f}, {h, f}, {f, h}}, threads)
	}
	if err != nil || rows > 1<<16 {
		return d, err
	}
	for len(memo) <= rows {
		memo = append(memo, 0)
	}
	memo[rows] = d
	if threads == 1 {
		c.expert1 = memo
	} else {
		c.expertN = memo
	}
	return d, nil
}

// attnCore is the attention proper (scores and weighted values over the
// cache, f32) of tokens queries over ctx cached positions each, one query
// after another, each product on threads threads (MLA absorbed: all heads
// against the latent; GQA: each key/value head's query group against its
// keys and values), no faster than reading the cache.
func (c *serveCost) attnCore(tokens, ctx, threads int) (time.Duration, error) {
	if tokens <= 0 || ctx <= 0 {
		return 0, nil
	}
	a := c.m.Attn
	var one time.Duration
	var cache int64 // bytes of cache one query reads
	if a.MLA() {
		s, err := c.gemm(a.Heads, a.KVLoRARank+a.QKRopeDim, ctx, "f32", threads, 0)
		if err != nil {
			return 0, err
		}
		v, err := c.gemm(a.Heads, ctx, a.KVLoRARank, "f32", threads, 0)
		if err != nil {
			return 0, err
		}
		one = s + v
		cache = int64(ctx) * int64(a.KVLoRARank+a.QKRopeDim) * 4
	} else {
		g := a.Heads / a.KVHeads
		s, err := c.gemm(g, a.HeadDim, ctx, "f32", threads, 0)
		if err != nil {
			return 0, err
		}
		v, err := c.gemm(g, ctx, a.HeadDim, "f32", threads, 0)
		if err != nil {
			return 0, err
		}
		one = time.Duration(a.KVHeads) * (s + v)
		cache = int64(ctx) * int64(2*a.KVHeads*a.HeadDim) * 4
	}
	if bw := c.bw(threads); bw > 0 {
		one = max(one, rateBytes(cache, bw))
	}
	return time.Duration(tokens) * one, nil
}

// frontLayer is the front end's part of decoder layer l for a step of
// tokens tokens (decode tokens at ctx cached positions plus prefill
// tokens at prefillCtx): attention, then the dense MLP (dense layers) or
// the router and the shared experts (MoE layers).
func (c *serveCost) frontLayer(l, tokens, decode, ctx, prefillCtx, threads int) (time.Duration, error) {
	m := c.m
	t, err := c.weights(tokens, m.attnMatrices(), threads)
	if err != nil {
		return 0, err
	}
	a1, err := c.attnCore(decode, ctx, threads)
	if err != nil {
		return 0, err
	}
	a2, err := c.attnCore(tokens-decode, prefillCtx, threads)
	if err != nil {
		return 0, err
	}
	t += a1 + a2
	h := m.Hidden
	var mlp []weightMatrix
	if !m.IsMoE(l) {
		mlp = []weightMatrix{{h, m.DenseInter}, {h, m.DenseInter}, {m.DenseInter, h}}
	} else {
		r, err := c.gemm(tokens, h, m.RoutedExperts, "f32", threads, int64(h)*int64(m.RoutedExperts)*int64(m.ElemBytes))
		if err != nil {
			return 0, err
		}
		t += r
		si := m.sharedInter()
		for i := 0; i < m.SharedExperts; i++ {
			mlp = append(mlp, weightMatrix{h, si}, weightMatrix{h, si}, weightMatrix{si, h})
		}
	}
	d, err := c.weights(tokens, mlp, threads)
	return t + d, err
}

// head is the final norm and the output head for seqs sequences (one
// logit row each).
func (c *serveCost) head(seqs, threads int) (time.Duration, error) {
	return c.weights(seqs, []weightMatrix{{c.m.Hidden, c.m.Vocab}}, threads)
}

// ---- The serving model ----

// ServeConfig is one serving run to predict: F front ends (Cluster.Frontends,
// each on a host of its own) decoding Batch sequences each, step after
// step, over Cluster.Workers workers holding the routed experts.
type ServeConfig struct {
	Model   MoEShape
	Cluster Cluster
	// Batch is the sequences each front end decodes per step (continuous
	// batching keeps the batch full: a finished sequence's slot takes the
	// next request). Default 1.
	Batch int
	// Context is the cached tokens each decoding sequence attends over,
	// on average (0: none; `simulate serve` defaults to 1024).
	Context int
	// PromptTokens > 0 with OutputTokens > 0 models whole requests: each
	// slot's request is its prompt, fed whole in one step (which also
	// samples its first token), then OutputTokens-1 decode steps; the
	// slots are staggered by OutputTokens/Batch steps. 0: decode only.
	PromptTokens, OutputTokens int
	// Steps are the decode steps per front end measured after Warmup
	// steps (defaults 12 and 2).
	Steps, Warmup int
	// Seed draws the routing (each front end its own stream).
	Seed uint64
	// Popularity of the experts (nil: uniform); see ZipfPopularity and
	// RoutingTrace.Popularity.
	Popularity Popularity
	Place      PlaceConfig
	// Placement, if set, is used instead of PlaceServe(Model, Cluster,
	// Popularity, Place) (to share one across runs).
	Placement *ServePlacement
	// MemBandwidth caps a host's memory bandwidth, bytes/s (0: cores x
	// the calibration's per-core MemBandwidth, no cap).
	MemBandwidth float64
	// SharedCores > 0 puts every host on one pool of that many cores (the
	// emulated cluster of network namespaces on one machine).
	SharedCores int
	// StealCores is the part of SharedCores a hypervisor takes from the
	// pool (a VM's steal time, in cores: /proc/stat's steal over the
	// window): every task on the pool then runs SharedCores /
	// (SharedCores - StealCores) as long, its core time unchanged
	// (steal is time the machine's vCPUs wanted a core and did not get
	// one). 0: none.
	StealCores float64
	// FrontendThreads and WorkerThreads are the threads (GOMAXPROCS) of a
	// front end's and a worker's compute (0: the host's cores, or
	// SharedCores).
	FrontendThreads, WorkerThreads int
	// Choice is how a front end sends an expert's rows to its copies
	// (default ChoiceClient, what the real client does).
	Choice ReplicaChoice
	// Burst > 0 shapes every interface as tc tbf does (see Host.Burst).
	Burst int
	// HeaderBytes is each request's and answer's framing beyond its rows
	// (default 64).
	HeaderBytes int
}

// ReplicaChoice is how a front end's rows of an expert with several
// copies are sent.
type ReplicaChoice int

const (
	// ChoiceClient is transport.RemoteExecutor.assign: all of an
	// expert's rows of a call go to one copy, the one whose worker has
	// the fewest rows in flight from this front end, counting the rows
	// already assigned in this call (a front end has nothing else in
	// flight: it runs one layer at a time), placement order rotated on
	// ties by the call's number plus an offset of the front end's own
	// (hashed from its name; here front end f's call k starts at copy
	// (k+f) mod copies, the offsets spread evenly). Front ends do not see
	// each other's load.
	ChoiceClient ReplicaChoice = iota
	// ChoiceRotate breaks ties by the front end only (front end f starts
	// at copy f mod copies, every call).
	ChoiceRotate
	// ChoicePrimary is the client's rule before that: placement order
	// (primary first) on ties, so on ties every front end picks the
	// primary.
	ChoicePrimary
	// ChoiceSplit divides each expert's rows evenly over its copies, as
	// EPLB's dispatch spreads a logical expert's tokens over its physical
	// replicas.
	ChoiceSplit
)

// ParseReplicaChoice reads "client", "rotate", "primary" or "split".
func ParseReplicaChoice(s string) (ReplicaChoice, error) {
	switch s {
	case "client":
		return ChoiceClient, nil
	case "rotate":
		return ChoiceRotate, nil
	case "primary":
		return ChoicePrimary, nil
	case "split":
		return ChoiceSplit, nil
	}
	return 0, fmt.Errorf("replica choice %q: want client, rotate, primary or split", s)
}

func (c ReplicaChoice) String() string {
	return [...]string{"client", "rotate", "primary", "split"}[c]
}

// StepSplit is a decode step's time by what it waited for: Frontend is
// the front end's own compute (attention, dense and shared MLPs, router,
// head); the rest is the critical path of each MoE layer's exchange (the
// answer that came last): Expert the owner's batch queue and GEMMs,
// NIC serialization and queueing on interfaces, Latency the wire, Software
// the per-message CPU (and waiting for a core to run it).
type StepSplit struct {
	Frontend, Expert, NIC, Latency, Software time.Duration
}

// Exchange is the step's exchange wait: NIC + Latency + Software.
func (s StepSplit) Exchange() time.Duration { return s.NIC + s.Latency + s.Software }

// Total is the step.
func (s StepSplit) Total() time.Duration { return s.Frontend + s.Expert + s.Exchange() }

// Utilization is how busy the cluster's resources were over the measured
// window, as fractions of the window (of all cores for cores).
type Utilization struct {
	// FrontendCompute: the mean front end's compute (its cores).
	FrontendCompute float64
	// WorkerGEMM: the busiest worker's GEMM goroutine (batches running),
	// HottestWorker that worker.
	WorkerGEMM    float64
	HottestWorker string
	// WorkerGEMMBandwidth is the part of that worker's batch time bound
	// by memory bandwidth (streaming the experts' weights) rather than
	// arithmetic, as a fraction of its batch time.
	WorkerGEMMBandwidth float64
	// Link: the busiest interface direction (serialization), BusiestLink
	// which ("f0 tx", "w0012 rx").
	Link        float64
	BusiestLink string
	// Cores: the busiest host's cores (compute and messages), BusiestHost
	// which; Software the busiest host's cores on messages alone.
	Cores, Software float64
	BusiestHost     string
	// FrontendCores and WorkerCores are the core time the front ends'
	// and the workers' hosts took (compute on all their threads,
	// messages' work), in cores (1 = one core through the window), summed
	// over each role's hosts.
	FrontendCores, WorkerCores float64
}

// ServeResult is what PredictServe predicts.
type ServeResult struct {
	Frontends, Workers, Batch int
	// TokensPerS is the cluster's decode throughput: the sum over front
	// ends of Batch / their mean step.
	TokensPerS float64
	// ITL50 and ITL99 are the inter-token latency percentiles: the
	// measured steps' durations (every sequence gets a token per step).
	ITL50, ITL99 time.Duration
	// Split is the mean step by StepSplit.
	Split StepSplit
	// Exchange is the mean MoE layer's exchange as the front end waits
	// for it (RemoteExecutor.Compute: first request out to last answer
	// in), Owners its critical path's expert part, Rows its mean rows
	// (token choices) per front end.
	Exchange, Owners time.Duration
	Rows             float64
	Util             Utilization
	// Bottleneck names what the steps waited for most.
	Bottleneck string
	Placement  *ServePlacement
}

// message cost categories of a critical path
const (
	catSoftware = iota
	catNIC
	catLatency
	catExpert
	nCat
)

// serveMsg is one request (front end -> worker) or its answer.
type serveMsg struct {
	fe, w, layer int
	rows, bytes  int
	experts      []int32 // ascending, with erows rows each
	erows        []int32
	toWorker     bool
	measured     bool          // sent in a measured step
	stage        time.Duration // when it was queued on the owner
	copyEnd      time.Duration // when the sender's copy of the payload ends
	got          time.Duration // when its last byte passed the receiver's interface
	path         [nCat]time.Duration
}

// corePool is a host's cores (or the shared machine's), as two
// timelines: compute tasks (products, each on n threads) take the n
// cores that free up first; message tasks (one core each) run on the
// same cores time-shared with compute, as the Go scheduler interleaves
// the network goroutines with a product's workers: they wait only for
// other messages, and the core time they take while compute runs is a
// debt the next compute task pays (its duration grows by debt / cores).
type corePool struct {
	free         []time.Duration // compute
	msgFree      []time.Duration // messages
	debt         time.Duration   // message core time taken from running compute
	msg, compute time.Duration   // busy core time in the measured window
	idx          []int
}

func newCorePool(n int) *corePool {
	return &corePool{free: make([]time.Duration, n), msgFree: make([]time.Duration, n)}
}

// compute runs a compute task of d on n threads ready at t (paying its
// share of the debt); it returns when it ends.
func (p *corePool) computeTask(t time.Duration, n int, d time.Duration) time.Duration {
	n = min(max(n, 1), len(p.free))
	if p.debt > 0 {
		share := p.debt * time.Duration(n) / time.Duration(len(p.free))
		d += share / time.Duration(n)
		p.debt -= share
	}
	return p.take(t, n, d)
}

// message runs a message task of d ready at t that takes work of core
// time (at least d; more where the kernel's part runs beside it); it
// returns when it ends.
func (p *corePool) message(t, d, work time.Duration) time.Duration {
	best := 0
	for i := range p.msgFree {
		if p.msgFree[i] < p.msgFree[best] {
			best = i
		}
	}
	start := max(t, p.msgFree[best])
	end := start + d
	p.msgFree[best] = end
	if extra := work - d; extra > 0 && len(p.msgFree) > 1 {
		// The rest of its core time (the kernel's part) runs on another
		// core beside it: the next message there waits for it.
		next := -1
		for i := range p.msgFree {
			if i != best && (next < 0 || p.msgFree[i] < p.msgFree[next]) {
				next = i
			}
		}
		p.msgFree[next] = max(p.msgFree[next], start) + extra
	}
	for _, f := range p.free {
		if f > start {
			p.debt += max(work, d) // compute was running: it is that much later
			break
		}
	}
	return end
}

// take runs a task of d on n cores ready at t; it returns when it ends.
func (p *corePool) take(t time.Duration, n int, d time.Duration) time.Duration {
	n = min(max(n, 1), len(p.free))
	if n == 1 {
		best := 0
		for i := range p.free {
			if p.free[i] < p.free[best] {
				best = i
			}
		}
		end := max(t, p.free[best]) + d
		p.free[best] = end
		return end
	}
	if n == len(p.free) {
		end := max(t, slices.Max(p.free)) + d
		for i := range p.free {
			p.free[i] = end
		}
		return end
	}
	p.idx = p.idx[:0]
	for i := range p.free {
		p.idx = append(p.idx, i)
	}
	slices.SortStableFunc(p.idx, func(a, b int) int { return cmp.Compare(p.free[a], p.free[b]) })
	end := max(t, p.free[p.idx[n-1]]) + d
	for _, i := range p.idx[:n] {
		p.free[i] = end
	}
	return end
}

// serveEvent kinds
const (
	sevStep      = iota // a front end begins a step
	sevNext             // a front end's compute of a dense layer ended
	sevSend             // a front end's compute of an MoE layer ended: send
	sevStepEnd          // a front end's head ended
	sevTx               // a message's first chunk is copied: onto the interface
	sevRx               // a message's last byte arrived (receiver free)
	sevRxCPU            // a message's first byte is in: its receive CPU
	sevRecv             // a message was received
	sevBatch            // a worker's GEMM goroutine takes its queue
	sevBatchDone        // a worker's batch ended
)

type serveEvent struct {
	t    time.Duration
	seq  uint64
	kind uint8
	i    int // front end or worker
	m    *serveMsg
}

type serveHeap []serveEvent

func (h serveHeap) less(a, b int) bool {
	return h[a].t < h[b].t || (h[a].t == h[b].t && h[a].seq < h[b].seq)
}

// The queue is a 4-ary heap (fewer levels than a binary one: the sim
// holds up to a few hundred thousand events).
func (h *serveHeap) push(e serveEvent) {
	*h = append(*h, e)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 4
		if !q.less(i, p) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *serveHeap) pop() serveEvent {
	q := *h
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		m := i
		for c := 4*i + 1; c <= 4*i+4 && c < n; c++ {
			if q.less(c, m) {
				m = c
			}
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
	return top
}

// serveHost is one host: its cores, its interface each way, its leaf.
type serveHost struct {
	name           string
	cores          *corePool
	tx, rx         bucket
	txBusy, rxBusy time.Duration // serialization in the measured window
	leaf           int
	compute        time.Duration // its compute tasks in the window (one thread's time)
	busy           time.Duration // its core time in the window: compute on all its threads, messages' work
	// thread is when the host's one thread is free (serveSim.serial only).
	thread time.Duration
}

type serveFE struct {
	step, layer      int
	calls            int // MoE-layer calls made (the client's tie rotation)
	tokens, decode   int
	stepStart        time.Duration
	sendAt           time.Duration
	pending          int
	router           *Router
	counts, assigned []int
	touched          []int
	byW              []*serveMsg // this call's request to each worker
	dests            []*serveMsg
	warmEnd, end     time.Duration
	// measured steps' sums
	fe, exch, owners time.Duration
	path             [nCat]time.Duration
	layers, rows     int
}

type serveWorker struct {
	queue, running []*serveMsg
	busy, starting bool
	gemm           time.Duration // batches running in the window
	gemmBW         time.Duration // of which batches bound by memory bandwidth
}

type serveSim struct {
	cfg       ServeConfig
	m         MoEShape
	c         Cluster
	cost      *serveCost
	pl        *ServePlacement
	F, N, B   int
	feThreads int
	wThreads  int
	msgCPU    time.Duration
	msgBPS    float64
	// linkMsg and linkByte (ns/B) are the core time a message side takes
	// across the links (Calibration.LinkMsgCPU, LinkByteCPU), charged on
	// a shared pool (SharedCores) instead of the latency msgCost; 0: none.
	linkMsg  time.Duration
	linkByte float64
	// serial: every process has one thread on a shared pool
	// (SharedCores, FrontendThreads = WorkerThreads = 1), and runs its
	// messages and its compute one after the other on it: a message
	// holds a core of the pool as a product does (or, finding every core
	// taken, is time-sliced in beside them: serveSim.message), instead of
	// the time-shared message timeline (corePool.message).
	serial bool
	// wake is what a message waits, in the serial model, when its
	// receiver's thread is idle (asleep) as it arrives (Calibration.Wake),
	// wakeWork the core time that wake adds (Calibration.WakeWork).
	wake, wakeWork time.Duration
	// stolen stretches every task on a shared pool: SharedCores /
	// (SharedCores - StealCores) (1: no steal).
	stolen float64
	// shareX scales every compute task in the serial model (the
	// workers' batches and the front end's layers): a product on cores
	// shared by more one-thread processes than cores, each woken to
	// compute, over the same product in the cost model
	// (Calibration.ShareProduct at ShareRows rows over serveCost.expert
	// at those rows); 0: not measured.
	shareX    float64
	hosts     []serveHost
	fe        []serveFE
	w         []serveWorker
	h         serveHeap
	seq       uint64
	now       time.Duration
	measuring bool
	winStart  time.Duration
	winEnd    time.Duration
	free      []*serveMsg
	grp       []int // batch scratch: rows per layer*E+expert
	grpKeys   []int
	itl       []time.Duration
	bwBound   bool // the last batchTime was bound by memory bandwidth
	err       error
}

func (s *serveSim) push(t time.Duration, kind uint8, i int, m *serveMsg) {
	s.seq++
	s.h.push(serveEvent{t: t, seq: s.seq, kind: kind, i: i, m: m})
}

func (s *serveSim) newMsg() *serveMsg {
	if n := len(s.free); n > 0 {
		m := s.free[n-1]
		s.free = s.free[:n-1]
		*m = serveMsg{experts: m.experts[:0], erows: m.erows[:0]}
		return m
	}
	return &serveMsg{}
}

// PredictServe runs the serving model (see docs/scale/serving.md): per
// decode step of each front end, its compute of each layer, then for each
// MoE layer one request per destination worker (the client's choice of
// copies: per expert, the copy with the fewest rows assigned in this
// call, placement order rotated by the call's number and the front end on
// ties), each costing the per-message CPU on a
// core of either side, serialized on the sender's and receiver's
// interfaces (CrossLeafRate across leaves) a latency apart, batched on the
// owner as the real server batches (everything queued when its GEMM
// goroutine frees, one product per expert over every request's rows;
// experts in parallel single-threaded when the batch is small, in turn
// on all threads otherwise), answered the same way; the layer ends with
// its last answer and the step with the head.
func PredictServe(cfg ServeConfig, cal *Calibration) (*ServeResult, error) {
	s, err := newServeSim(cfg, cal)
	if err != nil {
		return nil, err
	}
	if err := s.run(); err != nil {
		return nil, err
	}
	return s.result(), nil
}

func newServeSim(cfg ServeConfig, cal *Calibration) (*serveSim, error) {
	m, c := cfg.Model, cfg.Cluster
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if c.Workers < 1 || c.Frontends < 1 || (c.Cores < 1 && cfg.SharedCores < 1) || c.Rate <= 0 {
		return nil, fmt.Errorf("simulate: cluster of %d workers, %d front ends, %d cores, rate %g B/s", c.Workers, c.Frontends, c.Cores, c.Rate)
	}
	if c.HostsPerLeaf < 1 {
		c.HostsPerLeaf = c.Workers + c.Frontends
	}
	if c.Oversubscription < 1 {
		c.Oversubscription = 1
	}
	if cfg.Batch == 0 {
		cfg.Batch = 1
	}
	if cfg.Steps == 0 {
		cfg.Steps = 12
	}
	if cfg.Warmup == 0 {
		cfg.Warmup = 2
	}
	if cfg.HeaderBytes == 0 {
		cfg.HeaderBytes = 64
	}
	if cfg.Batch < 1 || cfg.Steps < 1 || cfg.Warmup < 0 || cfg.Context < 0 || cfg.PromptTokens < 0 || cfg.OutputTokens < 0 {
		return nil, fmt.Errorf("simulate: batch %d, steps %d, warmup %d, context %d, prompt %d, output %d: want batch, steps >= 1, the rest >= 0",
			cfg.Batch, cfg.Steps, cfg.Warmup, cfg.Context, cfg.PromptTokens, cfg.OutputTokens)
	}
	cost, err := newServeCost(m, cal, cfg.MemBandwidth)
	if err != nil {
		return nil, err
	}
	pl := cfg.Placement
	if pl == nil {
		if pl, err = PlaceServe(m, c, cfg.Popularity, cfg.Place); err != nil {
			return nil, err
		}
	}
	if len(pl.Workers) != c.Workers || len(pl.Owners) != m.Layers {
		return nil, fmt.Errorf("simulate: placement of %d workers, %d layers for a cluster of %d workers and a model of %d layers", len(pl.Workers), len(pl.Owners), c.Workers, m.Layers)
	}
	s := &serveSim{cfg: cfg, m: m, c: c, cost: cost, pl: pl, F: c.Frontends, N: c.Workers, B: cfg.Batch,
		msgCPU: cal.MsgCPU, msgBPS: cal.MsgBytesPerS}
	if s.msgCPU == 0 && cal.ExchangeRTT > 0 {
		s.msgCPU = cal.ExchangeRTT / 4 // a round trip is 2 messages, each paid on both sides
	}
	if cfg.SharedCores > 0 && cal.LinkMsgCPU > 0 {
		// Hosts sharing one machine's cores, with the exchange's core
		// time measured across the link: a message side's latency is a
		// quarter of the one-row round trip there less the raw-TCP one
		// (its bytes at LinkByteCPU), its core time LinkMsgCPU (the
		// kernel's work included, beside the sender's thread).
		s.linkMsg, s.linkByte = cal.LinkMsgCPU, cal.LinkByteCPU
		if cal.LinkExchangeRTT > cal.LinkRTT {
			s.msgCPU = min((cal.LinkExchangeRTT-cal.LinkRTT)/4, cal.LinkMsgCPU)
		}
		s.msgBPS = 0
		if cal.LinkByteCPU > 0 {
			s.msgBPS = 1e9 / cal.LinkByteCPU
		}
	}
	cores := c.Cores
	if cfg.SharedCores > 0 {
		cores = cfg.SharedCores
	}
	s.feThreads, s.wThreads = cores, cores
	if cfg.FrontendThreads > 0 {
		s.feThreads = cfg.FrontendThreads
	}
	if cfg.WorkerThreads > 0 {
		s.wThreads = cfg.WorkerThreads
	}
	s.serial = cfg.SharedCores > 0 && s.feThreads == 1 && s.wThreads == 1
	s.stolen = 1
	if cfg.SharedCores > 0 && cfg.StealCores > 0 {
		s.stolen = float64(cfg.SharedCores) / (float64(cfg.SharedCores) - min(cfg.StealCores, 0.9*float64(cfg.SharedCores)))
	}
	if s.serial {
		s.wake, s.wakeWork = cal.Wake(), cal.WakeWork
		if cal.ShareProduct > 0 && cal.ShareRows > 0 {
			ref, err := s.cost.expert(cal.ShareRows, 1)
			if err != nil {
				return nil, err
			}
			if ref > 0 {
				s.shareX = cal.ShareProduct.Seconds() / ref.Seconds()
			}
		}
	}
	var shared *corePool
	if cfg.SharedCores > 0 {
		shared = newCorePool(cfg.SharedCores)
	}
	s.hosts = make([]serveHost, s.F+s.N)
	for i := range s.hosts {
		h := &s.hosts[i]
		h.leaf = i / c.HostsPerLeaf
		h.cores = shared
		if shared == nil {
			h.cores = newCorePool(c.Cores)
		}
		if i < s.F {
			h.name = fmt.Sprintf("f%d", i)
		} else {
			h.name = string(pl.Workers[i-s.F])
		}
	}
	s.fe = make([]serveFE, s.F)
	for f := range s.fe {
		s.fe[f] = serveFE{router: NewRouter(m, cfg.Popularity, cfg.Seed*1000003+uint64(f)),
			counts: make([]int, m.RoutedExperts), assigned: make([]int, s.N), byW: make([]*serveMsg, s.N)}
	}
	s.w = make([]serveWorker, s.N)
	s.grp = make([]int, m.Layers*m.RoutedExperts)
	return s, nil
}

// stepCompute is the front end's compute of one whole decode step of
// Batch sequences (no exchange), the estimate that staggers front ends.
func (s *serveSim) stepCompute() (time.Duration, error) {
	var t time.Duration
	for l := 0; l < s.m.Layers; l++ {
		d, err := s.cost.frontLayer(l, s.B, s.B, s.cfg.Context, 0, s.feThreads)
		if err != nil {
			return 0, err
		}
		t += d
	}
	d, err := s.cost.head(s.B, s.feThreads)
	return t + d, err
}

func (s *serveSim) run() error {
	est, err := s.stepCompute()
	if err != nil {
		return err
	}
	for f := 0; f < s.F; f++ {
		s.push(est*time.Duration(f)/time.Duration(s.F), sevStep, f, nil)
	}
	for len(s.h) > 0 && s.err == nil {
		ev := s.h.pop()
		s.now = ev.t
		switch ev.kind {
		case sevStep:
			s.beginStep(ev.i)
		case sevNext:
			s.fe[ev.i].layer++
			s.frontCompute(ev.i)
		case sevSend:
			s.send(ev.i)
		case sevStepEnd:
			s.endStep(ev.i)
		case sevTx:
			s.tx(ev.m)
		case sevRx:
			s.rx(ev.m)
		case sevRxCPU:
			s.rxCPU(ev.m)
		case sevRecv:
			s.recv(ev.m)
		case sevBatch:
			s.batch(ev.i)
		case sevBatchDone:
			s.batchDone(ev.i)
		}
	}
	return s.err
}

func (s *serveSim) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}

func (s *serveSim) beginStep(f int) {
	st := &s.fe[f]
	st.stepStart = s.now
	pre := 0
	if P, O := s.cfg.PromptTokens, s.cfg.OutputTokens; P > 0 && O > 0 {
		for i := 0; i < s.B; i++ {
			if (st.step+i*O/s.B)%O == 0 {
				pre++
			}
		}
		st.decode = s.B - pre
		st.tokens = st.decode + pre*P
	} else {
		st.decode, st.tokens = s.B, s.B
	}
	st.layer = 0
	s.frontCompute(f)
}

func (s *serveSim) measuredStep(st *serveFE) bool { return st.step >= s.cfg.Warmup }

// frontCompute runs the front end's compute of its current layer (or the
// head after the last) on its threads.
func (s *serveSim) frontCompute(f int) {
	st := &s.fe[f]
	var d time.Duration
	var err error
	if st.layer == s.m.Layers {
		d, err = s.cost.head(s.B, s.feThreads)
	} else {
		d, err = s.cost.frontLayer(st.layer, st.tokens, st.decode, s.cfg.Context, (s.cfg.PromptTokens+1)/2, s.feThreads)
	}
	if err != nil {
		s.fail(err)
		return
	}
	d = s.shared(d)
	h := &s.hosts[f]
	end := s.computeTask(h, s.now, s.feThreads, d)
	if s.measuring {
		core := d * time.Duration(min(s.feThreads, len(h.cores.free)))
		h.cores.compute += core
		h.compute += d
		h.busy += core
	}
	if s.measuredStep(st) {
		st.fe += end - s.now
	}
	switch {
	case st.layer == s.m.Layers:
		s.push(end, sevStepEnd, f, nil)
	case s.m.IsMoE(st.layer):
		s.push(end, sevSend, f, nil)
	default:
		s.push(end, sevNext, f, nil)
	}
}

func (s *serveSim) endStep(f int) {
	st := &s.fe[f]
	if s.measuredStep(st) {
		s.itl = append(s.itl, s.now-st.stepStart)
	}
	st.step++
	if st.step == s.cfg.Warmup {
		st.warmEnd = s.now
		if !s.measuring && s.winEnd == 0 {
			s.measuring, s.winStart = true, s.now
		}
	}
	if st.step < s.cfg.Warmup+s.cfg.Steps {
		s.beginStep(f)
		return
	}
	st.end = s.now
	if s.measuring {
		s.measuring, s.winEnd = false, s.now // the window closes with the first front end done
	}
}

// shared is a compute task of d as a one-thread process sharing the
// cores computes it: d x shareX in the serial model where the sharing
// was measured, else d.
func (s *serveSim) shared(d time.Duration) time.Duration {
	if s.shareX <= 0 {
		return d
	}
	return time.Duration(float64(d) * s.shareX)
}

// steal is d on a pool the hypervisor takes StealCores of: d x stolen.
func (s *serveSim) steal(d time.Duration) time.Duration {
	if s.stolen == 1 {
		return d
	}
	return time.Duration(float64(d) * s.stolen)
}

// computeTask runs a compute task of h's (see corePool.computeTask),
// stretched by the pool's steal; in the serial model, after whatever its
// thread is doing.
func (s *serveSim) computeTask(h *serveHost, t time.Duration, n int, d time.Duration) time.Duration {
	d = s.steal(d)
	if !s.serial {
		return h.cores.computeTask(t, n, d)
	}
	end := h.cores.computeTask(max(t, h.thread), n, d)
	h.thread = end
	return end
}

// message runs a message side of h's of latency d (stretched by the
// pool's steal) and core time work ready at t (recv: h receives it), and
// returns when it ends: on the
// pool's message timeline (corePool.message), or in the serial model on
// h's thread and a core of the pool, after s.wake if it finds h's thread
// idle, the rest of its core time (the kernel's part) a debt of the
// pool's compute. When every core of the pool is taken as the message
// becomes ready, it does not wait for a core to free (a product can hold
// one for milliseconds): the kernel's scheduler time-slices its thread in
// among the busy ones, so it runs at once, stretched to the share of
// cores+1 runnable threads on the cores, and the products it runs beside
// pay its core time (the pool's debt).
func (s *serveSim) message(h *serveHost, t, d, work time.Duration, recv bool) time.Duration {
	d = s.steal(d)
	if !s.serial {
		return h.cores.message(t, d, work)
	}
	if recv && h.thread < t {
		t += s.wake // it was asleep
	}
	start := max(t, h.thread)
	if n := len(h.cores.free); slices.Min(h.cores.free) > start {
		end := start + d*time.Duration(n+1)/time.Duration(n)
		h.thread = end
		h.cores.debt += max(work, d)
		return end
	}
	end := h.cores.take(start, 1, d)
	h.thread = end
	if extra := work - d; extra > 0 {
		h.cores.debt += extra
	}
	return end
}

// msgWork is the core time one side spends on a message of bytes: its
// msgCost, or across calibrated links on a shared pool, LinkMsgCPU and
// LinkByteCPU.
func (s *serveSim) msgWork(bytes int) time.Duration {
	if s.linkMsg == 0 {
		return s.msgCost(bytes)
	}
	return s.linkMsg + time.Duration(float64(bytes)*s.linkByte)
}

// msgCost is the CPU one side spends on a message of bytes (its
// latency; msgWork its core time).
func (s *serveSim) msgCost(bytes int) time.Duration {
	d := s.msgCPU
	if s.msgBPS > 0 {
		d += rate(bytes, s.msgBPS)
	}
	return d
}

// send routes the front end's tokens at its layer, sends each expert's
// rows to a copy (ServeConfig.Choice: by default as
// transport.RemoteExecutor.assign does) and one request per destination.
func (s *serveSim) send(f int) {
	st := &s.fe[f]
	l := st.layer
	call := st.calls
	st.calls++
	counts := st.router.Route(l, st.tokens, st.counts)
	st.touched = st.touched[:0]
	dests := st.dests[:0]
	for e, n := range counts {
		if n == 0 {
			continue
		}
		owners := s.pl.Owners[l][e]
		if len(owners) == 0 {
			s.fail(fmt.Errorf("simulate: layer %d expert %d has no copy", l, e))
			return
		}
		if s.cfg.Choice != ChoiceSplit || len(owners) == 1 {
			first := 0
			switch s.cfg.Choice {
			case ChoiceClient:
				first = (call + f) % len(owners)
			case ChoiceRotate:
				first = f % len(owners)
			}
			best := owners[first]
			for i := 1; i < len(owners); i++ {
				if w := owners[(first+i)%len(owners)]; st.assigned[w] < st.assigned[best] {
					best = w
				}
			}
			dests = s.addRows(st, f, best, e, n, dests)
			continue
		}
		// EPLB's dispatch: the rows split evenly over the copies (the
		// remainder from a copy that turns with the front end and step).
		c := len(owners)
		for i := range owners {
			k := (i + f + st.step) % c
			if r := n/c + b2i(k < n%c); r > 0 {
				dests = s.addRows(st, f, owners[i], e, r, dests)
			}
		}
	}
	for _, w := range st.touched {
		st.assigned[w] = 0
		st.byW[w] = nil
	}
	st.dests = dests
	st.sendAt = s.now
	st.pending = len(dests)
	h := &s.hosts[f]
	for _, m := range dests {
		m.bytes = m.rows*s.m.Hidden*4 + s.cfg.HeaderBytes
		if m.measured {
			st.rows += m.rows
		}
		s.sendCPU(h, m, s.now)
	}
}

// addRows adds n rows of expert e to front end f's request to worker w
// in this call (making the request if it is the first) and returns the
// requests.
func (s *serveSim) addRows(st *serveFE, f, w, e, n int, dests []*serveMsg) []*serveMsg {
	if st.assigned[w] == 0 {
		st.touched = append(st.touched, w)
	}
	st.assigned[w] += n
	m := st.byW[w]
	if m == nil {
		m = s.newMsg()
		m.fe, m.w, m.layer, m.toWorker, m.measured = f, w, st.layer, true, s.measuredStep(st)
		st.byW[w] = m
		dests = append(dests, m)
	}
	m.experts = append(m.experts, int32(e))
	m.erows = append(m.erows, int32(n))
	m.rows += n
	return dests
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// serveChunkBytes is the transport's chunk (ClientConfig.ChunkBytes and
// ServerConfig.ChunkBytes default, 1 MiB): a payload streams in chunks,
// so either side's per-byte copying overlaps the transfer but for one
// chunk.
const serveChunkBytes = 1 << 20

// sendCPU runs the sender's software of m on h from t: MsgCPU and one
// chunk's copy before the first byte leaves; the rest of the copy streams
// with the transfer, so the interface finishes no earlier than the copy.
// The core is busy for the whole cost.
func (s *serveSim) sendCPU(h *serveHost, m *serveMsg, t time.Duration) {
	full, work := s.msgCost(m.bytes), s.msgWork(m.bytes)
	end := s.message(h, t, full, work, false)
	out := end - full + s.msgCost(min(m.bytes, serveChunkBytes))
	m.copyEnd = end
	m.path[catSoftware] += out - t
	if s.measuring {
		h.cores.msg += work
		h.busy += work
	}
	s.push(out, sevTx, 0, m)
}

// ends returns a message's sender and receiver hosts.
func (s *serveSim) ends(m *serveMsg) (src, dst *serveHost) {
	a, b := &s.hosts[m.fe], &s.hosts[s.F+m.w]
	if m.toWorker {
		return a, b
	}
	return b, a
}

// link is the interface a message crosses between src and dst: the host
// rate under one leaf, CrossLeafRate across leaves.
func (s *serveSim) link(src, dst *serveHost) Host {
	r := s.c.Rate
	if src.leaf != dst.leaf {
		r = s.c.CrossLeafRate()
	}
	return Host{Rate: r, Burst: s.cfg.Burst}
}

func (s *serveSim) tx(m *serveMsg) {
	src, dst := s.ends(m)
	l := s.link(src, dst)
	nic := src.tx.pass(s.now, m.bytes, l)
	out := max(nic, m.copyEnd)
	if s.measuring {
		src.txBusy += rate(m.bytes, l.Rate)
	}
	m.path[catNIC] += nic - s.now
	m.path[catSoftware] += out - nic // the sender's copy was slower than the link
	m.path[catLatency] += s.c.Latency
	s.push(out+s.c.Latency, sevRx, 0, m)
}

// rx passes m through the receiver's interface; its receive software
// starts with its first byte (or now).
func (s *serveSim) rx(m *serveMsg) {
	src, dst := s.ends(m)
	l := s.link(src, dst)
	ser := rate(m.bytes, l.Rate)
	got := max(dst.rx.pass(s.now-ser, m.bytes, l), s.now)
	if s.measuring {
		dst.rxBusy += ser
	}
	m.path[catNIC] += got - s.now
	m.got = got
	s.push(max(s.now, got-ser), sevRxCPU, 0, m)
}

// rxCPU runs the receiver's software of m: the copy of each chunk as it
// arrives, then MsgCPU; m is in one chunk's copy and MsgCPU after its
// last byte, or when the whole copy is done if that is later.
func (s *serveSim) rxCPU(m *serveMsg) {
	_, dst := s.ends(m)
	full, work := s.msgCost(m.bytes), s.msgWork(m.bytes)
	if s.serial && dst.thread < s.now {
		work += s.wakeWork // it wakes dst's idle thread (s.message adds s.wake)
	}
	end := s.message(dst, s.now, full, work, true)
	done := max(end, m.got+s.msgCost(min(m.bytes, serveChunkBytes)))
	m.path[catSoftware] += done - m.got
	if s.measuring {
		dst.cores.msg += work
		dst.busy += work
	}
	s.push(done, sevRecv, 0, m)
}

func (s *serveSim) recv(m *serveMsg) {
	if m.toWorker {
		w := &s.w[m.w]
		m.stage = s.now
		w.queue = append(w.queue, m)
		if !w.busy && !w.starting {
			w.starting = true
			s.push(s.now, sevBatch, m.w, nil)
		}
		return
	}
	st := &s.fe[m.fe]
	st.pending--
	if st.pending > 0 {
		s.free = append(s.free, m)
		return
	}
	// The last answer: the layer's critical path.
	if m.measured {
		for i, d := range m.path {
			st.path[i] += d
		}
		st.exch += s.now - st.sendAt
		st.owners += m.path[catExpert]
		st.layers++
	}
	s.free = append(s.free, m)
	st.layer++
	s.frontCompute(m.fe)
}

// batch is the worker's GEMM goroutine taking everything queued
// (transport's runBatch).
func (s *serveSim) batch(w int) {
	ws := &s.w[w]
	ws.starting = false
	if ws.busy || len(ws.queue) == 0 {
		return
	}
	ws.running, ws.queue = ws.queue, ws.running[:0]
	d, n, err := s.batchTime(ws.running)
	if err != nil {
		s.fail(err)
		return
	}
	h := &s.hosts[s.F+w]
	end := s.computeTask(h, s.now, n, d)
	if s.measuring {
		core := d * time.Duration(n)
		h.cores.compute += core
		h.compute += d
		h.busy += core
		ws.gemm += end - s.now
		if s.bwBound {
			ws.gemmBW += end - s.now
		}
	}
	for _, m := range ws.running {
		m.path[catExpert] += end - m.stage
	}
	ws.busy = true
	s.push(end, sevBatchDone, w, nil)
}

func (s *serveSim) batchDone(w int) {
	ws := &s.w[w]
	ws.busy = false
	h := &s.hosts[s.F+w]
	for _, m := range ws.running {
		m.toWorker = false
		s.sendCPU(h, m, s.now)
	}
	ws.running = ws.running[:0]
	if len(ws.queue) > 0 && !ws.starting {
		ws.starting = true
		s.push(s.now, sevBatch, w, nil)
	}
}

// batchTime is one batch of jobs on a worker and the cores it occupies
// (and sets bwBound: whether streaming the weights set its time, within
// 5%):
// rows grouped by (layer, expert), one product per expert, as runBatch
// (and expert.Store.Compute) runs them: when the rows are few (at most 4
// per expert on average) the experts run in parallel, each product's own
// ranges shared with idle threads (tensor.ParallelRange nests), so the
// batch takes its single-threaded work spread over the threads, or its
// longest expert on all threads if longer; otherwise the experts run one
// after the other, each on all threads. Never faster than streaming the
// experts' weights at the threads' memory bandwidth.
func (s *serveSim) batchTime(jobs []*serveMsg) (time.Duration, int, error) {
	E := s.m.RoutedExperts
	keys := s.grpKeys[:0]
	total := 0
	for _, j := range jobs {
		for i, e := range j.experts {
			k := j.layer*E + int(e)
			if s.grp[k] == 0 {
				keys = append(keys, k)
			}
			s.grp[k] += int(j.erows[i])
			total += int(j.erows[i])
		}
	}
	s.grpKeys = keys
	defer func() {
		for _, k := range keys {
			s.grp[k] = 0
		}
	}()
	n := len(keys)
	if n == 0 {
		return 0, 1, nil
	}
	th := s.wThreads
	var t time.Duration
	if total <= 4*n {
		var work, longest time.Duration
		for _, k := range keys {
			d1, err := s.cost.expert(s.grp[k], 1)
			if err != nil {
				return 0, 0, err
			}
			dn, err := s.cost.expert(s.grp[k], th)
			if err != nil {
				return 0, 0, err
			}
			work += d1
			longest = max(longest, dn)
		}
		t = max(work/time.Duration(th), longest)
	} else {
		for _, k := range keys {
			d, err := s.cost.expert(s.grp[k], th)
			if err != nil {
				return 0, 0, err
			}
			t += d
		}
	}
	t = s.shared(t)
	s.bwBound = false
	if bw := s.cost.bw(th); bw > 0 {
		floor := rateBytes(int64(n)*s.m.ExpertBytes(), bw)
		s.bwBound = t <= floor+floor/20
		t = max(t, floor)
	}
	return t, th, nil
}

func (s *serveSim) result() *ServeResult {
	r := &ServeResult{Frontends: s.F, Workers: s.N, Batch: s.B, Placement: s.pl}
	var layers, steps int
	var rows int
	for _, st := range s.fe {
		if span := st.end - st.warmEnd; span > 0 {
			r.TokensPerS += float64(s.B*s.cfg.Steps) / span.Seconds()
		}
		r.Split.Frontend += st.fe
		r.Split.Software += st.path[catSoftware]
		r.Split.NIC += st.path[catNIC]
		r.Split.Latency += st.path[catLatency]
		r.Split.Expert += st.path[catExpert]
		r.Exchange += st.exch
		r.Owners += st.owners
		layers += st.layers
		rows += st.rows
		steps += s.cfg.Steps
	}
	div := func(d time.Duration, n int) time.Duration {
		if n == 0 {
			return 0
		}
		return d / time.Duration(n)
	}
	r.Split = StepSplit{Frontend: div(r.Split.Frontend, steps), Expert: div(r.Split.Expert, steps),
		NIC: div(r.Split.NIC, steps), Latency: div(r.Split.Latency, steps), Software: div(r.Split.Software, steps)}
	r.Exchange, r.Owners = div(r.Exchange, layers), div(r.Owners, layers)
	if layers > 0 {
		r.Rows = float64(rows) / float64(layers)
	}
	slices.Sort(s.itl)
	r.ITL50, r.ITL99 = servePercentile(s.itl, 0.50), servePercentile(s.itl, 0.99)

	win := s.winEnd - s.winStart
	if win > 0 {
		u := &r.Util
		for f := 0; f < s.F; f++ {
			u.FrontendCompute += float64(s.hosts[f].compute) / float64(win) / float64(s.F)
		}
		for w := range s.w {
			// (A batch that straddles the window's end counts whole: clip.)
			if g := min(float64(s.w[w].gemm)/float64(win), 1); g > u.WorkerGEMM || u.HottestWorker == "" {
				u.WorkerGEMM, u.HottestWorker = g, string(s.pl.Workers[w])
				u.WorkerGEMMBandwidth = 0
				if s.w[w].gemm > 0 {
					u.WorkerGEMMBandwidth = float64(s.w[w].gemmBW) / float64(s.w[w].gemm)
				}
			}
		}
		for i := range s.hosts {
			h := &s.hosts[i]
			if i < s.F {
				u.FrontendCores += float64(h.busy) / float64(win)
			} else {
				u.WorkerCores += float64(h.busy) / float64(win)
			}
			if v := float64(h.txBusy) / float64(win); v > u.Link {
				u.Link, u.BusiestLink = v, h.name+" tx"
			}
			if v := float64(h.rxBusy) / float64(win); v > u.Link {
				u.Link, u.BusiestLink = v, h.name+" rx"
			}
			if s.cfg.SharedCores > 0 {
				continue
			}
			n := float64(len(h.cores.free)) * float64(win)
			if v := float64(h.cores.msg+h.cores.compute) / n; v > u.Cores {
				u.Cores, u.BusiestHost = v, h.name
			}
			u.Software = max(u.Software, float64(h.cores.msg)/n)
		}
		if s.cfg.SharedCores > 0 {
			p := s.hosts[0].cores
			n := float64(len(p.free)) * float64(win)
			u.Cores, u.Software, u.BusiestHost = float64(p.msg+p.compute)/n, float64(p.msg)/n, "shared cores"
		}
	}
	r.Bottleneck = s.bottleneck(r)
	return r
}

func servePercentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// bottleneck names the largest part of the step's split, with its share
// of the step and the resource behind it, and the second part when it is
// within three quarters of the first (a mixed regime).
func (s *serveSim) bottleneck(r *ServeResult) string {
	sp, u := r.Split, r.Util
	tot := float64(sp.Total())
	if tot == 0 {
		return "none"
	}
	mem := "arithmetic-bound"
	if u.WorkerGEMMBandwidth >= 0.5 {
		mem = "streaming weights"
	}
	parts := []struct {
		d            time.Duration
		name, detail string
	}{
		{sp.Frontend, "front-end compute", fmt.Sprintf("front ends %.0f%% busy", 100*u.FrontendCompute)},
		{sp.Expert, "expert compute", fmt.Sprintf("hottest worker %s's GEMMs %.0f%% busy, %.0f%% of that time %s", u.HottestWorker, 100*u.WorkerGEMM, 100*max(u.WorkerGEMMBandwidth, 1-u.WorkerGEMMBandwidth), mem)},
		{sp.NIC, "NIC", fmt.Sprintf("busiest link %s %.0f%% busy", u.BusiestLink, 100*u.Link)},
		{sp.Software, "per-message software", fmt.Sprintf("busiest host %s: messages %.0f%% of its cores", u.BusiestHost, 100*u.Software)},
		{sp.Latency, "network latency", ""},
	}
	slices.SortStableFunc(parts, func(a, b struct {
		d            time.Duration
		name, detail string
	}) int {
		return cmp.Compare(b.d, a.d)
	})
	out := fmt.Sprintf("%s (%.0f%% of the step", parts[0].name, 100*float64(parts[0].d)/tot)
	if parts[0].detail != "" {
		out += "; " + parts[0].detail
	}
	out += ")"
	if parts[1].d > 0 && float64(parts[1].d) >= 0.75*float64(parts[0].d) {
		out += fmt.Sprintf(", then %s (%.0f%%)", parts[1].name, 100*float64(parts[1].d)/tot)
	}
	return out
}

// ---- Calibrations ----

// AssumedCalibration is the calibration `simulate serve` uses when none
// was measured (`simulate calibrate` writes one): numbers from the
// committed benchmark files of a 2-vCPU Intel Xeon VM, assumed to hold per
// core on the hosts simulated (they scale linearly with cores; a host's
// memory bandwidth is capped by ServeConfig.MemBandwidth):
//   - GEMM: bench/results/gemm.txt (Switchyard's kernels, median GFLOP/s):
//     f32 1024x1024x1024 157.4 (1 thread) / 287.2 (2), f32 64 rows
//     1024->2816 136.3 / 248.5, f32 1 row 14.1 / 26.4, bf16-weight 64 rows
//     140.3 / 260.6, bf16-weight 1 row 29.3 / 59.9;
//   - MemBandwidth 13.35 GB/s per core: bench/results/decode.txt's
//     weight-stream bandwidth, 26.70 GB/s on 2 threads;
//   - ExchangeRTT 107 us: bench/results/exchange.txt's unary gRPC round
//     trip to a loopback worker; MsgCPU 24 us = (107 - 11.7 us of
//     loopback TCP round trip, bench/results/serve.txt's tcpping) / 4
//     message sides; MsgBytesPerS 1.14 GB/s: exchange.txt's 1024-token
//     exchange (16.8 MB each way in 29.6 ms on 2 cores: 4 x 16.8 MB of
//     payload handled in 59 ms of core time, less the messages' 0.4 ms).
func AssumedCalibration() *Calibration {
	p := func(m, k, n int, dt string, th int, gflops float64) GEMMPoint {
		return GEMMPoint{M: m, K: k, N: n, DType: dt, Threads: th, FLOPS: gflops * 1e9}
	}
	return &Calibration{
		CPU: "Intel(R) Xeon(R) Processor (2 vCPU), bench/results of 2026-12-04/05", Cores: 2, When: "2026-12-05T04:25:00Z",
		GEMM: []GEMMPoint{
			p(1024, 1024, 1024, "f32", 1, 157.4), p(1024, 1024, 1024, "f32", 2, 287.2),
			p(64, 1024, 2816, "f32", 1, 136.3), p(64, 1024, 2816, "f32", 2, 248.5),
			p(1, 1024, 2816, "f32", 1, 14.1), p(1, 1024, 2816, "f32", 2, 26.4),
			p(64, 1024, 2816, "bf16", 1, 140.3), p(64, 1024, 2816, "bf16", 2, 260.6),
			p(1, 1024, 2816, "bf16", 1, 29.3), p(1, 1024, 2816, "bf16", 2, 59.9),
		},
		MemBandwidth: 13.35e9,
		MsgCPU:       24 * time.Microsecond,
		MsgBytesPerS: 1.14e9,
		ExchangeRTT:  107 * time.Microsecond,
	}
}

// ---- Recovery ----

// Detection defaults: the coordinator's probes (internal/coordinator
// DefaultProbeInterval 500 ms, DefaultEvictAfter 1.5 s) and a worker's
// etcd lease (pkg/registry DefaultTTL 10 s), copied (this package links no
// daemon code).
const (
	DefaultProbeInterval = 500 * time.Millisecond
	DefaultEvictAfter    = 1500 * time.Millisecond
	DefaultLeaseTTL      = 10 * time.Second
)

// RecoveryConfig is how a dead worker's copies are restored.
type RecoveryConfig struct {
	// Detect is the time from the death to the new placement: the
	// coordinator's probes (evict after EvictAfter without an answer,
	// probed every ProbeInterval) or, without probes, the lease TTL. 0
	// means DefaultEvictAfter + DefaultProbeInterval (2 s).
	Detect time.Duration
	// LoadRate is the rate, bytes/s, at which one receiving worker loads
	// experts (from its local copy of the checkpoint, or over its NIC
	// from a shared store: the slower of disk and network). Required.
	LoadRate float64
	// SourceRate, if > 0, caps all receivers together (a shared model
	// store's rate), bytes/s.
	SourceRate float64
	// Dead is the index of the worker that dies; -1 (or out of range):
	// the one holding the most bytes (the lowest index on ties).
	Dead int
}

// Recovery is the predicted restoration of R copies after a worker dies:
// Detect, then every receiver loads its new copies in parallel.
type Recovery struct {
	Dead            cluster.WorkerID
	Detect          time.Duration
	Moved           int   // copies the new placement puts on workers that did not hold them
	MovedBytes      int64 // their bytes
	Receivers       int   // workers loading
	MaxReceiver     cluster.WorkerID
	MaxCopies       int   // the busiest receiver's copies
	MaxBytes        int64 // and bytes
	Load, Total     time.Duration
	LostExperts     int // experts whose only copy died (R = 1): unavailable until loaded
	Bottleneck      string
	NewMaxPerWorker int64 // the most expert bytes a survivor holds afterwards
}

// PredictRecovery kills one worker of base (a PlaceServe result on c,
// hot replicas aside: the coordinator re-places with placement.Place
// alone) and re-places the survivors with the real placement.Place (the
// previous placement as Prev, so what can stay stays), counting the
// copies that move and their load time.
func PredictRecovery(m MoEShape, c Cluster, base *ServePlacement, pc PlaceConfig, rc RecoveryConfig) (*Recovery, error) {
	if rc.LoadRate <= 0 {
		return nil, fmt.Errorf("simulate: recovery needs a load rate")
	}
	if c.Workers < 2 {
		return nil, fmt.Errorf("simulate: recovery needs at least 2 workers, have %d", c.Workers)
	}
	if rc.Detect == 0 {
		rc.Detect = DefaultEvictAfter + DefaultProbeInterval
	}
	dead := rc.Dead
	if dead < 0 || dead >= len(base.Workers) {
		counts := placement.Counts(&base.Base)
		dead = 0
		for w, id := range base.Workers {
			if counts[id] > counts[base.Workers[dead]] {
				dead = w
			}
		}
	}
	budget, err := serveExpertBudget(c, pc)
	if err != nil {
		return nil, err
	}
	var live []cluster.WorkerID
	for i, id := range base.Workers {
		if i != dead {
			live = append(live, id)
		}
	}
	in := servePlaceInput(m, live, budget, max(pc.Replicas, 1))
	prev := base.Base.Clone()
	in.Prev = &prev
	next, err := placement.Place(in)
	if err != nil {
		return nil, fmt.Errorf("after %s dies: %w", base.Workers[dead], err)
	}
	r := &Recovery{Dead: base.Workers[dead], Detect: rc.Detect}
	for _, row := range base.Base.Owners {
		for _, ws := range row {
			if len(ws) == 1 && ws[0] == r.Dead {
				r.LostExperts++
			}
		}
	}
	eb := m.ExpertBytes()
	per := map[cluster.WorkerID]int{}
	for _, cp := range placement.Diff(&base.Base, &next).Added {
		per[cp.Worker]++
		r.Moved++
	}
	r.MovedBytes = int64(r.Moved) * eb
	r.Receivers = len(per)
	for _, id := range live {
		if n := per[id]; n > r.MaxCopies {
			r.MaxReceiver, r.MaxCopies = id, n
		}
	}
	r.MaxBytes = int64(r.MaxCopies) * eb
	held := map[cluster.WorkerID]int64{}
	for _, row := range next.Owners {
		for _, ws := range row {
			for _, w := range ws {
				held[w] += eb
			}
		}
	}
	for _, b := range held {
		r.NewMaxPerWorker = max(r.NewMaxPerWorker, b)
	}
	recv := rateBytes(r.MaxBytes, rc.LoadRate)
	src := time.Duration(0)
	if rc.SourceRate > 0 {
		src = rateBytes(r.MovedBytes, rc.SourceRate)
	}
	r.Load = max(recv, src)
	r.Total = r.Detect + r.Load
	switch {
	case r.Detect >= r.Load:
		r.Bottleneck = fmt.Sprintf("detection (%v)", r.Detect)
	case src > recv:
		r.Bottleneck = fmt.Sprintf("the shared model store (%d copies, %s at %s/s)", r.Moved, fmtBytes(r.MovedBytes), fmtBytes(int64(rc.SourceRate)))
	default:
		r.Bottleneck = fmt.Sprintf("receiver %s loading %d copies (%s at %s/s)", r.MaxReceiver, r.MaxCopies, fmtBytes(r.MaxBytes), fmtBytes(int64(rc.LoadRate)))
	}
	return r, nil
}

// ---- Validation against the emulated serving runs ----

// ServeBench is the raw part of bench/results/serve.txt
// (scripts/bench-serve.sh): the model it served, the machine's cores, and
// one row per configuration and client count, in file order (a rerun is
// a row of its own).
type ServeBench struct {
	Model MoEShape
	Cores int
	Rows  []ServeBenchRow
	// Routing is the token rows routed to each expert in every window
	// that recorded them (bench/serve load's "routing" lines, from the
	// front end's switchyard_frontend_expert_rows_total, summed): the
	// workload's routing, which ServeBenchConfig replays and
	// ServeBenchCalibration counts experts by. nil where none was
	// recorded (runs before 2026-12-07): uniform routing. The benchmark's
	// synthetic model routes far from uniformly: its busiest expert of a
	// layer takes 2.4-4.4 times the mean, the top 4 of 32 a quarter to
	// over a third of the rows.
	Routing *RoutingTrace
	// Expert is the expert measured by rows in the run's calibrations
	// (their Calibration.Expert; each rows' mean over the calibrations),
	// nil where none measured it (runs before 2026-12-07).
	Expert []ExpertPoint
}

// ServeBenchRow is one measurement of bench/serve load.
type ServeBenchRow struct {
	Config  string // "netns 4 hosts 1gbit", "2 local workers", "in-process"
	Clients int
	// Netns: emulated hosts (Workers of them, one worker each, and the
	// front end on a host of its own) linked at Nominal bits/s (tc tbf);
	// else Workers local worker processes on loopback (0: in-process).
	Netns       bool
	Workers     int
	Nominal     float64
	OneCoreEach bool // workers with GOMAXPROCS=1
	// OneThreadEach: every process (the front end too) with GOMAXPROCS=1.
	OneThreadEach bool
	Overlap       bool
	RTT           time.Duration // the raw-TCP round trip measured before the run (tcpping p50)
	Load          float64       // 1-minute load average when the configuration started
	OK, Failed    int           // completions
	TokensPerS    float64
	ITL           [3]time.Duration // p50, p90, p99
	// Per generated token, from the front end's metrics: the whole
	// forward, its attention and its experts (exchange included).
	Total, Attention, Experts time.Duration
	// The mean MoE layer's exchange (one RemoteExecutor.Compute call),
	// its rows, the owners' part and the exchange's own.
	Exchange, Owners, Own time.Duration
	Rows                  float64
	// Link is the calibration taken across the row's links in the same
	// run (bench-serve.sh: simulate calibrate --peer h0 -> h1 before the
	// configuration started); nil if none.
	Link *Calibration
	// CPU is where the window's CPU went (bench/serve's "cores:" line,
	// since 2026-12-07: bench/results/serve-4hosts-zen5-routed-7.txt the
	// first); nil in older files.
	CPU *ServeBenchCPU
}

// ServeBenchCPU is a measurement window's CPU in cores (1 = one core
// busy through the window): the serving processes' own time by role
// (threads, the Go runtime and kernel time in them included), the rest of
// the machine's busy time (Other: kernel threads, interrupts outside the
// processes, anything else running), and the machine's time by kind.
type ServeBenchCPU struct {
	Frontend, Workers, Coordinator, Client, Other float64
	User, System, IRQ, Steal                      float64
}

// Cluster is the cores the front end and the workers took: what the
// serving model's processes stand for.
func (c ServeBenchCPU) Cluster() float64 { return c.Frontend + c.Workers }

// Busy is the machine's busy cores (steal excluded).
func (c ServeBenchCPU) Busy() float64 { return c.User + c.System + c.IRQ }

// add adds x times o to c.
func (c *ServeBenchCPU) add(o ServeBenchCPU, x float64) {
	c.Frontend += x * o.Frontend
	c.Workers += x * o.Workers
	c.Coordinator += x * o.Coordinator
	c.Client += x * o.Client
	c.Other += x * o.Other
	c.User += x * o.User
	c.System += x * o.System
	c.IRQ += x * o.IRQ
	c.Steal += x * o.Steal
}

var (
	sbModelRE = regexp.MustCompile(`^# model: .*?(\d+) layers, hidden (\d+), (\d+) experts top-(\d+), expert intermediate (\d+), vocab (\d+), (bf16|f32)`)
	sbCoresRE = regexp.MustCompile(`^# cpu: .*, (\d+) cores`)
	sbLoadRE  = regexp.MustCompile(`^# \S+; cpu: .*; load average ([\d.]+)`)
	sbPingRE  = regexp.MustCompile(`^tcpping: [^,]*(?:, 0s apart)?: p50 ([\d.]+) us`) // back to back (not the -gap run)
	sbRowRE   = regexp.MustCompile(`^(.+), (\d+) client\(s\): \d+ clients, [\d.]+ s: (\d+) completions ok, (\d+) failed, \d+ wrong; \d+ tokens, ([\d.]+) tokens/s; .*ITL ([\d.]+)/([\d.]+)/([\d.]+) ms`)
	sbSplitRE = regexp.MustCompile(`^(.+), (\d+) client\(s\): per generated token \(ms\): total ([-\d.]+) attention ([-\d.]+) experts ([-\d.]+) rest [-\d.]+; MoE layer exchange mean ([\d.]+) ms \(([\d.]+) rows\), of which the owners' ([\d.]+) ms, the exchange's own ([\d.]+) ms`)
	sbNetnsRE = regexp.MustCompile(`^netns (\d+) hosts? (\d+)([mg])bit`)
	sbLocalRE = regexp.MustCompile(`^(\d+) local workers`)
	sbRouteRE = regexp.MustCompile(`^(.+), (\d+) client\(s\): routing \(rows per expert in the window, by MoE layer\): (.+)$`)
	sbCPURE   = regexp.MustCompile(`^(.+), (\d+) client\(s\): cores: front end ([\d.]+), workers ([\d.]+), coordinator ([\d.]+), client ([\d.]+), other ([\d.]+); machine user ([\d.]+) system ([\d.]+) irq ([\d.]+) steal ([\d.]+) of \d+`)
)

// parseRouting adds one "routing" line's counts ("LAYER:ROWS,ROWS,...;
// LAYER:...", bench/serve's fmtRouting) into sum.
func parseRouting(text string, sum map[[2]int]int64) error {
	for _, layer := range strings.Split(text, ";") {
		l, counts, ok := strings.Cut(layer, ":")
		li, err := strconv.Atoi(l)
		if !ok || err != nil || li < 0 || li > maxTraceIndex {
			return fmt.Errorf("routing: layer %q is not LAYER:ROWS,...", layer)
		}
		for e, c := range strings.Split(counts, ",") {
			n, err := strconv.ParseInt(c, 10, 64)
			if err != nil || n < 0 || e > maxTraceIndex {
				return fmt.Errorf("routing: layer %d expert %d: %q is not a row count", li, e, c)
			}
			sum[[2]int{li, e}] += n
		}
	}
	return nil
}

// ReadServeBench parses the raw lines of bench/results/serve.txt: the
// "# model:" and "# cpu:" header, each configuration's "# <time>; ...;
// load average" stamp, tcpping lines, and each "<config>, N client(s):"
// result and per-token line (failure lines and the markdown table are
// skipped).
func ReadServeBench(r io.Reader) (*ServeBench, error) {
	b := &ServeBench{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var rtt time.Duration
	var load float64
	var link *Calibration
	ms := func(s string) time.Duration {
		v, _ := strconv.ParseFloat(s, 64)
		return time.Duration(v * float64(time.Millisecond))
	}
	atoi := func(s string) int { v, _ := strconv.Atoi(s); return v }
	routing := map[[2]int]int64{}
	type shape struct {
		h, f, rows int
		dt         string
	}
	var curve []shape
	curveSum, curveN := map[shape]float64{}, map[shape]int{}
	for sc.Scan() {
		l := sc.Text()
		if m := sbModelRE.FindStringSubmatch(l); m != nil && b.Model.Layers == 0 {
			h := atoi(m[2])
			eb := 2
			if m[7] == "f32" {
				eb = 4
			}
			// bench/serve synth's attention: heads of 64, a quarter as many
			// key/value heads (at least one), untied head.
			b.Model = MoEShape{Name: "bench/serve synth", Layers: atoi(m[1]), Hidden: h, RoutedExperts: atoi(m[3]), TopK: atoi(m[4]),
				ExpertInter: atoi(m[5]), Vocab: atoi(m[6]), ElemBytes: eb,
				Attn: Attention{Heads: h / 64, KVHeads: max(h/256, 1), HeadDim: 64}}
			continue
		}
		if m := sbCoresRE.FindStringSubmatch(l); m != nil && b.Cores == 0 {
			b.Cores = atoi(m[1])
		}
		if m := sbLoadRE.FindStringSubmatch(l); m != nil {
			load, _ = strconv.ParseFloat(m[1], 64)
			continue
		}
		if strings.HasPrefix(l, "# link calibration failed") {
			link = nil
			continue
		}
		if j, ok := strings.CutPrefix(l, "calibration: "); ok {
			c, err := ReadCalibration(strings.NewReader(j))
			if err != nil {
				return nil, fmt.Errorf("serve bench: %w", err)
			}
			link = c
			for _, p := range c.Expert {
				k := shape{p.Hidden, p.Inter, p.Rows, p.DType}
				if curveN[k] == 0 {
					curve = append(curve, k)
				}
				curveSum[k] += p.Seconds
				curveN[k]++
			}
			continue
		}
		if m := sbRouteRE.FindStringSubmatch(l); m != nil {
			if err := parseRouting(m[3], routing); err != nil {
				return nil, fmt.Errorf("serve bench: %s, %s clients: %w", m[1], m[2], err)
			}
			continue
		}
		if m := sbPingRE.FindStringSubmatch(l); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			rtt = time.Duration(v * float64(time.Microsecond))
			continue
		}
		if m := sbRowRE.FindStringSubmatch(l); m != nil {
			row := ServeBenchRow{Config: m[1], Clients: atoi(m[2]), OK: atoi(m[3]), Failed: atoi(m[4]), Load: load,
				ITL: [3]time.Duration{ms(m[6]), ms(m[7]), ms(m[8])}}
			row.TokensPerS, _ = strconv.ParseFloat(m[5], 64)
			if n := sbNetnsRE.FindStringSubmatch(m[1]); n != nil {
				row.Netns, row.Workers, row.RTT, row.Link = true, atoi(n[1]), rtt, link
				row.Nominal = float64(atoi(n[2])) * 1e6
				if n[3] == "g" {
					row.Nominal *= 1e3
				}
			} else if n := sbLocalRE.FindStringSubmatch(m[1]); n != nil {
				row.Workers = atoi(n[1])
			}
			row.OneThreadEach = strings.Contains(m[1], "1 thread each")
			row.OneCoreEach = strings.Contains(m[1], "1 core each") || row.OneThreadEach
			row.Overlap = strings.Contains(m[1], "overlap")
			b.Rows = append(b.Rows, row)
			continue
		}
		if m := sbSplitRE.FindStringSubmatch(l); m != nil {
			if n := len(b.Rows); n > 0 && b.Rows[n-1].Config == m[1] && b.Rows[n-1].Clients == atoi(m[2]) {
				row := &b.Rows[n-1]
				row.Total, row.Attention, row.Experts = ms(m[3]), ms(m[4]), ms(m[5])
				row.Exchange, row.Owners, row.Own = ms(m[6]), ms(m[8]), ms(m[9])
				row.Rows, _ = strconv.ParseFloat(m[7], 64)
			}
			continue
		}
		if m := sbCPURE.FindStringSubmatch(l); m != nil {
			if n := len(b.Rows); n > 0 && b.Rows[n-1].Config == m[1] && b.Rows[n-1].Clients == atoi(m[2]) {
				var v [9]float64
				for i := range v {
					v[i], _ = strconv.ParseFloat(m[3+i], 64)
				}
				b.Rows[n-1].CPU = &ServeBenchCPU{Frontend: v[0], Workers: v[1], Coordinator: v[2], Client: v[3], Other: v[4],
					User: v[5], System: v[6], IRQ: v[7], Steal: v[8]}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if b.Model.Layers == 0 || b.Cores == 0 {
		return nil, fmt.Errorf("serve bench: no \"# model:\" or \"# cpu: ..., N cores\" header")
	}
	if len(b.Rows) == 0 {
		return nil, fmt.Errorf("serve bench: no result rows")
	}
	if len(routing) > 0 {
		b.Routing = &RoutingTrace{}
		for _, k := range slices.SortedFunc(maps.Keys(routing), func(a, b [2]int) int {
			return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
		}) {
			b.Routing.Rows = append(b.Routing.Rows, TraceRow{Layer: k[0], Expert: k[1], Count: routing[k]})
		}
	}
	for _, k := range curve {
		b.Expert = append(b.Expert, ExpertPoint{Hidden: k.h, Inter: k.f, DType: k.dt, Rows: k.rows, Seconds: curveSum[k] / float64(curveN[k])})
	}
	return b, nil
}

// ServeBenchPrompt and ServeBenchOutput are the requests of
// scripts/bench-serve.sh as the model replays them: 64 generated tokens
// (bench/serve load -max-tokens 64 -ignore-eos) after a prompt of about
// 19 tokens, which is what the first netns row's 5.2 rows per MoE layer
// (top-4) imply: 4 x (64 + P) / 64 = 5.2.
const (
	ServeBenchPrompt = 19
	ServeBenchOutput = 64
)

// ServeCheck is one predicted row of a ServeBench.
type ServeCheck struct {
	Row       ServeBenchRow
	Predicted *ServeResult
	// Judged is false for rows that are not a fair test (requests failed
	// during the run).
	Judged bool
	Note   string
	// Cores is the model's busy cores where the hosts share the
	// machine's (ServeConfig.SharedCores: the pool's utilization times
	// its cores), 0 where they do not; compare Row.CPU.
	Cores float64
}

// CoreMs is the core time per generated token, milliseconds: the
// model's (Cores), and the run's by its front end and workers and by the
// whole machine; ok is false where the model's hosts do not share the
// machine's cores or the row recorded no CPU split (Row.CPU).
func (c ServeCheck) CoreMs() (predicted, cluster, machine float64, ok bool) {
	if c.Cores <= 0 || c.Row.CPU == nil || c.Row.TokensPerS <= 0 || c.Predicted.TokensPerS <= 0 {
		return 0, 0, 0, false
	}
	return 1e3 * c.Cores / c.Predicted.TokensPerS, 1e3 * c.Row.CPU.Cluster() / c.Row.TokensPerS, 1e3 * c.Row.CPU.Busy() / c.Row.TokensPerS, true
}

// TokensErr is (predicted - measured) / measured tokens/s.
func (c ServeCheck) TokensErr() float64 {
	return (c.Predicted.TokensPerS - c.Row.TokensPerS) / c.Row.TokensPerS
}

// ExchangeErr is (predicted - measured) / measured MoE layer exchange.
func (c ServeCheck) ExchangeErr() float64 {
	return float64(c.Predicted.Exchange-c.Row.Exchange) / float64(c.Row.Exchange)
}

// ServeBenchConfig is the ServeConfig that models an emulated row of b:
// the front end on a host of its own and Workers worker hosts, all on the
// machine's b.Cores cores (SharedCores), links of 0.956 x the tbf rate
// (what raw TCP measured on the same emulation in
// bench/results/collectives.txt) with tbf's burst
// (scripts/netns/cluster.sh: max(rate/250, 64 KiB)) and half the measured
// round trip each way, one copy of each expert (the coordinator's
// default), requests of ServeBenchPrompt + ServeBenchOutput tokens, Batch
// = clients, uniform routing (the synthetic model's random router), and
// the pool short of the hypervisor's steal the row's windows recorded
// (StealCores: ServeBenchRow.CPU).
func ServeBenchConfig(b *ServeBench, row ServeBenchRow) (ServeConfig, error) {
	if !row.Netns {
		return ServeConfig{}, fmt.Errorf("serve bench: %q is not an emulated cluster", row.Config)
	}
	c := Cluster{Workers: row.Workers, Frontends: 1, Cores: b.Cores, MemoryBytes: 1 << 40,
		Rate: 0.956 * row.Nominal / 8, Latency: row.RTT / 2, Oversubscription: 1, HostsPerLeaf: row.Workers + 1}
	cfg := ServeConfig{Model: b.Model, Cluster: c, Batch: row.Clients, Context: ServeBenchPrompt + ServeBenchOutput/2,
		PromptTokens: ServeBenchPrompt, OutputTokens: ServeBenchOutput, Steps: 2 * ServeBenchOutput, Warmup: 8,
		Place: PlaceConfig{Replicas: 1}, SharedCores: b.Cores, Burst: max(int(row.Nominal/8/250), 64<<10)}
	if row.OneCoreEach {
		cfg.WorkerThreads = 1
	}
	if row.OneThreadEach {
		cfg.FrontendThreads = 1
	}
	if row.CPU != nil {
		cfg.StealCores = row.CPU.Steal // the cores the run's machine had
	}
	if b.Routing != nil {
		pop, err := b.Routing.Popularity(b.Model)
		if err != nil {
			return ServeConfig{}, fmt.Errorf("serve bench: %w", err)
		}
		cfg.Popularity = pop
	}
	return cfg, nil
}

// meanRouted is f of the rows a Router drawing from pop routes to each
// expert of an MoE layer for tokens tokens (a mean over draws of every MoE
// layer; fractional tokens drawn as the two integers around them, in
// proportion), deterministic.
func meanRouted(m MoEShape, pop Popularity, tokens float64, f func(counts []int) float64) float64 {
	const draws = 64
	r := NewRouter(m, pop, 1)
	counts := make([]int, m.RoutedExperts)
	lo := math.Floor(tokens)
	sum, n := 0.0, 0
	for i := 0; i < draws; i++ {
		t := int(lo)
		if float64(i)+0.5 < (tokens-lo)*draws {
			t++
		}
		for l := m.DenseLayers; l < m.Layers; l++ {
			sum += f(r.Route(l, max(t, 1), counts))
			n++
		}
	}
	return sum / float64(n)
}

// touchedBy counts the experts routed any row.
func touchedBy(counts []int) float64 {
	n := 0
	for _, c := range counts {
		if c > 0 {
			n++
		}
	}
	return float64(n)
}

// withLink is cal with the link measurements of link (the row's own
// calibration: LinkRate, LinkRTT, LinkMsgCPU, LinkByteCPU,
// LinkExchangeRTT, LinkIdleExchangeRTT), or cal itself when link measured
// none. (Its sharing is not the row's own: ServeBenchCalibration takes
// the mean of the file's.)
func withLink(cal, link *Calibration) *Calibration {
	if link == nil || link.LinkMsgCPU <= 0 {
		return cal
	}
	c := *cal
	c.LinkRate, c.LinkRTT, c.LinkMsgCPU, c.LinkByteCPU, c.LinkExchangeRTT, c.LinkIdleExchangeRTT = link.LinkRate, link.LinkRTT, link.LinkMsgCPU, link.LinkByteCPU, link.LinkExchangeRTT, link.LinkIdleExchangeRTT
	return &c
}

// PredictServeBench predicts every emulated (netns) row of b with cal,
// each with the link measurements of its own calibration where the file
// has one (ServeBenchRow.Link); a row measured in several windows is
// judged by their mean (MeanWindows).
func PredictServeBench(b *ServeBench, cal *Calibration) ([]ServeCheck, error) {
	return predictServeBench(b, cal, nil)
}

// predictServeBench is PredictServeBench with each row's ServeConfig
// passed through mod first (nil: as ServeBenchConfig makes it), for
// models wrong on purpose.
func predictServeBench(b *ServeBench, cal *Calibration, mod func(*ServeConfig)) ([]ServeCheck, error) {
	var out []ServeCheck
	for _, row := range MeanWindows(b.Rows) {
		if !row.Netns {
			continue
		}
		cfg, err := ServeBenchConfig(b, row)
		if err != nil {
			return nil, err
		}
		if mod != nil {
			mod(&cfg)
		}
		r, err := PredictServe(cfg, withLink(cal, row.Link))
		if err != nil {
			return nil, fmt.Errorf("serve bench %q, %d clients: %w", row.Config, row.Clients, err)
		}
		c := ServeCheck{Row: row, Predicted: r, Judged: row.Failed == 0 && row.OK > 0}
		if cfg.SharedCores > 0 {
			c.Cores = r.Util.Cores * float64(cfg.SharedCores)
		}
		if !c.Judged {
			c.Note = fmt.Sprintf("%d requests failed during the run", row.Failed)
		}
		out = append(out, c)
	}
	return out, nil
}

// MeanWindows returns rows with each measurement taken in several
// windows (rows of the same configuration and client count:
// scripts/bench-serve.sh with BENCH_SERVE_WINDOWS > 1) reduced to one
// row, the windows' mean (tokens/s, the per-token split and the MoE
// layer's times; completions summed; the inter-token percentiles stay the
// first window's), in the order of the first window. On this shared
// machine one 20-second window of the same configuration ranged over
// 87-105 tokens/s in process; the mean is what a prediction from one
// measurement to another can be held to.
func MeanWindows(rows []ServeBenchRow) []ServeBenchRow {
	return meanRows(rows, func(ServeBenchRow) bool { return true },
		func(r ServeBenchRow) string { return fmt.Sprintf("%s/%d", r.Config, r.Clients) })
}

// inProcessMeans returns, for each client count in rows' order, the mean
// of every in-process window with its split known, of every in-process
// configuration ("in-process" and "in-process, again": bench-serve.sh
// measures them before and after the emulated hosts), of the rows run
// with GOMAXPROCS=1 ("in-process, 1 thread each") if oneThread, else of
// the others.
func inProcessMeans(rows []ServeBenchRow, oneThread bool) []ServeBenchRow {
	return meanRows(rows, func(r ServeBenchRow) bool {
		return !r.Netns && r.Workers == 0 && r.Experts > 0 && r.OneThreadEach == oneThread
	}, func(r ServeBenchRow) string { return strconv.Itoa(r.Clients) })
}

// meanRows averages the rows keep accepts by key (see MeanWindows). A
// window in which requests failed (a stalled run) counts only where no
// window of its key ran clean.
func meanRows(rows []ServeBenchRow, keep func(ServeBenchRow) bool, key func(ServeBenchRow) string) []ServeBenchRow {
	clean := map[string]bool{}
	for _, row := range rows {
		if keep(row) && row.Failed == 0 && row.OK > 0 {
			clean[key(row)] = true
		}
	}
	var out []ServeBenchRow
	var n []int
	at := map[string]int{} // key -> index in out
	for _, row := range rows {
		if !keep(row) || clean[key(row)] && (row.Failed > 0 || row.OK == 0) {
			continue
		}
		i, ok := at[key(row)]
		if !ok {
			at[key(row)] = len(out)
			if row.CPU != nil { // a copy of its own: the windows are summed into it
				c := *row.CPU
				row.CPU = &c
			}
			out = append(out, row)
			n = append(n, 1)
			continue
		}
		m := &out[i]
		if m.CPU != nil && row.CPU != nil {
			m.CPU.add(*row.CPU, 1)
		} else {
			m.CPU = nil // a window without the split: no mean
		}
		m.OK += row.OK
		m.Failed += row.Failed
		m.TokensPerS += row.TokensPerS
		m.Total += row.Total
		m.Attention += row.Attention
		m.Experts += row.Experts
		m.Exchange += row.Exchange
		m.Owners += row.Owners
		m.Own += row.Own
		m.Rows += row.Rows
		n[i]++
	}
	for i := range out {
		k := n[i]
		if k == 1 {
			continue
		}
		m := &out[i]
		d := time.Duration(k)
		if m.CPU != nil {
			var mean ServeBenchCPU
			mean.add(*m.CPU, 1/float64(k))
			*m.CPU = mean
		}
		m.TokensPerS /= float64(k)
		m.Rows /= float64(k)
		m.Total, m.Attention, m.Experts = m.Total/d, m.Attention/d, m.Experts/d
		m.Exchange, m.Owners, m.Own = m.Exchange/d, m.Owners/d, m.Own/d
	}
	return out
}

// ServeBenchCalibration is AssumedCalibration corrected with what b's
// in-process rows (the model run in the front end's process, no
// exchange) say about this machine's expert compute:
//
//   - MemBandwidth from the 1-client row: the expert weights a token
//     streams (per MoE layer, the 4 experts of a decode step, and every
//     ServeBenchOutput tokens the experts a ServeBenchPrompt-token prompt
//     touches: E(1 - (1 - K/E)^P) of them) over its experts time, per
//     core;
//   - a GEMM point at the rows per expert of the 16-client row (its rows
//     per MoE layer, 16 x 4 plus the prompts', over the experts they
//     touch): the experts time per layer x cores / experts, as one
//     thread's throughput at those rows (unrounded), given as well at
//     every power of two rows to 256 in place of AssumedCalibration's
//     points of the expert's shape, so that an expert of any rows takes
//     it;
//   - GEMM points at the attention's shape (Hidden x Hidden) from both
//     rows' attention time: the projections' products (1 row for the
//     1-client row, prompts ignored; the tokens of a step for the
//     16-client row) over the attention time per layer, per core. They
//     stand for all of the front end's attention (norms, RoPE, the
//     attention over the cache), which the model otherwise counts as
//     its products alone. Where b also has in-process rows run on one
//     thread (bench-serve.sh's "in-process, 1 thread each"), those give
//     one-thread points and the others points at b.Cores threads (not
//     per core);
//   - where b recorded an expert timed by rows (ServeBench.Expert), that
//     curve as Calibration.Expert, scaled so that the experts a 16-client
//     step touches take the 16-client row's experts time per layer x
//     cores (the serving model then takes an expert's cost from it, not
//     from the GEMM point above);
//   - where b's calibrations measured the sharing (`calibrate
//     --share-procs`: ShareProduct, WakeWork), their mean.
//
// The experts a step touches, and so the rows per expert, follow b's
// recorded routing where it has one (ServeBench.Routing, drawn as
// ServeBenchConfig routes), else a uniform routing.
//
// Where b has several in-process rows of a client count (bench-serve.sh
// measures them before and after the emulated hosts, each in
// BENCH_SERVE_WINDOWS windows), their mean stands for the machine
// (inProcessMeans): one 20-second window once ran a fifth slow and made
// every prediction of its run 15-24% short (docs/scale/serving.md).
//
// It returns AssumedCalibration unchanged when b has no in-process rows.
func ServeBenchCalibration(b *ServeBench) *Calibration {
	cal := AssumedCalibration()
	m := b.Model
	E, K := float64(m.RoutedExperts), float64(m.TopK)
	touched := func(tokens float64) float64 { return E * (1 - math.Pow(1-K/E, tokens)) }
	var pop Popularity
	if b.Routing != nil {
		if p, err := b.Routing.Popularity(m); err == nil {
			pop = p
			touched = func(tokens float64) float64 { return meanRouted(m, pop, tokens, touchedBy) }
		}
	}
	P, O := float64(ServeBenchPrompt), float64(ServeBenchOutput)
	eb := float64(m.ExpertBytes())
	dt := "bf16"
	if m.ElemBytes == 4 {
		dt = "f32"
	}
	var attn float64 // attention projection parameters per layer
	for _, x := range m.attnMatrices() {
		attn += float64(x.params())
	}
	// The attention points: with rows run on one thread as well
	// ("in-process, 1 thread each"), each set at its own threads (a
	// one-thread front end takes the one-thread points: GEMMTime's
	// nearest thread count); else the rows' throughput per core, as if
	// the attention scaled linearly with threads (on a Zen 5 VM it
	// scaled 1.4x from one thread to two, and a one-thread front end's
	// attention was charged a quarter to a half too much).
	oneThread := inProcessMeans(b.Rows, true)
	attnPoint := func(row ServeBenchRow, tokens float64) {
		perLayer := row.Attention.Seconds() * float64(row.Clients) / float64(m.Layers)
		p := GEMMPoint{M: max(int(math.Round(tokens)), 1), K: m.Hidden, N: m.Hidden, DType: dt, Threads: 1,
			FLOPS: 2 * attn * tokens / perLayer / float64(b.Cores)}
		if row.OneThreadEach {
			p.FLOPS = 2 * attn * tokens / perLayer
		} else if len(oneThread) > 0 {
			p.Threads, p.FLOPS = b.Cores, p.FLOPS*float64(b.Cores)
		}
		cal.GEMM = append(cal.GEMM, p)
	}
	// stepTokens are the tokens a step of clients sequences routes: one
	// each, and every ServeBenchOutput steps a prompt's P in place of one.
	stepTokens := func(clients int) float64 {
		B := float64(clients)
		prompts := B / O
		return B - prompts + prompts*P
	}
	for _, row := range oneThread {
		if row.Attention <= 0 || row.Clients != 1 && row.Clients != 16 {
			continue
		}
		tokens := stepTokens(row.Clients)
		if row.Clients == 1 {
			tokens = 1 // prompts ignored, as the two-thread 1-client point
		}
		attnPoint(row, tokens)
		cal.CPU += fmt.Sprintf("; a %d-row one-thread attention point from serve.txt's in-process one-thread %d-client row", max(int(math.Round(tokens)), 1), row.Clients)
	}
	// The sharing (Calibration.ShareProduct, WakeWork): the mean of
	// every calibration in b that measured it, over the mean expert
	// curve (b.Expert, itself the mean of the same calibrations), as the
	// in-process rows' mean stands for the machine: the expert of 3
	// rows took 1.36 ms in one calibration and 2.04 in the next, 6
	// minutes apart, on an AVX2 EPYC VM, its shared product 1.75 and
	// 2.07 (x1.29, x1.02; x1.12 over the two).
	seen := map[*Calibration]bool{}
	var share, wake time.Duration
	var nShare int
	for _, row := range b.Rows {
		l := row.Link
		if l == nil || seen[l] || l.ShareProduct <= 0 || l.ShareRows <= 0 {
			continue
		}
		seen[l] = true
		if cal.ShareRows != 0 && l.ShareRows != cal.ShareRows {
			continue // another product: not averaged with the first
		}
		cal.ShareProcs, cal.ShareRows = l.ShareProcs, l.ShareRows
		share += l.ShareProduct
		wake += l.WakeWork
		nShare++
	}
	if nShare > 0 {
		cal.ShareProduct, cal.WakeWork = share/time.Duration(nShare), wake/time.Duration(nShare)
	}
	for _, row := range inProcessMeans(b.Rows, false) {
		switch row.Clients {
		case 1:
			perToken := ((O-1)*K + touched(P)) / O // experts a token streams per MoE layer
			bw := float64(m.Layers) * perToken * eb / row.Experts.Seconds()
			cal.MemBandwidth = bw / float64(b.Cores)
			if row.Attention > 0 {
				attnPoint(row, 1)
			}
			cal.CPU += "; MemBandwidth and a 1-row attention point from serve.txt's in-process 1-client row"
		case 16:
			B := float64(row.Clients)
			tokens := stepTokens(row.Clients)                         // tokens routed per step
			experts := touched(tokens)                                // experts a layer touches
			rows := tokens * K / experts                              // rows per expert
			perLayer := row.Experts.Seconds() * B / float64(m.Layers) // a step's experts time per layer
			one := perLayer * float64(b.Cores) / experts              // one expert, one thread
			r := int(math.Round(rows))
			flops := 2 * 3 * float64(m.Hidden) * float64(m.ExpertInter) * rows
			// (GEMMTime matches shapes by K x N: one point serves gate,
			// up and down.) The same throughput at every power of two
			// rows up to 256 besides, in place of AssumedCalibration's
			// points of the expert's shape: an expert of any row count
			// then finds this row's throughput, not the assumed Xeon's
			// (before 2026-12-07 one or two rows took its 1-row point)
			// nor the attention points' (whose throughput stands for the
			// whole attention; 10 rows or more took it, or the assumed
			// 64-row point).
			cal.GEMM = slices.DeleteFunc(cal.GEMM, func(p GEMMPoint) bool {
				return p.DType == dt && p.K*p.N == m.Hidden*m.ExpertInter
			})
			cal.GEMM = append(cal.GEMM, GEMMPoint{M: r, K: m.Hidden, N: m.ExpertInter, DType: dt, Threads: 1, FLOPS: flops / one})
			for p := 1; p <= 256; p *= 2 {
				if p != r {
					cal.GEMM = append(cal.GEMM, GEMMPoint{M: p, K: m.Hidden, N: m.ExpertInter, DType: dt, Threads: 1, FLOPS: flops / one})
				}
			}
			if row.Attention > 0 {
				attnPoint(row, tokens)
			}
			cal.CPU += fmt.Sprintf("; a %d-row expert and a %d-row attention point from serve.txt's in-process 16-client row", r, max(int(math.Round(tokens)), 1))
			if s := scaleExpertCurve(b, pop, tokens, perLayer*float64(b.Cores)); s > 0 {
				cal.Expert = make([]ExpertPoint, len(b.Expert))
				for i, p := range b.Expert {
					p.Seconds *= s
					cal.Expert[i] = p
				}
				cal.CPU += fmt.Sprintf("; the expert measured by rows (%d points), x%.2f to the in-process 16-client row's experts", len(b.Expert), s)
			}
		}
	}
	return cal
}

// scaleExpertCurve is the factor that makes b's expert measured by rows
// (ServeBench.Expert, one thread, the machine otherwise idle) account for
// core of the in-process experts' core time per MoE layer, at tokens
// tokens routed by pop per layer (the in-process 16-client row: both
// cores streaming experts side by side, the front end's own work between
// them); 0 when b has no curve of its model's expert shape.
func scaleExpertCurve(b *ServeBench, pop Popularity, tokens, core float64) float64 {
	m := b.Model
	dt := "bf16"
	if m.ElemBytes == 4 {
		dt = "f32"
	}
	c := &Calibration{Expert: b.Expert}
	if _, ok := c.ExpertTime(m.Hidden, m.ExpertInter, dt, 1); !ok || core <= 0 {
		return 0
	}
	want := meanRouted(m, pop, tokens, func(counts []int) float64 {
		var t time.Duration
		for _, n := range counts {
			if n > 0 {
				d, _ := c.ExpertTime(m.Hidden, m.ExpertInter, dt, n)
				t += d
			}
		}
		return t.Seconds()
	})
	if want <= 0 {
		return 0
	}
	return core / want
}
