package train

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/safetensors"
)

// A checkpoint is a directory in Hugging Face's sharded layout that verify,
// generate and transformers load as a model, plus the training state
// needed to resume exactly:
//
//	config.json                    the model config (transformers' format)
//	model.safetensors.index.json   weight_map: tensor name -> file
//	model-dense.safetensors        every weight except routed experts, float32
//	model-L003-E017.safetensors    one file per routed expert (layer 3, expert 17)
//	tokenizer.json                 the tokenizer (+ tokenizer_config.json)
//	optimizer-dense.safetensors    AdamW state of the dense weights
//	optimizer-L003-E017.safetensors  AdamW state of one expert
//	trainer_state.json             step, data order, losses, settings (written last)
//
// One file per logical expert means a checkpoint does not depend on how
// many workers wrote it: any worker count can resume it, each worker
// reading only the experts it owns. The checkpoint is assembled in
// <dir>.tmp (every file fsynced), then put in <dir>'s place (replaceDir,
// swap.go), so a crash never leaves a partial checkpoint under its name
// nor a moment without a complete one.
// Optimizer files hold exp_avg.<name>, exp_avg_sq.<name> (float32, the
// parameter's shape) and step.<name> (int64 scalar).

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
	Workers     int         `json:"workers"` // ranks that trained the last stretch
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

// File names inside a checkpoint.
const (
	denseFile      = "model-dense.safetensors"
	denseOptimFile = "optimizer-dense.safetensors"
)

// ExpertFile is the weights file of one routed expert.
func ExpertFile(id expert.ID) string {
	return fmt.Sprintf("model-L%03d-E%03d.safetensors", id.Layer, id.Expert)
}

// ExpertOptimFile is the optimizer-state file of one routed expert.
func ExpertOptimFile(id expert.ID) string {
	return fmt.Sprintf("optimizer-L%03d-E%03d.safetensors", id.Layer, id.Expert)
}

// WriteCheckpoint writes a single process's whole checkpoint atomically.
func WriteCheckpoint(dir string, ck *Checkpoint) error {
	tmp, err := BeginCheckpoint(dir)
	if err != nil {
		return err
	}
	if err := WriteDense(tmp, ck); err != nil {
		return err
	}
	if err := WriteExperts(tmp, ck.Stepper, nil); err != nil {
		return err
	}
	return FinishCheckpoint(tmp, dir, ck.Stepper.Model.Cfg, ck.State)
}

// BeginCheckpoint creates the empty temporary directory of dir's checkpoint
// and returns its path.
func BeginCheckpoint(dir string) (string, error) {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("train: checkpoint: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("train: checkpoint: %w", err)
	}
	return tmp, nil
}

// optimTensors returns the optimizer-state tensors of the named parameters
// that have state.
func optimTensors(opt *optim.AdamW, names []string, shapes map[string][]int) []safetensors.Tensor {
	states := opt.States()
	var ts []safetensors.Tensor
	for _, name := range names {
		st := states[name]
		if st == nil {
			continue
		}
		ts = append(ts,
			safetensors.F32Tensor("exp_avg."+name, shapes[name], st.M),
			safetensors.F32Tensor("exp_avg_sq."+name, shapes[name], st.V),
			safetensors.I64Tensor("step."+name, nil, []int64{int64(st.Step)}))
	}
	return ts
}

// WriteDense writes the dense weights, their optimizer state, config and
// tokenizer files into a checkpoint's temporary directory (rank 0's part).
func WriteDense(tmp string, ck *Checkpoint) error {
	s := ck.Stepper
	var ts []safetensors.Tensor
	var names []string
	shapes := map[string][]int{}
	for _, r := range s.dense {
		ts = append(ts, safetensors.F32Tensor(r.Name, r.Shape, *r.Data))
		names = append(names, r.Name)
		shapes[r.Name] = r.Shape
	}
	if err := safetensors.Write(filepath.Join(tmp, denseFile), ts, map[string]string{"format": "pt"}); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	if err := safetensors.Write(filepath.Join(tmp, denseOptimFile), optimTensors(s.Opt, names, shapes), nil); err != nil {
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
	return nil
}

// WriteExperts writes one weights file and one optimizer file per expert
// of the stepper's store into a checkpoint's temporary directory (every
// rank writes the experts it owns). only, if set, selects the experts to
// write (a replicated expert is written by one holder).
func WriteExperts(tmp string, s *Stepper, only func(expert.ID) bool) error {
	c := s.Model.Cfg
	ids := s.Store.IDs()
	sortIDs(ids)
	for _, id := range ids {
		if only != nil && !only(id) {
			continue
		}
		f := s.Store.Get(id)
		if f == nil {
			continue
		}
		var ts []safetensors.Tensor
		var names []string
		shapes := map[string][]int{}
		for _, spec := range c.ExpertTensors(id) {
			ts = append(ts, safetensors.F32Tensor(spec.Name, spec.Shape, spec.InFFN(f).F32))
			names = append(names, spec.Name)
			shapes[spec.Name] = spec.Shape
		}
		if err := safetensors.Write(filepath.Join(tmp, ExpertFile(id)), ts, map[string]string{"format": "pt"}); err != nil {
			return fmt.Errorf("train: checkpoint: %w", err)
		}
		if err := safetensors.Write(filepath.Join(tmp, ExpertOptimFile(id)), optimTensors(s.Opt, names, shapes), nil); err != nil {
			return fmt.Errorf("train: checkpoint: %w", err)
		}
	}
	return nil
}

// FinishCheckpoint completes a checkpoint once every part is written: it
// checks that every tensor cfg needs is present, writes the index, the
// trainer state and the checksums, and puts tmp in dir's place so that a
// complete checkpoint, the old or the new, is found at every instant
// (replaceDir).
func FinishCheckpoint(tmp, dir string, cfg *model.Config, state TrainerState) error {
	return finishCheckpoint(tmp, dir, cfg, state, swapHooks{})
}

func finishCheckpoint(tmp, dir string, cfg *model.Config, state TrainerState, hooks swapHooks) error {
	weightMap := map[string]string{}
	var total int64
	for _, spec := range cfg.Tensors() {
		file := denseFile
		if spec.Role == model.RoleExpert {
			file = ExpertFile(spec.Expert)
		}
		if _, err := os.Stat(filepath.Join(tmp, file)); err != nil {
			return fmt.Errorf("train: checkpoint: %s is missing (tensor %s): %w", file, spec.Name, err)
		}
		weightMap[spec.Name] = file
		total += spec.Elems() * 4
	}
	idx, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, safetensors.IndexFile), idx); err != nil {
		return err
	}
	st, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, "trainer_state.json"), st); err != nil {
		return err
	}
	// Checksums of every file, written last: a checkpoint whose files do not
	// match them is refused wherever it is loaded (VerifyCheckpoint).
	sums, err := checksumDir(tmp)
	if err != nil {
		return fmt.Errorf("train: checkpoint: checksums of %s: %w", tmp, err)
	}
	sb, _ := json.MarshalIndent(sums, "", "  ")
	if err := writeFileSync(filepath.Join(tmp, ChecksumFile), sb); err != nil {
		return err
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	return replaceDir(tmp, dir, hooks)
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
	if err := f.Close(); err != nil {
		return fmt.Errorf("train: checkpoint: %s: %w", path, err)
	}
	return nil
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

// RemoveStaleCheckpointTemps removes the unfinished checkpoints a crash
// left in out: directories named checkpoint-<digits>.tmp (BeginCheckpoint's
// temporary directories; nothing else is touched, not even other *.tmp
// names). It returns the paths it removed; a missing out is no error. Call
// it when a run starts, before any rank of it begins a checkpoint: a .tmp
// is never the only copy of a complete checkpoint (replaceDir), so
// removing one loses nothing a resume could use.
func RemoveStaleCheckpointTemps(out string) ([]string, error) {
	ents, err := os.ReadDir(out)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("train: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !isCheckpointTemp(e.Name()) {
			continue
		}
		path := filepath.Join(out, e.Name())
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, fmt.Errorf("train: remove unfinished checkpoint: %w", err))
			continue
		}
		removed = append(removed, path)
	}
	return removed, errors.Join(errs...)
}

// isCheckpointTemp reports whether name is checkpoint-<digits>.tmp.
func isCheckpointTemp(name string) bool {
	rest, ok := strings.CutPrefix(name, checkpointPrefix)
	if !ok {
		return false
	}
	digits, ok := strings.CutSuffix(rest, ".tmp")
	if !ok || digits == "" {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// LatestCheckpoint returns the complete checkpoint with the most steps in
// out ("" if none). Directories named .tmp are ignored; a checkpoint-N.old
// stands for checkpoint-N while a crash left it set aside with nothing
// under its own name (replaceDir).
func LatestCheckpoint(out string) (string, error) {
	ents, err := os.ReadDir(out)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", nil
		}
		return "", err
	}
	found := map[int]string{} // step -> directory name
	for _, e := range ents {
		n := e.Name()
		if !e.IsDir() || !strings.HasPrefix(n, checkpointPrefix) {
			continue
		}
		base, aside := strings.CutSuffix(n, ".old")
		if strings.Contains(base, ".") {
			continue
		}
		st, err := strconv.Atoi(strings.TrimPrefix(base, checkpointPrefix))
		if err != nil || st < 0 {
			continue
		}
		if _, err := os.Stat(filepath.Join(out, n, "trainer_state.json")); err != nil {
			continue
		}
		if _, have := found[st]; !have || !aside {
			found[st] = n // the name itself wins over its .old
		}
	}
	best := -1
	for st := range found {
		best = max(best, st)
	}
	if best < 0 {
		return "", nil
	}
	return filepath.Join(out, found[best]), nil
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

// LoadOptimizer restores AdamW state from a checkpoint: the dense state and
// that of the experts the store holds (an expert without a file starts
// fresh).
func LoadOptimizer(dir string, opt *optim.AdamW, store *expert.Store) error {
	files := []string{denseOptimFile}
	for _, id := range store.IDs() {
		files = append(files, ExpertOptimFile(id))
	}
	for _, file := range files {
		path := filepath.Join(dir, file)
		if _, err := os.Stat(path); err != nil {
			if file == denseOptimFile {
				return fmt.Errorf("train: %s: %w", dir, err)
			}
			continue
		}
		if err := loadOptimFile(path, opt); err != nil {
			return err
		}
	}
	return nil
}

func loadOptimFile(path string, opt *optim.AdamW) error {
	f, err := safetensors.Open(path)
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
			return fmt.Errorf("train: %s: optimizer step of %s: %v", path, name, err)
		}
		opt.SetState(name, &optim.State{Step: int(st[0]), M: m, V: v})
	}
	return nil
}

// LoadModel loads a checkpoint (or any HF folder) as a float32 model for
// training, with all of its experts in a local store; a checkpoint's
// checksums are verified first (VerifyCheckpoint).
func LoadModel(dir string) (*model.Model, *expert.Store, error) {
	if err := VerifyCheckpoint(dir); err != nil {
		return nil, nil, err
	}
	ck, err := model.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	defer ck.Close()
	return model.Load(ck.Config, ck.Source, model.LoadOptions{})
}

// WriteInit writes a prepared run's initial weights (step 0) as a model
// folder (a checkpoint without training state), e.g. for workers to serve
// while they train it.
func WriteInit(dir string, p *Prepared) error {
	m, store, err := p.Load(nil)
	if err != nil {
		return err
	}
	s, err := NewStepper(m, store, p.Cfg.Step)
	if err != nil {
		return err
	}
	tmp, err := BeginCheckpoint(dir)
	if err != nil {
		return err
	}
	ck := &Checkpoint{HFConfig: p.HFConfig, TokenizerJSON: p.TokJSON, TokenizerCfg: p.TokCfg, Stepper: s}
	if err := WriteDense(tmp, ck); err != nil {
		return err
	}
	if err := WriteExperts(tmp, s, nil); err != nil {
		return err
	}
	return FinishCheckpoint(tmp, dir, m.Cfg, *p.State)
}

// ChecksumFile maps every other file of a checkpoint to its SHA-256 (hex).
const ChecksumFile = "checksums.json"

// ErrCorruptCheckpoint is wrapped by VerifyCheckpoint's errors.
var ErrCorruptCheckpoint = errors.New("corrupt checkpoint")

func checksumDir(dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	for _, e := range ents {
		if e.IsDir() || e.Name() == ChecksumFile {
			continue
		}
		if !e.Type().IsRegular() {
			// A link or a device could lead anywhere, or never end.
			return nil, fmt.Errorf("%w: %s is not a regular file", ErrCorruptCheckpoint, e.Name())
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, err
		}
		sums[e.Name()] = hex.EncodeToString(h.Sum(nil))
	}
	return sums, nil
}

// VerifyCheckpoint checks every file of a Switchyard checkpoint against
// its checksums (ChecksumFile): a missing, extra, altered or non-regular
// file is an error naming it and wrapping ErrCorruptCheckpoint. A folder
// without ChecksumFile is not a Switchyard checkpoint (a Hugging Face
// model, say) and passes. Call it wherever a model folder is loaded,
// before reading its weights: training does (resume, --init-from,
// LoadModel), and so do generate and the job runner's golden task.
func VerifyCheckpoint(dir string) error { return verifyCheckpoint(dir, false) }

// verifyCheckpoint is VerifyCheckpoint; with requireSums a folder without
// checksums is an error too (a checkpoint to resume must be ours).
func verifyCheckpoint(dir string, requireSums bool) error {
	b, err := os.ReadFile(filepath.Join(dir, ChecksumFile))
	if errors.Is(err, os.ErrNotExist) && !requireSums {
		return nil
	}
	if err != nil {
		return fmt.Errorf("train: %s: %w: %v", dir, ErrCorruptCheckpoint, err)
	}
	var want map[string]string
	if err := json.Unmarshal(b, &want); err != nil {
		return fmt.Errorf("train: %s/%s: %w: %v", dir, ChecksumFile, ErrCorruptCheckpoint, err)
	}
	got, err := checksumDir(dir)
	if err != nil {
		return fmt.Errorf("train: %s: %w", dir, err)
	}
	var errs []error
	for name, sum := range want {
		switch g, ok := got[name]; {
		case !ok:
			errs = append(errs, fmt.Errorf("train: %s: %w: %s is missing", dir, ErrCorruptCheckpoint, name))
		case g != sum:
			errs = append(errs, fmt.Errorf("train: %s: %w: %s does not match its checksum", dir, ErrCorruptCheckpoint, name))
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			errs = append(errs, fmt.Errorf("train: %s: %w: unexpected file %s", dir, ErrCorruptCheckpoint, name))
		}
	}
	return errors.Join(errs...)
}
