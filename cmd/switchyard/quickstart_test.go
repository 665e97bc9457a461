package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestQuickstartTextIsTheShippedBook: the text quickstart carries is
// testdata/text/opticks.txt byte for byte.
func TestQuickstartTextIsTheShippedBook(t *testing.T) {
	book, err := os.ReadFile("../../testdata/text/opticks.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(opticks, book) {
		t.Fatalf("cmd/switchyard/quickstart_opticks.txt (%d bytes) differs from testdata/text/opticks.txt (%d bytes)", len(opticks), len(book))
	}
}

// TestQuickstartE2E is the CLI contract of `switchyard quickstart` (DESIGN
// section 9), run by the real binary from an unrelated working directory:
// it trains a small MoE on local worker processes with progress lines,
// serves the checkpoint, shows the prompt and a streamed completion, exits
// 0 with --exit-after-demo and leaves no worker behind. A second run with
// the same --out serves the finished checkpoint without training again.
func TestQuickstartE2E(t *testing.T) {
	if os.Getenv("SWITCHYARD_E2E") != "1" {
		t.Skip("end-to-end cluster test: set SWITCHYARD_E2E=1")
	}
	out := filepath.Join(t.TempDir(), "qs")
	exe := switchyardBinary(t)
	run := func() *proc {
		start := time.Now()
		p := startBinary(t, exe, t.TempDir(), "quickstart", "--steps", "6", "--workers", "2", "--listen", "127.0.0.1:0",
			"--out", out, "--exit-after-demo", "--max-tokens", "20")
		p.waitExit(t, 3*time.Minute)
		t.Logf("quickstart took %v\nstdout:\n%s\nstderr:\n%s", time.Since(start).Round(time.Millisecond), p.stdout.String(), p.stderr.String())
		if p.err != nil {
			t.Fatalf("exit: %v", p.err)
		}
		return p
	}
	p := run()
	stdout, stderr := p.stdout.String(), p.stderr.String()
	for _, re := range []string{
		`(?m)^prompt:     The Rays of Light$`,
		`(?m)^completion: .*`,
		`\(finish_reason (length|stop), \d+ tokens in `,
	} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("stdout does not match %s", re)
		}
	}
	if m := regexp.MustCompile(`\(finish_reason length, (\d+) tokens`).FindStringSubmatch(stdout); m != nil && m[1] != "20" {
		t.Errorf("a length-finished demo made %s tokens, want --max-tokens 20", m[1])
	}
	for _, s := range []string{"train: step 6/6 loss", "quickstart: ready: http://127.0.0.1:", "quickstart: workers and etcd stopped"} {
		if !strings.Contains(stderr, s) {
			t.Errorf("stderr lacks %q", s)
		}
	}
	ckpt := filepath.Join(out, "checkpoint-0000006")
	for _, f := range []string{"config.json", "model.safetensors.index.json", "tokenizer.json", "trainer_state.json"} {
		if _, err := os.Stat(filepath.Join(ckpt, f)); err != nil {
			t.Errorf("checkpoint: %v", err)
		}
	}
	// The CLI draws the loss curve from the workers' checkpoints.
	if st, err := os.Stat(filepath.Join(out, "loss.png")); err != nil || st.Size() < 1000 {
		t.Errorf("loss curve: %v", err)
	}
	checkWorkersGone(t, stderr, 4) // 2 training workers, 2 serving workers

	p = run()
	if !strings.Contains(p.stderr.String(), "already holds the model trained for 6 steps") || strings.Contains(p.stderr.String(), "train: step") {
		t.Errorf("the second run trained again")
	}
	if !strings.Contains(p.stdout.String(), "prompt:     The Rays of Light") {
		t.Errorf("the second run showed no completion")
	}
}
