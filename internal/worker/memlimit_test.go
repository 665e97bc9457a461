package worker

import (
	"os"
	"runtime"
	"testing"
	"testing/fstest"
)

func TestCgroupMemLimit(t *testing.T) {
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	// This machine class's layout: cgroup v1 controllers plus an empty
	// unified (v2) hierarchy, "0::/".
	hybrid := "9:name=systemd:/\n4:memory:/pod/c1\n3:cpuset:/\n0::/\n"
	for _, tc := range []struct {
		name    string
		fs      fstest.MapFS
		want    MemLimit
		wantErr bool
	}{
		{"v1", fstest.MapFS{
			"proc/self/cgroup": file(hybrid),
			"sys/fs/cgroup/memory/pod/c1/memory.limit_in_bytes": file("314572800\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes":        file("9223372036854771712\n"),
		}, MemLimit{314572800, "cgroup v1", "sys/fs/cgroup/memory/pod/c1/memory.limit_in_bytes"}, false},
		{"v1 unlimited", fstest.MapFS{
			"proc/self/cgroup": file(hybrid),
			"sys/fs/cgroup/memory/pod/c1/memory.limit_in_bytes": file("9223372036854771712\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes":        file("9223372036854771712\n"),
		}, MemLimit{Source: "none"}, false},
		{"v1 unlimited as uint64 max", fstest.MapFS{
			"proc/self/cgroup":                           file("4:memory:/\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": file("18446744073709551615\n"),
		}, MemLimit{Source: "none"}, false},
		{"v1 limit on the parent binds", fstest.MapFS{
			"proc/self/cgroup": file(hybrid),
			"sys/fs/cgroup/memory/pod/c1/memory.limit_in_bytes": file("9223372036854771712\n"),
			"sys/fs/cgroup/memory/pod/memory.limit_in_bytes":    file("1073741824\n"),
		}, MemLimit{1 << 30, "cgroup v1", "sys/fs/cgroup/memory/pod/memory.limit_in_bytes"}, false},
		{"v1 smallest of the levels", fstest.MapFS{
			"proc/self/cgroup": file(hybrid),
			"sys/fs/cgroup/memory/pod/c1/memory.limit_in_bytes": file("2147483648\n"),
			"sys/fs/cgroup/memory/pod/memory.limit_in_bytes":    file("1073741824\n"),
		}, MemLimit{1 << 30, "cgroup v1", "sys/fs/cgroup/memory/pod/memory.limit_in_bytes"}, false},
		{"v1 in a container: own cgroup mounted at the root", fstest.MapFS{
			"proc/self/cgroup":                           file("12:memory:/docker/0123abcd\n"),
			"sys/fs/cgroup/memory/memory.limit_in_bytes": file("536870912"),
		}, MemLimit{512 << 20, "cgroup v1", "sys/fs/cgroup/memory/memory.limit_in_bytes"}, false},
		{"v1 memory among other controllers", fstest.MapFS{
			"proc/self/cgroup": file("3:cpu,memory:/x\n"),
			"sys/fs/cgroup/memory/x/memory.limit_in_bytes": file("1000000\n"),
		}, MemLimit{1000000, "cgroup v1", "sys/fs/cgroup/memory/x/memory.limit_in_bytes"}, false},
		{"v2", fstest.MapFS{
			"proc/self/cgroup": file("0::/system.slice/worker.service\n"),
			"sys/fs/cgroup/system.slice/worker.service/memory.max": file("1677721600\n"),
			"sys/fs/cgroup/system.slice/memory.max":                file("max\n"),
		}, MemLimit{1677721600, "cgroup v2", "sys/fs/cgroup/system.slice/worker.service/memory.max"}, false},
		{"v2 max", fstest.MapFS{
			"proc/self/cgroup": file("0::/system.slice/worker.service\n"),
			"sys/fs/cgroup/system.slice/worker.service/memory.max": file("max\n"),
		}, MemLimit{Source: "none"}, false},
		{"v2 in a container (cgroup namespace)", fstest.MapFS{
			"proc/self/cgroup":         file("0::/\n"),
			"sys/fs/cgroup/memory.max": file("268435456\n"),
		}, MemLimit{256 << 20, "cgroup v2", "sys/fs/cgroup/memory.max"}, false},
		{"no proc/self/cgroup (not Linux)", fstest.MapFS{}, MemLimit{Source: "none"}, false},
		{"no limit files", fstest.MapFS{"proc/self/cgroup": file(hybrid)}, MemLimit{Source: "none"}, false},
		{"no memory controller", fstest.MapFS{"proc/self/cgroup": file("1:cpu:/\n")}, MemLimit{Source: "none"}, false},
		{"malformed limit", fstest.MapFS{
			"proc/self/cgroup":           file("0::/a\n"),
			"sys/fs/cgroup/a/memory.max": file("lots\n"),
		}, MemLimit{Source: "none"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CgroupMemLimit(tc.fs)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v (error: %v)", got, err, tc.want, tc.wantErr)
			}
			if err != nil {
				t.Logf("error: %v", err)
			}
		})
	}
}

// TestCgroupMemLimitHere reads this machine's real cgroup files.
// (internal/workercmd's TestWorkerProcessMemory runs a worker inside a
// cgroup with a limit.)
func TestCgroupMemLimitHere(t *testing.T) {
	got, err := CgroupMemLimit(os.DirFS("/"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("this process: %+v", got)
	if runtime.GOOS != "linux" && got.Source != "none" {
		t.Fatalf("%s has no cgroups, got %+v", runtime.GOOS, got)
	}
	if (got.Bytes == 0) != (got.Source == "none") {
		t.Fatalf("inconsistent %+v", got)
	}
}

func TestExpertBudget(t *testing.T) {
	for _, c := range []struct{ limit, budget, soft int64 }{
		{0, 0, -1},
		{1, 1, RuntimeReserve},
		{RuntimeReserve, 1, RuntimeReserve},
		{RuntimeReserve + 1, 1, RuntimeReserve},
		{RuntimeReserve + SoftLimitMargin, SoftLimitMargin, RuntimeReserve},
		{1000 << 20, 1000<<20 - RuntimeReserve, 1000<<20 - SoftLimitMargin},
	} {
		if got := ExpertBudget(c.limit); got != c.budget {
			t.Errorf("ExpertBudget(%d) = %d, want %d", c.limit, got, c.budget)
		}
		if c.soft >= 0 {
			if got := SoftLimit(c.limit); got != c.soft {
				t.Errorf("SoftLimit(%d) = %d, want %d", c.limit, got, c.soft)
			}
		}
	}
}
