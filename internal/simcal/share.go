package simcal

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// Sharing is what one-thread processes pay for sharing the machine's
// cores with more of their kind than there are cores, each woken by a
// message, computing a few expert products and answering, as the
// workers of the emulated hosts do (scripts/bench-serve.sh's
// "4hosts1thread": four worker processes and a front end, GOMAXPROCS=1
// each, on two cores). MeasureSharing measures it with real processes
// (ShareChild), the real expert kernel and real sockets.
type Sharing struct {
	// Procs is the one-thread processes measured side by side, Cores the
	// cores they shared; Rows and Products the rows of each expert
	// product and the products per wake; Gap the pause between rounds
	// (every process idle, as between a decode step's layers).
	Procs, Cores, Rows, Products int
	Gap                          time.Duration
	// Product is a product's core time (its process's, every thread)
	// with Cores processes busy side by side, Shared with Procs.
	Product, Shared time.Duration
	// WakeIdle is a process's core time per round beyond its products
	// (reading the message, answering, the Go runtime's and the
	// kernel's part in waking it) when every round follows Gap idle;
	// WakeBusy the same with the next message sent as it answers. Their
	// difference is what waking from idle adds to a message's handling.
	WakeIdle, WakeBusy time.Duration
}

// Factor is Shared over Product: what sharing the cores among Procs
// one-thread processes adds to a product's core time over Cores of them
// (each with a core of its own); 0 when not measured.
func (s Sharing) Factor() float64 {
	if s.Product <= 0 || s.Shared <= 0 {
		return 0
	}
	return s.Shared.Seconds() / s.Product.Seconds()
}

// WakeWork is the core time waking from idle adds to a message, per wake
// (WakeIdle - WakeBusy, at least 0).
func (s Sharing) WakeWork() time.Duration { return max(s.WakeIdle-s.WakeBusy, 0) }

// ShareOptions says how MeasureSharing runs.
type ShareOptions struct {
	// Procs is the one-thread processes to run side by side (at least 2).
	Procs int
	// Hidden and Inter are the expert's shape (bf16 weights).
	Hidden, Inter int
	// Rows and Products: each wake's products (default 3 rows, 6
	// products: a 16-client decode step's rows per expert and experts
	// per worker on the bench model).
	Rows, Products int
	// Gap is the idle pause before each round (default 3 ms, about a
	// decode layer's gap on the emulated hosts).
	Gap time.Duration
	// Rounds per measurement (default 80).
	Rounds int
	// Command returns the command that runs ShareChild against addr
	// (the caller's binary: switchyard simulate calibrate --share-child);
	// MeasureSharing adds GOMAXPROCS=1 to its environment (this
	// process's where the command sets none).
	Command func(addr string) *exec.Cmd
}

func (o *ShareOptions) defaults() {
	if o.Rows <= 0 {
		o.Rows = 3
	}
	if o.Products <= 0 {
		o.Products = 6
	}
	if o.Gap <= 0 {
		o.Gap = 3 * time.Millisecond
	}
	if o.Rounds <= 0 {
		o.Rounds = 80
	}
}

// The share protocol, parent to child: an 8-byte command (products uint32,
// rows uint32). products > 0: run them and answer one byte; shareReport:
// answer the counters since the last report (4 x uint64: the products'
// core time ns, the process's core time ns, products, rounds) and reset
// them; shareExit: exit. The child's first byte, once its experts are
// built, says it is ready.
const (
	shareReps   = 4
	shareReport = 1<<32 - 1
	shareExit   = 0
)

// MeasureSharing starts o.Procs children (o.Command, GOMAXPROCS=1), each
// holding its own experts of o.Hidden x o.Inter bf16 weights (the
// calibration's expert curve's 256 MiB, streamed from memory: o.Procs x
// 256 MiB in all), and measures, over o.Rounds rounds each (in shareReps
// interleaved turns, after a warm-up):
//   - Product: min(Procs, cores) children sent a round together, the next
//     round o.Gap after the last answer;
//   - Shared and WakeIdle: all Procs children the same way;
//   - WakeBusy: all Procs children, each sent its next round as it answers.
//
// The children run nothing else; run nothing else on the machine.
func MeasureSharing(ctx context.Context, o ShareOptions) (Sharing, error) {
	o.defaults()
	cores := runtime.NumCPU()
	res := Sharing{Procs: o.Procs, Cores: cores, Rows: o.Rows, Products: o.Products, Gap: o.Gap}
	if o.Procs < 2 || o.Hidden <= 0 || o.Inter <= 0 || o.Command == nil {
		return res, fmt.Errorf("simcal: sharing: want 2 or more processes, an expert shape and a command (got %d, %dx%d)", o.Procs, o.Hidden, o.Inter)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer lis.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// Each child is waited for by a goroutine of its own: one that exits
	// early (it failed, or was killed) closes the listener and the
	// connections, so that nothing here waits on it.
	var (
		mu       sync.Mutex
		stopping bool
		childErr error
		waits    sync.WaitGroup
		cmds     []*exec.Cmd
	)
	defer func() {
		mu.Lock()
		stopping = true
		mu.Unlock()
		for _, c := range cmds {
			c.Process.Kill()
		}
		waits.Wait()
	}()
	for range o.Procs {
		c := o.Command(lis.Addr().String())
		if c.Env == nil {
			c.Env = os.Environ()
		}
		c.Env = append(c.Env, "GOMAXPROCS=1")
		c.Stdout, c.Stderr = io.Discard, os.Stderr
		if err := c.Start(); err != nil {
			return res, fmt.Errorf("simcal: sharing: %w", err)
		}
		cmds = append(cmds, c)
		waits.Add(1)
		go func() {
			defer waits.Done()
			err := c.Wait()
			mu.Lock()
			defer mu.Unlock()
			if !stopping {
				childErr = fmt.Errorf("a child exited early (%v)", err)
				cancel()
			}
		}()
	}
	// failed wraps err with the child's exit, where one exited.
	failed := func(err error) error {
		mu.Lock()
		defer mu.Unlock()
		if childErr != nil {
			return fmt.Errorf("simcal: sharing: %w", childErr)
		}
		return fmt.Errorf("simcal: sharing: %w", err)
	}
	conns := make([]net.Conn, 0, o.Procs)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() { // a child gone, or the deadline: nothing blocks on the listener or a connection
		<-ctx.Done()
		lis.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.SetDeadline(time.Now())
		}
	}()
	for range o.Procs {
		c, err := lis.Accept()
		if err != nil {
			return res, failed(fmt.Errorf("children did not connect: %w", err))
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	for _, c := range conns {
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return res, failed(fmt.Errorf("a child failed before it was ready: %w", err))
		}
	}
	cmd := func(c net.Conn, products, rows uint32) error {
		var b [8]byte
		binary.BigEndian.PutUint32(b[:4], products)
		binary.BigEndian.PutUint32(b[4:], rows)
		_, err := c.Write(b[:])
		return err
	}
	ack := func(c net.Conn) error {
		var b [1]byte
		_, err := io.ReadFull(c, b[:])
		return err
	}
	type counters struct{ product, process, products, rounds uint64 }
	report := func(cs []net.Conn) (counters, error) {
		var sum counters
		for _, c := range cs {
			if err := cmd(c, shareReport, 0); err != nil {
				return sum, err
			}
			var b [32]byte
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return sum, err
			}
			sum.product += binary.BigEndian.Uint64(b[0:])
			sum.process += binary.BigEndian.Uint64(b[8:])
			sum.products += binary.BigEndian.Uint64(b[16:])
			sum.rounds += binary.BigEndian.Uint64(b[24:])
		}
		return sum, nil
	}
	// rounds runs n rounds on cs, all sent together, Gap after the last
	// answer (gap) or each child's next round sent as it answers (!gap),
	// and returns the counters.
	rounds := func(cs []net.Conn, n int, gap bool) (counters, error) {
		if _, err := report(cs); err != nil { // reset
			return counters{}, err
		}
		if gap {
			for range n {
				time.Sleep(o.Gap)
				for _, c := range cs {
					if err := cmd(c, uint32(o.Products), uint32(o.Rows)); err != nil {
						return counters{}, err
					}
				}
				for _, c := range cs {
					if err := ack(c); err != nil {
						return counters{}, err
					}
				}
			}
		} else {
			var wg sync.WaitGroup
			errs := make([]error, len(cs))
			for i, c := range cs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range n {
						if err := cmd(c, uint32(o.Products), uint32(o.Rows)); err != nil {
							errs[i] = err
							return
						}
						if err := ack(c); err != nil {
							errs[i] = err
							return
						}
					}
				}()
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				return counters{}, err
			}
		}
		return report(cs)
	}
	perProduct := func(c counters) time.Duration {
		return time.Duration(c.product / max(c.products, 1))
	}
	perWake := func(c counters) time.Duration {
		return time.Duration((c.process - min(c.product, c.process)) / max(c.rounds, 1))
	}
	if _, err := rounds(conns, max(o.Rounds/6, 3), true); err != nil { // warm-up
		return res, failed(err)
	}
	// The three measurements interleaved in shareReps turns, summed: two
	// phases of the same processes back to back differed by 8% on an
	// AMD EPYC VM.
	var few, all, busy counters
	add := func(a *counters, b counters) {
		a.product += b.product
		a.process += b.process
		a.products += b.products
		a.rounds += b.rounds
	}
	per := max(o.Rounds/shareReps, 1)
	for range shareReps {
		c, err := rounds(conns[:min(cores, o.Procs)], per, true)
		if err != nil {
			return res, failed(err)
		}
		add(&few, c)
		if c, err = rounds(conns, per, true); err != nil {
			return res, failed(err)
		}
		add(&all, c)
		if c, err = rounds(conns, per, false); err != nil {
			return res, failed(err)
		}
		add(&busy, c)
	}
	res.Product, res.Shared = perProduct(few), perProduct(all)
	res.WakeIdle, res.WakeBusy = perWake(all), perWake(busy)
	mu.Lock()
	stopping = true
	mu.Unlock()
	for _, c := range conns {
		cmd(c, shareExit, 0)
	}
	waits.Wait()
	cmds = nil
	if res.Product <= 0 || res.Shared <= 0 {
		return res, fmt.Errorf("simcal: sharing: the products took no core time")
	}
	return res, nil
}

// ShareChild is MeasureSharing's child: it builds its experts of hidden
// x inter bf16 weights, connects to addr, says it is ready and answers
// the share protocol until told to exit. Run it with GOMAXPROCS=1.
func ShareChild(addr string, hidden, inter int) error {
	if hidden <= 0 || inter <= 0 {
		return fmt.Errorf("simcal: share child: expert shape %dx%d", hidden, inter)
	}
	ffns := curveExperts(hidden, inter)
	// The runtime quiet before the measurement: building the experts
	// left garbage whose collection and scavenging would land in the
	// first products' core time.
	runtime.GC()
	debug.FreeOSMemory()
	maxRows := 64
	r := rand.New(rand.NewPCG(7, 8))
	x, y, h := randF32(r, maxRows*hidden), make([]float32, maxRows*hidden), make([]float32, 2*maxRows*inter)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	if _, err := conn.Write([]byte{'r'}); err != nil {
		return err
	}
	var product, products, rounds uint64
	start := cpuNow()
	next := 0
	for {
		var b [8]byte
		if _, err := io.ReadFull(br, b[:]); err != nil {
			return err
		}
		n, rows := binary.BigEndian.Uint32(b[:4]), int(binary.BigEndian.Uint32(b[4:]))
		switch n {
		case shareExit:
			return nil
		case shareReport:
			var out [32]byte
			binary.BigEndian.PutUint64(out[0:], product)
			binary.BigEndian.PutUint64(out[8:], uint64(cpuNow()-start))
			binary.BigEndian.PutUint64(out[16:], products)
			binary.BigEndian.PutUint64(out[24:], rounds)
			if _, err := conn.Write(out[:]); err != nil {
				return err
			}
			product, products, rounds = 0, 0, 0
			start = cpuNow()
			continue
		}
		rows = min(max(rows, 1), maxRows)
		t0 := cpuNow()
		for range n {
			ffns[next%len(ffns)].Forward(y, x, rows, h)
			next++
		}
		product += uint64(cpuNow() - t0)
		products += uint64(n)
		rounds++
		if _, err := conn.Write([]byte{'d'}); err != nil {
			return err
		}
	}
}

// curveExperts are distinct experts of hidden x inter bf16 weights,
// expertCurveBytes of them in all (at least 4): cycled over, they stream
// from memory as a worker's do.
func curveExperts(hidden, inter int) []*expert.FFN {
	r := rand.New(rand.NewPCG(uint64(hidden), uint64(inter)))
	bf16 := func(rows, cols int) tensor.Mat {
		w := make([]uint16, rows*cols)
		tensor.F32ToBF16(w, randF32(r, rows*cols))
		return tensor.Mat{Rows: rows, Cols: cols, BF16: w}
	}
	per := 3 * hidden * inter * 2
	ffns := make([]*expert.FFN, max(4, (expertCurveBytes+per-1)/per))
	ffns[0] = &expert.FFN{Gate: bf16(inter, hidden), Up: bf16(inter, hidden), Down: bf16(hidden, inter)}
	for i := 1; i < len(ffns); i++ { // copies: the weights' values do not change the time
		cp := func(m tensor.Mat) tensor.Mat { m.BF16 = slices.Clone(m.BF16); return m }
		ffns[i] = &expert.FFN{Gate: cp(ffns[0].Gate), Up: cp(ffns[0].Up), Down: cp(ffns[0].Down)}
	}
	return ffns
}

// cpuNow is the process's core time (every thread, user and kernel:
// CLOCK_PROCESS_CPUTIME_ID, nanoseconds).
func cpuNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		return processCPU()
	}
	return time.Duration(ts.Nano())
}
