package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/switchyard/switchyard/internal/tracing"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/transport"
)

// exchange measures the expert exchange's own cost between two hosts,
// without a model: an ExpertServer (-listen) holding -experts tiny
// experts of one layer (width -hidden, intermediate -inter: 16 makes their
// GEMMs cost microseconds) and a caller (-addr) that sends -n decode-sized requests
// (-tokens tokens, top -topk) through the real RemoteExecutor, one at a
// time, -gap apart. It prints the round trip per call and the owner's
// part of it (what it reports as served), so took - served is the
// exchange's own cost; SWITCHYARD_LANE_POLL and SWITCHYARD_EXPERT_LANES
// apply as in switchyard. -cpuprofile writes the caller's (or, with
// -listen, the server's until SIGINT/SIGTERM) CPU profile.
func exchange(args []string) error {
	fs := flag.NewFlagSet("exchange", flag.ExitOnError)
	listen := fs.String("listen", "", "serve the experts here")
	addr := fs.String("addr", "", "call the server here")
	experts := fs.Int("experts", 32, "experts of the layer")
	hidden := fs.Int("hidden", 1024, "model width D")
	inter := fs.Int("inter", 16, "expert intermediate width (16: GEMMs of microseconds; the model's, e.g. 2816, for GEMMs that stream weights from memory as a real layer's do)")
	tokens := fs.Int("tokens", 1, "tokens per call")
	topk := fs.Int("topk", 4, "experts per token")
	n := fs.Int("n", 2000, "calls")
	gap := fs.Duration("gap", 0, "idle time before each call (a decoding front end's attention between layers)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here")
	traceFile := fs.String("trace-file", "", "append OpenTelemetry spans here (both sides; the caller traces every call): expert.exchange and expert.serve split a call's time between the hosts")
	fs.Parse(args)
	role := "caller"
	if *listen != "" {
		role = "owner"
	}
	shutdown, err := tracing.Setup(context.Background(), tracing.Config{File: *traceFile}, "bench-exchange", role)
	if err != nil {
		return err
	}
	defer shutdown(context.Background())
	tracer := otel.Tracer("bench/serve")
	const model = "bench-exchange"
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if *listen != "" {
		r := rand.New(rand.NewPCG(1, 2))
		store := expert.NewStore()
		for e := 0; e < *experts; e++ {
			store.Put(expert.ID{Layer: 0, Expert: e}, randomFFN(r, *hidden, *inter))
		}
		srv, err := transport.NewExpertServer(store, transport.ServerConfig{Worker: "w1", Model: model, Hidden: *hidden})
		if err != nil {
			return err
		}
		lis, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		fmt.Printf("exchange: serving %d experts on %s\n", *experts, lis.Addr())
		go srv.Serve(lis)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		srv.Stop()
		return nil
	}
	pool, err := transport.NewPool(transport.ClientConfig{Worker: "fe", Model: model})
	if err != nil {
		return err
	}
	defer pool.Close()
	owners := make([][]cluster.WorkerID, *experts)
	for e := range owners {
		owners[e] = []cluster.WorkerID{"w1"}
	}
	pl := &cluster.Placement{Model: model, Epoch: 1, Owners: [][][]cluster.WorkerID{owners},
		Workers: map[cluster.WorkerID]cluster.WorkerInfo{"w1": {ID: "w1", Addr: *addr, Protocol: cluster.ProtocolVersion, Model: model}}}
	ex := transport.NewRemoteExecutor(transport.NewStaticPlacement(pl), pool)
	var took, served []float64
	var cur time.Duration
	ex.SetObserver(&transport.Observer{Exchange: func(_ int, _ cluster.WorkerID, _ int, t, s time.Duration, err error) {
		if err == nil {
			cur = s
		}
	}})
	r := rand.New(rand.NewPCG(3, 4))
	logits := make([]float32, *tokens**experts)
	x := make([]float32, *tokens**hidden)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	rc := router.Config{NumExperts: *experts, TopK: *topk, Scoring: router.Softmax, Renormalize: true}
	cpu0 := cpuSeconds()
	for i := 0; i < *n+100; i++ {
		for j := range logits {
			logits[j] = float32(r.NormFloat64())
		}
		var rt router.Routing
		rc.Route(logits, *tokens, nil, &rt)
		var plan router.Plan
		plan.Build(&rt)
		y := make([]float32, plan.Len()**hidden)
		if *gap > 0 {
			time.Sleep(*gap)
		}
		ctx, span := context.Background(), trace.Span(nil)
		if *traceFile != "" {
			ctx, span = tracer.Start(ctx, "bench.call")
		}
		t := time.Now()
		err := ex.Compute(ctx, 0, &plan, x, *hidden, y)
		if span != nil {
			span.End()
		}
		if err != nil {
			return err
		}
		if i >= 100 { // warm-up
			took = append(took, time.Since(t).Seconds()*1e6)
			served = append(served, cur.Seconds()*1e6)
		}
	}
	cpu := (cpuSeconds() - cpu0) / float64(*n+100) * 1e6
	own := make([]float64, len(took))
	for i := range took {
		own[i] = took[i] - served[i]
	}
	p, s, o := percentiles(took), percentiles(served), percentiles(own)
	fmt.Printf("exchange: %d calls of %d token(s) x top-%d, D %d, %v apart, lane poll %s: took p50 %.1f us p90 %.1f; owner's part p50 %.1f; own p50 %.1f p90 %.1f us; caller CPU %.1f us/call\n",
		*n, *tokens, *topk, *hidden, *gap, os.Getenv(transport.LanePollEnv), p[0], p[1], s[0], o[0], o[1], cpu)
	return nil
}

// cpuSeconds is the process's user + system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// randomFFN is an f32 expert of width d and intermediate width f with
// small random weights.
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
