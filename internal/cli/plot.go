package cli

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/train"
)

// LossCurveFile is the loss curve's name in a run's output folder.
const LossCurveFile = "loss.png"

// WriteLossCurve draws out/loss.png from checkpoint ckpt's recorded
// losses and evaluations (its trainer_state.json), titled with the
// model's family and size, and returns the file's path. The CLI calls it
// after every checkpoint of a run it starts or follows.
func WriteLossCurve(out, ckpt string) (string, error) {
	st, err := train.ReadTrainerState(ckpt)
	if err != nil {
		return "", fmt.Errorf("train: loss curve: %w", err)
	}
	cfg, err := model.LoadConfig(ckpt)
	if err != nil {
		return "", fmt.Errorf("train: loss curve: %w", err)
	}
	var params int64
	for _, s := range cfg.Tensors() {
		params += s.Elems()
	}
	png := filepath.Join(out, LossCurveFile)
	if err := PlotLoss(png, fmt.Sprintf("%s, %.1f M params", cfg.Family, float64(params)/1e6), st.Losses, st.Evals, 20); err != nil {
		return "", fmt.Errorf("train: loss curve: %w", err)
	}
	return png, nil
}

// PlotLoss writes a PNG of the training loss per step (raw and a moving
// average over `smooth` steps) and the held-out evaluations.
func PlotLoss(path, title string, losses []float64, evals []train.EvalPoint, smooth int) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "step"
	p.Y.Label.Text = "cross-entropy (nats/token)"
	raw := make(plotter.XYs, len(losses))
	avg := make(plotter.XYs, len(losses))
	var sum float64
	for i, l := range losses {
		raw[i] = plotter.XY{X: float64(i + 1), Y: l}
		sum += l
		if i >= smooth {
			sum -= losses[i-smooth]
		}
		avg[i] = plotter.XY{X: float64(i + 1), Y: sum / float64(min(i+1, smooth))}
	}
	lr, err := plotter.NewLine(raw)
	if err != nil {
		return err
	}
	lr.Color = plotColor(200, 200, 220)
	la, err := plotter.NewLine(avg)
	if err != nil {
		return err
	}
	la.Color = plotColor(30, 60, 200)
	la.Width = vg.Points(1.5)
	p.Add(lr, la)
	p.Legend.Add("train (per step)", lr)
	p.Legend.Add(fmt.Sprintf("train (mean of %d)", smooth), la)
	if len(evals) > 0 {
		ev := make(plotter.XYs, len(evals))
		for i, e := range evals {
			ev[i] = plotter.XY{X: float64(e.Step), Y: e.Loss}
		}
		le, sc, err := plotter.NewLinePoints(ev)
		if err != nil {
			return err
		}
		le.Color = plotColor(220, 80, 30)
		sc.Color = plotColor(220, 80, 30)
		p.Add(le, sc)
		p.Legend.Add("held-out", le, sc)
	}
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p.Save(8*vg.Inch, 4.5*vg.Inch, path)
}

func plotColor(r, g, b uint8) color.Color { return color.RGBA{R: r, G: g, B: b, A: 255} }
