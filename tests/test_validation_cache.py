"""The validation cache hits: a document the schema has seen is not validated again.

Validation was half the cost of a small request while the cache missed every
time (a depth-limit rule class built per operation changed its key), so this
is checked by counting graphql-core's ``validate`` calls, not by timing.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import strawberry.schema.schema
from graphql import validate

from core.db import SharedSession
from schema import build_schema

pytestmark = pytest.mark.anyio

# Depth 4: me (0), files (1), edges (2), node (3), id (4).
DEEP = "{ me { files { edges { node { id } } } } }"


def _count_validations(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every document graphql-core's ``validate`` is called with, from now on."""
    seen: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[1])
        return validate(*args, **kwargs)

    # Strawberry's validate_document (which the cache wraps) calls it by this name.
    monkeypatch.setattr(strawberry.schema.schema, "validate", counting)
    return seen


def _context() -> SimpleNamespace:
    # Enough for the extensions and `me` (signed out); these documents never
    # reach the database.
    no_database = SharedSession(None)  # type: ignore[arg-type] # never opened
    return SimpleNamespace(
        sessionmaker=None, db=no_database, request_id="test", auth_error=None, user=None
    )


async def test_a_repeated_document_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    schema = build_schema()
    validations = _count_validations(monkeypatch)
    # Unique, so no earlier test has filled the shared cache with it.
    query = f"{{ t{uuid.uuid4().hex}: __typename }}"

    for _ in range(3):
        result = await schema.execute(query, context_value=_context())
        assert result.errors is None

    assert len(validations) == 1


async def test_the_depth_limit_still_refuses_deep_documents_from_the_cache() -> None:
    schema = build_schema(max_depth=3)

    for _ in range(2):  # the second answer comes from the cache: the same error
        result = await schema.execute(DEEP, context_value=_context())
        assert result.errors is not None
        assert [error.message for error in result.errors] == [
            "'anonymous' exceeds maximum operation depth of 3"
        ]
    assert (await schema.execute("{ __typename }", context_value=_context())).errors is None


async def test_each_schema_keeps_its_own_depth_limit() -> None:
    strict, lenient = build_schema(max_depth=3), build_schema(max_depth=4)

    strict_result = await strict.execute(DEEP, context_value=_context())
    lenient_result = await lenient.execute(DEEP, context_value=_context())

    assert strict_result.errors is not None
    assert lenient_result.errors is None
    assert lenient_result.data == {"me": None}
