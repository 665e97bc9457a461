package dashboard

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The cluster-wide gauges a coordinator exports, computed from a State at
// scrape time (one etcd read per scrape):
//
//	switchyard_coordinator_expert_load_imbalance{model,by}  max/mean tokens per expert (by="expert") or per worker (by="worker")
//	switchyard_coordinator_unavailable_experts{model}       routed experts with no live copy
//	switchyard_coordinator_jobs{state}                      training jobs by state
var (
	descImbalance   = prometheus.NewDesc("switchyard_coordinator_expert_load_imbalance", "Max/mean of tokens per expert (by=expert) or per worker (by=worker) since the workers started; 0 when nothing was routed.", []string{"model", "by"}, nil)
	descUnavailable = prometheus.NewDesc("switchyard_coordinator_unavailable_experts", "Routed experts with no copy on a live worker.", []string{"model"}, nil)
	descJobs        = prometheus.NewDesc("switchyard_coordinator_jobs", "Training jobs by state.", []string{"state"}, nil)
)

type stateCollector struct{ src Source }

// NewStateCollector returns a Prometheus collector of the cluster-wide
// gauges above, read from src at each scrape (within 5 s; a failed read
// yields no samples).
func NewStateCollector(src Source) prometheus.Collector { return stateCollector{src} }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descImbalance
	ch <- descUnavailable
	ch <- descJobs
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.src.State(ctx)
	if err != nil {
		return
	}
	for _, m := range st.Models {
		name := m.Fingerprint // as the coordinator's other metrics label models
		ch <- prometheus.MustNewConstMetric(descImbalance, prometheus.GaugeValue, m.ImbalanceByExpert, name, "expert")
		ch <- prometheus.MustNewConstMetric(descImbalance, prometheus.GaugeValue, m.ImbalanceByWorker, name, "worker")
		ch <- prometheus.MustNewConstMetric(descUnavailable, prometheus.GaugeValue, float64(len(m.Unplaced)), name)
	}
	byState := map[string]int{}
	for _, j := range st.Jobs {
		byState[j.State]++
	}
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(descJobs, prometheus.GaugeValue, float64(n), s)
	}
}
