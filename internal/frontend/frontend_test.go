package frontend

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/etcdtest"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// TestJoinChecksQuantization: a front end that asks for a quantization
// the cluster does not serve is refused with both formats named; one that
// asks for none follows the cluster's record.
func TestJoinChecksQuantization(t *testing.T) {
	e := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := filepath.Join("..", "..", "testdata", "golden", "mixtral")
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	served := registry.NewModelRecord(cfg, dir, 2)
	served.SetQuantize(cfg, tensor.QInt8)
	reg, err := registry.New(e.Client(t), "q")
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.PutModel(ctx, served); err != nil {
		t.Fatal(err)
	}
	asked := registry.NewModelRecord(cfg, dir, 2)
	asked.SetQuantize(cfg, tensor.QQ4)
	_, err = Join(ctx, Options{Endpoints: e.Endpoints, Cluster: "q", Model: asked})
	if !errors.Is(err, registry.ErrModelMismatch) || !strings.Contains(err.Error(), "--quantize q4") || !strings.Contains(err.Error(), "as int8") {
		t.Fatalf("q4 front end on an int8 cluster: %v", err)
	}
	t.Logf("refused: %v", err)
	f, err := Join(ctx, Options{Endpoints: e.Endpoints, Cluster: "q", Model: registry.NewModelRecord(cfg, dir, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Model.Quantize != "int8" || f.Model.ExpertBytes != served.ExpertBytes {
		t.Errorf("front end follows record %+v, want the cluster's int8 one", f.Model)
	}
}
