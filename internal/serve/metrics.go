package serve

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/switchyard/switchyard/pkg/model"
)

// metrics are the server's Prometheus metrics, on a registry of its own
// (so several servers can live in one process, e.g. in tests). Names start
// with switchyard_serve_; latencies are in seconds.
type metrics struct {
	reg *prometheus.Registry

	requests   *prometheus.CounterVec // by endpoint and HTTP status (499: client went away)
	promptToks prometheus.Counter     // prompt tokens prefilled
	genToks    prometheus.Counter     // tokens generated
	ttft       prometheus.Histogram   // arrival -> first generated token
	tpot       prometheus.Histogram   // between consecutive tokens of a sequence
	e2e        prometheus.Histogram   // arrival -> last token
	batch      prometheus.Histogram   // sequences per Forward call
	parts      *prometheus.CounterVec // Forward wall time by part (Profiled models)
	extra      []prometheus.Collector // Config.Collectors
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchyard_serve_requests_total",
		Help: "HTTP API requests by endpoint and status code (499: the client went away first).",
	}, []string{"endpoint", "code"})
	m.promptToks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchyard_serve_prompt_tokens_total", Help: "Prompt tokens prefilled.",
	})
	m.genToks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchyard_serve_generation_tokens_total", Help: "Tokens generated.",
	})
	lat := []float64{.001, .0025, .005, .01, .025, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2.5, 5, 10, 20, 40}
	m.ttft = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "switchyard_serve_time_to_first_token_seconds", Help: "Time from a request's arrival to its first generated token.", Buckets: lat,
	})
	m.tpot = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "switchyard_serve_time_per_output_token_seconds", Help: "Time between consecutive generated tokens of a sequence.", Buckets: lat,
	})
	m.e2e = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "switchyard_serve_e2e_request_latency_seconds", Help: "Time from a request's arrival to its last token.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 40, 80, 160},
	})
	m.batch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "switchyard_serve_batch_sequences", Help: "Sequences in one model step (decoding and prefilling together).",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	m.parts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchyard_serve_forward_seconds_total",
		Help: "Wall time of model steps by part: attention (norms, attention, o_proj), router, experts (routed experts: on a cluster the exchange with their owners, waiting included), shared_experts, dense_mlp, head (embedding, final norm, lm_head), total.",
	}, []string{"part"})
	active := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchyard_serve_active_sequences", Help: "Sequences being generated (each holds a KV cache).",
	}, func() float64 { return float64(s.active.Load()) })
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchyard_serve_queued_requests", Help: "Requests waiting for a free sequence slot.",
	}, func() float64 { return float64(s.queued()) })
	kv := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchyard_serve_kv_cache_bytes", Help: "Bytes held by the KV caches of the active sequences.",
	}, func() float64 { return float64(s.kvBytes.Load()) })
	pool := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchyard_serve_kv_pool_bytes", Help: "Bytes of KV cache kept from ended sequences for new ones (model.SeqPool; at most model.DefaultSeqPoolBytes).",
	}, func() float64 {
		if p, ok := s.model.(seqPooled); ok {
			return float64(p.PoolBytes())
		}
		return 0
	})
	conns := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchyard_serve_open_connections", Help: "Open HTTP connections (at most Config.MaxConns; see Server.Listener).",
	}, func() float64 { return float64(s.conns.Load()) })
	m.reg.MustRegister(m.requests, m.promptToks, m.genToks, m.ttft, m.tpot, m.e2e, m.batch, m.parts, active, queued, kv, pool, conns,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(s.cfg.Collectors...)
	return m
}

// observeProfile adds one Forward call's parts to the counters.
func (m *metrics) observeProfile(p model.Profile) {
	for _, kv := range []struct {
		part string
		d    time.Duration
	}{
		{"attention", p.Attention}, {"router", p.Router}, {"experts", p.Experts}, {"shared_experts", p.SharedExperts},
		{"dense_mlp", p.DenseMLP}, {"head", p.Head}, {"total", p.Total},
	} {
		m.parts.WithLabelValues(kv.part).Add(kv.d.Seconds())
	}
}
