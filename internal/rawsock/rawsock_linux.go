package rawsock

import (
	"io"
	"net"
	"runtime"
	"syscall"
	"time"
	"unsafe"
)

// Writer returns a write function for conn that issues write(2) as a
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
// OK: Writer, Read and Conn's polling work here.
const OK = true

func Writer(conn net.Conn) func([]byte) (int, error) {
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

// Read reads into b from a non-blocking socket. For up to poll it
// retries a read that finds no data, yielding the CPU between tries
// (sched_yield: another process on this core runs, if any), instead of
// sleeping in the netpoller at once: a thread that sleeps needs the
// kernel to wake it (an inter-processor interrupt and, on a VM, a vCPU
// exit), which is most of a small message's latency. After poll it sleeps
// in the netpoller (honouring deadlines and Close) until data arrives.
// Returns io.EOF at the end of the stream.
func Read(rc syscall.RawConn, b []byte, poll time.Duration) (int, error) {
	var n int
	var rerr error
	var until time.Time
	err := rc.Read(func(fd uintptr) bool {
		for {
			var done bool
			if n, done, rerr = tryRead(fd, b); done {
				return true
			}
			if poll <= 0 {
				return false
			}
			now := time.Now()
			if until.IsZero() {
				until = now.Add(poll)
			} else if now.After(until) {
				return false // sleep in the netpoller
			}
			syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		}
	})
	if err != nil {
		return n, err
	}
	return n, rerr
}

// pollRead is Read for a Conn: it polls for up to poll, yielding the
// goroutine's processor (other goroutines of the process run: a worker
// with GOMAXPROCS=1 still computes while its lane polls) and the thread's
// CPU (other processes on the core run) between tries. The poll ends early
// at the read deadline or Close; then, or after poll, the read sleeps in
// the netpoller, which honours both.
func (c *Conn) pollRead(b []byte, poll time.Duration) (int, error) {
	var n int
	var rerr error
	var until int64
	polling := true
	defer c.state.Store(readIdle)
	err := c.rc.Read(func(fd uintptr) bool {
		// Polling from inside the read: a Close before rc.Read takes the
		// fd fails the read without a poll (and a test that waits for
		// readPolling and then closes must find the poll running).
		if polling {
			c.state.Store(readPolling)
		}
		for {
			var done bool
			if n, done, rerr = tryRead(fd, b); done {
				return true
			}
			if !polling {
				return false
			}
			now := time.Now().UnixNano()
			if until == 0 {
				until = now + int64(poll)
			}
			if dl := c.readDL.Load(); now >= until || c.closed.Load() || (dl != 0 && now >= dl) {
				polling = false
				c.state.Store(readSleeping)
				return false // sleep in the netpoller
			}
			runtime.Gosched()
			syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		}
	})
	if polling {
		c.polled.Add(1)
	} else {
		c.slept.Add(1)
	}
	if err != nil {
		return n, err
	}
	return n, rerr
}

// tryRead issues read(2) on the non-blocking socket fd into b (retrying
// an interrupted call): done is false when the socket had nothing
// (EAGAIN); otherwise n bytes or err (io.EOF at the end of the stream).
func tryRead(fd uintptr, b []byte) (n int, done bool, err error) {
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch {
		case e == 0 && r == 0:
			return 0, true, io.EOF
		case e == 0:
			return int(r), true, nil
		case e == syscall.EINTR:
			continue
		case e != syscall.EAGAIN:
			return 0, true, e
		}
		return 0, false, nil
	}
}
