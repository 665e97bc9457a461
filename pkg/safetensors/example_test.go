package safetensors_test

import (
	"fmt"
	"log"
	"os"

	"github.com/switchyard/switchyard/pkg/safetensors"
)

// A worker that owns expert 1 of layer 0 reads only that expert's weights
// from a sharded checkpoint, into a buffer it allocated once.
func Example() {
	dir, err := os.MkdirTemp("", "ckpt")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// D = 2 (hidden), F = 3 (expert intermediate), E = 2 experts.
	tensors := []safetensors.Tensor{
		safetensors.F32Tensor("model.layers.0.mlp.gate.weight", []int{2, 2}, []float32{1, 0, 0, 1}),
		safetensors.F32AsBF16Tensor("model.layers.0.mlp.experts.0.up_proj.weight", []int{3, 2}, []float32{1, 2, 3, 4, 5, 6}),
		safetensors.F32AsBF16Tensor("model.layers.0.mlp.experts.1.up_proj.weight", []int{3, 2}, []float32{6, 5, 4, 3, 2, 1}),
	}
	if err := safetensors.WriteSharded(dir, tensors, map[string]string{"format": "pt"}, 16); err != nil {
		log.Fatal(err)
	}

	set, err := safetensors.OpenDir(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer set.Close()
	up := make([]float32, 3*2) // (F, D)
	if err := set.ReadFloat32("model.layers.0.mlp.experts.1.up_proj.weight", up, 3, 2); err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(set.Files()), "shards;", up)

	_, err = set.Float32("model.layers.0.mlp.experts.1.up_proj.weight", 2, 3)
	fmt.Println(err != nil)
	// Output:
	// 3 shards; [6 5 4 3 2 1]
	// true
}
