package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/switchyard/switchyard/pkg/train"
)

// Progress renders training progress: a progress bar (step, loss,
// tokens/s, ETA) on a terminal; elsewhere (CI logs, files) a plain log line
// at most every Interval, so logs are not flooded. It is the train.Progress
// of `switchyard train` and `quickstart` (Observe), and what they feed
// from a job's status in etcd when workers train (Step).
type Progress struct {
	w        io.Writer
	bar      *progressbar.ProgressBar
	total    int
	start    time.Time
	last     time.Time
	Interval time.Duration // non-terminal log interval, default 10 s
	// OnCheckpoint, if set, is called with every checkpoint a run
	// reports (Observe); `switchyard train` draws the loss curve there.
	OnCheckpoint func(dir string)
}

// NewProgress reports to w (nil: nowhere); a bar is drawn only if w is a
// terminal. total is the last step, startStep the steps already done.
func NewProgress(w io.Writer, total, startStep int) *Progress {
	p := &Progress{w: w, total: total, start: time.Now(), Interval: 10 * time.Second}
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("train"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		p.bar.Set(startStep)
	}
	return p
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Observe renders one event of a run (train.Progress).
func (p *Progress) Observe(ev train.Event) {
	switch {
	case ev.Checkpoint != "":
		if p.OnCheckpoint != nil {
			p.OnCheckpoint(ev.Checkpoint)
		}
	case ev.EvalLoss != 0:
		p.Logf("train: step %d held-out loss %.4f", ev.Step, ev.EvalLoss)
	default:
		p.Step(ev.Step, ev.Loss, ev.TokensPerS, ev.LR)
	}
}

// Step reports step (1-based count of steps done) with its loss and speed.
func (p *Progress) Step(step int, loss, tokPerSec, lr float64) {
	if p.w == nil {
		return
	}
	if p.bar != nil {
		p.bar.Describe(fmt.Sprintf("loss %.4f | %.0f tok/s | lr %.2e", loss, tokPerSec, lr))
		p.bar.Set(step)
		return
	}
	now := time.Now()
	if step == p.total || now.Sub(p.last) >= p.Interval {
		p.last = now
		eta := "?"
		if tokPerSec > 0 && step > 0 {
			per := now.Sub(p.start) / time.Duration(step)
			eta = (per * time.Duration(p.total-step)).Round(time.Second).String()
		}
		fmt.Fprintf(p.w, "train: step %d/%d loss %.4f %.0f tok/s lr %.2e eta %s\n", step, p.total, loss, tokPerSec, lr, eta)
	}
}

// Logf writes a message line (clearing the bar first).
func (p *Progress) Logf(format string, args ...any) {
	if p.w == nil {
		return
	}
	if p.bar != nil {
		p.bar.Clear()
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}

// Done finishes the bar.
func (p *Progress) Done() {
	if p.bar != nil {
		p.bar.Finish()
	}
}
