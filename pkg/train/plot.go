package train

import (
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// PlotLoss writes a PNG of the training loss per step (raw and a moving
// average over `smooth` steps) and the held-out evaluations.
func PlotLoss(path, title string, losses []float64, evals []EvalPoint, smooth int) error {
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
