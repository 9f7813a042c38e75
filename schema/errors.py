"""Turns exceptions into GraphQL errors with ``extensions.code``.

Expected errors (:class:`core.errors.DepotError`) keep their message and gain
their code. Errors in the request itself (syntax, validation, variables) are
tagged ``GRAPHQL_PARSE_FAILED`` or ``GRAPHQL_VALIDATION_FAILED``. Anything else
is a bug: it is logged with its traceback and the request id, and the client
sees ``INTERNAL_SERVER_ERROR`` with that request id and nothing more.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

import structlog
from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.extensions import ParserCache, SchemaExtension
from strawberry.types.execution import ExecutionResult, StreamExecutionResult

from core.errors import DepotError
from schema.limits import bound_errors
from schema.metrics import record_operation

logger = structlog.get_logger("depot.graphql")

# Exceptions graphql-core raises while coercing a client's literals and
# variables; they describe the request, not a failure of ours.
_REQUEST_ERRORS = (GraphQLError, ValueError, TypeError)
# graphql-core's `did_you_mean` text, " Did you mean 'a', 'b', or 'c'?", in the
# message of a validation or variable-coercion error (last, or before the
# echoed "Found: …" value). Names cannot contain "?", so it ends at the first.
_SUGGESTION = re.compile(r" ?Did you mean [^?]*\?")


class ErrorCodes(SchemaExtension):
    """Give every error an ``extensions.code``; mask and log unexpected ones.

    :meth:`configured` with ``suggestions=False`` also drops graphql-core's
    "Did you mean …?" from request errors: in production it would spell out
    the schema to someone guessing at it with introspection turned off.

    With ``metrics`` (the default), it also counts and times each operation
    with the code it ended with (:func:`schema.metrics.record_operation`):
    being the hook that knows the final codes, it saves the operation a
    second extension.
    """

    suggestions = True
    metrics = True

    @classmethod
    def configured(cls, *, suggestions: bool = True, metrics: bool = True) -> ErrorCodes:
        """The extension for a schema with (or without) suggestions and metrics."""
        extension = cls()
        extension.suggestions = suggestions
        extension.metrics = metrics
        return extension

    @classmethod
    def without_suggestions(cls) -> ErrorCodes:
        """The extension for a schema whose errors suggest no names."""
        return cls.configured(suggestions=False)

    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        self._streamed_errors: list[GraphQLError] | None = None
        started = time.perf_counter()
        yield
        result = self.execution_context.result
        # A streamed result was mapped before it was sent; mapping it twice
        # would turn its coded errors into INTERNAL_SERVER_ERROR.
        if not self._streamed and result is not None and result.errors:
            result.errors = bound_errors([self._map(error) for error in result.errors])
        if self.metrics:
            errors = self._streamed_errors if self._streamed else getattr(result, "errors", None)
            record_operation(self.execution_context, time.perf_counter() - started, errors)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        # WebSocket operations send each result before on_operation resumes.
        self._streamed = True
        if isinstance(result, ExecutionResult) and result.errors:
            result.errors = bound_errors([self._map(error) for error in result.errors])
            # The operation's outcome is its first error.
            self._streamed_errors = self._streamed_errors or result.errors
        yield

    def _map(self, error: GraphQLError) -> GraphQLError:
        original = error.original_error
        if isinstance(original, DepotError):
            return _with_extensions(error, error.message, original.extensions())
        if isinstance(error, GraphQLSyntaxError):
            return _with_extensions(error, error.message, {"code": "GRAPHQL_PARSE_FAILED"})
        if error.path is None and (original is None or isinstance(original, _REQUEST_ERRORS)):
            # A limit's refusal (schema.limits) brings its own code.
            code = (error.extensions or {}).get("code", "GRAPHQL_VALIDATION_FAILED")
            message = error.message if self.suggestions else _SUGGESTION.sub("", error.message)
            return _with_extensions(error, message, {"code": code})
        request_id = getattr(self.execution_context.context, "request_id", None)
        return internal_error(error, request_id)


def internal_error(error: GraphQLError, request_id: str | None) -> GraphQLError:
    """Log an unexpected error with its traceback; give the client only the request id."""
    logger.error(
        "unexpected error in GraphQL operation",
        path=error.path,
        exc_info=error.original_error or error,
    )
    return _with_extensions(
        error,
        f"Internal server error (request id {request_id})",
        {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id},
    )


class SyntaxSafeParserCache(ParserCache):
    """Strawberry's parser cache, minus one flaw: it parses inside its hook.

    A syntax error raised there escapes the whole operation, so no extension
    (ErrorCodes included) ever sees it. Left uncached, the document is parsed
    again by Strawberry itself, which reports the error as a request error.
    """

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(
                context.query, **context.parse_options
            )
        yield


def _with_extensions(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions={**(error.extensions or {}), **extensions},
    )
