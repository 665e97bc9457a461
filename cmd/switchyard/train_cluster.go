package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/switchyard/switchyard/pkg/auth"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/internal/localcluster"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/train"
	"github.com/switchyard/switchyard/pkg/train/dataroot"
)

// trainDistributed runs a job on workers: on a local cluster it starts
// (embedded etcd, coordinator, N worker processes) when endpoints is
// empty, else on the running cluster at endpoints.
//
// The local cluster's workers get the narrowest data root that holds
// every path of cfg (localJob), and the job names its paths relative to
// it. A job for the cluster at endpoints is submitted with its paths as
// given: they are relative to the data root of each of its workers
// (worker --data-root), where they must lie. workerArgs are extra flags
// for the local workers (tracing).
// elastic is a job's worker range: min <= ranks <= max.
type elastic struct{ min, max int }

func trainDistributed(ctx context.Context, cfg train.JobConfig, size elastic, endpoints []string, clusterName string, creds *auth.Credentials, workerArgs []string, stdout, stderr io.Writer) error {
	workers := size.max
	var store *jobs.Store
	submit := cfg
	if len(endpoints) == 0 {
		var root string
		var err error
		if root, submit, err = localJob(cfg); err != nil {
			return err
		}
		// Jobs-only workers: they load what each rank needs when the job
		// starts (the preset's step-0 weights, a checkpoint to resume or a
		// folder to fine-tune) and serve no model.
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "train: starting a local cluster: embedded etcd, coordinator, %d workers (data root %s)\n", workers, root)
		lc, err := localcluster.Start(ctx, localcluster.Options{
			Command: []string{exe, "worker"}, Workers: workers, Cluster: "train", WidenBF16: true, DataRoot: root,
			Restart:    true, // a dead worker process comes back, and the job grows onto it at its next attempt
			WorkerArgs: workerArgs,
		})
		if err != nil {
			return err
		}
		defer lc.Close()
		fmt.Fprintf(stderr, "train: etcd %s\n", strings.Join(lc.Endpoints, ","))
		store = jobs.NewStore(lc.Client, "train")
		if cfg.Out, err = filepath.Abs(cfg.Out); err != nil { // for the loss curve
			return err
		}
	} else {
		cli, err := registry.DialTLS(ctx, endpoints, creds)
		if err != nil {
			return err
		}
		defer cli.Close()
		store = jobs.NewStore(cli, clusterName)
	}
	id := fmt.Sprintf("train-%s", time.Now().UTC().Format("20060102-150405.000"))
	id = strings.ReplaceAll(id, ".", "-")
	sp := jobs.Spec{ID: id, Job: submit, Workers: workers}
	if size.min < size.max {
		sp.MinWorkers = size.min
	}
	if err := store.Submit(ctx, sp); err != nil {
		return err
	}
	if size.min < size.max {
		fmt.Fprintf(stderr, "train: submitted job %s for %d to %d workers\n", id, size.min, size.max)
	} else {
		fmt.Fprintf(stderr, "train: submitted job %s for %d workers\n", id, workers)
	}
	if len(endpoints) != 0 {
		cfg.Out = "" // the loss curve goes beside the checkpoints the workers report
	}
	err := followJob(ctx, store, id, cfg, stdout, stderr)
	if err != nil && ctx.Err() != nil {
		if len(endpoints) == 0 {
			return fmt.Errorf("train: interrupted; the local cluster stops now (continue from the last checkpoint with --resume): %w", ctx.Err())
		}
		return fmt.Errorf("train: stopped following job %s; it keeps running on the cluster: %w", id, ctx.Err())
	}
	return err
}

// followJob prints a job's progress until it is done or abandoned, and
// draws the loss curve (cfg.Out/loss.png; with an empty cfg.Out, in the
// folder of the checkpoint the job reports) from each checkpoint the job
// reports; a curve it cannot draw (e.g. --etcd workers whose --out this
// machine does not see) is reported once and does not fail the job.
func followJob(ctx context.Context, store *jobs.Store, id string, cfg train.JobConfig, stdout, stderr io.Writer) error {
	steps := cfg.Steps
	curve, warned := &lossCurve{out: cfg.Out}, false
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	lastStep, lastState, lastAttempt, told := -1, jobs.State(""), 0, 0
	var lastPrint, lost, lostSaid time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		// Both reads are bounded: etcd can stop answering between them
		// (a frozen etcd held this loop in the status read, unbounded,
		// until etcd came back, so the loss was never reported).
		gctx, gcancel := context.WithTimeout(ctx, 3*time.Second)
		sp, _, err := store.Get(gctx, id)
		var st jobs.Status
		if err == nil {
			var serr error
			if st, serr = store.Status(gctx, id); serr != nil && gctx.Err() != nil {
				err = serr
			}
		}
		gcancel()
		if err != nil {
			if errors.Is(err, jobs.ErrNotFound) || ctx.Err() != nil {
				return err
			}
			// etcd unreachable (or no quorum): the job goes on without this
			// client; say so once, then every 30 s, and carry on.
			if lost.IsZero() {
				lost = time.Now()
				fmt.Fprintf(stderr, "train: lost etcd: %v (the job keeps running on the cluster; retrying)\n", err)
			} else if time.Since(lostSaid) > 30*time.Second {
				fmt.Fprintf(stderr, "train: etcd unreachable for %v: %v\n", time.Since(lost).Round(time.Second), err)
			} else {
				continue
			}
			lostSaid = time.Now()
			continue
		}
		if !lost.IsZero() {
			fmt.Fprintf(stderr, "train: etcd reachable again after %v\n", time.Since(lost).Round(100*time.Millisecond))
			lost = time.Time{}
		}
		// Every failed attempt's cause, even when the job re-formed
		// between two polls.
		for ; told < len(sp.History); told++ {
			if h := sp.History[told]; strings.Contains(h, "to grow onto more workers") {
				fmt.Fprintf(stderr, "train: %s\n", h)
			} else {
				fmt.Fprintf(stderr, "train: failed: %s\n", h)
			}
		}
		if sp.State == jobs.Failed && lastState != jobs.Failed {
			fmt.Fprintf(stderr, "train: failed: %s\n", sp.Error)
			told++ // the scheduler moves it into History next
		}
		if sp.State != lastState || sp.Attempt != lastAttempt {
			fmt.Fprintf(stderr, "train: job %s %s (attempt %d, ranks %v)\n", id, sp.State, sp.Attempt, sp.Assigned)
			if sp.Error != "" && sp.State != jobs.Failed {
				fmt.Fprintf(stderr, "train: %s\n", sp.Error)
			}
			if len(sp.Suspects) > 0 && sp.State == jobs.Assigned {
				var names []string
				for _, s := range sp.Suspects {
					names = append(names, string(s.Worker))
				}
				fmt.Fprintf(stderr, "train: attempt %d avoids %s (blamed for the last failure)\n", sp.Attempt, strings.Join(names, ", "))
			}
			lastState, lastAttempt = sp.State, sp.Attempt
		}
		if st.Step != lastStep && (time.Since(lastPrint) > 5*time.Second || st.Step == steps) {
			fmt.Fprintf(stderr, "train: step %d/%d loss %.4f %.0f tok/s", st.Step, steps, st.Loss, st.TokensPerS)
			if st.EvalLoss != 0 {
				fmt.Fprintf(stderr, " held-out %.4f", st.EvalLoss)
			}
			fmt.Fprintln(stderr)
			lastStep, lastPrint = st.Step, time.Now()
		}
		if curve.checkpoint(st.Checkpoint); curve.err != nil && !warned {
			fmt.Fprintln(stderr, curve.err)
			warned = true
		}
		switch sp.State {
		case jobs.Done:
			fmt.Fprintf(stdout, "train: job %s done: %d steps on %d workers, loss %.4f", id, st.Step, sp.Workers, st.Loss)
			if st.EvalLoss != 0 {
				fmt.Fprintf(stdout, ", held-out %.4f", st.EvalLoss)
			}
			fmt.Fprintf(stdout, ", %.0f tokens/s\ncheckpoint %s\n", st.TokensPerS, st.Checkpoint)
			return nil
		case jobs.Abandoned:
			return errors.New("train: job " + id + " abandoned: " + sp.Error)
		}
	}
}

// localJob prepares cfg for the workers of a local cluster: it creates
// cfg.Out, and returns the narrowest directory that holds every path cfg
// names, links resolved (dataroot.Cover: the output folder, the init-from
// folder, the folders of the text and the tokenizer), to be the workers'
// data root, and cfg with its paths relative to that root, to submit. So
// the workers can reach what this job names and nothing beside it.
func localJob(cfg train.JobConfig) (string, train.JobConfig, error) {
	if cfg.Out == "" {
		return "", cfg, errors.New("train: --out is required")
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return "", cfg, fmt.Errorf("train: %w", err)
	}
	var fields []*string
	var paths []string
	for _, p := range []*string{&cfg.Out, &cfg.Text, &cfg.Tokenizer, &cfg.InitFrom} {
		if *p != "" {
			fields, paths = append(fields, p), append(paths, *p)
		}
	}
	root, rel, err := dataroot.Cover(paths...)
	if err != nil {
		return "", cfg, fmt.Errorf("train: %w", err)
	}
	for i, p := range fields {
		*p = rel[i]
	}
	return root, cfg, nil
}
