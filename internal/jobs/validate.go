package jobs

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/switchyard/switchyard/pkg/train/dataroot"
	"github.com/switchyard/switchyard/pkg/train/trainconf"
)

// Bounds of a Spec (Validate). A spec in etcd may come from anyone who can
// write the cluster's keys, so every number is checked before it sizes a
// slice, a loop or a wait.
const (
	MaxWorkers     = 4096 // Workers, and the length of Assigned
	MaxAttemptsCap = 100  // MaxAttempts and Attempt
	MaxIDLen       = 128  // bytes of a job ID
	// Golden batches: rows, tokens in all, and steps.
	MaxGoldenRows   = 1 << 12
	MaxGoldenTokens = 1 << 22
	MaxGoldenSteps  = 1 << 16
)

// DecodeSpec decodes a spec as stored in etcd and validates it (Validate):
// it returns either a clear error or a spec whose every number is in
// range and whose paths are well formed. Where those paths lead is each
// worker's check (ResolvePaths).
func DecodeSpec(b []byte) (*Spec, error) {
	var sp Spec
	if err := json.Unmarshal(b, &sp); err != nil {
		return nil, fmt.Errorf("jobs: decode job spec: %w", err)
	}
	if err := sp.Validate(); err != nil {
		return nil, err
	}
	return &sp, nil
}

// Validate reports every problem of sp (errors.Join), prefixed with its
// ID: its scheduling fields (validateScheduling) and its task: the golden
// task if set, else the training job (trainconf.JobConfig.Validate). It
// does not look at the filesystem.
func (sp *Spec) Validate() error {
	errs := sp.validateScheduling()
	if g := sp.Golden; g != nil {
		errs = append(errs, g.validate()...)
	} else if err := sp.Job.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("jobs: job %q: invalid spec: %w", sp.ID, err)
	}
	return nil
}

// validateScheduling checks what the scheduler and the job runners act on:
// the ID, the worker count, attempts, state and ranks.
func (sp *Spec) validateScheduling() []error {
	var errs []error
	if err := checkID(sp.ID); err != nil {
		errs = append(errs, err)
	}
	if sp.Workers < 1 || sp.Workers > MaxWorkers {
		errs = append(errs, fmt.Errorf("workers %d is out of range [1, %d]", sp.Workers, MaxWorkers))
	}
	if sp.MaxAttempts < 0 || sp.MaxAttempts > MaxAttemptsCap {
		errs = append(errs, fmt.Errorf("max attempts %d is out of range [0, %d]", sp.MaxAttempts, MaxAttemptsCap))
	}
	if sp.Attempt < 0 || sp.Attempt > MaxAttemptsCap || sp.State == Submitted && sp.Attempt == MaxAttemptsCap {
		// A submitted job's next attempt is Attempt+1.
		errs = append(errs, fmt.Errorf("attempt %d is out of range [0, %d]", sp.Attempt, MaxAttemptsCap))
	}
	switch sp.State {
	case Submitted, Assigned, Running, Done, Failed, Abandoned:
	default:
		errs = append(errs, fmt.Errorf("unknown state %q", sp.State))
	}
	if sp.MinWorkers < 0 || sp.MinWorkers > sp.Workers {
		errs = append(errs, fmt.Errorf("min workers %d is out of range [0, workers %d]", sp.MinWorkers, sp.Workers))
	}
	if len(sp.Assigned) > max(sp.Workers, 0) {
		errs = append(errs, fmt.Errorf("%d ranks assigned for %d workers", len(sp.Assigned), sp.Workers))
	}
	if (sp.State == Assigned || sp.State == Running) && (len(sp.Assigned) < sp.Min() || len(sp.Assigned) > sp.Workers) {
		errs = append(errs, fmt.Errorf("state %s with %d ranks assigned for %d to %d workers", sp.State, len(sp.Assigned), sp.Min(), sp.Workers))
	}
	seen := map[string]bool{}
	for i, w := range sp.Assigned {
		if w == "" || seen[string(w)] {
			errs = append(errs, fmt.Errorf("rank %d: worker %q is empty or assigned twice", i, w))
		}
		seen[string(w)] = true
	}
	return errs
}

// checkID accepts 1..MaxIDLen bytes of [A-Za-z0-9._-], not "." or "..": an
// ID is one etcd key segment.
func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen || id == "." || id == ".." {
		return fmt.Errorf("bad job id %q (1 to %d of A-Z a-z 0-9 . _ -)", id, MaxIDLen)
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("bad job id %q (1 to %d of A-Z a-z 0-9 . _ -)", id, MaxIDLen)
		}
	}
	return nil
}

func (g *GoldenTask) validate() []error {
	var errs []error
	for _, p := range []struct{ name, path string }{{"golden model", g.ModelDir}, {"golden output", g.Out}} {
		if p.path == "" {
			errs = append(errs, fmt.Errorf("%s directory is required", p.name))
		} else if err := trainconf.CheckPath(p.name, p.path); err != nil {
			errs = append(errs, err)
		}
	}
	if g.Steps < 0 || g.Steps > MaxGoldenSteps {
		errs = append(errs, fmt.Errorf("golden steps %d is out of range [0, %d]", g.Steps, MaxGoldenSteps))
	}
	if g.Steps > 0 {
		if err := g.AdamW.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(g.IDs) == 0 || len(g.IDs) > MaxGoldenRows {
		errs = append(errs, fmt.Errorf("golden batch of %d rows (1 to %d)", len(g.IDs), MaxGoldenRows))
	}
	total := 0
	for i, row := range g.IDs {
		total += len(row)
		if len(row) == 0 {
			errs = append(errs, fmt.Errorf("golden batch row %d is empty", i))
		}
		for _, id := range row {
			if id < 0 {
				errs = append(errs, fmt.Errorf("golden batch row %d: token id %d < 0", i, id))
				break
			}
		}
		if total > MaxGoldenTokens {
			errs = append(errs, fmt.Errorf("golden batch of more than %d tokens", MaxGoldenTokens))
			break
		}
	}
	return errs
}

// ResolvePaths returns sp with every path it names (the training job's,
// or the golden task's) resolved against a worker's data root, as
// dataroot.Resolve does: relative paths are joined to root, and a path
// that leads outside it, once cleaned and its symbolic links followed, is
// an error naming the path and root. A worker runs a job only on the
// paths this returns.
func (sp Spec) ResolvePaths(root string) (Spec, error) {
	if g := sp.Golden; g != nil {
		c := *g
		var errs []error
		for _, p := range []struct {
			name string
			path *string
		}{{"golden model", &c.ModelDir}, {"golden output", &c.Out}} {
			real, err := dataroot.Resolve(root, *p.path)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
				continue
			}
			*p.path = real
		}
		if err := errors.Join(errs...); err != nil {
			return sp, fmt.Errorf("jobs: job %q: %w", sp.ID, err)
		}
		sp.Golden = &c
		return sp, nil
	}
	job, err := sp.Job.ResolvePaths(root)
	if err != nil {
		return sp, fmt.Errorf("jobs: job %q: %w", sp.ID, err)
	}
	sp.Job = job
	return sp, nil
}
