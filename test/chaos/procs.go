package main

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// proc is one supervised process running inside a host's network namespace
// (ip netns exec NS BIN ARGS...: ip execs the program, so the PID is the
// program's). The driver is its supervisor: it restarts a process it
// killed itself, and records every exit it did not cause.
type proc struct {
	name, ns, log string
	argv          []string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	expected bool // the next exit was caused by the driver
	stopping bool // the run is over: no more restarts
}

type supervisor struct {
	mu         sync.Mutex
	procs      []*proc
	unexpected []string // "time name: exit status" for exits the driver did not cause
	t0         time.Time
}

func (s *supervisor) add(name, ns, log string, argv ...string) *proc {
	p := &proc{name: name, ns: ns, log: log, argv: argv}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p
}

// start starts p (again).
func (s *supervisor) start(p *proc) error {
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "\n==== chaos: start %s at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.ns}, p.argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return err
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.expected = cmd, done, false
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		exp, stopping := p.expected, p.stopping
		p.mu.Unlock()
		if !exp && !stopping {
			s.mu.Lock()
			s.unexpected = append(s.unexpected, fmt.Sprintf("%6.1fs %s: %v (log %s)", time.Since(s.t0).Seconds(), p.name, err, p.log))
			s.mu.Unlock()
			// A supervisor restarts what crashed, after a short delay.
			time.Sleep(time.Second)
			p.mu.Lock()
			stopping = p.stopping
			p.mu.Unlock()
			if !stopping {
				_ = s.start(p)
			}
		}
		close(done)
	}()
	return nil
}

func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// signal sends sig to p; with expectExit the exit it causes is not reported.
func (p *proc) signal(sig syscall.Signal, expectExit bool) error {
	p.mu.Lock()
	if expectExit {
		p.expected = true
	}
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return fmt.Errorf("%s not running", p.name)
	}
	return syscall.Kill(cmd.Process.Pid, sig)
}

// kill SIGKILLs p and waits for it to be gone.
func (p *proc) kill() error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if err := p.signal(syscall.SIGKILL, true); err != nil {
		return err
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s did not die within 10 s of SIGKILL", p.name)
	}
	return nil
}

// stopAll ends every process: SIGCONT (a stopped one must see SIGTERM),
// SIGTERM, then SIGKILL.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	ps := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	for _, p := range ps {
		p.mu.Lock()
		p.stopping = true
		p.mu.Unlock()
		_ = p.signal(syscall.SIGCONT, true)
		_ = p.signal(syscall.SIGTERM, true)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range ps {
		p.mu.Lock()
		done := p.done
		p.mu.Unlock()
		if done == nil {
			continue
		}
		select {
		case <-done:
		case <-time.After(time.Until(deadline)):
			_ = p.signal(syscall.SIGKILL, true)
		}
	}
}
