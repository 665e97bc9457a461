package simulate

import (
	"fmt"
	"slices"
	"time"

	"github.com/switchyard/switchyard/pkg/allreduce"
)

// Host is one machine of the simulated cluster.
type Host struct {
	// Rate is the network interface's rate each way, bytes/s.
	Rate float64
	// Latency is the one-way wire and stack latency of a message.
	Latency time.Duration
	// Cores run the per-message software (a message's send and receive
	// costs each take one core for Costs.MsgCPU).
	Cores int
	// Burst, when > 0, makes each direction of the interface a token
	// bucket of Burst bytes refilled at Rate, as tc tbf shapes the
	// emulated links (scripts/netns/cluster.sh: max(rate/250, 64 KiB)): a
	// message the bucket covers leaves at once, the rest at Rate. 0: a
	// plain link of Rate (a real NIC).
	Burst int
}

// bucket is one direction of an interface: busy until busy, holding
// tokens bytes of burst at time at.
type bucket struct {
	busy   time.Duration
	tokens float64
	at     time.Duration
	init   bool
}

// pass returns when a message of b bytes ready at ready has passed the
// interface (its last byte out), and takes it.
func (k *bucket) pass(ready time.Duration, b int, h Host) time.Duration {
	t := max(ready, k.busy)
	if h.Burst <= 0 {
		k.busy = t + rate(b, h.Rate)
		return k.busy
	}
	if !k.init {
		k.tokens, k.at, k.init = float64(h.Burst), t, true
	}
	k.tokens = min(float64(h.Burst), k.tokens+(t-k.at).Seconds()*h.Rate)
	k.at = t
	if k.tokens >= float64(b) {
		k.tokens -= float64(b)
		k.busy = t
		return t
	}
	k.busy = t + time.Duration((float64(b)-k.tokens)/h.Rate*float64(time.Second))
	k.tokens, k.at = 0, k.busy
	return k.busy
}

// Costs are per-operation software costs (calibrated).
type Costs struct {
	// MsgCPU is the CPU time of sending or receiving one message (framing,
	// system calls, wake-ups), charged on the sender's and on the
	// receiver's host.
	MsgCPU time.Duration
	// ReduceBytesPerS is the rate at which a received float32 chunk is
	// added into the buffer (0: free).
	ReduceBytesPerS float64
	// ByteCPU is the CPU time per byte moved, seconds: the copies,
	// framing and the kernel's TCP work of a message, half charged on the
	// sender's cores before the message leaves and half on the
	// receiver's after it arrived (0: free). A message is pipelined in
	// SegmentBytes pieces: its first piece leaves once copied, its last
	// byte cannot leave before the sender's copying ended, and the
	// receiver's work ends one piece's worth after the last byte came.
	ByteCPU float64
	// SegmentBytes is that pipelining's piece (default 64 KiB, the
	// kernel's largest TCP segment offload).
	SegmentBytes int
}

// pieces is how many SegmentBytes pieces a message of b bytes moves in.
func (c Costs) pieces(b int) int {
	seg := c.SegmentBytes
	if seg <= 0 {
		seg = 64 << 10
	}
	return max(1, (b+seg-1)/seg)
}

// AllReduce is one all-reduce to predict.
type AllReduce struct {
	Alg   allreduce.Algorithm // Auto: allreduce.Choose(N, Bytes, SmallBytes), as pkg/collective does
	N     int                 // ranks, one per host
	Bytes int                 // float32 data, bytes (a multiple of 4)
	// ChunkBytes is the largest message (pkg/collective's ChunkBytes;
	// default 1 MiB). SmallBytes is the recursive-doubling threshold
	// (default allreduce.DefaultSmallBytes).
	ChunkBytes, SmallBytes int
	// Iterations > 1 runs that many all-reduces back to back, each rank
	// starting the next when it finished the last (as a benchmark or a
	// training loop does), and returns the mean time of the second half:
	// the steady state, where token buckets and queues have settled (the
	// buckets start empty, as after a long loop).
	Iterations int
}

// core is a host's pool of cores: each task takes the earliest free one.
type core []time.Duration

func (c core) run(ready, d time.Duration) time.Duration {
	best := 0
	for i := range c {
		if c[i] < c[best] {
			best = i
		}
	}
	start := max(ready, c[best])
	c[best] = start + d
	return c[best]
}

// Machine is where the simulated hosts run: each host with cores of its
// own (SharedCores 0: a real cluster), or every host on one pool of
// SharedCores cores (the emulated cluster of network namespaces on one
// machine, which the simulator is validated against).
type Machine struct {
	Hosts       []Host
	SharedCores int
}

// PredictAllReduce returns the time of one all-reduce over m's hosts
// (len(m.Hosts) == a.N, rank i on host i) from every rank's start to the
// last rank's end, and the algorithm it used. Each rank runs its pkg/allreduce
// program: a send waits for the receives its cell needs (NeedApplied) and
// for its step's predecessors on the same rank, costs MsgCPU on a sender
// core, occupies the sender's interface for bytes/Rate (in program order),
// arrives Latency later, is serialized on the receiver's interface, then
// costs MsgCPU (and the reduction) on a receiver core.
func PredictAllReduce(a AllReduce, m Machine, c Costs) (time.Duration, allreduce.Algorithm, error) {
	hosts := m.Hosts
	if a.N < 1 || len(hosts) != a.N {
		return 0, 0, fmt.Errorf("simulate: %d ranks on %d hosts", a.N, len(hosts))
	}
	if a.ChunkBytes == 0 {
		a.ChunkBytes = 1 << 20
	}
	if a.SmallBytes == 0 {
		a.SmallBytes = allreduce.DefaultSmallBytes
	}
	alg := a.Alg
	if alg == allreduce.Auto {
		alg = allreduce.Choose(a.N, a.Bytes, a.SmallBytes)
	}
	if a.N == 1 {
		return 0, alg, nil
	}
	elems := a.Bytes / 4
	if alg == allreduce.Ring && m.SharedCores < 1 && homogeneous(m.Hosts) && a.Iterations <= 1 && c.ByteCPU == 0 {
		// Transfers the event model would walk: 2(n-1) steps x n ranks x
		// the cells of a step. Beyond a few million (a 21 GB gradient on
		// 1024 hosts is billions) use the ring's closed form, which the
		// event model matches within 2% where both run (TestRingClosedForm;
		// it is the slower: steps overlap their first chunks there).
		cells := (elems/a.N + a.ChunkBytes/4 - 1) / (a.ChunkBytes / 4)
		if float64(2*(a.N-1))*float64(a.N)*float64(max(cells, 1)) > 4e6 {
			return RingTime(a.N, a.Bytes, m.Hosts[0], c), alg, nil
		}
	}
	progs := make([]*allreduce.Program, a.N)
	for r := range progs {
		p, err := allreduce.Plan(alg, a.N, r, elems, a.ChunkBytes/4)
		if err != nil {
			return 0, alg, err
		}
		progs[r] = p
	}
	cores := make([]core, a.N)
	shared := make(core, max(m.SharedCores, 0))
	for r, h := range hosts {
		if h.Rate <= 0 || (h.Cores < 1 && m.SharedCores < 1) {
			return 0, alg, fmt.Errorf("simulate: host %d: rate %g B/s, %d cores", r, h.Rate, h.Cores)
		}
		cores[r] = shared
		if m.SharedCores < 1 {
			cores[r] = make(core, h.Cores)
		}
	}
	tx := make([]bucket, a.N)
	rx := make([]bucket, a.N)
	iters := max(a.Iterations, 1)
	if iters > 1 {
		// A loop long enough to have spent the bursts: buckets start
		// empty and fill only while the links idle.
		for r := range tx {
			tx[r].init, rx[r].init = true, true
		}
	}
	base := make([]time.Duration, a.N) // when each rank starts the iteration
	var ends []time.Duration
	for it := 0; it < iters; it++ {
		done, err := runOnce(progs, m.Hosts, cores, tx, rx, base, c)
		if err != nil {
			return 0, alg, err
		}
		end := time.Duration(0)
		for _, d := range done {
			end = max(end, d)
		}
		ends = append(ends, end)
		copy(base, done)
	}
	if iters == 1 {
		return ends[0], alg, nil
	}
	// Steady state: the mean over the second half of the iterations.
	h := iters / 2
	return (ends[iters-1] - ends[h-1]) / time.Duration(iters-h), alg, nil
}

// runOnce runs one all-reduce of every rank's program from base[r] and
// returns when each rank applied its last receive.
func runOnce(progs []*allreduce.Program, hosts []Host, cores []core, tx, rx []bucket, base []time.Duration, c Costs) ([]time.Duration, error) {
	n := len(progs)
	// applied[r][cell] lists the times at which rank r applied receives
	// into cell, in order (a send or receive needing k applied receives
	// waits for the k-th).
	applied := make([]map[int][]time.Duration, n)
	for r := range applied {
		applied[r] = map[int][]time.Duration{}
	}
	// Messages in flight per (src, dst, step, cell), matched by receives.
	type key struct{ src, dst, step, cell int }
	wire := map[key]time.Duration{}
	done := slices.Clone(base)
	need := func(r, cell, k int) time.Duration {
		if k == 0 {
			return base[r]
		}
		ts := applied[r][cell]
		if len(ts) < k {
			return -1
		}
		return ts[k-1]
	}
	for s := 0; s < progs[0].Steps; s++ {
		for r, p := range progs {
			for _, tr := range p.Sends {
				if tr.Step != s {
					continue
				}
				ready := need(r, tr.Cell, tr.NeedApplied)
				if ready < 0 {
					return nil, fmt.Errorf("simulate: rank %d step %d cell %d needs %d applied receives", r, s, tr.Cell, tr.NeedApplied)
				}
				bytes := p.Cells[tr.Cell].Len * 4
				copying := cpuTime(bytes, c.ByteCPU/2)
				k := time.Duration(c.pieces(bytes))
				end := cores[r].run(ready, c.MsgCPU+copying)
				// The first piece leaves once copied; the last cannot
				// leave before the copying ended.
				out := tx[r].pass(end-copying+copying/k, bytes, hosts[r])
				if last := end + rate(bytes, hosts[r].Rate)/k; k > 1 && hosts[r].Burst <= 0 {
					out = max(out, last)
				}
				out = max(out, end)
				wire[key{r, tr.Peer, s, tr.Cell}] = out + hosts[r].Latency
			}
		}
		for r, p := range progs {
			for _, tr := range p.Recvs {
				if tr.Step != s {
					continue
				}
				arrive, ok := wire[key{tr.Peer, r, s, tr.Cell}]
				if !ok {
					return nil, fmt.Errorf("simulate: rank %d step %d: no message from rank %d for cell %d", r, s, tr.Peer, tr.Cell)
				}
				bytes := p.Cells[tr.Cell].Len * 4
				// The receiver's side of the link is shaped too: the message
				// is in once its interface has passed it.
				wireTime := rate(bytes, hosts[r].Rate)
				got := max(rx[r].pass(arrive-wireTime, bytes, hosts[r]), arrive)
				perByte := cpuTime(bytes, c.ByteCPU/2)
				if tr.Op == allreduce.Reduce && c.ReduceBytesPerS > 0 {
					perByte += rate(bytes, c.ReduceBytesPerS)
				}
				// The receiver works on the pieces as they come (from
				// the first one's arrival) and ends one piece's work after
				// the last byte came.
				k := time.Duration(c.pieces(bytes))
				ready := max(got-wireTime+wireTime/k, need(r, tr.Cell, tr.NeedApplied))
				t := cores[r].run(ready, c.MsgCPU+perByte)
				t = max(t, got+perByte/k+c.MsgCPU)
				applied[r][tr.Cell] = append(applied[r][tr.Cell], t)
				done[r] = max(done[r], t)
			}
		}
	}
	return done, nil
}

// RingTime is the ring all-reduce's closed form on n identical hosts with
// cores of their own and no CPU per byte: 2(n-1) steps, each moving a 1/n share of the buffer
// over every link at once, its first chunk paying the latency and a
// send's and a receive's CPU (later chunks overlap them).
func RingTime(n, bytes int, h Host, c Costs) time.Duration {
	if n < 2 {
		return 0
	}
	step := rate(bytes/n, h.Rate) + h.Latency + 2*c.MsgCPU
	return time.Duration(2*(n-1)) * step
}

// cpuTime is b bytes at perByte seconds each.
func cpuTime(b int, perByte float64) time.Duration {
	return time.Duration(float64(b) * perByte * float64(time.Second))
}

func homogeneous(hs []Host) bool {
	for _, h := range hs[1:] {
		if h != hs[0] {
			return false
		}
	}
	return true
}

// rate is the time bytes take at perS bytes per second.
func rate(bytes int, perS float64) time.Duration {
	return time.Duration(float64(bytes) / perS * float64(time.Second))
}
