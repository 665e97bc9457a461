package coordinator

import (
	"slices"
	"sort"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/placement"
)

// migration is the state of a transitional placement (make-before-break).
type migration struct {
	epoch cluster.Epoch // of the transitional placement written
	// loading maps each new copy not yet confirmed to the epoch that first
	// gave it: its worker has loaded it once it reports that epoch applied.
	loading  map[placement.Copy]cluster.Epoch
	timedOut bool // the runner's wait is over: stop waiting for loading
}

// workers lists the workers with copies still loading, sorted.
func (m *migration) workers() []cluster.WorkerID {
	var ids []cluster.WorkerID
	for cp := range m.loading {
		if !slices.Contains(ids, cp.Worker) {
			ids = append(ids, cp.Worker)
		}
	}
	slices.Sort(ids)
	return ids
}

// transition returns the placement to store on the way to next, and the
// migration it starts or continues (nil: next is final). The copies still
// loading are the new copies of next against the stored placement, plus
// those of the current migration whose workers are alive, still hold them
// in next and have not reported their epoch applied (none once the wait
// timed out). While any load is pending, each expert being loaded keeps its
// stored copies on live workers as extra replicas after next's owners, as
// far as each such worker's budget allows.
func (c *Core) transition(fp string, st *modelState, next *cluster.Placement, in placement.Input, live map[cluster.WorkerID]bool) (cluster.Placement, *migration) {
	if st.placement == nil {
		return *next, nil // nothing held yet: nothing to keep
	}
	loading := map[placement.Copy]cluster.Epoch{}
	if st.mig != nil && !st.mig.timedOut {
		for cp, e := range st.mig.loading {
			if live[cp.Worker] && slices.Contains(next.OwnersOf(cp.Expert), cp.Worker) && !c.hasApplied(fp, cp.Worker, e) {
				loading[cp] = e
			}
		}
	}
	for _, cp := range placement.Diff(st.placement, next).Added {
		loading[cp] = st.placement.Epoch + 1
	}
	if len(loading) == 0 {
		return *next, nil
	}
	want := withExtras(next, st.placement, loading, in, live)
	if placement.Equal(&want, next) {
		return *next, nil // no old copy can stay: nothing to wait for
	}
	return want, &migration{loading: loading}
}

func (c *Core) hasApplied(fp string, w cluster.WorkerID, e cluster.Epoch) bool {
	a, ok := c.applied[w]
	return ok && a.model == fp && a.epoch >= e
}

// withExtras returns next plus, for every expert with a copy in loading,
// its owners in stored that are live and not owners in next, appended
// after next's owners in stored's order, each only while the worker's
// expert budget (MemBytes, as pkg/placement counts it; 0: unlimited) holds
// what next gives it plus the extras kept so far. Experts are taken in
// (layer, expert) order.
func withExtras(next, stored *cluster.Placement, loading map[placement.Copy]cluster.Epoch, in placement.Input, live map[cluster.WorkerID]bool) cluster.Placement {
	size := map[expert.ID]int64{}
	for _, x := range in.Experts {
		size[x.ID] = x.Bytes
	}
	used := map[cluster.WorkerID]int64{}
	for l, row := range next.Owners {
		for e, ws := range row {
			for _, w := range ws {
				used[w] += size[expert.ID{Layer: l, Expert: e}]
			}
		}
	}
	budget := func(w cluster.WorkerID) int64 {
		if mem := next.Workers[w].MemBytes; mem > 0 {
			return mem
		}
		return -1
	}
	var moving []expert.ID
	for cp := range loading {
		if !slices.Contains(moving, cp.Expert) {
			moving = append(moving, cp.Expert)
		}
	}
	sort.Slice(moving, func(i, j int) bool {
		a, b := moving[i], moving[j]
		return a.Layer < b.Layer || (a.Layer == b.Layer && a.Expert < b.Expert)
	})
	out := next.Clone()
	for _, x := range moving {
		owners := out.OwnersOf(x)
		if owners == nil {
			continue
		}
		for _, o := range stored.OwnersOf(x) {
			if !live[o] || slices.Contains(owners, o) {
				continue
			}
			if _, ok := out.Workers[o]; !ok {
				continue
			}
			if b := budget(o); b >= 0 && used[o]+size[x] > b {
				continue
			}
			owners = append(owners, o)
			used[o] += size[x]
		}
		out.Owners[x.Layer][x.Expert] = owners
	}
	return out
}
