"""GraphQL operations into ``depot_graphql_operations_total`` and its duration.

No extension of its own: :class:`schema.errors.ErrorCodes`, which gives every
error its final code once the operation ends, calls :func:`record_operation`
from the same ``on_operation`` hook. Each extension costs Strawberry's runner
a hook lookup per hook kind per operation whether it does anything or not,
so a second one would cost more than the counting itself.

An operation is labelled by :func:`operation_label`: its name only when the
server knows the operation (a persisted or trusted document), because a
client can send any name it likes and every name would be a new series.
Running subscriptions (``depot_subscriptions``) are counted where they run,
in ``schema.events``.
"""

from __future__ import annotations

from collections.abc import Mapping

from graphql import GraphQLError
from strawberry.types import ExecutionContext

from core import metrics

ANONYMOUS = "anonymous"
# The operation type before it is known (a document that did not parse).
UNKNOWN = "unknown"
SUBSCRIPTION = "subscription"


def operation_label(execution_context: ExecutionContext) -> str:
    """The ``operation`` label: ``anonymous`` for any document a client wrote itself.

    The one place persisted / trusted operations plug in: when the request
    ran a document the server registered, return the name it was registered
    under (a bounded set); never ``execution_context.operation_name`` as sent.
    Only trusted documents count (``api.persisted`` fills in their text, by
    which ``Context.trusted_labels`` names them): anyone may register an
    automatic persisted query. One dict lookup; the text's hash is cached.
    """
    labels: Mapping[str, str] | None = getattr(execution_context.context, "trusted_labels", None)
    if not labels or execution_context.query is None:
        return ANONYMOUS
    return labels.get(execution_context.query, ANONYMOUS)


def _kind(context: ExecutionContext) -> str:
    try:
        return context.operation_type.value
    except Exception:  # noqa: BLE001 - no document, or no such operation in it
        return UNKNOWN


def record_operation(
    context: ExecutionContext, seconds: float, errors: list[GraphQLError] | None
) -> None:
    """Count one finished operation with its outcome (``ok``, or the code of the first of
    its coded ``errors``) and time it, unless it was a subscription, whose length is
    the client's choice. A dict lookup and two updates: ~2 µs."""
    kind = _kind(context)
    outcome = metrics.code_label((errors[0].extensions or {}).get("code")) if errors else "ok"
    timed = None if kind == SUBSCRIPTION else seconds
    metrics.graphql_operation(operation_label(context), kind, outcome, timed)
