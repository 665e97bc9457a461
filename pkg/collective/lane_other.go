//go:build !linux

package collective

import "net"

// rawWriter is the Linux raw-write fast path (lane_linux.go); elsewhere
// lanes use conn.Write.
func rawWriter(net.Conn) func([]byte) (int, error) { return nil }
