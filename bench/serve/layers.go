package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// layers splits MoE layers into their parts along the critical path, from
// the OpenTelemetry spans a traced serving run wrote (scripts/bench-serve.sh
// with BENCH_SERVE_TRACE=1: the front end's trace-RATE-fe.jsonl and each
// worker's trace-RATE-wI.jsonl; emulated hosts on one machine share its
// clock, so the processes' timestamps compare directly).
//
// A front end's moe.layer span has one expert.exchange child per
// destination (event "sent" when its request is written), each with the
// owner's expert.serve child (started once the request's header is read;
// events "batch started" and "batch done" around the owner's GEMMs). The
// critical destination is the one whose owner's GEMMs ended last; for it
// (the parts add up to the layer):
//
//	before send   layer start -> its exchange starts (the requests before it)
//	send          its exchange start -> "sent" (building and writing the request)
//	to owner      "sent" -> the owner's span starts (the wire, the owner waking
//	              and being scheduled, reading the request)
//	owner queue   owner span start -> "batch started"
//	owner GEMMs   "batch started" -> "batch done"
//	answer, back  "batch done" -> the layer ends (writing the answer, the wire
//	              back, the front end waking and reading the answers)
//
// It also prints, per layer, the GEMMs of every destination summed and the
// longest (what bench/serve load's "owners'" column is, as owners report it),
// and the layer less that longest: the exchange's own part. And the core
// time the layer left idle while an owner waited: from the layer's start to
// its last GEMMs' end, at each moment min(free cores, owners waiting), where
// an owner waits from its request's "sent" to its "batch started", the
// busy cores are the owners in their GEMMs and the front end until its last
// "sent", and -cores is the machine's (the emulated hosts share it). Not a
// part of the critical path.
func layers(args []string) error {
	fs := flag.NewFlagSet("layers", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: serve layers TRACE.jsonl... (the front end's and the workers' span files of one traced run)")
		fs.PrintDefaults()
	}
	cores := fs.Int("cores", 2, "cores of the machine the emulated hosts share")
	fs.Parse(args)
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("no span files")
	}
	var spans []traceSpan
	for _, p := range fs.Args() {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		s, err := readTraceSpans(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		spans = append(spans, s...)
	}
	parts, err := splitLayers(spans, *cores)
	if err != nil {
		return err
	}
	fmt.Print(parts.String())
	return nil
}

// traceSpan is the part of a span (stdouttrace's JSON) layers reads.
type traceSpan struct {
	Name        string
	SpanContext struct{ SpanID string }
	Parent      struct{ SpanID string }
	StartTime   time.Time
	EndTime     time.Time
	Events      []struct {
		Name string
		Time time.Time
	}
}

func (s *traceSpan) event(name string) (time.Time, bool) {
	for _, e := range s.Events {
		if e.Name == name {
			return e.Time, true
		}
	}
	return time.Time{}, false
}

// readTraceSpans reads one span per line, keeping the serving exchange's
// (moe.layer, expert.exchange, expert.serve).
func readTraceSpans(r io.Reader) ([]traceSpan, error) {
	var out []traceSpan
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for n := 1; sc.Scan(); n++ {
		var s traceSpan
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			return nil, fmt.Errorf("line %d is not a span: %w", n, err)
		}
		switch s.Name {
		case "moe.layer", "expert.exchange", "expert.serve":
			out = append(out, s)
		}
	}
	return out, sc.Err()
}

// layerPart names the columns of layerParts, in order.
var layerPart = []string{
	"layer", "before send", "send", "to owner", "owner queue", "owner GEMMs", "answer, back",
	"GEMMs of all owners", "longest owner's GEMMs", "exchange's own part",
	"cores idle, owner waits",
}

// layerParts holds each part (ms) of every complete layer, and the
// destinations per layer.
type layerParts struct {
	ms      [][]float64 // [part][layer]
	dests   []int
	skipped int // layers without every owner's span (sampled out, or cut by the run's end)
}

// splitLayers splits every layer whose destinations all have their
// owner's span, on a machine of cores cores.
func splitLayers(spans []traceSpan, cores int) (*layerParts, error) {
	kids := map[string][]*traceSpan{}
	for i := range spans {
		s := &spans[i]
		kids[s.Parent.SpanID] = append(kids[s.Parent.SpanID], s)
	}
	// Whole nanoseconds, not truncated to microseconds: each part truncated
	// on its own would leave the six parts up to 6 µs short of the layer.
	ms := func(a, b time.Time) float64 { return float64(b.Sub(a)) / 1e6 }
	p := &layerParts{ms: make([][]float64, len(layerPart))}
layer:
	for i := range spans {
		l := &spans[i]
		if l.Name != "moe.layer" {
			continue
		}
		type dest struct{ ex, sv *traceSpan }
		var ds []dest
		for _, ex := range kids[l.SpanContext.SpanID] {
			if ex.Name != "expert.exchange" {
				continue
			}
			var sv *traceSpan
			for _, k := range kids[ex.SpanContext.SpanID] {
				if k.Name == "expert.serve" {
					sv = k
				}
			}
			_, sent := ex.event("sent")
			if sv == nil || !sent {
				p.skipped++
				continue layer
			}
			if _, ok := sv.event("batch started"); !ok {
				p.skipped++
				continue layer
			}
			ds = append(ds, dest{ex, sv})
		}
		if len(ds) == 0 {
			continue
		}
		var sum, longest float64
		for _, d := range ds {
			bs, _ := d.sv.event("batch started")
			bd, _ := d.sv.event("batch done")
			g := ms(bs, bd)
			sum += g
			longest = max(longest, g)
		}
		done := func(d dest) time.Time { t, _ := d.sv.event("batch done"); return t }
		c := slices.MaxFunc(ds, func(a, b dest) int { return done(a).Compare(done(b)) })
		sent, _ := c.ex.event("sent")
		bs, _ := c.sv.event("batch started")
		bd := done(c)
		lay := ms(l.StartTime, l.EndTime)
		var iv []ownerInterval
		for _, d := range ds {
			s, _ := d.ex.event("sent")
			b, _ := d.sv.event("batch started")
			iv = append(iv, ownerInterval{sent: s, started: b, done: done(d)})
		}
		for k, v := range []float64{
			lay, ms(l.StartTime, c.ex.StartTime), ms(c.ex.StartTime, sent), ms(sent, c.sv.StartTime),
			ms(c.sv.StartTime, bs), ms(bs, bd), ms(bd, l.EndTime),
			sum, longest, lay - longest, idleWhileWaiting(l.StartTime, iv, cores).Seconds() * 1e3,
		} {
			p.ms[k] = append(p.ms[k], v)
		}
		p.dests = append(p.dests, len(ds))
	}
	if len(p.dests) == 0 {
		return nil, fmt.Errorf("no complete MoE layer in the spans (%d spans; %d layers without every owner's span): was the run traced on both sides?", len(spans), p.skipped)
	}
	return p, nil
}

// ownerInterval is one destination of a layer: its request sent, its
// owner's GEMMs started and done.
type ownerInterval struct{ sent, started, done time.Time }

// idleWhileWaiting is the core time of a layer starting at start left idle
// while an owner waited (see layers).
func idleWhileWaiting(start time.Time, iv []ownerInterval, cores int) time.Duration {
	lastSent, end := start, start
	pts := []time.Time{start}
	for _, o := range iv {
		if o.sent.After(lastSent) {
			lastSent = o.sent
		}
		if o.done.After(end) {
			end = o.done
		}
		pts = append(pts, o.sent, o.started, o.done)
	}
	slices.SortFunc(pts, func(a, b time.Time) int { return a.Compare(b) })
	var idle time.Duration
	for i := 1; i < len(pts); i++ {
		a, b := pts[i-1], pts[i]
		if !b.After(a) || a.Before(start) || b.After(end) {
			continue
		}
		mid := a.Add(b.Sub(a) / 2)
		busy, waiting := 0, 0
		if mid.Before(lastSent) {
			busy++ // the front end writing its requests
		}
		for _, o := range iv {
			switch {
			case !mid.Before(o.started) && mid.Before(o.done):
				busy++
			case !mid.Before(o.sent) && mid.Before(o.started):
				waiting++
			}
		}
		idle += b.Sub(a) * time.Duration(max(0, min(cores-busy, waiting)))
	}
	return idle
}

// String is the table: mean and percentiles of each part, ms.
func (p *layerParts) String() string {
	mean := 0.0
	for _, d := range p.dests {
		mean += float64(d)
	}
	out := fmt.Sprintf("%d MoE layers (%.2f destinations a layer; %d skipped: an owner's span missing); ms along the critical destination (its owner's GEMMs ended last):\n",
		len(p.dests), mean/float64(len(p.dests)), p.skipped)
	out += fmt.Sprintf("%-24s %8s %8s %8s %8s\n", "part", "mean", "p10", "p50", "p90")
	for k, name := range layerPart {
		v := slices.Clone(p.ms[k])
		slices.Sort(v)
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		q := func(f float64) float64 { return v[min(len(v)-1, int(f*float64(len(v))))] }
		out += fmt.Sprintf("%-24s %8.3f %8.3f %8.3f %8.3f\n", name, sum/float64(len(v)), q(0.1), q(0.5), q(0.9))
	}
	return out
}
