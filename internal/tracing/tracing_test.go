package tracing

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/spf13/pflag"
	"go.opentelemetry.io/otel"
)

func TestSetupWritesSpansToFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "spans.json")
	ctx := context.Background()
	prev := otel.GetTracerProvider()
	defer otel.SetTracerProvider(prev)
	stop, err := Setup(ctx, Config{File: file}, "switchyard-test", "t1")
	if err != nil {
		t.Fatal(err)
	}
	tr := otel.Tracer("test")
	pctx, parent := tr.Start(ctx, "parent")
	_, child := tr.Start(pctx, "child")
	child.End()
	parent.End()
	if err := stop(ctx); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	var trace string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var s struct {
			Name        string
			SpanContext struct{ TraceID string }
		}
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if trace != "" && s.SpanContext.TraceID != trace {
			t.Errorf("span %s in trace %s, the other in %s", s.Name, s.SpanContext.TraceID, trace)
		}
		trace = s.SpanContext.TraceID
		names = append(names, s.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"child", "parent"}) {
		t.Errorf("spans %v, want child and parent, one per line", names)
	}
}

func TestConfig(t *testing.T) {
	if (Config{}).Enabled() {
		t.Error("the zero Config traces")
	}
	stop, err := Setup(context.Background(), Config{}, "x", "y")
	if err != nil || stop(context.Background()) != nil {
		t.Errorf("disabled Setup: %v", err)
	}
	if _, err := Setup(context.Background(), Config{File: filepath.Join(t.TempDir(), "f"), Ratio: 2}, "x", "y"); err == nil {
		t.Error("ratio 2 accepted")
	}
	// Args give another process the same flags.
	c := Config{File: "/tmp/s.json", OTLP: "collector:4317", Ratio: 0.25}
	var got Config
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	Register(fs, &got)
	if err := fs.Parse(c.Args()); err != nil {
		t.Fatal(err)
	}
	if got != c {
		t.Errorf("Args round trip: %+v, want %+v", got, c)
	}
}
