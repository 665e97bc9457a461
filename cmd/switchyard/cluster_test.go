package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the switchyard binary: run with
// SWITCHYARD_CLI_MAIN=1 it is `switchyard` (the same run as main), so
// `verify --workers N`, which starts its workers by re-running its own
// executable with the worker command, works from inside the tests.
func TestMain(m *testing.M) {
	if os.Getenv("SWITCHYARD_CLI_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestVerifyWorkers is the CLI contract of `verify --workers N` (DESIGN
// section 9): with the experts of a golden model placed over N worker
// processes the golden checks pass, the forward quantities match the
// in-process run (the "vs 1 worker" lines), gradients and the AdamW
// trajectory are recomputed data- and expert-parallel on the workers (a
// verification job) and pass, where etcd and the workers listen is printed
// on stderr, and no worker process outlives the command. It starts real
// processes, so it runs only with SWITCHYARD_E2E=1.
func TestVerifyWorkers(t *testing.T) {
	if os.Getenv("SWITCHYARD_E2E") != "1" {
		t.Skip("end-to-end cluster test: set SWITCHYARD_E2E=1")
	}
	t.Setenv("SWITCHYARD_CLI_MAIN", "1") // inherited by the worker processes
	pidRE := regexp.MustCompile(`pid=(\d+)`)
	for _, m := range []string{"qwen2_moe", "deepseek_v3_bf16"} {
		for _, n := range []int{2, 3} {
			t.Run(fmt.Sprintf("%s/workers=%d", m, n), func(t *testing.T) {
				start := time.Now()
				code, out, errOut := runCLI("verify", "--model", filepath.Join(goldenRoot, m), "--workers", strconv.Itoa(n))
				t.Logf("exit %d after %v\nstderr:\n%sstdout:\n%s", code, time.Since(start).Round(time.Millisecond), errOut, out)
				wantSkipped := " 0 skipped)"
				if strings.HasPrefix(m, "deepseek") {
					wantSkipped = " 2 skipped)" // aux_loss, loss_with_aux: none in transformers
				}
				if code != 0 || !strings.HasPrefix(lastLine(out), "verify: PASS") || !strings.Contains(out, wantSkipped) {
					t.Fatalf("verify --workers %d did not pass", n)
				}
				for _, q := range []string{"logits vs 1 worker", "hidden_states vs 1 worker", "generated_ids vs 1 worker", "loss vs 1 worker"} {
					if !regexp.MustCompile(regexp.QuoteMeta(q) + `\s.*\sok\b`).MatchString(out) {
						t.Errorf("no ok line for %q", q)
					}
				}
				want := fmt.Sprintf("data- and expert-parallel on %d worker processes", n)
				for _, line := range strings.Split(out, "\n") {
					if (strings.HasPrefix(line, "grad.") || strings.HasPrefix(line, "adamw_losses")) && !strings.Contains(line, want) {
						t.Errorf("training line does not say it was computed on the workers: %s", line)
					}
				}
				if !strings.Contains(errOut, "gradients and AdamW recomputed by job") {
					t.Errorf("stderr does not name the verification job")
				}
				if !strings.Contains(errOut, "verify: etcd http://127.0.0.1:") || strings.Count(errOut, " grpc=127.0.0.1:") != n {
					t.Errorf("stderr does not say where etcd and the %d workers listen", n)
				}
				pids := pidRE.FindAllStringSubmatch(errOut, -1)
				if len(pids) != n {
					t.Fatalf("found %d worker pids on stderr", len(pids))
				}
				for _, p := range pids {
					pid, _ := strconv.Atoi(p[1])
					if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
						t.Errorf("worker process %d still exists after verify returned (kill 0: %v)", pid, err)
					}
				}
			})
		}
	}
}
