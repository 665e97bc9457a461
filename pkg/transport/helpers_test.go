package transport

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitForGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines of pkg/transport still running after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// waitForGoroutines waits until no goroutine runs code of this package
// (servers, batchers, senders all stopped) and returns the offending stacks
// if some remain after limit.
func waitForGoroutines(limit time.Duration) string {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(limit)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "switchyard/pkg/transport.") && !strings.Contains(g, "transport.TestMain") &&
				!strings.Contains(g, "transport.waitForGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		<-tick.C
	}
}

const testModel = "qwen2_moe-test0000"

// testWorker is one ExpertServer on a real loopback socket.
type testWorker struct {
	id    cluster.WorkerID
	addr  string
	store *expert.Store
	srv   *ExpertServer
	done  chan error
}

// startWorker serves store on 127.0.0.1:0 until the test ends. hook, if not
// nil, replaces the expert computation (before serving starts).
func startWorker(t testing.TB, id cluster.WorkerID, store *expert.Store, cfg ServerConfig, hook func(expert.ID, *expert.FFN, []float32, int, []float32)) *testWorker {
	t.Helper()
	cfg.Worker = id
	if cfg.Model == "" {
		cfg.Model = testModel
	}
	srv, err := NewExpertServer(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if hook != nil {
		srv.compute = hook
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &testWorker{id: id, addr: lis.Addr().String(), store: store, srv: srv, done: make(chan error, 1)}
	go func() { w.done <- srv.Serve(lis) }()
	t.Cleanup(w.stop)
	return w
}

// stop shuts the worker down gracefully and waits for Serve to return.
func (w *testWorker) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.srv.Shutdown(ctx)
	<-w.done
	w.done <- nil // later stops return at once
}

// crash closes the worker's connections at once.
func (w *testWorker) crash() {
	w.srv.Stop()
	<-w.done
	w.done <- nil
}

// placement builds a placement over workers: owners(l, e) lists indices
// into workers (primary first) for MoE layers; layers where moe(l) is
// false get nil rows.
func placement(epoch cluster.Epoch, layers, experts int, moe func(l int) bool, workers []*testWorker, owners func(l, e int) []int) *cluster.Placement {
	p := &cluster.Placement{Model: testModel, Epoch: epoch, Owners: make([][][]cluster.WorkerID, layers), Workers: map[cluster.WorkerID]cluster.WorkerInfo{}}
	for _, w := range workers {
		p.Workers[w.id] = cluster.WorkerInfo{ID: w.id, Addr: w.addr, Protocol: cluster.ProtocolVersion, Model: testModel}
	}
	for l := 0; l < layers; l++ {
		if !moe(l) {
			continue
		}
		p.Owners[l] = make([][]cluster.WorkerID, experts)
		for e := 0; e < experts; e++ {
			for _, i := range owners(l, e) {
				p.Owners[l][e] = append(p.Owners[l][e], workers[i].id)
			}
		}
	}
	return p
}

// newPool returns a pool closed when the test ends.
func newPool(t testing.TB, cfg ClientConfig) *Pool {
	t.Helper()
	if cfg.Model == "" {
		cfg.Model = testModel
	}
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// route returns a plan for T tokens choosing K of E experts at random.
func route(T, E, K int, seed uint64) *router.Plan {
	r := rand.New(rand.NewPCG(seed, 9))
	logits := make([]float32, T*E)
	for i := range logits {
		logits[i] = float32(r.NormFloat64())
	}
	c := router.Config{NumExperts: E, TopK: K, Scoring: router.Softmax, Renormalize: true}
	var rt router.Routing
	c.Route(logits, T, nil, &rt)
	var p router.Plan
	p.Build(&rt)
	return &p
}

// Tagged rows: the caller writes its client tag in column 0 and the token
// index in column 1 of every row of x, random values after column 3; the
// tagging hook copies the row and writes layer*1000+expert in column 2 and
// the owner's tag in column 3. A row that took a wrong path shows.
const (
	colClient = iota
	colToken
	colExpert
	colOwner
	colData
)

func taggedInput(client, T, d int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, uint64(client)))
	x := make([]float32, T*d)
	for t := 0; t < T; t++ {
		row := x[t*d : (t+1)*d]
		row[colClient], row[colToken] = float32(client), float32(t)
		for j := colData; j < d; j++ {
			row[j] = float32(r.NormFloat64())
		}
	}
	return x
}

func tagHook(owner int) func(expert.ID, *expert.FFN, []float32, int, []float32) {
	return func(id expert.ID, _ *expert.FFN, x []float32, d int, y []float32) {
		for r := 0; r < len(y)/d; r++ {
			row := y[r*d : (r+1)*d]
			copy(row, x[r*d:(r+1)*d])
			row[colExpert] = float32(id.Layer*1000 + id.Expert)
			row[colOwner] = float32(owner)
		}
	}
}

// checkTagged verifies every plan row of y came back from an allowed owner
// of its expert, for the right client and token, with its data intact.
// owners(e) lists the owner tags allowed for expert e.
func checkTagged(t *testing.T, client, layer int, plan *router.Plan, x, y []float32, d int, owners func(e int) []int) map[int]int {
	t.Helper()
	servedBy := map[int]int{} // owner tag -> rows
	for e := 0; e < plan.NumExperts; e++ {
		lo, hi := plan.Rows(e)
		for r := lo; r < hi; r++ {
			tok := int(plan.Token[r])
			row, in := y[r*d:(r+1)*d], x[tok*d:(tok+1)*d]
			if int(row[colClient]) != client || int(row[colToken]) != tok || int(row[colExpert]) != layer*1000+e {
				t.Fatalf("client %d layer %d row %d (expert %d, token %d) came back as client %v token %v expert-tag %v",
					client, layer, r, e, tok, row[colClient], row[colToken], row[colExpert])
			}
			ok := false
			for _, o := range owners(e) {
				ok = ok || int(row[colOwner]) == o
			}
			if !ok {
				t.Fatalf("client %d layer %d expert %d row %d computed by worker tag %v, allowed %v", client, layer, e, r, row[colOwner], owners(e))
			}
			for j := colData; j < d; j++ {
				if row[j] != in[j] {
					t.Fatalf("client %d layer %d row %d column %d = %v, sent %v", client, layer, r, j, row[j], in[j])
				}
			}
			servedBy[int(row[colOwner])]++
		}
	}
	return servedBy
}

// taggedStore returns a store "holding" the given experts (placeholders:
// the tagging hook never reads weights).
func taggedStore(ids ...expert.ID) *expert.Store {
	s := expert.NewStore()
	for _, id := range ids {
		s.Put(id, &expert.FFN{})
	}
	return s
}

// layerStore is a tagged store holding experts 0..experts-1 of layer.
func layerStore(layer, experts int) *expert.Store {
	ids := make([]expert.ID, experts)
	for e := range ids {
		ids[e] = expert.ID{Layer: layer, Expert: e}
	}
	return taggedStore(ids...)
}

// randomFFN returns a real expert with small random weights.
func randomFFN(r *rand.Rand, d, f int) *expert.FFN {
	m := func(rows, cols int) tensor.Mat {
		v := make([]float32, rows*cols)
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.1)
		}
		return tensor.Mat{Rows: rows, Cols: cols, F32: v}
	}
	return &expert.FFN{Gate: m(f, d), Up: m(f, d), Down: m(d, f)}
}

// relDiff is max|a-b| / max|b|.
func relDiff(a, b []float32) float64 {
	var num, den float64
	for i := range b {
		num = max(num, abs64(float64(a[i])-float64(b[i])))
		den = max(den, abs64(float64(b[i])))
	}
	if den == 0 {
		return num
	}
	return num / den
}

func abs64(v float64) float64 {
	if v < 0 {
		return -v
	}
	return v
}
