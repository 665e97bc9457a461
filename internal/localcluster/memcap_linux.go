package localcluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Worker memory cgroups (Options.WorkerMemCap). Each capped worker gets a
// memory cgroup of its own, made a child of this process's memory cgroup
// where that is possible, so that whatever limit binds the launcher (a
// container's, a CI job's) binds its workers too:
//
//   - cgroup v1: <mount>/memory/<our path>/switchyard-<cluster>-<pid>-<id>,
//     memory.limit_in_bytes (and memory.memsw.limit_in_bytes, where swap
//     is accounted, so the cap cannot be dodged by swapping). The worker
//     is started as `/bin/sh -c 'echo $$ > DIR/cgroup.procs && exec "$@"'
//     sh ARGV...`: the shell joins the cgroup and becomes the worker, so it
//     is inside before it loads anything.
//   - cgroup v2: a child of the nearest cgroup from ours up whose
//     cgroup.subtree_control enables the memory controller (v2 forbids
//     children with controllers under a cgroup that holds processes, so
//     usually not our own), memory.max and memory.swap.max 0; the worker
//     is cloned straight into it (SysProcAttr.UseCgroupFD, Linux 5.7+).
//
// The worker reads the limit itself (--mem auto). The cgroups are removed
// on Close, once their workers exited.

const cgroupMount = "/sys/fs/cgroup"

// cgroupParent is where worker cgroups are made.
type cgroupParent struct {
	version int    // 1 or 2
	dir     string // absolute directory of the parent cgroup
}

// findCgroupParent picks the parent for worker cgroups, or says why there
// is none.
func findCgroupParent() (cgroupParent, error) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return cgroupParent{}, err
	}
	var v1, v2 string
	found1, found2 := false, false
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			v2, found2 = f[2], true
		}
		if slices.Contains(strings.Split(f[1], ","), "memory") {
			v1, found1 = f[2], true
		}
	}
	switch {
	case found1:
		root := filepath.Join(cgroupMount, "memory")
		if _, err := os.Stat(filepath.Join(root, "memory.limit_in_bytes")); err != nil {
			return cgroupParent{}, fmt.Errorf("no cgroup v1 memory hierarchy at %s: %w", root, err)
		}
		dir := filepath.Join(root, v1)
		if _, err := os.Stat(dir); err != nil {
			dir = root // the mount shows only our own cgroup (a container)
		}
		return cgroupParent{1, dir}, nil
	case found2:
		ctrls, err := os.ReadFile(filepath.Join(cgroupMount, "cgroup.controllers"))
		if err != nil || !slices.Contains(strings.Fields(string(ctrls)), "memory") {
			return cgroupParent{}, fmt.Errorf("cgroup v2 at %s has no memory controller", cgroupMount)
		}
		p := filepath.Clean("/" + v2)
		for {
			dir := filepath.Join(cgroupMount, p)
			if b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control")); err == nil &&
				slices.Contains(strings.Fields(string(b)), "memory") {
				return cgroupParent{2, dir}, nil
			}
			if p == "/" {
				break
			}
			p = filepath.Dir(p)
		}
		return cgroupParent{}, fmt.Errorf("no cgroup from ours (%s) up to %s enables the memory controller for its children", v2, cgroupMount)
	}
	return cgroupParent{}, errors.New("no memory cgroup controller in /proc/self/cgroup")
}

// memCgroup is one worker's memory cgroup.
type memCgroup struct {
	version int
	dir     string
	fd      *os.File // v2: the directory, for CgroupFD, until the worker started

	mu      sync.Mutex
	removed bool
	last    MemUsage // the reading taken just before removal
}

// newMemCgroup makes the cgroup parent/name with a hard limit. A
// leftover cgroup of that name with no processes is replaced.
func newMemCgroup(parent cgroupParent, name string, limit int64) (_ *memCgroup, err error) {
	dir := filepath.Join(parent.dir, name)
	if err := os.Mkdir(dir, 0o755); errors.Is(err, os.ErrExist) {
		if err := os.Remove(dir); err != nil {
			return nil, fmt.Errorf("cgroup %s exists and cannot be removed: %w", dir, err)
		}
		err = os.Mkdir(dir, 0o755)
	}
	if err != nil {
		return nil, err
	}
	cg := &memCgroup{version: parent.version, dir: dir}
	defer func() {
		if err != nil {
			cg.remove()
		}
	}()
	lim := strconv.FormatInt(limit, 10)
	if parent.version == 1 {
		if err := cg.write("memory.limit_in_bytes", lim); err != nil {
			return nil, err
		}
		// Where swap is accounted, memsw (memory + swap) gets the same
		// limit: the worker cannot swap its way past the cap.
		if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
			_ = cg.write("memory.memsw.limit_in_bytes", lim)
		}
		return cg, nil
	}
	if err := cg.write("memory.max", lim); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); err == nil {
		_ = cg.write("memory.swap.max", "0")
	}
	if cg.fd, err = os.Open(dir); err != nil {
		return nil, err
	}
	return cg, nil
}

func (cg *memCgroup) write(file, value string) error {
	return os.WriteFile(filepath.Join(cg.dir, file), []byte(value), 0o644)
}

// command returns the command that runs argv inside the cgroup, with
// attr (the caller's SysProcAttr) adjusted.
func (cg *memCgroup) command(argv []string, attr *syscall.SysProcAttr) *exec.Cmd {
	if cg.version == 2 {
		attr.UseCgroupFD, attr.CgroupFD = true, int(cg.fd.Fd())
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = attr
		return cmd
	}
	script := "echo $$ > " + shellQuote(filepath.Join(cg.dir, "cgroup.procs")) + ` && exec "$@"`
	cmd := exec.Command("/bin/sh", append([]string{"-c", script, "sh"}, argv...)...)
	cmd.SysProcAttr = attr
	return cmd
}

// started releases what only the start needed.
func (cg *memCgroup) started() {
	if cg.fd != nil {
		cg.fd.Close()
		cg.fd = nil
	}
}

func (cg *memCgroup) source() string { return "cgroup v" + strconv.Itoa(cg.version) }

// usage reads the cgroup's counters (or the last reading once removed).
func (cg *memCgroup) usage() (MemUsage, error) {
	cg.mu.Lock()
	defer cg.mu.Unlock()
	if cg.removed {
		return cg.last, nil
	}
	return cg.read()
}

func (cg *memCgroup) read() (MemUsage, error) {
	u := MemUsage{Source: cg.source(), Dir: cg.dir}
	var errs []error
	num := func(file string, dst *int64, optional bool) {
		b, err := os.ReadFile(filepath.Join(cg.dir, file))
		if err != nil {
			if !(optional && errors.Is(err, os.ErrNotExist)) {
				errs = append(errs, err)
			}
			return
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			*dst = 0
			return
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q: %w", file, s, err))
		}
		*dst = n
	}
	if cg.version == 1 {
		num("memory.limit_in_bytes", &u.Limit, false)
		num("memory.usage_in_bytes", &u.Usage, false)
		num("memory.max_usage_in_bytes", &u.Peak, false)
		num("memory.failcnt", &u.Failcnt, false)
		kv, err := readKV(filepath.Join(cg.dir, "memory.oom_control"))
		if err != nil {
			errs = append(errs, err)
		}
		u.UnderOOM = kv["under_oom"] != 0
		u.OOMKills = kv["oom_kill"]
	} else {
		num("memory.max", &u.Limit, false)
		num("memory.current", &u.Usage, false)
		num("memory.peak", &u.Peak, true)
		kv, err := readKV(filepath.Join(cg.dir, "memory.events"))
		if err != nil {
			errs = append(errs, err)
		}
		u.Failcnt, u.OOMKills = kv["max"], kv["oom_kill"]
	}
	if err := errors.Join(errs...); err != nil {
		return u, fmt.Errorf("localcluster: cgroup %s: %w", cg.dir, err)
	}
	return u, nil
}

// remove takes the last reading and removes the cgroup (its processes
// must have exited; the kernel may take a moment to see that).
func (cg *memCgroup) remove() error {
	cg.started()
	cg.mu.Lock()
	defer cg.mu.Unlock()
	if cg.removed {
		return nil
	}
	last, _ := cg.read()
	var err error
	for i := 0; i < 50; i++ {
		if err = os.Remove(cg.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			cg.removed, cg.last = true, last
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("localcluster: remove cgroup %s: %w", cg.dir, err)
}

// readKV reads "key value" lines (memory.oom_control, memory.events).
func readKV(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kv := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 {
			if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				kv[f[0]] = n
			}
		}
	}
	return kv, nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
