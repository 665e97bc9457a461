package serve

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (OpenTelemetry through the global provider: a no-op unless the
// process set one up, internal/tracing). Each generation request has a
// server span ("serve.completions", "serve.chat_completions"), continuing
// the client's trace when it sent a traceparent header. Each scheduler
// step that runs a traced request is a span ("serve.step") under the
// oldest such request in the batch, linked to the others; the model's
// MoE layers and their expert exchanges (pkg/transport) and the owners'
// handling of them (workers) are its descendants.
var tracer = otel.Tracer("github.com/switchyard/switchyard/internal/serve")

// requestSpan starts r's span from the headers' trace context.
func requestSpan(ctx context.Context, endpoint string, h propagation.HeaderCarrier) (context.Context, trace.Span) {
	ctx = propagation.TraceContext{}.Extract(ctx, h)
	return tracer.Start(ctx, "serve."+endpoint, trace.WithSpanKind(trace.SpanKindServer))
}

// endRequestSpan records the answer's status code.
func endRequestSpan(s trace.Span, code int) {
	s.SetAttributes(attribute.Int("http.response.status_code", code))
	if code >= 500 {
		s.SetStatus(codes.Error, "status "+strconv.Itoa(code))
	}
	s.End()
}

// stepSpan starts the span of a scheduler step over batch (feeding toks)
// when one of its requests is traced (sampled); else it returns ctx and
// nil.
func stepSpan(ctx context.Context, batch []*slot, toks [][]int32) (context.Context, trace.Span) {
	var parent trace.SpanContext
	var links []trace.Link
	for _, sl := range batch {
		sc := trace.SpanContextFromContext(sl.req.ctx)
		if !sc.IsSampled() {
			continue
		}
		if !parent.IsValid() {
			parent = sc
			continue
		}
		links = append(links, trace.Link{SpanContext: sc})
	}
	if !parent.IsValid() {
		return ctx, nil
	}
	tokens := 0
	for _, t := range toks {
		tokens += len(t)
	}
	return tracer.Start(trace.ContextWithSpanContext(ctx, parent), "serve.step", trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("switchyard.sequences", len(batch)), attribute.Int("switchyard.tokens", tokens)))
}
