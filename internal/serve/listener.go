package serve

import (
	"net"
	"sync"
)

// Listener returns ln capped at Config.MaxConns open connections: its
// Accept waits while that many connections it returned are open (idle
// keep-alive ones included), so further clients wait in the kernel's
// accept queue instead of each costing a goroutine and buffers here. The
// open connections are the gauge switchyard_serve_open_connections.
// Closing the returned listener closes ln and ends a waiting Accept.
// Serve HTTPServer() on it (TLS may wrap it).
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, s: s, sem: make(chan struct{}, s.cfg.MaxConns), done: make(chan struct{})}
}

// limitListener is golang.org/x/net/netutil.LimitListener with the count
// of open connections kept on its Server.
type limitListener struct {
	net.Listener
	s         *Server
	sem       chan struct{} // one value per open connection; capacity Config.MaxConns
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	l.s.conns.Add(1)
	return &limitConn{Conn: c, l: l}, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// limitConn gives its slot back when it is first closed.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.s.conns.Add(-1)
		<-c.l.sem
	})
	return err
}

// CloseWrite half-closes a TCP connection, as net/http does before closing
// one whose request it did not read to the end (so the client gets the
// answer, not a reset).
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
