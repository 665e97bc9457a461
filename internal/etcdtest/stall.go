package etcdtest

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// RenewLease renews lease on cli every ttl/5 (each renewal bounded by
// ttl), as the holder would on a link that works, until the returned stop
// is called (it waits for the renewals to end; calling it again is
// harmless) or the test ends.
func RenewLease(t testing.TB, cli *clientv3.Client, lease clientv3.LeaseID, ttl time.Duration) (stop func()) {
	quit := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		tick := time.NewTicker(ttl / 5)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				ctx, cancel := context.WithTimeout(context.Background(), ttl)
				cli.KeepAliveOnce(ctx, lease)
				cancel()
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-ended }) }
	t.Cleanup(stop)
	return stop
}

// Holds checks cond every 20 ms for d (and once at the end), failing the
// test at the first check that returns an error: an assertion that nothing
// changes over a span (e.g. a lease outliving several TTLs), which fails as
// soon as something does rather than after a sleep.
func Holds(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(d)
	for {
		if err := cond(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(end) {
			return
		}
		<-tick.C
	}
}

// StallProxy forwards TCP connections to a target (an etcd client URL's
// host:port); while stalled it forwards no byte either way, holding them
// as a link whose packets are lost until it comes back (TCP connections
// stay open). It closes at the end of the test.
type StallProxy struct {
	ln     net.Listener
	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	closed bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

// StartStallProxy listens on a free loopback port and forwards to target.
func StartStallProxy(t testing.TB, target string) *StallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &StallProxy{ln: ln}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			if !p.track(c, u) {
				return
			}
			p.wg.Add(2)
			go p.pipe(u, c)
			go p.pipe(c, u)
		}
	}()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port.
func (p *StallProxy) Addr() string { return p.ln.Addr().String() }

func (p *StallProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	p.conns = append(p.conns, cs...)
	return true
}

// pipe copies src to dst, waiting while the proxy is stalled.
func (p *StallProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		for p.paused && !p.closed {
			p.cond.Wait()
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				src.Close()
			}
			return
		}
	}
}

// Stall holds every byte (on) or lets them through again (off).
func (p *StallProxy) Stall(on bool) {
	p.mu.Lock()
	p.paused = on
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *StallProxy) close() {
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.cond.Broadcast()
	p.ln.Close()
	p.wg.Wait()
}
