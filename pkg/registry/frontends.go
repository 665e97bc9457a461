package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// FrontendStats is what a serving front end publishes of its traffic at
// /<cluster>/frontends/<name>, under a lease of its own (the record
// vanishes with the front end). Rates and latency percentiles are over the
// front end's recent window (Window), so a reader needs no history.
type FrontendStats struct {
	Name            string    `json:"name"`
	Model           string    `json:"model"` // fingerprint
	Time            time.Time `json:"time"`
	Window          float64   `json:"window_s"`         // seconds the rates and percentiles cover
	Requests        uint64    `json:"requests"`         // API requests answered since start
	Active          int       `json:"active"`           // sequences being generated
	Queued          int       `json:"queued"`           // requests waiting for a slot
	GeneratedTokens uint64    `json:"generated_tokens"` // since start
	PromptTokens    uint64    `json:"prompt_tokens"`    // since start
	TokensPerS      float64   `json:"tokens_per_s"`     // generated, over Window
	PromptTokensPS  float64   `json:"prompt_tokens_per_s"`
	// Latency percentiles in milliseconds over Window (0: no sample),
	// interpolated within histogram buckets as Prometheus'
	// histogram_quantile does.
	TTFTP50, TTFTP90, TTFTP99 float64
	ITLP50, ITLP90, ITLP99    float64
}

// FrontendsPrefix is "/<cluster>/frontends/".
func (r *Registry) FrontendsPrefix() string { return r.key("frontends") + "/" }

// PublishFrontend writes snapshot() every interval (0: 2 s) at
// FrontendsPrefix()+name under a lease of ttl (0: 10 s), kept alive while
// it runs, until ctx is done; then it revokes the lease. Errors (etcd
// away, no permission) are retried at the next tick; the first of each
// kind goes to logf (may be nil). Run it in its own goroutine.
func (r *Registry) PublishFrontend(ctx context.Context, name string, interval, ttl time.Duration, snapshot func() FrontendStats, logf func(string, ...any)) {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	if ttl <= 0 {
		ttl = 10 * time.Second
	}
	key := r.FrontendsPrefix() + name
	var lease clientv3.LeaseID
	var lastErr string
	report := func(err error) {
		if err != nil && err.Error() != lastErr && logf != nil {
			logf("publishing front-end statistics at %s: %v", key, err)
		}
		if err == nil {
			lastErr = ""
		} else {
			lastErr = err.Error()
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	defer func() {
		if lease != 0 {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_, _ = r.cli.Revoke(rctx, lease)
			cancel()
		}
	}()
	for {
		err := func() error {
			cctx, cancel := context.WithTimeout(ctx, interval)
			defer cancel()
			if lease != 0 {
				if _, err := r.cli.KeepAliveOnce(cctx, lease); err != nil {
					if ctx.Err() != nil {
						return err // stopping: keep the lease for the revoke below
					}
					lease = 0 // lapsed, revoked or unreachable: take a new one
				}
			}
			if lease == 0 {
				g, err := r.cli.Grant(cctx, int64(ttl/time.Second))
				if err != nil {
					return err
				}
				lease = g.ID
			}
			s := snapshot()
			s.Name = name
			val, _ := json.Marshal(s)
			_, err := r.cli.Put(cctx, key, string(val), clientv3.WithLease(lease))
			return err
		}()
		if ctx.Err() != nil {
			return
		}
		report(err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Frontends reads every front end's statistics, sorted by name. Values
// that do not decode are skipped.
func (r *Registry) Frontends(ctx context.Context) ([]FrontendStats, error) {
	resp, err := r.cli.Get(ctx, r.FrontendsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("registry: list %s: %w", r.FrontendsPrefix(), err)
	}
	var out []FrontendStats
	for _, kv := range resp.Kvs {
		var s FrontendStats
		if json.Unmarshal(kv.Value, &s) == nil {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
