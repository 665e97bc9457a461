package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The simulate subcommands run end to end from the CLI: serve prints its
// table and writes its plots, a sweep point that cannot hold the model
// says so with what it needs, and calibrate writes a calibration that
// train reads back.
func TestSimulateCommands(t *testing.T) {
	dir := t.TempDir()
	code, out, errOut := runCLI("simulate", "serve", "--model", "mixtral-8x22b", "--workers", "16,32", "--nic", "25gbit,100gbit",
		"--batch", "1", "--cores", "32", "--memory", "512GiB", "--plot-dir", dir)
	if code != 0 {
		t.Fatalf("simulate serve: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"tokens/s", "bottleneck", "recovery"} {
		if !strings.Contains(out, want) {
			t.Errorf("simulate serve output lacks %q:\n%s", want, out)
		}
	}
	pngs, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	if len(pngs) == 0 {
		t.Error("simulate serve --plot-dir wrote no PNG")
	}
	// A sweep point that cannot hold the model says so, with the need.
	code, out, errOut = runCLI("simulate", "serve", "--model", "deepseek-v3", "--workers", "2", "--nic", "25gbit", "--batch", "1",
		"--cores", "32", "--memory", "256GiB", "--replicas", "2")
	if code != 0 || !strings.Contains(out, "does not fit") || !strings.Contains(out, "2.62 TB") {
		t.Errorf("DeepSeek-V3 on 2 hosts of 256 GiB: exit %d (%s), output:\n%s\nwant a row saying it does not fit, naming the 2.62 TB needed", code, errOut, out)
	}

	cal := filepath.Join(dir, "cal.json")
	if code, _, errOut := runCLI("simulate", "calibrate", "--quick", "--out", cal); code != 0 {
		t.Fatalf("simulate calibrate --quick: exit %d: %s", code, errOut)
	}
	if st, err := os.Stat(cal); err != nil || st.Size() == 0 {
		t.Fatalf("calibration file: %v", err)
	}
	code, out, errOut = runCLI("simulate", "train", "--model", "mixtral-8x22b", "--workers", "16,32", "--nic", "25gbit", "--calibration", cal)
	if code != 0 {
		t.Fatalf("simulate train: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "bottleneck") || !strings.Contains(out, "16") || !strings.Contains(out, "32") {
		t.Errorf("simulate train output lacks its table:\n%s", out)
	}
}
