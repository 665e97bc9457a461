// Package simcal measures, on this machine, the inputs pkg/simulate's
// models take from a real machine (simulate.Calibration): the throughput
// of pkg/tensor's matrix kernels as the models call them (tensor.Linear:
// float32 weights, bf16 weights, and float32 weights under --compute bf16),
// one core's memory bandwidth, and the software cost of the real expert
// exchange (a transport.ExpertServer on loopback reached by a
// transport.RemoteTrainer, the path a training rank's rows take). With a
// peer running ServeLink it also measures the link to it (raw TCP).
//
// Unlike pkg/simulate it is not pure: it runs the kernels and opens
// sockets. `switchyard simulate calibrate` runs it.
package simcal

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/simulate"
	"github.com/switchyard/switchyard/pkg/tensor"
	"github.com/switchyard/switchyard/pkg/transport"
)

// Options says what Calibrate measures and how long it takes.
type Options struct {
	// Quick measures a reduced set (GEMM at M = 1 and 512 of one shape,
	// float32 only; small buffers and few round trips): about 3 s, for
	// tests. The full set takes 30-60 s.
	Quick bool
	// Threads are the thread counts of the GEMM points (default 1 and
	// runtime.NumCPU()).
	Threads []int
	// Peer, if set, is the host:port of a ServeLink on another host: the
	// link to it is measured into LinkRate and LinkRTT.
	Peer string
	// Log, if set, gets one line per measurement as it completes.
	Log io.Writer
	// TrainModel, if set, is a model folder whose one-rank training step
	// is also profiled (ProfileTrain: TrainBatch sequences of TrainSeqLen
	// tokens, default 1 of 128) into Calibration.Train.
	TrainModel              string
	TrainBatch, TrainSeqLen int
	// TrainTime is how long the profile's steps are timed (0: its
	// default, 2 s or 0.5 s when Quick).
	TrainTime time.Duration
	// ExpertShape, if set ({hidden, intermediate}), times one routed
	// expert of bf16 weights of that shape over ExpertRows rows on one
	// thread into Calibration.Expert (the serving model's expert cost by
	// rows).
	ExpertShape [2]int
	// ShareProcs, if 2 or more (with ExpertShape and ShareCommand),
	// measures that many one-thread processes sharing the cores
	// (MeasureSharing: each woken to compute products of that expert)
	// into Calibration.ShareProduct and WakeWork. ShareCommand returns the
	// command that runs ShareChild (see ShareOptions.Command).
	ShareProcs   int
	ShareCommand func(addr string) *exec.Cmd
}

// ExpertRows are the rows Calibrate times an expert over (ExpertShape):
// a decode step's few rows per expert up to a busy batch's.
var ExpertRows = []int{1, 2, 3, 4, 6, 8, 12, 16, 24, 32}

// expertCurveBytes is the least weight the expert timing cycles through,
// beyond any last-level cache (a Zen 5 VM timed one row at 0.46 ms over
// 69 MB of experts, 0.66 ms over 550 MB).
const expertCurveBytes = 256 << 20

// Shapes the full calibration measures: M tokens (1: a decode GEMV; 512:
// a prefill or an expert's rows in training) times (K, N), the shapes of
// a small MoE's expert matrices (1024 x 2816 and back) and a square
// attention-sized product.
var (
	GEMMRows   = []int{1, 16, 64, 512}
	GEMMShapes = [][2]int{{1024, 2816}, {2816, 1024}, {4096, 4096}}
	GEMMDTypes = []string{"f32", "bf16", "bf16-compute"}
)

// Calibrate measures this machine. It changes GOMAXPROCS and the tensor
// compute mode while it runs and restores them; run nothing else
// meanwhile (the numbers are only as quiet as the machine).
func Calibrate(ctx context.Context, o Options) (*simulate.Calibration, error) {
	logf := func(format string, a ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", a...)
		}
	}
	// Cores are the cores this process may use: GOMAXPROCS (the CPUs, or
	// fewer where the environment or the cgroup's quota says so).
	c := &simulate.Calibration{CPU: CPUModel(), Cores: runtime.GOMAXPROCS(0), When: time.Now().UTC().Format(time.RFC3339)}
	threads := o.Threads
	if len(threads) == 0 {
		threads = []int{1}
		if n := runtime.NumCPU(); n > 1 {
			threads = append(threads, n)
		}
	}
	rows, shapes, dtypes := GEMMRows, GEMMShapes, GEMMDTypes
	target := 100 * time.Millisecond
	if o.Quick {
		rows, shapes, dtypes = []int{1, 512}, GEMMShapes[:1], []string{"f32"}
		target = 10 * time.Millisecond
	}
	logf("cpu: %s, %d logical cores", c.CPU, c.Cores)
	for _, dt := range dtypes {
		for _, kn := range shapes {
			for _, m := range rows {
				for _, th := range threads {
					if err := ctx.Err(); err != nil {
						return nil, err
					}
					f := gemmFLOPS(m, kn[0], kn[1], dt, th, target)
					c.GEMM = append(c.GEMM, simulate.GEMMPoint{M: m, K: kn[0], N: kn[1], DType: dt, Threads: th, FLOPS: f})
					logf("gemm %4d x %4d x %4d %-12s %2d threads: %7.1f GFLOP/s", m, kn[0], kn[1], dt, th, f/1e9)
				}
			}
		}
	}
	mb := 256 << 20
	if o.Quick {
		mb = 32 << 20
	}
	c.MemBandwidth = memBandwidth(mb, 1, target)
	logf("memory bandwidth (GemvT over %d MiB, 1 thread): %.1f GB/s", mb>>20, c.MemBandwidth/1e9)
	if n := runtime.NumCPU(); n > 1 {
		logf("memory bandwidth (GemvT over %d MiB, %d threads): %.1f GB/s", mb>>20, n, memBandwidth(mb, n, target)/1e9)
	}
	c.AdamParamsPerS = adamRate(mb/16, 1, target)
	logf("optimizer (AdamW over %d M parameters, 1 thread): %.0f M parameters/s (%.1f GB/s at 28 bytes per parameter)", mb/16>>20, c.AdamParamsPerS/1e6, c.AdamParamsPerS*28/1e9)
	if n := runtime.NumCPU(); n > 1 {
		ps := adamRate(mb/16, n, target)
		logf("optimizer (AdamW over %d M parameters, %d threads): %.0f M parameters/s (%.1f GB/s)", mb/16>>20, n, ps/1e6, ps*28/1e9)
	}
	if h, f := o.ExpertShape[0], o.ExpertShape[1]; h > 0 && f > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c.Expert = expertCurve(h, f, 40*time.Millisecond)
		for _, p := range c.Expert {
			logf("expert %d x %d bf16 (expert.FFN.Forward), %2d rows, 1 thread: %.3f ms", h, f, p.Rows, p.Seconds*1e3)
		}
	}
	if h, f := o.ExpertShape[0], o.ExpertShape[1]; h > 0 && f > 0 && o.ShareProcs >= 2 && o.ShareCommand != nil {
		sh, err := MeasureSharing(ctx, ShareOptions{Procs: o.ShareProcs, Hidden: h, Inter: f, Command: o.ShareCommand})
		if err != nil {
			return nil, err
		}
		c.ShareProcs, c.ShareRows, c.ShareProduct, c.WakeWork = sh.Procs, sh.Rows, sh.Shared, sh.WakeWork()
		logf("sharing: %d one-thread processes on %d cores, %d products of %d rows a wake, %v apart: a product %.3f ms of core time (%.3f with %d processes busy), x%.3f; a wake %.3f ms of core time beyond its products after the gap, %.3f back to back",
			sh.Procs, sh.Cores, sh.Products, sh.Rows, sh.Gap, sh.Shared.Seconds()*1e3, sh.Product.Seconds()*1e3, min(sh.Cores, sh.Procs), sh.Factor(),
			sh.WakeIdle.Seconds()*1e3, sh.WakeBusy.Seconds()*1e3)
	}
	ex, err := measureExchange(ctx, o.Quick)
	if err != nil {
		return nil, fmt.Errorf("simcal: expert exchange: %w", err)
	}
	c.ExchangeRTT, c.MsgCPU, c.MsgBytesPerS, c.MsgCPUWork = ex.rtt, ex.rtt/4, ex.bytesPerS, ex.cpu/4
	logf("expert exchange on loopback: round trip %v (1 row of %d floats; per message and side %v of latency, %v of core time), %d-byte payload round trip %v (owner compute %v) -> %.2f GB/s per side",
		ex.rtt.Round(time.Microsecond), exchangeD, c.MsgCPU.Round(100*time.Nanosecond), c.MsgCPUWork.Round(100*time.Nanosecond), ex.bigBytes, ex.big.Round(time.Microsecond), ex.compute.Round(time.Microsecond), c.MsgBytesPerS/1e9)
	if o.TrainModel != "" {
		b, sl := o.TrainBatch, o.TrainSeqLen
		if b == 0 {
			b = 1
		}
		if sl == 0 {
			sl = 128
		}
		p, err := ProfileTrain(ctx, TrainProfileOptions{Dir: o.TrainModel, Batch: b, SeqLen: sl, Quick: o.Quick, Target: o.TrainTime})
		if err != nil {
			return nil, err
		}
		c.Train = append(c.Train, p)
		logf("training step of %s (%d x %d tokens, %d threads, one process): %v (dense forward %v, backward %v; experts %v, %v; optimizer %v), %v of core time",
			p.Model, b, sl, p.Threads, p.Step.Round(time.Microsecond), p.Forward.Round(time.Microsecond), p.Backward.Round(time.Microsecond),
			p.ExpertsForward.Round(time.Microsecond), p.ExpertsBackward.Round(time.Microsecond), p.Optimizer.Round(time.Microsecond), p.CPU.Round(time.Microsecond))
	}
	if o.Peer != "" {
		c.LinkRate, c.LinkRTT, err = MeasureLink(ctx, o.Peer, o.Quick)
		if err != nil {
			return nil, err
		}
		logf("link to %s (raw TCP): %.2f Gbit/s, round trip %v", o.Peer, c.LinkRate*8/1e9, c.LinkRTT)
		lc, err := MeasureLinkCPU(ctx, o.Peer, o.Quick)
		if err != nil {
			return nil, err
		}
		c.LinkMsgCPU, c.LinkByteCPU, c.LinkExchangeRTT, c.LinkIdleExchangeRTT = lc.MsgWork, lc.ByteWork, lc.RTT, lc.IdleRTT
		logf("expert exchange across the link: round trip %v back to back, %v after %v idle; core time of both hosts %v per message and side, %.2f ns per byte and side",
			lc.RTT.Round(time.Microsecond), lc.IdleRTT.Round(time.Microsecond), idlePause, lc.MsgWork.Round(100*time.Nanosecond), lc.ByteWork)
		rc, err := MeasureRingCPU(ctx, o.Peer, o.Quick)
		if err != nil {
			return nil, err
		}
		c.LinkRingByteCPU = rc.ByteWork
		logf("ring all-reduce across the link (pkg/collective, 2 members): core time of both hosts %v for %d bytes, %v for %d -> %.2f ns per byte and side",
			rc.SmallCPU.Round(time.Microsecond), rc.Small, rc.BigCPU.Round(time.Microsecond), rc.Big, rc.ByteWork)
	}
	return c, nil
}

// Write writes c as indented JSON (what simulate.ReadCalibration reads).
func Write(w io.Writer, c *simulate.Calibration) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// CPUModel is this machine's processor as /proc/cpuinfo names it: its
// "model name", with the family and model numbers (a VM's model name can
// be as vague as "AMD EPYC"; family 26 is Zen 5) and the vector
// extensions the kernels use; GOOS/GOARCH where there is no cpuinfo.
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOOS + "/" + runtime.GOARCH
	}
	info := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			break // the first processor only
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			info[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	name := info["model name"]
	if name == "" {
		name = runtime.GOARCH
	}
	var ext []string
	flags := " " + info["flags"] + " "
	for _, f := range []string{"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"} {
		if strings.Contains(flags, " "+f+" ") {
			ext = append(ext, f)
		}
	}
	if fam, mod := info["cpu family"], info["model"]; fam != "" {
		name += fmt.Sprintf(" (family %s, model %s", fam, mod)
		if len(ext) > 0 {
			name += "; " + strings.Join(ext, " ")
		}
		name += ")"
	}
	return name
}

// withThreads runs f with GOMAXPROCS (the kernels' thread count,
// tensor.Threads) set to n.
func withThreads(n int, f func()) {
	prev := runtime.GOMAXPROCS(n)
	defer runtime.GOMAXPROCS(prev)
	f()
}

// timeIt runs f until target has passed (at least twice after a warm-up
// call) in three rounds and returns the fastest round's time per call.
func timeIt(target time.Duration, f func()) time.Duration {
	f()
	best := time.Duration(0)
	for range 3 {
		n, start := 0, time.Now()
		for n < 2 || time.Since(start) < target {
			f()
			n++
		}
		if per := time.Since(start) / time.Duration(n); best == 0 || per < best {
			best = per
		}
	}
	return best
}

func randF32(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * 0.05)
	}
	return v
}

// gemmFLOPS measures tensor.Linear (y = x W^T, the model's products) of m
// rows through a [n, k] weight in dtype on threads threads.
func gemmFLOPS(m, k, n int, dtype string, threads int, target time.Duration) float64 {
	r := rand.New(rand.NewPCG(uint64(m), uint64(k*n)))
	w := tensor.Mat{Rows: n, Cols: k, F32: randF32(r, n*k)}
	mode := tensor.ComputeExact
	switch dtype {
	case "bf16":
		w.BF16 = make([]uint16, n*k)
		tensor.F32ToBF16(w.BF16, w.F32)
		w.F32 = nil
	case "bf16-compute":
		mode = tensor.ComputeBF16
	}
	x, y := randF32(r, m*k), make([]float32, m*n)
	prev := tensor.SetCompute(mode)
	defer tensor.SetCompute(prev)
	var per time.Duration
	withThreads(threads, func() {
		per = timeIt(target, func() { tensor.Linear(y, x, m, &w, 0) })
	})
	return 2 * float64(m) * float64(k) * float64(n) / per.Seconds()
}

// expertCurve times expert.FFN.Forward of a routed expert of bf16
// weights ([inter, hidden] gate and up, [hidden, inter] down) over each of
// ExpertRows rows on one thread, cycling over enough distinct experts
// (expertCurveBytes of weights) that they stream from memory as a
// worker's do.
func expertCurve(hidden, inter int, target time.Duration) []simulate.ExpertPoint {
	ffns := curveExperts(hidden, inter)
	r := rand.New(rand.NewPCG(uint64(hidden)+1, uint64(inter)))
	maxRows := slices.Max(ExpertRows)
	x, y, h := randF32(r, maxRows*hidden), make([]float32, maxRows*hidden), make([]float32, 2*maxRows*inter)
	var out []simulate.ExpertPoint
	withThreads(1, func() {
		for _, rows := range ExpertRows {
			i := 0
			d := timeIt(target, func() {
				ffns[i%len(ffns)].Forward(y, x, rows, h)
				i++
			})
			out = append(out, simulate.ExpertPoint{Hidden: hidden, Inter: inter, DType: "bf16", Rows: rows, Seconds: d.Seconds()})
		}
	})
	return out
}

// memBandwidth measures streaming reads: a float32 GemvT over a matrix of
// bytes bytes (the decode GEMV, bound by memory), on threads threads.
func memBandwidth(bytes, threads int, target time.Duration) float64 {
	const k = 4096
	n := bytes / 4 / k
	r := rand.New(rand.NewPCG(1, 2))
	w := randF32(r, n*k)
	x, y := randF32(r, k), make([]float32, n)
	var per time.Duration
	withThreads(threads, func() {
		per = timeIt(target, func() { tensor.GemvT(n, k, w, k, x, y, 0) })
	})
	return float64(n*k*4) / per.Seconds()
}

// adamRate measures optim.AdamW's step over params parameters on threads
// threads, parameters per second.
func adamRate(params, threads int, target time.Duration) float64 {
	r := rand.New(rand.NewPCG(3, 4))
	p := []optim.Param{{Name: "w", W: randF32(r, params), G: randF32(r, params)}}
	opt, err := optim.NewAdamW(optim.DefaultAdamW(1e-4))
	if err != nil {
		panic(err) // the defaults are valid
	}
	var per time.Duration
	withThreads(threads, func() {
		per = timeIt(target, func() {
			if err := opt.Step(p, 1e-4); err != nil {
				panic(err)
			}
		})
	})
	return float64(params) / per.Seconds()
}

// exchangeD is the hidden size of the exchange measurement's rows.
const exchangeD = 1024

type exchangeResult struct {
	rtt       time.Duration // one row, forward and backward averaged
	cpu       time.Duration // the process's core time per one-row round trip
	big       time.Duration // bigBytes each way
	bigBytes  int
	compute   time.Duration // the owner's products for the big request
	bytesPerS float64
}

// measureExchange times training round trips (TRAIN_FORWARD, then
// TRAIN_BACKWARD, as a rank's layer sends them) to an owner on loopback
// whose expert is one intermediate feature wide, so the transport, not
// the GEMM, is timed: with one row, the round trip (ExchangeRTT); with a
// large payload, the per-byte cost: of the extra time over the small
// round trip, less the owner's products (measured in process on the same
// rows), each byte is handled 4 times in sequence (sender and receiver,
// request and answer), which is how the models charge MsgBytesPerS.
func measureExchange(ctx context.Context, quick bool) (exchangeResult, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return exchangeResult{}, err
	}
	stop, err := serveExchangeOwner(lis)
	if err != nil {
		return exchangeResult{}, err
	}
	defer stop()
	roundTrips, closeClient, err := exchangeClient(ctx, lis.Addr().String())
	if err != nil {
		return exchangeResult{}, err
	}
	defer closeClient()
	r := rand.New(rand.NewPCG(5, 6))
	id := expert.ID{Layer: 0, Expert: 0}
	small, bigRows, reps := 400, 4096, 8
	if quick {
		small, bigRows, reps = 50, 1024, 3
	}
	var res exchangeResult
	cpu0 := processCPU()
	if res.rtt, err = roundTrips(1, small, 0); err != nil {
		return res, err
	}
	// Warm-up pairs included: 2 x (small + 2) round trips.
	res.cpu = (processCPU() - cpu0) / time.Duration(2*(small+2))
	res.bigBytes = bigRows * exchangeD * 4
	// The owner's products on the same rows, in process.
	local := expert.NewStore()
	local.Put(id, exchangeFFN(r))
	plan := &router.Plan{NumExperts: 1, Offsets: []int32{0, int32(bigRows)}, Token: make([]int32, bigRows)}
	for i := range plan.Token {
		plan.Token[i] = int32(i)
	}
	x, y := randF32(r, bigRows*exchangeD), make([]float32, bigRows*exchangeD)
	// The big round trip and the products are measured one after the
	// other, so a busy stretch of the machine can inflate one and not the
	// other (the products once took longer than the whole round trip
	// that includes them): a measurement whose difference is not positive
	// is taken again, up to 3 times.
	const tries = 3
	var extra time.Duration
	for try := 1; ; try++ {
		if res.big, err = roundTrips(bigRows, reps, 0); err != nil {
			return res, err
		}
		var cerr error
		res.compute = timeIt(20*time.Millisecond, func() {
			if err := local.ForwardTrainFor(ctx, "simcal", 0, plan, x, exchangeD, y); err != nil {
				cerr = err
				return
			}
			if err := local.BackwardTrainFor(ctx, "simcal", 0, x, y); err != nil {
				cerr = err
			}
		}) / 2
		if cerr != nil {
			return res, cerr
		}
		if extra = res.big - res.rtt - res.compute; extra > 0 {
			break
		}
		if try == tries {
			return res, fmt.Errorf("a %d-byte round trip (%v) took no longer than one row's (%v) plus the products (%v), %d times (is the machine busy?)", res.bigBytes, res.big, res.rtt, res.compute, tries)
		}
	}
	res.bytesPerS = 4 * float64(res.bigBytes) / extra.Seconds()
	return res, nil
}

// The exchange measurement's owner: a transport.ExpertServer with one
// expert one intermediate feature wide, so that the transport, not the
// GEMM, is timed.
const (
	exchangeJob   = "calibrate"
	exchangeModel = "simcal-exchange"
	exchangeOwner = cluster.WorkerID("simcal-owner")
)

func exchangeFFN(r *rand.Rand) *expert.FFN {
	m := func(rows, cols int) tensor.Mat { return tensor.Mat{Rows: rows, Cols: cols, F32: randF32(r, rows*cols)} }
	return &expert.FFN{Gate: m(1, exchangeD), Up: m(1, exchangeD), Down: m(exchangeD, 1)}
}

// serveExchangeOwner serves the exchange measurement's owner on lis until
// stop is called.
func serveExchangeOwner(lis net.Listener) (stop func(), err error) {
	store := expert.NewStore()
	store.Put(expert.ID{Layer: 0, Expert: 0}, exchangeFFN(rand.New(rand.NewPCG(5, 6))))
	srv, err := transport.NewExpertServer(expert.NewStore(), transport.ServerConfig{Worker: exchangeOwner, Model: exchangeModel, Hidden: exchangeD})
	if err != nil {
		return nil, err
	}
	if _, err := srv.AddJob(exchangeJob, store, exchangeModel, exchangeD); err != nil {
		return nil, err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
	}, nil
}

// exchangeClient reaches the exchange owner at addr as a training rank
// does (a transport.RemoteTrainer). roundTrips returns the mean time of a
// forward and of a backward of rows rows, over reps pairs after two
// warm-up pairs.
func exchangeClient(ctx context.Context, addr string) (roundTrips func(rows, reps int, pause time.Duration) (time.Duration, error), closeClient func(), err error) {
	pl := &cluster.Placement{Model: exchangeModel, Epoch: 1, Owners: [][][]cluster.WorkerID{{{exchangeOwner}}},
		Workers: map[cluster.WorkerID]cluster.WorkerInfo{exchangeOwner: {ID: exchangeOwner, Addr: addr}}}
	pool, err := transport.NewPool(transport.ClientConfig{Worker: "simcal-rank", Model: exchangeModel, Job: exchangeJob})
	if err != nil {
		return nil, nil, err
	}
	tr, err := transport.NewRemoteTrainer(transport.NewStaticPlacement(pl), pool, exchangeJob)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	r := rand.New(rand.NewPCG(7, 8))
	// roundTrips times reps (after 2 warm-up) forward and backward
	// exchanges of rows rows and returns their mean. With pause > 0 both
	// processes sit idle for pause before each exchange and only the
	// exchange is timed: what a message costs when it finds its receiver
	// asleep (a decode step's messages at one client).
	roundTrips = func(rows, reps int, pause time.Duration) (time.Duration, error) {
		plan := &router.Plan{NumExperts: 1, Offsets: []int32{0, int32(rows)}, Token: make([]int32, rows), Choice: make([]int32, rows), Weight: make([]float32, rows)}
		for i := range plan.Token {
			plan.Token[i], plan.Weight[i] = int32(i), 1
		}
		x, y := randF32(r, rows*exchangeD), make([]float32, rows*exchangeD)
		var total time.Duration
		for i := range reps + 2 {
			var took time.Duration
			for _, backward := range []bool{false, true} {
				if pause > 0 {
					time.Sleep(pause)
				}
				start := time.Now()
				var err error
				if backward {
					err = tr.BackwardTrain(ctx, 0, x, y)
				} else {
					err = tr.ForwardTrain(ctx, 0, plan, x, exchangeD, y)
				}
				if err != nil {
					return 0, err
				}
				took += time.Since(start)
			}
			if i >= 2 {
				total += took
			}
		}
		return total / time.Duration(2*reps), nil
	}
	return roundTrips, func() { pool.Close() }, nil
}

// ServeLink answers MeasureLink and MeasureLinkCPU on lis until ctx
// ends: run it on the other host (`switchyard simulate calibrate
// --serve-link ADDR`). For MeasureLinkCPU it also serves the exchange
// measurement's owner (a transport.ExpertServer) on another port of the
// same address, started on the first request.
func ServeLink(ctx context.Context, lis net.Listener) error {
	var (
		once      sync.Once
		ownerAddr string
		ownerErr  error
		stopOwner = func() {}
	)
	owner := func() (string, error) {
		once.Do(func() {
			host, _, err := net.SplitHostPort(lis.Addr().String())
			if err != nil {
				ownerErr = err
				return
			}
			ol, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
			if err != nil {
				ownerErr = err
				return
			}
			if stopOwner, ownerErr = serveExchangeOwner(ol); ownerErr == nil {
				ownerAddr = ol.Addr().String()
			} else {
				stopOwner = func() {}
			}
		})
		return ownerAddr, ownerErr
	}
	defer func() { stopOwner() }()
	go func() {
		<-ctx.Done()
		lis.Close()
	}()
	for {
		conn, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer conn.Close()
			_ = answerLink(ctx, conn, owner)
		}()
	}
}

// The link protocol: 'p' then 64-byte pings, each echoed; or 'b', an
// 8-byte length and that many bytes, answered with one byte once all
// arrived; or 'c', answered with the serving process's core time so far
// (8 bytes, ns); or 'e', answered with a length byte and the address of
// the exchange owner; or 'g', a collective group to join for
// MeasureRingCPU (serveRingMember).
const pingBytes = 64

func answerLink(ctx context.Context, conn net.Conn, owner func() (string, error)) error {
	rd := bufio.NewReader(conn)
	kind, err := rd.ReadByte()
	if err != nil {
		return err
	}
	switch kind {
	case 'p':
		buf := make([]byte, pingBytes)
		for {
			if _, err := io.ReadFull(rd, buf); err != nil {
				return err
			}
			if _, err := conn.Write(buf); err != nil {
				return err
			}
		}
	case 'b':
		var hdr [8]byte
		if _, err := io.ReadFull(rd, hdr[:]); err != nil {
			return err
		}
		n := int64(0)
		for _, b := range hdr {
			n = n<<8 | int64(b)
		}
		if _, err := io.CopyN(io.Discard, rd, n); err != nil {
			return err
		}
		_, err := conn.Write([]byte{1})
		return err
	case 'c':
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(processCPU()))
		_, err := conn.Write(b[:])
		return err
	case 'e':
		addr, err := owner()
		if err != nil {
			return err
		}
		_, err = conn.Write(appendString(nil, addr))
		return err
	case 'g':
		// The member listens on the address the caller reached.
		host, _, err := net.SplitHostPort(conn.LocalAddr().String())
		if err != nil {
			return err
		}
		return serveRingMember(ctx, conn, rd, host)
	}
	return fmt.Errorf("simcal: link: unknown request %q", kind)
}

// MeasureLink measures the link to a ServeLink at addr with raw TCP: the
// median round trip of 64-byte pings and the rate of one bulk transfer
// (256 MiB; 16 MiB quick) from its first byte sent to the receiver's
// acknowledgement of the last, in bytes/s.
func MeasureLink(ctx context.Context, addr string, quick bool) (float64, time.Duration, error) {
	var d net.Dialer
	dial := func(kind byte) (net.Conn, error) {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("simcal: link to %s: %w", addr, err)
		}
		if dl, ok := ctx.Deadline(); ok {
			conn.SetDeadline(dl)
		}
		if _, err := conn.Write([]byte{kind}); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	pings, bulk := 200, 256<<20
	if quick {
		pings, bulk = 20, 16<<20
	}
	conn, err := dial('p')
	if err != nil {
		return 0, 0, err
	}
	buf := make([]byte, pingBytes)
	rtts := make([]time.Duration, 0, pings)
	for range pings + 5 {
		start := time.Now()
		if _, err := conn.Write(buf); err != nil {
			conn.Close()
			return 0, 0, err
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			conn.Close()
			return 0, 0, err
		}
		rtts = append(rtts, time.Since(start))
	}
	conn.Close()
	rtts = rtts[5:]
	slices.Sort(rtts)
	rtt := rtts[len(rtts)/2]
	if conn, err = dial('b'); err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	var hdr [8]byte
	for i := range hdr {
		hdr[i] = byte(uint64(bulk) >> (56 - 8*i))
	}
	chunk := make([]byte, 1<<20)
	start := time.Now()
	if _, err := conn.Write(hdr[:]); err != nil {
		return 0, 0, err
	}
	for sent := 0; sent < bulk; sent += len(chunk) {
		if _, err := conn.Write(chunk[:min(len(chunk), bulk-sent)]); err != nil {
			return 0, 0, err
		}
	}
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil {
		return 0, 0, err
	}
	el := time.Since(start) - rtt/2
	if el <= 0 {
		return 0, 0, errors.New("simcal: link: the bulk transfer took no time")
	}
	return float64(bulk) / el.Seconds(), rtt, nil
}
