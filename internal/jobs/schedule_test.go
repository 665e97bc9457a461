package jobs

import (
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/cluster"
)

func ids(s ...string) []cluster.WorkerID {
	out := make([]cluster.WorkerID, len(s))
	for i, x := range s {
		out[i] = cluster.WorkerID(x)
	}
	return out
}

func find(list []*Spec, id string) *Spec {
	for _, s := range list {
		if s.ID == id {
			return s
		}
	}
	return nil
}

func TestDecideScenario(t *testing.T) {
	live := ids("w3", "w1", "w2", "w4")
	a := &Spec{ID: "a", Workers: 2, MaxAttempts: 2, State: Submitted}
	b := &Spec{ID: "b", Workers: 3, MaxAttempts: 2, State: Submitted}
	c := &Spec{ID: "c", Workers: 1, MaxAttempts: 2, State: Submitted}

	// a takes the two lowest idle workers; b does not fit the remaining two; c does.
	out := Decide([]*Spec{a, b, c}, live)
	if got := find(out, "a"); got == nil || got.State != Assigned || !slices.Equal(got.Assigned, ids("w1", "w2")) || got.Attempt != 1 {
		t.Fatalf("a: %+v", got)
	}
	if find(out, "b") != nil {
		t.Fatalf("b assigned without enough workers: %+v", find(out, "b"))
	}
	if got := find(out, "c"); got == nil || !slices.Equal(got.Assigned, ids("w3")) {
		t.Fatalf("c: %+v", got)
	}
	a, c = find(out, "a"), find(out, "c")
	a.State = Running

	// Nothing changes while everyone is alive and busy.
	if out := Decide([]*Spec{a, b, c}, live); len(out) != 0 {
		t.Fatalf("unexpected changes: %+v", out)
	}
	// w2 dies: a fails.
	out = Decide([]*Spec{a, b, c}, ids("w1", "w3", "w4"))
	fa := find(out, "a")
	if fa == nil || fa.State != Failed || !strings.Contains(fa.Error, "worker w2 left") {
		t.Fatalf("a after w2 left: %+v", fa)
	}
	// Next round: a is resubmitted with resume and reassigned to idle live workers.
	out = Decide([]*Spec{fa, b, c}, ids("w1", "w3", "w4"))
	ra := find(out, "a")
	if ra == nil || ra.State != Assigned || !ra.Job.Resume || ra.Attempt != 2 || !slices.Equal(ra.Assigned, ids("w1", "w4")) || len(ra.History) != 1 {
		t.Fatalf("a retried: %+v", ra)
	}
	// A second failure exhausts MaxAttempts = 2.
	ra.State, ra.Error = Failed, "boom"
	out = Decide([]*Spec{ra}, live)
	if g := find(out, "a"); g == nil || g.State != Abandoned || !strings.Contains(g.Error, "gave up after 2 attempts") {
		t.Fatalf("a abandoned: %+v", g)
	}
}
