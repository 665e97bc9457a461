package collective

import (
	"context"
	"fmt"
	"runtime"

	"github.com/switchyard/switchyard/pkg/allreduce"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ReduceOptions overrides the Group's all-reduce settings for one call;
// zero fields keep the Group's.
type ReduceOptions struct {
	Algorithm allreduce.Algorithm
	Format    allreduce.Format
	// SmallOverGRPC, when true, overrides Config.SmallOverGRPC for this
	// call (every member must pass the same).
	SmallOverGRPC bool
}

// AllReduce replaces buf, on every member, with the element-wise float32
// sum of all members' bufs. Every member must pass a buffer of the same
// length. Small buffers (Config.SmallBytes) use recursive doubling, larger
// ones the pipelined ring. With the bf16 format every member still ends
// with bit-identical values.
//
// On error the contents of buf are undefined and the Group is broken
// (ErrBroken): the error is an *OpError naming the peer that failed it.
// buf must not be touched until AllReduce returns.
func (g *Group) AllReduce(ctx context.Context, buf []float32) error {
	return g.AllReduceWith(ctx, buf, ReduceOptions{})
}

// AllReduceWith is AllReduce with per-call options.
func (g *Group) AllReduceWith(ctx context.Context, buf []float32, opt ReduceOptions) error {
	format, alg := g.cfg.Format, g.cfg.Algorithm
	if opt.Format != 0 {
		format = opt.Format
	}
	if opt.Algorithm != allreduce.Auto {
		alg = opt.Algorithm
	}
	if format != allreduce.F32 && format != allreduce.BF16 {
		return fmt.Errorf("collective: all-reduce format %v", format)
	}
	if alg == allreduce.Auto {
		alg = allreduce.Choose(g.n, 4*len(buf), g.cfg.SmallBytes)
	}
	prog, err := g.plan(alg, len(buf), g.cfg.ChunkBytes/format.Size())
	if err != nil {
		return err
	}
	name := func(seq uint64) string {
		return fmt.Sprintf("allreduce #%d (%v, %v, %d elements)", seq, alg, format, len(buf))
	}
	overGRPC := g.cfg.SmallOverGRPC || opt.SmallOverGRPC
	return g.do(ctx, name, func(o *op) error { return o.runAllReduce(prog, buf, format, overGRPC) })
}

var pbFormat = map[allreduce.Format]pb.CollectiveFormat{
	allreduce.F32:  pb.CollectiveFormat_COLLECTIVE_FORMAT_F32,
	allreduce.BF16: pb.CollectiveFormat_COLLECTIVE_FORMAT_BF16,
}

// runAllReduce runs prog step by step on the lanes (runSteps) when every
// step sends at most one chunk to each peer: recursive doubling and tree
// within one chunk, and the ring while each rank's share of the buffer
// fits one chunk (up to n x ChunkBytes). Larger buffers, several chunks a
// step, need the pipelined runner: one sender per destination and one
// receiver per source of prog, ordered by allreduce.State (under o.mu),
// over the gRPC streams with their windows and acknowledgements.
//
// There F32 ring chunks are sent by reference to buf (no copy): the ring
// never writes a cell while a send of it is unacknowledged (the program's
// NeedReleased rule, with a send releasing its cell on acknowledgement).
// Every other chunk is packed into a pooled buffer, which releases the
// cell at once and returns to the pool on acknowledgement.
func (o *op) runAllReduce(planned *plan, buf []float32, format allreduce.Format, smallOverGRPC bool) error {
	g := o.g
	prog := planned.Program
	st := allreduce.NewState(prog)
	zeroCopy := format == allreduce.F32 && prog.Alg == allreduce.Ring
	wf := pbFormat[format]
	cell := func(c int) []float32 {
		x := prog.Cells[c]
		return buf[x.Off : x.Off+x.Len]
	}
	if prog.RoundAtEnd && !format.Lossless() {
		o.after = func() {
			for i, x := range buf {
				buf[i] = format.Round(x)
			}
		}
	}
	if useRunSteps && planned.stepByStep {
		return o.runSteps(prog, buf, format, smallOverGRPC)
	}
	for _, peer := range prog.Peers() {
		link, err := g.link(peer)
		if err != nil {
			return err
		}
		if sends := prog.SendsTo(peer); len(sends) > 0 {
			o.spawn(func() error {
				var last uint64
				var err error
				for i := range sends {
					t := &sends[i]
					if err := o.waitFor(func() bool { return st.CanSend(t) }); err != nil {
						return errPeer(peer, false, "step %d cell %d: waiting for local data to send: %w", t.Step, t.Cell, err)
					}
					data := cell(t.Cell)
					m := &pb.CollectiveChunk{Op: o.seq, Step: uint32(t.Step), Offset: uint64(prog.Cells[t.Cell].Off), Total: uint64(prog.Elems), Format: wf}
					var onAck func()
					if zeroCopy {
						m.Payload, m.AckNow = allreduce.AsBytes(data), true
						o.update(func() { o.pending++ })
						onAck = func() { o.update(func() { st.Released(t.Cell); o.pending-- }) }
					} else {
						// The pooled copy outlives the operation until its
						// (possibly batched) acknowledgement.
						b := g.pool.Get(format.Size() * len(data))
						format.Pack(b, data, t.Round)
						m.Payload = b
						o.update(func() { st.Released(t.Cell) })
						onAck = func() { g.pool.Put(b) }
					}
					if last, err = link.send(o.ctx, m, onAck); err != nil {
						return errPeer(peer, false, "sending step %d cell %d: %w", t.Step, t.Cell, err)
					}
				}
				if !zeroCopy {
					return nil
				}
				if err := link.waitAcked(o.ctx, last); err != nil {
					return errPeer(peer, false, "last chunk sent: %w", err)
				}
				return nil
			})
		}
		if recvs := prog.RecvsFrom(peer); len(recvs) > 0 {
			in := g.in[peer]
			o.spawn(func() error {
				for i := range recvs {
					t := &recvs[i]
					x := prog.Cells[t.Cell]
					m, err := in.next(o.ctx)
					if err != nil {
						return errPeer(peer, true, "waiting for step %d cell %d: %w", t.Step, t.Cell, err)
					}
					if err := checkChunk(m, o.seq, t, x, prog.Elems, format); err != nil {
						return errPeer(peer, false, "%w", err)
					}
					if err := o.waitFor(func() bool { return st.CanApply(t) }); err != nil {
						return errPeer(peer, false, "step %d cell %d: waiting for local sends to finish: %w", t.Step, t.Cell, err)
					}
					if err := format.Apply(cell(t.Cell), m.Payload, t.Op); err != nil {
						return errPeer(peer, false, "step %d cell %d: %w", t.Step, t.Cell, err)
					}
					o.update(func() { st.Applied(t.Cell) })
				}
				return nil
			})
		}
	}
	return nil
}

// plan is a cached program with facts the runner needs about it.
type plan struct {
	*allreduce.Program
	stepByStep bool // Program.StepByStep
}

type planKey struct {
	alg               allreduce.Algorithm
	elems, chunkElems int
}

// maxPlans bounds the plan cache (training reduces the same few bucket
// sizes every step; anything else just re-plans).
const maxPlans = 64

// plan returns this member's program for an all-reduce, from the cache
// when it can.
func (g *Group) plan(alg allreduce.Algorithm, elems, chunkElems int) (*plan, error) {
	k := planKey{alg, elems, chunkElems}
	g.plansMu.Lock()
	p := g.plans[k]
	g.plansMu.Unlock()
	if p != nil {
		return p, nil
	}
	prog, err := allreduce.Plan(alg, g.n, g.rank, elems, chunkElems)
	if err != nil {
		return nil, err
	}
	p = &plan{Program: prog, stepByStep: prog.StepByStep()}
	g.plansMu.Lock()
	if g.plans == nil || len(g.plans) >= maxPlans {
		g.plans = make(map[planKey]*plan)
	}
	g.plans[k] = p
	g.plansMu.Unlock()
	return p, nil
}

// runSteps runs prog on the calling goroutine, step by step: first the
// step's sends, then its receives (read straight from the lanes' sockets,
// polled for up to Config.LanePoll before sleeping). This satisfies the
// program's rules trivially and saves the goroutines, wake-ups,
// acknowledgements and locking of the general runner, which dominate
// small operations and, on hosts that share cores, every step of a ring
// of one chunk a step: a 256 KiB all-reduce of 4 members over 1 Gbit/s
// took 4.3-6.2 ms in the general runner and 3.30-3.32 ms (the link's
// rate) here (bench/results/collectives-ab-lanes.txt). The messages go over the direct
// lanes (lane.go) unless grpcPath, as untracked fresh copies (no
// acknowledgements, no window): with at most one chunk per link and step
// (Program.StepByStep) and every member waiting for its peers each step, a
// member is never more than one operation ahead of a peer, so at most a
// few chunks per link are ever queued.
//
// A lane frame larger than laneMaxPayload may not fit in what the kernel
// holds for a connection nobody reads, and its peer may be writing to
// this member too: it is written from a goroutine while the step's
// receives are read, and the step ends when both did.
func (o *op) runSteps(prog *allreduce.Program, buf []float32, format allreduce.Format, grpcPath bool) error {
	g := o.g
	wf := pbFormat[format]
	si, ri := 0, 0
	var writes []chan struct{} // the step's frames written beside its receives
	for step := 0; step < prog.Steps; step++ {
		writes = writes[:0]
		for ; si < len(prog.Sends) && prog.Sends[si].Step == step; si++ {
			t := &prog.Sends[si]
			x := prog.Cells[t.Cell]
			m := &pb.CollectiveChunk{Op: o.seq, Step: uint32(step), Offset: uint64(x.Off), Total: uint64(prog.Elems), Format: wf, Untracked: true}
			size := format.Size() * x.Len
			if grpcPath {
				link, err := g.link(t.Peer)
				if err != nil {
					return err
				}
				// A fresh, untracked copy: no acknowledgement traffic.
				m.Payload = make([]byte, size)
				format.Pack(m.Payload, buf[x.Off:x.Off+x.Len], t.Round)
				if _, err := link.send(o.ctx, m, nil); err != nil {
					return errPeer(t.Peer, false, "sending step %d cell %d: %w", step, t.Cell, err)
				}
				continue
			}
			lane, err := g.laneLink(t.Peer)
			if err != nil {
				return err
			}
			frame := lane.frame(size)
			format.Pack(frame[laneHeader:], buf[x.Off:x.Off+x.Len], t.Round)
			if size <= laneMaxPayload {
				if err := o.laneSend(lane, frame, m, t); err != nil {
					return err
				}
				continue
			}
			// Spawned, so that the operation's end (which closes the lanes
			// and unblocks the write) waits for it; its error fails the
			// operation.
			wrote := make(chan struct{})
			writes = append(writes, wrote)
			o.spawn(func() error {
				defer close(wrote)
				return o.laneSend(lane, frame, m, t)
			})
		}
		if len(writes) > 0 {
			runtime.Gosched() // let the writes start before this goroutine polls its reads
		}
		for ; ri < len(prog.Recvs) && prog.Recvs[ri].Step == step; ri++ {
			t := &prog.Recvs[ri]
			x := prog.Cells[t.Cell]
			var m *pb.CollectiveChunk
			var err error
			if grpcPath {
				m, err = g.in[t.Peer].next(o.ctx)
			} else {
				var bye bool
				m, bye, err = g.lin[t.Peer].next(o.ctx, g.maxMsg(), g.cfg.LanePoll)
				switch {
				case o.ctx.Err() != nil: // the operation ended and closed the lanes
					err = context.Cause(o.ctx)
				case bye:
					err = errPeerShutdown
				}
				if err != nil {
					err = fmt.Errorf("lane from %s ended: %w", g.peerName(t.Peer), err)
				}
			}
			if err != nil {
				return errPeer(t.Peer, true, "waiting for step %d cell %d: %w", step, t.Cell, err)
			}
			if err := checkChunk(m, o.seq, t, x, prog.Elems, format); err != nil {
				return errPeer(t.Peer, false, "%w", err)
			}
			if err := format.Apply(buf[x.Off:x.Off+x.Len], m.Payload, t.Op); err != nil {
				return errPeer(t.Peer, false, "step %d cell %d: %w", step, t.Cell, err)
			}
		}
		// The next step reuses the lanes' frame buffers.
		for _, wrote := range writes {
			select {
			case <-wrote:
			case <-o.ctx.Done():
				return context.Cause(o.ctx)
			}
		}
	}
	return nil
}

// laneSend writes the frame of send t on lane.
func (o *op) laneSend(lane *laneOut, frame []byte, m *pb.CollectiveChunk, t *allreduce.Transfer) error {
	if err := lane.send(frame, m, 0); err != nil {
		if o.ctx.Err() != nil { // the operation ended and closed the lanes
			err = context.Cause(o.ctx)
		}
		return errPeer(t.Peer, false, "sending step %d cell %d on the lane: %w", t.Step, t.Cell, err)
	}
	return nil
}

// checkChunk validates a received all-reduce chunk against the receive t
// of cell x that the program expects next from its source.
func checkChunk(m *pb.CollectiveChunk, seq uint64, t *allreduce.Transfer, x allreduce.Cell, elems int, format allreduce.Format) error {
	wf := pbFormat[format]
	if m.Op != seq || m.Step != uint32(t.Step) || m.Offset != uint64(x.Off) || m.Total != uint64(elems) || m.Format != wf || len(m.Payload) != format.Size()*x.Len {
		return fmt.Errorf("protocol: got op %d step %d offset %d of %d elements, %v, %d bytes; want op %d step %d offset %d of %d, %v, %d bytes",
			m.Op, m.Step, m.Offset, m.Total, m.Format, len(m.Payload), seq, t.Step, x.Off, elems, wf, format.Size()*x.Len)
	}
	return nil
}

// useRunSteps enables runSteps (benchmarks turn it off to compare).
var useRunSteps = true
