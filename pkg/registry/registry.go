// Package registry keeps a Switchyard cluster's control state in etcd:
// which workers are alive (keys under their leases), which models the
// cluster serves, where each model's experts are placed, and per-expert
// token counters. It is the only package that knows the key space:
//
//	/<cluster>/workers/<worker id>      WorkerInfo JSON, attached to the worker's lease
//	/<cluster>/stats/<worker id>        WorkerStats JSON, attached to the same lease
//	/<cluster>/models/<fingerprint>     ModelRecord JSON, written by a coordinator
//	/<cluster>/placement/<fingerprint>  cluster.Placement JSON, written by the leader only
//	/<cluster>/leader/<lease>           concurrency.Election keys of the coordinators (value: name)
//
// Authority: a worker is alive exactly as long as its key exists, that is
// while its lease is kept alive (TTL a few seconds, renewed by the etcd
// client every TTL/3). Gossip (pkg/membership) only gives earlier hints.
//
// Compatibility: Register refuses a worker whose protocol version differs
// from this binary's or the model record's, or whose model fingerprint is
// not served by the cluster. The data plane checks the same two values again
// when peers connect (a worker may be reached by a peer built from another
// binary), so a mismatched process can neither join the control state nor
// exchange tensors.
//
// Every blocking call takes a context; errors are wrapped with the cluster,
// key or worker they concern. A Registry is safe for concurrent use.
package registry

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard/switchyard/internal/backoff"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
)

// DefaultCluster is the key prefix used when none is configured.
const DefaultCluster = "switchyard"

// Registry reads and writes one cluster's keys through an etcd client it
// does not own (closing the client is the caller's job).
type Registry struct {
	cli     *clientv3.Client
	cluster string
}

// New returns a registry for cluster ("" means DefaultCluster) on cli. The
// cluster name must not contain '/'.
func New(cli *clientv3.Client, clusterName string) (*Registry, error) {
	if clusterName == "" {
		clusterName = DefaultCluster
	}
	if strings.Contains(clusterName, "/") || strings.TrimSpace(clusterName) != clusterName {
		return nil, fmt.Errorf("registry: cluster name %q must not contain '/' or surrounding spaces", clusterName)
	}
	return &Registry{cli: cli, cluster: clusterName}, nil
}

// Dial connects to etcd at endpoints in plaintext (DialTLS with nil
// credentials).
func Dial(ctx context.Context, endpoints []string) (*clientv3.Client, error) {
	return DialTLS(ctx, endpoints, nil)
}

// KeepAliveTime and KeepAliveTimeout are the etcd clients' gRPC keepalive:
// a connection silent for KeepAliveTime is pinged, and closed when the
// ping is not answered within KeepAliveTimeout. An external etcd should
// allow pings that often (--grpc-keepalive-min-time 500ms; the embedded
// one does, and deploy/k8s/etcd.yaml); its default minimum, 5 s,
// tolerates them only while the server sends data in between (lease
// renewals, watch events), as it does for a worker.
const (
	KeepAliveTime    = time.Second
	KeepAliveTimeout = time.Second
)

// DialTLS connects to etcd at endpoints with a silent client logger and
// checks that the cluster answers within ctx. With creds, every endpoint
// must be https:// and the client presents creds' certificate (etcd's
// --client-cert-auth) and verifies etcd's against the CA, host name
// included; plaintext endpoints are refused. Without creds, https://
// endpoints are refused (say --tls-cert, --tls-key and --tls-ca). The
// caller closes the client.
func DialTLS(ctx context.Context, endpoints []string, creds *auth.Credentials) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("registry: dial etcd: no endpoints")
	}
	for _, e := range endpoints {
		secure := strings.HasPrefix(e, "https://") || strings.HasPrefix(e, "unixs://")
		switch {
		case creds != nil && !secure:
			return nil, fmt.Errorf("registry: dial etcd: %q is plaintext and TLS is configured (use https://)", e)
		case creds == nil && secure:
			return nil, fmt.Errorf("registry: dial etcd: %q needs TLS: give --tls-cert, --tls-key and --tls-ca", e)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		TLS:         creds.EtcdClientConfig(),
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		// Keepalive probes let a client notice a dead or cut-off member
		// instead of waiting on a half-open connection, and move to
		// another: within KeepAliveTime + KeepAliveTimeout (2 s), less
		// than a coordinator's session TTL (3 s) and a worker's lease
		// TTL (DefaultTTL, 10 s), which its lease
		// renewals would otherwise miss (found by scripts/chaos.sh: a
		// worker connected to a member whose link went down lost its
		// lease).
		DialKeepAliveTime:    KeepAliveTime,
		DialKeepAliveTimeout: KeepAliveTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("registry: dial etcd %v: %w", endpoints, err)
	}
	// Any answer proves etcd is reachable and accepted us; with its
	// role-based access on (EnableRBAC), reading "/" is refused to
	// everyone but root, and that refusal is such an answer.
	if _, err := cli.Get(ctx, "/", clientv3.WithCountOnly(), clientv3.WithLimit(1)); err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		cli.Close()
		return nil, fmt.Errorf("registry: dial etcd %v: %w", endpoints, err)
	}
	return cli, nil
}

// Client is the etcd client the registry uses.
func (r *Registry) Client() *clientv3.Client { return r.cli }

// Cluster is the cluster name (the first key segment).
func (r *Registry) Cluster() string { return r.cluster }

func (r *Registry) key(parts ...string) string {
	return "/" + path.Join(append([]string{r.cluster}, parts...)...)
}

// WorkersPrefix is "/<cluster>/workers/".
func (r *Registry) WorkersPrefix() string { return r.key("workers") + "/" }

// WorkerKey is "/<cluster>/workers/<id>".
func (r *Registry) WorkerKey(id cluster.WorkerID) string { return r.WorkersPrefix() + string(id) }

// StatsPrefix is "/<cluster>/stats/".
func (r *Registry) StatsPrefix() string { return r.key("stats") + "/" }

// StatsKey is "/<cluster>/stats/<id>".
func (r *Registry) StatsKey(id cluster.WorkerID) string { return r.StatsPrefix() + string(id) }

// ModelsPrefix is "/<cluster>/models/".
func (r *Registry) ModelsPrefix() string { return r.key("models") + "/" }

// ModelKey is "/<cluster>/models/<fingerprint>".
func (r *Registry) ModelKey(fp string) string { return r.ModelsPrefix() + fp }

// PlacementKey is "/<cluster>/placement/<fingerprint>".
func (r *Registry) PlacementKey(fp string) string { return r.key("placement") + "/" + fp }

// LeaderPrefix is the election prefix of the coordinators,
// "/<cluster>/leader" (concurrency.Election adds "/<lease>" per candidate).
func (r *Registry) LeaderPrefix() string { return r.key("leader") }

// checkID rejects IDs that would break the key space.
func checkID(kind, id string) error {
	if id == "" || strings.ContainsAny(id, "/ \t\n") {
		return fmt.Errorf("%s %q: must be non-empty without '/' or spaces", kind, id)
	}
	return nil
}

// WorkerSet is the set of registered workers at an etcd revision.
type WorkerSet struct {
	Rev     int64                // etcd revision the set was read at
	Workers []cluster.WorkerInfo // sorted by ID
	Leases  []clientv3.LeaseID   // Leases[i] holds Workers[i]'s key
	Bad     []string             // keys whose value did not decode (skipped)
}

// IDs lists the worker IDs in order.
func (s WorkerSet) IDs() []cluster.WorkerID {
	ids := make([]cluster.WorkerID, len(s.Workers))
	for i, w := range s.Workers {
		ids[i] = w.ID
	}
	return ids
}

// GossipAddrs lists the workers' gossip addresses (those set), except
// the worker named self: the peers a new member joins.
func (s WorkerSet) GossipAddrs(self cluster.WorkerID) []string {
	var out []string
	for _, w := range s.Workers {
		if w.ID != self && w.GossipAddr != "" {
			out = append(out, w.GossipAddr)
		}
	}
	return out
}

// Workers reads the registered workers.
func (r *Registry) Workers(ctx context.Context) (WorkerSet, error) {
	resp, err := r.cli.Get(ctx, r.WorkersPrefix(), clientv3.WithPrefix())
	if err != nil {
		return WorkerSet{}, fmt.Errorf("registry: list %s: %w", r.WorkersPrefix(), err)
	}
	m := map[string]entry{}
	var bad []string
	for _, kv := range resp.Kvs {
		if e, ok := decodeWorker(kv.Key, kv.Value, kv.Lease); ok {
			m[string(kv.Key)] = e
		} else {
			bad = append(bad, string(kv.Key))
		}
	}
	return makeSet(resp.Header.Revision, m, bad), nil
}

type entry struct {
	info  cluster.WorkerInfo
	lease clientv3.LeaseID
}

// decodeWorker decodes a worker key's value; the ID inside must match the
// key's last segment.
func decodeWorker(key, v []byte, lease int64) (entry, bool) {
	var w cluster.WorkerInfo
	if err := json.Unmarshal(v, &w); err != nil || w.ID == "" || path.Base(string(key)) != string(w.ID) {
		return entry{}, false
	}
	return entry{w, clientv3.LeaseID(lease)}, true
}

func makeSet(rev int64, m map[string]entry, bad []string) WorkerSet {
	es := make([]entry, 0, len(m))
	for _, e := range m {
		es = append(es, e)
	}
	sort.Slice(es, func(i, j int) bool { return es[i].info.ID < es[j].info.ID })
	s := WorkerSet{Rev: rev, Bad: append([]string(nil), bad...)}
	for _, e := range es {
		s.Workers = append(s.Workers, e.info)
		s.Leases = append(s.Leases, e.lease)
	}
	sort.Strings(s.Bad)
	return s
}

// WatchWorkers sends the full worker set now and after every change, in
// revision order, until ctx is done or the client closes; then it closes
// the channel. A set is sent per etcd watch response (one transaction's
// changes together). If the watch breaks (compaction, lost leader) it
// re-lists, so no change is missed, though an intermediate set may be.
// The receiver must keep reading or cancel ctx.
func (r *Registry) WatchWorkers(ctx context.Context) <-chan WorkerSet {
	out := make(chan WorkerSet)
	go func() {
		defer close(out)
		send := func(s WorkerSet) bool {
			select {
			case out <- s:
				return true
			case <-ctx.Done():
				return false
			}
		}
		retry := backoff.New(50*time.Millisecond, 2*time.Second)
		for r.alive(ctx) {
			resp, err := r.cli.Get(ctx, r.WorkersPrefix(), clientv3.WithPrefix())
			if err != nil {
				retry.Wait(ctx)
				continue
			}
			retry.Reset()
			m := map[string]entry{}
			bad := map[string]bool{}
			for _, kv := range resp.Kvs {
				if e, ok := decodeWorker(kv.Key, kv.Value, kv.Lease); ok {
					m[string(kv.Key)] = e
				} else {
					bad[string(kv.Key)] = true
				}
			}
			rev := resp.Header.Revision
			if !send(makeSet(rev, m, keys(bad))) {
				return
			}
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range r.cli.Watch(wctx, r.WorkersPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
				if wr.Err() != nil {
					break
				}
				for _, ev := range wr.Events {
					k := string(ev.Kv.Key)
					delete(m, k)
					delete(bad, k)
					if ev.Type == clientv3.EventTypePut {
						if e, ok := decodeWorker(ev.Kv.Key, ev.Kv.Value, ev.Kv.Lease); ok {
							m[k] = e
						} else {
							bad[k] = true
						}
					}
				}
				if len(wr.Events) > 0 && !send(makeSet(wr.Header.Revision, m, keys(bad))) {
					cancel()
					return
				}
			}
			cancel()
			retry.Wait(ctx) // the watch broke: re-list shortly, never spin
		}
	}()
	return out
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// alive reports whether a watch loop should go on.
func (r *Registry) alive(ctx context.Context) bool {
	return ctx.Err() == nil && r.cli.Ctx().Err() == nil
}

// WaitWorkers watches the worker set until cond accepts it and returns
// that set; it fails when ctx ends first, naming the last set seen. E.g.
// wait for a SIGKILLed worker to leave:
//
//	reg.WaitWorkers(ctx, func(s WorkerSet) bool { return !slices.Contains(s.IDs(), "w1") })
func (r *Registry) WaitWorkers(ctx context.Context, cond func(WorkerSet) bool) (WorkerSet, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var last []cluster.WorkerID
	for s := range r.WatchWorkers(wctx) {
		if cond(s) {
			return s, nil
		}
		last = s.IDs()
	}
	cause := context.Cause(ctx)
	if cause == nil {
		cause = errors.New("etcd client closed")
	}
	return WorkerSet{}, fmt.Errorf("registry: wait for workers of cluster %q (last seen %v): %w", r.cluster, last, cause)
}

// WorkerLease is a registered worker with the state of its lease.
type WorkerLease struct {
	Info       cluster.WorkerInfo `json:"info"`
	Lease      int64              `json:"lease"`       // etcd lease ID
	TTL        time.Duration      `json:"ttl"`         // remaining; <= 0 if expired meanwhile
	GrantedTTL time.Duration      `json:"granted_ttl"` // the TTL the lease was granted with
}

// WorkerLeases reads the workers and each one's remaining lease TTL (one
// TimeToLive call per worker; for status, not for hot paths).
func (r *Registry) WorkerLeases(ctx context.Context) ([]WorkerLease, error) {
	set, err := r.Workers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]WorkerLease, len(set.Workers))
	for i, w := range set.Workers {
		out[i] = WorkerLease{Info: w, Lease: int64(set.Leases[i])}
		if set.Leases[i] == clientv3.NoLease {
			continue
		}
		ttl, err := r.cli.TimeToLive(ctx, set.Leases[i])
		if err != nil {
			return nil, fmt.Errorf("registry: lease %x of worker %s: %w", int64(set.Leases[i]), w.ID, err)
		}
		out[i].TTL = time.Duration(ttl.TTL) * time.Second
		out[i].GrantedTTL = time.Duration(ttl.GrantedTTL) * time.Second
	}
	return out, nil
}

// Leader returns the name (election value) of the current coordinator
// leader and its election key, or empty strings when none leads.
func (r *Registry) Leader(ctx context.Context) (name, key string, err error) {
	resp, err := r.cli.Get(ctx, r.LeaderPrefix()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", "", fmt.Errorf("registry: read leader %s: %w", r.LeaderPrefix(), err)
	}
	if len(resp.Kvs) == 0 {
		return "", "", nil
	}
	return string(resp.Kvs[0].Value), string(resp.Kvs[0].Key), nil
}

// SplitEndpoints parses a comma-separated list of etcd endpoints (as the
// --etcd flags take it), dropping blanks; "" gives none.
func SplitEndpoints(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// GossipKeyBytes is the length of the gossip key (AES-256).
const GossipKeyBytes = 32

// GossipKey returns the cluster's gossip encryption key, stored at
// /<cluster>/gossip-key; the first caller allowed to write it creates it
// (32 random bytes, put only if absent, so every process gets the same
// key). Only clients etcd admits can read it: on a cluster with TLS, the
// holders of the CA's certificates. A caller whose role may not write it
// (a worker under EnableRBAC) waits until a coordinator has, or ctx ends.
func (r *Registry) GossipKey(ctx context.Context) ([]byte, error) {
	for {
		key, err := r.gossipKey(ctx)
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			return key, err
		}
		resp, gerr := r.cli.Get(ctx, r.key("gossip-key"))
		if gerr == nil && len(resp.Kvs) == 1 && len(resp.Kvs[0].Value) == GossipKeyBytes {
			return resp.Kvs[0].Value, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("registry: gossip key: waiting for a coordinator to create it: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *Registry) gossipKey(ctx context.Context) ([]byte, error) {
	k := r.key("gossip-key")
	key := make([]byte, GossipKeyBytes)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(key))).
		Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return nil, fmt.Errorf("registry: gossip key %s: %w", k, err)
	}
	if resp.Succeeded {
		return key, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 || len(kvs[0].Value) != GossipKeyBytes {
		return nil, fmt.Errorf("registry: gossip key %s is not %d bytes", k, GossipKeyBytes)
	}
	return kvs[0].Value, nil
}
