package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Where a measurement window's CPU went, from /proc: the machine's time
// by kind (/proc/stat) and the serving processes' own (/proc/PID/stat,
// every thread's user and system time, the Go runtime's included) by
// role. The serving model charges the cluster's processes only, so this
// says how much of the machine went elsewhere and how much core time a
// generated token took.

// procRole names a process's role from its command line (NUL-separated
// arguments, as /proc/PID/cmdline holds them), "" for none: the front
// end is `switchyard serve`, a worker `switchyard worker` (or
// bin/worker), the coordinator bin/coordinator or `switchyard
// coordinator`, the client this program (self).
func procRole(cmdline []byte, self bool) string {
	if self {
		return "client"
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) == 0 || args[0] == "" {
		return ""
	}
	prog := filepath.Base(args[0])
	sub := ""
	if len(args) > 1 {
		sub = args[1]
	}
	switch {
	case prog == "switchyard" && sub == "serve":
		return "frontend"
	case prog == "worker", prog == "switchyard" && sub == "worker":
		return "workers"
	case prog == "coordinator", prog == "switchyard" && sub == "coordinator":
		return "coordinator"
	}
	return ""
}

// cpuSnap is one reading: jiffies (USER_HZ) summed over the machine's
// cores by kind, and each role's processes' jiffies by PID.
type cpuSnap struct {
	user, system, irq, steal, idle, total float64
	cores                                 int // the cpuN lines
	procs                                 map[int]procTicks
}

type procTicks struct {
	role  string
	ticks float64 // utime + stime
}

// parseProcStat reads /proc/stat's "cpu" line into s.
func (s *cpuSnap) parseProcStat(b []byte) error {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return fmt.Errorf("/proc/stat: no cpu line")
	}
	var v [10]float64
	for i := 1; i < len(f) && i <= len(v); i++ {
		v[i-1], _ = strconv.ParseFloat(f[i], 64)
	}
	// user nice system idle iowait irq softirq steal guest guest_nice;
	// guest time is already inside user.
	s.user, s.system, s.idle, s.irq, s.steal = v[0]+v[1], v[2], v[3]+v[4], v[5]+v[6], v[7]
	s.total = s.user + s.system + s.idle + s.irq + s.steal
	for l := range bytes.Lines(b) {
		if len(l) > 3 && string(l[:3]) == "cpu" && l[3] >= '0' && l[3] <= '9' {
			s.cores++
		}
	}
	return nil
}

// parsePIDStat returns utime + stime from a /proc/PID/stat line.
func parsePIDStat(b []byte) (float64, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return 0, false
	}
	f := strings.Fields(string(b[i+2:])) // from field 3, state
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	s, err2 := strconv.ParseFloat(f[12], 64)
	return u + s, err1 == nil && err2 == nil
}

// readCPU takes a reading of the machine and of every process with a
// role; unreadable processes (gone, or not ours) are skipped.
func readCPU() (*cpuSnap, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, err
	}
	s := &cpuSnap{procs: map[int]procTicks{}}
	if err := s.parseProcStat(b); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := "/proc/" + e.Name()
		cl, err := os.ReadFile(dir + "/cmdline")
		if err != nil {
			continue
		}
		role := procRole(cl, pid == self)
		if role == "" {
			continue
		}
		st, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue
		}
		if t, ok := parsePIDStat(st); ok {
			s.procs[pid] = procTicks{role, t}
		}
	}
	return s, nil
}

// CPUSplit is a window's CPU in cores (1 = one core busy for the whole
// window), by role and by kind.
type CPUSplit struct {
	// Roles: the front end, the workers, the coordinator and this
	// client, each summed over its processes (those alive at both
	// readings), threads and kernel time included.
	Frontend    float64 `json:"frontend"`
	Workers     float64 `json:"workers"`
	Coordinator float64 `json:"coordinator"`
	Client      float64 `json:"client"`
	// Other is the machine's busy time the roles do not account for:
	// kernel threads, interrupts outside the processes, anything else
	// running.
	Other float64 `json:"other"`
	// The machine by kind: user (with nice), system, interrupts (hard and
	// soft), steal (a hypervisor ran something else on our vCPUs).
	User   float64 `json:"user"`
	System float64 `json:"system"`
	IRQ    float64 `json:"irq"`
	Steal  float64 `json:"steal"`
	Cores  int     `json:"cores"`
}

// Busy is the machine's busy cores, steal excluded.
func (c CPUSplit) Busy() float64 { return c.User + c.System + c.IRQ }

// cpuSplit is the window between readings a and b.
func cpuSplit(a, b *cpuSnap) CPUSplit {
	cores := b.cores
	out := CPUSplit{Cores: cores}
	dt := b.total - a.total
	if dt <= 0 || cores <= 0 {
		return out
	}
	core := func(j float64) float64 { return j / dt * float64(cores) }
	out.User, out.System, out.IRQ, out.Steal = core(b.user-a.user), core(b.system-a.system), core(b.irq-a.irq), core(b.steal-a.steal)
	roles := map[string]float64{}
	for pid, pb := range b.procs {
		if pa, ok := a.procs[pid]; ok && pa.role == pb.role && pb.ticks >= pa.ticks {
			roles[pb.role] += core(pb.ticks - pa.ticks)
		}
	}
	out.Frontend, out.Workers, out.Coordinator, out.Client = roles["frontend"], roles["workers"], roles["coordinator"], roles["client"]
	out.Other = max(out.Busy()-out.Frontend-out.Workers-out.Coordinator-out.Client, 0)
	return out
}

// String is the split as bench-serve.sh's files record it (parsed by
// simulate.ReadServeBench; keep the two in step).
func (c CPUSplit) String() string {
	return fmt.Sprintf("cores: front end %.3f, workers %.3f, coordinator %.3f, client %.3f, other %.3f; machine user %.3f system %.3f irq %.3f steal %.3f of %d",
		c.Frontend, c.Workers, c.Coordinator, c.Client, c.Other, c.User, c.System, c.IRQ, c.Steal, c.Cores)
}
