package simcal

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"
)

// LinkCPU is what the expert exchange's messages take from the cores of
// both hosts across a real link, as MeasureLinkCPU measures it.
type LinkCPU struct {
	// RTT is a one-row training round trip (TRAIN_FORWARD or
	// TRAIN_BACKWARD) across the link.
	RTT time.Duration
	// IdleRTT is the same round trip when both processes have been idle
	// for idlePause before it, the mean of its reps: the first message
	// wakes a process that went to sleep, as a decode step's messages
	// find their owners and the front end at one client. Measured after
	// the core time (it is not part of MsgWork).
	IdleRTT time.Duration
	// MsgWork is the core time of both processes per message and side
	// (a round trip is 4 sides: request out and in, answer out and in),
	// kernel included; ByteWork the core time per byte and side of a
	// large payload's extra over a one-row message, ns per byte.
	MsgWork  time.Duration
	ByteWork float64
}

// MeasureLinkCPU measures, across the link to a ServeLink at addr, the
// core time the expert exchange's round trips take on both hosts: this
// process's (getrusage) and the peer's (it reports its own before and
// after), over one-row round trips and over round trips of a large
// payload to the peer's exchange owner (an expert one feature wide, whose
// products are negligible: less than 0.1% of the payload's handling on
// the machines measured, and not subtracted). Run nothing else in either
// process meanwhile.
func MeasureLinkCPU(ctx context.Context, addr string, quick bool) (LinkCPU, error) {
	var res LinkCPU
	ownerAddr, err := linkRequest(ctx, addr, 'e', func(conn net.Conn) (string, error) { return readString(conn) })
	if err != nil {
		return res, err
	}
	roundTrips, closeClient, err := exchangeClient(ctx, ownerAddr)
	if err != nil {
		return res, err
	}
	defer closeClient()
	// cpu runs f and returns both processes' core time during it.
	cpu := func(f func() error) (time.Duration, error) {
		p0, err := peerCPU(ctx, addr)
		if err != nil {
			return 0, err
		}
		c0 := processCPU()
		if err := f(); err != nil {
			return 0, err
		}
		c1 := processCPU()
		p1, err := peerCPU(ctx, addr)
		if err != nil {
			return 0, err
		}
		return c1 - c0 + p1 - p0, nil
	}
	small, bigRows, reps, idle := 400, 256, 20, 200
	if quick {
		small, bigRows, reps, idle = 50, 64, 5, 100
	}
	smallCPU, err := cpu(func() error {
		res.RTT, err = roundTrips(1, small, 0)
		return err
	})
	if err != nil {
		return res, err
	}
	// Two warm-up pairs are included: 2 x (small + 2) round trips.
	perSmall := smallCPU / time.Duration(2*(small+2))
	bigCPU, err := cpu(func() error {
		_, err := roundTrips(bigRows, reps, 0)
		return err
	})
	if err != nil {
		return res, err
	}
	if res.IdleRTT, err = roundTrips(1, idle, idlePause); err != nil {
		return res, err
	}
	perBig := bigCPU / time.Duration(2*(reps+2))
	res.MsgWork = perSmall / 4
	// Each of the 4 sides handles the rows' bytes once.
	bytes := float64(bigRows-1) * exchangeD * 4
	res.ByteWork = max(float64(perBig-perSmall), 0) / (4 * bytes)
	if res.MsgWork <= 0 {
		return res, fmt.Errorf("simcal: link cpu: %d round trips took no core time", small)
	}
	return res, nil
}

// idlePause is how long both processes idle before each of IdleRTT's
// round trips: longer than a Go thread spins and a vCPU polls before it
// halts, about a decode step's gap between one layer's answers and the
// next layer's requests on the hosts that get none.
const idlePause = 5 * time.Millisecond

// peerCPU asks the ServeLink at addr for its process's core time.
func peerCPU(ctx context.Context, addr string) (time.Duration, error) {
	return linkRequest(ctx, addr, 'c', func(conn net.Conn) (time.Duration, error) {
		var b [8]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return 0, err
		}
		return time.Duration(binary.BigEndian.Uint64(b[:])), nil
	})
}

// linkRequest sends a one-byte request of the link protocol to addr and
// reads its answer with read.
func linkRequest[T any](ctx context.Context, addr string, kind byte, read func(net.Conn) (T, error)) (T, error) {
	var zero T
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return zero, fmt.Errorf("simcal: link to %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if _, err := conn.Write([]byte{kind}); err != nil {
		return zero, err
	}
	v, err := read(conn)
	if err != nil {
		return zero, fmt.Errorf("simcal: link to %s: request %q: %w", addr, kind, err)
	}
	return v, nil
}
