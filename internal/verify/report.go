// Package verify recomputes the quantities of a reference ("golden") file
// made with Hugging Face transformers and judges each against its tolerance.
// It backs `switchyard verify`, whose output is a stable contract (README,
// "Try it"; scripts parse it): one line per quantity with its error,
// its tolerance and ok / FAIL / skipped, then a last line starting
// "verify: PASS" or "verify: FAIL".
package verify

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Status of one check.
type Status string

const (
	OK      Status = "ok"
	Fail    Status = "FAIL"
	Skipped Status = "skipped"
)

// Check is one judged quantity.
type Check struct {
	Name   string  // e.g. "logits", "hidden_states[2]", "grad.model.norm.weight"
	Metric string  // "rel_l2", "abs", "mismatch" (count of differing elements)
	Err    float64 // the error in Metric's unit
	Tol    float64 // the tolerance: ok iff Err <= Tol
	Status Status
	Note   string // why skipped, or detail on failure
}

// Report is the list of checks of one verify run.
type Report struct {
	Checks []Check
}

// Add judges err against tol and appends the check. NaN errors fail.
func (r *Report) Add(name, metric string, err, tol float64, note string) {
	st := OK
	if !(err <= tol) { // NaN compares false
		st = Fail
	}
	r.Checks = append(r.Checks, Check{Name: name, Metric: metric, Err: err, Tol: tol, Status: st, Note: note})
}

// Skip appends a skipped check.
func (r *Report) Skip(name, why string) {
	r.Checks = append(r.Checks, Check{Name: name, Status: Skipped, Note: why})
}

// Failf appends a failed check that has no numeric error (e.g. it could not
// be computed).
func (r *Report) Failf(name, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, Err: math.NaN(), Status: Fail, Note: fmt.Sprintf(format, args...)})
}

// Counts returns how many checks are ok, failed and skipped.
func (r *Report) Counts() (ok, fail, skipped int) {
	for _, c := range r.Checks {
		switch c.Status {
		case OK:
			ok++
		case Fail:
			fail++
		case Skipped:
			skipped++
		}
	}
	return
}

// Passed reports whether nothing failed and at least one check passed: a
// skipped check never makes a pass by itself. A required quantity missing
// from the golden files is a failed check (see Model), so a PASS means
// every required quantity was present and within its tolerance.
func (r *Report) Passed() bool {
	ok, fail, _ := r.Counts()
	return fail == 0 && ok > 0
}

// Print writes one line per check and the final verdict line.
func (r *Report) Print(w io.Writer) {
	width := 24
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	for _, c := range r.Checks {
		switch {
		case c.Status == Skipped:
			fmt.Fprintf(w, "%-*s  %-34s  skipped  (%s)\n", width, c.Name, "", c.Note)
		case c.Metric == "":
			fmt.Fprintf(w, "%-*s  %-34s  %s  (%s)\n", width, c.Name, "", c.Status, c.Note)
		default:
			line := fmt.Sprintf("%-*s  %-8s %-10s tol %-10s  %s", width, c.Name, c.Metric, fmtNum(c.Metric, c.Err), fmtNum(c.Metric, c.Tol), c.Status)
			if c.Note != "" {
				line += "  (" + c.Note + ")"
			}
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintln(w, r.Verdict())
}

// Verdict is the report's last line: "verify: PASS (n ok, 0 FAIL, m
// skipped)", or "verify: FAIL (...)" followed by the first failed
// quantities (or, with nothing ok, that nothing was checked).
func (r *Report) Verdict() string {
	ok, fail, skipped := r.Counts()
	counts := fmt.Sprintf("(%d ok, %d FAIL, %d skipped)", ok, fail, skipped)
	if r.Passed() {
		return "verify: PASS " + counts
	}
	var names []string
	for _, c := range r.Checks {
		if c.Status == Fail {
			names = append(names, c.Name)
		}
	}
	why := "nothing was checked"
	switch {
	case len(names) > 3:
		why = strings.Join(names[:3], ", ") + fmt.Sprintf(" and %d more", len(names)-3)
	case len(names) > 0:
		why = strings.Join(names, ", ")
	}
	return "verify: FAIL " + counts + ": " + why
}

func fmtNum(metric string, v float64) string {
	if metric == "mismatch" {
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%.3e", v)
}

// RelL2 is ||a-b|| / ||b|| in float64 (0 when both are zero; +Inf when only
// b is zero; NaN when the lengths differ or a value is NaN).
func RelL2(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.NaN()
	}
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		num += d * d
		den += float64(b[i]) * float64(b[i])
	}
	if den == 0 {
		if num == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return math.Sqrt(num / den)
}
