package worker

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/transport"
)

// metrics are the worker's Prometheus metrics (Worker.Metrics), on a
// registry of its own. Names start with switchyard_worker_ (the expert
// server) and switchyard_train_ (training ranks); times in seconds:
//
//	switchyard_worker_expert_tokens_total{layer,expert}          rows each held expert computed (serving)
//	switchyard_worker_expert_compute_seconds_total{layer,expert} its GEMM time
//	switchyard_worker_batch_seconds                              one batch of the GEMM goroutine (histogram)
//	switchyard_worker_queue_seconds                              a request's rows received -> their batch starts (histogram)
//	switchyard_worker_requests_total{peer}                       requests answered per caller
//	switchyard_worker_request_bytes_in_total{peer}               payload bytes received per caller
//	switchyard_worker_request_bytes_out_total{peer}              payload bytes sent per caller
//	switchyard_worker_held_experts, _held_expert_bytes, _expert_budget_bytes (0: unlimited)
//	switchyard_worker_placement_epoch                            epoch applied
//	switchyard_worker_expert_load_imbalance                      max/mean tokens over held experts
//	switchyard_worker_registrations_total                        registrations under a new etcd lease (the first and each after a lost lease)
//	switchyard_worker_lease_losses_total                         leases lost after registering (expired or revoked: out of the cluster until registered again)
//	switchyard_worker_lease_resumes_total                        renewals unanswered for a TTL while etcd kept the lease, resumed on it
//	switchyard_train_step_seconds_total{job,part}                part: forward, backward, exchange_wait, allreduce_wait, optimizer, barrier, total
//	switchyard_train_steps_total{job}, switchyard_train_tokens_total{job}
//	switchyard_train_tokens_per_second{job}, switchyard_train_loss{job}, switchyard_train_grad_norm{job}
//	switchyard_train_allreduce_bytes_total{job}, switchyard_train_allreduce_bus_bandwidth_bytes_per_second{job}
//
// plus the Go runtime's and the process's (process_resident_memory_bytes).
type metrics struct {
	reg *prometheus.Registry

	compute  *prometheus.CounterVec
	batch    prometheus.Histogram
	queue    prometheus.Histogram
	requests *prometheus.CounterVec
	bytesIn  *prometheus.CounterVec
	bytesOut *prometheus.CounterVec

	registrations, leaseLosses, leaseResumes prometheus.Counter

	stepSec  *prometheus.CounterVec
	steps    *prometheus.CounterVec
	tokens   *prometheus.CounterVec
	tps      *prometheus.GaugeVec
	loss     *prometheus.GaugeVec
	gradNorm *prometheus.GaugeVec
	arBytes  *prometheus.CounterVec
	busBW    *prometheus.GaugeVec
}

func newMetrics(w *Worker) *metrics {
	buckets := []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		compute: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_worker_expert_compute_seconds_total", Help: "GEMM time of each held expert (serving).",
		}, []string{"layer", "expert"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "switchyard_worker_batch_seconds", Help: "One batch of the expert GEMM goroutine (every caller's rows for the experts asked).", Buckets: buckets,
		}),
		queue: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "switchyard_worker_queue_seconds", Help: "A request's rows received until their batch starts.", Buckets: buckets,
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_worker_requests_total", Help: "Expert requests answered with results, per caller.",
		}, []string{"peer"}),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_worker_request_bytes_in_total", Help: "Request payload bytes received, per caller.",
		}, []string{"peer"}),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_worker_request_bytes_out_total", Help: "Answer payload bytes sent, per caller.",
		}, []string{"peer"}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_worker_registrations_total", Help: "Registrations in etcd under a new lease: the first, and one after each lost lease.",
		}),
		leaseLosses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_worker_lease_losses_total", Help: "Leases lost after registering (etcd let the lease expire, or the leader revoked it after failed health probes): the worker was out of the cluster until it registered again.",
		}),
		leaseResumes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_worker_lease_resumes_total", Help: "Times the lease's renewals went unanswered for a TTL while etcd kept the lease alive (e.g. a raft leader change), and renewals resumed on the same lease.",
		}),
		stepSec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_train_step_seconds_total",
			Help: "Training step time of this worker's ranks by part (disjoint but total): forward and backward (own compute), exchange_wait (routed experts through their owners), allreduce_wait, optimizer, barrier, total.",
		}, []string{"train_job", "part"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_train_steps_total", Help: "Training steps finished by this worker's ranks.",
		}, []string{"train_job"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_train_tokens_total", Help: "Tokens of this worker's ranks' rows.",
		}, []string{"train_job"}),
		tps: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_tokens_per_second", Help: "The whole job's tokens per second in the last step (global batch tokens / step time).",
		}, []string{"train_job"}),
		loss: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_loss", Help: "The job's training loss of the last step.",
		}, []string{"train_job"}),
		gradNorm: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_grad_norm", Help: "The job's global gradient norm of the last step, before clipping.",
		}, []string{"train_job"}),
		arBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_train_allreduce_bytes_total", Help: "Dense-gradient bytes this worker's ranks all-reduced.",
		}, []string{"train_job"}),
		busBW: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_train_allreduce_bus_bandwidth_bytes_per_second", Help: "The last step's gradient all-reduce bus bandwidth (2(n-1)/n x bytes / time, as NCCL reports it).",
		}, []string{"train_job"}),
	}
	m.reg.MustRegister(m.compute, m.batch, m.queue, m.requests, m.bytesIn, m.bytesOut,
		m.registrations, m.leaseLosses, m.leaseResumes,
		m.stepSec, m.steps, m.tokens, m.tps, m.loss, m.gradNorm, m.arBytes, m.busBW,
		&serverCollector{w: w},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observer is what the expert server tells the metrics.
func (m *metrics) observer() *transport.ServerObserver {
	return &transport.ServerObserver{
		Request: func(peer string, in, out int, queued time.Duration) {
			m.requests.WithLabelValues(peer).Inc()
			m.bytesIn.WithLabelValues(peer).Add(float64(in))
			m.bytesOut.WithLabelValues(peer).Add(float64(out))
			m.queue.Observe(queued.Seconds())
		},
		Expert: func(id expert.ID, _ int, took time.Duration) {
			m.compute.WithLabelValues(strconv.Itoa(id.Layer), strconv.Itoa(id.Expert)).Add(took.Seconds())
		},
		Batch: func(_ int, took time.Duration) { m.batch.Observe(took.Seconds()) },
	}
}

// step records one training step of one of this worker's ranks. The
// job-wide gauges (loss, grad norm, tokens/s) are the same on every rank.
func (m *metrics) step(job string, _ int, r train.StepReport) {
	t := r.Times
	for _, p := range []struct {
		part string
		d    time.Duration
	}{
		{"forward", t.Forward}, {"backward", t.Backward}, {"exchange_wait", t.ExchangeWait},
		{"allreduce_wait", t.AllReduceWait}, {"optimizer", t.Optimizer}, {"barrier", t.Barrier}, {"total", t.Total},
	} {
		m.stepSec.WithLabelValues(job, p.part).Add(p.d.Seconds())
	}
	m.steps.WithLabelValues(job).Inc()
	m.tokens.WithLabelValues(job).Add(float64(r.Tokens))
	if t.Total > 0 {
		m.tps.WithLabelValues(job).Set(float64(r.GlobalTokens) / t.Total.Seconds())
	}
	m.loss.WithLabelValues(job).Set(r.Loss)
	m.gradNorm.WithLabelValues(job).Set(r.GradNorm)
	m.arBytes.WithLabelValues(job).Add(float64(t.AllReduceBytes))
	m.busBW.WithLabelValues(job).Set(t.BusBandwidth(r.Ranks))
}

// serverCollector reads the expert server's counters and the worker's
// holdings at scrape time (the same counters the worker reports to etcd).
type serverCollector struct{ w *Worker }

var (
	descTokens    = prometheus.NewDesc("switchyard_worker_expert_tokens_total", "Token rows each expert computed (serving), since the worker started.", []string{"layer", "expert"}, nil)
	descHeld      = prometheus.NewDesc("switchyard_worker_held_experts", "Routed expert copies held.", nil, nil)
	descHeldBytes = prometheus.NewDesc("switchyard_worker_held_expert_bytes", "Bytes of the routed experts held.", nil, nil)
	descBudget    = prometheus.NewDesc("switchyard_worker_expert_budget_bytes", "Expert memory budget (0: unlimited).", nil, nil)
	descEpoch     = prometheus.NewDesc("switchyard_worker_placement_epoch", "Placement epoch applied last.", nil, nil)
	descImbalance = prometheus.NewDesc("switchyard_worker_expert_load_imbalance", "Max/mean tokens over the experts held (0: none computed yet).", nil, nil)
)

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTokens, descHeld, descHeldBytes, descBudget, descEpoch, descImbalance} {
		ch <- d
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	w := c.w
	ch <- prometheus.MustNewConstMetric(descBudget, prometheus.GaugeValue, float64(w.budget))
	ch <- prometheus.MustNewConstMetric(descEpoch, prometheus.GaugeValue, float64(w.applied.Load()))
	if !w.isReady() {
		return // the server and store are set up before Ready
	}
	snap := w.srv.Snapshot()
	held := 0
	var sum, most float64
	for _, e := range snap.Experts {
		if e.Tokens > 0 || e.Held {
			ch <- prometheus.MustNewConstMetric(descTokens, prometheus.CounterValue, float64(e.Tokens),
				strconv.Itoa(int(e.Layer)), strconv.Itoa(int(e.Expert)))
		}
		if e.Held {
			held++
			sum += float64(e.Tokens)
			most = max(most, float64(e.Tokens))
		}
	}
	imb := 0.0
	if sum > 0 {
		imb = most / (sum / float64(held))
	}
	ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(held))
	ch <- prometheus.MustNewConstMetric(descHeldBytes, prometheus.GaugeValue, float64(snap.BytesHeld))
	ch <- prometheus.MustNewConstMetric(descImbalance, prometheus.GaugeValue, imb)
}

// Metrics is the worker's Prometheus registry (serve it with promhttp).
func (w *Worker) Metrics() *prometheus.Registry { return w.met.reg }
