package simcal

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/simulate"
	"github.com/switchyard/switchyard/pkg/train"
)

// TrainProfileOptions says which training step ProfileTrain measures: one
// rank's micro-batch of Batch sequences of SeqLen tokens through the
// model in Dir, on Threads threads (0: GOMAXPROCS as the process runs).
type TrainProfileOptions struct {
	Dir           string
	Batch, SeqLen int
	Threads       int
	Quick         bool // about 0.5 s of timed steps instead of 2 s
	Seed          uint64
	// WarmupSteps untimed steps first (default 10), then steps are timed
	// until Target has passed and at least MinSteps ran (defaults: 2 s,
	// 0.5 s when Quick; 20).
	WarmupSteps, MinSteps int
	Target                time.Duration
	// Windows is how many runs of consecutive timed steps (equal counts)
	// the profile is split into; it reports the one whose mean step is
	// the median (default 5; 1: the mean of every step).
	Windows int
}

// ProfileTrain measures one rank's training step of a real model in this
// process, as Vidur profiles a model's operators before it simulates
// them: the model in Dir (config.json and safetensors, float32 in
// memory as a training worker holds it) trained by a train.DistStepper in
// a group of one, every routed expert in process (no message), on random
// token windows. It returns the means per step of train.StepTimes' parts
// (the dense forward and backward, the routed experts' forward and
// backward, the optimizer) over the median one of Windows runs of
// consecutive timed steps (medianWindow), and the process's core time
// per step over all of them
// (getrusage: user + system), the per-call and element-wise work a
// product's GEMM throughput leaves out included. The training model
// scales its own products to these where the profile's shape, tokens and
// threads match the prediction's (simulate.TrainConfig).
func ProfileTrain(ctx context.Context, o TrainProfileOptions) (simulate.TrainProfile, error) {
	var p simulate.TrainProfile
	if o.Batch < 1 || o.SeqLen < 2 {
		return p, fmt.Errorf("simcal: train profile: batch %d, sequence length %d: want >= 1 and >= 2", o.Batch, o.SeqLen)
	}
	raw, err := os.ReadFile(filepath.Join(o.Dir, "config.json"))
	if err != nil {
		return p, fmt.Errorf("simcal: train profile: %w", err)
	}
	var hf simulate.HFMoEConfig
	if err := json.Unmarshal(raw, &hf); err != nil {
		return p, fmt.Errorf("simcal: train profile: %s: %w", o.Dir, err)
	}
	shape, err := hf.TrainShape(filepath.Base(o.Dir))
	if err != nil {
		return p, err
	}
	ck, err := model.Open(o.Dir)
	if err != nil {
		return p, err
	}
	m, store, err := model.Load(ck.Config, ck.Source, model.LoadOptions{})
	ck.Close()
	if err != nil {
		return p, err
	}
	comm := train.LocalGroup(1)[0]
	st, err := train.NewDistStepper(m, store, comm, train.DefaultJobConfig().Step)
	if err != nil {
		return p, err
	}
	warm, target, minSteps := o.WarmupSteps, o.Target, o.MinSteps
	if warm == 0 {
		warm = 10
	}
	if target == 0 {
		target = 2 * time.Second
		if o.Quick {
			target = 500 * time.Millisecond
		}
	}
	if minSteps == 0 {
		minSteps = 20
	}
	threads := o.Threads
	if threads == 0 {
		threads = runtime.GOMAXPROCS(0)
	}
	r := rand.New(rand.NewPCG(o.Seed, 7))
	vocab := m.Cfg.Vocab
	batch := func() [][]int32 {
		ids := make([][]int32, o.Batch)
		for b := range ids {
			ids[b] = make([]int32, o.SeqLen)
			for i := range ids[b] {
				ids[b][i] = int32(r.IntN(vocab))
			}
		}
		return ids
	}
	var times []train.StepTimes
	var cpu, timed time.Duration
	var stepErr error
	withThreads(threads, func() {
		for range warm {
			if _, stepErr = st.TrainStep(ctx, batch()); stepErr != nil {
				return
			}
		}
		cpu0 := processCPU()
		start := time.Now()
		for len(times) < minSteps || time.Since(start) < target {
			if stepErr = ctx.Err(); stepErr != nil {
				return
			}
			if _, stepErr = st.TrainStep(ctx, batch()); stepErr != nil {
				return
			}
			times = append(times, st.Last)
		}
		timed = time.Since(start)
		cpu = (processCPU() - cpu0) / time.Duration(len(times))
	})
	if stepErr != nil {
		return p, fmt.Errorf("simcal: train profile of %s: %w", o.Dir, stepErr)
	}
	windows := o.Windows
	if windows == 0 {
		windows = 5
	}
	sum, steps := medianWindow(times, windows)
	n := time.Duration(steps)
	var params int64
	for _, q := range st.Params() {
		params += int64(len(q.W))
	}
	shape.Name = ""
	return simulate.TrainProfile{
		Model: filepath.Base(o.Dir), Shape: shape, TokensPerRank: o.Batch * o.SeqLen, SeqLen: o.SeqLen,
		Threads: threads, Steps: steps, TimedSteps: len(times), Timed: timed,
		Forward: sum.Forward / n, Backward: sum.Backward / n,
		ExpertsForward: sum.ExchangeForward / n, ExpertsBackward: (sum.ExchangeWait - sum.ExchangeForward) / n,
		Optimizer: sum.Optimizer / n, Step: sum.Total / n, CPU: cpu, Params: params,
	}, nil
}

// medianWindow splits steps into windows runs of consecutive steps (as
// equal as the count allows; at most one window a step) and returns the
// sums of the window whose mean step (Total) is the median, and its step
// count. A machine whose speed dips for part of the profile (another
// virtual machine on the host, a burst of the kernel's work) moves the
// mean of every step; it moves the median window only when the dip lasts
// more than half the windows.
func medianWindow(steps []train.StepTimes, windows int) (train.StepTimes, int) {
	windows = max(1, min(windows, len(steps)))
	type window struct {
		sum train.StepTimes
		n   int
	}
	ws := make([]window, windows)
	for i, w := 0, 0; w < windows; w++ {
		end := (w + 1) * len(steps) / windows
		for ; i < end; i++ {
			l := steps[i]
			s := &ws[w].sum
			s.Forward += l.Forward
			s.Backward += l.Backward
			s.ExchangeWait += l.ExchangeWait
			s.ExchangeForward += l.ExchangeForward
			s.Optimizer += l.Optimizer
			s.Total += l.Total
			ws[w].n++
		}
	}
	sort.Slice(ws, func(a, b int) bool {
		return ws[a].sum.Total*time.Duration(ws[b].n) < ws[b].sum.Total*time.Duration(ws[a].n)
	})
	m := ws[windows/2]
	return m.sum, m.n
}

// processCPU is the core time (user + system, every thread) this process
// has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
