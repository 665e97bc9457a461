//go:build !linux

package collective

import (
	"net"
	"syscall"
	"time"
)

// rawWriter is the Linux raw-write fast path (lane_linux.go); elsewhere
// lanes use conn.Write.
func rawWriter(net.Conn) func([]byte) (int, error) { return nil }

// rawIO: no raw socket I/O here; lanes read through net.Conn.
const rawIO = false

// rawRead is the Linux polling read (lane_linux.go); never called here.
func rawRead(syscall.RawConn, []byte, time.Duration) (int, error) {
	panic("collective: rawRead without rawIO")
}
