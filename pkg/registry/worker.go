package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard/switchyard/pkg/cluster"
)

// DefaultTTL is the lease TTL of a worker registration: a SIGKILLed worker
// leaves the cluster (its key expires) within this time, when no leader
// coordinator's health probes evict it first (within 2 s). It outlasts
// etcd's failover when the raft leader's host is cut off: an election (1-2
// s), then renewals a follower held for the lost leader (etcd's 5 s peer
// read timeout) or while it caught up; the new leader extends every lease
// by TTL + election timeout from its election, so a renewal held 6 s is in
// time with 10 s and was not with the former 5 s (scripts/chaos.sh
// isolate-etcd-leader). etcd grants whole seconds and at least 1.5 x its
// election timeout.
const DefaultTTL = 10 * time.Second

// Registration refusals; errors.Is works on Register's error.
var (
	ErrProtocolMismatch = errors.New("protocol version mismatch")
	ErrModelMismatch    = errors.New("model mismatch")
	ErrWorkerExists     = errors.New("worker ID already registered")
)

// Registration is a worker's live entry: its key under a lease that a
// LeaseKeeper keeps alive (a renewal every TTL/3, resumed on the same lease
// when renewals stalled while etcd kept it). Its methods are safe for
// concurrent use.
//
// Done is closed when the worker is out of the cluster and must register
// again: after Close or Abandon, when the client closes, when etcd let the
// lease expire or revoked it (the worker was cut off longer than the TTL,
// or the leader evicted it). Abandon stops renewing without revoking, as a
// crashed process would (for tests and hand-over): the keys disappear when
// the TTL runs out.
type Registration struct {
	*LeaseKeeper
	r    *Registry
	key  string
	info cluster.WorkerInfo
}

// Register puts info under /<cluster>/workers/<id>, attached to a new lease
// of the given TTL (0 means DefaultTTL; rounded up to whole seconds), and
// keeps the lease alive until Close, Abandon or the client closes. It
// refuses, with a clear error, a worker whose Protocol differs from this
// binary's cluster.ProtocolVersion or from the model record's
// (ErrProtocolMismatch), whose Model is not registered in the cluster
// (ErrModelMismatch, or ErrNoModel when the cluster has no model yet: a
// worker may retry until a coordinator registers one), and an ID whose key
// is still held by another lease (ErrWorkerExists: another process uses
// the ID, or a killed predecessor's lease has not expired yet; it will
// within its TTL).
func (r *Registry) Register(ctx context.Context, info cluster.WorkerInfo, ttl time.Duration) (*Registration, error) {
	if err := checkID("worker ID", string(info.ID)); err != nil {
		return nil, fmt.Errorf("registry: register: %w", err)
	}
	who := fmt.Sprintf("registry: worker %s refused by cluster %q", info.ID, r.cluster)
	if info.Protocol != cluster.ProtocolVersion {
		return nil, fmt.Errorf("%s: it speaks protocol %d, this cluster protocol %d: %w", who, info.Protocol, cluster.ProtocolVersion, ErrProtocolMismatch)
	}
	if info.Model == "" {
		return r.register(ctx, info, ttl, "", 0) // a jobs-only worker: no model record to match
	}
	rec, modelRev, err := r.Model(ctx, info.Model)
	if errors.Is(err, ErrNoModel) {
		models, _, lerr := r.Models(ctx)
		if lerr != nil {
			return nil, lerr
		}
		if len(models) == 0 {
			return nil, fmt.Errorf("%s: cluster serves no model yet (worker has %s): %w", who, info.Model, ErrNoModel)
		}
		fps := make([]string, len(models))
		for i, m := range models {
			if m.Fingerprint == info.Model {
				// Registered between the two reads: not a mismatch; retry.
				return nil, fmt.Errorf("%s: model %s was registered just now; retry: %w", who, info.Model, ErrNoModel)
			}
			fps[i] = fmt.Sprintf("%s (%s)", m.Fingerprint, m.Name)
		}
		return nil, fmt.Errorf("%s: it loaded model %s, the cluster serves %v: %w", who, info.Model, fps, ErrModelMismatch)
	}
	if err != nil {
		return nil, err
	}
	if rec.Quantize != info.Quantize {
		return nil, fmt.Errorf("%s: it holds the experts of model %s as %s, the cluster serves them as %s (the --quantize of the coordinator or serve that registered the model): start the worker with --quantize %s: %w",
			who, info.Model, quantName(info.Quantize), quantName(rec.Quantize), quantName(rec.Quantize), ErrModelMismatch)
	}
	if rec.Protocol != info.Protocol {
		return nil, fmt.Errorf("%s: it speaks protocol %d, the coordinator that registered model %s speaks %d: %w", who, info.Protocol, info.Model, rec.Protocol, ErrProtocolMismatch)
	}

	return r.register(ctx, info, ttl, r.ModelKey(info.Model), modelRev)
}

// register puts the worker's key under a new lease, if the key is free and
// (modelKey != "") the model record is still at modelRev.
func (r *Registry) register(ctx context.Context, info cluster.WorkerInfo, ttl time.Duration, modelKey string, modelRev int64) (*Registration, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	secs := int64(math.Ceil(ttl.Seconds()))
	grant, err := r.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("registry: worker %s: grant %ds lease: %w", info.ID, secs, err)
	}
	sess, err := concurrency.NewSession(r.cli, concurrency.WithLease(grant.ID), concurrency.WithTTL(int(secs)))
	if err != nil {
		r.cli.Revoke(context.WithoutCancel(ctx), grant.ID)
		return nil, fmt.Errorf("registry: worker %s: keep lease %x alive: %w", info.ID, int64(grant.ID), err)
	}
	key := r.WorkerKey(info.ID)
	val, _ := json.Marshal(info)
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
	if modelKey != "" {
		conds = append(conds, clientv3.Compare(clientv3.ModRevision(modelKey), "=", modelRev))
	} else {
		modelKey = key // (read back below in place of a model record)
	}
	resp, err := r.cli.Txn(ctx).If(conds...).Then(
		clientv3.OpPut(key, string(val), clientv3.WithLease(sess.Lease())),
	).Else(
		clientv3.OpGet(modelKey),
		clientv3.OpGet(key),
	).Commit()
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("registry: worker %s: put %s: %w", info.ID, key, err)
	}
	if !resp.Succeeded {
		sess.Close()
		if info.Model != "" && (len(resp.Responses[0].GetResponseRange().Kvs) == 0 || resp.Responses[0].GetResponseRange().Kvs[0].ModRevision != modelRev) {
			return nil, fmt.Errorf("registry: worker %s: model record %s changed while registering; retry", info.ID, modelKey)
		}
		held := resp.Responses[1].GetResponseRange().Kvs
		lease := int64(0)
		if len(held) > 0 {
			lease = held[0].Lease
		}
		left := ""
		if lease != 0 {
			if ttl, err := r.cli.TimeToLive(ctx, clientv3.LeaseID(lease)); err == nil && ttl.TTL > 0 {
				left = fmt.Sprintf(", %ds left", ttl.TTL)
			}
		}
		return nil, fmt.Errorf("registry: worker %s refused by cluster %q: %s is held by lease %x%s (another process uses this ID, or a killed one's lease has not expired yet): %w",
			info.ID, r.cluster, key, lease, left, ErrWorkerExists)
	}
	return &Registration{LeaseKeeper: KeepLease(r.cli, sess, time.Duration(grant.TTL)*time.Second), r: r, key: key, info: info}, nil
}

// Info is the registered worker info.
func (g *Registration) Info() cluster.WorkerInfo { return g.info }

// Update replaces the registered info (same ID), keeping the lease.
func (g *Registration) Update(ctx context.Context, info cluster.WorkerInfo) error {
	if info.ID != g.info.ID {
		return fmt.Errorf("registry: update worker %s: ID changed to %s", g.info.ID, info.ID)
	}
	val, _ := json.Marshal(info)
	if _, err := g.r.cli.Put(ctx, g.key, string(val), clientv3.WithLease(g.Lease())); err != nil {
		return fmt.Errorf("registry: update %s: %w", g.key, err)
	}
	g.info = info
	return nil
}

// Close leaves gracefully: it revokes the lease, which deletes the worker's
// keys at once.
func (g *Registration) Close() error {
	if err := g.LeaseKeeper.Close(); err != nil {
		return fmt.Errorf("registry: worker %s: %w", g.info.ID, err)
	}
	return nil
}

// TokenCount is the number of tokens routed to one expert copy.
type TokenCount struct {
	Layer  int    `json:"layer"`
	Expert int    `json:"expert"`
	Tokens uint64 `json:"tokens"`
}

// WorkerStats are a worker's per-expert token counters since it started.
type WorkerStats struct {
	Worker cluster.WorkerID `json:"worker"`
	Model  string           `json:"model"`
	Epoch  cluster.Epoch    `json:"epoch"` // placement epoch the worker serves
	Tokens []TokenCount     `json:"tokens"`
}

// PutStats writes the worker's counters at /<cluster>/stats/<id>, attached
// to its lease (they vanish with the worker).
func (g *Registration) PutStats(ctx context.Context, s WorkerStats) error {
	s.Worker = g.info.ID
	val, _ := json.Marshal(s)
	key := g.r.StatsKey(g.info.ID)
	if _, err := g.r.cli.Put(ctx, key, string(val), clientv3.WithLease(g.Lease())); err != nil {
		return fmt.Errorf("registry: put %s: %w", key, err)
	}
	return nil
}

// ReportStats calls snapshot every interval (0 means 2 s) and writes the
// result when it differs from the last one written, until ctx is done or
// the registration ends. Write errors are retried at the next tick. Run it
// in its own goroutine.
func (g *Registration) ReportStats(ctx context.Context, interval time.Duration, snapshot func() WorkerStats) {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var last *WorkerStats
	for {
		s := snapshot()
		s.Worker = g.info.ID
		if last == nil || !sameStats(*last, s) {
			if err := g.PutStats(ctx, s); err == nil {
				last = &s
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-g.Done():
			return
		case <-t.C:
		}
	}
}

func sameStats(a, b WorkerStats) bool {
	return a.Model == b.Model && a.Epoch == b.Epoch && slices.Equal(a.Tokens, b.Tokens)
}

// Stats reads every worker's counters, sorted by worker.
func (r *Registry) Stats(ctx context.Context) ([]WorkerStats, error) {
	resp, err := r.cli.Get(ctx, r.StatsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("registry: list %s: %w", r.StatsPrefix(), err)
	}
	var out []WorkerStats
	for _, kv := range resp.Kvs {
		var s WorkerStats
		if err := json.Unmarshal(kv.Value, &s); err != nil {
			return nil, fmt.Errorf("registry: decode %s: %w", kv.Key, err)
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b WorkerStats) int {
		switch {
		case a.Worker < b.Worker:
			return -1
		case a.Worker > b.Worker:
			return 1
		}
		return 0
	})
	return out, nil
}

// quantName is a --quantize value as the flag spells it.
func quantName(q string) string {
	if q == "" {
		return "none"
	}
	return q
}
