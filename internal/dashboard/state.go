package dashboard

import "time"

// State is what the dashboard page, `switchyard top` and
// GET /dashboard/api/state show: one cluster at one moment, read from etcd
// (workers, placements, per-expert token counts, jobs, front ends' serving
// statistics) plus the histories the Collector keeps while it runs (loss
// curves, token rates). Its JSON form is the API's contract; fields are
// only added.
type State struct {
	Time     time.Time `json:"time"`      // when the snapshot was taken
	Cluster  string    `json:"cluster"`   // etcd key prefix
	Leader   string    `json:"leader"`    // coordinator leading; "" when none
	Workers  []Worker  `json:"workers"`   // registered workers, by ID
	Models   []Model   `json:"models"`    // served models with their placements
	Jobs     []Job     `json:"jobs"`      // training jobs, newest first
	Serving  Serving   `json:"serving"`   // every front end together
	Frontend []Serving `json:"frontends"` // each front end (Serving.Name set)
}

// Worker is one registered worker.
type Worker struct {
	ID          string  `json:"id"`
	Addr        string  `json:"addr"`         // gRPC host:port
	Model       string  `json:"model"`        // fingerprint of the model it serves ("" jobs-only)
	Healthy     bool    `json:"healthy"`      // lease alive with more than half its TTL left
	TTLSeconds  int64   `json:"ttl_seconds"`  // lease time left
	BudgetBytes int64   `json:"budget_bytes"` // expert memory it declared (0: unlimited)
	Experts     int     `json:"experts"`      // routed expert copies the placement gives it
	HeldBytes   int64   `json:"held_bytes"`   // Experts x the model's bytes per copy
	Epoch       uint64  `json:"epoch"`        // placement epoch it applied (its stats record)
	Tokens      uint64  `json:"tokens"`       // expert rows it computed since it started
	TokensPerS  float64 `json:"tokens_per_s"` // rate of Tokens over the Collector's last interval
}

// Model is one model's placement as a layer x expert grid.
type Model struct {
	Fingerprint string `json:"fingerprint"`
	Name        string `json:"name"`
	Family      string `json:"family"`
	Layers      int    `json:"layers"`   // decoder layers
	Experts     int    `json:"experts"`  // routed experts per MoE layer
	Replicas    int    `json:"replicas"` // most copies of any expert in the placement
	Epoch       uint64 `json:"epoch"`    // placement epoch (0: not placed yet)
	OK          bool   `json:"ok"`       // the leader's verdict: the placement is what it wants
	Verdict     string `json:"verdict"`  // the verdict's error ("" when OK)
	// Unplaced are the experts with no live copy, as "layer/expert".
	Unplaced []string `json:"unplaced"`
	// Grid[row] is one MoE layer (GridLayers[row] its layer index), one
	// cell per routed expert.
	GridLayers []int    `json:"grid_layers"`
	Grid       [][]Cell `json:"grid"`
	// Imbalance is max/mean of tokens per expert (ByExpert) and per worker
	// (ByWorker) over the counts so far; 0 when nothing was routed.
	ImbalanceByExpert float64 `json:"imbalance_by_expert"`
	ImbalanceByWorker float64 `json:"imbalance_by_worker"`
}

// Cell is one routed expert.
type Cell struct {
	Owners     []string `json:"owners"`       // workers holding a copy, primary first (empty: none)
	Live       int      `json:"live"`         // how many of Owners are registered now
	Tokens     uint64   `json:"tokens"`       // rows computed, summed over live owners, since they started
	TokensPerS float64  `json:"tokens_per_s"` // rate over the Collector's last interval
}

// Job is one training job with its loss curve.
type Job struct {
	ID         string    `json:"id"`
	State      string    `json:"state"` // submitted, running, done, failed, ...
	Workers    int       `json:"workers"`
	Attempt    int       `json:"attempt"`
	Step       int       `json:"step"`
	Steps      int       `json:"steps"`
	Loss       float64   `json:"loss"`
	EvalLoss   float64   `json:"eval_loss,omitempty"`
	TokensPerS float64   `json:"tokens_per_s"`
	Updated    time.Time `json:"updated"`
	Error      string    `json:"error,omitempty"`
	// Curve is the loss at each step seen (ascending steps; a step
	// repeated after a resume keeps its latest value), at most MaxCurve
	// points (evenly thinned beyond that).
	Curve []Point `json:"curve"`
}

// Point is one (step, loss) sample.
type Point struct {
	Step int     `json:"step"`
	Loss float64 `json:"loss"`
}

// Serving is what front ends publish of their traffic (see Stats): one
// front end, or (State.Serving) all of them summed, latencies the worst
// front end's.
type Serving struct {
	Name           string  `json:"name,omitempty"`
	Requests       uint64  `json:"requests"`     // API requests answered
	Active         int     `json:"active"`       // sequences being generated
	Queued         int     `json:"queued"`       // requests waiting for a slot
	TokensPerS     float64 `json:"tokens_per_s"` // generated tokens per second, recent window
	PromptTokensPS float64 `json:"prompt_tokens_per_s"`
	GeneratedToks  uint64  `json:"generated_tokens"` // since start
	TTFTMs         Quant   `json:"ttft_ms"`          // time to first token, recent window
	ITLMs          Quant   `json:"itl_ms"`           // inter-token latency, recent window
	// History is the generated tokens/s over time, oldest first, one point
	// per Collector refresh (at most MaxHistory).
	History []RatePoint `json:"history"`
}

// Quant are latency percentiles in milliseconds (0 when no sample).
type Quant struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
}

// RatePoint is one rate sample.
type RatePoint struct {
	Time  time.Time `json:"time"`
	Value float64   `json:"value"`
}

// Limits of the histories a Collector keeps.
const (
	MaxCurve   = 2000 // loss points per job
	MaxHistory = 600  // serving rate points
)
