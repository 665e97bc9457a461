package expert

import (
	"context"
	"fmt"
	"sync"

	"github.com/switchyard/switchyard/pkg/router"
)

// Sharded is an in-process Trainer over experts split among several
// stores (one per simulated worker): each MoE layer's plan is cut into one
// sub-plan per owning store, every store computes its rows on behalf of
// Caller, and the results return in plan order. It is the in-process twin
// of the gRPC exchange (one request per layer and destination), used to
// test data- and expert-parallel training without sockets.
type Sharded struct {
	Caller string
	Owner  func(ID) *Store // the store holding an expert

	mu    sync.Mutex
	saved map[int][]shard // per layer: the sub-plans of the last ForwardTrain
}

// shard is one store's part of a layer's plan.
type shard struct {
	store *Store
	plan  router.Plan
	rows  []int // plan row of each sub-plan row
}

// split cuts plan into per-store sub-plans (stores in first-seen expert
// order, so the split is deterministic).
func (s *Sharded) split(layer int, plan *router.Plan) ([]shard, error) {
	E := plan.NumExperts
	var shards []shard
	idx := map[*Store]int{}
	for e := 0; e < E; e++ {
		lo, hi := plan.Rows(e)
		if hi == lo {
			continue
		}
		st := s.Owner(ID{layer, e})
		if st == nil {
			return nil, fmt.Errorf("layer %d expert %d: %w", layer, e, ErrNotOwned)
		}
		if _, ok := idx[st]; !ok {
			idx[st] = len(shards)
			shards = append(shards, shard{store: st, plan: router.Plan{NumExperts: E, Offsets: make([]int32, E+1)}})
		}
	}
	for i := range shards {
		sh := &shards[i]
		for e := 0; e < E; e++ {
			lo, hi := plan.Rows(e)
			sh.plan.Offsets[e] = int32(len(sh.rows))
			if hi > lo && s.Owner(ID{layer, e}) == sh.store {
				for r := lo; r < hi; r++ {
					sh.rows = append(sh.rows, r)
					sh.plan.Token = append(sh.plan.Token, plan.Token[r])
					sh.plan.Choice = append(sh.plan.Choice, plan.Choice[r])
					sh.plan.Weight = append(sh.plan.Weight, plan.Weight[r])
				}
			}
		}
		sh.plan.Offsets[E] = int32(len(sh.rows))
	}
	return shards, nil
}

// Compute implements Executor.
func (s *Sharded) Compute(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	shards, err := s.split(layer, plan)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		sub := make([]float32, len(sh.rows)*d)
		if err := sh.store.Compute(ctx, layer, &sh.plan, x, d, sub); err != nil {
			return err
		}
		scatter(y, sub, sh.rows, d)
	}
	return nil
}

// ForwardTrain implements Trainer.
func (s *Sharded) ForwardTrain(ctx context.Context, layer int, plan *router.Plan, x []float32, d int, y []float32) error {
	shards, err := s.split(layer, plan)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		sub := make([]float32, len(sh.rows)*d)
		if err := sh.store.ForwardTrainFor(ctx, s.Caller, layer, &sh.plan, x, d, sub); err != nil {
			return err
		}
		scatter(y, sub, sh.rows, d)
	}
	s.mu.Lock()
	if s.saved == nil {
		s.saved = map[int][]shard{}
	}
	s.saved[layer] = shards
	s.mu.Unlock()
	return nil
}

// BackwardTrain implements Trainer.
func (s *Sharded) BackwardTrain(ctx context.Context, layer int, dy, dx []float32) error {
	s.mu.Lock()
	shards := s.saved[layer]
	delete(s.saved, layer)
	s.mu.Unlock()
	for _, sh := range shards {
		n := len(sh.rows)
		if n == 0 {
			continue
		}
		d := len(dy) / totalRows(shards)
		sdy := make([]float32, n*d)
		for i, r := range sh.rows {
			copy(sdy[i*d:(i+1)*d], dy[r*d:(r+1)*d])
		}
		sdx := make([]float32, n*d)
		if err := sh.store.BackwardTrainFor(ctx, s.Caller, layer, sdy, sdx); err != nil {
			return err
		}
		scatter(dx, sdx, sh.rows, d)
	}
	return nil
}

func totalRows(sh []shard) int {
	n := 0
	for _, s := range sh {
		n += len(s.rows)
	}
	return max(n, 1)
}

// scatter writes sub-plan row i of src into plan row rows[i] of dst.
func scatter(dst, src []float32, rows []int, d int) {
	for i, r := range rows {
		copy(dst[r*d:(r+1)*d], src[i*d:(i+1)*d])
	}
}
