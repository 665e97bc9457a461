package serve

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Traffic is a cumulative snapshot of the server's counters and latency
// histograms (what /metrics shows), for summaries over a window
// (TrafficWindow).
type Traffic struct {
	Time            time.Time
	Requests        uint64 // API requests answered, every endpoint and code
	GeneratedTokens uint64
	PromptTokens    uint64
	Active, Queued  int
	TTFT, ITL       Buckets // seconds
}

// Buckets is a histogram's cumulative counts: Counts[i] observations <=
// Upper[i]; Count is the total (the +Inf bucket).
type Buckets struct {
	Upper  []float64
	Counts []uint64
	Count  uint64
}

// Traffic reads the server's counters now.
func (s *Server) Traffic() Traffic {
	t := Traffic{Time: time.Now(), Active: int(s.active.Load()), Queued: s.queued()}
	t.GeneratedTokens = uint64(counterValue(s.met.genToks))
	t.PromptTokens = uint64(counterValue(s.met.promptToks))
	ch := make(chan prometheus.Metric, 64)
	go func() { s.met.requests.Collect(ch); close(ch) }()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) == nil && d.Counter != nil {
			t.Requests += uint64(d.Counter.GetValue())
		}
	}
	t.TTFT = bucketsOf(s.met.ttft)
	t.ITL = bucketsOf(s.met.tpot)
	return t
}

func counterValue(c prometheus.Counter) float64 {
	var d dto.Metric
	if c.Write(&d) != nil || d.Counter == nil {
		return 0
	}
	return d.Counter.GetValue()
}

func bucketsOf(h prometheus.Histogram) Buckets {
	var d dto.Metric
	if h.Write(&d) != nil || d.Histogram == nil {
		return Buckets{}
	}
	b := Buckets{Count: d.Histogram.GetSampleCount()}
	for _, x := range d.Histogram.Bucket {
		b.Upper = append(b.Upper, x.GetUpperBound())
		b.Counts = append(b.Counts, x.GetCumulativeCount())
	}
	return b
}

// minus is b - o bucket by bucket (o an earlier snapshot of the same
// histogram; a mismatched o is treated as empty).
func (b Buckets) minus(o Buckets) Buckets {
	if len(o.Counts) != len(b.Counts) {
		return b
	}
	d := Buckets{Upper: b.Upper, Counts: make([]uint64, len(b.Counts)), Count: b.Count - o.Count}
	for i := range b.Counts {
		d.Counts[i] = b.Counts[i] - o.Counts[i]
	}
	return d
}

// Quantile estimates the q-quantile (0 < q < 1) as Prometheus'
// histogram_quantile does: linear interpolation within the bucket that
// holds it, the first bucket starting at 0, the highest finite bound when
// it falls in +Inf. NaN when the histogram is empty.
func (b Buckets) Quantile(q float64) float64 {
	if b.Count == 0 || len(b.Upper) == 0 {
		return math.NaN()
	}
	rank := q * float64(b.Count)
	lower, below := 0.0, uint64(0)
	for i, up := range b.Upper {
		if float64(b.Counts[i]) >= rank {
			in := b.Counts[i] - below
			if in == 0 {
				return up
			}
			return lower + (up-lower)*(rank-float64(below))/float64(in)
		}
		lower, below = up, b.Counts[i]
	}
	return b.Upper[len(b.Upper)-1]
}

// TrafficWindow turns successive Traffic snapshots into rates and
// percentiles over roughly the last Span (default 30 s): each Add keeps
// the snapshot and reports against the oldest one still within Span.
// Safe for concurrent use.
type TrafficWindow struct {
	Span time.Duration

	mu   sync.Mutex
	hist []Traffic
}

// Summary is a window's rates (per second) and percentiles (ms; NaN
// becomes 0: no sample in the window).
type Summary struct {
	Window                    time.Duration
	TokensPerS, PromptPerS    float64
	TTFTP50, TTFTP90, TTFTP99 float64
	ITLP50, ITLP90, ITLP99    float64
}

// Add records now's snapshot and summarizes the window ending at it.
func (w *TrafficWindow) Add(now Traffic) Summary {
	span := w.Span
	if span <= 0 {
		span = 30 * time.Second
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hist = append(w.hist, now)
	for len(w.hist) > 2 && now.Time.Sub(w.hist[1].Time) >= span {
		w.hist = w.hist[1:]
	}
	old := w.hist[0]
	var s Summary
	if len(w.hist) < 2 {
		return s
	}
	s.Window = now.Time.Sub(old.Time)
	if sec := s.Window.Seconds(); sec > 0 {
		s.TokensPerS = float64(now.GeneratedTokens-old.GeneratedTokens) / sec
		s.PromptPerS = float64(now.PromptTokens-old.PromptTokens) / sec
	}
	ms := func(v float64) float64 {
		if math.IsNaN(v) {
			return 0
		}
		return v * 1000
	}
	ttft, itl := now.TTFT.minus(old.TTFT), now.ITL.minus(old.ITL)
	s.TTFTP50, s.TTFTP90, s.TTFTP99 = ms(ttft.Quantile(.5)), ms(ttft.Quantile(.9)), ms(ttft.Quantile(.99))
	s.ITLP50, s.ITLP90, s.ITLP99 = ms(itl.Quantile(.5)), ms(itl.Quantile(.9)), ms(itl.Quantile(.99))
	return s
}
