package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/simulate"
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
	for _, bad := range []string{"1024", "1024x", "x2816", "0x2816", "1024x-1"} {
		if code, _, errOut := runCLI("simulate", "calibrate", "--quick", "--expert", bad); code == 0 || !strings.Contains(errOut, "HIDDENxINTER") {
			t.Errorf("simulate calibrate --expert %q: exit %d, %q; want a usage error", bad, code, errOut)
		}
	}
	code, out, errOut = runCLI("simulate", "train", "--model", "mixtral-8x22b", "--workers", "16,32", "--nic", "25gbit", "--calibration", cal)
	if code != 0 {
		t.Fatalf("simulate train: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "bottleneck") || !strings.Contains(out, "16") || !strings.Contains(out, "32") {
		t.Errorf("simulate train output lacks its table:\n%s", out)
	}
}

// TestSimulateValidateServe: `simulate validate --serve` predicts every
// emulated row of a committed bench-serve run and prints, beside each
// exchange, its owners' part predicted and measured: a positive part no
// longer than its exchange.
func TestSimulateValidateServe(t *testing.T) {
	const file = "../../bench/results/serve-4hosts-avx2-3.txt"
	code, out, errOut := runCLI("simulate", "validate", "--serve", file)
	if code != 0 {
		t.Fatalf("simulate validate --serve: exit %d: %s", code, errOut)
	}
	// The measured owners' part of each row: its windows' mean.
	fh, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	b, err := simulate.ReadServeBench(fh)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{}
	for _, r := range simulate.MeanWindows(b.Rows) {
		want[fmt.Sprintf("%s/%d", r.Config, r.Clients)] = float64(r.Owners) / 1e6
	}
	if !strings.Contains(out, "of which owners' ms predicted") {
		t.Fatalf("no owners' columns in:\n%s", out)
	}
	rows := 0
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "netns 4 hosts") {
			continue
		}
		rows++
		f := strings.Fields(line)
		// ... clients, tokens/s predicted, measured, error, exchange
		// predicted, measured, error, owners' predicted, measured.
		n := len(f)
		exch, owners, measured := parseMs(t, f[n-5]), parseMs(t, f[n-2]), parseMs(t, f[n-1])
		if owners <= 0 || owners > exch {
			t.Errorf("row %q: owners' %v ms predicted, more than the exchange (%v) or none", line, owners, exch)
		}
		config := strings.TrimSpace(line[:strings.Index(line, "each")+len("each")])
		key := fmt.Sprintf("%s/%s", config, f[n-9])
		if w, ok := want[key]; !ok || math.Abs(measured-w) > 0.0005 {
			t.Errorf("row %q: owners' %v ms measured, want the windows' mean %v (found %v)", key, measured, w, ok)
		}
	}
	if rows != 4 {
		t.Errorf("%d emulated rows, want 4 (1 and 16 clients at 1 and 10 Gbit/s):\n%s", rows, out)
	}
}

func parseMs(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("not a number of ms: %q", s)
	}
	return v
}
