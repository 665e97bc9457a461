package main

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// spanLine writes one span as stdouttrace does (the fields layers reads).
func spanLine(name, id, parent string, start, end time.Time, events ...any) string {
	var ev []string
	for i := 0; i+1 < len(events); i += 2 {
		ev = append(ev, fmt.Sprintf(`{"Name":%q,"Time":%q}`, events[i], events[i+1].(time.Time).Format(time.RFC3339Nano)))
	}
	return fmt.Sprintf(`{"Name":%q,"SpanContext":{"TraceID":"t","SpanID":%q},"Parent":{"TraceID":"t","SpanID":%q},"StartTime":%q,"EndTime":%q,"Events":[%s],"Attributes":[]}`,
		name, id, parent, start.Format(time.RFC3339Nano), end.Format(time.RFC3339Nano), strings.Join(ev, ","))
}

// TestSplitLayers: a layer with two destinations, the second owner's
// GEMMs ending last, is split along that destination, and the parts add
// up to the layer; a layer whose owner's span is missing is skipped.
func TestSplitLayers(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	at := func(us int) time.Time { return t0.Add(time.Duration(us) * time.Microsecond) }
	lines := []string{
		spanLine("moe.layer", "L1", "step", at(0), at(5000)),
		// destination A: sent at 100, served 300..2300 (GEMMs 400..2000)
		spanLine("expert.exchange", "A", "L1", at(20), at(2600), "sent", at(100)),
		spanLine("expert.serve", "a", "A", at(300), at(2300), "batch started", at(400), "batch done", at(2000)),
		// destination B (the critical one): starts 150, sent 250, owner
		// reads it at 1250, queue 50, GEMMs 1300..4500, layer ends 5000
		spanLine("expert.exchange", "B", "L1", at(150), at(4900), "sent", at(250)),
		spanLine("expert.serve", "b", "B", at(1250), at(4700), "batch started", at(1300), "batch done", at(4500)),
		// another layer whose owner's span is missing (sampled out)
		spanLine("moe.layer", "L2", "step", at(6000), at(9000)),
		spanLine("expert.exchange", "C", "L2", at(6010), at(8000), "sent", at(6050)),
		// spans of other kinds are ignored
		spanLine("serve.step", "step", "", at(0), at(9500)),
	}
	spans, err := readTraceSpans(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(spans) != 7 {
		t.Fatalf("%d spans kept, want 7 (the serve.step span dropped)", len(spans))
	}
	p, err := splitLayers(spans, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.dests) != 1 || p.dests[0] != 2 || p.skipped != 1 {
		t.Fatalf("layers %v, skipped %d; want one of 2 destinations, 1 skipped", p.dests, p.skipped)
	}
	want := map[string]float64{
		"layer": 5, "before send": 0.15, "send": 0.1, "to owner": 1.0, "owner queue": 0.05,
		"owner GEMMs": 3.2, "answer, back": 0.5, "GEMMs of all owners": 4.8,
		"longest owner's GEMMs": 3.2, "exchange's own part": 1.8,
		// 100..250 the front end writes B and A waits: 1 core; 250..400
		// A and B wait on 2 idle cores; 400..1300 A runs, B waits: 1.
		"cores idle, owner waits": 0.15 + 0.3 + 0.9,
	}
	sum := 0.0
	for k, name := range layerPart {
		got := p.ms[k][0]
		if math.Abs(got-want[name]) > 1e-9 {
			t.Errorf("%s: %.3f ms, want %.3f", name, got, want[name])
		}
		if k >= 1 && k <= 6 {
			sum += got
		}
	}
	if math.Abs(sum-p.ms[0][0]) > 1e-9 {
		t.Errorf("the critical path's parts add up to %.3f ms, the layer is %.3f", sum, p.ms[0][0])
	}
	if s := p.String(); !strings.Contains(s, "1 MoE layers (2.00 destinations a layer; 1 skipped") {
		t.Errorf("table header: %q", s[:min(len(s), 120)])
	}

	if p1, err := splitLayers(spans, 1); err != nil || math.Abs(p1.ms[10][0]-(0+0+0.15+0)) > 1e-9 {
		// one core: only 250..400 has a free core (A and B wait)
		t.Errorf("on one core: %v, %v ms idle while an owner waits, want 0.15", err, p1.ms[10])
	}
	if _, err := splitLayers(spans[5:], 2); err == nil {
		t.Error("spans with no complete layer: no error")
	}
	if _, err := readTraceSpans(strings.NewReader("{\"Name\":\n")); err == nil {
		t.Error("a line that is not a span: no error")
	}
}

// TestSplitLayersNanoseconds: the spans' times carry nanoseconds, and the
// parts still add up to the layer: no part is truncated to microseconds on
// its own (each such cut left the six parts up to 6 µs short; a traced e2e
// run's means were 5 µs apart).
func TestSplitLayersNanoseconds(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	at := func(ns int) time.Time { return t0.Add(time.Duration(ns)) }
	lines := []string{
		spanLine("moe.layer", "L", "step", at(0), at(900_999)),
		spanLine("expert.exchange", "A", "L", at(10_999), at(800_000), "sent", at(20_999)),
		spanLine("expert.serve", "a", "A", at(300_999), at(700_000), "batch started", at(310_999), "batch done", at(600_999)),
	}
	spans, err := readTraceSpans(strings.NewReader(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := splitLayers(spans, 2)
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for k := 1; k <= 6; k++ {
		sum += p.ms[k][0]
	}
	if math.Abs(p.ms[0][0]-0.900999) > 1e-9 || math.Abs(sum-p.ms[0][0]) > 1e-9 {
		t.Errorf("layer %.6f ms (want 0.900999), its parts add up to %.6f", p.ms[0][0], sum)
	}
}
