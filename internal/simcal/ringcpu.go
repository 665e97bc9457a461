package simcal

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"github.com/switchyard/switchyard/pkg/allreduce"
	"github.com/switchyard/switchyard/pkg/collective"
)

// RingCPU is what pkg/collective's ring all-reduce takes from the cores of
// both hosts across a real link, as MeasureRingCPU measures it: ByteWork
// is the core time per byte and side (ns/B) of the ring's messages, the
// all-reduce's own share of the gradients' handling (a ring of n ranks
// over B bytes is 4(n-1) message sides of B/n bytes on each rank, its
// float32 sums included), which the training model charges the gradient
// buckets in place of the expert exchange's LinkByteCPU.
type RingCPU struct {
	ByteWork float64
	// Small and Big are the two all-reduces' sizes (bytes of float32) and
	// SmallCPU, BigCPU both processes' core time for one of each.
	Small, Big       int
	SmallCPU, BigCPU time.Duration
}

// Ring probe sizes: both above allreduce.DefaultSmallBytes and with a
// member's share within one chunk (collective.DefaultChunkBytes), as a
// training step's gradient buckets run (step by step over the lanes).
const (
	ringSmallBytes = 64 << 10
	ringBigBytes   = 1 << 20
)

// MeasureRingCPU runs ring all-reduces of two sizes in a two-member
// pkg/collective group with the ServeLink at addr (this process rank 0,
// the peer rank 1, each with the group's default configuration but the
// algorithm, forced to the ring) and measures both processes' core time
// (getrusage; the peer's as MeasureLinkCPU reads it): the difference per
// byte of the larger is ByteWork. Run nothing else in either process
// meanwhile.
func MeasureRingCPU(ctx context.Context, addr string, quick bool) (RingCPU, error) {
	res := RingCPU{Small: ringSmallBytes, Big: ringBigBytes}
	small, big := 200, 100
	if quick {
		small, big = 40, 20
	}
	// The request: 'g', the group's name and this member's address, and
	// the two sizes' counts; the answer: the peer member's address. The
	// connection stays open until the peer's member is done. This member
	// listens on this host's address as the peer sees it: the
	// connection's source address.
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return res, fmt.Errorf("simcal: ring cpu: %w", err)
	}
	defer conn.Close()
	host, _, err := net.SplitHostPort(conn.LocalAddr().String())
	if err != nil {
		return res, err
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return res, fmt.Errorf("simcal: ring cpu: %w", err)
	}
	grouped := false // the group owns lis once made
	defer func() {
		if !grouped {
			lis.Close()
		}
	}()
	name := fmt.Sprintf("simcal-ring/%016x", rand.Uint64())
	req := []byte{'g'}
	req = appendString(req, name)
	req = appendString(req, lis.Addr().String())
	req = binary.BigEndian.AppendUint32(req, uint32(small+2))
	req = binary.BigEndian.AppendUint32(req, uint32(big+2))
	if _, err := conn.Write(req); err != nil {
		return res, err
	}
	peer, err := readString(conn)
	if err != nil {
		return res, fmt.Errorf("simcal: ring cpu: the peer's member: %w", err)
	}
	g, err := collective.New(collective.Config{Group: name, Rank: 0, Peers: []string{lis.Addr().String(), peer}, Algorithm: allreduce.Ring}, lis)
	if err != nil {
		return res, err
	}
	grouped = true
	defer g.Close()
	if err := g.Connect(ctx); err != nil {
		return res, fmt.Errorf("simcal: ring cpu: connect: %w", err)
	}
	run := func(bytes, reps int) (time.Duration, error) {
		buf := make([]float32, bytes/4)
		for i := range buf {
			buf[i] = 1e-3
		}
		// Two warm-up all-reduces, then reps timed by both processes'
		// core time.
		for range 2 {
			if err := g.AllReduce(ctx, buf); err != nil {
				return 0, err
			}
		}
		p0, err := peerCPU(ctx, addr)
		if err != nil {
			return 0, err
		}
		c0 := processCPU()
		for range reps {
			if err := g.AllReduce(ctx, buf); err != nil {
				return 0, err
			}
		}
		c1 := processCPU()
		p1, err := peerCPU(ctx, addr)
		if err != nil {
			return 0, err
		}
		return (c1 - c0 + p1 - p0) / time.Duration(reps), nil
	}
	if res.SmallCPU, err = run(ringSmallBytes, small); err != nil {
		return res, fmt.Errorf("simcal: ring cpu: %w", err)
	}
	if res.BigCPU, err = run(ringBigBytes, big); err != nil {
		return res, fmt.Errorf("simcal: ring cpu: %w", err)
	}
	if err := g.Shutdown(ctx); err != nil {
		return res, fmt.Errorf("simcal: ring cpu: shutdown: %w", err)
	}
	if res.BigCPU <= 0 {
		return res, fmt.Errorf("simcal: ring cpu: %d all-reduces took no core time", big)
	}
	// Two members: 4 sides of B/2 bytes each on both, 4B side-bytes.
	res.ByteWork = max(float64(res.BigCPU-res.SmallCPU), 0) / (4 * float64(ringBigBytes-ringSmallBytes))
	return res, nil
}

// serveRingMember answers a 'g' request on conn (after its kind byte,
// from rd): it joins the caller's two-member group as rank 1 on a new
// listener on host, runs the all-reduces the caller runs, and answers
// its own address first.
func serveRingMember(ctx context.Context, conn net.Conn, rd io.Reader, host string) error {
	name, err := readString(rd)
	if err != nil {
		return err
	}
	caller, err := readString(rd)
	if err != nil {
		return err
	}
	var counts [8]byte
	if _, err := io.ReadFull(rd, counts[:]); err != nil {
		return err
	}
	small, big := int(binary.BigEndian.Uint32(counts[:4])), int(binary.BigEndian.Uint32(counts[4:]))
	if small > 1<<20 || big > 1<<20 {
		return fmt.Errorf("simcal: ring member: %d and %d all-reduces asked", small, big)
	}
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return err
	}
	g, err := collective.New(collective.Config{Group: name, Rank: 1, Peers: []string{caller, lis.Addr().String()}, Algorithm: allreduce.Ring}, lis)
	if err != nil {
		lis.Close()
		return err
	}
	defer g.Close()
	if _, err := conn.Write(appendString(nil, lis.Addr().String())); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := g.Connect(ctx); err != nil {
		return err
	}
	for _, op := range []struct{ bytes, reps int }{{ringSmallBytes, small}, {ringBigBytes, big}} {
		buf := make([]float32, op.bytes/4)
		for range op.reps {
			if err := g.AllReduce(ctx, buf); err != nil {
				return err
			}
		}
	}
	return g.Shutdown(ctx)
}

// appendString appends s with a one-byte length (s is at most 255 bytes).
func appendString(b []byte, s string) []byte {
	return append(append(b, byte(len(s))), s...)
}

// readString reads a string appendString wrote.
func readString(r io.Reader) (string, error) {
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	b := make([]byte, n[0])
	_, err := io.ReadFull(r, b)
	return string(b), err
}
