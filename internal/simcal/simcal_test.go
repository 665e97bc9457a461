package simcal

import (
	"bytes"
	"context"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/simulate"
)

// A quick calibration measures positive, ordered numbers, and what Write
// writes ReadCalibration reads back unchanged.
func TestQuickCalibration(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := Calibrate(ctx, Options{Quick: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.CPU == "" || c.Cores < 1 || c.When == "" {
		t.Errorf("cpu %q, cores %d, when %q", c.CPU, c.Cores, c.When)
	}
	// Per thread count: a 512-row product runs faster per FLOP than a
	// one-row GEMV (which streams the whole weight for one row).
	byThreads := map[int]map[int]float64{}
	for _, p := range c.GEMM {
		if p.FLOPS <= 0 || p.DType != "f32" {
			t.Errorf("point %+v: want float32 and positive", p)
		}
		if byThreads[p.Threads] == nil {
			byThreads[p.Threads] = map[int]float64{}
		}
		byThreads[p.Threads][p.M] = p.FLOPS
	}
	if len(byThreads) == 0 {
		t.Fatal("no GEMM points")
	}
	for th, m := range byThreads {
		if m[512] <= m[1] {
			t.Errorf("%d threads: %.1f GFLOP/s at M=512, %.1f at M=1: want the product faster per FLOP", th, m[512]/1e9, m[1]/1e9)
		}
	}
	if c.MemBandwidth <= 1e8 || c.AdamParamsPerS <= 1e6 {
		t.Errorf("memory bandwidth %g B/s, AdamW %g parameters/s: implausible", c.MemBandwidth, c.AdamParamsPerS)
	}
	// The round trip of one row is four message sides; a payload's bytes
	// cost something on top.
	if c.ExchangeRTT <= 0 || c.MsgCPU != c.ExchangeRTT/4 || c.MsgBytesPerS <= 0 {
		t.Errorf("exchange round trip %v, per message %v, %g B/s per side", c.ExchangeRTT, c.MsgCPU, c.MsgBytesPerS)
	}
	if c.LinkRate != 0 || c.LinkRTT != 0 {
		t.Errorf("no peer, yet a link of %g B/s, %v", c.LinkRate, c.LinkRTT)
	}
	var buf bytes.Buffer
	if err := Write(&buf, c); err != nil {
		t.Fatal(err)
	}
	back, err := simulate.ReadCalibration(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("read back %+v\nwrote %+v", back, c)
	}
	// The training model runs on it.
	cl, err := simulate.ClusterSpec{Workers: 4}.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	shape := simulate.TrainMixtral8x22B()
	shape.Layers = 2
	if _, err := simulate.PredictTrainStep(simulate.TrainConfig{Shape: shape, Cluster: cl, Cal: back}); err != nil {
		t.Error(err)
	}
}

// MeasureLink against ServeLink on loopback: a positive rate and round
// trip.
func TestLink(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	done := make(chan error, 1)
	go func() { done <- ServeLink(ctx, lis) }()
	rate, rtt, err := MeasureLink(ctx, lis.Addr().String(), true)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("ServeLink: %v", err)
	}
	if rate <= 0 || rtt <= 0 || rtt > time.Second {
		t.Errorf("loopback link: %g B/s, round trip %v", rate, rtt)
	}
}
