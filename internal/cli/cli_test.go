package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/train"
)

// TestTrainProgressAndLossCurve runs a small training in this process with
// the CLI's Progress (a log writer, not a terminal: plain lines) and draws
// the loss curve at each checkpoint, as `switchyard train` does.
func TestTrainProgressAndLossCurve(t *testing.T) {
	out := t.TempDir()
	cfg := train.DefaultJobConfig()
	cfg.Out, cfg.Text, cfg.Preset = out, "../../testdata/text/opticks.txt", "dsv3-micro"
	cfg.Tokenizer = "../../testdata/golden/tokenizer_bpe_gpt2/tokenizer.json"
	cfg.Steps, cfg.SeqLen, cfg.Batch = 4, 24, 2
	cfg.EvalEvery, cfg.EvalMax, cfg.SaveEvery = 2, 4, 3
	cfg.Step.Schedule.Warmup, cfg.Step.Schedule.Total = 2, 4

	var log bytes.Buffer
	prog := NewProgress(&log, cfg.Steps, 0)
	var curves []string
	prog.OnCheckpoint = func(dir string) {
		png, err := WriteLossCurve(out, dir)
		if err != nil {
			t.Error(err)
		}
		curves = append(curves, png)
	}
	if _, err := train.Run(context.Background(), cfg, prog); err != nil {
		t.Fatal(err)
	}
	prog.Done()
	t.Logf("\n%s", log.String())
	for _, want := range []string{"M parameters", "train: step 1/4 loss", "train: step 2 held-out loss", "train: step 4/4 loss"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("progress lacks %q", want)
		}
	}
	png := filepath.Join(out, LossCurveFile)
	if len(curves) != 2 || curves[1] != png {
		t.Errorf("loss curves drawn %q, want 2 (checkpoints after steps 3 and 4) at %s", curves, png)
	}
	if st, err := os.Stat(png); err != nil || st.Size() < 1000 {
		t.Errorf("loss curve %s: %v", png, err)
	}
	if _, err := WriteLossCurve(out, filepath.Join(out, "no-such-checkpoint")); err == nil || !strings.Contains(err.Error(), "train: loss curve") {
		t.Errorf("curve of a missing checkpoint: %v", err)
	}
}
