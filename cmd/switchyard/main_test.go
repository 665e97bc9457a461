package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

const goldenRoot = "../../testdata/golden"

var goldenModels = []string{"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2_lite", "deepseek_v3_bf16"}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestVerifyPassesEveryGoldenModel(t *testing.T) {
	for _, m := range goldenModels {
		t.Run(m, func(t *testing.T) {
			dump := filepath.Join(t.TempDir(), "dump.safetensors")
			code, out, errOut := runCLI("verify", "--model", filepath.Join(goldenRoot, m), "--dump", dump)
			if code != 0 || !strings.HasPrefix(lastLine(out), "verify: PASS") {
				t.Fatalf("exit %d\n%s%s", code, out, errOut)
			}
			for _, q := range []string{"logits", "hidden_states[0]", "generated_ids", "loss", "aux_loss", "loss_with_aux", "grad.*", "adamw_losses"} {
				if !strings.Contains(out, q+" ") {
					t.Errorf("output has no %s line:\n%s", q, out)
				}
			}
			f, err := safetensors.Open(dump)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// Only the aux loss may be skipped, and only where the family
			// has none in transformers (DeepSeek; golden aux is null).
			wantSkipped := " 0 skipped)"
			if strings.HasPrefix(m, "deepseek") {
				wantSkipped = " 2 skipped)"
			}
			if !strings.Contains(lastLine(out), wantSkipped) {
				t.Errorf("want%s:\n%s", wantSkipped, out)
			}
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, " skipped ") && !strings.HasPrefix(line, "aux_loss ") && !strings.HasPrefix(line, "loss_with_aux ") {
					t.Errorf("a required quantity was skipped: %s", line)
				}
			}
			for _, n := range []string{"logits", "hidden_states", "generated_ids", "loss", "adamw_losses", "grad.model.norm.weight", "grad.lm_head.weight"} {
				if !f.Has(n) {
					t.Errorf("dump lacks %s", n)
				}
			}
		})
	}
}

func TestVerifyPassesBothTokenizers(t *testing.T) {
	for _, tk := range []string{"tokenizer_bpe_gpt2", "tokenizer_bpe_qwen2"} {
		code, out, _ := runCLI("verify", "--tokenizer", filepath.Join(goldenRoot, tk))
		if code != 0 || !strings.HasPrefix(lastLine(out), "verify: PASS") {
			t.Fatalf("%s: exit %d\n%s", tk, code, out)
		}
	}
}

// copyDir copies a golden model folder so a test can tamper with it.
func copyDir(t *testing.T, src string) string {
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestVerifyFailsOnAWrongReference(t *testing.T) {
	dir := copyDir(t, filepath.Join(goldenRoot, "olmoe"))
	// Perturb one golden logit by 1% of the logits' norm and one generated token.
	g, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, n := range g.Names() {
		info, _ := g.Info(n)
		switch info.DType {
		case safetensors.I64:
			v, _ := g.Int64(n)
			if n == "generated_ids" {
				v[3] = (v[3] + 1) % 320
			}
			ts = append(ts, safetensors.I64Tensor(n, info.Shape, v))
		default:
			v, _ := g.Float32(n)
			if n == "logits" {
				v[17] += 5
			}
			ts = append(ts, safetensors.F32Tensor(n, info.Shape, v))
		}
	}
	g.Close()
	if err := safetensors.Write(filepath.Join(dir, "golden.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI("verify", "--model", dir)
	if code == 0 || !strings.HasPrefix(lastLine(out), "verify: FAIL") {
		t.Fatalf("tampered golden passed: exit %d\n%s", code, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if (strings.HasPrefix(line, "logits ") || strings.HasPrefix(line, "generated_ids ")) && !strings.Contains(line, "FAIL") {
			t.Errorf("tampered quantity not failed: %s", line)
		}
	}
}

func TestVerifyRejectsMissingInputs(t *testing.T) {
	for _, args := range [][]string{
		{"verify"},
		{"verify", "--model", filepath.Join(t.TempDir(), "nope")},
		{"verify", "--tokenizer", t.TempDir()},
		{"verify", "--model", filepath.Join(goldenRoot, "mixtral"), "--workers", "0"},
	} {
		code, out, errOut := runCLI(args...)
		if code == 0 {
			t.Errorf("%v: exit 0\n%s%s", args, out, errOut)
		}
	}
}

func TestGenerateStreamsOnlyTheContinuation(t *testing.T) {
	model := filepath.Join(goldenRoot, "mixtral")
	tok := filepath.Join(goldenRoot, "tokenizer_bpe_gpt2", "tokenizer.json") // same 320-token vocabulary
	prompt := "The coordinator shards experts"
	code, out1, errOut := runCLI("generate", "--model", model, "--tokenizer", tok, "--prompt", prompt, "--max-tokens", "12")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.HasPrefix(out1, prompt) || len(strings.TrimSpace(out1)) == 0 {
		t.Fatalf("stdout %q should hold only a non-empty continuation", out1)
	}
	if !strings.Contains(errOut, "tokens/s") {
		t.Errorf("diagnostics missing from stderr: %q", errOut)
	}
	_, out2, _ := runCLI("generate", "--model", model, "--tokenizer", tok, "--prompt", prompt, "--max-tokens", "12")
	if out1 != out2 {
		t.Fatalf("greedy generation is not deterministic: %q vs %q", out1, out2)
	}
	sample := func(seed string) string {
		code, out, errOut := runCLI("generate", "--model", model, "--tokenizer", tok, "--prompt", prompt, "--max-tokens", "12", "--temperature", "1.5", "--top-p", "0.95", "--seed", seed)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		return out
	}
	if a, b := sample("1"), sample("1"); a != b {
		t.Fatalf("same seed gave %q and %q", a, b)
	}
	if sample("1") == sample("2") && sample("3") == sample("1") {
		t.Fatalf("different seeds give identical samples")
	}
	for _, bad := range [][]string{{"--temperature", "-1"}, {"--top-p", "1.5"}, {"--max-tokens", "0"}} {
		args := append([]string{"generate", "--model", model, "--tokenizer", tok, "--prompt", "x"}, bad...)
		if code, _, _ := runCLI(args...); code == 0 {
			t.Errorf("%v accepted", bad)
		}
	}
}

// stripGolden copies a golden model folder and rewrites its
// golden.safetensors without the tensors drop selects.
func stripGolden(t *testing.T, model string, drop func(string) bool) string {
	t.Helper()
	dir := copyDir(t, filepath.Join(goldenRoot, model))
	g, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, n := range g.Names() {
		if drop(n) {
			continue
		}
		info, _ := g.Info(n)
		if info.DType == safetensors.I64 {
			v, err := g.Int64(n)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, safetensors.I64Tensor(n, info.Shape, v))
		} else {
			v, err := g.Float32(n)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, safetensors.F32Tensor(n, info.Shape, v))
		}
	}
	g.Close()
	if err := safetensors.Write(filepath.Join(dir, "golden.safetensors"), ts, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestVerifyFailsOnAnIncompleteReference: a golden file without its
// gradients, or without one of them, or a golden.json without the AdamW
// trajectory, fails verify with a line that says what is missing, and the
// verdict names it.
func TestVerifyFailsOnAnIncompleteReference(t *testing.T) {
	noAdamW := copyDir(t, filepath.Join(goldenRoot, "olmoe"))
	js := filepath.Join(noAdamW, "golden.json")
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var gj map[string]any
	if err := json.Unmarshal(b, &gj); err != nil {
		t.Fatal(err)
	}
	delete(gj, "adamw")
	if b, err = json.Marshal(gj); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(js, b, 0o644); err != nil {
		t.Fatal(err)
	}
	const oneGrad = "grad.model.layers.1.mlp.experts.5.up_proj.weight"
	for _, tc := range []struct {
		name, dir, line, reason string
	}{
		{"no gradients", stripGolden(t, "deepseek_v2_lite", func(n string) bool { return strings.HasPrefix(n, "grad.") }),
			"grad.*", "the golden file has no grad.* tensors"},
		{"one gradient missing", stripGolden(t, "qwen3_moe", func(n string) bool { return n == oneGrad }),
			oneGrad, "missing from the golden file"},
		{"no AdamW trajectory", noAdamW, "adamw_losses", "golden.json has no adamw entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI("verify", "--model", tc.dir)
			last := lastLine(out)
			if code == 0 || !strings.HasPrefix(last, "verify: FAIL (") || !strings.Contains(last, tc.line) {
				t.Fatalf("exit %d, last line %q\n%s%s", code, last, out, errOut)
			}
			found := false
			for _, line := range strings.Split(out, "\n") {
				found = found || strings.HasPrefix(line, tc.line+" ") && strings.Contains(line, "FAIL") && strings.Contains(line, tc.reason)
			}
			if !found {
				t.Errorf("no FAIL line %q saying %q:\n%s", tc.line, tc.reason, out)
			}
		})
	}
}

// syncBuffer is stdout and stderr in one stream, as a terminal or a
// pipeline with 2>&1 sees them.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// TestVerifyLastLineIsTheVerdict: in every mode (plain, --dump, --all-grads,
// --tokenizer, --workers, passing or failing) the last line of stdout and
// stderr together is the verdict; with --workers the rows each worker
// computed come before it. The --workers cases start worker processes
// (about a second each), so -short leaves them out.
func TestVerifyLastLineIsTheVerdict(t *testing.T) {
	t.Setenv("SWITCHYARD_CLI_MAIN", "1") // inherited by the worker processes
	noGrads := stripGolden(t, "qwen2_moe", func(n string) bool { return strings.HasPrefix(n, "grad.") })
	qwen := filepath.Join(goldenRoot, "qwen2_moe")
	for _, tc := range []struct {
		name    string
		args    []string
		pass    bool
		workers bool
	}{
		{"model", []string{"--model", qwen}, true, false},
		{"dump and all grads", []string{"--model", qwen, "--dump", filepath.Join(t.TempDir(), "d.safetensors"), "--all-grads"}, true, false},
		{"tokenizer", []string{"--tokenizer", filepath.Join(goldenRoot, "tokenizer_bpe_qwen2")}, true, false},
		{"no grads", []string{"--model", noGrads}, false, false},
		{"workers", []string{"--model", qwen, "--workers", "2"}, true, true},
		{"workers no grads", []string{"--model", noGrads, "--workers", "2"}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.workers && testing.Short() {
				t.Skip("starts worker processes")
			}
			var all syncBuffer
			code := run(append([]string{"verify"}, tc.args...), &all, &all)
			out := all.b.String()
			want := "verify: PASS ("
			if !tc.pass {
				want = "verify: FAIL ("
			}
			if last := lastLine(out); !strings.HasPrefix(last, want) || (code == 0) != tc.pass {
				t.Fatalf("exit %d, last line %q, want %q...:\n%s", code, last, want, out)
			}
			if tc.workers && !strings.Contains(out, "verify: expert rows computed by each worker: w1=") {
				t.Errorf("no per-worker rows before the verdict:\n%s", out)
			}
		})
	}
}
