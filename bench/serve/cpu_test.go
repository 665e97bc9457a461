package main

import (
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestProcRole(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		want    string
	}{
		{"/tmp/w/switchyard\x00serve\x00--model\x00/m\x00", "frontend"},
		{"/tmp/w/switchyard\x00worker\x00--etcd\x00http://10.80.0.1:2379\x00", "workers"},
		{"bin/worker\x00--listen\x00:7070\x00", "workers"},
		{"/tmp/w/coordinator\x00--listen-client-urls\x00x\x00", "coordinator"},
		{"switchyard\x00coordinator\x00", "coordinator"},
		{"switchyard\x00simulate\x00calibrate\x00", ""},
		{"/usr/bin/serve\x00", ""}, // not ours
		{"", ""},                   // a kernel thread
	} {
		if got := procRole([]byte(c.cmdline), false); got != c.want {
			t.Errorf("procRole(%q) = %q, want %q", c.cmdline, got, c.want)
		}
	}
	if got := procRole(nil, true); got != "client" {
		t.Errorf("self: %q, want client", got)
	}
}

func TestParsePIDStat(t *testing.T) {
	// A comm with a space and a parenthesis, as /proc allows.
	line := "1234 (my (prog) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0\n"
	got, ok := parsePIDStat([]byte(line))
	if !ok || got != 325 {
		t.Fatalf("parsePIDStat = %v, %v; want 325 (utime 250 + stime 75)", got, ok)
	}
	if _, ok := parsePIDStat([]byte("1234 (short) S 1 2")); ok {
		t.Fatal("a truncated line parsed")
	}
}

func TestCPUSplit(t *testing.T) {
	stat := func(user, sys, idle, irq, steal int) []byte {
		// user nice system idle iowait irq softirq steal guest guest_nice
		return []byte("cpu  " + strconv.Itoa(user) + " 0 " + strconv.Itoa(sys) + " " + strconv.Itoa(idle) + " 0 " + strconv.Itoa(irq) + " 0 " + strconv.Itoa(steal) + " 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\nintr 1\n")
	}
	a, b := &cpuSnap{}, &cpuSnap{}
	if err := a.parseProcStat(stat(1000, 100, 5000, 10, 0)); err != nil {
		t.Fatal(err)
	}
	// 200 jiffies pass on 2 cores (100 of wall time): 150 user, 20 system,
	// 10 interrupts, 20 idle, no steal.
	if err := b.parseProcStat(stat(1150, 120, 5020, 20, 0)); err != nil {
		t.Fatal(err)
	}
	if a.cores != 2 {
		t.Fatalf("cores = %d, want 2", a.cores)
	}
	a.procs = map[int]procTicks{10: {"frontend", 100}, 11: {"workers", 50}, 12: {"workers", 70}, 13: {"coordinator", 5}, 14: {"workers", 9}}
	b.procs = map[int]procTicks{10: {"frontend", 120}, 11: {"workers", 110}, 12: {"workers", 130}, 13: {"coordinator", 7}, 15: {"workers", 40}}
	s := cpuSplit(a, b)
	want := CPUSplit{Frontend: 0.2, Workers: 1.2, Coordinator: 0.02, User: 1.5, System: 0.2, IRQ: 0.1, Other: 1.8 - 1.42, Cores: 2}
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"frontend", s.Frontend, want.Frontend}, {"workers (pid 14 gone, 15 new: neither counted)", s.Workers, want.Workers},
		{"coordinator", s.Coordinator, want.Coordinator}, {"client", s.Client, 0}, {"other", s.Other, want.Other},
		{"user", s.User, want.User}, {"system", s.System, want.System}, {"irq", s.IRQ, want.IRQ}, {"steal", s.Steal, 0},
	} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if got := s.String(); !strings.HasPrefix(got, "cores: front end 0.200, workers 1.200, coordinator 0.020, client 0.000, other 0.380; machine user 1.500 system 0.200 irq 0.100 steal 0.000 of 2") {
		t.Errorf("String() = %q", got)
	}
	if got := cpuSplit(b, b); got.Busy() != 0 || got.Cores != 2 {
		t.Errorf("an empty window: %+v", got)
	}
}

// TestReadCPUSelf reads this machine's /proc: this process counts as the
// client, and its CPU shows once it has spent some.
func TestReadCPUSelf(t *testing.T) {
	a, err := readCPU()
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	self := os.Getpid()
	if a.procs[self].role != "client" {
		t.Fatalf("this process (pid %d) not read as the client: %+v", self, a.procs[self])
	}
	var b *cpuSnap
	deadline := time.Now().Add(20 * time.Second)
	for x := 1.0; ; x = x*1.0000001 + 1e-9 { // spin until the kernel has counted ticks of ours
		if time.Now().After(deadline) {
			t.Fatal("no CPU time counted for this process in 20 s of spinning")
		}
		if b, err = readCPU(); err != nil {
			t.Fatal(err)
		}
		if b.procs[self].ticks >= a.procs[self].ticks+5 && x > 0 {
			break
		}
	}
	s := cpuSplit(a, b)
	if s.Client <= 0 || s.Cores < 1 || s.Busy()+s.Steal <= 0 {
		t.Fatalf("split %+v: want the client's CPU and a busy machine", s)
	}
}
