package jobs

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/train/dataroot"
	"github.com/switchyard/switchyard/pkg/train/trainconf"
)

// validJob is a training job that validates, with paths relative to a
// data root.
func validJob() trainconf.JobConfig {
	c := trainconf.DefaultJobConfig()
	c.Out, c.Text, c.Preset = "runs/one", "book.txt", "dsv3-micro"
	return c
}

func validSpec() Spec {
	return Spec{ID: "train-1", Job: validJob(), Workers: 2, MaxAttempts: 3, State: Submitted}
}

func TestSpecValidate(t *testing.T) {
	sp := validSpec()
	if err := sp.Validate(); err != nil {
		t.Fatalf("a valid spec: %v", err)
	}
	golden := validSpec()
	golden.Job = trainconf.JobConfig{}
	golden.Golden = &GoldenTask{ModelDir: "model", Out: "out", IDs: [][]int32{{1, 2, 3}}, Steps: 2, AdamW: optim.DefaultAdamW(1)}
	if err := golden.Validate(); err != nil {
		t.Fatalf("a valid golden spec: %v", err)
	}
	long := strings.Repeat("a/", trainconf.MaxPathLen)
	cases := []struct {
		name, mention string
		edit          func(*Spec)
	}{
		{"negative workers", "workers -1", func(s *Spec) { s.Workers = -1 }},
		{"absurd workers", "workers 1000000000", func(s *Spec) { s.Workers = 1e9 }},
		{"no workers", "workers 0", func(s *Spec) { s.Workers = 0 }},
		{"absurd attempts", "max attempts", func(s *Spec) { s.MaxAttempts = math.MaxInt }},
		{"negative attempt", "attempt -3", func(s *Spec) { s.Attempt = -3 }},
		{"unknown state", `unknown state "exploded"`, func(s *Spec) { s.State = "exploded" }},
		{"too many ranks", "3 ranks assigned", func(s *Spec) { s.Assigned = []cluster.WorkerID{"a", "b", "c"} }},
		{"a rank twice", "assigned twice", func(s *Spec) { s.State, s.Assigned = Running, []cluster.WorkerID{"a", "a"} }},
		{"running short of ranks", "1 ranks assigned for 2", func(s *Spec) { s.State, s.Assigned = Running, []cluster.WorkerID{"a"} }},
		{"id with a slash", "bad job id", func(s *Spec) { s.ID = "a/../b" }},
		{"id dot dot", "bad job id", func(s *Spec) { s.ID = ".." }},
		{"long id", "bad job id", func(s *Spec) { s.ID = strings.Repeat("x", MaxIDLen+1) }},
		{"negative steps", "steps -5", func(s *Spec) { s.Job.Steps = -5 }},
		{"huge steps", "steps 9223372036854775807", func(s *Spec) { s.Job.Steps = math.MaxInt }},
		{"negative batch", "batch -8", func(s *Spec) { s.Job.Batch = -8 }},
		{"huge batch", "batch", func(s *Spec) { s.Job.Batch = 1 << 40 }},
		{"huge sequence", "sequence length", func(s *Spec) { s.Job.SeqLen = 1 << 40 }},
		{"huge vocabulary", "vocabulary size", func(s *Spec) { s.Job.VocabSize = 1 << 40 }},
		{"negative save-every", "save-every -1", func(s *Spec) { s.Job.SaveEvery = -1 }},
		{"negative replicas", "expert replicas -2", func(s *Spec) { s.Job.ExpertReplicas = -2 }},
		{"held out 1", "held-out fraction 1", func(s *Spec) { s.Job.HeldOut = 1 }},
		{"infinite clip", "max grad norm", func(s *Spec) { s.Job.Step.MaxGradNorm = math.Inf(1) }},
		{"negative capacity", "capacity factor", func(s *Spec) { s.Job.Step.Loss.CapacityFactor = -1 }},
		{"no output", "output directory is required", func(s *Spec) { s.Job.Out = "" }},
		{"NUL in text", "NUL", func(s *Spec) { s.Job.Text = "book.txt\x00/etc/passwd" }},
		{"long path", "text path of", func(s *Spec) { s.Job.Text = long }},
		{"long preset", "preset name", func(s *Spec) { s.Job.Preset = long }},
		{"golden without rows", "golden batch of 0 rows", func(s *Spec) { s.Golden = &GoldenTask{ModelDir: "m", Out: "o"} }},
		{"golden negative token", "token id -1", func(s *Spec) { s.Golden = &GoldenTask{ModelDir: "m", Out: "o", IDs: [][]int32{{-1}}} }},
		{"golden negative steps", "golden steps -1", func(s *Spec) {
			s.Golden = &GoldenTask{ModelDir: "m", Out: "o", IDs: [][]int32{{1}}, Steps: -1}
		}},
		{"golden without model", "golden model directory is required", func(s *Spec) { s.Golden = &GoldenTask{Out: "o", IDs: [][]int32{{1}}} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sp := validSpec()
			tc.edit(&sp)
			err := sp.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.mention) || !strings.HasPrefix(err.Error(), "jobs: job ") {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// Decide abandons a spec whose scheduling fields are out of range instead
// of acting on it (a negative worker count used to panic the scheduler).
func TestDecideAbandonsInvalidSpecs(t *testing.T) {
	live := ids("w1", "w2")
	neg := &Spec{ID: "neg", Workers: -1, MaxAttempts: 1, State: Submitted}
	huge := &Spec{ID: "huge", Workers: 1 << 40, MaxAttempts: 1, State: Submitted}
	odd := &Spec{ID: "odd", Workers: 1, MaxAttempts: 1, State: "weird"}
	ok := &Spec{ID: "ok", Workers: 2, MaxAttempts: 1, State: Submitted}
	out := Decide([]*Spec{neg, huge, odd, ok}, live)
	for _, id := range []string{"neg", "huge", "odd"} {
		got := find(out, id)
		if got == nil || got.State != Abandoned || !strings.Contains(got.Error, "invalid job spec") {
			t.Errorf("%s: %+v, want abandoned as invalid", id, got)
		}
	}
	if got := find(out, "ok"); got == nil || got.State != Assigned || len(got.Assigned) != 2 {
		t.Errorf("the valid job beside them: %+v", got)
	}
}

func TestSpecResolvePaths(t *testing.T) {
	base, _ := filepath.EvalSymlinks(t.TempDir())
	root := filepath.Join(base, "root")
	os.MkdirAll(filepath.Join(root, "model"), 0o755)
	os.WriteFile(filepath.Join(root, "book.txt"), []byte("x"), 0o644)

	sp := validSpec()
	got, err := sp.ResolvePaths(root)
	if err != nil || got.Job.Text != filepath.Join(root, "book.txt") || got.Job.Out != filepath.Join(root, "runs", "one") {
		t.Fatalf("ResolvePaths: %+v, %v", got.Job, err)
	}
	if sp.Job.Text != "book.txt" {
		t.Error("ResolvePaths changed its receiver")
	}
	sp.Job.Text, sp.Job.Out, sp.Job.InitFrom = "/etc/passwd", "../../escape", "../"
	_, err = sp.ResolvePaths(root)
	if !errors.Is(err, dataroot.ErrOutside) {
		t.Fatalf("escapes accepted: %v", err)
	}
	for _, s := range []string{"/etc/passwd", "../../escape", "init-from", root} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}

	g := validSpec()
	g.Golden = &GoldenTask{ModelDir: "model", Out: "out", IDs: [][]int32{{1}}}
	rg, err := g.ResolvePaths(root)
	if err != nil || rg.Golden.ModelDir != filepath.Join(root, "model") || rg.Golden.Out != filepath.Join(root, "out") || g.Golden.Out != "out" {
		t.Fatalf("golden: %+v, %v", rg.Golden, err)
	}
	g.Golden.Out = base
	if _, err := g.ResolvePaths(root); !errors.Is(err, dataroot.ErrOutside) {
		t.Fatalf("golden output outside: %v", err)
	}
}

// FuzzDecodeSpec decodes arbitrary bytes as a spec from etcd. Invariant:
// DecodeSpec returns a clear error ("jobs: ...") or a spec whose every
// number is in range and whose paths, resolved against a data root, lie
// inside it or are refused; and the scheduler's Decide, which sees specs
// decoded without validation, never panics and only assigns in-range jobs.
func FuzzDecodeSpec(f *testing.F) {
	seed := func(edit func(m map[string]any)) {
		b, _ := json.Marshal(validSpec())
		var m map[string]any
		json.Unmarshal(b, &m)
		edit(m)
		b, _ = json.Marshal(m)
		f.Add(b)
	}
	job := func(m map[string]any) map[string]any { return m["job"].(map[string]any) }
	seed(func(m map[string]any) {})
	seed(func(m map[string]any) { m["workers"] = -1 })
	seed(func(m map[string]any) { m["workers"] = 1e12 })
	seed(func(m map[string]any) { m["workers"] = 0 })
	seed(func(m map[string]any) { m["max_attempts"] = 1 << 60 })
	seed(func(m map[string]any) { m["state"] = "running"; m["assigned"] = []string{"w1"} })
	seed(func(m map[string]any) { m["id"] = "../../x" })
	seed(func(m map[string]any) { job(m)["Steps"] = -1 })
	seed(func(m map[string]any) { job(m)["Steps"] = 9.3e18 })
	seed(func(m map[string]any) { job(m)["Batch"] = -8 })
	seed(func(m map[string]any) { job(m)["SeqLen"] = 1 << 50 })
	seed(func(m map[string]any) { job(m)["VocabSize"] = -1 })
	seed(func(m map[string]any) { job(m)["HeldOut"] = 1e308 })
	seed(func(m map[string]any) { job(m)["ExpertReplicas"] = 1 << 40 })
	seed(func(m map[string]any) { job(m)["Text"] = "/etc/passwd" })
	seed(func(m map[string]any) { job(m)["Out"] = "../../../../tmp/evil" })
	seed(func(m map[string]any) { job(m)["InitFrom"] = strings.Repeat("../", 2000) })
	seed(func(m map[string]any) { job(m)["Tokenizer"] = "tok\u0000.json" })
	seed(func(m map[string]any) { job(m)["Preset"] = strings.Repeat("p", 1<<16) })
	seed(func(m map[string]any) {
		m["golden"] = map[string]any{"model_dir": "/etc", "out": "../../", "ids": [][]int{{-1, 1 << 40}}, "steps": -7}
	})
	f.Add([]byte(`{"workers": 1e400}`))
	f.Add([]byte(`{"id": "x", "workers": 1, "state": "submitted", "job": {"Steps": 1, "HeldOut": -0.0}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))

	base, err := filepath.EvalSymlinks(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	root := filepath.Join(base, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		f.Fatal(err)
	}
	live := ids("w1", "w2", "w3")
	f.Fuzz(func(t *testing.T, b []byte) {
		var raw Spec
		if json.Unmarshal(b, &raw) == nil {
			for _, c := range Decide([]*Spec{&raw}, live) {
				if errs := c.validateScheduling(); c.State == Assigned && len(errs) > 0 {
					t.Fatalf("Decide assigned an invalid job: %v: %+v", errs, c)
				}
			}
		}
		sp, err := DecodeSpec(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "jobs: ") {
				t.Fatalf("unclear error %q", err)
			}
			return
		}
		inRange(t, sp)
		rs, err := sp.ResolvePaths(root)
		if err != nil {
			if !strings.Contains(err.Error(), "jobs: job") {
				t.Fatalf("unclear error %q", err)
			}
			return
		}
		var paths []string
		if g := rs.Golden; g != nil {
			paths = []string{g.ModelDir, g.Out}
		} else {
			paths = []string{rs.Job.Out, rs.Job.Text, rs.Job.InitFrom, rs.Job.Tokenizer}
		}
		for _, p := range paths {
			if p != "" && p != root && !strings.HasPrefix(p, root+string(filepath.Separator)) {
				t.Fatalf("resolved path %q is outside the root %s", p, root)
			}
		}
	})
}

// inRange checks, independently of Validate, that every number of a
// decoded spec is in its documented range.
func inRange(t *testing.T, sp *Spec) {
	t.Helper()
	check := func(name string, v, lo, hi int) {
		if v < lo || v > hi {
			t.Fatalf("%s %d accepted, outside [%d, %d]", name, v, lo, hi)
		}
	}
	finite := func(name string, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			t.Fatalf("%s %g accepted", name, v)
		}
	}
	check("workers", sp.Workers, 1, MaxWorkers)
	check("max attempts", sp.MaxAttempts, 0, MaxAttemptsCap)
	check("attempt", sp.Attempt, 0, MaxAttemptsCap)
	check("ranks", len(sp.Assigned), 0, sp.Workers)
	if g := sp.Golden; g != nil {
		check("golden steps", g.Steps, 0, MaxGoldenSteps)
		check("golden rows", len(g.IDs), 1, MaxGoldenRows)
		n := 0
		for _, row := range g.IDs {
			n += len(row)
			for _, id := range row {
				check("golden token", int(id), 0, math.MaxInt32)
			}
		}
		check("golden tokens", n, 1, MaxGoldenTokens)
		return
	}
	c := sp.Job
	check("steps", c.Steps, 1, trainconf.MaxSteps)
	check("seq len", c.SeqLen, 2, trainconf.MaxSeqLen)
	check("batch", c.Batch, 1, trainconf.MaxBatch)
	check("vocab", c.VocabSize, 0, trainconf.MaxVocab)
	check("eval every", c.EvalEvery, 0, trainconf.MaxSteps)
	check("eval max", c.EvalMax, 0, trainconf.MaxBatch)
	check("save every", c.SaveEvery, 0, trainconf.MaxSteps)
	check("replicas", c.ExpertReplicas, 0, trainconf.MaxExpertReplicas)
	check("warmup", c.Step.Schedule.Warmup, 0, trainconf.MaxSteps)
	check("total", c.Step.Schedule.Total, 0, trainconf.MaxSteps)
	if c.HeldOut >= 1 {
		t.Fatalf("held out %g accepted", c.HeldOut)
	}
	for _, v := range []float64{c.HeldOut, c.Step.AdamW.LR, c.Step.AdamW.Eps, c.Step.AdamW.WeightDecay, c.Step.Schedule.Peak, c.Step.Schedule.Min,
		c.Step.MaxGradNorm, c.Step.Loss.AuxCoef, c.Step.Loss.ZCoef, c.Step.Loss.CapacityFactor, c.Step.BiasUpdateSpeed} {
		finite("float field", v)
	}
	if b := c.Step.AdamW.Beta1; b < 0 || b >= 1 {
		t.Fatalf("beta1 %g accepted", b)
	}
	if b := c.Step.AdamW.Beta2; b < 0 || b >= 1 {
		t.Fatalf("beta2 %g accepted", b)
	}
	for _, p := range []string{c.Out, c.Text, c.InitFrom, c.Tokenizer} {
		if len(p) > trainconf.MaxPathLen || strings.IndexByte(p, 0) >= 0 {
			t.Fatalf("path %q accepted", p)
		}
	}
	if c.Out == "" || c.Text == "" {
		t.Fatal("a job without output or text accepted")
	}
}
