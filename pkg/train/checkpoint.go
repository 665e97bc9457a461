package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/safetensors"
)

// A checkpoint is a directory in Hugging Face layout that verify, generate
// and transformers load as a model, plus the training state needed to
// resume exactly:
//
//	config.json            the model config (transformers' format)
//	model.safetensors      every weight, float32, hub tensor names
//	tokenizer.json         the tokenizer (+ tokenizer_config.json)
//	optimizer.safetensors  AdamW state: exp_avg.<name>, exp_avg_sq.<name>, step.<name>
//	trainer_state.json     step, data order seed, losses, settings (written last)
//
// It is written into <dir>.tmp, every file fsynced, then renamed to <dir>
// and the parent fsynced, so a crash never leaves a partial checkpoint under
// a checkpoint's name.

// TrainerState is trainer_state.json.
type TrainerState struct {
	Version     int         `json:"version"`
	Step        int         `json:"step"` // steps completed
	Seed        uint64      `json:"seed"`
	Fingerprint string      `json:"model_fingerprint"`
	TextSHA256  string      `json:"text_sha256"`
	SeqLen      int         `json:"seq_len"`
	Batch       int         `json:"batch"`
	HeldOut     float64     `json:"held_out"`
	Tokens      int64       `json:"tokens_seen"`
	Seconds     float64     `json:"train_seconds"`
	Config      StepConfig  `json:"step_config"`
	Losses      []float64   `json:"losses"` // training loss of every step
	Evals       []EvalPoint `json:"evals"`
}

// EvalPoint is one held-out evaluation.
type EvalPoint struct {
	Step int     `json:"step"`
	Loss float64 `json:"loss"`
}

// Checkpoint is what WriteCheckpoint saves.
type Checkpoint struct {
	HFConfig      []byte // config.json
	TokenizerJSON []byte // tokenizer.json (nil: none)
	TokenizerCfg  []byte // tokenizer_config.json (nil: none)
	Stepper       *Stepper
	State         TrainerState
}

const checkpointPrefix = "checkpoint-"

// CheckpointDir is the directory name of the checkpoint after step steps.
func CheckpointDir(out string, step int) string {
	return filepath.Join(out, fmt.Sprintf("%s%07d", checkpointPrefix, step))
}

// WriteCheckpoint writes ck to dir atomically.
func WriteCheckpoint(dir string, ck *Checkpoint) error {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	s := ck.Stepper
	m := s.Model
	// weights
	byName := map[string][]float32{}
	for _, r := range s.dense {
		byName[r.Name] = *r.Data
	}
	for _, p := range ExpertParams(m.Cfg.Family, s.Store) {
		byName[p.Name] = p.W
	}
	var ts []safetensors.Tensor
	for _, spec := range m.Cfg.Tensors() {
		v, ok := byName[spec.Name]
		if !ok {
			return fmt.Errorf("train: checkpoint: no weights for %s (is every expert in this process?)", spec.Name)
		}
		ts = append(ts, safetensors.F32Tensor(spec.Name, spec.Shape, v))
	}
	if err := safetensors.Write(filepath.Join(tmp, safetensors.ModelFile), ts, map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	// optimizer
	shapes := map[string][]int{}
	for _, spec := range m.Cfg.Tensors() {
		shapes[spec.Name] = spec.Shape
	}
	var os_ []safetensors.Tensor
	states := s.Opt.States()
	for _, name := range s.Opt.Names() {
		st := states[name]
		os_ = append(os_,
			safetensors.F32Tensor("exp_avg."+name, shapes[name], st.M),
			safetensors.F32Tensor("exp_avg_sq."+name, shapes[name], st.V),
			safetensors.I64Tensor("step."+name, nil, []int64{int64(st.Step)}))
	}
	if err := safetensors.Write(filepath.Join(tmp, "optimizer.safetensors"), os_, nil); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	files := map[string][]byte{"config.json": ck.HFConfig}
	if ck.TokenizerJSON != nil {
		files["tokenizer.json"] = ck.TokenizerJSON
	}
	if ck.TokenizerCfg != nil {
		files["tokenizer_config.json"] = ck.TokenizerCfg
	}
	for name, data := range files {
		if err := writeFileSync(filepath.Join(tmp, name), data); err != nil {
			return err
		}
	}
	state, err := json.MarshalIndent(ck.State, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, "trainer_state.json"), state); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	if _, err := os.Stat(dir); err == nil {
		old := dir + ".old"
		os.RemoveAll(old)
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("train: checkpoint: %w", err)
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	return syncDir(filepath.Dir(dir))
}

func writeFileSync(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("train: checkpoint: %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("train: checkpoint: %s: %w", path, err)
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("train: checkpoint: sync %s: %w", dir, err)
	}
	return nil
}

// LatestCheckpoint returns the complete checkpoint with the most steps in
// out ("" if none). Directories still named .tmp are ignored.
func LatestCheckpoint(out string) (string, error) {
	ents, err := os.ReadDir(out)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", err
	}
	var steps []int
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() || !strings.HasPrefix(n, checkpointPrefix) || strings.Contains(n, ".") {
			continue
		}
		st, err := strconv.Atoi(strings.TrimPrefix(n, checkpointPrefix))
		if err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(out, n, "trainer_state.json")); err == nil {
			steps = append(steps, st)
		}
	}
	if len(steps) == 0 {
		return "", nil
	}
	sort.Ints(steps)
	return CheckpointDir(out, steps[len(steps)-1]), nil
}

// ReadTrainerState reads dir/trainer_state.json.
func ReadTrainerState(dir string) (*TrainerState, error) {
	b, err := os.ReadFile(filepath.Join(dir, "trainer_state.json"))
	if err != nil {
		return nil, fmt.Errorf("train: %s is not a training checkpoint: %w", dir, err)
	}
	var st TrainerState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("train: %s/trainer_state.json: %w", dir, err)
	}
	return &st, nil
}

// LoadOptimizer restores AdamW state from dir/optimizer.safetensors.
func LoadOptimizer(dir string, opt *optim.AdamW) error {
	f, err := safetensors.Open(filepath.Join(dir, "optimizer.safetensors"))
	if err != nil {
		return fmt.Errorf("train: %w", err)
	}
	defer f.Close()
	for _, n := range f.Names() {
		if !strings.HasPrefix(n, "exp_avg.") {
			continue
		}
		name := strings.TrimPrefix(n, "exp_avg.")
		m, err := f.Float32(n)
		if err != nil {
			return fmt.Errorf("train: %w", err)
		}
		v, err := f.Float32("exp_avg_sq." + name)
		if err != nil {
			return fmt.Errorf("train: %w", err)
		}
		st, err := f.Int64("step." + name)
		if err != nil || len(st) != 1 {
			return fmt.Errorf("train: optimizer step of %s: %v", name, err)
		}
		opt.SetState(name, &optim.State{Step: int(st[0]), M: m, V: v})
	}
	return nil
}

// LoadModel loads a checkpoint (or any HF folder) as a float32 model for
// training, with all of its experts in a local store.
func LoadModel(dir string) (*model.Model, *expert.Store, error) {
	ck, err := model.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	defer ck.Close()
	return model.Load(ck.Config, ck.Source, model.LoadOptions{})
}
