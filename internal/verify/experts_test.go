package verify

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
)

// TestExpertsHook: with ModelOptions.Experts the report compares the
// forward quantities with the in-process run ("vs 1 worker" lines) and
// marks the training lines as computed in-process. The hook here serves
// the experts from a second in-process store, so everything matches.
func TestExpertsHook(t *testing.T) {
	released := false
	rep, err := Model(context.Background(), ModelOptions{
		Dir:     filepath.Join("..", "..", "testdata", "golden", "qwen2_moe"),
		Workers: 3,
		Experts: func(_ context.Context, ck *model.Checkpoint, m *model.Model) (expert.Executor, func(), error) {
			if _, ok := m.Experts.(*expert.Store); !ok || len(m.Experts.(*expert.Store).IDs()) != 0 {
				t.Errorf("the model handed to the hook already holds experts")
			}
			full, err := ck.Load(model.LoadOptions{KeepBF16: true})
			if err != nil {
				return nil, nil, err
			}
			return full.Experts, func() { released = true }, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Log("\n" + out.String())
	if !rep.Passed() || !released {
		t.Fatalf("passed %v, released %v", rep.Passed(), released)
	}
	for _, q := range []string{"logits vs 1 worker", "hidden_states vs 1 worker", "generated_ids vs 1 worker", "loss vs 1 worker", "aux_loss vs 1 worker", "on 3 worker processes"} {
		if !strings.Contains(out.String(), q) {
			t.Errorf("report lacks %q", q)
		}
	}
	for _, c := range rep.Checks {
		if (strings.HasPrefix(c.Name, "grad.") || c.Name == "adamw_losses") != strings.Contains(c.Note, "computed in-process") {
			t.Errorf("%s: note %q", c.Name, c.Note)
		}
	}
}
