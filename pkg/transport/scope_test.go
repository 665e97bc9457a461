package transport

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/train"
)

// jobModel is the fingerprint of the model a test job trains: not the
// serving model (testModel), and of another hidden size.
const jobModel = "dsv3-test-job0000"

// jobPlacement is placement() for the job's model.
func jobPlacement(experts int, workers []*testWorker, owners func(l, e int) []int) *cluster.Placement {
	pl := placement(1, 1, experts, func(int) bool { return true }, workers, owners)
	pl.Model = jobModel
	for w, info := range pl.Workers {
		info.Model = jobModel
		pl.Workers[w] = info
	}
	return pl
}

// One worker, one expert server: a serving request (the serving model, D 8)
// and a training job's forward and backward (another model, D 16) reach
// the same server, each in its own scope, with the results of a local
// store; each scope counts its own requests; calls naming a job the worker
// has no scope for, or the job with another model, are refused.
func TestOneServerServesAndTrainsAJob(t *testing.T) {
	const (
		E, T, layer = 4, 12, 0
		DS, DJ, F   = 8, 16, 8
	)
	rng := rand.New(rand.NewPCG(11, 12))
	serving, servingRef := expert.NewStore(), expert.NewStore()
	for e := 0; e < E; e++ {
		f := randomFFN(rng, DS, F)
		serving.Put(expert.ID{Layer: layer, Expert: e}, f)
		servingRef.Put(expert.ID{Layer: layer, Expert: e}, f)
	}
	w := startWorker(t, "w0", serving, ServerConfig{Hidden: DS}, nil)
	w.srv.SetEpoch(7) // the serving placement's epoch: job scopes check none

	jobStore, jobRef := expert.NewStore(), expert.NewStore()
	for e := 0; e < E; e++ {
		f := randomFFN(rng, DJ, F)
		jobStore.Put(expert.ID{Layer: layer, Expert: e}, f)
		jobRef.Put(expert.ID{Layer: layer, Expert: e}, f)
	}
	scope, err := w.srv.AddJob("job-a/1", jobStore, jobModel, DJ)
	if err != nil {
		t.Fatal(err)
	}
	defer scope.Close()
	if _, err := w.srv.AddJob("job-a/1", jobStore, jobModel, DJ); err == nil {
		t.Fatal("a second scope for the same job was accepted")
	}
	ctx := context.Background()
	owners := func(int, int) []int { return []int{0} }

	// Serving: a front end's executor, no job.
	spl := placement(7, 1, E, func(int) bool { return true }, []*testWorker{w}, owners)
	ex := NewRemoteExecutor(NewStaticPlacement(spl), newPool(t, ClientConfig{Worker: "fe"}))
	plan := route(T, E, 2, 1)
	xs := taggedInput(0, T, DS, 1)
	ys, want := make([]float32, plan.Len()*DS), make([]float32, plan.Len()*DS)
	if err := ex.Compute(ctx, layer, plan, xs, DS, ys); err != nil {
		t.Fatal(err)
	}
	if err := servingRef.Compute(ctx, layer, plan, xs, DS, want); err != nil {
		t.Fatal(err)
	}
	if d := relDiff(ys, want); d != 0 {
		t.Fatalf("serving result differs from a local store by %.3g", d)
	}

	// Training: a peer rank of the job, over the network.
	jpl := jobPlacement(E, []*testWorker{w}, owners)
	tr, err := NewRemoteTrainer(NewStaticPlacement(jpl), newPool(t, ClientConfig{Worker: "rank1", Model: jobModel, Job: "job-a/1"}), "job-a/1")
	if err != nil {
		t.Fatal(err)
	}
	x := taggedInput(1, T, DJ, 2)
	y, yRef := make([]float32, plan.Len()*DJ), make([]float32, plan.Len()*DJ)
	if err := tr.ForwardTrain(ctx, layer, plan, x, DJ, y); err != nil {
		t.Fatal(err)
	}
	if err := jobRef.ForwardTrain(ctx, layer, plan, x, DJ, yRef); err != nil {
		t.Fatal(err)
	}
	dy := taggedInput(2, plan.Len(), DJ, 3)
	dx, dxRef := make([]float32, len(dy)), make([]float32, len(dy))
	if err := tr.BackwardTrain(ctx, layer, dy, dx); err != nil {
		t.Fatal(err)
	}
	if err := jobRef.BackwardTrain(ctx, layer, dy, dxRef); err != nil {
		t.Fatal(err)
	}
	if d := max(relDiff(y, yRef), relDiff(dx, dxRef)); d > 1e-6 {
		t.Fatalf("training through the job scope differs from a local store by %.3g", d)
	}
	for e := 0; e < E; e++ {
		id := expert.ID{Layer: layer, Expert: e}
		if serving.Touched(id) {
			t.Errorf("expert %v of the serving store got a gradient from the job", id)
		}
		g, r := jobStore.Grad(id), jobRef.Grad(id)
		if d := max(relDiff(g.Gate.F32, r.Gate.F32), relDiff(g.Up.F32, r.Up.F32), relDiff(g.Down.F32, r.Down.F32)); d > 1e-6 {
			t.Errorf("expert %v: the job's gradient differs from a local backward by %.3g", id, d)
		}
	}

	// One request for serving, two for the job, each counted in its scope.
	if st := w.srv.Snapshot(); st.Requests != 1 || st.Epoch != 7 {
		t.Errorf("serving scope: %d requests at epoch %d, want 1 at 7", st.Requests, st.Epoch)
	}
	if st := scope.Snapshot(); st.Requests != 2 || st.BytesHeld != jobStore.Bytes() {
		t.Errorf("job scope: %d requests, %d bytes held; want 2, %d", st.Requests, st.BytesHeld, jobStore.Bytes())
	}
	if got := w.srv.Streams(); got != 2 || scope.Streams() != 1 {
		t.Errorf("streams: %d on the server, %d on the job scope; want 2 and 1", got, scope.Streams())
	}

	// The job's scope is checked against the job's model; unknown jobs are
	// refused, naming the job.
	bad, err := NewRemoteTrainer(NewStaticPlacement(jpl), newPool(t, ClientConfig{Worker: "rank2", Model: testModel, Job: "job-a/1"}), "job-a/1")
	if err != nil {
		t.Fatal(err)
	}
	bad.cfg.Model = jobModel // past the trainer's own placement check: the owner must refuse
	err = bad.ForwardTrain(ctx, layer, plan, x, DJ, y)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), `serves for job "job-a/1"`) {
		t.Errorf("job call with the serving model: %v, want ErrIncompatible naming the job's model", err)
	}
	unknown, err := NewRemoteTrainer(NewStaticPlacement(jpl), newPool(t, ClientConfig{Worker: "rank1", Model: jobModel, Job: "job-b/1"}), "job-b/1")
	if err != nil {
		t.Fatal(err)
	}
	err = unknown.ForwardTrain(ctx, layer, plan, x, DJ, y)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), `unknown training job`) || !strings.Contains(err.Error(), `"job-b/1"`) {
		t.Errorf("call for an unknown job: %v, want ErrIncompatible saying unknown training job job-b/1", err)
	}
	// After Close, the job's open streams are refused too.
	scope.Close()
	err = tr.ForwardTrain(ctx, layer, plan, x, DJ, y)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), `"job-a/1"`) {
		t.Errorf("call after the job's scope closed: %v, want ErrIncompatible naming the job", err)
	}
	if err := ex.Compute(ctx, layer, plan, xs, DS, ys); err != nil {
		t.Errorf("serving after the job ended: %v", err)
	}
}

// A trainer whose own worker owns experts computes their rows in process
// (SetLocal): with every expert local, no stream is opened and the job
// scope answers no network request; with half local, only the other
// owner's rows travel. Outputs and input gradients are bit-identical to the
// same trainer's over gRPC.
func TestTrainerComputesItsOwnExpertsInProcess(t *testing.T) {
	const E, T, D, F, layer = 6, 16, 16, 8, 0
	rng := rand.New(rand.NewPCG(21, 22))
	ffns := make([]*expert.FFN, E)
	for e := range ffns {
		ffns[e] = randomFFN(rng, D, F)
	}
	// Two workers, each serving nothing and holding the job's experts it
	// owns (w0: even experts; for the all-local case, w0 holds all).
	type setup struct {
		workers []*testWorker
		scopes  []*JobScope
	}
	start := func(t *testing.T, owner func(e int) int, n int) setup {
		var s setup
		for i := 0; i < n; i++ {
			id := cluster.WorkerID(fmt.Sprintf("w%d", i))
			w := startWorker(t, id, expert.NewStore(), ServerConfig{Hidden: 4}, nil)
			store := expert.NewStore()
			for e := 0; e < E; e++ {
				if owner(e) == i {
					store.Put(expert.ID{Layer: layer, Expert: e}, ffns[e])
				}
			}
			sc, err := w.srv.AddJob("j/0", store, jobModel, D)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sc.Close)
			s.workers, s.scopes = append(s.workers, w), append(s.scopes, sc)
		}
		return s
	}
	// run does three forward/backward pairs as worker w0's rank (local or
	// not) and returns every y and dx.
	run := func(t *testing.T, s setup, owner func(e int) int, local bool) [][]float32 {
		pl := jobPlacement(E, s.workers, func(_, e int) []int { return []int{owner(e)} })
		tr, err := NewRemoteTrainer(NewStaticPlacement(pl), newPool(t, ClientConfig{Worker: "w0", Model: jobModel, Job: "j/0"}), "j/0")
		if err != nil {
			t.Fatal(err)
		}
		if local {
			if err := tr.SetLocal("w0", s.scopes[0]); err != nil {
				t.Fatal(err)
			}
		}
		ctx := context.Background()
		var out [][]float32
		for it := 0; it < 3; it++ {
			plan := route(T, E, 2, uint64(40+it))
			x := taggedInput(0, T, D, uint64(it))
			y := make([]float32, plan.Len()*D)
			if err := tr.ForwardTrain(ctx, layer, plan, x, D, y); err != nil {
				t.Fatal(err)
			}
			dy := taggedInput(1, plan.Len(), D, uint64(10+it))
			dx := make([]float32, len(dy))
			if err := tr.BackwardTrain(ctx, layer, dy, dx); err != nil {
				t.Fatal(err)
			}
			out = append(out, y, dx)
		}
		return out
	}
	same := func(t *testing.T, a, b [][]float32) {
		t.Helper()
		for i := range a {
			if !slices.Equal(a[i], b[i]) {
				t.Fatalf("result %d differs between the in-process and the gRPC path by %.3g", i, relDiff(a[i], b[i]))
			}
		}
	}

	t.Run("all local", func(t *testing.T) {
		owner := func(int) int { return 0 }
		remote := start(t, owner, 1)
		want := run(t, remote, owner, false)
		s := start(t, owner, 1)
		got := run(t, s, owner, true)
		same(t, got, want)
		if n := s.workers[0].srv.Streams(); n != 0 {
			t.Errorf("%d streams opened on the trainer's own worker, want 0", n)
		}
		st := s.scopes[0].Snapshot()
		if st.Requests != 0 || st.BytesIn != 0 {
			t.Errorf("job scope answered %d network requests (%d bytes in), want 0", st.Requests, st.BytesIn)
		}
		for _, es := range st.Experts {
			if es.Requests != 0 {
				t.Errorf("expert %d counted %d network requests, want 0", es.Expert, es.Requests)
			}
		}
		if n := s.scopes[0].LocalRequests(); n != 6 {
			t.Errorf("%d requests computed in process, want 6 (3 forwards, 3 backwards)", n)
		}
		if n := remote.scopes[0].Snapshot().Requests; n != 6 {
			t.Errorf("the gRPC path's owner answered %d requests, want 6", n)
		}
	})
	t.Run("half local", func(t *testing.T) {
		owner := func(e int) int { return e % 2 }
		want := run(t, start(t, owner, 2), owner, false)
		s := start(t, owner, 2)
		got := run(t, s, owner, true)
		same(t, got, want)
		if n := s.workers[0].srv.Streams(); n != 0 {
			t.Errorf("%d streams opened on the trainer's own worker, want 0", n)
		}
		if n := s.scopes[1].Snapshot().Requests; n != 6 {
			t.Errorf("the other owner answered %d requests, want 6", n)
		}
		if n := s.scopes[0].LocalRequests(); n != 6 {
			t.Errorf("%d requests computed in process, want 6", n)
		}
	})
	t.Run("set local checks", func(t *testing.T) {
		s := start(t, func(int) int { return 0 }, 1)
		pl := jobPlacement(E, s.workers, func(int, int) []int { return []int{0} })
		tr, err := NewRemoteTrainer(NewStaticPlacement(pl), newPool(t, ClientConfig{Worker: "w0", Model: testModel}), "other")
		if err != nil {
			t.Fatal(err)
		}
		err = tr.SetLocal("w1", s.scopes[0])
		for _, m := range []string{`self "w1"`, `scope of job "j/0"`, "model"} {
			if err == nil || !strings.Contains(err.Error(), m) {
				t.Errorf("SetLocal with another worker, job and model: %v, want it to mention %q", err, m)
			}
		}
		if _, err := NewRemoteTrainer(NewStaticPlacement(pl), newPool(t, ClientConfig{Worker: "w0", Job: "j/0"}), "other"); err == nil {
			t.Error("a trainer of job other on a pool addressing job j/0 was accepted")
		}
	})
}

// A data- and expert-parallel group of ranks, each on a worker whose one
// expert server serves a model of its own and holds the job's experts in
// the job's scope, computing its own experts in process, reproduces the
// loss curve of one process (as TestRemoteTrainingReproducesSingleProcess
// does over separate servers), and the training never touches the serving
// scopes.
func TestJobScopesReproduceSingleProcess(t *testing.T) {
	cfg := trainConfig(t)
	fp := cfg.Fingerprint()
	sc := train.DefaultJobConfig().Step
	sc.Schedule.Warmup, sc.Schedule.Total = 3, 12
	sc.BiasUpdateSpeed, sc.Loss.ZCoef = 1e-3, 1e-3
	const steps, B, T, n = 12, 4, 24, 2
	batches := textBatches(steps, B, T)
	ctx := context.Background()
	initOpt := model.InitOptions{Seed: 3}

	refModel, refStore, err := model.NewRandom(cfg, initOpt)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := train.NewStepper(refModel, refStore, sc)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float64, steps)
	for i, gb := range batches {
		out, err := ref.TrainStep(ctx, gb)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = out.Loss
	}

	E := cfg.MoE.Router.NumExperts
	owner := func(id expert.ID) int { return (id.Layer*E + id.Expert) % n }
	rng := rand.New(rand.NewPCG(5, 6))
	const job = "curve/0"
	workers := make([]*testWorker, n)
	scopes := make([]*JobScope, n)
	for s := range workers {
		serving := expert.NewStore()
		serving.Put(expert.ID{Layer: 1, Expert: 0}, randomFFN(rng, 8, 4))
		workers[s] = startWorker(t, cluster.WorkerID(fmt.Sprintf("w%d", s)), serving, ServerConfig{Hidden: 8}, nil)
		opt := initOpt
		opt.Experts = func(id expert.ID) bool { return owner(id) == s }
		_, store, err := model.NewRandom(cfg, opt)
		if err != nil {
			t.Fatal(err)
		}
		if scopes[s], err = workers[s].srv.AddJob(job, store, fp, cfg.Hidden); err != nil {
			t.Fatal(err)
		}
		defer scopes[s].Close()
	}
	pl := &cluster.Placement{Model: fp, Epoch: 1, Owners: make([][][]cluster.WorkerID, cfg.Layers), Workers: map[cluster.WorkerID]cluster.WorkerInfo{}}
	for _, w := range workers {
		pl.Workers[w.id] = cluster.WorkerInfo{ID: w.id, Addr: w.addr}
	}
	for l, isMoE := range cfg.LayerIsMoE {
		if isMoE {
			pl.Owners[l] = make([][]cluster.WorkerID, E)
			for e := range E {
				pl.Owners[l][e] = []cluster.WorkerID{workers[owner(expert.ID{Layer: l, Expert: e})].id}
			}
		}
	}
	comms := train.LocalGroup(n)
	steppers := make([]*train.DistStepper, n)
	for r := range steppers {
		m, _, err := model.NewRandom(cfg, model.InitOptions{Seed: initOpt.Seed, Experts: func(expert.ID) bool { return false }})
		if err != nil {
			t.Fatal(err)
		}
		tr, err := NewRemoteTrainer(NewStaticPlacement(pl), newPool(t, ClientConfig{Model: fp, Worker: workers[r].id, Job: job}), job)
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.SetLocal(workers[r].id, scopes[r]); err != nil {
			t.Fatal(err)
		}
		m.Experts = tr
		if steppers[r], err = train.NewDistStepper(m, scopes[r].sc.store, comms[r], sc); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]float64, steps)
	for i, gb := range batches {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for r := range steppers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lo, hi := train.RankRows(len(gb), n, r)
				out, err := steppers[r].TrainStep(ctx, gb[lo:hi])
				if err != nil {
					errs[r] = fmt.Errorf("rank %d step %d: %w", r, i+1, err)
					return
				}
				if r == 0 {
					got[i] = out.Loss
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	worst := 0.0
	for i := range want {
		d := math.Abs(got[i] - want[i])
		worst = max(worst, d)
		if d > 1e-4 {
			t.Errorf("step %d: loss %.6f with job scopes, %.6f in one process", i+1, got[i], want[i])
		}
	}
	for r, w := range workers {
		if st := w.srv.Snapshot(); st.Requests != 0 {
			t.Errorf("worker %s: the serving scope answered %d requests, want 0", w.id, st.Requests)
		}
		if st := scopes[r].Snapshot(); st.Requests == 0 || scopes[r].LocalRequests() == 0 {
			t.Errorf("worker %s: job scope answered %d network and %d local requests, want both > 0", w.id, st.Requests, scopes[r].LocalRequests())
		}
	}
	t.Logf("%d ranks on job scopes, %d steps: worst |loss - 1 process| = %.2g (%.3f -> %.3f)", n, steps, worst, got[0], got[steps-1])
}
