package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/router"
	"github.com/switchyard/switchyard/pkg/safetensors"
	"github.com/switchyard/switchyard/pkg/train"
)

// Tolerances a correct float32 implementation meets (../shared/golden/README.md).
const (
	TolLogits = 1e-4 // relative L2, logits and hidden states
	TolGrad   = 1e-3 // relative L2, per gradient tensor
	TolLoss   = 1e-4 // absolute, loss / aux loss / AdamW losses
	// TolSame bounds the relative difference between a run with remote
	// experts (ModelOptions.Experts) and the in-process run of the same
	// checkpoint: the same float32 arithmetic, possibly grouped
	// differently.
	TolSame = 1e-5
)

// What verify requires of a golden model (a required quantity missing from
// the golden files is a FAIL line naming it; the verdict is PASS only when
// every required quantity is present and ok):
//
//	golden.safetensors  input_ids, logits, hidden_states, prompt_ids,
//	                    generated_ids, and grad.<param> for every parameter
//	                    the model computes a gradient for
//	golden.json         loss; adamw (lr, betas, eps, weight_decay, steps,
//	                    steps+1 losses); aux for the families in
//	                    hasSwitchAux
//
// The one quantity that is optional by family is aux: DeepSeek-V2/V3 have
// no Switch-style load-balancing loss in transformers (golden aux is null),
// so there aux_loss and loss_with_aux are skipped lines with that reason; a
// skipped line never makes a PASS by itself.

// hasSwitchAux: families whose transformers model computes the Switch-style
// load-balancing loss (load_balancing_loss_func over the router logits);
// their golden.json must hold aux.
var hasSwitchAux = map[model.Family]bool{
	model.Mixtral: true, model.Qwen2MoE: true, model.Qwen3MoE: true, model.OLMoE: true,
}

// GoldenJSON is the part of golden.json that verify reads. A nil field is
// absent from the file (or null).
type GoldenJSON struct {
	Loss  *float64 `json:"loss"`
	AdamW *struct {
		LR          float64   `json:"lr"`
		Betas       []float64 `json:"betas"`
		Eps         float64   `json:"eps"`
		WeightDecay float64   `json:"weight_decay"`
		Steps       int       `json:"steps"`
		Losses      []float64 `json:"losses_before_each_step_and_after"`
	} `json:"adamw"`
	Aux *struct {
		AuxLoss     float64 `json:"aux_loss"`
		LossWithAux float64 `json:"loss_with_aux"`
		Coef        float64 `json:"router_aux_loss_coef"`
	} `json:"aux"`
}

// ModelOptions configures a model check.
type ModelOptions struct {
	// Dir is the model folder (config.json, *.safetensors).
	Dir string
	// Golden is the golden safetensors file; "" means Dir/golden.safetensors.
	// The JSON half is the same path with a .json extension.
	Golden string
	// Dump, if set, receives everything computed as a safetensors file
	// under the golden's names.
	Dump string
	// Experts, if set, replaces the in-process expert store with another
	// executor (e.g. remote workers) for the loaded model. The returned
	// function releases it.
	Experts func(ctx context.Context, ck *model.Checkpoint, m *model.Model) (expert.Executor, func(), error)
	// Workers is the number of worker processes Experts spreads the
	// experts over (for the report's notes only).
	Workers int
	// AllGrads prints one line per gradient tensor instead of a summary
	// line plus a line per failing tensor.
	AllGrads bool
	// Train, if set, computes the training quantities elsewhere (e.g.
	// data- and expert-parallel on worker processes) instead of in this
	// process; TrainNote is added to their report lines.
	Train     func(ctx context.Context, ids [][]int32, gj GoldenJSON) (*TrainOut, error)
	TrainNote string
}

// Model runs every check of a golden model. The error is for failures to
// load inputs (missing files, bad weights); a wrong result is a FAIL line in
// the report, not an error. Every quantity is computed before any is
// judged, so a dump is complete even when checks fail.
func Model(ctx context.Context, opt ModelOptions) (*Report, error) {
	goldenPath := opt.Golden
	if goldenPath == "" {
		goldenPath = filepath.Join(opt.Dir, "golden.safetensors")
	}
	jsonPath := strings.TrimSuffix(goldenPath, filepath.Ext(goldenPath)) + ".json"
	var gj GoldenJSON
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if err := json.Unmarshal(raw, &gj); err != nil {
		return nil, fmt.Errorf("verify: %s: %w", jsonPath, err)
	}
	gf, err := safetensors.Open(goldenPath)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer gf.Close()

	if err := train.VerifyCheckpoint(opt.Dir); err != nil {
		return nil, err
	}
	ck, err := model.Open(opt.Dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	m, err := ck.Load(model.LoadOptions{KeepBF16: true, Experts: func(expert.ID) bool { return opt.Experts == nil }})
	if err != nil {
		return nil, err
	}
	if opt.Experts != nil {
		ex, release, err := opt.Experts(ctx, ck, m)
		if err != nil {
			return nil, err
		}
		defer release()
		m.Experts = ex
	}
	cfg := m.Cfg

	inputIDs, err := readIDs(gf, "input_ids")
	if err != nil {
		return nil, err
	}
	// prompt_ids and generated_ids are required, but without them the other
	// quantities can still be computed (and dumped): their absence is the
	// generated_ids FAIL line.
	promptIDs, wantGen, goldenGenErr := readGeneration(gf)
	// A malformed adamw entry is judged as a missing one: the gradients are
	// still computed, the AdamW trajectory is not.
	adamwErr := checkAdamW(gj)
	if adamwErr != nil {
		gj.AdamW = nil
	}

	// Compute everything first.
	seqs := make([]*model.Seq, len(inputIDs))
	for i := range seqs {
		seqs[i] = m.NewSeq()
	}
	out, err := m.Forward(ctx, seqs, inputIDs, model.Options{AllLogits: true, Hidden: true, Routing: true})
	if err != nil {
		return nil, fmt.Errorf("verify: forward: %w", err)
	}
	loss := model.CrossEntropy(out.Logits, inputIDs, cfg.Vocab)
	var moeRoutings []*router.Routing
	for _, r := range out.Routing {
		if r != nil {
			moeRoutings = append(moeRoutings, r)
		}
	}
	aux := router.LoadBalancingLoss(moeRoutings)
	var gen [][]int32
	genTokens := 0
	genErr := goldenGenErr
	if genErr == nil {
		genTokens = len(wantGen[0])
		gen, genErr = m.Generate(ctx, promptIDs, model.GenerateConfig{MaxTokens: genTokens}, nil)
	}
	var tq *TrainOut
	var trainErr error
	if opt.Train != nil {
		tq, trainErr = opt.Train(ctx, inputIDs, gj)
	} else {
		tq, trainErr = trainQuantities(ctx, ck, inputIDs, gj)
	}
	var ref *reference
	var refErr error
	if opt.Experts != nil {
		ref, refErr = inProcess(ctx, ck, inputIDs, promptIDs, genTokens)
	}

	if opt.Dump != "" {
		if err := dump(opt.Dump, inputIDs, out, gen, loss, aux, len(moeRoutings) > 0, cfg, tq); err != nil {
			return nil, err
		}
	}

	// Judge.
	r := &Report{}
	if wantLogits, err := gf.Float32("logits"); err != nil {
		r.Failf("logits", "%s", goldenMissing(err))
	} else {
		r.Add("logits", "rel_l2", RelL2(out.Logits, wantLogits), TolLogits, "")
	}
	if hs, err := gf.Float32("hidden_states"); err != nil {
		r.Failf("hidden_states", "%s", goldenMissing(err))
	} else if len(hs) != len(out.Hidden)*len(out.Hidden[0]) {
		r.Failf("hidden_states", "golden holds %d values, computed %d x %d", len(hs), len(out.Hidden), len(out.Hidden[0]))
	} else {
		per := len(out.Hidden[0])
		for l, h := range out.Hidden {
			r.Add(fmt.Sprintf("hidden_states[%d]", l), "rel_l2", RelL2(h, hs[l*per:(l+1)*per]), TolLogits, "")
		}
	}
	if genErr != nil {
		r.Failf("generated_ids", "%s", goldenMissing(genErr))
	} else {
		mis, total := 0, 0
		for b := range wantGen {
			for i := range wantGen[b] {
				total++
				if b >= len(gen) || i >= len(gen[b]) || gen[b][i] != wantGen[b][i] {
					mis++
				}
			}
		}
		r.Add("generated_ids", "mismatch", float64(mis), 0, fmt.Sprintf("%d tokens, greedy, KV cache", total))
	}
	if gj.Loss == nil {
		r.Failf("loss", "golden.json has no loss; required")
	} else {
		r.Add("loss", "abs", math.Abs(loss-*gj.Loss), TolLoss, "")
	}
	switch {
	case gj.Aux != nil:
		r.Add("aux_loss", "abs", math.Abs(aux-gj.Aux.AuxLoss), TolLoss, "")
		withAux := loss + float64(float32(gj.Aux.Coef))*aux
		r.Add("loss_with_aux", "abs", math.Abs(withAux-gj.Aux.LossWithAux), TolLoss, "")
	case hasSwitchAux[cfg.Family]:
		why := fmt.Sprintf("golden.json has no aux, required: %s has a load-balancing loss in transformers", cfg.Family)
		r.Failf("aux_loss", "%s", why)
		r.Failf("loss_with_aux", "%s", why)
	default:
		why := fmt.Sprintf("%s has no load-balancing loss in transformers; golden aux is null", cfg.Family)
		r.Skip("aux_loss", why)
		r.Skip("loss_with_aux", why)
	}
	if opt.Experts != nil {
		judgeSame(r, opt.Workers, ref, refErr, out, gen, genErr, loss, aux, len(moeRoutings) > 0)
	}
	switch {
	case opt.Train != nil && opt.TrainNote != "":
		defer noteTraining(r, opt.TrainNote) // on whatever training lines follow
	case opt.Experts != nil:
		defer noteTraining(r, "computed in-process")
	}
	if trainErr != nil {
		r.Failf("grad.*", "%v", trainErr)
		r.Failf("adamw_losses", "not computed: %v", trainErr)
		return r, nil
	}
	judgeGrads(r, gf, tq.Grads, opt.AllGrads)
	switch {
	case adamwErr != nil:
		r.Failf("adamw_losses", "%v", adamwErr)
	case len(tq.AdamW) != len(gj.AdamW.Losses):
		r.Failf("adamw_losses", "computed %d losses, golden has %d", len(tq.AdamW), len(gj.AdamW.Losses))
	default:
		want := gj.AdamW.Losses
		worst, at := 0.0, 0
		for i := range want {
			if d := math.Abs(tq.AdamW[i] - want[i]); d > worst || math.IsNaN(d) {
				worst, at = d, i
			}
		}
		r.Add("adamw_losses", "abs", worst, TolLoss, fmt.Sprintf("%d steps, worst at loss %d: %.6f vs %.6f", gj.AdamW.Steps, at, tq.AdamW[at], want[at]))
	}
	return r, nil
}

// readGeneration reads the greedy-generation reference: prompt_ids [B, P]
// and generated_ids [B, N] with the same B.
func readGeneration(gf *safetensors.File) (prompt, gen [][]int32, err error) {
	if prompt, err = readIDs(gf, "prompt_ids"); err != nil {
		return nil, nil, err
	}
	if gen, err = readIDs(gf, "generated_ids"); err != nil {
		return nil, nil, err
	}
	if len(prompt) != len(gen) {
		return nil, nil, fmt.Errorf("verify: golden prompt_ids has %d rows, generated_ids %d", len(prompt), len(gen))
	}
	return prompt, gen, nil
}

// checkAdamW says what is missing from or wrong with golden.json's adamw
// entry (nil when it describes a trajectory verify can recompute).
func checkAdamW(gj GoldenJSON) error {
	a := gj.AdamW
	switch {
	case a == nil:
		return errors.New("golden.json has no adamw entry; required")
	case len(a.Betas) != 2 || a.Steps <= 0:
		return fmt.Errorf("golden.json adamw has betas %v and %d steps", a.Betas, a.Steps)
	case len(a.Losses) != a.Steps+1:
		return fmt.Errorf("golden.json adamw has %d losses for %d steps, want %d", len(a.Losses), a.Steps, a.Steps+1)
	}
	return nil
}

// goldenMissing turns a golden tensor that is not there into a reason that
// says so; other errors are returned as they are.
func goldenMissing(err error) string {
	if errors.Is(err, safetensors.ErrNotFound) {
		return fmt.Sprintf("missing from the golden file; required (%v)", err)
	}
	return err.Error()
}

// reference is the in-process run a run with remote experts is compared
// with.
type reference struct {
	out       *model.Output
	gen       [][]int32
	loss, aux float64
}

// inProcess recomputes the forward quantities with every expert loaded in
// this process (the single-process run); no generation when genTokens is 0.
func inProcess(ctx context.Context, ck *model.Checkpoint, ids, prompt [][]int32, genTokens int) (*reference, error) {
	m, err := ck.Load(model.LoadOptions{KeepBF16: true})
	if err != nil {
		return nil, err
	}
	seqs := make([]*model.Seq, len(ids))
	for i := range seqs {
		seqs[i] = m.NewSeq()
	}
	out, err := m.Forward(ctx, seqs, ids, model.Options{AllLogits: true, Hidden: true, Routing: true})
	if err != nil {
		return nil, fmt.Errorf("verify: in-process forward: %w", err)
	}
	var rs []*router.Routing
	for _, r := range out.Routing {
		if r != nil {
			rs = append(rs, r)
		}
	}
	var gen [][]int32
	if genTokens > 0 {
		if gen, err = m.Generate(ctx, prompt, model.GenerateConfig{MaxTokens: genTokens}, nil); err != nil {
			return nil, fmt.Errorf("verify: in-process generate: %w", err)
		}
	}
	return &reference{out: out, gen: gen, loss: model.CrossEntropy(out.Logits, ids, m.Cfg.Vocab), aux: router.LoadBalancingLoss(rs)}, nil
}

// judgeSame adds the "vs 1 worker" lines: the forward quantities of the
// run with remote experts against the in-process run, within TolSame.
func judgeSame(r *Report, workers int, ref *reference, refErr error, out *model.Output, gen [][]int32, genErr error, loss, aux float64, hasAux bool) {
	note := "experts in-process vs over gRPC"
	if workers > 1 {
		note = fmt.Sprintf("experts in-process vs on %d worker processes over gRPC", workers)
	}
	if refErr != nil {
		r.Failf("logits vs 1 worker", "%v", refErr)
		return
	}
	r.Add("logits vs 1 worker", "rel_l2", RelL2(out.Logits, ref.out.Logits), TolSame, note)
	worst, at := 0.0, 0
	if len(out.Hidden) != len(ref.out.Hidden) {
		worst = math.NaN()
	}
	for l := range out.Hidden {
		if l >= len(ref.out.Hidden) {
			break
		}
		if e := RelL2(out.Hidden[l], ref.out.Hidden[l]); e > worst || math.IsNaN(e) {
			worst, at = e, l
		}
	}
	r.Add("hidden_states vs 1 worker", "rel_l2", worst, TolSame, fmt.Sprintf("worst: layer %d", at))
	if genErr != nil {
		r.Failf("generated_ids vs 1 worker", "%v", genErr)
	} else {
		mis, total := 0, 0
		for b := range ref.gen {
			for i := range ref.gen[b] {
				total++
				if b >= len(gen) || i >= len(gen[b]) || gen[b][i] != ref.gen[b][i] {
					mis++
				}
			}
		}
		r.Add("generated_ids vs 1 worker", "mismatch", float64(mis), 0, fmt.Sprintf("%d tokens, greedy, KV cache", total))
	}
	r.Add("loss vs 1 worker", "rel", relDiff(loss, ref.loss), TolSame, "")
	if hasAux {
		r.Add("aux_loss vs 1 worker", "rel", relDiff(aux, ref.aux), TolSame, "")
	}
}

// relDiff is |a-b| / |b| (|a-b| when b is 0).
func relDiff(a, b float64) float64 {
	d := math.Abs(a - b)
	if b != 0 {
		d /= math.Abs(b)
	}
	return d
}

// noteTraining adds note to every training line (how they were computed).
func noteTraining(r *Report, trainNote string) {
	for i := range r.Checks {
		c := &r.Checks[i]
		if strings.HasPrefix(c.Name, "grad.") || c.Name == "adamw_losses" {
			if c.Note == "" {
				c.Note = trainNote
			} else {
				c.Note += "; " + trainNote
			}
		}
	}
}

// judgeGrads compares every golden grad.<name> with ours, in both
// directions: a golden gradient we did not compute and a gradient we
// computed without a golden counterpart are each a FAIL line naming the
// parameter, and a golden file with no grad.* tensors at all fails. The
// output is a summary line (worst error) and a line per failing tensor, or
// with all a line per tensor.
func judgeGrads(r *Report, gf *safetensors.File, grads map[string][]float32, all bool) {
	inGolden := map[string]bool{}
	for _, name := range gf.Names() {
		if strings.HasPrefix(name, "grad.") {
			inGolden[strings.TrimPrefix(name, "grad.")] = true
		}
	}
	if len(inGolden) == 0 {
		r.Failf("grad.*", "the golden file has no grad.* tensors; required: the model computes gradients for %d parameters", len(grads))
		return
	}
	var missing []string // computed, no golden counterpart
	for p := range grads {
		if !inGolden[p] {
			missing = append(missing, p)
		}
	}
	slices.Sort(missing)

	n, worst, worstName := 0, 0.0, ""
	var failed []Check
	for _, name := range gf.Names() {
		if !strings.HasPrefix(name, "grad.") {
			continue
		}
		n++
		want, err := gf.Float32(name)
		if err != nil {
			r.Failf(name, "golden: %v", err)
			continue
		}
		got, ok := grads[strings.TrimPrefix(name, "grad.")]
		e := math.NaN()
		if ok {
			e = RelL2(got, want)
		}
		c := Check{Name: name, Metric: "rel_l2", Err: e, Tol: TolGrad, Status: OK}
		if !(e <= TolGrad) {
			c.Status = Fail
			if !ok {
				c.Note = "no gradient computed for this parameter"
			}
			failed = append(failed, c)
		}
		if all {
			r.Checks = append(r.Checks, c)
		}
		if e > worst || math.IsNaN(e) {
			worst, worstName = e, name
		}
	}
	for _, p := range missing {
		c := Check{Name: "grad." + p, Err: math.NaN(), Status: Fail,
			Note: "missing from the golden file; required: the model computes this gradient"}
		if all {
			r.Checks = append(r.Checks, c)
		} else {
			failed = append(failed, c)
		}
	}
	if all {
		return
	}
	r.Add(fmt.Sprintf("grad.* (%d tensors)", n), "rel_l2", worst, TolGrad, "worst: "+worstName)
	if len(missing) > 0 {
		sum := &r.Checks[len(r.Checks)-1]
		sum.Status = Fail
		sum.Note += fmt.Sprintf("; %d computed gradient(s) missing from the golden file", len(missing))
	}
	r.Checks = append(r.Checks, failed...)
}

func readIDs(f *safetensors.File, name string) ([][]int32, error) {
	info, err := f.Info(name)
	if err != nil {
		return nil, fmt.Errorf("verify: golden: %w", err)
	}
	if len(info.Shape) != 2 || info.Shape[0] == 0 || info.Shape[1] == 0 {
		return nil, fmt.Errorf("verify: golden %s has shape %v, want [B, T]", name, info.Shape)
	}
	v, err := f.Int64(name)
	if err != nil {
		return nil, fmt.Errorf("verify: golden: %w", err)
	}
	rows, cols := info.Shape[0], info.Shape[1]
	out := make([][]int32, rows)
	for r := range out {
		out[r] = make([]int32, cols)
		for c := range out[r] {
			id := v[r*cols+c]
			if id < 0 || id > math.MaxInt32 {
				return nil, fmt.Errorf("verify: golden %s[%d][%d] = %d is not a token id", name, r, c, id)
			}
			out[r][c] = int32(id)
		}
	}
	return out, nil
}

func dump(path string, ids [][]int32, out *model.Output, gen [][]int32, loss, aux float64, hasAux bool, cfg *model.Config, tq *TrainOut) error {
	B, T := len(ids), len(ids[0])
	D := cfg.Hidden
	var ts []safetensors.Tensor
	ts = append(ts, safetensors.F32Tensor("logits", []int{B, T, cfg.Vocab}, out.Logits))
	hs := make([]float32, 0, len(out.Hidden)*B*T*D)
	for _, h := range out.Hidden {
		hs = append(hs, h...)
	}
	ts = append(ts, safetensors.F32Tensor("hidden_states", []int{len(out.Hidden), B, T, D}, hs))
	if gen != nil && len(gen) > 0 {
		n := len(gen[0])
		g := make([]int64, 0, len(gen)*n)
		ok := true
		for _, row := range gen {
			ok = ok && len(row) == n
			for _, id := range row {
				g = append(g, int64(id))
			}
		}
		if ok {
			ts = append(ts, safetensors.I64Tensor("generated_ids", []int{len(gen), n}, g))
		}
	}
	ts = append(ts, safetensors.F32Tensor("loss", nil, []float32{float32(loss)}))
	if hasAux {
		ts = append(ts, safetensors.F32Tensor("aux_loss", nil, []float32{float32(aux)}))
	}
	if tq != nil {
		for name, g := range tq.Grads {
			ts = append(ts, safetensors.F32Tensor("grad."+name, tq.Shapes[name], g))
		}
		if len(tq.AdamW) > 0 {
			a := make([]float32, len(tq.AdamW))
			for i, v := range tq.AdamW {
				a[i] = float32(v)
			}
			ts = append(ts, safetensors.F32Tensor("adamw_losses", []int{len(a)}, a))
		}
	}
	if err := safetensors.Write(path, ts, map[string]string{"producer": "switchyard verify"}); err != nil {
		return fmt.Errorf("verify: dump: %w", err)
	}
	return nil
}

// TrainOut holds the training quantities verify recomputes.
type TrainOut struct {
	Grads  map[string][]float32 // by hub name
	Shapes map[string][]int
	AdamW  []float64 // losses before each AdamW step and after the last
}

// trainQuantities computes every parameter gradient of the mean
// next-token cross-entropy of ids, and the AdamW trajectory golden.json
// describes, each on a fresh float32 copy of the checkpoint.
func trainQuantities(ctx context.Context, ck *model.Checkpoint, ids [][]int32, gj GoldenJSON) (*TrainOut, error) {
	m, store, err := model.Load(ck.Config, ck.Source, model.LoadOptions{})
	if err != nil {
		return nil, err
	}
	s, err := train.NewStepper(m, store, train.StepConfig{AdamW: optim.DefaultAdamW(1)})
	if err != nil {
		return nil, err
	}
	grads, err := s.Gradients(ctx, ids)
	if err != nil {
		return nil, err
	}
	tq := &TrainOut{Grads: map[string][]float32{}, Shapes: map[string][]int{}}
	for _, p := range grads {
		tq.Grads[p.Name] = p.G
		tq.Shapes[p.Name] = p.Shape
	}
	if gj.AdamW == nil {
		return tq, nil
	}
	a := gj.AdamW
	if err := checkAdamW(gj); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	m, store, err = model.Load(ck.Config, ck.Source, model.LoadOptions{})
	if err != nil {
		return nil, err
	}
	s, err = train.NewStepper(m, store, train.StepConfig{AdamW: optim.AdamWConfig{
		LR: a.LR, Beta1: a.Betas[0], Beta2: a.Betas[1], Eps: a.Eps, WeightDecay: a.WeightDecay}})
	if err != nil {
		return nil, err
	}
	for step := 0; step < a.Steps; step++ {
		out, err := s.TrainStep(ctx, ids)
		if err != nil {
			return nil, err
		}
		tq.AdamW = append(tq.AdamW, out.CE)
	}
	final, err := s.Eval(ctx, ids)
	if err != nil {
		return nil, err
	}
	tq.AdamW = append(tq.AdamW, final)
	return tq, nil
}
