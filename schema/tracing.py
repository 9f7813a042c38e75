"""A span per GraphQL operation, named by the operation, when tracing is on (core.tracing).

Resolvers get no span of their own: a page of fifty files would make a few
hundred. The SQL, Redis and S3 spans of the operation nest under it.

It costs only what a sampled operation needs: in a trace the sampler dropped
(the server span does not record) it makes no span at all — any sampler
would drop it too, the trace id being the same — and the name and
attributes are set only on a span that records.
"""

from __future__ import annotations

from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from strawberry.extensions import SchemaExtension

_tracer = trace.get_tracer("depot.graphql")


class OperationSpan(SchemaExtension):
    """``query Files``, ``mutation StartJob``…: one span around parsing, validation
    and execution."""

    def on_operation(self) -> Iterator[None]:
        parent = trace.get_current_span()
        if parent.get_span_context().is_valid and not parent.is_recording():
            yield  # a trace sampled out
            return
        span = _tracer.start_span("graphql.operation")
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            otel_context.detach(token)
            if span.is_recording():
                self._describe(span)
            span.end()

    def _describe(self, span: trace.Span) -> None:
        context = self.execution_context
        name = context.operation_name or "anonymous"
        try:
            kind = context.operation_type.value
        except RuntimeError:  # the document did not parse
            kind = "operation"
        span.update_name(f"{kind} {name}")
        span.set_attributes({"graphql.operation.name": name, "graphql.operation.type": kind})
        errors = context.result.errors if context.result is not None else None
        if errors or context.pre_execution_errors:
            span.set_status(Status(StatusCode.ERROR))
