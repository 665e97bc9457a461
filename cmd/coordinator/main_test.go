package main

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	"bufio"
	"bytes"
	"context"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/status"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
)

// The test binary doubles as the coordinator binary: run with
// SWITCHYARD_COORDINATOR_MAIN=1 it is `coordinator` (same code as main),
// which saves linking the etcd server a second time with go build.
func TestMain(m *testing.M) {
	if os.Getenv("SWITCHYARD_COORDINATOR_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestProcess runs the coordinator as a real process with embedded etcd on
// a free port, registers two workers from outside, waits for their
// placement, checks `switchyard status` sees it all, then SIGTERMs the
// process and expects a clean exit (status 0, leadership resigned).
func TestProcess(t *testing.T) {
	modelDir := t.TempDir()
	hf := map[string]any{
		"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
		"moe_intermediate_size": 16, "shared_expert_intermediate_size": 24,
		"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
		"num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": false,
		"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
	}
	cfg, err := model.Synthesize(modelDir, hf, model.SynthOptions{Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	fp := cfg.Fingerprint()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0],
		"--listen-client-urls", "127.0.0.1:0", "--listen-peer-urls", "http://127.0.0.1:0",
		"--data-dir", t.TempDir(), "--cluster", "proc", "--name", "c1", "--session-ttl", "1s",
		"--model", modelDir, "--log-level", "info", "--expect-workers", "2", "--grpc", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "SWITCHYARD_COORDINATOR_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("coordinator stderr:\n%s", stderr.String())
		}
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("coordinator closed stdout")
			}
			t.Logf("stdout: %s", l)
			return l
		case <-ctx.Done():
			t.Fatal("no output from coordinator")
		}
		return ""
	}

	// coordinator: etcd=http://127.0.0.1:PORT cluster=proc name=c1 model=FP
	first := next()
	fields := map[string]string{}
	for _, f := range strings.Fields(strings.TrimPrefix(first, "coordinator: ")) {
		k, v, _ := strings.Cut(f, "=")
		fields[k] = v
	}
	if !strings.HasPrefix(fields["etcd"], "http://127.0.0.1:") || strings.HasSuffix(fields["etcd"], ":0") || fields["model"] != fp || fields["cluster"] != "proc" {
		t.Fatalf("first line %q", first)
	}
	if l := next(); l != "coordinator: leader=true name=c1" {
		t.Fatalf("second line %q", l)
	}

	cli, err := registry.Dial(ctx, []string{fields["etcd"]})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg, _ := registry.New(cli, "proc")
	for _, id := range []cluster.WorkerID{"w1", "w2"} {
		info := cluster.WorkerInfo{ID: id, Addr: string(id) + ":1", Protocol: cluster.ProtocolVersion, Model: fp, MemBytes: 1 << 30}
		if _, err := reg.Register(ctx, info, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	p, _, err := reg.WaitPlacement(ctx, fp, registry.OnWorkers("w1", "w2"))
	if err == nil {
		checkService(t, ctx, fields["grpc"], fp, p)
	}
	if err != nil {
		t.Fatal(err)
	}
	// --expect-workers 2: the first placement is already on both workers.
	if len(p.Owned("w1")) != 4 || len(p.Owned("w2")) != 4 || p.Epoch != 1 {
		t.Fatalf("placement epoch %d %+v", p.Epoch, p.Owners)
	}

	// What `switchyard status` shows (cmd/switchyard renders this snapshot).
	snap, err := status.Take(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Leader != "c1" || len(snap.Workers) != 2 || len(snap.Models) != 1 || snap.Models[0].Placement == nil {
		t.Fatalf("status snapshot lacks leader/workers/placement: %+v", snap)
	}

	cli.Close() // before the server goes away, as any client should
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		t.Logf("stdout: %s", l)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	t.Logf("clean exit %v after SIGTERM", time.Since(start))
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if strings.Contains(stderr.String(), "panic") || !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
}

// checkService asks the coordinator's gRPC service what etcd holds: the
// two workers and the model's placement epoch; GetPlacement answers the
// table, then not_modified for a caller that knows the epoch.
func checkService(t *testing.T, ctx context.Context, addr, fp string, p *cluster.Placement) {
	t.Helper()
	if addr == "" || addr == "-" || strings.HasSuffix(addr, ":0") {
		t.Fatalf("grpc=%q on the first line", addr)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := pb.NewCoordinatorClient(cc)
	st, err := c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetCluster() != "proc" || st.GetLeader() != "c1" || len(st.GetWorkers()) != 2 || len(st.GetModels()) != 1 ||
		st.GetModels()[0].GetModel() != fp || st.GetModels()[0].GetEpoch() < uint64(p.Epoch) || st.GetModels()[0].GetUnplacedExperts() != 0 {
		t.Fatalf("Status = %v (placement epoch %d)", st, p.Epoch)
	}
	held := 0
	for _, w := range st.GetWorkers() {
		held += int(w.GetExpertsOwned())
	}
	if held < 8 { // 2 MoE layers x 4 experts, at least one copy each
		t.Errorf("workers own %d expert copies in Status, want >= 8", held)
	}
	t.Logf("Status over gRPC: leader %s, %d workers, model epoch %d", st.GetLeader(), len(st.GetWorkers()), st.GetModels()[0].GetEpoch())
	gp, err := c.GetPlacement(ctx, &pb.GetPlacementRequest{Model: fp})
	if err != nil || gp.GetPlacement().GetEpoch() < uint64(p.Epoch) || len(gp.GetPlacement().GetWorkers()) != 2 {
		t.Fatalf("GetPlacement = %v, %v", gp, err)
	}
	nm, err := c.GetPlacement(ctx, &pb.GetPlacementRequest{Model: fp, KnownEpoch: gp.GetPlacement().GetEpoch()})
	if err != nil || !nm.GetNotModified() || nm.GetPlacement() != nil {
		t.Fatalf("GetPlacement with the known epoch = %v, %v; want not_modified", nm, err)
	}
	if _, err := c.GetPlacement(ctx, &pb.GetPlacementRequest{Model: "nope"}); grpcstatus.Code(err) != codes.NotFound {
		t.Errorf("GetPlacement of an unknown model: %v, want NotFound", err)
	}
}
