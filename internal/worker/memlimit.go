package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// RuntimeReserve is the part of a worker's memory limit (Config.MemBytes)
// that is not for experts: the Go runtime (heap metadata, goroutine stacks,
// the binary's mapped text and data), gRPC buffers, the etcd client and
// memberlist. A worker registers the rest, MemBytes - RuntimeReserve, as
// the bytes the placement may give it for experts.
//
// Measured on linux/amd64 (go1.26): cmd/worker holding no experts (`worker
// --mem 1`: registered, gossip on, watching its placement, idle for 30 s)
// stays at a VmRSS of 29 MiB, 21 MiB of it the binary's mapped text and 8
// MiB anonymous; 48 MiB leaves about 19 MiB for garbage between
// collections while experts load and for gRPC buffers.
// internal/workercmd's TestWorkerProcessMemory checks both bounds: the
// idle worker under the reserve, a loaded one under its experts plus the
// reserve. Request activations (rows x D floats in and out) have no share
// of their own: they fit in the reserve's head room and whatever the
// placement leaves of the budget; give wide models room for them in --mem.
const RuntimeReserve int64 = 48 << 20

// SoftLimitMargin is how far below a known memory limit the Go runtime's
// soft limit sits (debug.SetMemoryLimit, see SoftLimit): near the soft
// limit the garbage collector runs as often as it must, so garbage from
// loading experts and from requests is collected before the kernel's OOM
// killer sees it. The soft limit counts only memory the Go runtime manages;
// the margin covers what it does not, mainly the binary's mapped text (21
// MiB measured). A fraction of the limit (say 90%) would not do: with the
// experts' budget at the limit less a fixed reserve, a full worker's live
// heap would sit above such a soft limit for any limit over about 500 MiB,
// and the collector would then run without pause.
const SoftLimitMargin int64 = 24 << 20

// ExpertBudget is the memory a worker with process memory limit limit may
// spend on experts, the WorkerInfo.MemBytes it registers: limit -
// RuntimeReserve. A limit of 0 (unlimited) gives 0 (unlimited); a limit at
// or below the reserve gives 1 byte, room for no expert (0 would read as
// unlimited).
func ExpertBudget(limit int64) int64 {
	switch {
	case limit <= 0:
		return 0
	case limit <= RuntimeReserve:
		return 1
	default:
		return limit - RuntimeReserve
	}
}

// SoftLimit is the Go runtime soft memory limit for a process memory limit
// limit (> 0): limit - SoftLimitMargin, which leaves a worker whose experts
// fill its budget RuntimeReserve - SoftLimitMargin (24 MiB) for the
// runtime's own memory and garbage. It is never below RuntimeReserve (a
// soft limit under what the runtime needs idle would only make the
// collector run without pause).
func SoftLimit(limit int64) int64 {
	return max(limit-SoftLimitMargin, RuntimeReserve)
}

// MemLimit is a process memory limit and where it was found.
type MemLimit struct {
	// Bytes is the limit; 0 means none was found (unlimited).
	Bytes int64
	// Source is "cgroup v1" or "cgroup v2" when a limit was found, "none"
	// otherwise.
	Source string
	// File is the cgroup file that holds the limit, relative to the root
	// of the file system read ("" when none).
	File string
}

// cgroupV1Unlimited: cgroup v1 reports "no limit" as the largest page-
// aligned int64 (9223372036854771712); anything from 2^62 up is taken as
// unlimited.
const cgroupV1Unlimited = 1 << 62

// CgroupMemLimit reads the memory limit of the calling process's cgroup.
// fsys is the file system root ("/"; os.DirFS("/") for the real one): it
// reads proc/self/cgroup and then
//
//   - cgroup v1, when a line names the memory controller
//     ("4:memory:/path"): sys/fs/cgroup/memory/<path>/memory.limit_in_bytes,
//     values from 2^62 up meaning unlimited;
//   - cgroup v2 otherwise, from the line "0::/path":
//     sys/fs/cgroup/<path>/memory.max, "max" meaning unlimited.
//
// A limit set on an ancestor cgroup binds too, so every level from <path>
// up to the hierarchy's root is read and the smallest limit wins; levels
// without the file are skipped (inside a container the cgroup file system
// is often mounted at the container's own cgroup, so <path> itself is
// absent). No proc/self/cgroup (not Linux), no memory controller or no
// limit anywhere gives MemLimit{Source: "none"} and no error; an
// unreadable or malformed file is an error.
func CgroupMemLimit(fsys fs.FS) (MemLimit, error) {
	none := MemLimit{Source: "none"}
	data, err := fs.ReadFile(fsys, "proc/self/cgroup")
	if errors.Is(err, fs.ErrNotExist) {
		return none, nil
	}
	if err != nil {
		return none, fmt.Errorf("worker: cgroup memory limit: %w", err)
	}
	v1, v2, found1, found2 := "", "", false, false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrls, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if id == "0" && ctrls == "" {
			v2, found2 = p, true
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if c == "memory" {
				v1, found1 = p, true
			}
		}
	}
	switch {
	case found1:
		return cgroupLimit(fsys, "cgroup v1", "sys/fs/cgroup/memory", v1, "memory.limit_in_bytes")
	case found2:
		return cgroupLimit(fsys, "cgroup v2", "sys/fs/cgroup", v2, "memory.max")
	}
	return none, nil
}

// cgroupLimit reads file in dir/<p> and every ancestor up to dir and
// returns the smallest limit.
func cgroupLimit(fsys fs.FS, source, dir, p, file string) (MemLimit, error) {
	best := MemLimit{Source: "none"}
	p = path.Clean("/" + p)
	for {
		name := path.Join(dir, p, file)
		b, err := readLimit(fsys, name)
		if err != nil {
			return MemLimit{Source: "none"}, fmt.Errorf("worker: %s memory limit: %w", source, err)
		}
		if b > 0 && (best.Bytes == 0 || b < best.Bytes) {
			best = MemLimit{Bytes: b, Source: source, File: name}
		}
		if p == "/" {
			return best, nil
		}
		p = path.Dir(p)
	}
}

// readLimit reads one limit file: 0 for a missing file or no limit.
func readLimit(fsys fs.FS, name string) (int64, error) {
	data, err := fs.ReadFile(fsys, name)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(data))
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %q is not a byte count", name, s)
	}
	if n >= cgroupV1Unlimited {
		return 0, nil
	}
	return int64(n), nil
}
