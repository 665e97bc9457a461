package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/internal/leakcheck"
	"github.com/switchyard/switchyard/internal/status"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
)

func TestStatusCommand(t *testing.T) {
	leakcheck.Check(t)
	etcd := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cli := etcd.Client(t)
	reg, _ := registry.New(cli, "demo")
	rec := registry.ModelRecord{Fingerprint: "qwen2_moe-abc", Name: "tiny", Family: "qwen2_moe", Path: "/m/tiny",
		Layers: 2, MoELayers: []int{0, 1}, Experts: 4, ElemBytes: 4, ExpertBytes: 6144, DenseBytes: 50000, Protocol: cluster.ProtocolVersion}
	if err := reg.PutModel(ctx, rec); err != nil {
		t.Fatal(err)
	}
	var infos []cluster.WorkerInfo
	for _, id := range []cluster.WorkerID{"w1", "w2"} {
		info := cluster.WorkerInfo{ID: id, Addr: "127.0.0.1:700" + string(id[1]), GossipAddr: "127.0.0.1:800" + string(id[1]),
			Cores: 2, MemBytes: 1 << 30, Protocol: cluster.ProtocolVersion, Model: rec.Fingerprint}
		g, err := reg.Register(ctx, info, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		infos = append(infos, info)
		var toks []registry.TokenCount
		for e := 0; e < 4; e++ {
			toks = append(toks, registry.TokenCount{Layer: 1, Expert: e, Tokens: uint64(10 * (e + 1))})
		}
		if err := g.PutStats(ctx, registry.WorkerStats{Model: rec.Fingerprint, Epoch: 1, Tokens: toks}); err != nil {
			t.Fatal(err)
		}
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	el := concurrency.NewElection(sess, reg.LeaderPrefix())
	if err := el.Campaign(ctx, "coord-1"); err != nil {
		t.Fatal(err)
	}
	p, err := placement.Place(placement.Input{Model: rec.Fingerprint, Layers: 2, Experts: rec.PlacementExperts(), Workers: infos})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.WritePlacement(ctx, registry.FenceOf(el), &p, 0); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) string {
		cmd := statusCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(append([]string{"--etcd", strings.Join(etcd.Endpoints, ","), "--cluster", "demo"}, args...))
		if err := cmd.ExecuteContext(ctx); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	text := run()
	t.Logf("\n%s", text)
	for _, want := range []string{
		"cluster demo, leader coord-1, 2 workers",
		"w1      127.0.0.1:7001  127.0.0.1:8001",
		"placement epoch 1",
		"w1 (4): L0: 0,2  L1: 0,2",
		"L1 20 40 60 80   200",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q", want)
		}
	}
	var snap status.Snapshot
	if err := json.Unmarshal([]byte(run("--json")), &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Leader != "coord-1" || len(snap.Workers) != 2 || snap.Workers[0].GrantedTTLSeconds != 5 || snap.Workers[0].TTLSeconds <= 0 ||
		len(snap.Models) != 1 || snap.Models[0].Placement.Epoch != 1 || len(snap.Models[0].Tokens) != 4 || snap.Models[0].Tokens[3].Tokens != 80 {
		t.Fatalf("json snapshot %+v", snap)
	}
	if snap.Models[0].PlacementStatus != nil || len(snap.Models[0].Owned["w1"]) != 4 {
		t.Fatalf("placement status %+v, owned %v", snap.Models[0].PlacementStatus, snap.Models[0].Owned)
	}

	// The leader's verdict: w2 died and w1 cannot hold its experts.
	ps := registry.PlacementStatus{Model: rec.Fingerprint, Error: "placement: 8 experts x 1 replicas need 49152 bytes; ...",
		NeedBytes: 8 * 6144, HaveBytes: 4 * 6144, Unplaced: p.Owned("w2"), Epoch: 1, Time: time.Now().UTC()}
	if err := reg.PutPlacementStatus(ctx, registry.FenceOf(el), ps); err != nil {
		t.Fatal(err)
	}
	text = run()
	t.Logf("\n%s", text)
	for _, want := range []string{
		"model qwen2_moe-abc: cannot place: need 48.0 KiB for 8 expert copies, workers have 24.0 KiB (short by 24.0 KiB)",
		"model qwen2_moe-abc: 4 experts have no live copy (epoch 1 keeps them on workers that left): L0: 1,3  L1: 1,3",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q", want)
		}
	}
	var raw struct {
		Models []map[string]json.RawMessage `json:"models"`
	}
	out := run("--json")
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatal(err)
	}
	var got registry.PlacementStatus
	if err := json.Unmarshal(raw.Models[0]["placement_status"], &got); err != nil || !got.SameVerdict(ps) {
		t.Fatalf("placement_status %s (%v)", raw.Models[0]["placement_status"], err)
	}
	var owned map[cluster.WorkerID][]any
	if err := json.Unmarshal(raw.Models[0]["owned"], &owned); err != nil || len(owned["w1"]) != 4 || len(owned["w2"]) != 4 {
		t.Fatalf("owned %s (%v)", raw.Models[0]["owned"], err)
	}
	sess.Close()
}

func TestStatusUnreachable(t *testing.T) {
	cmd := statusCmd()
	cmd.SetArgs([]string{"--etcd", "http://127.0.0.1:1", "--timeout", "300ms"})
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("err = %v", err)
	}
}
