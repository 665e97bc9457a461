package rawsock

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// pair returns a polling Conn (poll) and the plain peer connection.
func pair(t *testing.T, poll time.Duration) (*Conn, net.Conn) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := Listener{Listener: lis}.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	peer, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, ok := (<-acc).(*Conn)
	if !ok {
		t.Fatal("Listener did not wrap the accepted connection in a Conn")
	}
	if c.Poll() != 0 {
		t.Fatalf("accepted connection polls %v, want 0 until SetPoll", c.Poll())
	}
	c.SetPoll(poll)
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

func requireLinux(t *testing.T) {
	if !OK {
		t.Skip("rawsock polls only on Linux; elsewhere Conn reads as net.Conn does")
	}
}

// A polling read returns what arrives while it polls, and what arrives
// after the poll ran out (asleep in the netpoller); the peer's close is
// io.EOF.
func TestPollingReadDelivers(t *testing.T) {
	requireLinux(t)
	c, peer := pair(t, time.Minute)
	buf := make([]byte, 16)
	for i := 0; i < 50; i++ {
		go peer.Write([]byte{byte(i)})
		n, err := c.Read(buf)
		if err != nil || n != 1 || buf[0] != byte(i) {
			t.Fatalf("read %d: %d bytes %v, %v", i, n, buf[:n], err)
		}
	}
	if p, s := c.Reads(); p != 50 || s != 0 {
		t.Errorf("with a minute's poll: %d reads polled, %d slept; want 50 and 0", p, s)
	}
	// No data: the 1 ms poll runs out and the read sleeps in the
	// netpoller until its deadline.
	c.SetPoll(time.Millisecond)
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with no data before its deadline: %v, want a deadline error", err)
	}
	if _, s := c.Reads(); s != 1 {
		t.Errorf("a read whose 1 ms poll ran out: slept %d times, want 1", s)
	}
	// Data that comes once a read has stopped polling wakes it.
	c.SetReadDeadline(time.Time{})
	go func() {
		waitState(t, c, readSleeping)
		peer.Write([]byte("late"))
	}()
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("read after the poll ran out: %q, %v", buf[:n], err)
	}
	if _, s := c.Reads(); s != 2 {
		t.Errorf("a read woken by data after its poll ran out: %d reads slept in all, want 2", s)
	}
	peer.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("after the peer closed: %d, %v; want io.EOF", n, err)
	}
}

// A read deadline and Close end a poll at once, however long the poll.
func TestPollEndsAtDeadlineAndClose(t *testing.T) {
	requireLinux(t)
	c, _ := pair(t, time.Hour)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 8))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline: %v, want a deadline error", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("deadline error %v is not a net.Error timeout", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the hour's poll ignored the 20 ms deadline: %v", took)
	}

	c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		done <- err
	}()
	waitState(t, c, readPolling)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read of a closed Conn: %v, want net.ErrClosed", err)
		}
		if _, s := c.Reads(); s != 2 {
			t.Errorf("after a deadline and a Close each ended a poll: %d reads slept, want 2", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not end the hour's poll")
	}
}

// Under TLS, Conn carries the records: the handshake and data both ways
// work with polling on the server's side.
func TestPollingUnderTLS(t *testing.T) {
	requireLinux(t)
	c, peer := pair(t, time.Minute)
	cert := selfSigned(t)
	srv := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	cli := tls.Client(peer, &tls.Config{RootCAs: pool, ServerName: "rawsock"})
	go func() {
		io.WriteString(cli, "hello over TLS")
	}()
	buf := make([]byte, 14)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "hello over TLS" {
		t.Fatalf("read under TLS: %q, %v", buf, err)
	}
	if p, _ := c.Reads(); p == 0 {
		t.Error("no read under TLS polled")
	}
}

// waitState waits (up to 30 s) until c's Read is in state want.
func waitState(t *testing.T, c *Conn, want int32) {
	deadline := time.Now().Add(30 * time.Second)
	for c.state.Load() != want {
		if time.Now().After(deadline) {
			t.Errorf("the read never reached state %d (at %d)", want, c.state.Load())
			return
		}
		runtime.Gosched()
	}
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rawsock"}, DNSNames: []string{"rawsock"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}
