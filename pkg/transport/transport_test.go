package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/wire"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Four workers own the experts of MoE layers 1 and 3 (layer 1: one owner
// each; layer 3: two replicas each); three clients dispatch concurrently,
// with chunks cut mid-value. Every row must come back to its client, for
// its token, computed by an owner of its expert, with its data intact.
func TestTaggedRowsReachTheirExpertsAndReturnInOrder(t *testing.T) {
	const (
		layers, E, K, D = 4, 8, 2, 24
		chunk           = 1002 // not a multiple of 4: chunks split float32 values
	)
	moe := func(l int) bool { return l == 1 || l == 3 }
	owners := func(l, e int) []int {
		if l == 1 {
			return []int{e % 4}
		}
		return []int{e % 4, (e + 1) % 4}
	}
	var workers []*testWorker
	for w := 0; w < 4; w++ {
		var ids []expert.ID
		for _, l := range []int{1, 3} {
			for e := 0; e < E; e++ {
				for _, o := range owners(l, e) {
					if o == w {
						ids = append(ids, expert.ID{Layer: l, Expert: e})
					}
				}
			}
		}
		workers = append(workers, startWorker(t, cluster.WorkerID(fmt.Sprintf("w%d", w)), taggedStore(ids...),
			ServerConfig{Hidden: D, ChunkBytes: chunk}, tagHook(w)))
	}
	src := NewStaticPlacement(placement(1, layers, E, moe, workers, owners))

	var wg sync.WaitGroup
	served := make([]map[int]int, 3)
	for c := 0; c < 3; c++ {
		served[c] = map[int]int{}
		pool := newPool(t, ClientConfig{Worker: cluster.WorkerID(fmt.Sprintf("c%d", c)), ChunkBytes: chunk})
		ex := NewRemoteExecutor(src, pool)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := 0; it < 4; it++ {
				for _, l := range []int{1, 3} {
					T := 20 + 17*it + c
					plan := route(T, E, K, uint64(100*c+10*it+l))
					x := taggedInput(c, T, D, uint64(it))
					y := make([]float32, plan.Len()*D)
					if err := ex.Compute(context.Background(), l, plan, x, D, y); err != nil {
						t.Error(err)
						return
					}
					got := checkTagged(t, c, l, plan, x, y, D, func(e int) []int { return owners(l, e) })
					for o, n := range got {
						served[c][o] += n
					}
				}
			}
		}()
	}
	wg.Wait()
	for c, m := range served {
		if len(m) != 4 {
			t.Errorf("client %d was served by %d workers (%v), want all 4", c, len(m), m)
		}
	}
	// Each worker saw one request per (call, layer) it owned rows for,
	// never one per token.
	for _, w := range workers {
		if st := w.srv.Snapshot(); st.Requests == 0 || st.Requests > 3*4*2 {
			t.Errorf("worker %s: %d requests from 3x4x2 calls: want at most one per call and layer", w.id, st.Requests)
		}
	}
}

// synthModel writes a small Qwen2-MoE checkpoint (8 experts, top-2, shared
// expert) and opens it.
func synthModel(t *testing.T) *model.Checkpoint {
	t.Helper()
	dir := t.TempDir()
	hf := map[string]any{
		"model_type": "qwen2_moe", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 48,
		"moe_intermediate_size": 24, "shared_expert_intermediate_size": 32,
		"num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": true,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
	if _, err := model.Synthesize(dir, hf, model.SynthOptions{Seed: 11, Std: 0.05}); err != nil {
		t.Fatal(err)
	}
	ck, err := model.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	return ck
}

// A model whose experts live on three workers computes the same logits as
// the same model with a local expert store, prefill and decode.
func TestRemoteForwardMatchesLocal(t *testing.T) {
	ck := synthModel(t)
	cfg := ck.Config
	fp := cfg.Fingerprint()
	local, _, err := model.Load(cfg, ck.Source, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	E := cfg.MoE.Router.NumExperts
	owner := func(l, e int) int { return (l + e) % 3 }
	var workers []*testWorker
	for w := 0; w < 3; w++ {
		_, store, err := model.Load(cfg, ck.Source, model.LoadOptions{Experts: func(id expert.ID) bool { return owner(id.Layer, id.Expert) == w }})
		if err != nil {
			t.Fatal(err)
		}
		workers = append(workers, startWorker(t, cluster.WorkerID(fmt.Sprintf("w%d", w)), store, ServerConfig{Model: fp, Hidden: cfg.Hidden}, nil))
	}
	pl := &cluster.Placement{Model: fp, Epoch: 1, Owners: make([][][]cluster.WorkerID, cfg.Layers), Workers: map[cluster.WorkerID]cluster.WorkerInfo{}}
	for _, w := range workers {
		pl.Workers[w.id] = cluster.WorkerInfo{ID: w.id, Addr: w.addr}
	}
	for l, isMoE := range cfg.LayerIsMoE {
		if isMoE {
			pl.Owners[l] = make([][]cluster.WorkerID, E)
			for e := range E {
				pl.Owners[l][e] = []cluster.WorkerID{workers[owner(l, e)].id}
			}
		}
	}
	if err := pl.Validate(); err != nil {
		t.Fatal(err)
	}
	remote, _, err := model.Load(cfg, ck.Source, model.LoadOptions{Experts: func(expert.ID) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	remote.Experts = NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{Model: fp, Worker: "client"}))

	ctx := context.Background()
	prompts := [][]int32{{1, 5, 9, 33, 2, 70, 11}, {4, 4, 81, 3}, {60}}
	seqsL := []*model.Seq{local.NewSeq(), local.NewSeq(), local.NewSeq()}
	seqsR := []*model.Seq{remote.NewSeq(), remote.NewSeq(), remote.NewSeq()}
	steps := [][][]int32{prompts, {{7}, {8}, {9}}, {{10}, {11}, {12}}}
	for i, toks := range steps {
		want, err := local.Forward(ctx, seqsL, toks, model.Options{AllLogits: true})
		if err != nil {
			t.Fatal(err)
		}
		got, err := remote.Forward(ctx, seqsR, toks, model.Options{AllLogits: true})
		if err != nil {
			t.Fatal(err)
		}
		if d := relDiff(got.Logits, want.Logits); d > 1e-5 {
			t.Fatalf("step %d: remote logits differ from local by %.3g (relative), want <= 1e-5", i, d)
		} else {
			t.Logf("step %d: %d logits, relative difference %.3g", i, len(got.Logits), d)
		}
	}
	for _, w := range workers {
		if st := w.srv.Snapshot(); st.Requests == 0 {
			t.Errorf("worker %s computed nothing", w.id)
		}
	}
}

// Two peers send the same layer to one owner at once: the owner runs one
// GEMM per expert over both peers' rows (BatchRequests = 2 makes the
// coincidence deterministic), and results match a local store.
func TestOwnerBatchesConcurrentPeersIntoOneGEMMPerExpert(t *testing.T) {
	const E, D, F, layer = 8, 32, 24, 2
	r := rand.New(rand.NewPCG(5, 6))
	store := expert.NewStore()
	for e := 0; e < E; e++ {
		store.Put(expert.ID{Layer: layer, Expert: e}, randomFFN(r, D, F))
	}
	w := startWorker(t, "owner", store, ServerConfig{Hidden: D, BatchWindow: 20 * time.Second, BatchRequests: 2}, nil)
	src := NewStaticPlacement(placement(1, 3, E, func(l int) bool { return l == layer }, []*testWorker{w}, func(int, int) []int { return []int{0} }))

	type call struct {
		T    int
		x, y []float32
	}
	calls := []call{{T: 13}, {T: 29}}
	var wg sync.WaitGroup
	for c := range calls {
		cl := &calls[c]
		plan := route(cl.T, E, 2, uint64(c+1))
		cl.x = taggedInput(c, cl.T, D, 3)
		cl.y = make([]float32, plan.Len()*D)
		ex := NewRemoteExecutor(src, newPool(t, ClientConfig{Worker: cluster.WorkerID(fmt.Sprintf("peer%d", c))}))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ex.Compute(context.Background(), layer, plan, cl.x, D, cl.y); err != nil {
				t.Error(err)
				return
			}
			want := make([]float32, len(cl.y))
			if err := store.Compute(context.Background(), layer, plan, cl.x, D, want); err != nil {
				t.Error(err)
				return
			}
			if d := relDiff(cl.y, want); d > 1e-5 {
				t.Errorf("peer %d: batched result differs from local by %.3g", c, d)
			}
		}()
	}
	wg.Wait()

	// Read the counters over gRPC, as an operator would.
	cli, err := newPool(t, ClientConfig{}).Client(w.id, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	st, err := cli.Stats(context.Background(), &pb.StatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Batches != 1 || st.Requests != 2 {
		t.Fatalf("owner ran %d batches for %d requests, want 1 batch for 2", st.Batches, st.Requests)
	}
	var tokens uint64
	for _, es := range st.Experts {
		if es.Tokens > 0 && (es.Gemms != 1 || es.Requests > 2) {
			t.Errorf("expert L%d/E%d: %d GEMMs over %d rows from %d requests, want 1 GEMM", es.Layer, es.Expert, es.Gemms, es.Tokens, es.Requests)
		}
		tokens += es.Tokens
	}
	if want := uint64((13 + 29) * 2); tokens != want {
		t.Errorf("owner computed %d rows, want %d", tokens, want)
	}
	if st.BytesIn != tokens*D*4 {
		t.Errorf("owner received %d payload bytes, want %d", st.BytesIn, tokens*D*4)
	}
	// An answer's bytes are counted once written, which its caller may
	// read first.
	waitFor(t, fmt.Sprintf("the owner to count %d payload bytes out", tokens*D*4), func() bool { return w.srv.Snapshot().BytesOut == tokens*D*4 })
	h, err := cli.Health(context.Background(), &pb.HealthRequest{})
	if err != nil || h.Status != pb.ServingStatus_SERVING_STATUS_SERVING || h.Worker != "owner" || h.Model != testModel {
		t.Fatalf("health = %v, %v", h, err)
	}
}

// Peers with another protocol version or model are refused, by the server
// (caller sent the wrong values) and by the client (server answered with
// the wrong values), with both values in the message.
func TestMismatchedPeersAreRefused(t *testing.T) {
	const D = 8
	w := startWorker(t, "w0", taggedStore(expert.ID{Layer: 0, Expert: 0}), ServerConfig{Hidden: D}, tagHook(0))
	plan := route(4, 1, 1, 1)
	x := taggedInput(0, 4, D, 1)
	compute := func(cfg ClientConfig, pl *cluster.Placement) error {
		ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, cfg))
		return ex.Compute(context.Background(), 0, plan, x, D, make([]float32, plan.Len()*D))
	}
	pl := placement(1, 1, 1, func(int) bool { return true }, []*testWorker{w}, func(int, int) []int { return []int{0} })

	for _, tc := range []struct {
		name    string
		cfg     ClientConfig
		mention []string
	}{
		{"model", ClientConfig{Model: "olmoe-ffffffffffff"}, []string{`"olmoe-ffffffffffff"`, `"` + testModel + `"`, "model mismatch", "w0"}},
		{"protocol", ClientConfig{Protocol: cluster.ProtocolVersion + 1}, []string{fmt.Sprintf("caller speaks %d", cluster.ProtocolVersion+1), fmt.Sprintf("speaks %d", cluster.ProtocolVersion)}},
	} {
		t.Run("server refuses "+tc.name, func(t *testing.T) {
			pl := *pl
			if tc.cfg.Model != "" {
				pl.Model = tc.cfg.Model
			}
			err := compute(tc.cfg, &pl)
			if !errors.Is(err, ErrIncompatible) || status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("err = %v (code %v), want ErrIncompatible / FailedPrecondition", err, status.Code(err))
			}
			for _, m := range append(tc.mention, w.addr) {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}

	t.Run("server refuses a caller without metadata", func(t *testing.T) {
		cc, err := grpc.NewClient(w.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(wire.Codec{})))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		_, err = pb.NewWorkerClient(cc).Stats(context.Background(), &pb.StatsRequest{})
		if status.Code(err) != codes.FailedPrecondition || !errors.Is(fromRPCError(err), ErrIncompatible) {
			t.Fatalf("err = %v, want FailedPrecondition/ErrIncompatible", err)
		}
		// Health needs no handshake.
		if _, err := pb.NewWorkerClient(cc).Health(context.Background(), &pb.HealthRequest{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("client refuses a server of another model", func(t *testing.T) {
		fake := startFake(t, &fakeWorker{experts: func(s pb.Worker_ExpertsServer) error {
			s.SetHeader(metadata.Pairs(MDProtocol, fmt.Sprint(cluster.ProtocolVersion), MDModel, "mixtral-000000000000"))
			f, err := s.Recv()
			if err != nil {
				return err
			}
			return s.Send(&pb.ExpertFrame{RequestId: f.RequestId, Last: true})
		}})
		pl := placement(1, 1, 1, func(int) bool { return true }, []*testWorker{fake}, func(int, int) []int { return []int{0} })
		err := compute(ClientConfig{}, pl)
		if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), `server serves "mixtral-000000000000", we run "`+testModel+`"`) {
			t.Fatalf("err = %v, want ErrIncompatible naming both models", err)
		}
	})
}

// fakeWorker is a Worker service with a scripted Experts handler and no
// handshake checks.
type fakeWorker struct {
	pb.UnimplementedWorkerServer
	experts func(pb.Worker_ExpertsServer) error
	streams atomic.Int32
}

func (f *fakeWorker) Experts(s pb.Worker_ExpertsServer) error {
	f.streams.Add(1)
	return f.experts(s)
}

// startFake serves f on 127.0.0.1:0 until the test ends.
func startFake(t *testing.T, f *fakeWorker) *testWorker {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.ForceServerCodecV2(wire.Codec{}))
	pb.RegisterWorkerServer(g, f)
	done := make(chan struct{})
	go func() { g.Serve(lis); close(done) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return &testWorker{id: "fake", addr: lis.Addr().String()}
}

// hang is an Experts handler that reads nothing and answers nothing until
// the caller gives up.
func hang(s pb.Worker_ExpertsServer) error {
	<-s.Context().Done()
	return s.Context().Err()
}

// A caller whose placement is stale gets NOT_OWNED or STALE_PLACEMENT,
// re-reads the placement and succeeds; if the placement never catches up,
// it gives up after MaxStaleRetries refreshes with an error that says so.
func TestStalePlacementRefreshesAndRetries(t *testing.T) {
	const L, E, D, layer = 2, 8, 16, 1
	moe := func(l int) bool { return l == layer }
	var ids [2][]expert.ID
	for e := 0; e < E; e++ {
		ids[e/4] = append(ids[e/4], expert.ID{Layer: layer, Expert: e})
	}
	w0 := startWorker(t, "w0", taggedStore(ids[0]...), ServerConfig{Hidden: D}, tagHook(0))
	w1 := startWorker(t, "w1", taggedStore(ids[1]...), ServerConfig{Hidden: D}, tagHook(1))
	workers := []*testWorker{w0, w1}
	before := func(_, e int) []int { return []int{e / 4} }
	after := func(_, e int) []int { // expert 2 moved to w1
		if e == 2 {
			return []int{1}
		}
		return []int{e / 4}
	}
	pool := newPool(t, ClientConfig{Worker: "c0", MaxStaleRetries: 2, LoadWait: 300 * time.Millisecond})
	plan := route(40, E, 2, 3) // 80 rows: every expert has some
	x := taggedInput(0, 40, D, 1)
	run := func(src PlacementSource, owners func(l, e int) []int) error {
		y := make([]float32, plan.Len()*D)
		err := NewRemoteExecutor(src, pool).Compute(context.Background(), layer, plan, x, D, y)
		if err == nil {
			checkTagged(t, 0, layer, plan, x, y, D, func(e int) []int { return owners(layer, e) })
		}
		return err
	}

	// 1. w1 loads expert 2 and w0 drops it, before the caller hears of it.
	// (What a worker's placement follower does on a new placement.)
	w1.store.Put(expert.ID{Layer: layer, Expert: 2}, &expert.FFN{})
	w0.store.Delete(expert.ID{Layer: layer, Expert: 2})
	old, moved := placement(1, L, E, moe, workers, before), placement(2, L, E, moe, workers, after)
	src := NewCachedPlacement(old, func(context.Context) (*cluster.Placement, error) { return moved, nil })
	if err := run(src, after); err != nil {
		t.Fatal(err)
	}
	if src.Refreshes() != 1 || src.Current().Epoch != 2 {
		t.Fatalf("%d refreshes, epoch %d: want 1 refresh to epoch 2", src.Refreshes(), src.Current().Epoch)
	}

	// 2. The workers move to epoch 3 (no owner changes): epoch-2 callers are stale.
	w0.srv.SetEpoch(3)
	w1.srv.SetEpoch(3)
	epoch3 := placement(3, L, E, moe, workers, after)
	src = NewCachedPlacement(moved, func(context.Context) (*cluster.Placement, error) { return epoch3, nil })
	if err := run(src, after); err != nil {
		t.Fatal(err)
	}
	if src.Refreshes() != 1 {
		t.Fatalf("%d refreshes, want 1", src.Refreshes())
	}

	// 3. The authority never catches up: bounded retries, a clear error.
	src = NewCachedPlacement(old, func(context.Context) (*cluster.Placement, error) { return old, nil })
	err := run(src, after)
	if !errors.Is(err, cluster.ErrStalePlacement) || src.Refreshes() != 2 || !strings.Contains(err.Error(), "layer 1 to worker w") ||
		!strings.Contains(err.Error(), "still stale after 2 placement refreshes") {
		t.Fatalf("err = %v after %d refreshes; want ErrStalePlacement naming the worker after 2", err, src.Refreshes())
	}
	// Epoch 1 < 3: the worker reports the stale epoch before ownership.
	if !strings.Contains(err.Error(), "placement epoch 1, worker is at epoch 3") {
		t.Errorf("error %q does not give both epochs", err)
	}

	// 4. Not owned, same epoch: the error satisfies both sentinels.
	stale := placement(3, L, E, moe, workers, before)
	src = NewCachedPlacement(stale, func(context.Context) (*cluster.Placement, error) { return stale, nil })
	err = run(src, before)
	if !errors.Is(err, expert.ErrNotOwned) || !errors.Is(err, cluster.ErrStalePlacement) || !strings.Contains(err.Error(), "experts [2]") {
		t.Fatalf("err = %v, want ErrNotOwned and ErrStalePlacement naming expert 2", err)
	}
}

// A peer that accepts connections but never answers fails the call within
// its deadline, with an error naming the worker and its address.
func TestUnresponsivePeerFailsWithinDeadline(t *testing.T) {
	const D = 8
	plan := route(6, 2, 1, 1)
	x := taggedInput(0, 6, D, 1)

	blackhole, err := net.Listen("tcp", "127.0.0.1:0") // accepts (kernel backlog), never speaks HTTP/2
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := blackhole.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		blackhole.Close()
		<-acceptDone
		for _, c := range held {
			c.Close()
		}
	})

	for _, tc := range []struct {
		name     string
		worker   *testWorker
		deadline time.Duration // from ctx; 0: ClientConfig.CallTimeout
	}{
		{"handler blocks, default call timeout", startFake(t, &fakeWorker{experts: hang}), 0},
		{"no HTTP/2, ctx deadline", &testWorker{id: "silent", addr: blackhole.Addr().String()}, 400 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := placement(1, 1, 2, func(int) bool { return true }, []*testWorker{tc.worker}, func(int, int) []int { return []int{0} })
			ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{CallTimeout: 400 * time.Millisecond}))
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			start := time.Now()
			err := ex.Compute(ctx, 0, plan, x, D, make([]float32, plan.Len()*D))
			took := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrPeerUnavailable) {
				t.Fatalf("err = %v, want a deadline error", err)
			}
			if took < 350*time.Millisecond || took > 400*time.Millisecond+2*time.Second {
				t.Fatalf("call returned after %v, want about 400ms", took)
			}
			for _, m := range []string{string(tc.worker.id), tc.worker.addr, "layer 0"} {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not name %q", err, m)
				}
			}
			t.Logf("failed after %v: %v", took.Round(time.Millisecond), err)
		})
	}
}

// With two replicas of every expert, losing one (crashed, or hung past the
// attempt timeout) does not fail calls; losing both fails them with an
// error naming the layer, the workers and their addresses.
func TestReplicaFailover(t *testing.T) {
	const L, E, D, layer = 2, 4, 16, 1
	moe := func(l int) bool { return l == layer }
	all := func(tag int) *expert.Store {
		s := taggedStore()
		for e := 0; e < E; e++ {
			s.Put(expert.ID{Layer: layer, Expert: e}, &expert.FFN{})
		}
		return s
	}
	plan := route(24, E, 2, 7)
	x := taggedInput(0, 24, D, 2)

	t.Run("crashed replica", func(t *testing.T) {
		w0 := startWorker(t, "w0", all(0), ServerConfig{Hidden: D}, tagHook(0))
		w1 := startWorker(t, "w1", all(1), ServerConfig{Hidden: D}, tagHook(1))
		pl := placement(1, L, E, moe, []*testWorker{w0, w1}, func(int, int) []int { return []int{0, 1} })
		ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{}))
		y := make([]float32, plan.Len()*D)
		if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
			t.Fatal(err)
		}
		if by := checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{0, 1} }); len(by) != 2 {
			t.Errorf("rows served by %v: want the load spread over both replicas", by)
		}
		w0.crash()
		clear(y)
		if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
			t.Fatal(err)
		}
		checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{1} })

		w1.crash()
		err := ex.Compute(context.Background(), layer, plan, x, D, y)
		if !errors.Is(err, ErrNoReplica) || !errors.Is(err, ErrPeerUnavailable) {
			t.Fatalf("err = %v, want ErrNoReplica after peer failures", err)
		}
		for _, m := range []string{"layer 1", "w0", w0.addr, "w1", w1.addr} {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("error %q does not name %q", err, m)
			}
		}
	})

	t.Run("hung primary", func(t *testing.T) {
		hung := &fakeWorker{experts: hang}
		wh := startFake(t, hung)
		wh.id = "hung"
		w1 := startWorker(t, "w1", all(1), ServerConfig{Hidden: D}, tagHook(1))
		pl := placement(1, L, E, moe, []*testWorker{wh, w1}, func(int, int) []int { return []int{0, 1} })
		pool := newPool(t, ClientConfig{AttemptTimeout: 300 * time.Millisecond})
		ex := NewRemoteExecutor(NewStaticPlacement(pl), pool)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i := 0; i < 2; i++ {
			y := make([]float32, plan.Len()*D)
			start := time.Now()
			if err := ex.Compute(ctx, layer, plan, x, D, y); err != nil {
				t.Fatal(err)
			}
			checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{1} })
			t.Logf("call %d took %v", i, time.Since(start).Round(time.Millisecond))
		}
		// The second call avoided the worker that failed the first.
		if n := hung.streams.Load(); n != 1 {
			t.Errorf("hung worker got %d streams, want 1", n)
		}
	})
}

// A front end decoding one sequence has nothing in flight when a layer's
// call begins, so an expert's copies tie: the ties rotate from call to
// call, and the second copies serve half the calls instead of none (the
// first call still starts at the primary).
func TestReplicaTiesRotate(t *testing.T) {
	const L, E, D, layer = 2, 4, 16, 1
	moe := func(l int) bool { return l == layer }
	w0 := startWorker(t, "w0", layerStore(layer, E), ServerConfig{Hidden: D}, tagHook(0))
	w1 := startWorker(t, "w1", layerStore(layer, E), ServerConfig{Hidden: D}, tagHook(1))
	pl := placement(1, L, E, moe, []*testWorker{w0, w1}, func(int, int) []int { return []int{0, 1} })
	ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{}))
	calls := map[int]int{} // owner tag -> calls it served
	for i := 0; i < 10; i++ {
		plan := route(1, E, 1, uint64(i)) // one token, one expert: one destination
		x := taggedInput(0, 1, D, uint64(i))
		y := make([]float32, plan.Len()*D)
		if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
			t.Fatal(err)
		}
		by := checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{0, 1} })
		if len(by) != 1 {
			t.Fatalf("call %d: rows served by %v, want one copy", i, by)
		}
		for w := range by {
			calls[w]++
			if i == 0 && w != 0 {
				t.Errorf("the first call went to copy %d, want the primary", w)
			}
		}
	}
	if calls[0] != 5 || calls[1] != 5 {
		t.Errorf("10 one-expert calls served by copy: %v, want 5 each", calls)
	}
}

// Malformed requests end the stream with INVALID_ARGUMENT and ErrBadRequest.
func TestMalformedRequestsAreRefused(t *testing.T) {
	const D = 8
	w := startWorker(t, "w0", taggedStore(expert.ID{Layer: 0, Expert: 0}), ServerConfig{Hidden: D}, tagHook(0))
	cli, err := newPool(t, ClientConfig{}).Client(w.id, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	good := func() *pb.ExpertFrame {
		return &pb.ExpertFrame{RequestId: 1, Last: true, Experts: []int32{0}, Rows: []int32{2}, Dtype: pb.DType_DTYPE_F32,
			Shape: []int64{2, D}, Payload: make([]byte, 2*D*4)}
	}
	for _, tc := range []struct {
		name    string
		edit    func(f *pb.ExpertFrame)
		mention string
	}{
		{"ok", func(*pb.ExpertFrame) {}, ""},
		{"wrong width", func(f *pb.ExpertFrame) { f.Shape = []int64{2, D + 1} }, "want [2 8]"},
		{"bf16", func(f *pb.ExpertFrame) { f.Dtype = pb.DType_DTYPE_BF16 }, "BF16"},
		{"short payload", func(f *pb.ExpertFrame) { f.Payload = f.Payload[:10] }, "10 payload bytes"},
		{"unsorted experts", func(f *pb.ExpertFrame) { f.Experts, f.Rows = []int32{3, 0}, []int32{1, 1} }, "ascending"},
		{"late chunk", func(f *pb.ExpertFrame) { f.Chunk = 2 }, "chunk 2"},
		{"unknown phase", func(f *pb.ExpertFrame) { f.Phase = 9 }, "phase 9"},
		{"training without source", func(f *pb.ExpertFrame) { f.Phase, f.TrainSeq = pb.Phase_PHASE_TRAIN_FORWARD, 1 }, "training forward without a source"},
		{"training without seq", func(f *pb.ExpertFrame) { f.Phase, f.Source = pb.Phase_PHASE_TRAIN_BACKWARD, "c0" }, "training backward without a train_seq"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := cli.Experts(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			f := good()
			tc.edit(f)
			if err := s.Send(f); err != nil {
				t.Fatal(err)
			}
			s.CloseSend()
			resp, err := s.Recv()
			if tc.mention == "" {
				if err != nil || resp.Error != nil || len(resp.Payload) != 2*D*4 {
					t.Fatalf("good request: %v, %v", resp, err)
				}
				if _, err := s.Recv(); err != io.EOF {
					t.Fatalf("after the response: %v, want EOF", err)
				}
				return
			}
			if !errors.Is(err, ErrBadRequest) || status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v (code %v), want ErrBadRequest mentioning %q", err, status.Code(err), tc.mention)
			}
		})
	}
}

// The payload field number in raw.go matches worker.proto.
func TestExpertFrameRawPayloadField(t *testing.T) {
	f := &pb.ExpertFrame{}
	fd := f.ProtoReflect().Descriptor().Fields().ByName("payload")
	if fd == nil || fd.Number() != f.RawPayloadField() {
		t.Fatalf("payload field %v, RawPayloadField %d", fd, f.RawPayloadField())
	}
	var _ wire.RawMessage = f
}

func TestPlacementProtoRoundTrip(t *testing.T) {
	ws := []*testWorker{{id: "a", addr: "h:1"}, {id: "b", addr: "h:2"}}
	p := placement(7, 3, 2, func(l int) bool { return l != 1 }, ws, func(l, e int) []int { return []int{e, 1 - e} })
	q := PlacementFromProto(PlacementToProto(p))
	if fmt.Sprint(q.Owners) != fmt.Sprint(p.Owners) || q.Epoch != 7 || q.Model != p.Model || q.Workers["b"] != p.Workers["b"] {
		t.Fatalf("round trip: %+v, want %+v", q, p)
	}
}

func TestConfigErrorsListEveryProblem(t *testing.T) {
	_, err := NewPool(ClientConfig{ChunkBytes: 1 << 20, MaxMessageBytes: 1 << 20, WindowChunks: 1})
	for _, m := range []string{"Model", "MaxMessageBytes", "WindowChunks"} {
		if err == nil || !strings.Contains(err.Error(), m) {
			t.Errorf("NewPool error %v does not mention %s", err, m)
		}
	}
	_, err = NewExpertServer(expert.NewStore(), ServerConfig{})
	for _, m := range []string{"Model", "Hidden"} {
		if err == nil || !strings.Contains(err.Error(), m) {
			t.Errorf("NewExpertServer error %v does not mention %s", err, m)
		}
	}
}

// waitFor waits until cond holds (polling), failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// Shutdown lets a request in flight finish, reports DRAINING, and callers
// then move to the other replica.
func TestGracefulShutdownFinishesInFlightRequests(t *testing.T) {
	const D, layer = 16, 0
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	blockOnce := func(id expert.ID, f *expert.FFN, x []float32, d int, y []float32) {
		once.Do(func() { close(started); <-release })
		tagHook(0)(id, f, x, d, y)
	}
	w0 := startWorker(t, "w0", taggedStore(expert.ID{Layer: layer, Expert: 0}), ServerConfig{Hidden: D}, blockOnce)
	w1 := startWorker(t, "w1", taggedStore(expert.ID{Layer: layer, Expert: 0}), ServerConfig{Hidden: D}, tagHook(1))
	pl := placement(1, 1, 1, func(int) bool { return true }, []*testWorker{w0, w1}, func(int, int) []int { return []int{0, 1} })
	pool := newPool(t, ClientConfig{})
	ex := NewRemoteExecutor(NewStaticPlacement(pl), pool)
	plan := route(10, 1, 1, 1)
	x := taggedInput(0, 10, D, 1)

	y := make([]float32, plan.Len()*D)
	callErr := make(chan error, 1)
	go func() { callErr <- ex.Compute(context.Background(), layer, plan, x, D, y) }()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- w0.srv.Shutdown(context.Background()) }()
	waitFor(t, "w0 draining", w0.srv.draining.Load)
	h, err := w0.srv.Health(context.Background(), &pb.HealthRequest{})
	if err != nil || h.Status != pb.ServingStatus_SERVING_STATUS_DRAINING {
		t.Fatalf("health while draining = %v, %v", h, err)
	}
	close(release)
	if err := <-callErr; err != nil {
		t.Fatalf("in-flight call: %v", err)
	}
	checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{0} })
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
		t.Fatal(err)
	}
	checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{1} })
}

// A copy that answers NOT_OWNED (its worker is still loading the expert the
// placement just gave it) sends the rows to another copy at once, without
// a placement refresh; a copy on a worker that left the cluster (SetLive)
// is not tried, and an expert with no live copy fails the call at once
// with an *UnavailableError naming the expert.
func TestNotOwnedGoesToAnotherCopyAndLeftWorkersFailFast(t *testing.T) {
	const L, E, D, layer = 2, 4, 16, 1
	moe := func(l int) bool { return l == layer }
	plan := route(24, E, 2, 11)
	x := taggedInput(0, 24, D, 3)

	full := taggedStore()
	for e := 0; e < E; e++ {
		full.Put(expert.ID{Layer: layer, Expert: e}, &expert.FFN{})
	}
	loading := startWorker(t, "loading", taggedStore(), ServerConfig{Hidden: D}, tagHook(0)) // holds nothing yet
	old := startWorker(t, "old", full, ServerConfig{Hidden: D}, tagHook(1))
	// The new owner is listed first (primary), the old copy second.
	pl := placement(1, L, E, moe, []*testWorker{loading, old}, func(int, int) []int { return []int{0, 1} })
	src := NewStaticPlacement(pl)
	ex := NewRemoteExecutor(src, newPool(t, ClientConfig{}))
	y := make([]float32, plan.Len()*D)
	for i := 0; i < 3; i++ {
		if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
			t.Fatal(err)
		}
		checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{1} })
	}

	// The old copy's worker leaves: only the loading one remains, so the
	// call waits for it within its deadline, then fails naming the experts.
	ex.SetLive(func(w cluster.WorkerID) bool { return w != "old" })
	start := time.Now()
	dctx, dcancel := context.WithTimeout(context.Background(), time.Second)
	err := ex.Compute(dctx, layer, plan, x, D, y)
	dcancel()
	var ue *UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, expert.ErrUnavailable) || !errors.Is(err, ErrNoReplica) {
		t.Fatalf("err = %v, want an *UnavailableError", err)
	}
	if len(ue.Experts) == 0 || ue.Layer != layer || !ue.Loading || !strings.Contains(err.Error(), "L1/E") ||
		!strings.Contains(err.Error(), "left the cluster") || !strings.Contains(err.Error(), "still loading") {
		t.Fatalf("error %q does not name the layer's experts, the worker that left and the copy still loading", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("failing took %v, want a fast failure", took)
	}

	// Both copies' workers left: no exchange is attempted at all.
	ex.SetLive(func(cluster.WorkerID) bool { return false })
	start = time.Now()
	err = ex.Compute(context.Background(), layer, plan, x, D, y)
	if !errors.As(err, &ue) || len(ue.Experts) != countRouted(plan, E) {
		t.Fatalf("err = %v, want every routed expert named", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("failing took %v with no live copy, want at once", took)
	}
}

func countRouted(plan interface{ Rows(int) (int, int) }, experts int) int {
	n := 0
	for e := 0; e < experts; e++ {
		if lo, hi := plan.Rows(e); hi > lo {
			n++
		}
	}
	return n
}

// Calls reuse one persistent stream per destination (no stream set-up per
// layer); a worker that restarts on the same address is reached again on a
// fresh stream without failing a call; and a worker whose callers hold
// idle streams shuts down at once instead of waiting for them.
func TestPersistentStreams(t *testing.T) {
	const L, E, D, layer = 2, 4, 16, 1
	moe := func(l int) bool { return l == layer }
	full := func() *expert.Store {
		s := taggedStore()
		for e := 0; e < E; e++ {
			s.Put(expert.ID{Layer: layer, Expert: e}, &expert.FFN{})
		}
		return s
	}
	w0 := startWorker(t, "w0", full(), ServerConfig{Hidden: D}, tagHook(0))
	w1 := startWorker(t, "w1", full(), ServerConfig{Hidden: D}, tagHook(1))
	pl := placement(1, L, E, moe, []*testWorker{w0, w1}, func(_, e int) []int { return []int{e % 2} })
	ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{}))
	plan := route(16, E, 2, 5)
	x := taggedInput(0, 16, D, 9)
	y := make([]float32, plan.Len()*D)
	for i := 0; i < 50; i++ {
		if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
			t.Fatal(err)
		}
		checkTagged(t, 0, layer, plan, x, y, D, func(e int) []int { return []int{e % 2} })
	}
	if a, b := w0.srv.Streams(), w1.srv.Streams(); a != 1 || b != 1 {
		t.Errorf("50 sequential calls opened %d and %d streams, want 1 per destination", a, b)
	}

	// w1 restarts on the same address: its old stream is dead.
	addr := w1.addr
	w1.crash()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot rebind %s: %v", addr, err)
	}
	srv, err := NewExpertServer(full(), ServerConfig{Worker: "w1", Model: testModel, Hidden: D})
	if err != nil {
		t.Fatal(err)
	}
	srv.compute = tagHook(1)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
		t.Fatalf("first call after the restart: %v", err)
	}
	checkTagged(t, 0, layer, plan, x, y, D, func(e int) []int { return []int{e % 2} })

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown with an idle caller stream: %v", err)
	}
	<-done
	if took := time.Since(start); took > time.Second {
		t.Errorf("shutdown took %v with only idle streams open", took)
	}
}

// An owner that lacks only some of a request's experts (it is loading
// them) keeps serving the others: only the missing experts go to another
// copy. An expert whose only copy is still loading is waited for, within
// the call's deadline, and served once loaded.
func TestPartlyLoadedOwner(t *testing.T) {
	const L, E, D, layer = 2, 4, 16, 1
	moe := func(l int) bool { return l == layer }
	half := taggedStore(expert.ID{Layer: layer, Expert: 0}, expert.ID{Layer: layer, Expert: 1})
	full := taggedStore()
	for e := 0; e < E; e++ {
		full.Put(expert.ID{Layer: layer, Expert: e}, &expert.FFN{})
	}
	a := startWorker(t, "a", half, ServerConfig{Hidden: D}, tagHook(0))
	b := startWorker(t, "b", full, ServerConfig{Hidden: D}, tagHook(1))
	// a is every expert's first copy; its rows-in-flight tie-break keeps
	// choosing it first.
	pl := placement(1, L, E, moe, []*testWorker{a, b}, func(int, int) []int { return []int{0, 1} })
	ex := NewRemoteExecutor(NewStaticPlacement(pl), newPool(t, ClientConfig{}))
	plan := route(32, E, 2, 3)
	x := taggedInput(0, 32, D, 4)
	y := make([]float32, plan.Len()*D)
	if err := ex.Compute(context.Background(), layer, plan, x, D, y); err != nil {
		t.Fatal(err)
	}
	by := checkTagged(t, 0, layer, plan, x, y, D, func(e int) []int {
		if e < 2 {
			return []int{0, 1}
		}
		return []int{1}
	})
	t.Logf("rows served by owner: %v", by)

	// Only a (still loading expert 3) is left for expert 3: the call waits
	// until a holds it.
	ex.SetLive(func(w cluster.WorkerID) bool { return w == "a" })
	go func() {
		time.Sleep(300 * time.Millisecond)
		half.Put(expert.ID{Layer: layer, Expert: 2}, &expert.FFN{})
		half.Put(expert.ID{Layer: layer, Expert: 3}, &expert.FFN{})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := ex.Compute(ctx, layer, plan, x, D, y); err != nil {
		t.Fatalf("after the copy loaded: %v", err)
	}
	checkTagged(t, 0, layer, plan, x, y, D, func(int) []int { return []int{0} })
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("served after %v, before the copy was loaded?", took)
	}
}

// A request header that declares a large tensor costs the owner only the
// bytes that actually arrive: the request's buffer is taken once the whole
// payload is in. (Before, a header alone made the owner allocate what it
// declared.)
func TestDeclaredSizeIsNotAllocatedAhead(t *testing.T) {
	const D, rows = 1024, 32 << 10 // 128 MiB declared
	w := startWorker(t, "w0", taggedStore(expert.ID{Layer: 0, Expert: 0}), ServerConfig{Hidden: D}, nil)
	pool := newPool(t, ClientConfig{})
	c, err := pool.Client(w.id, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const streams = 4
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < streams; i++ {
		st, err := c.Experts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		head := &pb.ExpertFrame{RequestId: uint64(i + 1), Layer: 0, Experts: []int32{0}, Rows: []int32{rows}, Epoch: 1,
			Dtype: pb.DType_DTYPE_F32, Shape: []int64{rows, D}, Payload: make([]byte, 4096)}
		if err := st.Send(head); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the owner to read the headers", func() bool { return w.srv.active.Load() == streams })
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d headers declaring %d MiB each: heap grew %.1f MiB", streams, rows*D*4>>20, float64(grew)/(1<<20))
	if grew > 64<<20 {
		t.Fatalf("heap grew %d MiB for %d headers of %d MiB: the declared sizes were allocated ahead of their payloads", grew>>20, streams, rows*D*4>>20)
	}
}
