package localcluster

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/switchyard/switchyard/pkg/cluster"
)

// MemUsage is what a worker's memory cgroup recorded (Options.WorkerMemCap).
type MemUsage struct {
	// Source is "cgroup v1" or "cgroup v2".
	Source string
	// Dir is the cgroup's directory.
	Dir string
	// Limit is the cgroup's hard memory limit in bytes.
	Limit int64
	// Usage is the memory charged to the cgroup now (resident pages and
	// page cache the worker touched first).
	Usage int64
	// Peak is the highest Usage since the cgroup was made (v1
	// memory.max_usage_in_bytes, v2 memory.peak; 0 on a v2 kernel older
	// than 5.19, which does not keep it). It never exceeds Limit: at the
	// limit the kernel reclaims page cache, and when nothing more can be
	// reclaimed its OOM killer kills the worker (OOMKills).
	Peak int64
	// OOMKills counts processes of the cgroup the kernel's OOM killer
	// killed (v1 memory.oom_control oom_kill, v2 memory.events oom_kill).
	OOMKills int64
	// UnderOOM: the cgroup is out of memory right now (v1 under_oom).
	UnderOOM bool
	// Failcnt counts the times usage hit the limit (v1 memory.failcnt, v2
	// memory.events max): reclaim, not necessarily an OOM.
	Failcnt int64
}

// OOMKilled reports whether the kernel's OOM killer struck in the cgroup.
func (u MemUsage) OOMKilled() bool { return u.OOMKills > 0 || u.UnderOOM }

func (u MemUsage) String() string {
	return fmt.Sprintf("%s peak %d of limit %d bytes (now %d), %d OOM kills, limit hit %d times",
		u.Source, u.Peak, u.Limit, u.Usage, u.OOMKills, u.Failcnt)
}

// ErrNoCgroup: the worker runs in no memory cgroup of the cluster's own
// (Options.WorkerMemCap is 0, or cgroups were not writable and the cap was
// passed as --mem).
var ErrNoCgroup = errors.New("localcluster: worker has no memory cgroup")

// MemUsage reads the worker's memory cgroup. After Close removed the
// cgroup it returns the last reading, taken once the worker had exited.
func (p *Proc) MemUsage() (MemUsage, error) {
	if p.cg == nil {
		return MemUsage{}, ErrNoCgroup
	}
	return p.cg.usage()
}

// MemPeak is the peak memory usage of the worker's cgroup (MemUsage().Peak).
func (p *Proc) MemPeak() (int64, error) {
	u, err := p.MemUsage()
	return u.Peak, err
}

// MemCapMode says how Options.WorkerMemCap is applied to the workers:
// "cgroup v1 memory cgroups" or "cgroup v2 memory cgroups" (a memory
// cgroup per worker, which reads its limit itself); "--mem (...)" with
// the reason when no cgroup could be made and the cap is passed as the
// workers' --mem flag instead (a budget they keep their experts under, not
// a limit the kernel enforces); "" when there is no cap.
func (c *Cluster) MemCapMode() string { return c.capMode }

// setupMemCap decides how Options.WorkerMemCap is applied: memory cgroups
// if this process can make them (a probe cgroup is made and removed),
// else --mem, said in a log line.
func (c *Cluster) setupMemCap() {
	parent, err := findCgroupParent()
	if err == nil {
		var probe *memCgroup
		if probe, err = newMemCgroup(parent, fmt.Sprintf("switchyard-%s-%d-probe", c.opts.Cluster, os.Getpid()), c.opts.WorkerMemCap); err == nil {
			err = probe.remove()
		}
	}
	if err != nil {
		c.capMode = fmt.Sprintf("--mem (no memory cgroups: %v)", err)
		msg := fmt.Sprintf("localcluster: cannot make memory cgroups (%v): each worker's cap of %d bytes is passed as --mem, which it keeps its experts under but the kernel does not enforce", err, c.opts.WorkerMemCap)
		if c.opts.Logger != nil {
			c.opts.Logger.Warn(msg)
		}
		if c.opts.Logs != nil {
			fmt.Fprintln(c.opts.Logs, msg)
		}
		return
	}
	c.cgParent = parent
	c.capMode = fmt.Sprintf("cgroup v%d memory cgroups", parent.version)
	if c.opts.Logger != nil {
		c.opts.Logger.Info("workers capped by memory cgroups", "cap", c.opts.WorkerMemCap, "version", parent.version, "parent", parent.dir)
	}
}

// cgroupName names worker id's cgroup: switchyard-<cluster>-<our pid>-<id>
// (another cluster, in this process or another, never shares it), with
// -<n> for the n-th restart of the same ID.
func (c *Cluster) cgroupName(id cluster.WorkerID) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cgStarts == nil {
		c.cgStarts = map[cluster.WorkerID]int{}
	}
	c.cgStarts[id]++
	name := fmt.Sprintf("switchyard-%s-%d-%s", c.opts.Cluster, os.Getpid(), id)
	if n := c.cgStarts[id]; n > 1 {
		name += "-" + strconv.Itoa(n)
	}
	return name
}
