package rawsock

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// Conn is a TCP connection whose Read polls the socket (non-blocking
// reads, yielding the processor between tries) for up to its poll time
// before it sleeps in the netpoller; with a poll of 0 (or where !OK) it
// reads as the connection does. Read deadlines and Close end a poll at
// once, as they end a blocked read. Writes are the connection's.
//
// Conn may sit under a *tls.Conn: TLS then reads its records through
// Conn, the socket's only reader. Poll time can change at any time
// (SetPoll), e.g. once a listener's connection is known to be a lane.
type Conn struct {
	net.Conn // the *net.TCPConn
	rc       syscall.RawConn
	poll     atomic.Int64 // nanoseconds; <= 0: no polling
	readDL   atomic.Int64 // the read deadline, UnixNano; 0: none
	closed   atomic.Bool
	polled   atomic.Uint64 // reads that found data while polling
	slept    atomic.Uint64 // polled reads that slept in the netpoller
	state    atomic.Int32  // readIdle, readPolling or readSleeping (tests wait on it)
}

// Conn.state: what a polling Read is doing.
const (
	readIdle = iota
	readPolling
	readSleeping
)

// NewConn wraps tc, polling each Read for up to poll.
func NewConn(tc *net.TCPConn, poll time.Duration) *Conn {
	c := &Conn{Conn: tc}
	c.rc, _ = tc.SyscallConn()
	c.poll.Store(int64(poll))
	return c
}

// Wrap returns c wrapped in a Conn when it is a *net.TCPConn, else c.
func Wrap(c net.Conn, poll time.Duration) net.Conn {
	if tc, ok := c.(*net.TCPConn); ok {
		return NewConn(tc, poll)
	}
	return c
}

// SetPoll sets how long each later Read polls before it sleeps.
func (c *Conn) SetPoll(d time.Duration) { c.poll.Store(int64(d)) }

// Poll reports the poll time.
func (c *Conn) Poll() time.Duration { return time.Duration(c.poll.Load()) }

// Reads reports how many polling reads returned data while polling and
// how many slept first (poll time ran out, or a deadline or Close came).
func (c *Conn) Reads() (polled, slept uint64) { return c.polled.Load(), c.slept.Load() }

// NetConn returns the wrapped *net.TCPConn.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Read reads into b, polling first (see Conn).
func (c *Conn) Read(b []byte) (int, error) {
	poll := time.Duration(c.poll.Load())
	if !OK || poll <= 0 || c.rc == nil || len(b) == 0 {
		return c.Conn.Read(b)
	}
	n, err := c.pollRead(b, poll)
	if err != nil && err != io.EOF {
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return n, err
}

// SetDeadline sets both deadlines (the read one also bounds a poll).
func (c *Conn) SetDeadline(t time.Time) error {
	c.readDL.Store(unixNano(t))
	return c.Conn.SetDeadline(t)
}

// SetReadDeadline sets the read deadline (it also bounds a poll).
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.readDL.Store(unixNano(t))
	return c.Conn.SetReadDeadline(t)
}

// Close closes the connection; a Read polling at the time stops.
func (c *Conn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Listener wraps each accepted *net.TCPConn in a Conn with poll 0 (reads
// as the connection does until SetPoll).
type Listener struct{ net.Listener }

// Accept returns the next connection, wrapped.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c, 0), nil
}
