package localcluster

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMemUsageRead reads counters laid out as cgroup v1 and v2 write them.
func TestMemUsageRead(t *testing.T) {
	for _, c := range []struct {
		version int
		files   map[string]string
		want    MemUsage
	}{
		{1, map[string]string{
			"memory.limit_in_bytes": "1048576\n", "memory.usage_in_bytes": "1000\n", "memory.max_usage_in_bytes": "4096\n",
			"memory.failcnt": "7\n", "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
		}, MemUsage{Source: "cgroup v1", Limit: 1 << 20, Usage: 1000, Peak: 4096, Failcnt: 7, OOMKills: 1}},
		{2, map[string]string{
			"memory.max": "1048576\n", "memory.current": "1000\n", "memory.peak": "4096\n",
			"memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\noom_group_kill 0\n",
		}, MemUsage{Source: "cgroup v2", Limit: 1 << 20, Usage: 1000, Peak: 4096, Failcnt: 3}},
		{2, map[string]string{ // before Linux 5.19: no memory.peak
			"memory.max": "max\n", "memory.current": "1000\n", "memory.events": "max 0\noom_kill 2\n",
		}, MemUsage{Source: "cgroup v2", Usage: 1000, OOMKills: 2}},
	} {
		dir := t.TempDir()
		for name, data := range c.files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		c.want.Dir = dir
		cg := &memCgroup{version: c.version, dir: dir}
		got, err := cg.usage()
		if err != nil || got != c.want {
			t.Errorf("v%d: %+v, %v; want %+v", c.version, got, err, c.want)
		}
		if got.OOMKilled() != (c.want.OOMKills > 0) {
			t.Errorf("v%d: OOMKilled %v", c.version, got.OOMKilled())
		}
	}
}
