//go:build !linux

package rawsock

import (
	"net"
	"syscall"
	"time"
)

// Writer is the Linux raw-write fast path (rawsock_linux.go); elsewhere
// callers use conn.Write.
func Writer(net.Conn) func([]byte) (int, error) { return nil }

// OK: no raw socket I/O here; callers read through net.Conn, and Conn
// does not poll.
const OK = false

// Read is the Linux polling read (rawsock_linux.go); never called here.
func Read(syscall.RawConn, []byte, time.Duration) (int, error) {
	panic("rawsock: Read without OK")
}

func (c *Conn) pollRead([]byte, time.Duration) (int, error) {
	panic("rawsock: pollRead without OK")
}
