package train

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/optim"
	"github.com/switchyard/switchyard/pkg/safetensors"
)

// GoldenRank is one rank of the data- and expert-parallel recomputation of
// a golden file's training quantities (`switchyard verify --workers N`):
// the gradients of the mean next-token cross-entropy of the golden batch,
// and the losses of a few AdamW steps on it. Each rank trains on its rows
// of the batch (RankRows); experts live with their owners.
type GoldenRank struct {
	Comm  Comm
	Model *model.Model  // dense replica (float32); Experts reaches every expert
	Owned *expert.Store // experts this rank owns (float32)
	IDs   [][]int32     // the whole golden batch [B][T]
	AdamW optim.AdamWConfig
	Steps int
	// Out receives grads-rank<r>.safetensors from every rank (rank 0's also
	// holds the all-reduced dense gradients) and adamw.json from rank 0.
	Out string
}

// GoldenGradsFile names a rank's gradient file.
func GoldenGradsFile(dir string, rank int) string {
	return filepath.Join(dir, fmt.Sprintf("grads-rank%d.safetensors", rank))
}

// GoldenAdamWFile names rank 0's losses file: {"losses": [...]}.
func GoldenAdamWFile(dir string) string { return filepath.Join(dir, "adamw.json") }

// RunGoldenRank runs one rank; every rank of the group calls it.
func RunGoldenRank(ctx context.Context, g GoldenRank) error {
	s, err := NewDistStepper(g.Model, g.Owned, g.Comm, StepConfig{AdamW: g.AdamW})
	if err != nil {
		return err
	}
	rank, n := g.Comm.Rank(), g.Comm.Size()
	lo, hi := RankRows(len(g.IDs), n, rank)
	mine := g.IDs[lo:hi]
	if _, err := s.Gradients(ctx, mine); err != nil {
		return err
	}
	var ts []safetensors.Tensor
	if rank == 0 {
		for i, r := range s.dense {
			if r.Trained {
				ts = append(ts, safetensors.F32Tensor(r.Name, r.Shape, *s.gdense[i].Data))
			}
		}
	}
	for _, p := range ExpertParams(g.Model.Cfg.Family, s.Store) {
		ts = append(ts, safetensors.F32Tensor(p.Name, expertShape(g.Model.Cfg, p.Name), p.G))
	}
	if err := safetensors.Write(GoldenGradsFile(g.Out, rank), ts, nil); err != nil {
		return err
	}
	var losses []float64
	for step := 0; step < g.Steps; step++ {
		out, err := s.TrainStep(ctx, mine)
		if err != nil {
			return err
		}
		losses = append(losses, out.CE)
	}
	if rank == 0 {
		final, err := EvalLoss(ctx, g.Model, g.IDs)
		if err != nil {
			return err
		}
		b, _ := json.Marshal(map[string]any{"losses": append(losses, final)})
		if err := writeFileSync(GoldenAdamWFile(g.Out), b); err != nil {
			return err
		}
	}
	// Owners keep serving rank 0's evaluation until it is done.
	return g.Comm.Barrier(ctx)
}

// ReadGoldenResults merges the gradient files of n ranks and reads the
// AdamW losses.
func ReadGoldenResults(dir string, n int) (grads map[string][]float32, shapes map[string][]int, losses []float64, err error) {
	grads, shapes = map[string][]float32{}, map[string][]int{}
	for r := 0; r < n; r++ {
		f, err := safetensors.Open(GoldenGradsFile(dir, r))
		if err != nil {
			return nil, nil, nil, err
		}
		for _, name := range f.Names() {
			v, err := f.Float32(name)
			if err != nil {
				f.Close()
				return nil, nil, nil, err
			}
			info, _ := f.Info(name)
			grads[name], shapes[name] = v, info.Shape
		}
		f.Close()
	}
	b, err := os.ReadFile(GoldenAdamWFile(dir))
	if err != nil {
		return nil, nil, nil, err
	}
	var a struct {
		Losses []float64 `json:"losses"`
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, nil, nil, err
	}
	return grads, shapes, a.Losses, nil
}
