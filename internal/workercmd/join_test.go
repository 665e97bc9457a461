package workercmd

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
)

// workerProc returns the test binary run as the worker command.
func workerProc(ctx context.Context, args ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Env = append(os.Environ(), "SWITCHYARD_WORKERCMD_WORKER=1", "GOMEMLIMIT=")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func smallModel(t *testing.T) (string, registry.ModelRecord) {
	t.Helper()
	dir := t.TempDir()
	hf := map[string]any{
		"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
		"moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": false,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
	if _, err := model.Synthesize(dir, hf, model.SynthOptions{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	rec, err := registry.ModelRecordFromDir(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	return dir, rec
}

// TestProcessGivesUp: a worker process with a wrong etcd address or a
// wrong cluster name exits with status 1 and one clear error after its
// (shortened) timeout, not retrying forever.
func TestProcessGivesUp(t *testing.T) {
	dir, rec := smallModel(t)
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	reg, err := registry.New(e.Client(t), "real")
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.PutModel(ctx, rec); err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on: port 1 is below the kernel's ephemeral
	// range, so no test's listener on :0 can take it (a port freed by
	// closing a listener was once reused by a concurrent package's etcd,
	// which the worker then reached).
	dead := "http://127.0.0.1:1"
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"unreachable etcd", []string{"--etcd", dead, "--connect-timeout", "2s"},
			[]string{"etcd " + dead + " not reachable within 2s", "connection refused"}},
		{"wrong cluster", []string{"--etcd", strings.Join(e.Endpoints, ","), "--cluster", "typo", "--register-timeout", "2s"},
			[]string{`cluster "typo" serves no model`, `clusters in this etcd: "real"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			cmd := workerProc(ctx, append([]string{"--id", "w1", "--model", dir, "--no-jobs", "--gossip", "off"}, tc.args...)...)
			cmd.Stdout, cmd.Stderr = &out, &errOut
			start := time.Now()
			err := cmd.Run()
			took := time.Since(start)
			t.Logf("exit after %v: %v\n%s", took.Round(time.Millisecond), err, errOut.String())
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want status 1", err)
			}
			if took < 2*time.Second || out.Len() != 0 {
				t.Errorf("exited after %v, stdout %q", took, out.String())
			}
			last := strings.TrimSpace(errOut.String())
			last = last[strings.LastIndex(last, "\n")+1:]
			for _, s := range tc.want {
				if !strings.HasPrefix(last, "worker: ") || !strings.Contains(last, s) {
					t.Errorf("last stderr line lacks %q: %s", s, last)
				}
			}
		})
	}
}

// TestProcessWait: with --wait a worker process of a cluster with no model
// keeps retrying past --register-timeout, logs no more than the first
// warning and a line every 10 s, and becomes ready once the model is
// registered.
func TestProcessWait(t *testing.T) {
	dir, rec := smallModel(t)
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	reg, err := registry.New(e.Client(t), "late")
	if err != nil {
		t.Fatal(err)
	}
	var errOut syncBuffer
	cmd := workerProc(ctx, "--id", "w1", "--model", dir, "--no-jobs", "--gossip", "off", "--etcd", strings.Join(e.Endpoints, ","),
		"--cluster", "late", "--register-timeout", "1s", "--wait")
	cmd.Stderr = &errOut
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case ready <- sc.Text():
			default:
			}
		}
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	select {
	case err := <-exited:
		t.Fatalf("worker exited: %v\n%s", err, errOut.String())
	case l := <-ready:
		t.Fatalf("worker ready with no model: %s", l)
	case <-time.After(3 * time.Second):
	}
	if n := strings.Count(errOut.String(), "not registered yet"); n != 1 {
		t.Errorf("%d retry warnings in 3 s, want 1:\n%s", n, errOut.String())
	}
	if err := reg.PutModel(ctx, rec); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-ready:
		t.Logf("%s", l)
	case err := <-exited:
		t.Fatalf("worker exited: %v\n%s", err, errOut.String())
	case <-ctx.Done():
		t.Fatalf("worker not ready after the model was registered:\n%s", errOut.String())
	}
	// (stderr is copied by another goroutine: wait for the line.)
	for !strings.Contains(errOut.String(), "registered after retrying") {
		select {
		case <-ctx.Done():
			t.Fatalf("stderr lacks the registration after retrying:\n%s", errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and readers at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
