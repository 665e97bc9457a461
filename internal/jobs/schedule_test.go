package jobs

import (
	"slices"
	"strings"
	"testing"
	"time"

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

// TestDecideElastic: a job of 2 to 3 workers starts on what is eligible,
// re-forms without a dead worker whose lease still lives (Dying, or blamed
// by the failing rank under that lease), takes a blamed worker back once
// it re-registers (a new lease), and is abandoned at once after a
// permanent failure.
func TestDecideElastic(t *testing.T) {
	w := func(id string, lease int64, dying bool) Worker {
		return Worker{ID: cluster.WorkerID(id), Lease: lease, Dying: dying}
	}
	j := &Spec{ID: "e", Workers: 3, MinWorkers: 2, MaxAttempts: 5, State: Submitted}

	// Only one eligible worker (w2 is dying): wait.
	if out := DecideWorkers([]*Spec{j}, []Worker{w("w1", 1, false), w("w2", 2, true)}); len(out) != 0 {
		t.Fatalf("assigned with one eligible worker: %+v", out)
	}
	// Two eligible of three live: start on those two.
	out := DecideWorkers([]*Spec{j}, []Worker{w("w1", 1, false), w("w2", 2, true), w("w3", 3, false)})
	a := find(out, "e")
	if a == nil || a.State != Assigned || !slices.Equal(a.Assigned, ids("w1", "w3")) {
		t.Fatalf("first attempt: %+v", a)
	}
	// Four live and idle: take up to Workers.
	out = DecideWorkers([]*Spec{j}, []Worker{w("w1", 1, false), w("w2", 2, false), w("w3", 3, false), w("w4", 4, false)})
	if a = find(out, "e"); a == nil || !slices.Equal(a.Assigned, ids("w1", "w2", "w3")) {
		t.Fatalf("max 3: %+v", a)
	}
	// w2 is SIGKILLed: a rank blames it; its lease (2) still lives.
	a.State, a.Error, a.Suspects = Failed, "attempt 1, rank 0: w2 unreachable", []Suspect{{Worker: "w2"}}
	live := []Worker{w("w1", 1, false), w("w2", 2, false), w("w3", 3, false)}
	out = DecideWorkers([]*Spec{a}, live)
	b := find(out, "e")
	if b == nil || b.State != Assigned || b.Attempt != 2 || !slices.Equal(b.Assigned, ids("w1", "w3")) || !b.Job.Resume {
		t.Fatalf("re-formed attempt: %+v", b)
	}
	if len(b.Suspects) != 1 || b.Suspects[0].Lease != 2 || len(b.History) != 1 {
		t.Fatalf("suspect not pinned to its lease: %+v", b.Suspects)
	}
	// A suspect still renewing the same lease SuspectFor after the blame is
	// alive (it only aborted its group): taken back rather than waited for.
	stale := *b
	stale.State, stale.Attempt, stale.Assigned = Submitted, 1, nil
	stale.Suspects = []Suspect{{Worker: "w2", Lease: 2, Since: time.Now().Add(-SuspectFor - time.Second)}}
	if c := find(DecideWorkers([]*Spec{&stale}, live), "e"); c == nil || !slices.Equal(c.Assigned, ids("w1", "w2", "w3")) {
		t.Fatalf("a suspect alive after SuspectFor not taken back: %+v", c)
	}
	// The next failure: w2 has re-registered (lease 7): eligible again.
	b.State, b.Error = Failed, "boom"
	out = DecideWorkers([]*Spec{b}, []Worker{w("w1", 1, false), w("w2", 7, false), w("w3", 3, false)})
	if c := find(out, "e"); c == nil || !slices.Equal(c.Assigned, ids("w1", "w2", "w3")) {
		t.Fatalf("restarted worker not taken back: %+v", c)
	}
	// A permanent failure is not retried.
	b.State, b.Error, b.Permanent = Failed, "write checkpoint: no space left on device", true
	out = DecideWorkers([]*Spec{b}, live)
	if c := find(out, "e"); c == nil || c.State != Abandoned || !strings.Contains(c.Error, "not retried") || !strings.Contains(c.Error, "no space") {
		t.Fatalf("permanent failure: %+v", c)
	}
	// A fixed-size job (MinWorkers 0) still needs all its workers.
	f := &Spec{ID: "f", Workers: 3, MaxAttempts: 2, State: Submitted}
	if out := DecideWorkers([]*Spec{f}, []Worker{w("w1", 1, false), w("w3", 3, false)}); len(out) != 0 {
		t.Fatalf("fixed-size job assigned short: %+v", out)
	}
	// A running elastic job below its minimum is invalid (hand-written spec).
	bad := &Spec{ID: "bad", Workers: 3, MinWorkers: 2, MaxAttempts: 2, State: Running, Attempt: 1, Assigned: ids("w1")}
	if c := find(DecideWorkers([]*Spec{bad}, live), "bad"); c == nil || c.State != Abandoned {
		t.Fatalf("1 rank for 2..3: %+v", c)
	}
}
