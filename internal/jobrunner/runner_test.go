package jobrunner

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/transport"
)

// TestHostileJobSpecsStayInTheDataRoot writes job specs straight into a
// real etcd, as anyone who can write the cluster's keys could, naming
// /etc/passwd-style absolute paths, ../ escapes and links that lead out of
// the worker's data root, for the training data, the tokenizer, the model
// to fine-tune, the checkpoint output and a golden task. Each job fails
// with the reason (the path and the root) in its spec's error, and nothing
// is written outside the root. A job whose paths stay inside trains to the
// end, so the refusals are the data root's doing.
//
// The worker's data root is its working directory (the default), so
// relative paths mean the same with or without data roots.
func TestHostileJobSpecsStayInTheDataRoot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
	book, err := os.ReadFile("../../testdata/text/opticks.txt")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile("../../testdata/golden/tokenizer_bpe_gpt2/tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		filepath.Join(root, "book.txt"):          book[:20000],
		filepath.Join(root, "tokenizer.json"):    tok,
		filepath.Join(outside, "secret.txt"):     book[20000:40000], // trainable, so only the root stops it
		filepath.Join(outside, "tokenizer.json"): tok,
	}
	for path, b := range files {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "evil")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "sub"), 0o755)
	outsideBefore := tree(t, outside)
	t.Chdir(root)

	e := etcdtest.Start(t)
	store := jobs.NewStore(e.Client(t), "attack")
	srv, err := transport.NewExpertServer(expert.NewStore(), transport.ServerConfig{Worker: "w1", Model: "none", Hidden: 1})
	if err != nil {
		t.Fatal(err)
	}
	r := &Runner{Jobs: store, Cfg: Config{Self: "w1", Server: srv, ExpertAddr: "127.0.0.1:1", JoinTimeout: 20 * time.Second, StepTimeout: 20 * time.Second}}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() {
		stop()
		<-done
	}()

	job := func(edit func(c *train.JobConfig)) jobs.Spec {
		c := train.DefaultJobConfig()
		c.Text, c.Tokenizer, c.Out, c.Preset = "book.txt", "tokenizer.json", "runs/job", "dsv3-micro"
		c.Steps, c.SeqLen, c.Batch, c.EvalEvery, c.SaveEvery, c.HeldOut = 2, 16, 2, 0, 0, 0
		edit(&c)
		return jobs.Spec{Job: c}
	}
	cases := []struct {
		name    string
		spec    jobs.Spec
		mention []string // in the job's error, beside "outside the data root" and the root
	}{
		{"text /etc/passwd", job(func(c *train.JobConfig) { c.Text = "/etc/passwd" }), []string{`"/etc/passwd"`}},
		{"text ../ escape", job(func(c *train.JobConfig) { c.Text = "sub/../../outside/secret.txt" }), []string{"secret.txt"}},
		{"text through a link", job(func(c *train.JobConfig) { c.Text = "evil/secret.txt" }), []string{"evil/secret.txt"}},
		{"tokenizer ../ escape", job(func(c *train.JobConfig) { c.Tokenizer = "../outside/tokenizer.json" }), []string{"tokenizer"}},
		{"output absolute", job(func(c *train.JobConfig) { c.Out = filepath.Join(outside, "abs") }), []string{"output directory"}},
		{"output ../../ escape", job(func(c *train.JobConfig) { c.Out = "../../" + filepath.Base(base) + "/outside/up" }), []string{"output directory"}},
		{"output through a link", job(func(c *train.JobConfig) { c.Out = "evil/linked" }), []string{"evil/linked"}},
		{"init-from /etc", job(func(c *train.JobConfig) { c.Preset, c.InitFrom = "", "/etc" }), []string{"init-from"}},
		{"golden /etc and ../", jobs.Spec{Golden: &jobs.GoldenTask{ModelDir: "/etc", Out: "../outside/golden", IDs: [][]int32{{1, 2}}}},
			[]string{"golden model", "golden output"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sp := tc.spec
			sp.ID = "attack-" + string(rune('a'+i))
			sp.Workers, sp.MaxAttempts, sp.State, sp.Attempt = 1, 1, jobs.Assigned, 1
			sp.Assigned = []cluster.WorkerID{"w1"}
			put(t, ctx, e, sp)
			got := await(t, ctx, store, sp.ID)
			if got.State != jobs.Failed {
				t.Fatalf("job %s: state %s (error %q), want failed", sp.ID, got.State, got.Error)
			}
			for _, s := range append(tc.mention, "outside the data root", root) {
				if !strings.Contains(got.Error, s) {
					t.Errorf("the job's error %q does not mention %q", got.Error, s)
				}
			}
			if added := newPaths(t, outside, outsideBefore); len(added) > 0 {
				t.Errorf("written outside the data root: %v", added)
			}
		})
	}

	// The same worker runs a job whose paths stay inside to the end.
	ok := job(func(*train.JobConfig) {})
	ok.ID, ok.Workers, ok.MaxAttempts, ok.State, ok.Attempt, ok.Assigned = "inside", 1, 1, jobs.Assigned, 1, []cluster.WorkerID{"w1"}
	put(t, ctx, e, ok)
	if got := await(t, ctx, store, ok.ID); got.State != jobs.Done {
		t.Fatalf("a job inside the data root: state %s, error %q", got.State, got.Error)
	}
	// The rank's last status (with its checkpoint) and the job's Done are
	// separate writes: wait for the status rather than assume its order
	// on a busy machine.
	want := filepath.Join(root, "runs", "job", "checkpoint-0000002")
	var st jobs.Status
	for deadline := time.Now().Add(30 * time.Second); ; {
		st, _ = store.Status(ctx, ok.ID)
		if st.Checkpoint == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Checkpoint != want {
		t.Errorf("checkpoint %q, want %q", st.Checkpoint, want)
	}
	if added := newPaths(t, outside, outsideBefore); len(added) > 0 {
		t.Errorf("written outside the data root: %v", added)
	}
}

// put stores sp under its key as is, bypassing Submit's checks.
func put(t *testing.T, ctx context.Context, e *etcdtest.Cluster, sp jobs.Spec) {
	t.Helper()
	sp.Submitted, sp.Updated = time.Now(), time.Now()
	b, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client(t).Put(ctx, "/attack/jobs/"+sp.ID+"/spec", string(b)); err != nil {
		t.Fatal(err)
	}
}

// await waits until job id leaves the assigned and running states.
func await(t *testing.T, ctx context.Context, store *jobs.Store, id string) *jobs.Spec {
	t.Helper()
	for {
		sp, _, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if sp.State != jobs.Assigned && sp.State != jobs.Running {
			return sp
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job %s still %s: %v", id, sp.State, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// newPaths lists (up to 5 of) the paths under dir that were not in before.
func newPaths(t *testing.T, dir string, before []string) []string {
	t.Helper()
	var added []string
	for _, p := range tree(t, dir) {
		if !slices.Contains(before, p) && len(added) < 5 {
			added = append(added, p)
		}
	}
	return added
}

// tree lists every path under dir.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		out = append(out, p)
		return nil
	})
	return out
}
