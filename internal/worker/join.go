package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
)

// Bounds on joining the cluster (see Config.ConnectTimeout,
// Config.RegisterTimeout, Config.Wait).
const (
	// DefaultConnectTimeout is how long a worker tries to reach etcd at
	// start before it gives up (Config.ConnectTimeout's default).
	DefaultConnectTimeout = 30 * time.Second
	// DefaultRegisterTimeout is how long a worker that reaches etcd waits
	// for its cluster to serve a model (or for any other transient
	// registration failure to clear) before it gives up
	// (Config.RegisterTimeout's default).
	DefaultRegisterTimeout = 60 * time.Second
	// DuplicateIDMargin is added to the TTL of the lease that holds the
	// worker's ID: a killed predecessor's key expires within its TTL, so a
	// worker restarted under the same ID waits that long plus this margin
	// before it concludes that another live worker uses the ID.
	DuplicateIDMargin = 2 * time.Second
	// RetryLogInterval is how often a worker that keeps failing the same
	// way repeats its warning (with the time elapsed); a new kind of
	// failure is logged at once.
	RetryLogInterval = 10 * time.Second
)

// ErrGaveUp is wrapped by Run's error when the worker stopped trying to
// join the cluster after its bound (Config.ConnectTimeout or
// Config.RegisterTimeout, or the lease TTL plus DuplicateIDMargin for an
// ID held by another live worker). The cause is wrapped too:
// ErrEtcdUnreachable, registry.ErrNoModel, registry.ErrWorkerExists, or the
// last registration error.
var ErrGaveUp = errors.New("worker gave up joining the cluster")

// ErrEtcdUnreachable is wrapped (with ErrGaveUp) when no etcd endpoint
// answered within Config.ConnectTimeout.
var ErrEtcdUnreachable = errors.New("etcd unreachable")

// retryLog rate-limits the warnings of a retry loop: the first occurrence
// of each kind of failure at once, then at most one line every
// RetryLogInterval, with the time elapsed since the loop began.
type retryLog struct {
	lg    *slog.Logger
	start time.Time
	every time.Duration
	seen  map[string]bool
	last  time.Time
}

func newRetryLog(lg *slog.Logger) *retryLog {
	return &retryLog{lg: lg, start: time.Now(), every: RetryLogInterval, seen: map[string]bool{}}
}

// note logs msg for a failure of kind unless one was logged less than
// every ago and this kind was seen before.
func (r *retryLog) note(kind, msg string, args ...any) {
	now := time.Now()
	if r.seen[kind] && now.Sub(r.last) < r.every {
		return
	}
	first := !r.seen[kind]
	r.seen[kind], r.last = true, now
	args = append(args, "elapsed", now.Sub(r.start).Round(100*time.Millisecond))
	if !first {
		msg = "still " + msg
	}
	r.lg.Warn(msg, args...)
}

// reset forgets what was logged and restarts the clock (after the worker
// joined, for the next time it has to register again).
func (r *retryLog) reset() {
	r.start, r.last = time.Now(), time.Time{}
	clear(r.seen)
}

// dialEtcd connects to etcd, retrying with backoff (a worker may start
// before its coordinator's embedded etcd) until it answers, ctx ends
// (nil client, ctx's error) or, unless cfg.Wait, cfg.ConnectTimeout
// passes: then an error wrapping ErrGaveUp and ErrEtcdUnreachable names
// the endpoints and the last dial error.
func (w *Worker) dialEtcd(ctx context.Context) (*clientv3.Client, error) {
	cfg := w.cfg
	rl := newRetryLog(w.log)
	var deadline time.Time
	if !cfg.Wait {
		deadline = rl.start.Add(cfg.ConnectTimeout)
	}
	delay := 100 * time.Millisecond
	for {
		attempt := 5 * time.Second
		if !deadline.IsZero() {
			attempt = min(attempt, max(time.Until(deadline), 100*time.Millisecond))
		}
		dctx, cancel := context.WithTimeout(ctx, attempt)
		cli, err := registry.DialTLS(dctx, cfg.Etcd, cfg.TLS)
		cancel()
		if err == nil {
			if len(rl.seen) > 0 {
				w.log.Info("etcd reachable", "endpoints", cfg.Etcd, "after", time.Since(rl.start).Round(100*time.Millisecond))
			}
			return cli, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			// etcd's client only says "context deadline exceeded": say why
			// the endpoints do not answer.
			err = fmt.Errorf("%w (%s)", err, probeEndpoints(cfg.Etcd))
		}
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return nil, fmt.Errorf("worker %s: etcd %s not reachable within %v (--connect-timeout; --wait keeps trying): last dial error: %w: %w: %w",
				cfg.ID, strings.Join(cfg.Etcd, ","), cfg.ConnectTimeout, err, ErrEtcdUnreachable, ErrGaveUp)
		}
		rl.note("etcd", "etcd not reachable yet; retrying", "endpoints", cfg.Etcd, "err", err)
		d := delay
		if delay = min(2*delay, 2*time.Second); !deadline.IsZero() {
			d = min(d, max(time.Until(deadline), 0))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(d):
		}
	}
}

// probeEndpoints opens a TCP connection to each endpoint and says what
// happened: the cause etcd's client does not report (connection refused,
// no such host), or that TCP connects (then etcd itself did not answer:
// not etcd, TLS trouble, no quorum).
func probeEndpoints(endpoints []string) string {
	var out []string
	for _, e := range endpoints {
		host := e
		if u, err := url.Parse(e); err == nil && u.Host != "" {
			host = u.Host
		}
		c, err := net.DialTimeout("tcp", host, 2*time.Second)
		if err != nil {
			out = append(out, err.Error())
			continue
		}
		c.Close()
		out = append(out, fmt.Sprintf("%s: TCP connects, etcd does not answer", host))
	}
	return strings.Join(out, "; ")
}

// joinState tracks the failures of registration attempts until the
// worker first registers (or registers again after losing its lease:
// rejoin), and decides when to give up.
type joinState struct {
	w        *Worker
	reg      *registry.Registry
	start    time.Time
	rejoin   bool          // the worker was registered and lost its lease at start
	dupSince time.Time     // start of the current run of ErrWorkerExists, zero if none
	dupLimit time.Duration // how long that run may last: the holder's TTL + margin
	dupInfo  string        // what the key's holder is (address, lease)
}

// failed is called with each failed registration attempt before the
// worker first registered; it returns the error to give up with, or nil
// to retry.
func (j *joinState) failed(ctx context.Context, err error) error {
	cfg := j.w.cfg
	if !errors.Is(err, registry.ErrWorkerExists) {
		j.dupSince = time.Time{}
	}
	if errors.Is(err, registry.ErrWorkerExists) && j.takeOver(ctx) {
		return nil // retry at once: the predecessor's key is gone
	}
	if cfg.Wait {
		return nil
	}
	now := time.Now()
	switch {
	case errors.Is(err, registry.ErrWorkerExists):
		if j.dupSince.IsZero() || j.dupInfo == "" {
			ttl, info := j.holder(ctx)
			if ttl <= 0 {
				ttl = cfg.LeaseTTL
			}
			if j.dupSince.IsZero() {
				j.dupSince, j.dupLimit = now, ttl+DuplicateIDMargin
			}
			j.dupInfo = info
		}
		if now.Sub(j.dupSince) < j.dupLimit {
			return nil
		}
		_, info := j.holder(ctx)
		if info == "" {
			info = j.dupInfo
		}
		return fmt.Errorf("worker %s: another live worker uses ID %q in cluster %q%s: its key %s stayed held for %v, longer than its lease TTL plus %v (a killed worker's would have expired): stop it or choose another --id (--wait keeps waiting): %w: %w",
			cfg.ID, cfg.ID, cfg.Cluster, info, j.reg.WorkerKey(cfg.ID), now.Sub(j.dupSince).Round(100*time.Millisecond), DuplicateIDMargin, registry.ErrWorkerExists, ErrGaveUp)
	case now.Sub(j.start) < cfg.RegisterTimeout:
		return nil
	case errors.Is(err, registry.ErrNoModel):
		return fmt.Errorf("worker %s: cluster %q serves no model: %s (gave up after %v, --register-timeout; --wait keeps waiting): %w: %w",
			cfg.ID, cfg.Cluster, j.noModelWhy(ctx), cfg.RegisterTimeout, registry.ErrNoModel, ErrGaveUp)
	case j.rejoin:
		return fmt.Errorf("worker %s: lost its lease in cluster %q and could not register again within %v (--register-timeout; --wait keeps trying): last error: %w: %w",
			cfg.ID, cfg.Cluster, cfg.RegisterTimeout, err, ErrGaveUp)
	default:
		return fmt.Errorf("worker %s: not registered in cluster %q within %v (--register-timeout; --wait keeps trying): last error: %w: %w",
			cfg.ID, cfg.Cluster, cfg.RegisterTimeout, err, ErrGaveUp)
	}
}

// takeOver revokes the lease that holds the worker's ID when its holder
// registered this worker's own address and this process listens on that
// concrete IP:port now (Worker.ownsAddr): no other live process can, so
// the holder is this worker's dead predecessor (killed and restarted on
// the same address, as a supervisor or a StatefulSet does), whose lease
// would otherwise hold the ID until its TTL ran out. It reports whether it
// revoked one.
func (j *joinState) takeOver(ctx context.Context) bool {
	if !j.w.ownsAddr {
		return false
	}
	cli := j.reg.Client()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := cli.Get(rctx, j.reg.WorkerKey(j.w.cfg.ID))
	if err != nil || len(resp.Kvs) == 0 || resp.Kvs[0].Lease == 0 {
		return false
	}
	var info cluster.WorkerInfo
	if json.Unmarshal(resp.Kvs[0].Value, &info) != nil || info.Addr != j.w.info.Addr {
		return false
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	if _, err := cli.Revoke(rctx, lease); err != nil {
		j.w.log.Warn("revoke the lease of this worker's predecessor", "lease", fmt.Sprintf("%x", int64(lease)), "err", err)
		return false
	}
	j.w.log.Info("took over the ID from this worker's predecessor at the same address (it is gone: this process listens there)",
		"addr", info.Addr, "lease", fmt.Sprintf("%x", int64(lease)))
	return true
}

// holder reads the worker key's current holder: its lease's granted TTL
// (0 if unknown) and a description (", held by the worker at ADDR (lease
// L)"), "" if unreadable.
func (j *joinState) holder(ctx context.Context) (time.Duration, string) {
	cli := j.reg.Client()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := cli.Get(rctx, j.reg.WorkerKey(j.w.cfg.ID))
	if err != nil || len(resp.Kvs) == 0 {
		return 0, ""
	}
	kv := resp.Kvs[0]
	var info cluster.WorkerInfo
	desc := ""
	if json.Unmarshal(kv.Value, &info) == nil && info.Addr != "" {
		desc = fmt.Sprintf(", held by the worker at %s", info.Addr)
	} else {
		desc = ", held by a worker whose address is unreadable"
	}
	desc += fmt.Sprintf(" under lease %x", kv.Lease)
	var ttl time.Duration
	if kv.Lease != 0 {
		if l, err := cli.TimeToLive(rctx, clientv3.LeaseID(kv.Lease)); err == nil && l.GrantedTTL > 0 {
			ttl = time.Duration(l.GrantedTTL) * time.Second
			desc += fmt.Sprintf(" (TTL %v)", ttl)
		}
	}
	return ttl, desc
}

// maxClusters bounds the clusters noModelWhy lists.
const maxClusters = 20

// noModelWhy says what etcd holds about the worker's cluster, which has no
// model: whether coordinators or workers use it (then it exists and waits
// for a model), else that it is unused, with the clusters that do exist.
func (j *joinState) noModelWhy(ctx context.Context) string {
	cli, cfg := j.reg.Client(), j.w.cfg
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	count := func(prefix string) (int64, error) {
		resp, err := cli.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		return resp.Count, nil
	}
	workers, werr := count(j.reg.WorkersPrefix())
	leaders, lerr := count(j.reg.LeaderPrefix() + "/")
	if werr == nil && lerr == nil && (workers > 0 || leaders > 0) {
		return fmt.Sprintf("it has %d coordinator(s) campaigning and %d other worker(s), but no model was registered (start the coordinator with --model, or a front end with serve --etcd)", leaders, workers)
	}
	why := fmt.Sprintf("no model, coordinator or worker is registered under /%s/ in this etcd (wrong --cluster?)", cfg.Cluster)
	if werr != nil || lerr != nil {
		why = fmt.Sprintf("no model is registered under /%s/ (whether a coordinator or worker uses it is unknown: %v)", cfg.Cluster, errors.Join(werr, lerr))
	}
	names, more, err := listClusters(rctx, cli)
	switch {
	case err != nil:
		why += fmt.Sprintf("; cannot list the clusters in this etcd: %v", err)
	case len(names) == 0:
		why += "; this etcd holds no cluster at all"
	default:
		q := make([]string, len(names))
		for i, n := range names {
			q[i] = fmt.Sprintf("%q", n)
		}
		list := strings.Join(q, ", ")
		if more {
			list += ", ..."
		}
		why += "; clusters in this etcd: " + list
	}
	return why
}

// listClusters lists the first key segments (cluster names) in etcd, at
// most maxClusters (more reports whether there are others), reading one
// key name per cluster: a skip scan over "/<name>/..." ranges.
func listClusters(ctx context.Context, cli *clientv3.Client) (names []string, more bool, err error) {
	from := "/"
	for {
		resp, err := cli.Get(ctx, from, clientv3.WithRange("0"), clientv3.WithKeysOnly(), clientv3.WithLimit(1))
		if err != nil {
			return names, false, err
		}
		if len(resp.Kvs) == 0 || len(names) == maxClusters {
			slices.Sort(names)
			return names, len(resp.Kvs) > 0, nil
		}
		k := strings.TrimPrefix(string(resp.Kvs[0].Key), "/")
		name, _, _ := strings.Cut(k, "/")
		if name != "" {
			names = append(names, name)
		}
		// "/<name>0" is the first key after every "/<name>/...".
		from = "/" + name + "0"
		if name == "" {
			from = "/0" // keys "//...": unusual; stop there
		}
	}
}
