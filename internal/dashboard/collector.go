package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/internal/status"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Collector builds States from a cluster's etcd keys. Beyond what etcd
// holds now it keeps two histories: each job's loss curve (the status
// rank 0 publishes every step; Run replays etcd's history of those keys
// and then watches them, so a curve has every step etcd still holds) and
// the token rates (counter differences between State calls at least
// MinRateInterval apart). Without Run, a curve has the points seen at
// State calls. Safe for concurrent use.
type Collector struct {
	reg *registry.Registry
	// MinRateInterval is the shortest interval over which rates are
	// recomputed (default 1.5 s): a State call sooner than that after the
	// last recomputation reuses its rates, so several pages polling at
	// once do not make them noisy.
	MinRateInterval time.Duration

	mu       sync.Mutex
	curves   map[string]map[int]float64 // job -> step -> loss
	prevAt   time.Time
	prevCell map[cellKey]uint64
	prevWork map[string]uint64
	cellRate map[cellKey]float64
	workRate map[string]float64
	history  []RatePoint
}

type cellKey struct {
	model string
	id    expert.ID
}

// NewCollector returns a Collector reading reg's cluster.
func NewCollector(reg *registry.Registry) *Collector {
	return &Collector{reg: reg, curves: map[string]map[int]float64{}}
}

// Run replays and then watches the cluster's job statuses until ctx ends,
// adding every (step, loss) to the jobs' curves. A broken watch is
// resumed after the last revision seen; history etcd compacted away is
// skipped. It returns ctx's error.
func (c *Collector) Run(ctx context.Context) error {
	prefix := "/" + c.reg.Cluster() + "/jobs/"
	rev := int64(1)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := c.reg.Client().Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
		for resp := range wch {
			if resp.CompactRevision > rev {
				rev = resp.CompactRevision
				break
			}
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				key := string(ev.Kv.Key)
				if !strings.HasSuffix(key, "/status") {
					continue
				}
				var st jobs.Status
				if json.Unmarshal(ev.Kv.Value, &st) == nil {
					c.addPoint(strings.TrimSuffix(strings.TrimPrefix(key, prefix), "/status"), st)
				}
				rev = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	return ctx.Err()
}

func (c *Collector) addPoint(job string, st jobs.Status) {
	if st.Step <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.curves[job]
	if m == nil {
		m = map[int]float64{}
		c.curves[job] = m
	}
	m[st.Step] = st.Loss
}

// curve returns job's points in step order, thinned to MaxCurve.
func (c *Collector) curve(job string) []Point {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.curves[job]
	pts := make([]Point, 0, len(m))
	for s, l := range m {
		pts = append(pts, Point{Step: s, Loss: l})
	}
	sort.Slice(pts, func(i, j int) bool { return pts[i].Step < pts[j].Step })
	if len(pts) > MaxCurve {
		thin := make([]Point, 0, MaxCurve)
		for i := 0; i < MaxCurve; i++ {
			thin = append(thin, pts[i*(len(pts)-1)/(MaxCurve-1)])
		}
		pts = thin
	}
	return pts
}

// State reads the cluster now: a few etcd reads, not one transaction.
func (c *Collector) State(ctx context.Context) (*State, error) {
	snap, err := status.Take(ctx, c.reg)
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	fronts, err := c.reg.Frontends(ctx)
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	now := time.Now()
	st := &State{Time: now, Cluster: snap.Cluster, Leader: snap.Leader}

	live := map[cluster.WorkerID]bool{}
	for _, w := range snap.Workers {
		live[w.ID] = true
	}
	// Counters of live workers only: a dead worker's record is gone with
	// its lease, and a restarted one counts from zero.
	byWorker := map[cluster.WorkerID]registry.WorkerStats{}
	for _, s := range snap.Stats {
		if live[s.Worker] {
			byWorker[s.Worker] = s
		}
	}
	cellTok := map[cellKey]uint64{}
	workTok := map[string]uint64{}
	for _, s := range byWorker {
		for _, t := range s.Tokens {
			cellTok[cellKey{s.Model, expert.ID{Layer: t.Layer, Expert: t.Expert}}] += t.Tokens
			workTok[string(s.Worker)] += t.Tokens
		}
	}
	c.updateRates(now, cellTok, workTok)

	c.mu.Lock()
	cellRate, workRate := c.cellRate, c.workRate
	c.mu.Unlock()

	held := map[cluster.WorkerID]int{}
	heldBytes := map[cluster.WorkerID]int64{}
	for _, m := range snap.Models {
		st.Models = append(st.Models, buildModel(m, live, cellTok, cellRate, workTok))
		for w, ids := range m.Owned {
			held[w] += len(ids)
			heldBytes[w] += int64(len(ids)) * m.Record.ExpertBytes
		}
	}
	for _, w := range snap.Workers {
		s := byWorker[w.ID]
		st.Workers = append(st.Workers, Worker{
			ID: string(w.ID), Addr: w.Addr, Model: w.Model,
			Healthy:    w.GrantedTTLSeconds == 0 || 2*w.TTLSeconds > w.GrantedTTLSeconds,
			TTLSeconds: w.TTLSeconds, BudgetBytes: w.MemBytes,
			Experts: held[w.ID], HeldBytes: heldBytes[w.ID],
			Epoch: uint64(s.Epoch), Tokens: workTok[string(w.ID)], TokensPerS: workRate[string(w.ID)],
		})
	}
	sort.Slice(st.Workers, func(i, j int) bool { return st.Workers[i].ID < st.Workers[j].ID })

	for _, j := range snap.Jobs {
		c.addPoint(j.Spec.ID, j.Status)
		st.Jobs = append(st.Jobs, Job{
			ID: j.Spec.ID, State: string(j.Spec.State), Workers: j.Spec.Workers, Attempt: j.Status.Attempt,
			Step: j.Status.Step, Steps: j.Status.Steps, Loss: j.Status.Loss, EvalLoss: j.Status.EvalLoss,
			TokensPerS: j.Status.TokensPerS, Updated: j.Status.Updated, Error: j.Spec.Error,
			Curve: c.curve(j.Spec.ID),
		})
	}
	// Newest first: the job updated last leads.
	sort.SliceStable(st.Jobs, func(i, j int) bool { return st.Jobs[i].Updated.After(st.Jobs[j].Updated) })

	for _, f := range fronts {
		fs := Serving{
			Name: f.Name, Requests: f.Requests, Active: f.Active, Queued: f.Queued,
			TokensPerS: f.TokensPerS, PromptTokensPS: f.PromptTokensPS, GeneratedToks: f.GeneratedTokens,
			TTFTMs: Quant{f.TTFTP50, f.TTFTP90, f.TTFTP99}, ITLMs: Quant{f.ITLP50, f.ITLP90, f.ITLP99},
		}
		st.Frontend = append(st.Frontend, fs)
		a := &st.Serving
		a.Requests += fs.Requests
		a.Active += fs.Active
		a.Queued += fs.Queued
		a.TokensPerS += fs.TokensPerS
		a.PromptTokensPS += fs.PromptTokensPS
		a.GeneratedToks += fs.GeneratedToks
		a.TTFTMs = worst(a.TTFTMs, fs.TTFTMs)
		a.ITLMs = worst(a.ITLMs, fs.ITLMs)
	}
	st.Serving.History = c.addHistory(now, st.Serving.TokensPerS, len(fronts) > 0)
	return st, nil
}

func worst(a, b Quant) Quant {
	return Quant{max(a.P50, b.P50), max(a.P90, b.P90), max(a.P99, b.P99)}
}

// updateRates recomputes the token rates when the last computation is at
// least MinRateInterval old.
func (c *Collector) updateRates(now time.Time, cells map[cellKey]uint64, work map[string]uint64) {
	minIv := c.MinRateInterval
	if minIv <= 0 {
		minIv = 1500 * time.Millisecond
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	dt := now.Sub(c.prevAt)
	if c.prevCell != nil && dt < minIv {
		return
	}
	cr, wr := map[cellKey]float64{}, map[string]float64{}
	if c.prevCell != nil && dt < time.Minute {
		for k, v := range cells {
			if p, ok := c.prevCell[k]; ok && v >= p {
				cr[k] = float64(v-p) / dt.Seconds()
			}
		}
		for k, v := range work {
			if p, ok := c.prevWork[k]; ok && v >= p {
				wr[k] = float64(v-p) / dt.Seconds()
			}
		}
	}
	c.prevAt, c.prevCell, c.prevWork, c.cellRate, c.workRate = now, cells, work, cr, wr
}

// addHistory appends the serving rate (at most one point per
// MinRateInterval) and returns a copy of the history.
func (c *Collector) addHistory(now time.Time, rate float64, serving bool) []RatePoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	minIv := c.MinRateInterval
	if minIv <= 0 {
		minIv = 1500 * time.Millisecond
	}
	if serving && (len(c.history) == 0 || now.Sub(c.history[len(c.history)-1].Time) >= minIv) {
		c.history = append(c.history, RatePoint{Time: now, Value: rate})
		if len(c.history) > MaxHistory {
			c.history = slices.Delete(c.history, 0, len(c.history)-MaxHistory)
		}
	}
	return slices.Clone(c.history)
}

// buildModel lays one model's placement out as a grid of its MoE layers.
func buildModel(m status.Model, live map[cluster.WorkerID]bool, cellTok map[cellKey]uint64, cellRate map[cellKey]float64, workTok map[string]uint64) Model {
	rec := m.Record
	out := Model{
		Fingerprint: rec.Fingerprint, Name: rec.Name, Family: rec.Family, Layers: rec.Layers, Experts: rec.Experts,
		Unplaced: []string{}, GridLayers: []int{}, Grid: [][]Cell{},
	}
	if ps := m.PlacementStatus; ps != nil {
		out.OK, out.Verdict = ps.OK, ps.Error
	}
	p := m.Placement
	if p != nil {
		out.Epoch = uint64(p.Epoch)
	}
	var sum, most float64
	n := 0
	for _, l := range rec.MoELayers {
		row := make([]Cell, rec.Experts)
		for e := range row {
			id := expert.ID{Layer: l, Expert: e}
			k := cellKey{rec.Fingerprint, id}
			cell := Cell{Owners: []string{}, Tokens: cellTok[k], TokensPerS: cellRate[k]}
			if p != nil {
				for _, w := range p.OwnersOf(id) {
					cell.Owners = append(cell.Owners, string(w))
					if live[w] {
						cell.Live++
					}
				}
			}
			out.Replicas = max(out.Replicas, len(cell.Owners))
			if cell.Live == 0 {
				out.Unplaced = append(out.Unplaced, fmt.Sprintf("%d/%d", l, e))
			}
			row[e] = cell
			sum += float64(cell.Tokens)
			most = max(most, float64(cell.Tokens))
			n++
		}
		out.GridLayers = append(out.GridLayers, l)
		out.Grid = append(out.Grid, row)
	}
	if sum > 0 {
		out.ImbalanceByExpert = most / (sum / float64(n))
	}
	// Per worker: the model's workers' token totals.
	var wsum, wmost float64
	wn := 0
	for w := range m.Owned {
		t := float64(workTok[string(w)])
		wsum += t
		wmost = max(wmost, t)
		wn++
	}
	if wsum > 0 {
		out.ImbalanceByWorker = wmost / (wsum / float64(wn))
	}
	return out
}
