package train

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/switchyard/switchyard/pkg/expert"
)

// runRanks runs a job as n in-process ranks (goroutines) with the experts
// dealt round-robin among their stores.
func runRanks(t *testing.T, cfg JobConfig, n int) *Result {
	t.Helper()
	comms := LocalGroup(n)
	preps := make([]*Prepared, n)
	stores := make([]*expert.Store, n)
	for r := 0; r < n; r++ {
		p, err := Prepare(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		preps[r] = p
	}
	E := preps[0].Model.MoE.Router.NumExperts
	ownerOf := func(id expert.ID) int { return (id.Layer*E + id.Expert) % n }
	jobs := make([]RankJob, n)
	for r := 0; r < n; r++ {
		m, st, err := preps[r].Load(func(id expert.ID) bool { return ownerOf(id) == r })
		if err != nil {
			t.Fatal(err)
		}
		stores[r] = st
		jobs[r] = RankJob{Prepared: preps[r], Comm: comms[r], Model: m, Owned: st}
	}
	for r := range jobs {
		jobs[r].Model.Experts = &expert.Sharded{Caller: fmt.Sprintf("rank%d", r), Owner: func(id expert.ID) *expert.Store { return stores[ownerOf(id)] }}
	}
	results := make([]*Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range jobs {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			results[r], errs[r] = RunRank(context.Background(), jobs[r])
		}(r)
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return results[0]
}

func TestDistributedJobAndResumeOnAnotherWorkerCount(t *testing.T) {
	ctx := context.Background()
	// Uninterrupted single-process reference: 8 steps.
	ref, err := Run(ctx, smallJob(t, t.TempDir(), 8), nil)
	if err != nil {
		t.Fatal(err)
	}
	// 2 ranks for 4 steps (checkpoint at 3 and 4), then 3 ranks resume to 8.
	out := t.TempDir()
	// (the cosine schedule spans all 8 steps in every run)
	firstCfg := smallJob(t, out, 4)
	firstCfg.Step.Schedule.Total = 8
	first := runRanks(t, firstCfg, 2)
	cfg := smallJob(t, out, 8)
	cfg.Resume = true
	second := runRanks(t, cfg, 3)
	if len(first.Losses) != 4 || len(second.Losses) != 8 {
		t.Fatalf("got %d then %d losses", len(first.Losses), len(second.Losses))
	}
	for i, want := range ref.Losses {
		got := second.Losses[i]
		if d := math.Abs(got - want); d > 1e-4 {
			t.Errorf("step %d: 2 then 3 ranks %.6f, 1 process %.6f", i+1, got, want)
		}
	}
	if len(second.Evals) == 0 {
		t.Error("no held-out evaluations recorded")
	}
	t.Logf("1 process: %.4f\n2->3 ranks: %.4f", ref.Losses, second.Losses)
}
