package main

import (
	"slices"
	"testing"
)

// TestRoutingDelta: the rows routed in the window are the counters'
// growth per (layer, expert), layers ascending and every layer as wide as
// the widest (an expert never routed to in a layer counts 0); other
// metrics are ignored, and no counters at all give nil. fmtRouting writes
// them as "LAYER:ROWS,...;..." (what simulate.ReadServeBench parses).
func TestRoutingDelta(t *testing.T) {
	const n = "switchyard_frontend_expert_rows_total"
	before := map[string]float64{
		n + `{expert="0",layer="3"}`:              10,
		n + `{expert="2",layer="3"}`:              5,
		n + `{expert="1",layer="1"}`:              7,
		"switchyard_frontend_exchange_rows_total": 100,
	}
	after := map[string]float64{
		n + `{expert="0",layer="3"}`:              14,
		n + `{expert="2",layer="3"}`:              5,
		n + `{expert="1",layer="1"}`:              9,
		n + `{expert="3",layer="1"}`:              6, // first routed inside the window
		"switchyard_frontend_exchange_rows_total": 150,
	}
	layers, rows := routingDelta(before, after)
	if !slices.Equal(layers, []int{1, 3}) || len(rows) != 2 {
		t.Fatalf("layers %v, %d rows; want [1 3]", layers, len(rows))
	}
	if !slices.Equal(rows[0], []int64{0, 2, 0, 6}) || !slices.Equal(rows[1], []int64{4, 0, 0, 0}) {
		t.Errorf("rows %v, want [[0 2 0 6] [4 0 0 0]]", rows)
	}
	if got, want := fmtRouting(layers, rows), "1:0,2,0,6;3:4,0,0,0"; got != want {
		t.Errorf("fmtRouting: %q, want %q", got, want)
	}
	if l, r := routingDelta(before, map[string]float64{"switchyard_frontend_exchange_rows_total": 1}); l != nil || r != nil {
		t.Errorf("no routing counters: %v %v, want nil", l, r)
	}
}
