"""Relay cursor connections over keyset pagination.

Rows are ordered by ``(created_at, id)``; a cursor is that pair, encoded.
Paging by key instead of offset keeps every page one indexed range scan,
and stays stable while rows are added.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import strawberry
from sqlalchemy import ColumnElement, func, literal, tuple_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from core.errors import BadUserInput
from core.time import UTCDateTime

DEFAULT_PAGE = 20
MAX_PAGE = 100

NodeT = TypeVar("NodeT")


class _Keyed(Protocol):
    id: uuid.UUID
    created_at: datetime


RowT = TypeVar("RowT", bound=_Keyed)


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class Edge(Generic[NodeT]):
    cursor: str
    node: NodeT


@strawberry.type
class Connection(Generic[NodeT]):
    edges: list[Edge[NodeT]]
    page_info: PageInfo
    total_count: int


def encode_cursor(row: _Keyed) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id.hex]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, key = json.loads(base64.urlsafe_b64decode(padded))
        when = datetime.fromisoformat(created_at)
        if when.tzinfo is None:
            raise ValueError("a cursor's time needs its UTC offset")
        return when.astimezone(UTC), uuid.UUID(hex=key)
    except (binascii.Error, ValueError, TypeError):
        raise BadUserInput(
            "Invalid cursor; pass an endCursor from a page.", field="after"
        ) from None


async def paginate(
    db: AsyncSession,
    model: type[RowT],
    where: list[ColumnElement[bool]],
    *,
    first: int | None,
    after: str | None,
    to_node: Callable[[RowT], NodeT],
) -> Connection[NodeT]:
    """One page of ``model`` rows matching ``where``, oldest first."""
    limit = DEFAULT_PAGE if first is None else first
    if not 0 <= limit <= MAX_PAGE:
        raise BadUserInput(f"`first` must be between 0 and {MAX_PAGE}.", field="first")
    created_at, key = col(model.created_at), col(model.id)
    total = (await db.exec(select(func.count()).select_from(model).where(*where))).one()
    page: SelectOfScalar[Any] = select(model).where(*where)
    if after is not None:
        after_time, after_key = _decode_cursor(after)
        # A typed bind, so the time compares in its stored form (naive UTC) on SQLite too.
        after_row = tuple_(literal(after_time, UTCDateTime()), after_key)
        page = page.where(tuple_(created_at, key) > after_row)
    rows = list(await db.exec(page.order_by(created_at, key).limit(limit + 1)))
    edges = [Edge(cursor=encode_cursor(row), node=to_node(row)) for row in rows[:limit]]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=len(rows) > limit,
            end_cursor=edges[-1].cursor if edges else None,
        ),
        total_count=int(total),
    )
