"""SQLite through aiosqlite in one trip to its thread per statement.

aiosqlite runs each call on the connection's own thread, and SQLAlchemy's
adapter makes four calls for a statement that returns rows (open a cursor,
execute, fetch everything, close) and three for one that does not, plus a
``COMMIT`` and, as the pool takes the connection back, a ``ROLLBACK`` that
has nothing to undo. Each call is a hand-off to that thread and back to the
event loop, which on a busy machine waits for the GIL each way: a
``verify`` job made 26 of them for its 7 statements.

Here a statement is one call: the thread opens a ``sqlite3`` cursor,
executes, fetches every row, reads the description, row count and last row
id, and closes it; the adapter then serves what it kept. ``COMMIT`` and
``ROLLBACK`` go to the thread only when a transaction is open
(``sqlite3``'s own methods do nothing otherwise, so skipping them changes
nothing). Server-side cursors (``stream()``) stay SQLAlchemy's.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)


class _Ran:
    """What a statement left on its ``sqlite3`` cursor, kept once that cursor is closed."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self) -> None:
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def close(self) -> None:
        """Nothing to close: the thread closed the cursor."""


def _run(
    connection: sqlite3.Connection, ran: _Ran, operation: str, parameters: Any, many: bool
) -> list[Any]:
    """Execute on aiosqlite's thread, keeping in ``ran`` what the cursor tells; its rows."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        ran.description, ran.rowcount = cursor.description, cursor.rowcount
        ran.lastrowid = cursor.lastrowid
        return rows
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor with each statement in one call to the thread."""

    __slots__ = ()

    # ``close`` calls ``_Ran.close``, which needs no await.
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return _Ran()

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._run(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._run(operation, seq_of_parameters, many=True)

    async def _run(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            rows: Sequence[Any] = await connection._execute(  # type: ignore[no-untyped-call]
                _run, connection._conn, self._cursor, operation, parameters, many
            )
            self._rows = collections.deque(rows)


class _Connection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection, with one-trip cursors and no empty
    ``COMMIT`` or ``ROLLBACK`` trips."""

    __slots__ = ()

    _cursor_cls = _OneTripCursor

    def _in_transaction(self) -> bool:
        # sqlite3 reads the flag without touching the database (any thread may ask);
        # SQLAlchemy sends nothing else on this connection meanwhile.
        connection: sqlite3.Connection | None = self._connection._connection
        return connection is not None and connection.in_transaction

    def rollback(self) -> None:
        if self._in_transaction():
            super().rollback()

    def commit(self) -> None:
        if self._in_transaction():
            super().commit()


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> _Connection:
        adapted = super().connect(*arg, **kw)
        return _Connection(self, adapted._connection)


def dbapi() -> Any:
    """The DBAPI module for ``create_async_engine(..., module=...)`` on a SQLite URL."""
    return _DBAPI(aiosqlite, sqlite3)
