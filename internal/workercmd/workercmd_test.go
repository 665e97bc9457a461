package workercmd

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1": 1, "512MiB": 512 << 20, "8GiB": 8 << 30, "1.5 GiB": 3 << 29, "2GB": 2e9, "10KB": 10e3, "7B": 7,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1", "GiB"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) accepted", in)
		}
	}
}

// TestBadConfig: configuration errors are reported before anything starts,
// every problem at once, with status 1.
func TestBadConfig(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main([]string{"--model", "", "--id", "a/b", "--listen", "nonsense", "--etcd", ""}, &out, &errOut)
	if code != 1 || out.Len() != 0 {
		t.Fatalf("exit %d, stdout %q", code, out.String())
	}
	for _, s := range []string{"ID \"a/b\"", "ListenAddr \"nonsense\"", "no etcd endpoints"} { // (no --model: a jobs-only worker)
		if !strings.Contains(errOut.String(), s) {
			t.Errorf("stderr lacks %q:\n%s", s, errOut.String())
		}
	}
}
