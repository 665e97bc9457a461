package collective

import (
	"bytes"
	"context"
	"fmt"

	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// copyBlockBytes is the largest all-to-all block sent as an untracked copy
// (if it also fits one chunk): below it a copy costs less than waiting for the
// acknowledgement that a block sent by reference needs before AllToAll may
// return.
const copyBlockBytes = 64 << 10

// maxBlockBytes bounds the block size a peer may announce (a corrupt
// header must not make us allocate terabytes).
const maxBlockBytes = 1 << 40

// AllToAll sends send[s] to member s, for every s, and returns recv with
// recv[s] holding the block member s sent to this member. Blocks may have
// any size, including zero, and differ per pair; the receiver learns each
// size from the first chunk. recv may be nil or hold len(send) buffers
// from an earlier call, reused when their capacity suffices.
// send[Rank] is copied to recv[Rank] locally.
//
// Blocks go out in a pairwise order (the k-th to member Rank+k), in rounds
// of Config.Window chunks of Config.AllToAllChunkBytes per peer; blocks
// larger than 64 KiB are sent by reference, so send must not change until
// AllToAll returns.
// On error the Group is broken (see AllReduce).
func (g *Group) AllToAll(ctx context.Context, send, recv [][]byte) ([][]byte, error) {
	if len(send) != g.n {
		return recv, fmt.Errorf("collective: AllToAll with %d blocks for %d members", len(send), g.n)
	}
	if recv == nil {
		recv = make([][]byte, g.n)
	}
	if len(recv) != g.n {
		return recv, fmt.Errorf("collective: AllToAll with %d receive buffers for %d members", len(recv), g.n)
	}
	out := 0
	for _, b := range send {
		out += len(b)
	}
	name := func(seq uint64) string { return fmt.Sprintf("alltoall #%d (%d bytes out)", seq, out) }
	err := g.do(ctx, name, func(o *op) error { return o.runAllToAll(send, recv) })
	return recv, err
}

// runAllToAll starts sendBlocks and one receiver per source.
func (o *op) runAllToAll(send, recv [][]byte) error {
	g := o.g
	recv[g.rank] = append(recv[g.rank][:0], send[g.rank]...)
	links := make([]*outLink, g.n)
	for peer := range g.n {
		if peer == g.rank {
			continue
		}
		link, err := g.link(peer)
		if err != nil {
			return err
		}
		links[peer] = link
	}
	o.spawn(func() error { return o.sendBlocks(send, links) })
	for peer := range g.n {
		if peer == g.rank {
			continue
		}
		in := g.in[peer]
		o.spawn(func() error {
			var got, total uint64
			for first := true; first || got < total; first = false {
				m, err := in.next(o.ctx)
				if err != nil {
					return errPeer(peer, true, "waiting for bytes from offset %d: %w", got, err)
				}
				if first {
					total = m.Total
					if total > maxBlockBytes {
						return errPeer(peer, false, "protocol: block of %d bytes", total)
					}
					if uint64(cap(recv[peer])) < total {
						recv[peer] = make([]byte, total)
					}
					recv[peer] = recv[peer][:total]
				}
				n := uint64(len(m.Payload))
				if m.Op != o.seq || m.Format != pb.CollectiveFormat_COLLECTIVE_FORMAT_BYTES || m.Total != total || m.Offset != got ||
					got+n > total || (n == 0 && total != 0) || n > uint64(g.cfg.AllToAllChunkBytes) {
					return errPeer(peer, false, "protocol: got op %d %v bytes [%d, +%d) of %d; want op %d bytes at %d of %d",
						m.Op, m.Format, m.Offset, n, m.Total, o.seq, got, total)
				}
				copy(recv[peer][got:], m.Payload)
				got += n
			}
			return nil
		})
	}
	return nil
}

// sendBlocks sends the blocks in a pairwise (shifted) order: the k-th block
// goes to rank+k. When all members do this, at any moment each one sends
// to a single peer and receives from a single peer, so every link runs at
// full rate and no downlink is shared by several senders (sharing one
// makes TCP split it unevenly, and the slowest flow then finishes alone,
// leaving the link idle). To keep that order on the wire and not just in
// the send calls, at most Window chunks of AllToAllChunkBytes are
// unacknowledged across all peers together: enough to keep one link busy
// (an acknowledgement returns about one chunk time after its chunk left),
// too little to start the next block while the current one still waits in
// this host's queues. Large blocks go in rounds of one window (Window x
// AllToAllChunkBytes bytes) per peer, so members that drift apart (one
// descheduled for a while) collide for at most a round, not a whole
// block. Measured at 4 x 1 Gbit/s (busbw/C, 1 / 16 / 64 MiB per peer):
// whole blocks 0.99-1.0 / 0.95-0.99 / 0.85-0.86; one chunk per round
// 0.95-0.99 / 0.96-0.98 / 0.91-0.93; one window per round 0.99-1.0 /
// 0.98-1.0 / 0.94-0.95 (two runs each, side by side).
//
// A small block goes as one untracked copy without waiting; larger ones go
// by reference, and sendBlocks returns only when every one of their chunks
// has been acknowledged.
func (o *op) sendBlocks(send [][]byte, links []*outLink) error {
	g := o.g
	chunk := g.cfg.AllToAllChunkBytes
	last := make([]uint64, g.n) // per peer: the chunk to wait for, 0 if none
	off := make([]int, g.n)     // per peer: bytes of its block sent so far
	var big []int               // peers whose block goes by reference, in send order
	for k := 1; k < g.n; k++ {
		peer := (g.rank + k) % g.n
		link, block := links[peer], send[peer]
		if len(block) <= min(copyBlockBytes, chunk) {
			// A fresh, untracked copy: no acknowledgement traffic.
			m := &pb.CollectiveChunk{Op: o.seq, Total: uint64(len(block)),
				Format: pb.CollectiveFormat_COLLECTIVE_FORMAT_BYTES, Payload: bytes.Clone(block), Untracked: true}
			if _, err := link.send(o.ctx, m, nil); err != nil {
				return errPeer(peer, false, "sending %d bytes: %w", len(block), err)
			}
			continue
		}
		big = append(big, peer)
	}
	sendChunk := func(peer int) error {
		block := send[peer]
		start := off[peer]
		end := min(start+chunk, len(block))
		m := &pb.CollectiveChunk{Op: o.seq, Offset: uint64(start), Total: uint64(len(block)),
			Format: pb.CollectiveFormat_COLLECTIVE_FORMAT_BYTES, Payload: block[start:end], AckNow: true}
		if err := o.waitFor(func() bool { return o.pending < g.cfg.Window }); err != nil {
			return errPeer(peer, false, "waiting for acknowledgements: %w", err)
		}
		o.update(func() { o.pending++ })
		seq, err := links[peer].send(o.ctx, m, func() { o.update(func() { o.pending-- }) })
		if err != nil {
			return errPeer(peer, false, "sending bytes [%d, %d) of %d: %w", start, end, len(block), err)
		}
		last[peer], off[peer] = seq, end
		return nil
	}
	// Rounds: each sends up to one window of bytes to every peer, in the
	// shifted order.
	slice := g.cfg.Window * chunk
	for left := len(big); left > 0; {
		for _, peer := range big {
			if off[peer] == len(send[peer]) {
				continue
			}
			stop := min(off[peer]+slice, len(send[peer]))
			for off[peer] < stop {
				if err := sendChunk(peer); err != nil {
					return err
				}
			}
			if off[peer] == len(send[peer]) {
				left--
			}
		}
	}
	for peer, seq := range last {
		if seq == 0 {
			continue
		}
		if err := links[peer].waitAcked(o.ctx, seq); err != nil {
			return errPeer(peer, false, "last chunk sent: %w", err)
		}
	}
	return nil
}
