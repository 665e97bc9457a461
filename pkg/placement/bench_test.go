package placement

import (
	"testing"
)

// BenchmarkPlaceDeepSeekV3 places a DeepSeek-V3-sized model (58 MoE layers
// x 256 experts, R=2) on 16 workers, then re-places after a 17th joins.
func BenchmarkPlaceDeepSeekV3(b *testing.B) {
	layers := make([]int, 58)
	for i := range layers {
		layers[i] = i + 3
	}
	in := Input{Model: "ds3", Experts: uniformExperts(layers, 256, 44<<20), Workers: workers(16, 0), Replicas: 2}
	for b.Loop() {
		in.Prev = nil
		in.Workers = workers(16, 0)
		p, err := Place(in)
		if err != nil {
			b.Fatal(err)
		}
		in.Prev = &p
		in.Workers = workers(17, 0)
		if _, err := Place(in); err != nil {
			b.Fatal(err)
		}
	}
}
