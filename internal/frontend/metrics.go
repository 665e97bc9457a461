package frontend

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/transport"
)

// metrics are the front end's expert-exchange metrics, served on the API's
// /metrics beside the server's own:
//
//	switchyard_frontend_exchange_seconds{worker}        one exchange with one worker (histogram)
//	switchyard_frontend_exchange_rows_total{worker}     rows sent to each worker
//	switchyard_frontend_exchange_failures_total{worker} exchanges that failed (the rows went to another copy, or the call failed)
//	switchyard_frontend_exchange_served_seconds{worker}   the owner's own part of it (batcher queue, GEMMs), as it reports
//	switchyard_frontend_exchange_overhead_seconds{worker} the rest: network and software
//	switchyard_frontend_layer_exchange_seconds{layer}   one MoE layer's whole exchange, as the model waits for it (histogram)
//	switchyard_frontend_layer_served_seconds{layer}     the owners' part of that wait
//	switchyard_frontend_expert_rows_total{layer,expert} token rows routed to each expert (every copy together)
//	switchyard_frontend_placement_epoch                 the placement epoch in use
//	switchyard_frontend_live_workers                    workers registered in etcd
//	switchyard_frontend_unavailable_experts             experts with no live copy now
type metrics struct {
	exchange *prometheus.HistogramVec
	served   *prometheus.HistogramVec
	overhead *prometheus.HistogramVec
	lserved  *prometheus.HistogramVec
	rows     *prometheus.CounterVec
	failures *prometheus.CounterVec
	layer    *prometheus.HistogramVec
	routed   *prometheus.CounterVec
	gauges   []prometheus.Collector

	routedMu sync.Mutex
	byExpert [][]prometheus.Counter // [layer][expert], filled as first used
}

func newMetrics(f *Frontend) *metrics {
	buckets := []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
	m := &metrics{
		exchange: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchyard_frontend_exchange_seconds", Help: "One expert exchange (request rows out, answer rows back) with one worker.", Buckets: buckets,
		}, []string{"worker"}),
		served: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchyard_frontend_exchange_served_seconds", Help: "The owner's own time on one exchange (expert batcher queue and GEMMs), as it reports it.", Buckets: buckets,
		}, []string{"worker"}),
		overhead: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchyard_frontend_exchange_overhead_seconds", Help: "One exchange's time minus the owner's: network and software (serialization, gRPC, scheduling).", Buckets: buckets,
		}, []string{"worker"}),
		lserved: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchyard_frontend_layer_served_seconds", Help: "The owners' part of one MoE layer's wait (per round of destinations, the longest owner time).", Buckets: buckets,
		}, []string{"layer"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_frontend_exchange_rows_total", Help: "Token rows sent to each worker's experts.",
		}, []string{"worker"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_frontend_exchange_failures_total", Help: "Exchanges with a worker that failed (its rows went to another copy, or the call failed).",
		}, []string{"worker", "reason"}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_frontend_expert_rows_total", Help: "Token rows routed to each expert (counted once per MoE layer call, whichever copy answers).",
		}, []string{"layer", "expert"}),
		layer: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "switchyard_frontend_layer_exchange_seconds", Help: "One MoE layer's routed experts as the model waits for them: every destination, retries included.", Buckets: buckets,
		}, []string{"layer"}),
	}
	m.gauges = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_frontend_placement_epoch", Help: "The expert placement epoch in use."}, func() float64 {
			if p := f.Placement.Current(); p != nil {
				return float64(p.Epoch)
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_frontend_live_workers", Help: "Workers of the model registered in etcd."}, func() float64 {
			if l := f.live.Load(); l != nil {
				return float64(len(*l))
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "switchyard_frontend_unavailable_experts", Help: "Routed experts with no copy on a live worker."}, func() float64 {
			if p := f.Placement.Current(); p != nil {
				return float64(len(p.Unowned(f.IsLive)))
			}
			return 0
		}),
	}
	return m
}

func (m *metrics) observer() *transport.Observer {
	return &transport.Observer{
		Exchange: func(_ int, w cluster.WorkerID, rows int, took, served time.Duration, err error) {
			m.exchange.WithLabelValues(string(w)).Observe(took.Seconds())
			if err == nil {
				m.served.WithLabelValues(string(w)).Observe(served.Seconds())
				m.overhead.WithLabelValues(string(w)).Observe((took - served).Seconds())
			}
			m.rows.WithLabelValues(string(w)).Add(float64(rows))
			if err != nil {
				m.failures.WithLabelValues(string(w), reason(err)).Inc()
			}
		},
		Routed: m.countRouted,
		Layer: func(layer, _ int, took, served time.Duration, err error) {
			if err == nil {
				m.layer.WithLabelValues(strconv.Itoa(layer)).Observe(took.Seconds())
				m.lserved.WithLabelValues(strconv.Itoa(layer)).Observe(served.Seconds())
			}
		},
	}
}

// countRouted adds a plan's rows per expert to the routed counters.
func (m *metrics) countRouted(layer int, plan *router.Plan) {
	m.routedMu.Lock()
	defer m.routedMu.Unlock()
	for len(m.byExpert) <= layer {
		m.byExpert = append(m.byExpert, nil)
	}
	row := m.byExpert[layer]
	for e := 0; e < plan.NumExperts; e++ {
		lo, hi := plan.Rows(e)
		if hi == lo {
			continue
		}
		for len(row) <= e {
			row = append(row, nil)
		}
		if row[e] == nil {
			row[e] = m.routed.WithLabelValues(strconv.Itoa(layer), strconv.Itoa(e))
		}
		row[e].Add(float64(hi - lo))
	}
	m.byExpert[layer] = row
}

func reason(err error) string {
	switch {
	case errors.Is(err, transport.ErrPeerUnavailable):
		return "unavailable"
	case errors.Is(err, cluster.ErrStalePlacement):
		return "stale_or_not_owned"
	default:
		return "other"
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return append([]prometheus.Collector{m.exchange, m.served, m.overhead, m.rows, m.failures, m.layer, m.lserved, m.routed}, m.gauges...)
}
