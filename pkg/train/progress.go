package train

// Progress receives what a run reports: log lines while it prepares, and
// one Event per finished step, held-out evaluation and saved checkpoint.
// Only rank 0 of a distributed run reports. Calls come one at a time from
// the goroutine running the training loop, between steps, so an
// implementation that blocks delays training. The trainer renders
// nothing itself: `switchyard train` draws a progress bar and the loss
// curve (internal/cli), a worker's job runner publishes the job's status
// in etcd (internal/jobrunner).
type Progress interface {
	// Logf reports a message line (tokenizer trained, resuming, model size).
	Logf(format string, args ...any)
	// Observe reports a step, an evaluation or a checkpoint.
	Observe(ev Event)
}

// Event is one observation of a running job. Exactly one kind is set:
// a checkpoint (Checkpoint != ""), an evaluation (EvalLoss != 0), else a
// training step.
type Event struct {
	Step       int     // steps done
	Loss       float64 // training loss of Step (step events)
	LR         float64 // learning rate of Step (step events)
	TokensPerS float64 // training throughput since the run (or its last checkpoint) started (step events)
	EvalLoss   float64 // held-out loss after Step (evaluation events)
	// Checkpoint is the folder just written (checkpoint events); its
	// trainer_state.json holds every step's loss and every evaluation so
	// far (ReadTrainerState).
	Checkpoint string
}

// silent is the Progress of ranks other than 0 and of callers that pass nil.
type silent struct{}

func (silent) Logf(string, ...any) {}
func (silent) Observe(Event)       {}
