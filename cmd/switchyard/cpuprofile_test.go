package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// SWITCHYARD_CPUPROFILE's "%p" names the file by the process ID, and the
// profile is written when stop is called; an unwritable path is reported,
// not fatal.
func TestStartCPUProfile(t *testing.T) {
	dir := t.TempDir()
	var stderr bytes.Buffer
	stop := startCPUProfile(filepath.Join(dir, "cpu-%p.prof"), &stderr)
	stop()
	want := filepath.Join(dir, "cpu-"+strconv.Itoa(os.Getpid())+".prof")
	fi, err := os.Stat(want)
	if err != nil {
		t.Fatalf("no profile at %s: %v (stderr %q)", want, err, stderr.String())
	}
	if fi.Size() == 0 {
		t.Errorf("%s is empty", want)
	}
	stderr.Reset()
	startCPUProfile(filepath.Join(dir, "missing", "x.prof"), &stderr)()
	if !bytes.Contains(stderr.Bytes(), []byte("SWITCHYARD_CPUPROFILE")) {
		t.Errorf("an unwritable path: stderr %q, want the variable named", stderr.String())
	}
	startCPUProfile("", &stderr)() // nothing to do
}
