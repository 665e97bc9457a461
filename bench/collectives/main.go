// Command collectives benchmarks all-reduce and all-to-all (pkg/collective)
// the way nccl-tests does, one process per host, and reports them against
// the raw-TCP ceiling C of the same links measured in the same run.
//
// Every process is started with the same -peers list and its own -rank;
// rank 0 prints the table. Per run:
//
//  1. C: every rank streams raw TCP to its ring neighbour (r -> r+1, the
//     ring's traffic pattern) for -probe seconds at once; C is the mean
//     receive rate per link over the last three quarters of that window.
//     The same for the all-to-all pattern (every rank to every other) is
//     printed for reference.
//  2. RTT: median of 200 round trips from rank 0 to rank 1 with the other
//     ranks idle, and with every rank pinging its ring neighbour at once
//     (printed for reference; the median of 5 windows of 200, each after
//     a barrier), back to back; the idle ones are measured
//     again right before each row of at most 16 KiB, the rows whose time
//     is mostly latency: of a 64-byte raw-TCP
//     ping-pong (the link's bare round trip, the rtt-64 column's unit), of
//     a 4 KiB raw-TCP ping-pong (the round trip of a 4 KiB buffer over the
//     same link, serialization at the link rate included: the rtt-4K
//     column's unit), and of a gRPC Ping (the rtt-grpc column's unit).
//     The machine's CPU is recorded alongside (for the simulator's
//     calibration, pkg/simulate): per byte moved by the ring probe, per
//     message of the busy raw-TCP and gRPC round trips (the median of
//     their windows), and of busy
//     raw-TCP round trips whose reads poll as the lanes' do; the hosts'
//     TCP congestion control and pacing ratio; and a raw-TCP ring step
//     (every rank sends a message of 256 B to 1 MiB to r+1 while it
//     receives one from r-1, all at once: a ring step on bare TCP).
//  3. For each operation and size: a warm-up, then enough iterations to
//     fill about -target seconds (at least 3); time is the slowest rank's
//     mean per iteration.
//
// Operations: allreduce (size-based choice: recursive doubling up to 32
// KiB, ring above), allreduce-bf16 (bf16 on the wire; sizes and busbw still
// count float32 bytes, so busbw/C can reach 2), allreduce-ring,
// allreduce-rd and allreduce-tree (each algorithm forced, up to
// -cross-check-max, to check the threshold), allreduce-rd-grpc and
// allreduce-tree-grpc (the small-buffer algorithms with their messages on
// the gRPC streams instead of the direct lanes, for comparison), alltoall.
//
// Columns (nccl-tests definitions): size = bytes of float32 data for
// all-reduce, bytes sent per rank for all-to-all (each peer gets size/n,
// the /peer column; the sizes always include 1 MiB per peer); algbw = size
// / time; busbw = algbw x 2(n-1)/n for all-reduce, algbw x (n-1)/n for
// all-to-all; busbw/C; rtt-64, rtt-4K and rtt-grpc = time / RTT of each
// kind; cpu = (user+sys CPU seconds) /
// wall seconds of each process during the timed iterations (mean and max
// over ranks; 1.0 = one core busy); host = busy fraction of the whole
// machine (all cores, every process on it, other users' too) from
// /proc/stat over the same interval. MB = 1e6 bytes.
//
// Usage (normally through scripts/bench-collectives.sh):
//
//	collectives -rank R -peers 10.77.0.1:7070,10.77.0.2:7070,... [-label 4x1gbit] [-rate 1e9]
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/internal/rawsock"
	"github.com/switchyard/switchyard/pkg/allreduce"
	"github.com/switchyard/switchyard/pkg/collective"
)

type options struct {
	rank       int
	peers      []string
	label      string
	rateBits   float64 // configured link rate, bits/s (for the report)
	probe      time.Duration
	target     time.Duration
	sizes      []int
	ops        []string
	smallOps   int // largest size for the *-ring / *-rd cross-check ops
	chunk      int
	window     int
	timeout    time.Duration
	probePort  int
	cpuProfile *os.File
	maxIters   int
	lanePoll   time.Duration
}

func main() {
	var o options
	peers := flag.String("peers", "", "comma-separated host:port of every rank, by rank")
	flag.IntVar(&o.rank, "rank", -1, "this process's rank")
	flag.StringVar(&o.label, "label", "", "cluster label for the report (e.g. 4x1gbit)")
	flag.Float64Var(&o.rateBits, "rate", 0, "configured link rate in bits/s, for the report")
	flag.DurationVar(&o.probe, "probe", 4*time.Second, "raw-TCP probe duration per pattern")
	flag.DurationVar(&o.target, "target", 1500*time.Millisecond, "timed duration per size (at least 3 iterations)")
	sizes := flag.String("sizes", "256,1K,4K,16K,64K,256K,1M,4M,16M,64M,256M", "sizes in bytes, multiples of 4 (K, M suffixes: KiB, MiB)")
	ops := flag.String("ops", "allreduce,allreduce-bf16,alltoall,allreduce-ring,allreduce-rd,allreduce-tree,allreduce-rd-grpc", "operations: allreduce (auto), allreduce-bf16, allreduce-ring, allreduce-rd, allreduce-tree, allreduce-rd-grpc, allreduce-tree-grpc (the small-buffer algorithms over gRPC instead of the lanes), alltoall")
	small := flag.String("cross-check-max", "1M", "largest size for allreduce-ring and allreduce-rd")
	flag.IntVar(&o.chunk, "chunk", 0, "chunk bytes (0: collective.DefaultChunkBytes)")
	flag.IntVar(&o.window, "window", 0, "chunks in flight per peer (0: collective.DefaultWindow)")
	flag.IntVar(&o.maxIters, "max-iters", 20000, "most timed iterations per size (small sizes run about -target too)")
	flag.DurationVar(&o.timeout, "timeout", 120*time.Second, "per-operation timeout")
	flag.IntVar(&o.probePort, "probe-port-offset", 1, "raw-TCP probe port = gRPC port + this")
	flag.DurationVar(&o.lanePoll, "lane-poll", 0, "collective.Config.LanePoll (0: its default; negative: no polling)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the operations to this file (%d: rank)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(strings.ReplaceAll(*cpuProfile, "%d", strconv.Itoa(o.rank)))
		if err != nil {
			fail(err)
		}
		o.cpuProfile = f
	}

	o.peers = strings.Split(*peers, ",")
	if *peers == "" || o.rank < 0 || o.rank >= len(o.peers) {
		fail(fmt.Errorf("need -peers and a -rank in [0, %d)", len(o.peers)))
	}
	var err error
	if o.sizes, err = parseSizes(*sizes); err != nil {
		fail(err)
	}
	smalls, err := parseSizes(*small)
	if err != nil || len(smalls) != 1 {
		fail(fmt.Errorf("-cross-check-max %q", *small))
	}
	o.smallOps = smalls[0]
	o.ops = strings.Split(*ops, ",")
	if err := run(o); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "collectives: %v\n", err)
	os.Exit(1)
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		mult := 1
		switch {
		case strings.HasSuffix(f, "K"):
			mult, f = 1<<10, strings.TrimSuffix(f, "K")
		case strings.HasSuffix(f, "M"):
			mult, f = 1<<20, strings.TrimSuffix(f, "M")
		case strings.HasSuffix(f, "G"):
			mult, f = 1<<30, strings.TrimSuffix(f, "G")
		}
		v, err := strconv.Atoi(f)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, v*mult)
	}
	return out, nil
}

func probeAddr(o options, r int) (string, error) {
	host, port, err := net.SplitHostPort(o.peers[r])
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(p+o.probePort)), nil
}

// latencyRowBytes is the largest size whose row re-measures the idle
// round trips first (the small-buffer, latency-bound rows).
const latencyRowBytes = 16 << 10

// bench is one process's state.
type bench struct {
	o     options
	g     *collective.Group
	n     int
	rank  int
	sink  *sink
	probe net.Listener
}

func run(o options) error {
	_, port, err := net.SplitHostPort(o.peers[o.rank])
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return err
	}
	pa, err := probeAddr(o, o.rank)
	if err != nil {
		return err
	}
	_, pport, _ := net.SplitHostPort(pa)
	plis, err := net.Listen("tcp", ":"+pport)
	if err != nil {
		return err
	}
	defer plis.Close()
	g, err := collective.New(collective.Config{
		Group: "bench-collectives", Rank: o.rank, Peers: o.peers,
		ChunkBytes: o.chunk, Window: o.window, OpTimeout: o.timeout, LanePoll: o.lanePoll,
	}, lis)
	if err != nil {
		return err
	}
	defer g.Close()
	b := &bench{o: o, g: g, n: len(o.peers), rank: o.rank, sink: &sink{poll: lanePoll(o), steps: make(chan net.Conn, 1)}, probe: plis}
	go b.sink.serve(plis)

	ctx := context.Background()
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = g.Connect(cctx)
	cancel()
	if err != nil {
		return err
	}
	if err := b.barrier(); err != nil {
		return err
	}

	ringC, ringCPU, err := b.tcpProbe(false)
	if err != nil {
		return err
	}
	a2aC, _, err := b.tcpProbe(true)
	if err != nil {
		return err
	}
	rtt, busyRTT, grpcCPU, err := b.rtt(b.grpcPing)
	if err != nil {
		return err
	}
	tp := &tcpPinger{b: b, size: 64, conns: map[int]net.Conn{}}
	defer tp.close()
	tcpRTT, busyTCPRTT, tcpCPU, err := b.rtt(tp.ping)
	if err != nil {
		return err
	}
	tp4 := &tcpPinger{b: b, size: 4 << 10, conns: map[int]net.Conn{}}
	defer tp4.close()
	rtt4K, busyRTT4K, _, err := b.rtt(tp4.ping)
	if err != nil {
		return err
	}
	steps, err := b.stepProbe(mean(ringC))
	if err != nil {
		return err
	}
	tpp := &tcpPinger{b: b, size: 64, poll: lanePoll(o), conns: map[int]net.Conn{}}
	defer tpp.close()
	_, busyPolledRTT, polledCPU, err := b.rtt(tpp.ping)
	if err != nil {
		return err
	}
	rtts := [3]time.Duration{tcpRTT, rtt4K, rtt}
	pingers := [3]func(int) (time.Duration, error){tp.ping, tp4.ping, b.grpcPing}
	c := mean(ringC)
	b.printf("# cluster %s: n=%d, link rate %s each way; GOMAXPROCS-visible CPUs %d\n", o.label, b.n, fmtRate(o.rateBits), numCPU())
	b.printf("# TCP: congestion control %s, pacing ratio %s%% in congestion avoidance (this host's namespace)\n",
		sysctl("net/ipv4/tcp_congestion_control"), sysctl("net/ipv4/tcp_pacing_ca_ratio"))
	b.printf("# C (raw TCP, ring pattern r->r+1, all links at once): mean %.1f MB/s per link (min %.1f, max %.1f) = %.3f x rate\n",
		c/1e6, slices.Min(ringC)/1e6, slices.Max(ringC)/1e6, c*8/o.rateBits)
	b.printf("#   raw TCP, all-to-all pattern: mean %.1f MB/s received per host (min %.1f, max %.1f) = %.3f x rate\n",
		mean(a2aC)/1e6, slices.Min(a2aC)/1e6, slices.Max(a2aC)/1e6, mean(a2aC)*8/o.rateBits)
	b.printf("# RTT (raw TCP 64-byte ping-pong, median of 200): %.0f us rank 0 -> 1 alone (the rtt-64 column's unit); %.0f us with every rank pinging its neighbour at once (median of %d windows)\n",
		tcpRTT.Seconds()*1e6, busyTCPRTT.Seconds()*1e6, busyWindows)
	b.printf("# RTT (raw TCP 4 KiB ping-pong, median of 200): %.0f us rank 0 -> 1 alone (the rtt-4K column's unit); %.0f us with every rank pinging its neighbour at once (median of %d windows)\n",
		rtt4K.Seconds()*1e6, busyRTT4K.Seconds()*1e6, busyWindows)
	b.printf("# RTT (gRPC ping, median of 200): %.0f us rank 0 -> 1 alone (the rtt-grpc column's unit); %.0f us with every rank pinging its neighbour at once (median of %d windows)\n",
		rtt.Seconds()*1e6, busyRTT.Seconds()*1e6, busyWindows)
	b.printf("# CPU of the raw-TCP ring probe: %.2f ns per byte moved on the machine (%.2f cores busy), %.2f ns/B in the probe processes\n",
		ringCPU.host*1e9, ringCPU.busy, ringCPU.proc*1e9)
	b.printf("# CPU of the busy round trips (medians of %d windows): raw TCP 64 B %.1f us per message on the machine (%.2f cores busy; windows %.1f-%.1f us), %.1f us in the processes; gRPC ping %.1f us per message (%.2f cores busy)\n",
		busyWindows, tcpCPU.host*1e6, tcpCPU.busy, tcpCPU.hostMin*1e6, tcpCPU.hostMax*1e6, tcpCPU.proc*1e6, grpcCPU.host*1e6, grpcCPU.busy)
	b.printf("# CPU of the busy round trips polled as the lanes (%v; medians of %d windows): raw TCP 64 B %.1f us per message on the machine (%.2f cores busy; windows %.1f-%.1f us); round trip %.0f us\n",
		lanePoll(o), busyWindows, polledCPU.host*1e6, polledCPU.busy, polledCPU.hostMin*1e6, polledCPU.hostMax*1e6, busyPolledRTT.Seconds()*1e6)
	if len(steps) > 0 {
		line := "# raw-TCP ring steps (every rank sends a message to r+1 and receives one from r-1 per step, all at once; slowest rank's mean):"
		for i, size := range stepSizes {
			line += fmt.Sprintf(" %s %.1f us", fmtSize(size), steps[i].Seconds()*1e6)
			if i < len(stepSizes)-1 {
				line += ","
			}
		}
		b.printf("%s\n", line)
	}
	b.printf("# small-buffer bound: 2*ceil(log2 n) = %d round trips\n", 2*bits.Len(uint(b.n-1)))
	b.printf("# MB = 1e6 bytes; sizes in KiB/MiB; time = slowest rank's mean per iteration\n")
	b.printf("%-19s %2s %6s %6s %4s %5s %11s %9s %9s %7s %7s %7s %8s %11s %5s\n",
		"op", "n", "size", "/peer", "alg", "iters", "time(us)", "algbw", "busbw", "busbw/C", "rtt-64", "rtt-4K", "rtt-grpc", "cpu mean/max", "host")
	if o.cpuProfile != nil {
		if err := pprof.StartCPUProfile(o.cpuProfile); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	for _, op := range o.ops {
		sizes := o.sizes
		if op == "alltoall" && !slices.Contains(sizes, b.n<<20) && b.n<<20 <= slices.Max(sizes) {
			// Always include 1 MiB per peer, the target's threshold.
			sizes = append(slices.Clone(sizes), b.n<<20)
			slices.Sort(sizes)
		}
		for _, size := range sizes {
			if (op == "allreduce-ring" || strings.HasPrefix(op, "allreduce-rd") || strings.HasPrefix(op, "allreduce-tree")) && size > o.smallOps {
				continue
			}
			if size <= latencyRowBytes {
				// Latency rows: re-measure the idle round trips right
				// before, so that the ratios do not mix moments of a
				// shared machine.
				for i, p := range pingers {
					if rtts[i], err = b.idleRTT(p); err != nil {
						return err
					}
				}
			}
			if err := b.measure(op, size, c, rtts); err != nil {
				return fmt.Errorf("%s %d bytes: %w", op, size, err)
			}
		}
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return g.Shutdown(sctx)
}

func (b *bench) printf(format string, args ...any) {
	if b.rank == 0 {
		fmt.Printf(format, args...)
	}
}

// barrier is a tiny all-reduce.
func (b *bench) barrier() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return b.g.AllReduce(ctx, make([]float32, 1))
}

// gather returns every rank's x (an all-reduce of one-hot vectors).
func (b *bench) gather(x ...float64) ([][]float64, error) {
	k := len(x)
	v := make([]float32, b.n*k)
	for i, xi := range x {
		v[b.rank*k+i] = float32(xi)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := b.g.AllReduceWith(ctx, v, collective.ReduceOptions{Algorithm: allreduce.RecursiveDoubling}); err != nil {
		return nil, err
	}
	out := make([][]float64, b.n)
	for r := range b.n {
		out[r] = make([]float64, k)
		for i := range k {
			out[r][i] = float64(v[r*k+i])
		}
	}
	return out, nil
}

// probeCPU is what the machine spent moving a probe's bytes or messages:
// host is the busy core-seconds of the whole machine (/proc/stat, every
// process and the kernel's softirq work) per unit, proc the probe
// processes' own user+sys CPU seconds per unit; busy is the machine's
// busy cores over the window.
type probeCPU struct {
	host, proc, busy float64
	// hostMin and hostMax are the extremes of host over rtt's windows
	// (zero for the stream probes).
	hostMin, hostMax float64
}

// tcpProbe streams raw TCP, ring or all-to-all pattern, on all ranks at
// once and returns every rank's receive rate (bytes/s) over the window
// after the first quarter (TCP's ramp-up), and the CPU per byte moved
// (sent by one rank and received by another) over that window.
func (b *bench) tcpProbe(all bool) ([]float64, probeCPU, error) {
	var dsts []int
	for d := range b.n {
		if d != b.rank && (all || d == (b.rank+1)%b.n) {
			dsts = append(dsts, d)
		}
	}
	conns := make([]net.Conn, len(dsts))
	for i, d := range dsts {
		a, err := probeAddr(b.o, d)
		if err != nil {
			return nil, probeCPU{}, err
		}
		if conns[i], err = net.Dial("tcp", a); err != nil {
			return nil, probeCPU{}, err
		}
		if _, err := conns[i].Write([]byte{probeSink}); err != nil {
			return nil, probeCPU{}, err
		}
	}
	if err := b.barrier(); err != nil {
		return nil, probeCPU{}, err
	}
	start := time.Now()
	stop := start.Add(b.o.probe)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for time.Now().Before(stop) {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(b.o.probe / 4)
	b0, t0, h0, p0 := b.sink.bytes.Load(), time.Now(), readHostCPU(), processCPU()
	time.Sleep(time.Until(stop))
	b1, t1, h1, p1 := b.sink.bytes.Load(), time.Now(), readHostCPU(), processCPU()
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
	dt := t1.Sub(t0).Seconds()
	rate := float64(b1-b0) / dt
	rates, err := b.gather(rate, (p1-p0).Seconds()/dt, h1.busySince(h0))
	if err != nil {
		return nil, probeCPU{}, err
	}
	out := make([]float64, b.n)
	var total, proc, busy float64
	for r := range b.n {
		out[r] = rates[r][0]
		total += rates[r][0]
		proc += rates[r][1]
		busy += rates[r][2] / float64(b.n)
	}
	busy *= float64(numCPU())
	return out, probeCPU{host: busy / total, proc: proc / total, busy: busy}, nil
}

// stepSizes are the message sizes of the ring-step probe.
var stepSizes = []int{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20}

// stepProbe measures a raw-TCP ring step of each of stepSizes: every
// rank writes a message to its right neighbour while it reads one from
// its left, all ranks at once, as a ring all-reduce's step does (and a
// recursive-doubling round, with the pair's two links). It returns the
// slowest rank's mean step time per size. The step count per size is
// the same on every rank: about a quarter second at the link rate c
// (bytes/s), 10 to 2000 steps. None with one rank.
func (b *bench) stepProbe(c float64) ([]time.Duration, error) {
	if b.n < 2 {
		return nil, nil
	}
	a, err := probeAddr(b.o, (b.rank+1)%b.n)
	if err != nil {
		return nil, err
	}
	out, err := net.Dial("tcp", a)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	if _, err := out.Write([]byte{probeStep}); err != nil {
		return nil, err
	}
	var in net.Conn
	select {
	case in = <-b.sink.steps:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("ring-step probe: no connection from the left neighbour")
	}
	defer in.Close()
	var res []time.Duration
	for _, size := range stepSizes {
		est := float64(size)/c + 100e-6
		steps := max(10, min(2000, int(0.25/est)))
		send, recv := make([]byte, size), make([]byte, size)
		step := func() error {
			errc := make(chan error, 1)
			go func() {
				_, err := out.Write(send)
				errc <- err
			}()
			_, rerr := io.ReadFull(in, recv)
			if werr := <-errc; werr != nil {
				return werr
			}
			return rerr
		}
		for range 3 { // warm up
			if err := step(); err != nil {
				return nil, err
			}
		}
		if err := b.barrier(); err != nil {
			return nil, err
		}
		t0 := time.Now()
		for range steps {
			if err := step(); err != nil {
				return nil, err
			}
		}
		mean := time.Since(t0).Seconds() / float64(steps)
		all, err := b.gather(mean)
		if err != nil {
			return nil, err
		}
		slowest := 0.0
		for _, m := range all {
			slowest = max(slowest, m[0])
		}
		res = append(res, time.Duration(slowest*1e9))
	}
	return res, nil
}

// The first byte of a probe connection picks its mode.
const (
	probeSink = 'S' // count the bytes received (throughput)
	probeEcho = 'E' // then a uint32 size: send back every size bytes received (round trips)
	// probePolled is probeEcho with the echo's reads polled for the
	// bench's lane poll time before they sleep, as the lanes read.
	probePolled = 'P'
	// probeStep hands the connection to the ring-step probe.
	probeStep = 'X'
)

// lanePoll is how long the lanes and the polled probes poll a socket
// before they sleep (collective.Config.LanePoll as the bench sets it).
func lanePoll(o options) time.Duration {
	switch {
	case o.lanePoll < 0:
		return 0
	case o.lanePoll == 0:
		return collective.DefaultLanePoll
	}
	return o.lanePoll
}

const ()

// sink serves probe connections: it counts the bytes of sink connections
// and echoes ping connections.
type sink struct {
	bytes atomic.Int64
	poll  time.Duration // polled echoes' poll time
	steps chan net.Conn // ring-step probe connections from the left neighbour
}

func (s *sink) serve(lis net.Listener) {
	for {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		go func() {
			mode := make([]byte, 1)
			if _, err := io.ReadFull(c, mode); err != nil {
				c.Close()
				return
			}
			if mode[0] == probeStep {
				s.steps <- c // the ring-step probe owns it now
				return
			}
			defer c.Close()
			if mode[0] == probePolled {
				c = rawsock.Wrap(c, s.poll)
			}
			if mode[0] == probeEcho || mode[0] == probePolled {
				var size [4]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				n := binary.LittleEndian.Uint32(size[:])
				if n == 0 || n > 1<<20 {
					return
				}
				p := make([]byte, n)
				for {
					if _, err := io.ReadFull(c, p); err != nil {
						return
					}
					if _, err := c.Write(p); err != nil {
						return
					}
				}
			}
			buf := make([]byte, 1<<20)
			for {
				n, err := c.Read(buf)
				s.bytes.Add(int64(n))
				if err == io.EOF || err != nil {
					return
				}
			}
		}()
	}
}

// grpcPing is one gRPC Ping round trip to rank to.
func (b *bench) grpcPing(to int) (time.Duration, error) {
	return b.g.Ping(context.Background(), to)
}

// tcpPinger measures raw-TCP round trips: size bytes to a rank's probe
// sink in echo mode and back, on one connection per rank.
type tcpPinger struct {
	b     *bench
	size  int
	poll  time.Duration // > 0: both ends poll their reads this long, as the lanes do
	conns map[int]net.Conn
	buf   []byte
}

func (p *tcpPinger) ping(to int) (time.Duration, error) {
	c := p.conns[to]
	if c == nil {
		a, err := probeAddr(p.b.o, to)
		if err != nil {
			return 0, err
		}
		if c, err = net.Dial("tcp", a); err != nil {
			return 0, err
		}
		hello := []byte{probeEcho, 0, 0, 0, 0}
		if p.poll > 0 {
			hello[0] = probePolled
			c = rawsock.Wrap(c, p.poll)
		}
		binary.LittleEndian.PutUint32(hello[1:], uint32(p.size))
		if _, err := c.Write(hello); err != nil {
			return 0, err
		}
		p.conns[to] = c
		p.buf = make([]byte, p.size)
	}
	start := time.Now()
	if _, err := c.Write(p.buf); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c, p.buf); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (p *tcpPinger) close() {
	for _, c := range p.conns {
		c.Close()
	}
}

// rtt returns the median round trip of 200 pings: from rank 0 to rank 1
// with every other rank idle, and with every rank pinging its ring
// neighbour at the same time (as in a collective's step, where every
// member is busy), as every rank learns them.
//
// cpu is the CPU per message (a ping or its echo) of the busy pings: each
// rank's host and process CPU from its first ping to its last, over the
// messages all ranks sent meanwhile (the ranks start together after a
// barrier and ping about equally long).
//
// The busy pings run in busyWindows windows, each after a barrier, and
// busy and cpu are the medians over the windows (each quantity its own).
// One window of 200 round trips lasts 5-25 ms, a few scheduler time
// slices: with more ranks than cores it can catch one placement of the
// spinning ranks on the cores, where a collective's row is timed over a
// second and a half of them. On the 2-vCPU AMD EPYC a single window's
// polled round trip came out at 78 and 109 us in two of five runs
// (36-47 in the others), and its CPU per message at 29 us against 18-20.
func (b *bench) rtt(ping func(to int) (time.Duration, error)) (idle, busy time.Duration, cpu probeCPU, err error) {
	if idle, err = b.idleRTT(ping); err != nil {
		return 0, 0, cpu, err
	}
	if b.n == 1 {
		return idle, 0, cpu, nil
	}
	var rtts, hosts, procs, busys []float64
	for range busyWindows {
		if err = b.barrier(); err != nil {
			return 0, 0, cpu, err
		}
		h0, p0, t0 := readHostCPU(), processCPU(), time.Now()
		med, err := medianPing(ping, (b.rank+1)%b.n)
		if err != nil {
			return 0, 0, cpu, err
		}
		wall := time.Since(t0).Seconds()
		host := readHostCPU().busySince(h0) * float64(numCPU()) * wall
		proc := (processCPU() - p0).Seconds()
		all, err := b.gather(med, host, proc, wall)
		if err != nil {
			return 0, 0, cpu, err
		}
		var meds []float64
		var hostSum, procSum, wallSum float64
		for _, m := range all {
			meds = append(meds, m[0])
			hostSum += m[1]
			procSum += m[2]
			wallSum += m[3]
		}
		msgs := float64(b.n * pingCount * 2)
		rtts = append(rtts, median(meds))
		// Every rank saw the whole machine: its host share is 1/n.
		hosts = append(hosts, hostSum/float64(b.n)/msgs)
		procs = append(procs, procSum/msgs)
		busys = append(busys, hostSum/wallSum)
	}
	cpu = probeCPU{host: median(hosts), proc: median(procs), busy: median(busys),
		hostMin: slices.Min(hosts), hostMax: slices.Max(hosts)}
	return idle, time.Duration(median(rtts) * 1e9), cpu, nil
}

// busyWindows is how many windows of pingCount round trips the busy round
// trips run (rtt).
const busyWindows = 5

// median returns the median of xs (the upper one of an even count); xs is
// sorted in place.
func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// pingCount is the round trips of one RTT measurement.
const pingCount = 200

// medianPing returns the median of 200 round trips to rank to, seconds.
func medianPing(ping func(to int) (time.Duration, error), to int) (float64, error) {
	var ds []float64
	for range pingCount {
		d, err := ping(to)
		if err != nil {
			return 0, err
		}
		ds = append(ds, d.Seconds())
	}
	return median(ds), nil
}

// idleRTT returns the median round trip of 200 pings from rank 0 to rank
// 1 with every other rank idle, as every rank learns it.
func (b *bench) idleRTT(ping func(to int) (time.Duration, error)) (time.Duration, error) {
	var med float64
	if b.rank == 0 && b.n > 1 {
		var err error
		if med, err = medianPing(ping, 1); err != nil {
			return 0, err
		}
	}
	all, err := b.gather(med)
	if err != nil {
		return 0, err
	}
	return time.Duration(all[0][0] * 1e9), nil
}

// measure runs one (op, size) row; rtts are the units of the rtt-64,
// rtt-4K and rtt-grpc columns.
func (b *bench) measure(op string, size int, c float64, rtts [3]time.Duration) error {
	var runOnce func(ctx context.Context) error
	alg := "-"
	switch op {
	case "allreduce", "allreduce-bf16", "allreduce-ring", "allreduce-rd", "allreduce-tree", "allreduce-rd-grpc", "allreduce-tree-grpc":
		buf := make([]float32, size/4)
		for i := range buf {
			buf[i] = float32(b.rank + 1)
		}
		opt := collective.ReduceOptions{}
		switch op {
		case "allreduce-bf16":
			opt.Format = allreduce.BF16
		case "allreduce-ring":
			opt.Algorithm = allreduce.Ring
		case "allreduce-rd":
			opt.Algorithm = allreduce.RecursiveDoubling
		case "allreduce-tree":
			opt.Algorithm = allreduce.Tree
		case "allreduce-rd-grpc":
			opt.Algorithm, opt.SmallOverGRPC = allreduce.RecursiveDoubling, true
		case "allreduce-tree-grpc":
			opt.Algorithm, opt.SmallOverGRPC = allreduce.Tree, true
		}
		a := opt.Algorithm
		if a == allreduce.Auto {
			a = allreduce.Choose(b.n, size, b.g.Config().SmallBytes)
		}
		alg = a.String()
		runOnce = func(ctx context.Context) error { return b.g.AllReduceWith(ctx, buf, opt) }
	case "alltoall":
		per := size / b.n
		send := make([][]byte, b.n)
		for s := range send {
			send[s] = make([]byte, per)
		}
		recv := make([][]byte, b.n)
		runOnce = func(ctx context.Context) error {
			var err error
			recv, err = b.g.AllToAll(ctx, send, recv)
			return err
		}
	default:
		return fmt.Errorf("unknown op %q", op)
	}
	ctx := context.Background()
	// Warm up, and agree on the iteration count from the slowest rank.
	t0 := time.Now()
	if err := runOnce(ctx); err != nil {
		return err
	}
	warm, err := b.gather(time.Since(t0).Seconds())
	if err != nil {
		return err
	}
	slowest := 0.0
	for _, w := range warm {
		slowest = max(slowest, w[0])
	}
	iters := int(math.Ceil(b.o.target.Seconds() / slowest))
	iters = max(3, min(iters, b.o.maxIters))

	if err := b.barrier(); err != nil {
		return err
	}
	host0 := readHostCPU()
	cpu0 := processCPU()
	t0 = time.Now()
	for range iters {
		if err := runOnce(ctx); err != nil {
			return err
		}
	}
	wall := time.Since(t0)
	cpu := (processCPU() - cpu0).Seconds() / wall.Seconds()
	host := readHostCPU().busySince(host0)
	per, err := b.gather(wall.Seconds()/float64(iters), cpu)
	if err != nil {
		return err
	}
	t, cpuSum, cpuMax := 0.0, 0.0, 0.0
	for _, p := range per {
		t = max(t, p[0])
		cpuSum += p[1]
		cpuMax = max(cpuMax, p[1])
	}
	algbw := float64(size) / t
	factor := float64(b.n-1) / float64(b.n)
	if strings.HasPrefix(op, "allreduce") {
		factor *= 2
	}
	busbw := algbw * factor
	perPeer := "-"
	if op == "alltoall" {
		perPeer = fmtSize(size / b.n)
	}
	b.printf("%-19s %2d %6s %6s %4s %5d %11.1f %9.2f %9.2f %7.3f %7.1f %7.1f %8.1f %5.2f/%-5.2f %5.2f\n",
		op, b.n, fmtSize(size), perPeer, alg, iters, t*1e6, algbw/1e6, busbw/1e6, busbw/c,
		t/rtts[0].Seconds(), t/rtts[1].Seconds(), t/rtts[2].Seconds(), cpuSum/float64(b.n), cpuMax, host)
	return nil
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hostCPU is the aggregate "cpu" line of /proc/stat, in ticks.
type hostCPU struct{ busy, total uint64 }

func readHostCPU() hostCPU {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return hostCPU{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var h hostCPU
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		h.total += v
		if i != 3 && i != 4 { // idle, iowait
			h.busy += v
		}
	}
	return h
}

func (h hostCPU) busySince(h0 hostCPU) float64 {
	if h.total == h0.total {
		return 0
	}
	return float64(h.busy-h0.busy) / float64(h.total-h0.total)
}

// sysctl reads /proc/sys/<name>, or "?".
func sysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func numCPU() int {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "cpu") && !strings.HasPrefix(l, "cpu ") {
			n++
		}
	}
	return n
}

func mean(x []float64) float64 {
	s := 0.0
	for _, v := range x {
		s += v
	}
	return s / float64(len(x))
}

func fmtSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return strconv.Itoa(n)
}

func fmtRate(bits float64) string {
	switch {
	case bits >= 1e9:
		return fmt.Sprintf("%g Gbit/s", bits/1e9)
	case bits > 0:
		return fmt.Sprintf("%g Mbit/s", bits/1e6)
	}
	return "unknown"
}
