// Package status gathers what `switchyard status` shows about a cluster:
// the coordinator leader, the workers with their leases, each model's
// placement and the leader's verdict on it (registry.PlacementStatus:
// e.g. a memory shortfall, experts with no live copy), per-expert token
// counts and the training jobs. It only reads etcd; the CLI renders a
// Snapshot (internal/cli) and owns the command (cmd/switchyard).
package status

import (
	"context"
	"sort"
	"strconv"

	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Snapshot is a cluster's state at one moment (read in a few etcd calls,
// not one transaction).
type Snapshot struct {
	Cluster string   `json:"cluster"`
	Leader  string   `json:"leader"` // coordinator name; "" when none leads
	Workers []Worker `json:"workers"`
	Models  []Model  `json:"models"`
	Jobs    []Job    `json:"jobs"`
	// Stats are the workers' counter records as read (not in the JSON:
	// Models[].Tokens sums them per expert).
	Stats []registry.WorkerStats `json:"-"`
}

// Job is a training (or verification) job and its progress.
type Job struct {
	Spec   *jobs.Spec  `json:"spec"`
	Status jobs.Status `json:"status"`
}

// Worker is a registered worker and its lease.
type Worker struct {
	cluster.WorkerInfo
	Lease             string `json:"lease"`               // etcd lease ID (hex)
	TTLSeconds        int64  `json:"ttl_seconds"`         // remaining lease time
	GrantedTTLSeconds int64  `json:"granted_ttl_seconds"` // lease TTL
}

// Model is one served model with its placement and token counts.
type Model struct {
	Record       registry.ModelRecord `json:"record"`
	Placement    *cluster.Placement   `json:"placement"` // nil: not placed yet
	PlacementRev int64                `json:"placement_rev"`
	// PlacementStatus is the leader's verdict on the placement (nil: none
	// published yet).
	PlacementStatus *registry.PlacementStatus `json:"placement_status"`
	// Owned lists, per worker of the placement, the experts it holds.
	Owned map[cluster.WorkerID][]expert.ID `json:"owned"`
	// Tokens are per-expert token counts summed over the live workers'
	// counters (since each worker started), with the workers reporting.
	Tokens []ExpertTokens `json:"tokens"`
}

// ExpertTokens is the token count of one logical expert.
type ExpertTokens struct {
	Layer  int    `json:"layer"`
	Expert int    `json:"expert"`
	Tokens uint64 `json:"tokens"`
}

// Take reads a snapshot of reg's cluster.
func Take(ctx context.Context, reg *registry.Registry) (*Snapshot, error) {
	s := &Snapshot{Cluster: reg.Cluster()}
	var err error
	if s.Leader, _, err = reg.Leader(ctx); err != nil {
		return nil, err
	}
	leases, err := reg.WorkerLeases(ctx)
	if err != nil {
		return nil, err
	}
	for _, l := range leases {
		s.Workers = append(s.Workers, Worker{
			WorkerInfo:        l.Info,
			Lease:             strconv.FormatInt(l.Lease, 16),
			TTLSeconds:        int64(l.TTL.Seconds()),
			GrantedTTLSeconds: int64(l.GrantedTTL.Seconds()),
		})
	}
	recs, _, err := reg.Models(ctx)
	if err != nil {
		return nil, err
	}
	stats, err := reg.Stats(ctx)
	if err != nil {
		return nil, err
	}
	s.Stats = stats
	for _, rec := range recs {
		m := Model{Record: rec, Owned: map[cluster.WorkerID][]expert.ID{}}
		if m.Placement, m.PlacementRev, err = reg.Placement(ctx, rec.Fingerprint); err != nil {
			return nil, err
		}
		if m.PlacementStatus, err = reg.PlacementStatus(ctx, rec.Fingerprint); err != nil {
			return nil, err
		}
		if m.Placement != nil {
			for _, id := range m.Placement.WorkerIDs() {
				m.Owned[id] = m.Placement.Owned(id)
			}
		}
		sum := map[expert.ID]uint64{}
		for _, st := range stats {
			if st.Model != rec.Fingerprint {
				continue
			}
			for _, c := range st.Tokens {
				sum[expert.ID{Layer: c.Layer, Expert: c.Expert}] += c.Tokens
			}
		}
		for id, n := range sum {
			m.Tokens = append(m.Tokens, ExpertTokens{Layer: id.Layer, Expert: id.Expert, Tokens: n})
		}
		sort.Slice(m.Tokens, func(i, j int) bool {
			a, b := m.Tokens[i], m.Tokens[j]
			return a.Layer < b.Layer || (a.Layer == b.Layer && a.Expert < b.Expert)
		})
		s.Models = append(s.Models, m)
	}
	js := jobs.NewStore(reg.Client(), reg.Cluster())
	list, _, _, err := js.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, sp := range list {
		st, err := js.Status(ctx, sp.ID)
		if err != nil {
			return nil, err
		}
		s.Jobs = append(s.Jobs, Job{Spec: sp, Status: st})
	}
	return s, nil
}
