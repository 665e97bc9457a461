package localcluster

import (
	"bytes"
	"fmt"
	"testing"
)

func TestParseReady(t *testing.T) {
	f, ok := parseReady("worker: id=w1 grpc=127.0.0.1:4000 gossip=- model=qwen2_moe-abc")
	if !ok || f["id"] != "w1" || f["grpc"] != "127.0.0.1:4000" || f["gossip"] != "-" || f["model"] != "qwen2_moe-abc" {
		t.Fatalf("%v %v", f, ok)
	}
	for _, l := range []string{"", "worker: id=w1", "time=... level=INFO msg=registered", "coordinator: etcd=x"} {
		if _, ok := parseReady(l); ok {
			t.Errorf("%q parsed as a ready line", l)
		}
	}
}

func TestWriters(t *testing.T) {
	var lines []string
	lw := &lineWriter{fn: func(s string) { lines = append(lines, s) }}
	fmt.Fprint(lw, "a")
	fmt.Fprint(lw, "b\nc\n\nd")
	if fmt.Sprint(lines) != "[ab c ]" {
		t.Errorf("lines %q", lines)
	}
	var b bytes.Buffer
	pw := &prefixWriter{w: &b, prefix: "w1 | "}
	fmt.Fprint(pw, "one\ntw")
	fmt.Fprint(pw, "o\n")
	if b.String() != "w1 | one\nw1 | two\n" {
		t.Errorf("prefixed %q", b.String())
	}
}
