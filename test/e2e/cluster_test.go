package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/cli"
	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/internal/status"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// counts are per-worker, per-expert token counters.
type counts map[cluster.WorkerID]map[expert.ID]uint64

// workerCounts asks every worker of p for its counters (Stats RPC).
func workerCounts(t *testing.T, ctx context.Context, pool *transport.Pool, p *cluster.Placement) counts {
	t.Helper()
	out := counts{}
	for _, id := range p.WorkerIDs() {
		c, err := pool.Client(id, p.Workers[id].Addr)
		if err != nil {
			t.Fatal(err)
		}
		st, err := c.Stats(ctx, &pb.StatsRequest{})
		if err != nil {
			t.Fatalf("stats of %s: %v", id, err)
		}
		out[id] = map[expert.ID]uint64{}
		for _, e := range st.Experts {
			out[id][expert.ID{Layer: int(e.Layer), Expert: int(e.Expert)}] = e.Tokens
		}
	}
	return out
}

// checkRouting is the cross-process tagged check: every (token, choice)
// the client's router made at layer l for expert e must have been counted
// by e's owner in p, and by no other worker. before/after are the
// workers' counters around the forward pass.
func checkRouting(t *testing.T, out *model.Output, p *cluster.Placement, before, after counts) int {
	t.Helper()
	want := counts{}
	rows := 0
	for l, r := range out.Routing {
		if r == nil {
			continue
		}
		for _, e := range r.IDs[:r.T*r.K] {
			id := expert.ID{Layer: l, Expert: int(e)}
			owners := p.OwnersOf(id)
			if len(owners) != 1 {
				t.Fatalf("%v has owners %v, want one", id, owners)
			}
			if want[owners[0]] == nil {
				want[owners[0]] = map[expert.ID]uint64{}
			}
			want[owners[0]][id]++
			rows++
		}
	}
	for _, w := range p.WorkerIDs() {
		ids := map[expert.ID]bool{}
		for id := range after[w] {
			ids[id] = true
		}
		for id := range want[w] {
			ids[id] = true
		}
		for id := range ids {
			if got := after[w][id] - before[w][id]; got != want[w][id] {
				t.Errorf("worker %s counted %d rows for %v, the client routed %d there", w, got, id, want[w][id])
			}
		}
	}
	return rows
}

// TestServeKillJoin is the life of a cluster: three worker processes
// serve a DeepSeek-V3 model's 48 experts; a forward pass through them
// matches the in-process run and every routed row is counted by the owner
// the placement names; status shows it all; a SIGKILLed worker leaves etcd
// within its lease TTL and its experts are re-placed on the survivors, after
// which a forward pass works again; a joining worker receives its share
// and serves, and callers with a stale or wrong placement re-read it and
// retry.
func TestServeKillJoin(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := synth(t, deepseekV3(), "BF16", 11)
	const ttl = 2 * time.Second
	lc := startCluster(t, ctx, localcluster.Options{ModelDir: dir, Workers: 3, LeaseTTL: ttl, StatsInterval: 100 * time.Millisecond})
	fp := lc.Model.Fingerprint

	p0, err := lc.WaitServing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("placement epoch %d: %v", p0.Epoch, placement.Counts(p0))
	cl, err := lc.NewClient(transport.ClientConfig{Worker: "test", MaxStaleRetries: 10}, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	local, remote := loadPair(t, dir, cl.Executor)
	ids := batch(local.Cfg.Vocab)
	want, err := forward(ctx, local, ids)
	if err != nil {
		t.Fatal(err)
	}

	// Serve: logits match, every row reached its owner.
	before := workerCounts(t, ctx, lc.Pool, p0)
	got, err := forward(ctx, remote, ids)
	if err != nil {
		t.Fatal(err)
	}
	sameLogits(t, got, want)
	rows := checkRouting(t, got, p0, before, workerCounts(t, ctx, lc.Pool, p0))
	t.Logf("%d routed rows, each counted by its owner only", rows)

	// Status: workers with leases, the placement, token counts (text, JSON).
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := lc.Registry.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var sum uint64
		for _, s := range st {
			for _, c := range s.Tokens {
				sum += c.Tokens
			}
		}
		if sum == uint64(rows) && len(st) == 3 {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("token counts in etcd sum to %d, want %d: %+v", sum, rows, st)
		}
	}
	text := runStatus(t, ctx, lc, false)
	t.Logf("switchyard status:\n%s", text)
	for _, s := range []string{"3 workers", "w1", "w2", "w3", "/2s", fmt.Sprintf("placement epoch %d", p0.Epoch), "tokens per expert", fmt.Sprintf("%d", rows/3)} {
		if !strings.Contains(text, s) {
			t.Errorf("status text lacks %q", s)
		}
	}
	js := readJSON(t, runStatus(t, ctx, lc, true))
	models := js["models"].([]any)
	tokens := models[0].(map[string]any)["tokens"].([]any)
	if len(js["workers"].([]any)) != 3 || len(tokens) == 0 || js["workers"].([]any)[0].(map[string]any)["granted_ttl_seconds"].(float64) != ttl.Seconds() {
		t.Errorf("status --json: %v", js)
	}

	// SIGKILL w2: its key leaves etcd within the TTL, its experts move.
	victim := lc.Proc("w2")
	killed := time.Now()
	victim.Kill()
	if _, err := lc.Registry.WaitWorkers(ctx, func(s registry.WorkerSet) bool { return !slices.Contains(s.IDs(), "w2") }); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(killed)
	p1, err := lc.WaitServing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	replaced := time.Since(killed)
	t.Logf("SIGKILL w2: key gone after %v (lease TTL %v), experts re-placed and served at epoch %d after %v: %v",
		gone.Round(time.Millisecond), ttl, p1.Epoch, replaced.Round(time.Millisecond), placement.Counts(p1))
	if gone > ttl+time.Second {
		t.Errorf("w2's key outlived its %v lease by %v", ttl, gone-ttl)
	}
	if p1.Epoch <= p0.Epoch || p1.Validate() != nil || len(p1.Owned("w2")) != 0 || len(p1.Workers) != 2 {
		t.Fatalf("placement after the kill: epoch %d workers %v", p1.Epoch, p1.WorkerIDs())
	}
	got, err = forward(ctx, remote, ids)
	if err != nil {
		t.Fatalf("forward after re-placement: %v", err)
	}
	sameLogits(t, got, want)

	// A fourth worker joins, receives its share and serves.
	if _, err := lc.StartWorker(ctx, "w4"); err != nil {
		t.Fatal(err)
	}
	p2, err := lc.WaitServing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := placement.Counts(p2)
	t.Logf("w4 joined: epoch %d: %v", p2.Epoch, c)
	if c["w4"] < 15 || c["w1"]+c["w3"]+c["w4"] != 48 || max(c["w1"], c["w3"], c["w4"])-min(c["w1"], c["w3"], c["w4"]) > 1 {
		t.Fatalf("unbalanced after w4 joined: %v", c)
	}

	// A caller still routing with the old placement: the experts that moved
	// to w4 were dropped by their old owners, which answer STALE_PLACEMENT;
	// the caller re-reads the placement and retries.
	stale := transport.NewCachedPlacement(p1, func(ctx context.Context) (*cluster.Placement, error) {
		p, _, err := lc.Registry.Placement(ctx, fp)
		return p, err
	})
	_, staleModel := loadPair(t, dir, transport.NewRemoteExecutor(stale, cl.Pool))
	before = workerCounts(t, ctx, lc.Pool, p2)
	got, err = forward(ctx, staleModel, ids)
	if err != nil {
		t.Fatalf("forward with a stale placement: %v", err)
	}
	sameLogits(t, got, want)
	after := workerCounts(t, ctx, lc.Pool, p2)
	if stale.Refreshes() == 0 || stale.Current().Epoch != p2.Epoch {
		t.Errorf("stale caller refreshed %d times, now at epoch %d", stale.Refreshes(), stale.Current().Epoch)
	}
	var w4rows uint64
	for id, n := range after["w4"] {
		w4rows += n - before["w4"][id]
	}
	if w4rows == 0 {
		t.Errorf("w4 computed no rows")
	}
	t.Logf("stale caller: %d placement refreshes; w4 computed %d rows", stale.Refreshes(), w4rows)

	// A caller whose placement names w4 as the owner of everything: w4
	// answers NOT_OWNED for what it does not hold, and the caller re-reads.
	wrong := *p2
	wrong.Owners = make([][][]cluster.WorkerID, len(p2.Owners))
	for l, row := range p2.Owners {
		for range row {
			wrong.Owners[l] = append(wrong.Owners[l], []cluster.WorkerID{"w4"})
		}
	}
	misled := transport.NewCachedPlacement(&wrong, stale.Refresh)
	_, misledModel := loadPair(t, dir, transport.NewRemoteExecutor(misled, cl.Pool))
	got, err = forward(ctx, misledModel, ids)
	if err != nil {
		t.Fatalf("forward with a wrong placement: %v", err)
	}
	sameLogits(t, got, want)
	if misled.Refreshes() == 0 {
		t.Errorf("misled caller never refreshed")
	}
}

// runStatus renders what `switchyard status` shows of the cluster.
func runStatus(t *testing.T, ctx context.Context, lc *localcluster.Cluster, asJSON bool) string {
	t.Helper()
	snap, err := status.Take(ctx, lc.Registry)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if asJSON {
		err = cli.StatusJSON(&out, snap)
	} else {
		err = cli.StatusText(&out, snap)
	}
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}

// TestRefusals: a worker process with another model, or another protocol
// version, is refused by the cluster and exits with a clear error; a data
// plane caller with another protocol or model is refused by the worker.
func TestRefusals(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := synth(t, deepseekV3(), "BF16", 11)
	other := deepseekV3()
	other["n_routed_experts"] = 8
	otherDir := synth(t, other, "BF16", 12)
	lc := startCluster(t, ctx, localcluster.Options{ModelDir: dir, Workers: 1})
	p, err := lc.WaitServing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fp := lc.Model.Fingerprint

	pr, err := lc.StartWorker(ctx, "alien", "--model", otherDir)
	if err == nil {
		t.Fatal("a worker with another model was accepted")
	}
	t.Logf("other model: %v", err)
	if !strings.Contains(pr.Log(), "model mismatch") || !strings.Contains(pr.Log(), fp) || pr.Err() == nil {
		t.Errorf("refusal of another model does not say so:\n%s", pr.Log())
	}
	pr, err = lc.StartWorker(ctx, "future", "--protocol", fmt.Sprint(cluster.ProtocolVersion+1))
	if err == nil {
		t.Fatal("a worker with another protocol was accepted")
	}
	t.Logf("other protocol: %v", err)
	if !strings.Contains(pr.Log(), "protocol version mismatch") || pr.Err() == nil {
		t.Errorf("refusal of another protocol does not say so:\n%s", pr.Log())
	}

	w1 := p.Workers["w1"]
	for _, tc := range []struct {
		name string
		cfg  transport.ClientConfig
		want string
	}{
		{"protocol", transport.ClientConfig{Model: fp, Protocol: cluster.ProtocolVersion + 1}, "protocol version mismatch"},
		{"model", transport.ClientConfig{Model: "deepseek_v3-000000000000"}, "model mismatch"},
	} {
		pool, err := transport.NewPool(tc.cfg)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := pool.Client(w1.ID, w1.Addr)
		_, err = c.Stats(ctx, &pb.StatsRequest{})
		pool.Close()
		if !errors.Is(err, transport.ErrIncompatible) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s mismatch: %v", tc.name, err)
		}
		t.Logf("data plane, %s mismatch: %v", tc.name, err)
	}
}

// TestStoppedPeer: a worker that stops answering (SIGSTOP) fails a call
// that needs it within the caller's deadline, with an error naming it;
// with two replicas the call succeeds on the other one.
func TestStoppedPeer(t *testing.T) {
	needE2E(t)
	dir := synth(t, deepseekV3(), "BF16", 11)
	for _, replicas := range []int{1, 2} {
		t.Run(fmt.Sprintf("replicas=%d", replicas), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			lc := startCluster(t, ctx, localcluster.Options{ModelDir: dir, Workers: 2, Replicas: replicas, LeaseTTL: 10 * time.Second})
			p, err := lc.WaitServing(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cl, err := lc.NewClient(transport.ClientConfig{Worker: "test", AttemptTimeout: 500 * time.Millisecond}, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			local, remote := loadPair(t, dir, cl.Executor)
			ids := batch(local.Cfg.Vocab)
			want, err := forward(ctx, local, ids)
			if err != nil {
				t.Fatal(err)
			}
			// Warm the connections, so the stopped peer is not just slow to dial.
			if _, err := forward(ctx, remote, ids); err != nil {
				t.Fatal(err)
			}

			w1 := lc.Proc("w1")
			if err := w1.Signal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer w1.Signal(syscall.SIGCONT)
			const deadline = 2 * time.Second
			cctx, ccancel := context.WithTimeout(ctx, deadline)
			start := time.Now()
			got, err := forward(cctx, remote, ids)
			took := time.Since(start)
			ccancel()
			if replicas == 1 {
				if err == nil {
					t.Fatal("a call needing a stopped worker succeeded")
				}
				t.Logf("failed after %v (deadline %v): %v", took.Round(time.Millisecond), deadline, err)
				if took > deadline+500*time.Millisecond {
					t.Errorf("the call took %v, past its %v deadline", took, deadline)
				}
				if !strings.Contains(err.Error(), "w1") || !strings.Contains(err.Error(), p.Workers["w1"].Addr) || !errors.Is(err, transport.ErrPeerUnavailable) {
					t.Errorf("error does not name the stopped worker w1 (%s): %v", p.Workers["w1"].Addr, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("with 2 replicas the call failed after %v: %v", took, err)
			}
			t.Logf("with w1 stopped, served by the other replica in %v", took.Round(time.Millisecond))
			sameLogits(t, got, want)
		})
	}
}

// TestWorkerRSS: a worker owning 1/N of the experts of a model whose
// experts dominate holds about 1/N of the expert bytes (no dense weights), measured
// as RSS against a worker of the same cluster that holds no expert (its
// memory budget admits none). So a model larger than one machine can be
// spread over several.
func TestWorkerRSS(t *testing.T) {
	needE2E(t)
	if raceEnabled {
		t.Skip("RSS is meaningless under the race detector")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// Mixtral-style, no shared expert: 4 layers x 32 experts of 3 x 512 x 768
	// bf16 weights (2.25 MiB each): 288 MiB of experts, ~10 MiB dense.
	hf := map[string]any{
		"model_type": "mixtral", "vocab_size": 1024, "hidden_size": 512, "intermediate_size": 768,
		"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
		"num_local_experts": 32, "num_experts_per_tok": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
		"max_position_embeddings": 128, "tie_word_embeddings": false,
	}
	dir := synth(t, hf, "BF16", 3)
	const N = 4
	lc := startCluster(t, ctx, localcluster.Options{ModelDir: dir, Workers: N})
	if _, err := lc.StartWorker(ctx, "w0-empty", "--mem", "1"); err != nil {
		t.Fatal(err)
	}
	p, err := lc.WaitServing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Serving starts before the drops of an epoch: wait until every worker
	// reports the epoch fully applied (dropped experts freed).
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := lc.Registry.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		done := 0
		for _, s := range st {
			if s.Epoch >= p.Epoch {
				done++
			}
		}
		if done == N+1 {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("workers have not applied epoch %d: %+v", p.Epoch, st)
		}
	}
	expertBytes := lc.Model.ExpertBytes * int64(len(lc.Model.MoELayers)*lc.Model.Experts)
	counts := placement.Counts(p)
	if counts["w0-empty"] != 0 {
		t.Fatalf("the zero-budget worker holds %d experts", counts["w0-empty"])
	}
	base := rssBytes(t, lc.Proc("w0-empty").Pid())
	t.Logf("model: %s of experts (%d x %s), %s dense; worker without experts: RSS %s",
		mib(expertBytes), len(lc.Model.MoELayers)*lc.Model.Experts, mib(lc.Model.ExpertBytes), mib(lc.Model.DenseBytes), mib(base))
	for i := 1; i <= N; i++ {
		id := cluster.WorkerID(fmt.Sprintf("w%d", i))
		held := int64(counts[id]) * lc.Model.ExpertBytes
		rss := rssBytes(t, lc.Proc(id).Pid())
		share := expertBytes / N
		limit := base + share + share/10 + 8<<20 // 10% + 8 MiB slack for allocator and buffers
		t.Logf("%s: %d experts, %s held, RSS %s = baseline + %s (limit %s; whole model %s)",
			id, counts[id], mib(held), mib(rss), mib(rss-base), mib(limit), mib(expertBytes+lc.Model.DenseBytes))
		if rss > limit {
			t.Errorf("%s: RSS %s exceeds baseline + 1/%d of the experts + slack = %s", id, mib(rss), N, mib(limit))
		}
		if rss-base < held*8/10 {
			t.Errorf("%s: RSS %s is less than baseline + 80%% of the %s it holds: is it measuring the right process?", id, mib(rss), mib(held))
		}
		if rss > base+expertBytes/2 {
			t.Errorf("%s: RSS %s not clearly below the whole model", id, mib(rss))
		}
	}
}
