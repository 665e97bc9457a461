// Package frontend is a serving front end's view of a running cluster: it
// finds the model's expert placement in etcd, follows it (and the worker
// set, and the leader's placement verdict), and gives the model an
// expert.Executor that sends each MoE layer's rows to the experts' owners
// on any host. It is what `switchyard serve --etcd URLS --cluster NAME`
// runs, and what the embedded default (`serve --workers N`) runs over the
// cluster it starts. Any number of front ends may join one cluster: each
// has its own scheduler and KV cache (data-parallel attention); the
// experts are shared. See docs/ARCHITECTURE.md, section 4 (the data path of a decode token).
//
// A front end holds the dense weights (the caller loads them) and no
// routed experts. It never writes to etcd except to register the model
// record when the cluster does not know the model yet.
package frontend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Options configures Join.
type Options struct {
	// Endpoints are etcd's client URLs (required).
	Endpoints []string
	// Cluster is the etcd key prefix (default registry.DefaultCluster).
	Cluster string
	// Model describes the model the caller loaded (its fingerprint must
	// match the workers'). If the cluster has no record of it yet, Join
	// registers this one.
	Model registry.ModelRecord
	// Name identifies this front end in expert requests and logs (default
	// "frontend-<host>-<pid>").
	Name string
	// Client configures the expert connections; Model, Worker and TLS are
	// filled in.
	Client transport.ClientConfig
	// TLS, when set, makes the etcd client (https:// endpoints) and every
	// expert connection mutual TLS with these credentials, which must be a
	// front end's (frontend/<name>; the name becomes Name). Nil:
	// plaintext.
	TLS *auth.Credentials
	// Logger receives what the front end sees happen: workers leaving and
	// joining, placement epochs, the leader's verdicts (nil: discarded).
	Logger *slog.Logger
}

// Frontend is a joined front end. Close it when done.
type Frontend struct {
	opts     Options
	log      *slog.Logger
	cli      *clientv3.Client
	Registry *registry.Registry
	Model    registry.ModelRecord
	Pool     *transport.Pool
	// Placement follows the model's placement in etcd.
	Placement *worker.EtcdPlacement
	// Executor computes routed experts on their owners; give it to the
	// model (model.Model.Experts).
	Executor *transport.RemoteExecutor

	met    *metrics
	live   atomic.Pointer[map[cluster.WorkerID]bool] // registered workers
	status atomic.Pointer[registry.PlacementStatus]  // the leader's verdict (nil: none)

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Join connects to etcd, registers the model if the cluster lacks it, and
// starts following the model's placement, the worker set and the leader's
// placement verdict. It does not wait for a placement (see WaitServing).
func Join(ctx context.Context, o Options) (_ *Frontend, err error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("frontend: no etcd endpoints")
	}
	if o.Cluster == "" {
		o.Cluster = registry.DefaultCluster
	}
	if o.Model.Fingerprint == "" {
		return nil, errors.New("frontend: no model")
	}
	if o.TLS != nil {
		if o.TLS.Self.Role != auth.RoleFrontend {
			return nil, fmt.Errorf("frontend: the TLS certificate is for %s; a front end needs a frontend/<name> certificate", o.TLS.Self)
		}
		o.Name = o.TLS.Self.Name
	}
	if o.Name == "" {
		host, _ := os.Hostname()
		o.Name = fmt.Sprintf("frontend-%s-%d", host, os.Getpid())
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cli, err := registry.DialTLS(dctx, o.Endpoints, o.TLS)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("frontend: etcd %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	f := &Frontend{opts: o, log: lg, cli: cli}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if f.Registry, err = registry.New(cli, o.Cluster); err != nil {
		return nil, err
	}
	rec, _, err := f.Registry.Model(ctx, o.Model.Fingerprint)
	switch {
	case errors.Is(err, registry.ErrNoModel):
		if err = f.Registry.PutModel(ctx, o.Model); err != nil {
			return nil, fmt.Errorf("frontend: register model %s in cluster %q: %w", o.Model.Fingerprint, o.Cluster, err)
		}
		lg.Info("model registered (the cluster did not know it)", "model", o.Model.Fingerprint)
		rec = o.Model
	case err != nil:
		return nil, fmt.Errorf("frontend: read model %s in cluster %q: %w", o.Model.Fingerprint, o.Cluster, err)
	case o.Model.Quantize != "" && rec.Quantize != o.Model.Quantize:
		// The workers quantize at load as the record says; a front end
		// cannot change that, only notice it asked for something else.
		return nil, fmt.Errorf("frontend: --quantize %s, but cluster %q serves model %s with routed experts as %s (set by the coordinator's --quantize): %w",
			o.Model.Quantize, o.Cluster, o.Model.Fingerprint, orNone(rec.Quantize), registry.ErrModelMismatch)
	}
	f.Model = rec
	cc := o.Client
	cc.Model, cc.Worker, cc.TLS = rec.Fingerprint, cluster.WorkerID(o.Name), o.TLS
	if f.Pool, err = transport.NewPool(cc); err != nil {
		return nil, err
	}
	f.Placement = worker.NewEtcdPlacement(f.Registry, rec.Fingerprint, 0)
	f.Executor = transport.NewRemoteExecutor(f.Placement, f.Pool)
	f.met = newMetrics(f)
	f.Executor.SetObserver(f.met.observer())

	// The first worker set before the executor trusts membership at all.
	set, err := f.Registry.Workers(ctx)
	if err != nil {
		return nil, fmt.Errorf("frontend: list workers: %w", err)
	}
	f.setLive(set)
	f.Executor.SetLive(f.IsLive)

	wctx, stop := context.WithCancel(context.Background())
	f.cancel = stop
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		f.followWorkers(wctx)
	}()
	go func() {
		defer f.wg.Done()
		f.followStatus(wctx)
	}()
	return f, nil
}

// Close stops following etcd and closes every connection.
func (f *Frontend) Close() {
	if f.cancel != nil {
		f.cancel()
		f.wg.Wait()
	}
	if f.Placement != nil {
		f.Placement.Close()
	}
	if f.Pool != nil {
		f.Pool.Close()
	}
	if f.cli != nil {
		f.cli.Close()
	}
}

// Collectors are the front end's Prometheus metrics (see metrics.go), for
// the API's /metrics.
func (f *Frontend) Collectors() []prometheus.Collector { return f.met.collectors() }

// Name is the front end's name in expert requests, logs and its
// statistics record (Options.Name).
func (f *Frontend) Name() string { return f.opts.Name }

// IsLive reports whether worker w is registered (holds its etcd lease).
func (f *Frontend) IsLive(w cluster.WorkerID) bool {
	m := f.live.Load()
	return m != nil && (*m)[w]
}

func (f *Frontend) setLive(set registry.WorkerSet) {
	m := make(map[cluster.WorkerID]bool, len(set.Workers))
	for _, w := range set.Workers {
		if w.Model == f.Model.Fingerprint {
			m[w.ID] = true
		}
	}
	f.live.Store(&m)
}

// followWorkers keeps the live set current and logs workers that leave
// while the placement in use names them.
func (f *Frontend) followWorkers(ctx context.Context) {
	for set := range f.Registry.WatchWorkers(ctx) {
		before := f.live.Load()
		f.setLive(set)
		after := f.live.Load()
		if before == nil {
			continue
		}
		pl := f.Placement.Current()
		for w := range *before {
			if (*after)[w] {
				continue
			}
			if pl != nil && len(pl.Owned(w)) > 0 {
				lost := pl.Unowned(f.IsLive)
				if len(lost) > 0 {
					f.log.Error("worker left the cluster: some experts have no live copy; requests routed to them fail with 503 until the placement is repaired",
						"worker", w, "epoch", pl.Epoch, "experts", formatIDs(lost))
				} else {
					f.log.Warn("worker left the cluster; its experts' other copies serve", "worker", w, "epoch", pl.Epoch, "held", len(pl.Owned(w)))
				}
			} else {
				f.log.Info("worker left the cluster", "worker", w)
			}
		}
		for w := range *after {
			if !(*before)[w] {
				f.log.Info("worker joined the cluster", "worker", w)
			}
		}
	}
}

// followStatus keeps the leader's placement verdict and logs every change.
func (f *Frontend) followStatus(ctx context.Context) {
	for s := range f.Registry.WatchPlacementStatus(ctx, f.Model.Fingerprint) {
		prev := f.status.Swap(s)
		if s == nil || (prev != nil && prev.OK == s.OK && prev.Error == s.Error && slices.Equal(prev.Unplaced, s.Unplaced)) {
			continue
		}
		if s.OK {
			f.log.Info("placement healthy", "epoch", s.Epoch)
		} else {
			f.log.Error("the coordinator cannot place the model", "problem", describeStatus(s))
		}
	}
}

// Status is the leader's latest placement verdict (nil: none seen).
func (f *Frontend) Status() *registry.PlacementStatus { return f.status.Load() }

// Problem says why requests cannot all succeed now, or nil: no placement
// yet, a placement the leader could not make (memory shortfall), or
// experts whose every copy is on workers that left. It reads only what
// the front end follows (no network).
func (f *Frontend) Problem() error {
	s := f.status.Load()
	pl := f.Placement.Current()
	if pl == nil {
		if s != nil && !s.OK {
			return fmt.Errorf("no expert placement: %s", describeStatus(s))
		}
		return errors.New("no expert placement yet (waiting for workers and the coordinator)")
	}
	if err := pl.Validate(); err != nil {
		return err
	}
	if lost := pl.Unowned(f.IsLive); len(lost) > 0 {
		msg := fmt.Sprintf("experts %s have no live copy (placement epoch %d)", formatIDs(lost), pl.Epoch)
		if s != nil && !s.OK && s.Error != "" {
			msg += ": " + describeStatus(s)
		}
		return errors.New(msg)
	}
	return nil
}

// Ready is /health's readiness: Problem is nil, and every expert has a
// copy on a worker that answers Health as SERVING at the placement's epoch
// or a newer one (it has loaded what the placement gives it). Workers are
// asked concurrently, each for at most a second.
func (f *Frontend) Ready(ctx context.Context) error {
	if err := f.Problem(); err != nil {
		return err
	}
	pl := f.Placement.Current()
	ids := pl.WorkerIDs()
	whyNot := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		if !f.IsLive(id) {
			whyNot[i] = fmt.Errorf("worker %s has left the cluster", id)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			hctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			whyNot[i] = f.serving(hctx, pl, id)
		}()
	}
	wg.Wait()
	serving := map[cluster.WorkerID]bool{}
	for i, id := range ids {
		serving[id] = whyNot[i] == nil
	}
	missing := pl.Unowned(func(w cluster.WorkerID) bool { return serving[w] })
	if len(missing) == 0 {
		return nil
	}
	var why []string
	for i := range ids {
		if whyNot[i] != nil {
			why = append(why, whyNot[i].Error())
		}
	}
	return fmt.Errorf("experts %s have no serving copy at placement epoch %d: %s", formatIDs(missing), pl.Epoch, strings.Join(why, "; "))
}

func (f *Frontend) serving(ctx context.Context, pl *cluster.Placement, id cluster.WorkerID) error {
	c, err := f.Pool.Client(id, pl.Workers[id].Addr)
	if err != nil {
		return fmt.Errorf("worker %s: %w", id, err)
	}
	resp, err := c.Health(ctx, &pb.HealthRequest{})
	switch {
	case err != nil:
		return fmt.Errorf("worker %s: %w", id, err)
	case resp.GetStatus() != pb.ServingStatus_SERVING_STATUS_SERVING:
		return fmt.Errorf("worker %s: %v", id, resp.GetStatus())
	case resp.GetEpoch() < uint64(pl.Epoch):
		return fmt.Errorf("worker %s serves placement epoch %d, not yet %d", id, resp.GetEpoch(), pl.Epoch)
	}
	return nil
}

// WaitServing waits until Ready holds, polling every 50 ms, and returns
// the placement then in force. Every distinct reason it is not ready yet
// is passed to progress (may be nil) as it appears, so an impossible
// placement is reported within a poll, not at the deadline. fatal, if set,
// is asked each poll whether waiting is pointless (e.g. a local worker
// exited); its error ends the wait.
func (f *Frontend) WaitServing(ctx context.Context, progress func(error), fatal func() error) (*cluster.Placement, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		if fatal != nil {
			if err := fatal(); err != nil {
				return nil, err
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := f.Ready(rctx)
		cancel()
		if err == nil {
			return f.Placement.Current(), nil
		}
		if msg := err.Error(); msg != last && progress != nil {
			progress(err)
			last = msg
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("frontend: not serving after waiting: %w (%w)", err, ctx.Err())
		}
	}
}

// Shortfall returns the leader's verdict when it says the model cannot be
// placed for lack of memory, else nil.
func (f *Frontend) Shortfall() *registry.PlacementStatus {
	s := f.status.Load()
	if s == nil || s.OK || s.NeedBytes == 0 || s.NeedBytes <= s.HaveBytes {
		return nil
	}
	return s
}

// describeStatus is a one-line account of a verdict that is not OK.
func describeStatus(s *registry.PlacementStatus) string {
	var b strings.Builder
	b.WriteString(s.Error)
	if s.NeedBytes > s.HaveBytes && s.NeedBytes > 0 {
		fmt.Fprintf(&b, " (need %s for the expert copies, the live workers have %s: short by %s)",
			gib(s.NeedBytes), gib(s.HaveBytes), gib(s.NeedBytes-s.HaveBytes))
	}
	if len(s.Unplaced) > 0 {
		fmt.Fprintf(&b, "; experts with no live copy: %s", formatIDs(s.Unplaced))
	}
	return b.String()
}

func gib(b int64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

// formatIDs lists experts compactly: "L1/E0,L1/E3,... (n experts)", at most
// 16 named.
func formatIDs(ids []expert.ID) string {
	s := slices.Clone(ids)
	slices.SortFunc(s, expert.Compare)
	var parts []string
	for i, id := range s {
		if i == 16 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, id.String())
	}
	return fmt.Sprintf("%s (%d experts)", strings.Join(parts, ","), len(s))
}

func orNone(q string) string {
	if q == "" {
		return "none"
	}
	return q
}
