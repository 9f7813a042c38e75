"""A span per GraphQL operation, named by the operation, when tracing is on (core.tracing).

Resolvers get no span of their own: a page of fifty files would make a few
hundred. The SQL, Redis and S3 spans of the operation nest under it.

:class:`schema.operation.DepotOperation` opens it first and closes it last
in its ``on_operation`` (:func:`open_span`, :func:`close_span`) rather than
a second extension: Strawberry wraps every hook of every extension on every
operation, which cost a traced ``{ __typename }`` about as much as the span
a sampler drops.

It costs only what a sampled operation needs: in a trace the sampler dropped
(the server span does not record) it makes no span at all — any sampler
would drop it too, the trace id being the same — and the name and
attributes are set only on a span that records.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from strawberry.types import ExecutionContext

_tracer = trace.get_tracer("depot.graphql")


class OpenSpan(NamedTuple):
    """An operation's span, and the token that made it the current one."""

    span: trace.Span
    token: Any


def open_span() -> OpenSpan | None:
    """``graphql.operation``, current from here on; None in a trace sampled out."""
    parent = trace.get_current_span()
    if parent.get_span_context().is_valid and not parent.is_recording():
        return None
    span = _tracer.start_span("graphql.operation")
    return OpenSpan(span, otel_context.attach(trace.set_span_in_context(span)))


def close_span(opened: OpenSpan, context: ExecutionContext) -> None:
    """End the span, once named ``query Files``, ``mutation StartJob``… if it records."""
    otel_context.detach(opened.token)
    span = opened.span
    if span.is_recording():
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
    span.end()
