// Package tracing turns on OpenTelemetry traces for a Switchyard process:
// spans for serving requests and model steps (front end), MoE layer
// exchanges and each destination's request (the expert transport, which
// carries the W3C trace context in the request's first frame), the owner's
// handling of it (worker), and training steps (ranks). Traces go to a file
// (JSON, one span per line, stdouttrace's format; several processes may
// append to one file) or to an OTLP/gRPC collector. Off by default: the
// global no-op tracer costs a few nanoseconds per span and the transport
// sends no trace context.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// Config says where a process's spans go. The zero value traces nothing.
type Config struct {
	// File, when set, receives every span as one JSON object per line
	// (appended; created 0644 if missing).
	File string
	// OTLP, when set, is an OTLP/gRPC collector's host:port (plaintext,
	// as a local collector or agent usually listens).
	OTLP string
	// Ratio is the fraction of root spans (a serving step, a training
	// step) sampled, 0 < Ratio <= 1; children follow their parent's
	// decision, across processes too. Default 1.
	Ratio float64
}

// Enabled reports whether c exports anything.
func (c Config) Enabled() bool { return c.File != "" || c.OTLP != "" }

// Register adds --trace-file, --trace-otlp and --trace-ratio to fs.
func Register(fs *pflag.FlagSet, c *Config) {
	fs.StringVar(&c.File, "trace-file", "", "append OpenTelemetry spans to this file, one JSON object per line (off when empty)")
	fs.StringVar(&c.OTLP, "trace-otlp", "", "send OpenTelemetry spans to this OTLP/gRPC collector host:port (plaintext; off when empty)")
	fs.Float64Var(&c.Ratio, "trace-ratio", 1, "fraction of serving and training steps traced (with --trace-file or --trace-otlp)")
}

// Args are the flags that give another process (a local worker) the same
// tracing.
func (c Config) Args() []string {
	var a []string
	if c.File != "" {
		a = append(a, "--trace-file", c.File)
	}
	if c.OTLP != "" {
		a = append(a, "--trace-otlp", c.OTLP)
	}
	if c.Enabled() && c.Ratio != 0 && c.Ratio != 1 {
		a = append(a, "--trace-ratio", fmt.Sprint(c.Ratio))
	}
	return a
}

// Setup installs the global tracer provider and the W3C trace-context
// propagator for service (e.g. "switchyard-worker") with instance (e.g.
// the worker ID) as service.instance.id. With c not Enabled it changes
// nothing and returns a no-op shutdown. Call shutdown before exiting: it
// flushes the spans still buffered.
func Setup(ctx context.Context, c Config, service, instance string) (shutdown func(context.Context) error, err error) {
	if !c.Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	if c.Ratio == 0 {
		c.Ratio = 1
	}
	if c.Ratio < 0 || c.Ratio > 1 {
		return nil, fmt.Errorf("tracing: ratio %g: want 0 < ratio <= 1", c.Ratio)
	}
	res := resource.NewSchemaless(semconv.ServiceName(service), semconv.ServiceInstanceID(instance),
		attribute.Int("process.pid", os.Getpid()))
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.Ratio))),
	}
	var closers []func() error
	if c.File != "" {
		f, err := os.OpenFile(c.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
		closers = append(closers, f.Close)
		ex, err := stdouttrace.New(stdouttrace.WithWriter(f))
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("tracing: %w", err)
		}
		// Batched: each span is still written by one Write of one line
		// (json.Encoder), so processes appending to one file do not
		// interleave within a span.
		opts = append(opts, sdktrace.WithBatcher(ex))
	}
	if c.OTLP != "" {
		ex, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(c.OTLP), otlptracegrpc.WithInsecure())
		if err != nil {
			for _, cl := range closers {
				_ = cl()
			}
			return nil, fmt.Errorf("tracing: OTLP %s: %w", c.OTLP, err)
		}
		opts = append(opts, sdktrace.WithBatcher(ex))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	return func(ctx context.Context) error {
		err := tp.Shutdown(ctx)
		for _, cl := range closers {
			err = errors.Join(err, cl())
		}
		return err
	}, nil
}
