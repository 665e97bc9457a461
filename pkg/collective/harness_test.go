package collective

import (
	"context"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultNet makes one member's network misbehave, like etcd's integration
// bridge: every connection it accepts or dials passes through it, and
// Pause freezes them all (reads and writes block) as if the process had
// stopped. PauseAfter freezes once the member has read that many bytes,
// so a test can stop a member in the middle of an operation.
type faultNet struct {
	mu         sync.Mutex
	resume     chan struct{} // nil when running; closed on resume
	pauseAfter int64         // 0: never
	read       atomic.Int64
	paused     chan struct{} // closed at the first pause
	pausedOnce sync.Once
	conns      []*faultConn // every connection made through it
}

// CloseAll closes every connection the member has, as the kernel does
// when a process dies: a crash, unlike Group.Close, leaves no connection
// half-open (say, one in a lane handshake its paused reader never
// finished).
func (f *faultNet) CloseAll() {
	f.mu.Lock()
	conns := append([]*faultConn(nil), f.conns...)
	f.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func newFaultNet() *faultNet { return &faultNet{paused: make(chan struct{})} }

func (f *faultNet) Pause() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.resume == nil {
		f.resume = make(chan struct{})
	}
	f.pausedOnce.Do(func() { close(f.paused) })
}

func (f *faultNet) Resume() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.resume != nil {
		close(f.resume)
		f.resume = nil
	}
}

// PauseAfter arms a pause once n more bytes have been read.
func (f *faultNet) PauseAfter(n int64) {
	f.mu.Lock()
	f.pauseAfter = f.read.Load() + n
	f.mu.Unlock()
}

// gate blocks while paused, until resumed or the connection is closed.
func (f *faultNet) gate(closed <-chan struct{}) error {
	f.mu.Lock()
	r := f.resume
	f.mu.Unlock()
	if r == nil {
		return nil
	}
	select {
	case <-r:
		return nil
	case <-closed:
		return net.ErrClosed
	}
}

func (f *faultNet) counted(n int) {
	total := f.read.Add(int64(n))
	f.mu.Lock()
	trip := f.pauseAfter > 0 && total >= f.pauseAfter
	if trip {
		f.pauseAfter = 0
	}
	f.mu.Unlock()
	if trip {
		f.Pause()
	}
}

type faultConn struct {
	net.Conn
	f         *faultNet
	closed    chan struct{}
	closeOnce sync.Once
}

func (f *faultNet) wrap(c net.Conn) net.Conn {
	fc := &faultConn{Conn: c, f: f, closed: make(chan struct{})}
	f.mu.Lock()
	f.conns = append(f.conns, fc)
	f.mu.Unlock()
	return fc
}

func (c *faultConn) Read(p []byte) (int, error) {
	if err := c.f.gate(c.closed); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	c.f.counted(n)
	if err == nil {
		if err := c.f.gate(c.closed); err != nil { // paused while reading
			return 0, err
		}
	}
	return n, err
}

func (c *faultConn) Write(p []byte) (int, error) {
	if err := c.f.gate(c.closed); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

type faultListener struct {
	net.Listener
	f *faultNet
}

func (l faultListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return l.f.wrap(c), nil
}

// members is an in-process group of n members on 127.0.0.1, each behind
// its own faultNet.
type members struct {
	groups []*Group
	nets   []*faultNet
}

// newCluster starts n members (cfg applied to each) and connects them.
func newCluster(t testing.TB, n int, cfg func(*Config)) *members {
	t.Helper()
	c := &members{groups: make([]*Group, n), nets: make([]*faultNet, n)}
	liss := make([]net.Listener, n)
	addrs := make([]string, n)
	for r := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c.nets[r] = newFaultNet()
		liss[r] = faultListener{Listener: lis, f: c.nets[r]}
		addrs[r] = lis.Addr().String()
	}
	for r := range n {
		fn := c.nets[r]
		var d net.Dialer
		conf := Config{
			Group: t.Name(), Rank: r, Peers: addrs,
			Dial: func(ctx context.Context, addr string) (net.Conn, error) {
				conn, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					return nil, err
				}
				return fn.wrap(conn), nil
			},
		}
		if cfg != nil {
			cfg(&conf)
		}
		g, err := New(conf, liss[r])
		if err != nil {
			t.Fatal(err)
		}
		c.groups[r] = g
	}
	t.Cleanup(c.close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.each(t, func(r int, g *Group) error { return g.Connect(ctx) })
	return c
}

func (c *members) close() {
	for _, f := range c.nets {
		f.Resume()
	}
	var wg sync.WaitGroup
	for _, g := range c.groups {
		if g != nil {
			wg.Add(1)
			go func() { defer wg.Done(); g.Close() }()
		}
	}
	wg.Wait()
}

// each runs f on every member concurrently and fails the test on errors.
func (c *members) each(t testing.TB, f func(r int, g *Group) error) {
	t.Helper()
	errs := c.try(f)
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// try runs f on every member concurrently and returns the errors by rank.
func (c *members) try(f func(r int, g *Group) error) []error {
	errs := make([]error, len(c.groups))
	var wg sync.WaitGroup
	for r, g := range c.groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(r, g)
		}()
	}
	wg.Wait()
	return errs
}

// checkLeaks fails the test if goroutines started during it are still
// running (after waiting up to 10 s for them to wind down).
func checkLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			<-tick.C
		}
	})
}

func TestMain(m *testing.M) {
	// Let gRPC start its process-wide goroutines before any leak check.
	newClusterNoT(2).close()
	os.Exit(m.Run())
}

// newClusterNoT is newCluster for TestMain's warm-up.
func newClusterNoT(n int) *members {
	c := &members{groups: make([]*Group, n), nets: make([]*faultNet, n)}
	addrs := make([]string, n)
	liss := make([]net.Listener, n)
	for r := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		liss[r], addrs[r] = lis, lis.Addr().String()
		c.nets[r] = newFaultNet()
	}
	for r := range n {
		g, err := New(Config{Group: "warm-up", Rank: r, Peers: addrs}, liss[r])
		if err != nil {
			panic(err)
		}
		c.groups[r] = g
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, err := range c.try(func(r int, g *Group) error {
		if err := g.Connect(ctx); err != nil {
			return err
		}
		return g.AllReduce(ctx, make([]float32, 1000))
	}) {
		if err != nil {
			panic(err)
		}
	}
	return c
}

func mustListen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}
