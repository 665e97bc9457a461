package simulate

import (
	"fmt"
	"math"
)

// Chart is a line chart of predictions, as data: `switchyard simulate`
// draws it to PNG (cmd/switchyard's writeChart, with gonum.org/v1/plot;
// library packages link no rendering, internal/depcheck). Any model's
// sweep can fill one.
type Chart struct {
	Title, XLabel, YLabel string
	// LogX draws X on a log2 axis, ticked at the series' X values (worker
	// counts 8, 16, ... 256 spread evenly).
	LogX bool
	// LogY draws Y on a log axis (series must be positive; NaNs are gaps).
	LogY bool
	// YZero starts the Y axis at 0 (not with LogY).
	YZero  bool
	Series []Series
}

// Series is one line: points (X[i], Y[i]). A NaN Y is a gap (a
// configuration that could not run, e.g. one that does not fit).
type Series struct {
	Name string
	X, Y []float64
}

// Validate checks that every series has as many Xs as Ys, finite Xs
// (positive with LogX) and at least one point.
func (c Chart) Validate() error {
	if len(c.Series) == 0 {
		return fmt.Errorf("chart %q: no series", c.Title)
	}
	for _, s := range c.Series {
		if len(s.X) != len(s.Y) || len(s.X) == 0 {
			return fmt.Errorf("chart %q, series %q: %d Xs, %d Ys", c.Title, s.Name, len(s.X), len(s.Y))
		}
		for i, x := range s.X {
			if math.IsNaN(x) || math.IsInf(x, 0) || (c.LogX && x <= 0) {
				return fmt.Errorf("chart %q, series %q: X %g", c.Title, s.Name, x)
			}
			if c.LogY && s.Y[i] <= 0 {
				return fmt.Errorf("chart %q, series %q: Y %g on a log axis", c.Title, s.Name, s.Y[i])
			}
		}
	}
	return nil
}

// Add appends point (x, y) to the series named name, making it if new.
func (c *Chart) Add(name string, x, y float64) {
	for i := range c.Series {
		if c.Series[i].Name == name {
			c.Series[i].X = append(c.Series[i].X, x)
			c.Series[i].Y = append(c.Series[i].Y, y)
			return
		}
	}
	c.Series = append(c.Series, Series{Name: name, X: []float64{x}, Y: []float64{y}})
}
