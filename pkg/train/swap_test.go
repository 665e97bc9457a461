package train

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// versions writes complete checkpoints of one small model, each marked by
// its trainer state's Seconds.
type versions struct {
	t  *testing.T
	ck *Checkpoint
}

func newVersions(t *testing.T) *versions {
	t.Helper()
	p, err := Prepare(smallJob(t, t.TempDir(), 2), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, store, err := p.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStepper(m, store, p.Cfg.Step)
	if err != nil {
		t.Fatal(err)
	}
	return &versions{t: t, ck: &Checkpoint{HFConfig: p.HFConfig, TokenizerJSON: p.TokJSON, TokenizerCfg: p.TokCfg, Stepper: s, State: *p.State}}
}

// write writes version v of dir, replacing whatever is there with hooks.
func (vs *versions) write(dir string, v int, hooks swapHooks) error {
	vs.t.Helper()
	tmp, err := BeginCheckpoint(dir)
	if err != nil {
		vs.t.Fatal(err)
	}
	if err := WriteDense(tmp, vs.ck); err != nil {
		vs.t.Fatal(err)
	}
	if err := WriteExperts(tmp, vs.ck.Stepper, nil); err != nil {
		vs.t.Fatal(err)
	}
	st := vs.ck.State
	st.Step, st.Seconds = 7, float64(v)
	return finishCheckpoint(tmp, dir, vs.ck.Stepper.Model.Cfg, st, hooks)
}

// loadable checks what a resuming run would find in out: a complete
// checkpoint that verifies, loads, and is version one of want.
func loadable(t *testing.T, out string, want ...int) {
	t.Helper()
	dir, err := LatestCheckpoint(out)
	if err != nil || dir == "" {
		t.Fatalf("no checkpoint found in %s (%v): %v", out, err, ls(out))
	}
	if err := verifyCheckpoint(dir, true); err != nil {
		t.Fatalf("%s does not verify: %v", dir, err)
	}
	if _, _, err := LoadModel(dir); err != nil {
		t.Fatalf("%s does not load: %v", dir, err)
	}
	st, err := ReadTrainerState(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range want {
		if st.Seconds == float64(v) {
			return
		}
	}
	t.Fatalf("%s holds version %g, want one of %v", dir, st.Seconds, want)
}

func ls(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

var errCrash = errors.New("simulated crash")

// TestReplaceCheckpointSurvivesACrashAtEveryStep replaces a checkpoint
// (version 1 by version 2), both with the atomic exchange and with the
// portable rename-aside path, and stops at each step as a crash would. At
// every step, before and after the crash, a complete checkpoint (1 or 2)
// loads; a later save (version 3) then succeeds and leaves nothing behind.
func TestReplaceCheckpointSurvivesACrashAtEveryStep(t *testing.T) {
	vs := newVersions(t)
	paths := map[string][]string{
		"exchange":     {stepSealed, stepExchanged, stepRemoved},
		"rename-aside": {stepSealed, stepSetAside, stepRenamed, stepRemoved},
	}
	if exchangeDirs(t.TempDir(), t.TempDir()) != nil {
		t.Log("no atomic exchange here: the exchange path falls back to rename-aside")
		paths["exchange"] = paths["rename-aside"]
	}
	for name, steps := range paths {
		for _, crashAt := range append([]string{"none"}, steps...) {
			t.Run(name+"/crash after "+crashAt, func(t *testing.T) {
				out := t.TempDir()
				dir := CheckpointDir(out, 7)
				if err := vs.write(dir, 1, swapHooks{}); err != nil {
					t.Fatal(err)
				}
				loadable(t, out, 1)
				var seen []string
				err := vs.write(dir, 2, swapHooks{noExchange: name == "rename-aside", after: func(step string) error {
					seen = append(seen, step)
					loadable(t, out, 1, 2) // at every instant between steps
					if step == crashAt {
						return errCrash
					}
					return nil
				}})
				if fmt.Sprint(seen) != fmt.Sprint(steps[:len(seen)]) {
					t.Fatalf("steps %v, want a prefix of %v", seen, steps)
				}
				if crashAt == "none" {
					if err != nil || len(seen) != len(steps) {
						t.Fatalf("replace: %v after %v", err, seen)
					}
					loadable(t, out, 2)
				} else if !errors.Is(err, errCrash) {
					t.Fatalf("replace: %v, want the simulated crash", err)
				}
				loadable(t, out, 1, 2) // after the crash, as a restarted run sees it

				// The restarted run saves again: version 3 replaces whatever
				// is there, and no .tmp or .old is left.
				if err := vs.write(dir, 3, swapHooks{}); err != nil {
					t.Fatalf("the save after the crash: %v (%v)", err, ls(out))
				}
				loadable(t, out, 3)
				if names := ls(out); len(names) != 1 || names[0] != filepath.Base(dir) {
					t.Errorf("left in %s: %v", out, names)
				}
			})
		}
	}
}

// A crash while the new checkpoint is being written leaves a partial
// <dir>.tmp beside the old checkpoint, which still loads; the next save
// replaces both.
func TestCrashWhileWritingACheckpoint(t *testing.T) {
	vs := newVersions(t)
	out := t.TempDir()
	dir := CheckpointDir(out, 7)
	if err := vs.write(dir, 1, swapHooks{}); err != nil {
		t.Fatal(err)
	}
	tmp, err := BeginCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteDense(tmp, vs.ck); err != nil { // the experts never come
		t.Fatal(err)
	}
	loadable(t, out, 1)
	if err := vs.write(dir, 2, swapHooks{}); err != nil {
		t.Fatal(err)
	}
	loadable(t, out, 2)
	if names := ls(out); len(names) != 1 {
		t.Errorf("left in %s: %v", out, names)
	}
}

// A checkpoint set aside by a crash is found under its .old name only
// while nothing is under its own name, and an older checkpoint never wins
// over it.
func TestLatestCheckpointFindsASetAsideCheckpoint(t *testing.T) {
	out := t.TempDir()
	mk := func(name string, complete bool) {
		d := filepath.Join(out, name)
		os.MkdirAll(d, 0o755)
		if complete {
			os.WriteFile(filepath.Join(d, "trainer_state.json"), []byte("{}"), 0o644)
		}
	}
	mk("checkpoint-0000003", true)
	mk("checkpoint-0000006.old", true)
	mk("checkpoint-0000009.tmp", true) // never complete by name
	mk("checkpoint-0000012", false)    // no trainer state
	if got, _ := LatestCheckpoint(out); filepath.Base(got) != "checkpoint-0000006.old" {
		t.Fatalf("latest = %s", got)
	}
	mk("checkpoint-0000006", true)
	if got, _ := LatestCheckpoint(out); filepath.Base(got) != "checkpoint-0000006" {
		t.Fatalf("latest = %s", got)
	}
}

// VerifyCheckpoint passes a folder without checksums (not ours), refuses
// a corrupt one naming the file, and refuses a link where a file should be.
func TestVerifyCheckpoint(t *testing.T) {
	vs := newVersions(t)
	hf := t.TempDir()
	os.WriteFile(filepath.Join(hf, "config.json"), []byte("{}"), 0o644)
	if err := VerifyCheckpoint(hf); err != nil {
		t.Fatalf("a folder without checksums: %v", err)
	}
	if err := verifyCheckpoint(hf, true); !errors.Is(err, ErrCorruptCheckpoint) {
		t.Fatalf("resume of a folder without checksums: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "ck")
	if err := vs.write(dir, 1, swapHooks{}); err != nil {
		t.Fatal(err)
	}
	if err := VerifyCheckpoint(dir); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(dir, "config.json")
	os.WriteFile(victim, []byte(`{"hidden_size": 1}`), 0o644)
	err := VerifyCheckpoint(dir)
	if !errors.Is(err, ErrCorruptCheckpoint) || !strings.Contains(err.Error(), "config.json does not match") {
		t.Fatalf("altered config.json: %v", err)
	}
	os.Remove(victim)
	os.Symlink("/etc/hostname", victim)
	if err := VerifyCheckpoint(dir); !errors.Is(err, ErrCorruptCheckpoint) || !strings.Contains(err.Error(), "config.json is not a regular file") {
		t.Fatalf("linked config.json: %v", err)
	}
}
