package transport

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Tracing (OpenTelemetry, through the global tracer provider; a no-op
// unless the process set one up, see internal/tracing). A caller that
// traces (its ctx holds a valid span: a serving or training step) gets a
// span per MoE layer call and per destination request; the request's
// first frame carries that span's W3C trace context (ExpertFrame
// .traceparent), and the owner's span for the request is its child, so
// one trace follows a step across every process it touches. Untraced
// callers send no context and start no spans.

var tracer = otel.Tracer("github.com/switchyard/switchyard/pkg/transport")

// traced reports whether ctx carries a span to attach children to.
func traced(ctx context.Context) bool { return trace.SpanContextFromContext(ctx).IsValid() }

// startSpan starts a child span of ctx's, or returns ctx and nil when ctx
// is not traced.
func startSpan(ctx context.Context, name string, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	if !traced(ctx) {
		return ctx, nil
	}
	return tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
}

// endSpan ends s (nil: nothing), recording err.
func endSpan(s trace.Span, err error) {
	if s == nil {
		return
	}
	if err != nil {
		s.RecordError(err)
		s.SetStatus(codes.Error, err.Error())
	}
	s.End()
}

// traceparent is ctx's span context in W3C form ("" when not sampled).
func traceparent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsSampled() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// serveSpan starts the owner's span for a request whose first frame is
// head, as a child of the caller's span when head carries one; nil when it
// does not.
func serveSpan(ctx context.Context, worker string, head *pb.ExpertFrame, rows int) (context.Context, trace.Span) {
	if head.Traceparent == "" {
		return ctx, nil
	}
	pctx := propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": head.Traceparent})
	if !traced(pctx) {
		return ctx, nil
	}
	return tracer.Start(pctx, "expert.serve", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("switchyard.worker", worker), attribute.String("switchyard.caller", head.Source),
		attribute.Int("switchyard.layer", int(head.Layer)), attribute.Int("switchyard.rows", rows),
		attribute.Int("switchyard.experts", len(head.Experts)), attribute.String("switchyard.phase", head.Phase.String()),
	))
}
