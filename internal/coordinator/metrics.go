package coordinator

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// metrics are the coordinator's Prometheus metrics (Coordinator.Collectors):
//
//	switchyard_coordinator_is_leader                            1 while this coordinator leads
//	switchyard_coordinator_leader_terms_total                   times it became leader
//	switchyard_coordinator_live_workers                         registered workers, as the leader sees them (0 on a follower)
//	switchyard_coordinator_placement_epoch{model}               placement epoch written or observed last
//	switchyard_coordinator_placement_changes_total{model,reason} placements written, by why: initial, worker_left,
//	                                                            worker_joined, migration (a transitional placement),
//	                                                            migration_done (its final one), rebalance
//	switchyard_coordinator_recovery_seconds                     a worker's registration gone (its lease revoked by the
//	                                                            health probes or expired) -> a final placement without it,
//	                                                            every expert with min(R, live workers) copies, applied
//	                                                            by all its owners (they hold the copies)
//	switchyard_coordinator_worker_losses_total                  workers seen leaving while leading
//	switchyard_coordinator_evictions_total                      leases revoked after failed health probes
//	switchyard_coordinator_lease_resumes_total                  terms kept through election renewals unanswered for a
//	                                                            TTL while etcd kept the lease (e.g. etcd's leader cut off)
type metrics struct {
	leader   prometheus.GaugeFunc
	terms    prometheus.CounterFunc
	evicts   prometheus.CounterFunc
	resumes  prometheus.CounterFunc
	live     prometheus.Gauge
	epoch    *prometheus.GaugeVec
	changes  *prometheus.CounterVec
	recovery prometheus.Histogram
	losses   prometheus.Counter

	mu      sync.Mutex
	lost    map[cluster.WorkerID]time.Time // workers gone, not yet recovered from
	prevSet map[cluster.WorkerID]bool      // the last worker set seen while leading
	last    map[string]*cluster.Placement  // last placement written per model
	// awaitLoads: the leader watches the workers' applied epochs (make-
	// before-break), so a recovery ends when they hold the copies, not
	// when the placement is written.
	awaitLoads bool
	// pending is a placement that restores the lost workers' copies,
	// waiting for its owners to report it applied (nil: none).
	pending *pendingRecovery
}

type pendingRecovery struct {
	model  string
	epoch  cluster.Epoch
	owners []cluster.WorkerID
	since  []time.Time
}

func newMetrics(c *Coordinator) *metrics {
	return &metrics{
		leader: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_is_leader", Help: "1 while this coordinator leads, else 0.",
		}, func() float64 {
			if ok, _ := c.Leading(); ok {
				return 1
			}
			return 0
		}),
		terms: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "switchyard_coordinator_leader_terms_total", Help: "Times this coordinator became leader.",
		}, func() float64 { return float64(c.terms.Load()) }),
		evicts: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "switchyard_coordinator_evictions_total", Help: "Worker leases revoked after failed health probes.",
		}, func() float64 { return float64(c.evictions.Load()) }),
		resumes: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "switchyard_coordinator_lease_resumes_total",
			Help: "Terms kept through election renewals unanswered for a TTL while etcd kept the lease alive (e.g. etcd's raft leader cut off).",
		}, func() float64 { return float64(c.leaseResumes.Load()) }),
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_live_workers", Help: "Registered workers as the leader sees them (0 on a follower).",
		}),
		epoch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_placement_epoch", Help: "Placement epoch written or observed last, per model.",
		}, []string{"model"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_placement_changes_total",
			Help: "Placements this coordinator wrote, by reason: initial, worker_left, worker_joined, migration, migration_done, rebalance.",
		}, []string{"model", "reason"}),
		recovery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_coordinator_recovery_seconds",
			Help:    "From a worker's registration vanishing to a placement without it, every expert with min(R, live workers) copies, applied by all its owners.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120},
		}),
		losses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_worker_losses_total", Help: "Workers seen leaving while this coordinator led.",
		}),
		lost: map[cluster.WorkerID]time.Time{},
		last: map[string]*cluster.Placement{},
	}
}

// Collectors are the coordinator's metrics, for a Prometheus registry.
func (c *Coordinator) Collectors() []prometheus.Collector {
	m := c.met
	return []prometheus.Collector{m.leader, m.terms, m.evicts, m.resumes, m.live, m.epoch, m.changes, m.recovery, m.losses}
}

// workers notes the leader's view of the worker set: workers that left
// start their recovery clocks.
func (m *metrics) workers(set []cluster.WorkerInfo, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := make(map[cluster.WorkerID]bool, len(set))
	for _, w := range set {
		cur[w.ID] = true
		delete(m.lost, w.ID) // back (a restart under its ID): its copies come back too
	}
	for w := range m.prevSet {
		if !cur[w] {
			if _, ok := m.lost[w]; !ok {
				m.lost[w] = now
				m.losses.Inc()
			}
		}
	}
	m.prevSet = cur
	m.live.Set(float64(len(cur)))
}

// follow forgets the leader's view when a term ends: a follower counts
// no workers and no recovery (the next leader times what follows).
func (m *metrics) follow() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prevSet, m.lost, m.last, m.pending = nil, map[cluster.WorkerID]time.Time{}, map[string]*cluster.Placement{}, nil
	m.live.Set(0)
}

// wrote records a placement written, with its reason, and ends the
// recovery clocks it completes.
func (m *metrics) wrote(p *cluster.Placement, transitional bool, replicas int, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	prev := m.last[p.Model]
	m.last[p.Model] = p
	m.epoch.WithLabelValues(p.Model).Set(float64(p.Epoch))
	m.changes.WithLabelValues(p.Model, changeReason(prev, p, transitional)).Inc()
	if transitional || len(m.lost) == 0 {
		return
	}
	want := min(max(replicas, 1), len(m.prevSet))
	for _, row := range p.Owners {
		for _, owners := range row {
			n := 0
			for _, w := range owners {
				if _, gone := m.lost[w]; gone {
					return // still names a lost worker
				}
				if m.prevSet[w] {
					n++
				}
			}
			if n < want {
				return // not back to R copies yet
			}
		}
	}
	pr := &pendingRecovery{model: p.Model, epoch: p.Epoch, owners: ownerIDs(p)}
	for w, t := range m.lost {
		pr.since = append(pr.since, t)
		delete(m.lost, w)
	}
	if !m.awaitLoads {
		m.finish(pr, now)
		return
	}
	m.pending = pr
}

// applied notes the placement epochs the workers report having applied
// (their stats records): a pending recovery ends once every owner of its
// placement applied it, i.e. holds its copies.
func (m *metrics) applied(stats []registry.WorkerStats, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pr := m.pending
	if pr == nil {
		return
	}
	at := map[cluster.WorkerID]cluster.Epoch{}
	for _, s := range stats {
		if s.Model == pr.model {
			at[s.Worker] = s.Epoch
		}
	}
	for _, w := range pr.owners {
		if at[w] < pr.epoch {
			return
		}
	}
	m.finish(pr, now)
	m.pending = nil
}

func (m *metrics) finish(pr *pendingRecovery, now time.Time) {
	for _, t := range pr.since {
		m.recovery.Observe(now.Sub(t).Seconds())
	}
}

// observed notes a placement read from etcd (a follower's view, or the
// leader's own write coming back).
func (m *metrics) observed(p *cluster.Placement) {
	if p != nil {
		m.epoch.WithLabelValues(p.Model).Set(float64(p.Epoch))
	}
}

// changeReason names why placement p follows prev.
func changeReason(prev, p *cluster.Placement, transitional bool) string {
	switch {
	case prev == nil:
		return "initial"
	case transitional:
		return "migration"
	}
	was, now := ownerIDs(prev), ownerIDs(p)
	for _, w := range was {
		if !slices.Contains(now, w) {
			return "worker_left"
		}
	}
	for _, w := range now {
		if !slices.Contains(was, w) {
			return "worker_joined"
		}
	}
	if len(prev.Owners) == len(p.Owners) && prev.Epoch+1 == p.Epoch && ownersShrank(prev, p) {
		return "migration_done"
	}
	return "rebalance"
}

// ownerIDs lists the workers p gives at least one copy, sorted.
func ownerIDs(p *cluster.Placement) []cluster.WorkerID {
	var ids []cluster.WorkerID
	for _, row := range p.Owners {
		for _, owners := range row {
			for _, w := range owners {
				if !slices.Contains(ids, w) {
					ids = append(ids, w)
				}
			}
		}
	}
	slices.Sort(ids)
	return ids
}

// ownersShrank reports whether p only drops copies prev listed (a
// make-before-break placement's final step).
func ownersShrank(prev, p *cluster.Placement) bool {
	dropped := false
	for l := range p.Owners {
		if len(prev.Owners[l]) != len(p.Owners[l]) {
			return false
		}
		for e, owners := range p.Owners[l] {
			old := prev.Owners[l][e]
			for _, w := range owners {
				if !slices.Contains(old, w) {
					return false
				}
			}
			dropped = dropped || len(owners) < len(old)
		}
	}
	return dropped
}
