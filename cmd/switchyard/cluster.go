package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/internal/verify"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/transport"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// verifyCluster is the local cluster behind `verify --workers N`.
type verifyCluster struct {
	lc     *localcluster.Cluster
	client *localcluster.Client
	stderr io.Writer
}

// startLocalCluster starts etcd, a coordinator and n worker processes
// (this executable's worker command) serving modelDir, and waits until the
// placement spreads every expert over them and each worker serves it.
func startLocalCluster(ctx context.Context, modelDir string, n int, stderr io.Writer) (*verifyCluster, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("verify --workers: find this executable: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	lc, err := localcluster.Start(sctx, localcluster.Options{
		ModelDir: modelDir, Command: []string{exe, "worker"}, Workers: n, Cluster: "verify",
	})
	if err != nil {
		return nil, fmt.Errorf("verify --workers %d: %w", n, err)
	}
	vc := &verifyCluster{lc: lc, stderr: stderr}
	fmt.Fprintf(stderr, "verify: %s\n", lc.Describe())
	p, err := lc.WaitServing(sctx)
	if err != nil {
		vc.dumpLogs()
		vc.close()
		return nil, fmt.Errorf("verify --workers %d: %w", n, err)
	}
	counts := placement.Counts(p)
	var parts []string
	for _, id := range p.WorkerIDs() {
		parts = append(parts, fmt.Sprintf("%s=%d", id, counts[id]))
	}
	sort.Strings(parts)
	fmt.Fprintf(stderr, "verify: placement epoch %d, experts per worker: %s\n", p.Epoch, strings.Join(parts, " "))
	if vc.client, err = lc.NewClient(transport.ClientConfig{Worker: "verify"}, 0); err != nil {
		vc.close()
		return nil, err
	}
	return vc, nil
}

// experts is verify.ModelOptions.Experts: the cluster's remote executor.
func (vc *verifyCluster) experts(context.Context, *model.Checkpoint, *model.Model) (expert.Executor, func(), error) {
	return vc.client.Executor, func() {}, nil
}

// reportServed prints, on stderr, the rows each worker computed: evidence
// that the experts really ran remotely.
func (vc *verifyCluster) reportServed(ctx context.Context) {
	var parts []string
	for _, p := range vc.lc.Procs() {
		c, err := vc.lc.Pool.Client(p.ID, p.GRPC)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.Stats(sctx, &pb.StatsRequest{})
		cancel()
		if err != nil {
			parts = append(parts, fmt.Sprintf("%s=? (%v)", p.ID, err))
			continue
		}
		var rows uint64
		for _, e := range st.Experts {
			rows += e.Tokens
		}
		parts = append(parts, fmt.Sprintf("%s=%d", p.ID, rows))
	}
	sort.Strings(parts)
	fmt.Fprintf(vc.stderr, "verify: expert rows computed by each worker: %s\n", strings.Join(parts, " "))
}

func (vc *verifyCluster) dumpLogs() {
	for _, p := range vc.lc.Procs() {
		fmt.Fprintf(vc.stderr, "--- worker %s log:\n%s", p.ID, p.Log())
	}
}

func (vc *verifyCluster) close() {
	if vc.client != nil {
		vc.client.Close()
	}
	vc.lc.Close()
}

// goldenTraining is verify.ModelOptions.Train: a verification job on the
// cluster's workers recomputes the gradients and the AdamW trajectory of
// the golden batch, data- and expert-parallel (the batch's rows split among
// the workers, every expert's forward and backward at its owner, dense
// gradients ring-all-reduced).
func (vc *verifyCluster) goldenTraining(ctx context.Context, ids [][]int32, gj verify.GoldenJSON) (*verify.TrainOut, error) {
	out, err := os.MkdirTemp("", "switchyard-verify-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	dir, err := filepath.Abs(vc.lc.Model.Path)
	if err != nil {
		return nil, err
	}
	task := &jobs.GoldenTask{ModelDir: dir, IDs: ids, Out: out, AdamW: optim.DefaultAdamW(1)}
	if a := gj.AdamW; a != nil && len(a.Betas) == 2 {
		task.AdamW = optim.AdamWConfig{LR: a.LR, Beta1: a.Betas[0], Beta2: a.Betas[1], Eps: a.Eps, WeightDecay: a.WeightDecay}
		task.Steps = a.Steps
	}
	n := len(vc.lc.Procs())
	js := jobs.NewStore(vc.lc.Client, vc.lc.Registry.Cluster())
	id := fmt.Sprintf("verify-%d", time.Now().UnixNano())
	if err := js.Submit(ctx, jobs.Spec{ID: id, Workers: n, MaxAttempts: 1, Golden: task}); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	for {
		sp, _, err := js.Get(wctx, id)
		if err != nil {
			return nil, err
		}
		switch sp.State {
		case jobs.Done:
			grads, shapes, losses, err := train.ReadGoldenResults(out, n)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(vc.stderr, "verify: gradients and AdamW recomputed by job %s on workers %v\n", id, sp.Assigned)
			return &verify.TrainOut{Grads: grads, Shapes: shapes, AdamW: losses}, nil
		case jobs.Failed, jobs.Abandoned:
			return nil, fmt.Errorf("verification job %s on %v: %s", id, sp.Assigned, sp.Error)
		}
		select {
		case <-wctx.Done():
			return nil, fmt.Errorf("verification job %s: %w", id, wctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
