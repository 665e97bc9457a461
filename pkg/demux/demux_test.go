package demux

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// Connections starting with the magic go to the lane handler with the
// bytes after it; others come out of Accept with every byte intact; a
// connection that sends nothing does not hold up the others and is closed
// after the timeout.
func TestSplitsByFirstBytes(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lanes := make(chan string, 1)
	d := New(lis, "MAGIC123", func(c net.Conn) {
		defer c.Close()
		b := make([]byte, 5)
		io.ReadFull(c, b)
		lanes <- string(b)
	}, nil, 500*time.Millisecond)
	defer func() {
		d.Close()
		d.Wait()
	}()
	dial := func(s string) net.Conn {
		c, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if s != "" {
			c.Write([]byte(s))
		}
		return c
	}
	silent := dial("")
	dial("PRI * HTTP/2.0 and more")
	dial("MAGIC123hello")
	got, err := d.Accept()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len("PRI * HTTP/2.0 and more"))
	if _, err := io.ReadFull(got, b); err != nil || string(b) != "PRI * HTTP/2.0 and more" {
		t.Errorf("accepted connection read %q, %v; want every byte", b, err)
	}
	got.Close()
	select {
	case s := <-lanes:
		if s != "hello" {
			t.Errorf("lane read %q after the magic, want hello", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lane connection never reached its handler")
	}
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Error("a silent connection was not closed after the timeout")
	}
	d.Close()
	if _, err := d.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
