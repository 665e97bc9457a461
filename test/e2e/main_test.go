// Package e2e holds Switchyard's end-to-end cluster tests: an embedded
// etcd and a coordinator in the test process, and worker processes
// (separate OS processes, on loopback with free ports) talking real gRPC
// and memberlist. They are slow (seconds each), so they run only with
// SWITCHYARD_E2E=1:
//
//	SWITCHYARD_E2E=1 go test ./test/e2e
//
// The test binary doubles as the worker binary: started with
// SWITCHYARD_E2E_WORKER=1 it runs the worker command (the same code as
// cmd/worker and `switchyard worker`), which saves linking another binary.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/internal/verify"
	"github.com/switchyard/switchyard/internal/workercmd"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
)

func TestMain(m *testing.M) {
	if os.Getenv("SWITCHYARD_E2E_WORKER") == "1" {
		os.Exit(workercmd.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// needE2E skips the test unless SWITCHYARD_E2E=1.
func needE2E(t *testing.T) {
	t.Helper()
	if os.Getenv("SWITCHYARD_E2E") != "1" {
		t.Skip("end-to-end cluster test: set SWITCHYARD_E2E=1")
	}
}

// deepseekV3 is a small DeepSeek-V3 (MLA, sigmoid group routing, a shared
// expert) with 3 MoE layers of 16 experts: 48 routed experts.
func deepseekV3() map[string]any {
	return map[string]any{
		"model_type": "deepseek_v3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
		"moe_intermediate_size": 48, "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4,
		"n_group": 4, "topk_group": 2, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
		"first_k_dense_replace": 1, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
		"q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
		"head_dim": 8, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 256,
		"tie_word_embeddings": false,
	}
}

// synth writes a random checkpoint for hf into a temp dir.
func synth(t *testing.T, hf map[string]any, dtype string, seed uint64) string {
	t.Helper()
	dir := t.TempDir()
	start := time.Now()
	if _, err := model.Synthesize(dir, hf, model.SynthOptions{Seed: seed, DType: dtype}); err != nil {
		t.Fatal(err)
	}
	t.Logf("synthesized %s model in %v", hf["model_type"], time.Since(start).Round(time.Millisecond))
	return dir
}

// startCluster starts a local cluster whose workers are this test binary,
// stopped (and checked for leaks) when the test ends. Worker logs are
// printed if the test fails.
func startCluster(t *testing.T, ctx context.Context, o localcluster.Options) *localcluster.Cluster {
	t.Helper()
	leakcheck.Check(t)
	o.Command = []string{os.Args[0]}
	o.Env = append(o.Env, "SWITCHYARD_E2E_WORKER=1")
	if o.Cluster == "" {
		o.Cluster = strings.ToLower(strings.NewReplacer("/", "-", " ", "-").Replace(t.Name()))
	}
	start := time.Now()
	lc, err := localcluster.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		lc.Close()
		for _, p := range lc.Procs() {
			if strings.Contains(p.Log(), "WARNING: DATA RACE") {
				t.Errorf("worker %s reported a data race", p.ID)
			}
		}
		if t.Failed() {
			for _, p := range lc.Procs() {
				t.Logf("--- worker %s (pid %d) log:\n%s", p.ID, p.Pid(), p.Log())
			}
		}
	})
	t.Logf("cluster up in %v: %s", time.Since(start).Round(time.Millisecond), lc.Describe())
	return lc
}

// loadPair loads dir twice: with every expert in process (the reference)
// and with no expert (to run on ex).
func loadPair(t *testing.T, dir string, ex expert.Executor) (local, remote *model.Model) {
	t.Helper()
	ck, err := model.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if local, err = ck.Load(model.LoadOptions{KeepBF16: true}); err != nil {
		t.Fatal(err)
	}
	if remote, err = ck.Load(model.LoadOptions{KeepBF16: true, Experts: func(expert.ID) bool { return false }}); err != nil {
		t.Fatal(err)
	}
	remote.Experts = ex
	return local, remote
}

// batch is a fixed batch of three sequences of different lengths.
func batch(vocab int) [][]int32 {
	lens := []int{11, 7, 16}
	out := make([][]int32, len(lens))
	for b, n := range lens {
		for i := 0; i < n; i++ {
			out[b] = append(out[b], int32((b*97+i*31+5)%vocab))
		}
	}
	return out
}

// forward runs the batch through m.
func forward(ctx context.Context, m *model.Model, ids [][]int32) (*model.Output, error) {
	seqs := make([]*model.Seq, len(ids))
	for i := range seqs {
		seqs[i] = m.NewSeq()
	}
	return m.Forward(ctx, seqs, ids, model.Options{AllLogits: true, Routing: true})
}

// sameLogits fails the test unless the remote run matches the local one
// within 1e-5 relative L2.
func sameLogits(t *testing.T, got, want *model.Output) {
	t.Helper()
	e := verify.RelL2(got.Logits, want.Logits)
	if !(e <= 1e-5) {
		t.Fatalf("remote logits differ from the in-process run: rel_l2 %.3e", e)
	}
	t.Logf("remote logits vs in-process: rel_l2 %.3e", e)
}

// rssBytes reads a process's resident set size from /proc.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "123456 kB"
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// readJSON decodes JSON text into a generic map.
func readJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v:\n%s", err, s)
	}
	return v
}
