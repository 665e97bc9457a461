package worker

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// WaitServing waits until model fp's placement satisfies cond (nil: any
// valid placement) and every worker it names answers Health with that
// epoch or a newer one, i.e. has loaded its experts; it returns that
// placement. A placement is written to etcd before the workers apply it,
// so clients that want no NOT_OWNED retries wait here first. Health is
// polled every 20 ms over pool's connections. It fails when ctx ends,
// naming the workers not serving yet.
func WaitServing(ctx context.Context, reg *registry.Registry, pool *transport.Pool, fp string, cond func(*cluster.Placement) bool) (*cluster.Placement, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		p, _, err := reg.WaitPlacement(ctx, fp, func(p *cluster.Placement) bool {
			return p.Validate() == nil && (cond == nil || cond(p))
		})
		if err != nil {
			return nil, err
		}
		behind := map[cluster.WorkerID]string{}
		for _, id := range p.WorkerIDs() {
			behind[id] = "not asked yet"
		}
		for len(behind) > 0 {
			for id := range behind {
				hctx, cancel := context.WithTimeout(ctx, time.Second)
				epoch, err := health(hctx, pool, p.Workers[id])
				cancel()
				switch {
				case err != nil:
					behind[id] = err.Error()
				case epoch < p.Epoch:
					behind[id] = fmt.Sprintf("at epoch %d", epoch)
				default:
					delete(behind, id)
				}
			}
			if len(behind) == 0 {
				break
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				var why []string
				for id, s := range behind {
					why = append(why, fmt.Sprintf("%s: %s", id, s))
				}
				sort.Strings(why)
				return nil, fmt.Errorf("worker: wait for placement epoch %d of %s to be served: %s: %w", p.Epoch, fp, strings.Join(why, "; "), ctx.Err())
			}
		}
		// Still the newest placement? (A newer one may have been written
		// while we polled; then wait for it instead.)
		cur, _, err := reg.Placement(ctx, fp)
		if err != nil {
			return nil, err
		}
		if cur != nil && cur.Epoch == p.Epoch {
			return p, nil
		}
	}
}

// health asks one worker for the epoch it serves.
func health(ctx context.Context, pool *transport.Pool, w cluster.WorkerInfo) (cluster.Epoch, error) {
	c, err := pool.Client(w.ID, w.Addr)
	if err != nil {
		return 0, err
	}
	resp, err := c.Health(ctx, &pb.HealthRequest{})
	if err != nil {
		return 0, err
	}
	if resp.GetStatus() != pb.ServingStatus_SERVING_STATUS_SERVING {
		return 0, fmt.Errorf("status %v", resp.GetStatus())
	}
	return cluster.Epoch(resp.GetEpoch()), nil
}
