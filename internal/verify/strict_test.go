package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

const goldenRoot = "../../testdata/golden"

// strippedGolden writes a copy of model's golden.safetensors without the
// tensors drop selects, and of its golden.json without the keys in
// dropKeys, into a temporary folder, and returns the safetensors path (the
// .json lies beside it, as verify expects).
func strippedGolden(t *testing.T, model string, drop func(name string) bool, dropKeys ...string) string {
	t.Helper()
	src := filepath.Join(goldenRoot, model)
	g, err := safetensors.Open(filepath.Join(src, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var ts []safetensors.Tensor
	for _, n := range g.Names() {
		if drop != nil && drop(n) {
			continue
		}
		info, err := g.Info(n)
		if err != nil {
			t.Fatal(err)
		}
		switch info.DType {
		case safetensors.I64:
			v, err := g.Int64(n)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, safetensors.I64Tensor(n, info.Shape, v))
		default:
			v, err := g.Float32(n)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, safetensors.F32Tensor(n, info.Shape, v))
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "golden.safetensors")
	if err := safetensors.Write(path, ts, nil); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(src, "golden.json"))
	if err != nil {
		t.Fatal(err)
	}
	var gj map[string]any
	if err := json.Unmarshal(raw, &gj); err != nil {
		t.Fatal(err)
	}
	for _, k := range dropKeys {
		if _, ok := gj[k]; !ok {
			t.Fatalf("%s/golden.json has no %q to drop", model, k)
		}
		delete(gj, k)
	}
	if raw, err = json.Marshal(gj); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "golden.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func find(r *Report, name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// TestMissingGoldenQuantities: every quantity verify requires, taken out of
// the golden files, turns the verdict into a FAIL with a line naming the
// quantity and saying it is missing; nothing missing ever passes silently.
func TestMissingGoldenQuantities(t *testing.T) {
	for _, tc := range []struct {
		name     string
		model    string
		drop     func(string) bool
		dropKeys []string
		allGrads bool
		line     string // the failed line
		reason   string // in its note
	}{
		{name: "no grad tensors", model: "qwen2_moe", drop: func(n string) bool { return strings.HasPrefix(n, "grad.") },
			line: "grad.*", reason: "no grad.* tensors"},
		{name: "one grad missing", model: "qwen2_moe", drop: func(n string) bool { return n == "grad.model.norm.weight" },
			line: "grad.model.norm.weight", reason: "missing from the golden file"},
		{name: "one expert grad missing, all grads", model: "deepseek_v3_bf16", allGrads: true,
			drop: func(n string) bool { return n == "grad.model.layers.1.mlp.experts.3.down_proj.weight" },
			line: "grad.model.layers.1.mlp.experts.3.down_proj.weight", reason: "missing from the golden file"},
		{name: "no logits", model: "mixtral", drop: func(n string) bool { return n == "logits" },
			line: "logits", reason: "missing from the golden file"},
		{name: "no hidden states", model: "olmoe", drop: func(n string) bool { return n == "hidden_states" },
			line: "hidden_states", reason: "missing from the golden file"},
		{name: "no generated ids", model: "qwen3_moe", drop: func(n string) bool { return n == "generated_ids" },
			line: "generated_ids", reason: "missing from the golden file"},
		{name: "no prompt ids", model: "qwen3_moe", drop: func(n string) bool { return n == "prompt_ids" },
			line: "generated_ids", reason: "missing from the golden file"},
		{name: "no loss", model: "deepseek_v2_lite", dropKeys: []string{"loss"},
			line: "loss", reason: "no loss"},
		{name: "no adamw", model: "qwen2_moe", dropKeys: []string{"adamw"},
			line: "adamw_losses", reason: "no adamw entry"},
		{name: "no aux where the family has one", model: "mixtral", dropKeys: []string{"aux"},
			line: "aux_loss", reason: "mixtral has a load-balancing loss"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden := strippedGolden(t, tc.model, tc.drop, tc.dropKeys...)
			rep, err := Model(context.Background(), ModelOptions{
				Dir: filepath.Join(goldenRoot, tc.model), Golden: golden, AllGrads: tc.allGrads,
				Dump: filepath.Join(t.TempDir(), "dump.safetensors"),
			})
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			rep.Print(&out)
			if rep.Passed() {
				t.Fatalf("passed without %s:\n%s", tc.line, out.String())
			}
			c, ok := find(rep, tc.line)
			if !ok || c.Status != Fail || !strings.Contains(c.Note, tc.reason) {
				t.Errorf("want a FAIL line %q saying %q, got %+v:\n%s", tc.line, tc.reason, c, out.String())
			}
			last := lastLine(out.String())
			if !strings.HasPrefix(last, "verify: FAIL (") || !strings.Contains(last, tc.line) {
				t.Errorf("last line %q is not a FAIL verdict naming %s", last, tc.line)
			}
		})
	}
}

// TestAuxSkippedWhereTheFamilyHasNone: DeepSeek has no Switch-style
// load-balancing loss in transformers (golden aux is null): aux_loss and
// loss_with_aux are skipped lines with the reason, and the verdict rests
// on the required quantities alone.
func TestAuxSkippedWhereTheFamilyHasNone(t *testing.T) {
	rep, err := Model(context.Background(), ModelOptions{Dir: filepath.Join(goldenRoot, "deepseek_v3_bf16")})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Print(&out)
	for _, q := range []string{"aux_loss", "loss_with_aux"} {
		if c, ok := find(rep, q); !ok || c.Status != Skipped || !strings.Contains(c.Note, "deepseek_v3 has no load-balancing loss") {
			t.Errorf("%s: %+v", q, c)
		}
	}
	if !rep.Passed() || lastLine(out.String()) != "verify: PASS (9 ok, 0 FAIL, 2 skipped)" {
		t.Errorf("verdict:\n%s", out.String())
	}
}

// TestVerdict: skipped checks never make a PASS by themselves; the last
// line is the verdict and a FAIL names what failed.
func TestVerdict(t *testing.T) {
	var r Report
	r.Skip("aux_loss", "not this family")
	if r.Passed() || !strings.HasPrefix(r.Verdict(), "verify: FAIL (0 ok, 0 FAIL, 1 skipped): nothing was checked") {
		t.Errorf("only skipped: passed %v, %q", r.Passed(), r.Verdict())
	}
	r.Add("loss", "abs", 1e-6, 1e-4, "")
	if !r.Passed() || r.Verdict() != "verify: PASS (1 ok, 0 FAIL, 1 skipped)" {
		t.Errorf("one ok: %q", r.Verdict())
	}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		r.Failf(n, "broken")
	}
	if got := r.Verdict(); got != "verify: FAIL (1 ok, 5 FAIL, 1 skipped): a, b, c and 2 more" {
		t.Errorf("five failed: %q", got)
	}
	var out bytes.Buffer
	r.Print(&out)
	if lastLine(out.String()) != r.Verdict() {
		t.Errorf("Print's last line is not the verdict:\n%s", out.String())
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}
