// Package demux splits one TCP listener between a gRPC server and a
// protocol of the process's own, told apart by the first bytes each
// connection sends (after TLS, when the listener terminates it): the
// collective groups' lanes (pkg/collective) and the expert exchange's
// lanes (pkg/transport) share their gRPC server's port this way.
package demux

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Listener splits one listener between gRPC and a protocol of its own
// ("lanes") by the first bytes of each connection: a connection that
// starts with the magic string goes to lane, anything else (the HTTP/2
// preface) is handed, bytes intact, to the gRPC server through
// Accept. With a TLS configuration every connection first runs the TLS
// handshake as the server, and the eight bytes are the first decrypted
// ones; a connection that fails it (plaintext, a certificate from another
// CA or naming a non-member) is closed. Each accepted connection is
// handshaken and classified in its own goroutine, bounded by timeout, so a
// slow or silent one never holds up Accept for others. Close closes the
// underlying listener and ends Accept.
type Listener struct {
	net.Listener
	magic   string
	lane    func(net.Conn)
	tls     *tls.Config   // nil: plaintext
	timeout time.Duration // bounds a connection's handshake and first bytes
	conns   chan net.Conn
	done    chan struct{}
	closing context.Context // ends at Close
	cancel  context.CancelFunc
	once    sync.Once
	wg      sync.WaitGroup // the accept loop and classifiers
	errMu   sync.Mutex
	accErr  error
}

// New starts splitting lis: connections whose first len(magic) bytes
// (decrypted, with tlsConf) are magic go to lane, on the goroutine that
// classified them; the others are returned by Accept, bytes intact.
// magic must not start like the HTTP/2 preface ("PRI * HTTP").
func New(lis net.Listener, magic string, lane func(net.Conn), tlsConf *tls.Config, timeout time.Duration) *Listener {
	d := &Listener{Listener: lis, magic: magic, lane: lane, tls: tlsConf, timeout: timeout, conns: make(chan net.Conn), done: make(chan struct{})}
	d.closing, d.cancel = context.WithCancel(context.Background())
	d.wg.Add(1)
	go d.loop()
	return d
}

func (d *Listener) loop() {
	defer d.wg.Done()
	for {
		c, err := d.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			d.errMu.Lock()
			d.accErr = err
			d.errMu.Unlock()
			d.Close()
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.classify(c)
		}()
	}
}

// classify runs c's TLS handshake (with d.tls), reads its first bytes,
// all bounded by d.timeout, and routes it.
func (d *Listener) classify(raw net.Conn) {
	stop := context.AfterFunc(d.closing, func() { raw.SetDeadline(time.Now()) })
	raw.SetDeadline(time.Now().Add(d.timeout))
	c := raw
	var err error
	if d.tls != nil {
		tc := tls.Server(raw, d.tls)
		err = tc.Handshake()
		c = tc
	}
	head := make([]byte, len(d.magic))
	if err == nil {
		_, err = io.ReadFull(c, head)
	}
	if !stop() || err != nil {
		raw.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if string(head) == d.magic {
		d.lane(c)
		return
	}
	select {
	case d.conns <- &PrefixConn{Conn: c, prefix: head}:
	case <-d.done:
		c.Close()
	}
}

// Accept returns the next gRPC connection.
func (d *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-d.conns:
		return c, nil
	case <-d.done:
		d.errMu.Lock()
		defer d.errMu.Unlock()
		if d.accErr != nil {
			return nil, d.accErr
		}
		return nil, net.ErrClosed
	}
}

// Close closes the listener; Accept returns net.ErrClosed.
func (d *Listener) Close() error {
	var err error
	d.once.Do(func() {
		close(d.done)
		d.cancel()
		err = d.Listener.Close()
	})
	return err
}

// Wait waits for the accept loop and every classifier (and so every lane
// handler) to return. Call after Close and after aborting the lanes.
func (d *Listener) Wait() { d.wg.Wait() }

// PrefixConn is a connection whose first bytes were already read (and
// are read again first). With
// TLS, Conn is the *tls.Conn, which auth.Terminated finds through
// TLSConn.
type PrefixConn struct {
	net.Conn
	prefix []byte
}

// TLSConn implements auth.TLSConner: the TLS connection, or nil.
func (c *PrefixConn) TLSConn() *tls.Conn {
	tc, _ := c.Conn.(*tls.Conn)
	return tc
}

// Close closes the connection (a TLS one without close_notify: see
// CloseConn).
func (c *PrefixConn) Close() error { return CloseConn(c.Conn) }

func (c *PrefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseConn closes conn; a TLS connection is closed underneath, without
// sending close_notify, which could block on a peer that stopped reading.
func CloseConn(conn net.Conn) error {
	if tc, ok := conn.(*tls.Conn); ok {
		return tc.NetConn().Close()
	}
	return conn.Close()
}
