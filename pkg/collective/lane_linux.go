package collective

import (
	"net"
	"syscall"
	"unsafe"
)

// rawWriter returns a write function for conn that issues write(2) as a
// raw system call when conn is a plain TCP connection, else nil.
//
// Why: Go wraps a socket write in entersyscall/exitsyscall, and a write on
// a veth or loopback device runs the receiver's whole network stack in the
// sender's context, which often takes longer than the 20 us after which the
// runtime's sysmon hands the processor to another thread. For a lane's
// latency-bound small messages that hand-off (two thread switches and
// futex calls per message) cost about a tenth of a member's CPU in the
// emulated cluster: a 4 KiB all-reduce of 4 members over 1 Gbit/s took
// 99-124 us with raw writes and 130-139 us without (three interleaved
// pairs of scripts/bench-collectives.sh runs). The socket is non-blocking, so a raw write never
// blocks: when the kernel takes only part of the frame (its send buffer is
// full), the rest goes through conn.Write, which waits in the netpoller.
func rawWriter(conn net.Conn) func([]byte) (int, error) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return func(b []byte) (int, error) {
		var n int
		var errno syscall.Errno
		err := rc.Write(func(fd uintptr) bool {
			for n < len(b) {
				r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
				switch {
				case e == syscall.EINTR:
					continue
				case e != 0:
					if e != syscall.EAGAIN {
						errno = e
					}
					return true // EAGAIN: the rest goes through conn.Write
				}
				n += int(r)
			}
			return true
		})
		if err != nil {
			return n, err
		}
		if errno != 0 {
			return n, &net.OpError{Op: "write", Net: "tcp", Source: tc.LocalAddr(), Addr: tc.RemoteAddr(), Err: errno}
		}
		if n < len(b) {
			m, err := conn.Write(b[n:])
			return n + m, err
		}
		return n, nil
	}
}
