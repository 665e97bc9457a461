package simulate

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// TrainBench is a measured distributed training run on the emulated
// cluster, as scripts/simulate-validate-train.sh writes it
// (bench/results/train-netns.txt): the job, the machine, a calibration
// and the link measured in the same run, and each worker's step split
// from its metrics (switchyard_train_step_seconds_total{part} and
// switchyard_train_steps_total at the end of the job).
type TrainBench struct {
	Date, CPU              string
	CPUs                   int
	LoadBefore, LoadAfter  string // /proc/loadavg's three averages
	Model                  string // the model's folder
	Config                 HFMoEConfig
	Job                    string // the train command's arguments
	Workers, Batch, SeqLen int
	Steps                  int
	JobSeconds             float64
	// JobCPUSeconds is the CPU time (user + system) the coordinator and
	// the workers used during the job.
	JobCPUSeconds float64
	// SingleTokensPerS is one rank's share of the job (Batch / Workers
	// sequences) trained in one process, every expert in process, no
	// messages (0: not measured).
	SingleTokensPerS float64
	// Link is the emulated links' tc rate each way (bytes/s).
	Link float64
	// LinkRTT is the raw-TCP round trip between two worker hosts (64-byte
	// ping-pong, median).
	LinkRTT time.Duration
	// Cal is the calibration taken in the same run (on a worker host,
	// with its link to another worker host), before the job.
	Cal *Calibration
	// ProfileAfter is the same one-rank training profile as Cal's, taken
	// again on the same host after the job (nil: not measured; files
	// before 2026-12-07). TrainConfig takes the two profiles' mean
	// (TrainProfile.Bracket).
	ProfileAfter *TrainProfile
	// MachineTicks is the machine's /proc/stat over the job, summed over
	// its CPUs, in USER_HZ ticks: user nice system idle iowait irq
	// softirq steal (nil: not recorded; files before 2026-12-08).
	MachineTicks []int64
	// Sched is each process's scheduler statistics over the job, the
	// coordinator's then the workers' (nil: not recorded).
	Sched []SchedStat
	// Ranks are the workers' sums over their steps.
	Ranks []TrainBenchRank
}

// SchedStat is a process's /proc/PID/task/*/schedstat over a window,
// summed over its threads (the Go runtime's included): time on a core,
// time runnable and waiting for one (from a thread's wake-up or
// preemption to its next start on a core), and the times it was put on
// a core.
type SchedStat struct {
	Run, Wait time.Duration
	Slices    int64
}

// IdleShare is the part of the machine's CPU time over the job that was
// idle (iowait included), steal the part a hypervisor took; 0, 0 when
// not recorded.
func (b *TrainBench) IdleShare() (idle, steal float64) {
	if len(b.MachineTicks) < 8 {
		return 0, 0
	}
	var all int64
	for _, t := range b.MachineTicks[:8] {
		all += t
	}
	if all <= 0 {
		return 0, 0
	}
	return float64(b.MachineTicks[3]+b.MachineTicks[4]) / float64(all), float64(b.MachineTicks[7]) / float64(all)
}

// TrainBenchRank is one worker's metrics at the end of the job.
type TrainBenchRank struct {
	Worker string
	Steps  int
	Sum    StepParts // seconds summed over Steps
}

// StepParts is a training step's split as train.StepTimes (and the
// metrics' part label) has it.
type StepParts struct {
	Forward, Backward, ExchangeWait, AllReduceWait, Optimizer, Barrier, Total time.Duration
}

// TrainPartNames are the parts in StepParts' order, as the metrics name them.
var TrainPartNames = []string{"forward", "backward", "exchange_wait", "allreduce_wait", "optimizer", "barrier", "total"}

// Parts returns the parts in TrainPartNames' order.
func (p StepParts) Parts() []time.Duration {
	return []time.Duration{p.Forward, p.Backward, p.ExchangeWait, p.AllReduceWait, p.Optimizer, p.Barrier, p.Total}
}

func (p *StepParts) part(name string) *time.Duration {
	switch name {
	case "forward":
		return &p.Forward
	case "backward":
		return &p.Backward
	case "exchange_wait":
		return &p.ExchangeWait
	case "allreduce_wait":
		return &p.AllReduceWait
	case "optimizer":
		return &p.Optimizer
	case "barrier":
		return &p.Barrier
	case "total":
		return &p.Total
	}
	return nil
}

// Prediction's split in StepParts' terms (Total: the step).
func (p TrainPrediction) Parts() StepParts {
	return StepParts{p.Forward, p.Backward, p.ExchangeWait, p.AllReduceWait, p.Optimizer, p.Barrier, p.Step}
}

// HFMoEConfig is the part of a Hugging Face config.json of a
// mixture-of-experts decoder (qwen2_moe, qwen3_moe, mixtral, olmoe) that
// decides a training step's work.
type HFMoEConfig struct {
	ModelType        string `json:"model_type"`
	Hidden           int    `json:"hidden_size"`
	Layers           int    `json:"num_hidden_layers"`
	Vocab            int    `json:"vocab_size"`
	Heads            int    `json:"num_attention_heads"`
	KVHeads          int    `json:"num_key_value_heads"`
	HeadDim          int    `json:"head_dim"`
	Inter            int    `json:"intermediate_size"`
	MoEInter         int    `json:"moe_intermediate_size"`
	Experts          int    `json:"num_experts"`
	LocalExperts     int    `json:"num_local_experts"`
	TopK             int    `json:"num_experts_per_tok"`
	SharedInter      int    `json:"shared_expert_intermediate_size"`
	Tied             bool   `json:"tie_word_embeddings"`
	MLPOnlyLayers    []int  `json:"mlp_only_layers"`
	FirstDense       int    `json:"first_k_dense_replace"`
	DecoderSparseStp int    `json:"decoder_sparse_step"`
}

// TrainShape is the config's model as the training model sizes it (GQA
// attention: q, k, v, o projections; every layer routed unless the first
// FirstDense are dense MLPs of Inter).
func (c HFMoEConfig) TrainShape(name string) (TrainShape, error) {
	experts, inter := c.Experts, c.MoEInter
	if experts == 0 {
		experts = c.LocalExperts
	}
	if inter == 0 {
		inter = c.Inter // mixtral: each expert is intermediate_size wide
	}
	hd := c.HeadDim
	if hd == 0 && c.Heads > 0 {
		hd = c.Hidden / c.Heads
	}
	kv := c.KVHeads
	if kv == 0 {
		kv = c.Heads
	}
	if len(c.MLPOnlyLayers) > 0 || c.DecoderSparseStp > 1 {
		return TrainShape{}, fmt.Errorf("simulate: config %s: dense layers other than the first k (mlp_only_layers %v, decoder_sparse_step %d) are not modeled",
			name, c.MLPOnlyLayers, c.DecoderSparseStp)
	}
	d := c.Hidden
	s := TrainShape{Name: name, Layers: c.Layers, DenseLayers: c.FirstDense, Hidden: d, Vocab: c.Vocab, Tied: c.Tied,
		Heads: c.Heads, KVHeads: kv, QKDim: hd, VDim: hd,
		AttnProj:   [][2]int{{d, c.Heads * hd}, {d, kv * hd}, {d, kv * hd}, {c.Heads * hd, d}},
		DenseInter: c.Inter, Experts: experts, TopK: c.TopK, ExpertInter: inter, SharedInter: c.SharedInter}
	if s.Layers < 1 || d < 1 || s.Vocab < 1 || s.Heads < 1 || hd < 1 || experts < 1 || s.TopK < 1 || inter < 1 {
		return TrainShape{}, fmt.Errorf("simulate: config %s: incomplete MoE config %+v", name, c)
	}
	return s, nil
}

// ReadTrainBench reads a file of scripts/simulate-validate-train.sh:
// "key: value" lines ('#' comments), the calibration and the model's
// config as one-line JSON, one "worker: ID steps=N part=SECONDS..." line
// per worker.
func ReadTrainBench(r io.Reader) (*TrainBench, error) {
	b := &TrainBench{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, val, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("simulate: train bench line %d: want key: value", line)
		}
		val = strings.TrimSpace(val)
		var err error
		atoi := func(dst *int) { *dst, err = strconv.Atoi(val) }
		switch key {
		case "date":
			b.Date = val
		case "cpu":
			b.CPU = val
		case "cpus":
			atoi(&b.CPUs)
		case "load_before":
			b.LoadBefore = val
		case "load_after":
			b.LoadAfter = val
		case "model":
			b.Model = val
		case "model_config":
			err = json.Unmarshal([]byte(val), &b.Config)
		case "job":
			b.Job = val
		case "workers":
			atoi(&b.Workers)
		case "batch":
			atoi(&b.Batch)
		case "seq_len":
			atoi(&b.SeqLen)
		case "steps":
			atoi(&b.Steps)
		case "link":
			b.Link, err = ParseRate(val)
		case "single_process":
			f := strings.Fields(val)
			if len(f) > 0 {
				b.SingleTokensPerS, err = strconv.ParseFloat(f[0], 64)
			}
		case "job_cpu_seconds":
			b.JobCPUSeconds, err = strconv.ParseFloat(val, 64)
		case "job_seconds":
			b.JobSeconds, err = strconv.ParseFloat(val, 64)
		case "link_rtt_ms":
			var ms float64
			ms, err = strconv.ParseFloat(val, 64)
			b.LinkRTT = time.Duration(ms * float64(time.Millisecond))
		case "calibration":
			b.Cal, err = ReadCalibration(strings.NewReader(val))
		case "train_profile_after":
			b.ProfileAfter = new(TrainProfile)
			err = json.Unmarshal([]byte(val), b.ProfileAfter)
		case "job_machine_ticks":
			b.MachineTicks, err = parseTicks(val)
		case "job_sched":
			b.Sched, err = parseSched(val)
		case "worker":
			var rk TrainBenchRank
			rk, err = parseBenchRank(val)
			b.Ranks = append(b.Ranks, rk)
		}
		if err != nil {
			return nil, fmt.Errorf("simulate: train bench line %d (%s): %w", line, key, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if b.Cal == nil || b.Workers < 1 || b.Batch < 1 || b.SeqLen < 1 || len(b.Ranks) != b.Workers || b.LinkRTT <= 0 {
		return nil, fmt.Errorf("simulate: train bench: incomplete (calibration %v, %d workers, batch %d, seq_len %d, %d worker lines, link rtt %v)",
			b.Cal != nil, b.Workers, b.Batch, b.SeqLen, len(b.Ranks), b.LinkRTT)
	}
	return b, nil
}

func parseBenchRank(val string) (TrainBenchRank, error) {
	f := strings.Fields(val)
	if len(f) == 0 {
		return TrainBenchRank{}, fmt.Errorf("empty worker line")
	}
	rk := TrainBenchRank{Worker: f[0]}
	seen := 0
	for _, kv := range f[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return rk, fmt.Errorf("worker %s: %q: want name=value", rk.Worker, kv)
		}
		x, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return rk, fmt.Errorf("worker %s: %s: %w", rk.Worker, k, err)
		}
		if k == "steps" {
			rk.Steps = int(x)
			continue
		}
		if p := rk.Sum.part(k); p != nil {
			*p = time.Duration(x * float64(time.Second))
			seen++
		}
	}
	if rk.Steps < 1 || seen != len(TrainPartNames) {
		return rk, fmt.Errorf("worker %s: %d steps, %d of %d parts", rk.Worker, rk.Steps, seen, len(TrainPartNames))
	}
	return rk, nil
}

// Mean is the measured step's split: each worker's sums divided by its
// steps, averaged over the workers (as TrainPrediction averages the
// ranks).
func (b *TrainBench) Mean() StepParts {
	var sum [7]time.Duration
	for _, r := range b.Ranks {
		for i, d := range r.Sum.Parts() {
			sum[i] += d / time.Duration(r.Steps)
		}
	}
	n := time.Duration(len(b.Ranks))
	return StepParts{sum[0] / n, sum[1] / n, sum[2] / n, sum[3] / n, sum[4] / n, sum[5] / n, sum[6] / n}
}

// TrainConfig is the measured job as PredictTrainStep takes it: the
// model's shape from its config, Workers hosts of the calibration's cores
// all on the one pool of the measured machine's cores (SharedCores: the
// emulated hosts are namespaces of one machine), each rank's share of the
// batch (Batch / Workers sequences of SeqLen), the link the calibration
// measured (raw-TCP rate; the emulated link's tc rate if it measured
// none) with half the measured round trip as latency, the tc tbf burst
// of the emulated links (scripts/netns/cluster.sh: max(rate/250, 64 KiB)
// of the tc rate), float32 products. Where the file has a profile taken
// after the job as well, the calibration is a copy whose matching profile
// is the mean of the two (TrainProfile.Bracket): the job ran between them.
func (b *TrainBench) TrainConfig() (TrainConfig, error) {
	sh, err := b.Config.TrainShape(b.Model)
	if err != nil {
		return TrainConfig{}, err
	}
	if b.Batch%b.Workers != 0 {
		return TrainConfig{}, fmt.Errorf("simulate: train bench: batch %d over %d workers is uneven", b.Batch, b.Workers)
	}
	cores := max(b.Cal.Cores, 1)
	if b.Link <= 0 {
		return TrainConfig{}, fmt.Errorf("simulate: train bench: no link rate")
	}
	rate := b.Cal.LinkRate
	if rate <= 0 {
		rate = b.Link
	}
	cl := Cluster{Workers: b.Workers, Frontends: 1, Cores: cores, MemoryBytes: 1 << 40, Rate: rate,
		Latency: b.LinkRTT / 2, Oversubscription: 1, HostsPerLeaf: 32}
	shared := b.CPUs
	if shared < 1 {
		shared = cores
	}
	cfg := TrainConfig{Shape: sh, Cluster: cl, Cal: b.Cal, TokensPerRank: b.Batch / b.Workers * b.SeqLen, SeqLen: b.SeqLen,
		SharedCores: shared, Burst: max(int(b.Link/250), 64<<10)}
	if b.ProfileAfter != nil {
		before := b.Cal.TrainProfile(sh, cfg.TokensPerRank, cfg.SeqLen, cores)
		if before == nil {
			return TrainConfig{}, fmt.Errorf("simulate: train bench: a profile after the job (%s, %d tokens) but none before that matches the job", b.ProfileAfter.Model, b.ProfileAfter.TokensPerRank)
		}
		mean, err := before.Bracket(*b.ProfileAfter)
		if err != nil {
			return TrainConfig{}, fmt.Errorf("simulate: train bench: %w", err)
		}
		cal := *b.Cal
		cal.Train = append([]TrainProfile(nil), b.Cal.Train...)
		for i := range cal.Train {
			if &b.Cal.Train[i] == before {
				cal.Train[i] = mean
			}
		}
		cfg.Cal = &cal
	}
	return cfg, nil
}

// PredictTrainBench predicts the measured job's step from the file's own
// calibration and link (TrainConfig).
func PredictTrainBench(b *TrainBench) (TrainPrediction, error) {
	c, err := b.TrainConfig()
	if err != nil {
		return TrainPrediction{}, err
	}
	return PredictTrainStep(c)
}

// parseTicks reads job_machine_ticks: eight counts, then a comment.
func parseTicks(val string) ([]int64, error) {
	f := strings.Fields(val)
	if len(f) < 8 {
		return nil, fmt.Errorf("want 8 tick counts, got %q", val)
	}
	t := make([]int64, 8)
	for i := range t {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("tick count %q: want an integer >= 0", f[i])
		}
		t[i] = n
	}
	return t, nil
}

// parseSched reads job_sched: "RUN WAIT SLICES;" per process, then a
// comment in parentheses.
func parseSched(val string) ([]SchedStat, error) {
	val, _, _ = strings.Cut(val, "(")
	var out []SchedStat
	for _, part := range strings.Split(val, ";") {
		f := strings.Fields(part)
		if len(f) == 0 {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("process %d: want run wait slices, got %q", len(out), part)
		}
		var v [3]int64
		for i := range v {
			n, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("process %d: %q: want an integer >= 0", len(out), f[i])
			}
			v[i] = n
		}
		out = append(out, SchedStat{Run: time.Duration(v[0]), Wait: time.Duration(v[1]), Slices: v[2]})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no process in %q", val)
	}
	return out, nil
}
