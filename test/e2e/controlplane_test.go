package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/train"
)

// TestControlPlaneSurvivesItsCrashes runs scripts/local-cluster.sh with
// etcd in a process of its own and two coordinators (--coordinators 2),
// and a training job submitted by `switchyard train --etcd`. Mid-job the
// leading coordinator is SIGKILLed: the other leads within the session
// TTL and the job keeps stepping; then etcd itself is frozen (SIGSTOP) for
// 4 s: the train client reports the loss within seconds and its return,
// and the job still finishes with every step recorded once.
func TestControlPlaneSurvivesItsCrashes(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	state, dataRoot := t.TempDir(), trainingDataRoot(t)
	etcd := localClusterUp(t, ctx, state, "3", "--coordinators", "2", "--data-root", dataRoot)
	cli, err := registry.Dial(ctx, []string{etcd})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg, err := registry.New(cli, "local")
	if err != nil {
		t.Fatal(err)
	}
	js := jobs.NewStore(cli, "local")

	const steps = 1000 // ~25 s on 2 cores: long enough for both faults
	tr, id := trainOnCluster(t, ctx, etcd, steps, 100)
	step := func() int {
		st, _ := js.Status(ctx, id)
		return st.Step
	}
	waitForWhile(t, ctx, "step 5", tr, func() bool { return step() >= 5 })

	leader, _, err := reg.Leader(ctx)
	if err != nil || (leader != "c1" && leader != "c2") {
		t.Fatalf("leader %q (%v), want c1 or c2", leader, err)
	}
	pidFile := map[string]string{"c1": "coordinator.pid", "c2": "coordinator2.pid"}[leader]
	pid := readPid(t, filepath.Join(state, pidFile))
	before := step()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// The ranks need no coordinator to step: the job goes on at once.
	waitForWhile(t, ctx, "the job stepping on", tr, func() bool { return step() >= before+3 })
	stepping := time.Since(killed)
	var next string
	waitFor(t, ctx, "another coordinator leading", func() bool {
		next, _, _ = reg.Leader(ctx)
		return next != "" && next != leader
	})
	takeover := time.Since(killed)
	if takeover > 20*time.Second {
		t.Errorf("%s took over %v after %s died (session TTL 3 s)", next, takeover, leader)
	}

	// etcd freezes for 4 s: the client says so, then that it is back.
	epid := readPid(t, filepath.Join(state, "etcd.pid"))
	if err := syscall.Kill(epid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	waitForWhile(t, ctx, "the client reporting the lost etcd", tr, func() bool { return strings.Contains(tr.out.String(), "train: lost etcd") })
	reported := time.Since(frozen)
	time.Sleep(4*time.Second - time.Since(frozen))
	if err := syscall.Kill(epid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitForWhile(t, ctx, "the client reporting etcd back", tr, func() bool { return strings.Contains(tr.out.String(), "etcd reachable again") })

	select {
	case <-tr.exited:
	case <-ctx.Done():
		t.Fatalf("train did not finish:\n%s", tr.out.String())
	}
	if tr.err != nil {
		t.Fatalf("train: %v\n%s", tr.err, tr.out.String())
	}
	ckpt, err := train.LatestCheckpoint(filepath.Join(dataRoot, "run"))
	if err != nil {
		t.Fatal(err)
	}
	if got := readLosses(t, ckpt); len(got) != steps {
		t.Errorf("%d losses recorded, want %d (no step lost or repeated)", len(got), steps)
	}
	report(t, "control plane: leader %s SIGKILLed at step %d: the job stepped on (3 steps) within %v, %s led %v later; etcd frozen 4 s: the train client reported it after %v; %d steps done, none lost or repeated",
		leader, before, stepping.Round(time.Millisecond), next, takeover.Round(time.Millisecond), reported.Round(time.Millisecond), steps)
}

// readPid reads the process ID a pid file (local-cluster.sh's) holds.
// trainOnCluster runs `switchyard train --etcd etcd --cluster local
// --workers 2` on the dsv3-micro preset (book.txt and tokenizer.json
// relative to the workers' data root, checkpoints every saveEvery steps
// to run/), waits until it submitted its job, and returns the client
// process and the job's ID (from its output).
func trainOnCluster(t *testing.T, ctx context.Context, etcd string, steps, saveEvery int) (*process, string) {
	t.Helper()
	tr := startProcess(t, "train", "--etcd", etcd, "--cluster", "local", "--workers", "2",
		"--preset", "dsv3-micro", "--text", "book.txt", "--tokenizer", "tokenizer.json", "--out", "run",
		"--steps", strconv.Itoa(steps), "--batch", "4", "--seq-len", "32", "--eval-every", "0", "--save-every", strconv.Itoa(saveEvery), "--warmup", "4")
	var id string
	waitFor(t, ctx, "the job submitted", func() bool {
		out := tr.out.String()
		if i := strings.Index(out, "submitted job "); i >= 0 {
			id = strings.Fields(out[i+len("submitted job "):])[0]
			return true
		}
		return false
	})
	return tr, id
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

// waitFor polls cond every 50 ms until it holds or ctx ends (a failure
// naming what).
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	waitForWhile(t, ctx, what, nil, cond)
}

// waitForWhile is waitFor that also fails at once if p exits first.
func waitForWhile(t *testing.T, ctx context.Context, what string, p *process, cond func() bool) {
	t.Helper()
	for !cond() {
		var exited <-chan struct{}
		if p != nil {
			exited = p.exited
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-exited:
			if !cond() {
				t.Fatalf("waiting for %s: %s exited (%v):\n%s", what, p.cmd.Args[1], p.err, p.out.String())
			}
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestThreeMemberEtcdSurvivesMemberRestarts: a 3-member etcd
// (local-cluster.sh --etcd-members 3, each member a process), two
// coordinators and two workers. Each member in turn is SIGKILLed and,
// after longer than a worker's lease TTL, started again on its data
// directory: no worker loses its lease (each client moves to a live
// member), the placement stays where it was, a leader leads throughout,
// writes land within 3 s (retried: one in flight on the dead member's
// connection fails), and the restarted member rejoins the cluster.
func TestThreeMemberEtcdSurvivesMemberRestarts(t *testing.T) {
	needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	state := t.TempDir()
	// A 5 s lease, shorter than the default 10 s, so that the 7 s each
	// member is down outlasts it.
	endpoints := strings.Split(localClusterUp(t, ctx, state, "2", "--etcd-members", "3", "--coordinators", "2", "--lease-ttl", "5s"), ",")
	if len(endpoints) != 3 {
		t.Fatalf("endpoints %v, want 3 members", endpoints)
	}
	cli, err := registry.Dial(ctx, endpoints)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	reg, err := registry.New(cli, "local")
	if err != nil {
		t.Fatal(err)
	}
	before, err := reg.Workers(ctx)
	if err != nil || len(before.Workers) != 2 {
		t.Fatalf("workers %v: %v", before.IDs(), err)
	}
	models, _, err := reg.Models(ctx)
	if err != nil || len(models) != 1 {
		t.Fatalf("models %v: %v", models, err)
	}
	pl, _, err := reg.Placement(ctx, models[0].Fingerprint)
	if err != nil || pl == nil {
		t.Fatalf("placement %v: %v", pl, err)
	}
	members := []string{"etcd", "etcd2", "etcd3"}
	for i, m := range members {
		if err := syscall.Kill(readPid(t, filepath.Join(state, m+".pid")), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		// Longer than a lease TTL (5 s): a client left on the dead member
		// would lose its lease meanwhile.
		// A write in flight on the killed member's connection fails
		// (etcd's client does not retry a Put); the next one goes to a
		// live member. Every write must land within 3 s of trying.
		for time.Since(killed) < 7*time.Second {
			tried := time.Now()
			for {
				pctx, pcancel := context.WithTimeout(ctx, time.Second)
				_, err := cli.Put(pctx, "/e2e/probe", m)
				pcancel()
				if err == nil {
					break
				}
				if time.Since(tried) > 3*time.Second {
					t.Fatalf("member e%d down: no write landed for %v: %v", i+1, time.Since(tried), err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
		}
		now, err := reg.Workers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(now.Leases, before.Leases) {
			t.Fatalf("member e%d down 7 s: worker leases %x, were %x (a worker lost its lease)", i+1, now.Leases, before.Leases)
		}
		if leader, _, err := reg.Leader(ctx); err != nil || leader == "" {
			t.Fatalf("member e%d down: no leader (%q, %v)", i+1, leader, err)
		}
		cmd, err := os.ReadFile(filepath.Join(state, m+".cmd"))
		if err != nil {
			t.Fatal(err)
		}
		restart := exec.Command("bash", "-c", "exec "+strings.TrimSpace(string(cmd))+" >>"+filepath.Join(state, m+".out")+" 2>>"+filepath.Join(state, m+".log"))
		restart.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := restart.Start(); err != nil {
			t.Fatal(err)
		}
		go restart.Wait() //nolint:errcheck // reaped; local-cluster.sh down stops it by its pid file
		if err := os.WriteFile(filepath.Join(state, m+".pid"), []byte(strconv.Itoa(restart.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, ctx, fmt.Sprintf("member e%d answering again", i+1), func() bool {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			defer scancel()
			_, err := cli.Status(sctx, endpoints[i])
			return err == nil
		})
		report(t, "3-member etcd: e%d SIGKILLed, writes went on and no worker lost its lease for 7 s; restarted, it answered %v after the kill",
			i+1, time.Since(killed).Round(time.Millisecond))
	}
	after, _, err := reg.Placement(ctx, models[0].Fingerprint)
	if err != nil || after.Epoch != pl.Epoch {
		t.Errorf("placement epoch %d after the restarts (%v), was %d", after.Epoch, err, pl.Epoch)
	}
	ml, err := cli.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("members %v: %v", ml, err)
	}
}
