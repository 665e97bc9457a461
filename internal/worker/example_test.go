package worker_test

import (
	"context"
	"log"

	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
)

// A client of a running cluster: dense layers in this process, every MoE
// layer exchanged with the workers that own the chosen experts.
func Example_client() {
	ctx := context.Background()
	cli, err := registry.Dial(ctx, []string{"http://127.0.0.1:2379"})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	reg, _ := registry.New(cli, registry.DefaultCluster)

	ck, err := model.Open("path/to/model")
	if err != nil {
		log.Fatal(err)
	}
	defer ck.Close()
	m, err := ck.Load(model.LoadOptions{KeepBF16: true, Experts: func(expert.ID) bool { return false }})
	if err != nil {
		log.Fatal(err)
	}
	fp := ck.Config.Fingerprint()

	pool, err := transport.NewPool(transport.ClientConfig{Worker: "my-client", Model: fp})
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	src := worker.NewEtcdPlacement(reg, fp, 0)
	defer src.Close() // before cli.Close
	// Optional: wait until the placement is loaded on its workers.
	if _, err := worker.WaitServing(ctx, reg, pool, fp, nil); err != nil {
		log.Fatal(err)
	}
	m.Experts = transport.NewRemoteExecutor(src, pool)

	out, err := m.Forward(ctx, []*model.Seq{m.NewSeq()}, [][]int32{{1, 2, 3}}, model.Options{})
	if err != nil {
		log.Fatal(err)
	}
	_ = out.Logits
}
