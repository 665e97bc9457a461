package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
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
