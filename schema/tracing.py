"""A span per GraphQL operation, named by the operation, when tracing is on (core.tracing).

Resolvers get no span of their own: a page of fifty files would make a few
hundred. The SQL, Redis and S3 spans of the operation nest under it.
"""

from __future__ import annotations

from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from strawberry.extensions import SchemaExtension

_tracer = trace.get_tracer("depot.graphql")


class OperationSpan(SchemaExtension):
    """``query Files``, ``mutation StartJob``…: one span around parsing, validation
    and execution."""

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        with _tracer.start_as_current_span("graphql.operation") as span:
            yield
            name = context.operation_name or "anonymous"
            try:
                kind = context.operation_type.value
            except RuntimeError:  # the document did not parse
                kind = "operation"
            span.update_name(f"{kind} {name}")
            span.set_attribute("graphql.operation.name", name)
            span.set_attribute("graphql.operation.type", kind)
            errors = context.result.errors if context.result is not None else None
            if errors or context.pre_execution_errors:
                span.set_status(Status(StatusCode.ERROR))
