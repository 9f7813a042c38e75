"""Turns exceptions into GraphQL errors with ``extensions.code``.

Expected errors (:class:`core.errors.DepotError`) keep their message and gain
their code. Errors in the request itself (syntax, validation, variables) are
tagged ``GRAPHQL_PARSE_FAILED`` or ``GRAPHQL_VALIDATION_FAILED``. Anything else
is a bug: it is logged with its traceback and the request id, and the client
sees ``INTERNAL_SERVER_ERROR`` with that request id and nothing more.
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from graphql import DocumentNode, GraphQLError, GraphQLSyntaxError, parse

from core.errors import DepotError
from schema.limits import bound_errors

logger = structlog.get_logger("depot.graphql")

# Exceptions graphql-core raises while coercing a client's literals and
# variables; they describe the request, not a failure of ours.
_REQUEST_ERRORS = (GraphQLError, ValueError, TypeError)
# graphql-core's `did_you_mean` text, " Did you mean 'a', 'b', or 'c'?", in the
# message of a validation or variable-coercion error (last, or before the
# echoed "Found: …" value). Names cannot contain "?", so it ends at the first.
_SUGGESTION = re.compile(r" ?Did you mean [^?]*\?")


def coded_errors(
    errors: list[GraphQLError], *, suggestions: bool, request_id: str | None
) -> list[GraphQLError]:
    """Every error with an ``extensions.code``, bounded (:func:`schema.limits.bound_errors`).

    With ``suggestions=False``, graphql-core's "Did you mean …?" is dropped
    from request errors: in production it would spell out the schema to
    someone guessing at it with introspection turned off. ``schema.operation``
    calls this once an operation ends (and for each streamed result).
    """
    return bound_errors([_coded(error, suggestions, request_id) for error in errors])


def _coded(error: GraphQLError, suggestions: bool, request_id: str | None) -> GraphQLError:
    original = error.original_error
    if isinstance(original, DepotError):
        return _with_extensions(error, error.message, original.extensions())
    if isinstance(error, GraphQLSyntaxError):
        return _with_extensions(error, error.message, {"code": "GRAPHQL_PARSE_FAILED"})
    if error.path is None and (original is None or isinstance(original, _REQUEST_ERRORS)):
        # A limit's refusal (schema.limits) brings its own code.
        code = (error.extensions or {}).get("code", "GRAPHQL_VALIDATION_FAILED")
        message = error.message if suggestions else _SUGGESTION.sub("", error.message)
        return _with_extensions(error, message, {"code": code})
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


def parse_or_none(query: str, max_tokens: int) -> DocumentNode | None:
    """``query`` parsed, or None when it does not parse (``schema.operation`` caches it).

    Strawberry's own ``ParserCache`` parses inside its hook, so a syntax
    error raised there escapes the whole operation and no hook (the error
    codes included) ever sees it. Left unparsed, the document is parsed again
    by Strawberry itself, with the same token cap, which reports the error
    as a request error.
    """
    try:
        return parse(query, max_tokens=max_tokens)
    except GraphQLError:
        return None


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
