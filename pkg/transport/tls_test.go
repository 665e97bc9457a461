package transport

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// tlsCreds issues credentials for id from ca.
func tlsCreds(t *testing.T, ca *auth.CA, role auth.Role, name string) *auth.Credentials {
	t.Helper()
	c, err := ca.Credentials(auth.Identity{Role: role, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMutualTLSAuthorizesEveryCall: with ServerConfig.TLS a worker serves
// its experts to front ends only, a job's scope to the job's members only,
// and refuses plaintext, strangers and a certificate answering for another
// worker's address.
func TestMutualTLSAuthorizesEveryCall(t *testing.T) {
	const E, T, D, F, layer = 4, 6, 8, 8, 0
	ca, err := auth.NewCA("cluster")
	if err != nil {
		t.Fatal(err)
	}
	other, err := auth.NewCA("stranger")
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	store := expert.NewStore()
	jobStore := expert.NewStore()
	for e := 0; e < E; e++ {
		store.Put(expert.ID{Layer: layer, Expert: e}, randomFFN(rng, D, F))
		jobStore.Put(expert.ID{Layer: layer, Expert: e}, randomFFN(rng, D, F))
	}
	w1 := startWorker(t, "w1", store, ServerConfig{Hidden: D, TLS: tlsCreds(t, ca, auth.RoleWorker, "w1")}, nil)
	scope, err := w1.srv.AddJob("job/0", jobStore, jobModel, D)
	if err != nil {
		t.Fatal(err)
	}
	defer scope.Close()
	scope.SetMembers([]cluster.WorkerID{"w1", "w2"})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	owners := func(int, int) []int { return []int{0} }
	pl := placement(1, 1, E, func(int) bool { return true }, []*testWorker{w1}, owners)
	plan := route(T, E, 2, 5)
	x := taggedInput(0, T, D, 6)
	serve := func(c *auth.Credentials) error {
		pool := newPool(t, ClientConfig{Worker: "fe", TLS: c, AttemptTimeout: 5 * time.Second, CallTimeout: 10 * time.Second})
		y := make([]float32, plan.Len()*D)
		return NewRemoteExecutor(NewStaticPlacement(pl), pool).Compute(ctx, layer, plan, x, D, y)
	}
	train := func(c *auth.Credentials) error {
		pool := newPool(t, ClientConfig{Worker: "rank", Model: jobModel, Job: "job/0", TLS: c, AttemptTimeout: 5 * time.Second, CallTimeout: 10 * time.Second})
		tr, err := NewRemoteTrainer(NewStaticPlacement(jobPlacement(E, []*testWorker{w1}, owners)), pool, "job/0")
		if err != nil {
			t.Fatal(err)
		}
		y := make([]float32, plan.Len()*D)
		return tr.ForwardTrain(ctx, layer, plan, x, D, y)
	}

	// A front end is served; so is a member of the job, on the job's scope.
	if err := serve(tlsCreds(t, ca, auth.RoleFrontend, "fe1")); err != nil {
		t.Fatalf("front end: %v", err)
	}
	if err := train(tlsCreds(t, ca, auth.RoleWorker, "w2")); err != nil {
		t.Fatalf("job member w2: %v", err)
	}
	// A worker is no front end; a worker outside the job is no member.
	if err := serve(tlsCreds(t, ca, auth.RoleWorker, "w2")); err == nil || !strings.Contains(err.Error(), "may not call the serving experts") {
		t.Fatalf("a worker calling the serving experts: %v", err)
	}
	if err := train(tlsCreds(t, ca, auth.RoleWorker, "w3")); err == nil || !strings.Contains(err.Error(), "not a rank of training job") {
		t.Fatalf("a non-member worker calling the job's scope: %v", err)
	}
	// A front end of another CA, and plaintext, never get a call through.
	if err := serve(tlsCreds(t, other, auth.RoleFrontend, "fe1")); err == nil {
		t.Fatal("a front end of another CA was served")
	}
	if err := serve(nil); err == nil {
		t.Fatal("a plaintext caller was served")
	}
	cc, err := grpc.NewClient(w1.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := pb.NewWorkerClient(cc).Health(ctx, &pb.HealthRequest{}); err == nil {
		t.Fatal("Health answered a plaintext caller")
	}

	// The placement says w9 is at w1's address: the caller expects worker/w9's
	// certificate there and refuses w1's.
	fake := placement(1, 1, E, func(int) bool { return true }, []*testWorker{{id: "w9", addr: w1.addr}}, owners)
	pool := newPool(t, ClientConfig{Worker: "fe", TLS: tlsCreds(t, ca, auth.RoleFrontend, "fe1"), AttemptTimeout: 3 * time.Second, CallTimeout: 5 * time.Second})
	y := make([]float32, plan.Len()*D)
	err = NewRemoteExecutor(NewStaticPlacement(fake), pool).Compute(ctx, layer, plan, x, D, y)
	if err == nil {
		t.Fatal("a caller accepted worker w1's certificate as w9's")
	}
	if !strings.Contains(err.Error(), "want worker/w9") {
		t.Fatalf("impersonation error does not say whom it expected: %v", err)
	}
}

// TestInFlightBytesAreBounded: however many callers send at once, a worker
// holds at most MaxInFlightBytes of requests; the others wait unread and
// complete once room frees up.
func TestInFlightBytesAreBounded(t *testing.T) {
	const E, D, layer, callers = 1, 64, 0, 6
	const rows = 64                  // per request: 64 x 64 x 4 = 16 KiB in, 16 KiB out
	const share = rows * D * 8       // what one request reserves
	const budget = 2*share + share/2 // room for two requests, not three
	release := make(chan struct{})
	var computing atomic.Int32
	hook := func(id expert.ID, f *expert.FFN, x []float32, d int, y []float32) {
		computing.Add(1)
		<-release
		tagHook(0)(id, f, x, d, y)
	}
	w := startWorker(t, "w0", taggedStore(expert.ID{Layer: layer, Expert: 0}), ServerConfig{Hidden: D, MaxInFlightBytes: budget, BatchRequests: 1}, hook)
	pl := placement(1, 1, E, func(int) bool { return true }, []*testWorker{w}, func(int, int) []int { return []int{0} })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errs := make(chan error, callers)
	for c := 0; c < callers; c++ {
		go func() {
			pool := newPool(t, ClientConfig{Worker: cluster.WorkerID(fmt.Sprint("c", c)), AttemptTimeout: -1, CallTimeout: 60 * time.Second})
			plan := route(rows, E, 1, uint64(c))
			x := taggedInput(c, rows, D, uint64(c))
			y := make([]float32, plan.Len()*D)
			errs <- NewRemoteExecutor(NewStaticPlacement(pl), pool).Compute(ctx, layer, plan, x, D, y)
		}()
	}
	// Wait until the server is full: the first computation blocks and
	// others arrive; the held bytes never pass the budget.
	deadline := time.Now().Add(30 * time.Second)
	for w.srv.InFlightBytes() < 2*share && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for i := 0; i < 50; i++ { // a while longer: nobody else gets in
		if got := w.srv.InFlightBytes(); got > budget {
			t.Fatalf("the worker holds %d request bytes, budget %d", got, budget)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if got := w.srv.InFlightBytes(); got != 2*share {
		t.Fatalf("held %d bytes with the GEMM blocked, want exactly two requests' %d", got, 2*share)
	}
	close(release)
	for c := 0; c < callers; c++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The owner releases a request's share once its answer is written,
	// which the caller may read before the owner's handler returns.
	waitFor(t, "every request's share released after every request was answered", func() bool { return w.srv.InFlightBytes() == 0 })
}

// TestNoCallerSetsTheEpoch: the attack that broke serving for good (a
// Control call with a huge set_epoch, after which every request was
// "stale") has no way in: the Worker service has no method that changes
// the epoch or the experts held, and an expert request routed with a huge
// epoch changes nothing for the callers that follow.
func TestNoCallerSetsTheEpoch(t *testing.T) {
	for _, m := range pb.Worker_ServiceDesc.Methods {
		if m.MethodName != "Health" && m.MethodName != "Stats" {
			t.Errorf("the Worker service has method %s: only Health and Stats (and the Experts stream) are expected", m.MethodName)
		}
	}
	const E, T, D, layer = 2, 4, 8, 0
	rng := rand.New(rand.NewPCG(1, 2))
	store := expert.NewStore()
	for e := 0; e < E; e++ {
		store.Put(expert.ID{Layer: layer, Expert: e}, randomFFN(rng, D, 8))
	}
	w := startWorker(t, "w1", store, ServerConfig{Hidden: D}, nil)
	w.srv.SetEpoch(5) // the leader's placement, as the follower applies it
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	owners := func(int, int) []int { return []int{0} }
	plan := route(T, E, 1, 3)
	x := taggedInput(0, T, D, 4)
	run := func(epoch cluster.Epoch) error {
		pl := placement(epoch, 1, E, func(int) bool { return true }, []*testWorker{w}, owners)
		y := make([]float32, plan.Len()*D)
		return NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{Worker: "c"})).Compute(ctx, layer, plan, x, D, y)
	}
	if err := run(1 << 62); err != nil {
		t.Fatalf("a request routed with epoch 2^62: %v", err)
	}
	if got := w.srv.Epoch(); got != 5 {
		t.Fatalf("after a request routed with epoch 2^62 the worker accepts epoch %d, want 5 (the placement's)", got)
	}
	if err := run(5); err != nil {
		t.Fatalf("a request at the placement's epoch after the attack: %v", err)
	}
}
