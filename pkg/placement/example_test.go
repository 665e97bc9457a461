package placement_test

import (
	"fmt"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/placement"
)

// A third worker joins a two-worker cluster: it takes its share of the
// eight experts from the others, and nothing else moves.
func ExamplePlace() {
	var experts []placement.Expert
	for _, l := range []int{1, 2} { // two MoE layers of four experts
		for e := 0; e < 4; e++ {
			experts = append(experts, placement.Expert{ID: expert.ID{Layer: l, Expert: e}, Bytes: 1 << 20})
		}
	}
	in := placement.Input{
		Model:   "demo",
		Experts: experts,
		Workers: []cluster.WorkerInfo{{ID: "a", Addr: "a:1"}, {ID: "b", Addr: "b:1"}},
	}
	p1, _ := placement.Place(in)
	fmt.Println("epoch", p1.Epoch, "a:", p1.Owned("a"))

	in.Prev = &p1
	in.Workers = append(in.Workers, cluster.WorkerInfo{ID: "c", Addr: "c:1"})
	p2, _ := placement.Place(in)
	load, _ := placement.Diff(&p1, &p2).For("c")
	fmt.Println("epoch", p2.Epoch, "c loads:", load, "counts:", placement.Counts(&p2))
	// Output:
	// epoch 1 a: [L1/E0 L1/E2 L2/E0 L2/E2]
	// epoch 2 c loads: [L1/E3 L2/E2] counts: map[a:3 b:3 c:2]
}
