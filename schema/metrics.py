"""GraphQL operations into ``depot_graphql_operations_total``, its duration, and
``depot_subscriptions``.

:class:`OperationMetrics` is the first extension of the schema, so its hooks
wrap every other one: the time covers parsing to the result, and the errors it
reads have their final codes (``ErrorCodes``, the last extension, has coded
them by the time the outer hooks resume).

An operation is labelled by :func:`operation_label`: its name only when the
server knows the operation (a persisted or trusted document), because a
client can send any name it likes and every name would be a new series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionContext
from strawberry.types.execution import ExecutionResult, StreamExecutionResult
from strawberry.types.graphql import OperationType

from core import metrics

ANONYMOUS = "anonymous"
# The operation type before it is known (a document that did not parse).
UNKNOWN = "unknown"


def operation_label(execution_context: ExecutionContext) -> str:
    """The ``operation`` label: ``anonymous`` for any document a client wrote itself.

    The one place persisted / trusted operations plug in: when the request
    ran a document the server registered, return the name it was registered
    under (a bounded set); never ``execution_context.operation_name`` as sent.
    """
    return ANONYMOUS


def _outcome(errors: list[GraphQLError] | None) -> str:
    if not errors:
        return "ok"
    return metrics.code_label((errors[0].extensions or {}).get("code"))


def _kind_before_execution(context: ExecutionContext) -> str:
    """The type of an operation that stopped before execution (refused by validation)."""
    try:
        return context.operation_type.value
    except Exception:  # noqa: BLE001 - no document, or no such operation in it
        return UNKNOWN


class OperationMetrics(SchemaExtension):
    """Counts and times each operation; keeps the gauge of running subscriptions.

    Per operation: a clock read at each end, three label lookups and three
    updates (a few microseconds).
    """

    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        self._subscribed = False
        self._kind: str | None = None
        self._streamed_outcome: str | None = None
        try:
            yield
        finally:
            if self._subscribed:
                metrics.SUBSCRIPTIONS.dec()
            self._record(time.perf_counter() - started)

    def on_execute(self) -> Iterator[None]:
        # The first hook that knows the operation's type; a subscription's
        # `on_operation` lasts as long as the subscription.
        operation_type = self.execution_context.operation_type
        self._kind = operation_type.value
        if operation_type is OperationType.SUBSCRIPTION:
            metrics.SUBSCRIPTIONS.inc()
            self._subscribed = True
        yield

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        yield
        # After ErrorCodes coded the streamed errors (it acts before yielding).
        if isinstance(result, ExecutionResult) and result.errors and self._streamed_outcome is None:
            self._streamed_outcome = _outcome(result.errors)

    def _record(self, seconds: float) -> None:
        context = self.execution_context
        kind = self._kind or _kind_before_execution(context)
        name = operation_label(context)
        result = context.result
        outcome = self._streamed_outcome or _outcome(
            result.errors if isinstance(result, ExecutionResult) else None
        )
        metrics.GRAPHQL_OPERATIONS.labels(name, kind, outcome).inc()
        if not self._subscribed:
            metrics.GRAPHQL_DURATION.labels(name, kind).observe(seconds)
