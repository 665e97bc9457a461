package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/membership"
	"github.com/switchyard/switchyard/pkg/train"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestTLSLocalCluster runs `scripts/local-cluster.sh up 2 --tls` (etcd on
// https with client certificates, mutual TLS on the workers, encrypted
// gossip) and checks that the cluster serves exactly as one process
// through a front end holding a front-end certificate, and that every port
// refuses a caller without a certificate, with one from another CA, or
// with a valid certificate of the wrong identity.
func TestTLSLocalCluster(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir, _ := filepath.Abs(filepath.Join(goldenDir, "qwen2_moe"))
	state := t.TempDir()
	// The workers' data root for the training job below: its text and
	// tokenizer are copied in, its checkpoints land there.
	dataRoot := trainingDataRoot(t)
	etcd := localClusterUp(t, ctx, state, "2", "--model", dir, "--tls", "--data-root", dataRoot)
	if !strings.HasPrefix(etcd, "https://") {
		t.Fatalf("etcd endpoint %s: want https://", etcd)
	}
	certs := filepath.Join(state, "tls")
	flags := func(name string) []string {
		return []string{"--tls-cert", filepath.Join(certs, name+".crt"), "--tls-key", filepath.Join(certs, name+".key"), "--tls-ca", filepath.Join(certs, "ca.crt")}
	}
	creds := func(d, name string) *auth.Credentials {
		c, err := auth.Load(auth.Files{Cert: filepath.Join(d, name+".crt"), Key: filepath.Join(d, name+".key"), CA: filepath.Join(d, "ca.crt")})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Another CA's certificates, with the same names.
	strangers := t.TempDir()
	if out, err := exec.Command(switchyardBin(t), "dev-ca", strangers, "--workers", "2", "--frontends", "1").CombinedOutput(); err != nil {
		t.Fatalf("dev-ca: %v\n%s", err, out)
	}

	// The CLI: status with the client certificate; without one it is
	// refused before it sends anything.
	out, err := exec.Command(switchyardBin(t), append([]string{"status", "--etcd", etcd, "--cluster", "local", "--json"}, flags("client")...)...).Output()
	if err != nil {
		t.Fatalf("status with the client certificate: %v", err)
	}
	type workerInfo struct {
		ID         string `json:"id"`
		Addr       string `json:"addr"`
		GossipAddr string `json:"gossip_addr"`
	}
	var st struct {
		Workers []workerInfo `json:"workers"`
	}
	if err := json.Unmarshal(out, &st); err != nil || len(st.Workers) != 2 {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if out, err := exec.Command(switchyardBin(t), "status", "--etcd", etcd, "--cluster", "local").CombinedOutput(); err == nil || !strings.Contains(string(out), "needs TLS") {
		t.Fatalf("status without certificates: %v\n%s", err, out)
	}

	// Serving through a front end with a front-end certificate equals one
	// process.
	url, _ := startFrontEnd(t, ctx, etcd, "local", dir, flags("fe1")...)
	for _, prompt := range servePrompts[:2] {
		want := generateOneProcess(t, dir, prompt, 10)
		for _, stream := range []bool{false, true} {
			if got := complete(ctx, url, prompt, 10, stream); got.Status != 200 || got.Text != want {
				t.Fatalf("%q stream=%v over TLS: %+v, one process %q", prompt, stream, got, want)
			}
		}
	}
	// A front end holding a worker's certificate is not a front end.
	fe := exec.CommandContext(ctx, switchyardBin(t), append([]string{"serve", "--model", dir, "--tokenizer", gpt2Tok, "--etcd", etcd, "--cluster", "local", "--listen", "127.0.0.1:0"}, flags("w1")...)...)
	if out, err := fe.CombinedOutput(); err == nil || !strings.Contains(string(out), "needs a frontend/<name> certificate") {
		t.Fatalf("serve with a worker's certificate: %v\n%s", err, out)
	}
	// A worker that presents w2's certificate as w1 is refused at start.
	wk := exec.CommandContext(ctx, switchyardBin(t), append([]string{"worker", "--id", "w1", "--model", dir, "--etcd", etcd, "--cluster", "local"}, flags("w2")...)...)
	if out, err := wk.CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate is for worker/w2") {
		t.Fatalf("worker --id w1 with w2's certificate: %v\n%s", err, out)
	}

	var w1 workerInfo
	for _, w := range st.Workers {
		if w.ID == "w1" {
			w1 = w
		}
	}
	if w1.Addr == "" || w1.GossipAddr == "" {
		t.Fatalf("status has no w1 with gRPC and gossip addresses: %+v", st.Workers)
	}

	// gRPC (worker w1): plaintext, another CA, and w2's valid certificate
	// where w1 is expected (the dialler checks who answers).
	health := func(tc credentials.TransportCredentials) error {
		cc, err := grpc.NewClient(w1.Addr, grpc.WithTransportCredentials(tc))
		if err != nil {
			return err
		}
		defer cc.Close()
		hctx, hcancel := context.WithTimeout(ctx, 3*time.Second)
		defer hcancel()
		_, err = pb.NewWorkerClient(cc).Health(hctx, &pb.HealthRequest{})
		return err
	}
	w1ID := auth.Identity{Role: auth.RoleWorker, Name: "w1"}
	if err := health(creds(certs, "fe1").ClientCreds(auth.Is(w1ID))); err != nil {
		t.Fatalf("Health from a front end of the CA: %v", err)
	}
	if err := health(insecure.NewCredentials()); err == nil {
		t.Fatal("worker gRPC answered a plaintext caller")
	}
	if err := health(creds(strangers, "fe1").ClientCreds(nil)); err == nil {
		t.Fatal("worker gRPC answered a caller of another CA")
	}
	if err := health(creds(certs, "fe1").ClientCreds(auth.Is(auth.Identity{Role: auth.RoleWorker, Name: "w2"}))); err == nil || !strings.Contains(err.Error(), "want worker/w2") {
		t.Fatalf("dialling w2 at w1's address: %v", err)
	}

	// etcd: no client certificate, or another CA's.
	etcdPut := func(tc *tls.Config) error {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd}, TLS: tc, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return err
		}
		defer cli.Close()
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		_, err = cli.Put(pctx, "/local/placement/attack", "x")
		return err
	}
	good := creds(certs, "client").EtcdClientConfig()
	noCert := good.Clone()
	noCert.Certificates = nil
	if err := etcdPut(noCert); err == nil {
		t.Fatal("etcd accepted a client without a certificate")
	}
	other := creds(strangers, "client").EtcdClientConfig()
	other.RootCAs = good.RootCAs
	if err := etcdPut(other); err == nil {
		t.Fatal("etcd accepted a client of another CA")
	}
	if err := etcdPut(nil); err == nil {
		t.Fatal("etcd accepted a plaintext client")
	}

	// Role-based access in etcd: valid certificates of a worker, a front
	// end and the CLI may not write a placement or the gossip key (only a
	// coordinator's may), and nobody but root may read outside the
	// cluster's prefix.
	for _, who := range []string{"w1", "fe1", "client"} {
		for _, key := range []string{"/local/placement/attack", "/local/placement-status/attack", "/local/gossip-key", "/other/x"} {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd}, TLS: creds(certs, who).EtcdClientConfig(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = cli.Put(pctx, key, "x")
			pcancel()
			cli.Close()
			if err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Fatalf("%s writing %s: %v, want permission denied", who, key, err)
			}
		}
	}

	// Gossip: a node without the cluster's key cannot join w1.
	gc := membership.LocalConfig("intruder")
	gc.Meta = membership.Meta{Worker: "intruder", Addr: "127.0.0.1:1", Protocol: cluster.ProtocolVersion}
	nd, err := membership.Start(gc)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range nd.Events() {
		}
	}()
	defer nd.Shutdown()
	jctx, jcancel := context.WithTimeout(ctx, 3*time.Second)
	n, err := nd.Join(jctx, []string{w1.GossipAddr})
	jcancel()
	if err == nil && n > 0 {
		t.Fatalf("a node without the gossip key joined w1's gossip (%d)", n)
	}

	// Training over TLS: the CLI submits with the client certificate, the
	// ranks form their group and exchange experts over mutual TLS (each
	// rank's certificate checked against the scheduler's assignment); the
	// losses equal one process's.
	const steps = 6
	tr := exec.CommandContext(ctx, switchyardBin(t), append([]string{"train", "--etcd", etcd, "--cluster", "local", "--workers", "2",
		"--preset", "dsv3-micro", "--text", "book.txt", "--tokenizer", "tokenizer.json", "--out", "run",
		"--steps", "6", "--batch", "4", "--seq-len", "32", "--eval-every", "0", "--save-every", "4", "--warmup", "4"}, flags("client")...)...)
	if out, err := tr.CombinedOutput(); err != nil {
		t.Fatalf("train over TLS: %v\n%s", err, out)
	}
	ckpt, err := train.LatestCheckpoint(filepath.Join(dataRoot, "run"))
	if err != nil {
		t.Fatal(err)
	}
	got := readLosses(t, ckpt)
	ref, err := train.Run(ctx, jobConfig(t, t.TempDir(), steps), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != steps {
		t.Fatalf("TLS training recorded %d losses, want %d", len(got), steps)
	}
	report(t, "tls: 2-worker training over mutual TLS, %d steps: losses %.4f -> %.4f (one process %.4f -> %.4f)", steps, got[0], got[steps-1], ref.Losses[0], ref.Losses[steps-1])
	for i := range ref.Losses {
		if d := math.Abs(got[i] - ref.Losses[i]); d > 1e-4 {
			t.Errorf("TLS training step %d: loss %.6f, one process %.6f", i+1, got[i], ref.Losses[i])
		}
	}

	// After all that, the cluster still serves correctly.
	want := generateOneProcess(t, dir, servePrompts[2], 10)
	if got := complete(ctx, url, servePrompts[2], 10, false); got.Status != 200 || got.Text != want {
		t.Fatalf("after the attacks: %+v, want %q", got, want)
	}
}
