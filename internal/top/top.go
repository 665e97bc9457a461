// Package top is `switchyard top`: a cluster's dashboard.State drawn as
// plain text that fits a terminal, redrawn every few seconds (like top or
// etcdctl's watch views) for people without a browser. Render draws one
// frame and is pure; Run fetches, draws and waits in a loop; URLSource
// reads the State from a coordinator's or a front end's dashboard API.
package top

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/switchyard/switchyard/internal/dashboard"
)

// HotExperts is how many of the busiest experts a frame lists at most.
const HotExperts = 10

// Default size of a frame when the output is not a terminal.
const (
	DefaultWidth  = 120
	DefaultHeight = 40
)

// ANSI sequences Run writes around and before frames.
const (
	clearHome  = "\x1b[H\x1b[2J" // cursor home, clear the screen
	hideCursor = "\x1b[?25l"
	showCursor = "\x1b[?25h"
)

// Config says how Run draws.
type Config struct {
	// Interval is the wait between frames (default 2 s).
	Interval time.Duration
	// Once draws a single frame as plain text, without ANSI codes, and
	// returns (like `top -b -n 1`, for scripts); a fetch error is
	// returned.
	Once bool
	// Iterations is how many frames to draw; 0 draws until ctx ends.
	Iterations int
	// Timeout bounds each fetch of the State (default 10 s).
	Timeout time.Duration
	// Width and Height fix the frame's size; 0 takes the output's
	// terminal size, read again before each frame so that a resize
	// applies, or DefaultWidth x DefaultHeight when it is no terminal.
	Width, Height int
}

// Run draws src's State on out until ctx ends (then it returns nil) or
// cfg.Iterations frames were drawn: each frame clears the screen, homes the
// cursor and draws the latest State; when a fetch fails the frame says so
// and keeps showing the last State fetched. The cursor is hidden while it
// runs. With cfg.Once it draws one frame as plain text instead.
func Run(ctx context.Context, out io.Writer, src dashboard.Source, cfg Config) error {
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	fetch := func() (*dashboard.State, error) {
		fctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
		st, err := src.State(fctx)
		if err == nil && st == nil {
			err = errors.New("no state")
		}
		return st, err
	}
	if cfg.Once {
		st, err := fetch()
		if err != nil {
			return fmt.Errorf("top: %w", err)
		}
		w, h := frameSize(out, cfg)
		return Render(out, st, w, h)
	}

	if _, err := io.WriteString(out, hideCursor); err != nil {
		return err
	}
	// The cursor comes back however the loop ends; the newline leaves the
	// shell's prompt below the last frame.
	defer func() { _, _ = io.WriteString(out, showCursor+"\n") }()
	var (
		last    *dashboard.State
		timer   *time.Timer
		newline = []byte("\n")
	)
	for frame := 1; ; frame++ {
		st, err := fetch()
		if ctx.Err() != nil {
			return nil
		}
		note := ""
		if err != nil {
			// The header's time says how old the state shown is.
			note = "fetch failed " + time.Now().Format("15:04:05") + ": " + err.Error()
		} else {
			last = st
		}
		w, h := frameSize(out, cfg)
		// One write per frame: the terminal never shows half of one. The
		// last line has no newline, which would scroll a full screen.
		buf := []byte(clearHome)
		for i, l := range lines(last, w, h, note) {
			if i > 0 {
				buf = append(buf, newline...)
			}
			buf = append(buf, l...)
		}
		if _, err := out.Write(buf); err != nil {
			return err
		}
		if cfg.Iterations > 0 && frame >= cfg.Iterations {
			return nil
		}
		if timer == nil {
			timer = time.NewTimer(cfg.Interval)
			defer timer.Stop()
		} else {
			timer.Reset(cfg.Interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
	}
}

// frameSize is cfg's fixed size, else out's terminal size, else the
// default.
func frameSize(out io.Writer, cfg Config) (int, int) {
	w, h := cfg.Width, cfg.Height
	if w > 0 && h > 0 {
		return w, h
	}
	tw, th := DefaultWidth, DefaultHeight
	if f, ok := out.(interface{ Fd() uintptr }); ok {
		fd := int(f.Fd())
		if term.IsTerminal(fd) {
			if cw, ch, err := term.GetSize(fd); err == nil && cw > 0 && ch > 0 {
				tw, th = cw, ch
			}
		}
	}
	if w <= 0 {
		w = tw
	}
	if h <= 0 {
		h = th
	}
	return w, h
}

// Render draws st as at most height lines of at most width columns (one
// column per rune), each ending in a newline: a header (cluster, leader,
// time, healthy workers), the workers, the hottest experts, the training
// jobs with a sparkline of their loss, the serving statistics and each
// model's placement and imbalance. Sections that do not fit are cut
// (saying how many rows were left out); lines are cut, never wrapped.
func Render(w io.Writer, st *dashboard.State, width, height int) error {
	var b strings.Builder
	for _, l := range lines(st, width, height, "") {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// section is a block of a frame: head lines always shown with its rows,
// rows shown as far as room allows.
type section struct {
	head []string
	rows []string
	max  int  // most rows to show (0: all)
	more bool // a cut list ends with "… N more"
}

// lines lays a frame out: st (nil: none fetched yet) with note (an error
// to show, "" none) in width x height.
func lines(st *dashboard.State, width, height int, note string) []string {
	if width <= 0 || height <= 0 {
		return nil
	}
	var top []string
	if st == nil {
		top = append(top, "switchyard top: no cluster state yet")
	} else {
		top = append(top, header(st))
	}
	if note != "" {
		top = append(top, "! "+clean(note))
	}
	if st == nil {
		return fit(top, width, height)
	}
	secs := []*section{workers(st), hot(st), jobs(st, width), serving(st), models(st)}

	// Every section gets its head and a first row; the rest of the
	// height goes round the sections one row at a time, so a long list
	// does not push the others off the screen.
	room := height - len(top)
	shown := make([]int, len(secs))
	want := func(i int) int {
		n := len(secs[i].rows)
		if secs[i].max > 0 && n > secs[i].max {
			n = secs[i].max
		}
		return n
	}
	for i, s := range secs {
		room -= len(s.head)
		if want(i) > 0 {
			shown[i] = 1
			room--
		}
	}
	for room > 0 {
		gave := false
		for i := range secs {
			if room > 0 && shown[i] < want(i) {
				shown[i]++
				room--
				gave = true
			}
		}
		if !gave {
			break
		}
	}
	// A blank line between sections when every one fits.
	gap := room >= len(secs)
	out := top
	for i, s := range secs {
		if gap {
			out = append(out, "")
		}
		out = append(out, s.head...)
		rows := s.rows[:shown[i]]
		if n := len(s.rows); s.more && shown[i] < n && shown[i] >= 2 {
			rows = append(slices.Clip(rows[:len(rows)-1]), fmt.Sprintf("  … %d more", n-shown[i]+1))
		}
		out = append(out, rows...)
	}
	return fit(out, width, height)
}

// fit cuts ls to height lines of width runes.
func fit(ls []string, width, height int) []string {
	if len(ls) > height {
		ls = ls[:height]
	}
	for i, l := range ls {
		ls[i] = cut(l, width)
	}
	return ls
}

// cut shortens s to w runes, the last one "…" when something was cut.
func cut(s string, w int) string {
	if w <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= w {
		return s
	}
	r := []rune(s)
	return string(r[:w-1]) + "…"
}

// clean makes a string from the cluster safe to print: control
// characters (an ANSI escape in a worker ID) become '?'.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

func header(st *dashboard.State) string {
	healthy := 0
	for _, w := range st.Workers {
		if w.Healthy {
			healthy++
		}
	}
	leader := st.Leader
	if leader == "" {
		leader = "none"
	}
	when := "-"
	if !st.Time.IsZero() {
		when = st.Time.Local().Format("2006-01-02 15:04:05")
	}
	return fmt.Sprintf("switchyard top  cluster %s  leader %s  %s  workers %d/%d healthy",
		clean(st.Cluster), clean(leader), when, healthy, len(st.Workers))
}

func workers(st *dashboard.State) *section {
	if len(st.Workers) == 0 {
		return &section{rows: []string{"no workers registered"}}
	}
	t := table{right: []bool{false, false, false, true, true, true, true}}
	t.add("WORKER", "ADDR", "HEALTH", "EXPERTS", "HELD/BUDGET", "EPOCH", "TOK/S")
	for _, w := range st.Workers {
		health := "ok"
		if !w.Healthy {
			health = "LATE"
		}
		health += fmt.Sprintf(" %ds", w.TTLSeconds)
		budget := "-"
		if w.BudgetBytes > 0 {
			budget = bytesHuman(w.BudgetBytes)
		}
		t.add(w.ID, w.Addr, health, fmt.Sprint(w.Experts), bytesHuman(w.HeldBytes)+" / "+budget,
			fmt.Sprint(w.Epoch), rate(w.TokensPerS))
	}
	ls := t.lines()
	return &section{head: ls[:1], rows: ls[1:], more: true}
}

// hotCell is one expert of one model.
type hotCell struct {
	model         string
	layer, expert int
	cell          dashboard.Cell
}

// hottest returns st's busiest experts across models, at most n: by
// tokens per second, then (the rates being equal, e.g. all 0 before the
// collector measured one) by tokens. Experts that computed nothing are
// left out.
func hottest(st *dashboard.State, n int) []hotCell {
	var all []hotCell
	for _, m := range st.Models {
		name := m.Name
		if name == "" {
			name = m.Fingerprint
		}
		for row, cells := range m.Grid {
			layer := row
			if row < len(m.GridLayers) {
				layer = m.GridLayers[row]
			}
			for e, c := range cells {
				if c.Tokens == 0 && !(c.TokensPerS > 0) {
					continue
				}
				all = append(all, hotCell{model: name, layer: layer, expert: e, cell: c})
			}
		}
	}
	slices.SortStableFunc(all, func(a, b hotCell) int {
		if c := cmp.Compare(b.cell.TokensPerS, a.cell.TokensPerS); c != 0 {
			return c
		}
		return cmp.Compare(b.cell.Tokens, a.cell.Tokens)
	})
	if len(all) > n {
		all = all[:n]
	}
	return all
}

func hot(st *dashboard.State) *section {
	cells := hottest(st, HotExperts)
	if len(cells) == 0 {
		return &section{rows: []string{"no expert tokens routed yet"}}
	}
	many := len(st.Models) > 1
	t := table{right: []bool{false, true, true, false}}
	if many {
		t.right = append([]bool{false}, t.right...)
	}
	row := func(cols ...string) {
		if !many {
			cols = cols[1:]
		}
		t.add(cols...)
	}
	row("MODEL", "HOT EXPERT", "TOK/S", "TOKENS", "OWNERS")
	for _, h := range cells {
		owners := "none"
		if len(h.cell.Owners) > 0 {
			owners = fmt.Sprintf("%s (%d/%d live)", strings.Join(h.cell.Owners, ","), h.cell.Live, len(h.cell.Owners))
		}
		row(h.model, fmt.Sprintf("L%d/E%d", h.layer, h.expert), rate(h.cell.TokensPerS), count(h.cell.Tokens), owners)
	}
	ls := t.lines()
	return &section{head: ls[:1], rows: ls[1:]}
}

// Longest sparkline a job gets, and the shortest worth drawing.
const (
	maxSpark = 40
	minSpark = 4
)

func jobs(st *dashboard.State, width int) *section {
	if len(st.Jobs) == 0 {
		return &section{rows: []string{"no training jobs"}}
	}
	t := table{right: []bool{false, false, true, true, true, true}}
	t.add("JOB", "STATE", "TRY", "STEP", "LOSS", "TOK/S")
	for _, j := range st.Jobs {
		step := fmt.Sprint(j.Step)
		if j.Steps > 0 {
			step += "/" + fmt.Sprint(j.Steps)
		}
		loss := "-"
		if j.Step > 0 || j.Loss != 0 {
			loss = fmt.Sprintf("%.4f", j.Loss)
		}
		t.add(j.ID, j.State, fmt.Sprint(j.Attempt), step, loss, rate(j.TokensPerS))
	}
	ls := t.lines()
	// The curve takes what is left of the width after the columns.
	n := width - utf8.RuneCountInString(ls[0]) - 2
	n = min(n, maxSpark)
	if n >= minSpark {
		ls[0] += "  LOSS CURVE"
	}
	for i, j := range st.Jobs {
		l := &ls[i+1]
		if n >= minSpark && len(j.Curve) > 0 {
			*l += "  " + sparkline(j.Curve, n)
		}
		if j.Error != "" {
			*l += "  error: " + clean(j.Error)
		}
	}
	return &section{head: ls[:1], rows: ls[1:], more: true}
}

// sparkBars are the eight levels of a sparkline, lowest first.
var sparkBars = []rune("▁▂▃▄▅▆▇█")

// sparkline draws the loss of the last n points of curve, one rune each,
// scaled from their lowest (▁) to their highest (█); a point that is not
// a finite number is a space.
func sparkline(curve []dashboard.Point, n int) string {
	if n <= 0 || len(curve) == 0 {
		return ""
	}
	if len(curve) > n {
		curve = curve[len(curve)-n:]
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range curve {
		if finite(p.Loss) {
			lo, hi = min(lo, p.Loss), max(hi, p.Loss)
		}
	}
	var b strings.Builder
	for _, p := range curve {
		switch {
		case !finite(p.Loss):
			b.WriteByte(' ')
		case hi <= lo:
			b.WriteRune(sparkBars[0])
		default:
			lvl := int(math.Round((p.Loss - lo) / (hi - lo) * float64(len(sparkBars)-1)))
			b.WriteRune(sparkBars[max(0, min(lvl, len(sparkBars)-1))])
		}
	}
	return b.String()
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func serving(st *dashboard.State) *section {
	s := st.Serving
	fronts := len(st.Frontend)
	if fronts == 0 && s.Requests == 0 && s.Active == 0 && s.Queued == 0 && s.TokensPerS == 0 {
		return &section{rows: []string{"serving  no front end publishing"}}
	}
	l := fmt.Sprintf("serving  %s tok/s  active %d  queued %d  ttft p50/p99 %s/%s  itl p50/p99 %s/%s  requests %s  front ends %d",
		rate(s.TokensPerS), s.Active, s.Queued, ms(s.TTFTMs.P50), ms(s.TTFTMs.P99), ms(s.ITLMs.P50), ms(s.ITLMs.P99),
		count(s.Requests), fronts)
	return &section{rows: []string{l}}
}

func models(st *dashboard.State) *section {
	if len(st.Models) == 0 {
		return &section{rows: []string{"no models"}}
	}
	var rows []string
	for _, m := range st.Models {
		name := m.Name
		if name == "" {
			name = m.Fingerprint
		}
		verdict := "placement ok"
		if !m.OK {
			verdict = "placement NOT ok"
			if m.Verdict != "" {
				verdict += ": " + m.Verdict
			}
		}
		if m.Epoch == 0 {
			verdict = "not placed yet"
		}
		l := fmt.Sprintf("model %s  imbalance by expert %s, by worker %s  epoch %d  unplaced %d  %s  %d layers x %d experts, %d replicas",
			name, ratio(m.ImbalanceByExpert), ratio(m.ImbalanceByWorker), m.Epoch, len(m.Unplaced), verdict,
			m.Layers, m.Experts, m.Replicas)
		rows = append(rows, clean(l))
	}
	return &section{rows: rows, more: true}
}

// table aligns columns: each as wide as its widest cell, two spaces
// apart, right-aligned where right says so.
type table struct {
	right []bool
	rows  [][]string
}

// Widest a column gets; longer cells are cut.
const maxCol = 32

func (t *table) add(cols ...string) {
	for i, c := range cols {
		cols[i] = cut(clean(c), maxCol)
	}
	t.rows = append(t.rows, cols)
}

func (t *table) lines() []string {
	var width []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	out := make([]string, len(t.rows))
	for k, r := range t.rows {
		var b strings.Builder
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i < len(t.right) && t.right[i] {
				b.WriteString(pad + c)
			} else if i < len(r)-1 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(c) // no trailing spaces
			}
		}
		out[k] = b.String()
	}
	return out
}

// bytesHuman prints a byte count with a binary unit: "1.5 GiB".
func bytesHuman(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n), 0
	for v >= unit && u < 5 {
		v /= unit
		u++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[u-1])
}

// rate prints a per-second figure compactly: "812.4", "12.3k", "4.1M".
func rate(v float64) string {
	switch {
	case !finite(v) || v <= 0:
		return "-"
	case v < 1e3:
		return fmt.Sprintf("%.1f", v)
	case v < 1e6:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v < 1e9:
		return fmt.Sprintf("%.1fM", v/1e6)
	}
	return fmt.Sprintf("%.1fG", v/1e9)
}

// count prints a counter compactly: "812", "12.3k", "4.10M".
func count(n uint64) string {
	switch {
	case n < 1e3:
		return fmt.Sprint(n)
	case n < 1e6:
		return fmt.Sprintf("%.1fk", float64(n)/1e3)
	case n < 1e9:
		return fmt.Sprintf("%.2fM", float64(n)/1e6)
	}
	return fmt.Sprintf("%.2fG", float64(n)/1e9)
}

// ms prints a latency in milliseconds ("-": no sample).
func ms(v float64) string {
	switch {
	case !finite(v) || v <= 0:
		return "-"
	case v < 10:
		return fmt.Sprintf("%.1fms", v)
	}
	return fmt.Sprintf("%.0fms", v)
}

// ratio prints an imbalance ("-": nothing routed).
func ratio(v float64) string {
	if !finite(v) || v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}
