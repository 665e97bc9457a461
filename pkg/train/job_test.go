package train

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/model"
)

const (
	bookPath = "../../testdata/text/opticks.txt"
	gpt2Tok  = "../../testdata/golden/tokenizer_bpe_gpt2/tokenizer.json"
)

// smallJob is a fast run of the micro preset on the book.
func smallJob(t *testing.T, out string, steps int) JobConfig {
	cfg := DefaultJobConfig()
	cfg.Out, cfg.Text, cfg.Preset, cfg.Tokenizer = out, bookPath, "dsv3-micro", gpt2Tok
	cfg.Steps, cfg.SeqLen, cfg.Batch = steps, 24, 2
	cfg.EvalEvery, cfg.EvalMax, cfg.SaveEvery = 2, 4, 3
	cfg.Step.Schedule.Warmup = 2
	cfg.Step.Schedule.Total = steps
	cfg.Step.BiasUpdateSpeed = 1e-3
	return cfg
}

// recorder is a Progress that keeps what it receives.
type recorder struct {
	lines  []string
	events []string
	last   string // the last checkpoint
}

func (r *recorder) Logf(format string, args ...any) {
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

func (r *recorder) Observe(ev Event) {
	switch {
	case ev.Checkpoint != "":
		r.events = append(r.events, fmt.Sprintf("ckpt%d", ev.Step))
		r.last = ev.Checkpoint
	case ev.EvalLoss != 0:
		r.events = append(r.events, fmt.Sprintf("eval%d", ev.Step))
	default:
		r.events = append(r.events, fmt.Sprintf("step%d", ev.Step))
	}
}

func TestResumeReproducesUninterruptedRun(t *testing.T) {
	ctx := context.Background()
	full, err := Run(ctx, smallJob(t, t.TempDir(), 6), nil)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if _, err := Run(ctx, smallJob(t, out, 3), nil); err != nil {
		t.Fatal(err)
	}
	cfg := smallJob(t, out, 6)
	cfg.Resume = true
	resumed, err := Run(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resumed.Losses) != 6 {
		t.Fatalf("resumed run has %d losses, want 6", len(resumed.Losses))
	}
	for i := range full.Losses {
		if full.Losses[i] != resumed.Losses[i] {
			t.Fatalf("step %d: uninterrupted loss %.9f, resumed %.9f", i+1, full.Losses[i], resumed.Losses[i])
		}
	}
	files, _ := filepath.Glob(filepath.Join(full.Checkpoint, "*.safetensors"))
	if len(files) < 4 {
		t.Fatalf("checkpoint has %d safetensors files", len(files))
	}
	for _, f := range files {
		a, _ := os.ReadFile(f)
		b, err := os.ReadFile(filepath.Join(resumed.Checkpoint, filepath.Base(f)))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s differs between the uninterrupted and the resumed run (%v)", filepath.Base(f), err)
		}
	}
	t.Logf("losses %.4f", full.Losses)
}

func TestCheckpointLoadsAsAModel(t *testing.T) {
	out := t.TempDir()
	var rec recorder
	res, err := Run(context.Background(), smallJob(t, out, 4), &rec)
	if err != nil {
		t.Fatal(err)
	}
	// Steps 1-4, evaluations after 2 and 4, checkpoints after 3 and 4.
	if got, want := strings.Join(rec.events, " "), "step1 step2 eval2 step3 ckpt3 step4 eval4 ckpt4"; got != want {
		t.Errorf("progress events %q, want %q", got, want)
	}
	if len(rec.lines) == 0 || !strings.Contains(rec.lines[len(rec.lines)-1], "M parameters") {
		t.Errorf("progress lines %q", rec.lines)
	}
	if rec.last != res.Checkpoint {
		t.Errorf("last checkpoint event %q, result %q", rec.last, res.Checkpoint)
	}
	for _, f := range []string{"config.json", "model.safetensors.index.json", "model-dense.safetensors", "model-L001-E000.safetensors", "tokenizer.json", "tokenizer_config.json", "optimizer-dense.safetensors", "optimizer-L001-E000.safetensors", "trainer_state.json"} {
		if _, err := os.Stat(filepath.Join(res.Checkpoint, f)); err != nil {
			t.Errorf("checkpoint lacks %s", f)
		}
	}
	ck, err := model.Open(res.Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	m, err := ck.Load(model.LoadOptions{KeepBF16: true})
	if err != nil {
		t.Fatal(err)
	}
	// The saved model computes the loss the trainer measured last.
	st, _ := ReadTrainerState(res.Checkpoint)
	if st.Step != 4 || len(st.Losses) != 4 {
		t.Fatalf("trainer state step %d with %d losses", st.Step, len(st.Losses))
	}
	if _, err := m.Generate(context.Background(), [][]int32{{1, 2, 3}}, model.GenerateConfig{MaxTokens: 4}, nil); err != nil {
		t.Fatal(err)
	}
	// No temporary directories are left behind.
	ents, _ := os.ReadDir(out)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") || strings.Contains(e.Name(), ".old") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

func TestBadTrainingInputs(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.txt")
	os.WriteFile(empty, nil, 0o644)
	latin1 := filepath.Join(dir, "latin1.txt")
	os.WriteFile(latin1, []byte("caf\xe9 au lait"), 0o644)
	ctx := context.Background()

	cases := []struct {
		name    string
		edit    func(c *JobConfig)
		is      error
		mention string
	}{
		{"empty text", func(c *JobConfig) { c.Text = empty }, ErrBadText, "empty"},
		{"non-UTF-8 text", func(c *JobConfig) { c.Text = latin1 }, ErrBadText, "offset 3"},
		{"unknown preset", func(c *JobConfig) { c.Preset = "gpt5-moe" }, nil, `no preset "gpt5-moe"`},
		{"NaN learning rate", func(c *JobConfig) { c.Step.AdamW.LR = math.NaN() }, nil, "learning rate NaN"},
		{"NaN schedule", func(c *JobConfig) { c.Step.Schedule.Peak = math.NaN() }, nil, "NaN"},
		{"negative clip", func(c *JobConfig) { c.Step.MaxGradNorm = -1 }, nil, "max grad norm"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := smallJob(t, t.TempDir(), 2)
			tc.edit(&cfg)
			_, err := Run(ctx, cfg, nil)
			if err == nil {
				t.Fatal("accepted")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v does not wrap %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}

	t.Run("corrupt checkpoint", func(t *testing.T) {
		out := t.TempDir()
		res, err := Run(ctx, smallJob(t, out, 3), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyCheckpoint(res.Checkpoint); err != nil {
			t.Fatalf("a fresh checkpoint does not verify: %v", err)
		}
		victim := filepath.Join(res.Checkpoint, "model-L001-E003.safetensors")
		b, _ := os.ReadFile(victim)
		b[len(b)-1] ^= 0x40 // one flipped bit in the weights
		os.WriteFile(victim, b, 0o644)
		cfg := smallJob(t, out, 6)
		cfg.Resume = true
		_, err = Run(ctx, cfg, nil)
		if !errors.Is(err, ErrCorruptCheckpoint) || !strings.Contains(err.Error(), "model-L001-E003.safetensors") {
			t.Fatalf("resume from a corrupt checkpoint: err = %v", err)
		}
	})

	t.Run("checkpoint of a different model", func(t *testing.T) {
		out := t.TempDir()
		if _, err := Run(ctx, smallJob(t, out, 3), nil); err != nil {
			t.Fatal(err)
		}
		cfg := smallJob(t, out, 6)
		cfg.Resume, cfg.Preset = true, "mixtral-tiny"
		_, err := Run(ctx, cfg, nil)
		if err == nil || !strings.Contains(err.Error(), "different model") {
			t.Fatalf("err = %v, want a different-model error", err)
		}
	})
}
