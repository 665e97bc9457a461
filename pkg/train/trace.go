package train

import (
	"context"
	"crypto/sha256"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Tracing (OpenTelemetry through the global provider; a no-op unless the
// process set one up, internal/tracing): every rank's step is a span
// ("train.step") whose parent is a span context derived from the job's
// name and the step alone, so the ranks' spans of one step, on any
// worker, share one trace (the parent itself is never exported: trace
// viewers show the ranks' spans as that trace's roots). The step's expert
// exchanges (pkg/transport) and the owners' handling of them are its
// descendants. Training steps are always sampled while tracing is on.
var tracer = otel.Tracer("github.com/switchyard/switchyard/pkg/train")

// stepParent is the shared parent of job's step spans.
func stepParent(job string, step int) trace.SpanContext {
	h := sha256.Sum256([]byte(fmt.Sprintf("switchyard-train\x00%s\x00%d", job, step)))
	var tid trace.TraceID
	var sid trace.SpanID
	copy(tid[:], h[:16])
	copy(sid[:], h[16:24])
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
}

// startStep starts rank's span of step (0-based) of job.
func startStep(ctx context.Context, job string, step, rank, ranks int) (context.Context, trace.Span) {
	ctx = trace.ContextWithRemoteSpanContext(ctx, stepParent(job, step))
	return tracer.Start(ctx, "train.step", trace.WithAttributes(
		attribute.String("switchyard.job", job), attribute.Int("switchyard.step", step+1),
		attribute.Int("switchyard.rank", rank), attribute.Int("switchyard.ranks", ranks)))
}
