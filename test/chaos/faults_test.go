package main

import (
	"slices"
	"strings"
	"testing"
)

// TestParseMix: --kinds and --hosts select what the run draws from, and a
// typo is refused with the known values rather than silently drawing
// nothing or everything.
func TestParseMix(t *testing.T) {
	m, err := parseMix("", "")
	if err != nil || !slices.Equal(m.kinds, kinds) || !slices.Equal(m.hosts, []int{1, 2, 3, 4, 5}) {
		t.Fatalf("defaults: %+v, %v; want every kind and hosts 1-5", m, err)
	}
	m, err = parseMix("kill-leader,link-down", "h1,3")
	if err != nil || !slices.Equal(m.kinds, []string{"kill-leader", "link-down"}) || !slices.Equal(m.hosts, []int{1, 3}) {
		t.Fatalf("kill-leader,link-down on h1,3: %+v, %v", m, err)
	}
	for _, bad := range []struct{ kinds, hosts, want string }{
		{"link-dwon", "", "unknown fault kind \"link-dwon\" (known: kill-worker,"},
		{"", "0", "\"0\" is not a host 1..5"},
		{"", "6", "\"6\" is not a host 1..5"},
		{"", "h2,x", "\"x\" is not a host 1..5"},
		{"link-down,", "", "unknown fault kind \"\""},
	} {
		_, err := parseMix(bad.kinds, bad.hosts)
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("--kinds %q --hosts %q: error %v, want one containing %q", bad.kinds, bad.hosts, err, bad.want)
		}
	}
}
