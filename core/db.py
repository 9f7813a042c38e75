"""The async database engine and sessions, for SQLite and PostgreSQL alike.

Two things here keep a request's database work to the statements it needs:

* no ping per checkout: a pooled connection the server has closed fails on
  its first statement, SQLAlchemy then invalidates it (and every connection
  checked out before it), and a read that was the first statement of its
  session runs once more on a new connection (:func:`_retry_first_read`);
* :class:`SharedSession`: one session for a unit of work (an HTTP request, a
  WebSocket operation), lent to one user at a time, instead of one per
  resolver, loader and sign-in.

And on SQLite, whose writers take turns, :func:`retry_busy` runs a unit again
when it waited past the busy timeout for another writer, and then gives up
with ``SERVICE_UNAVAILABLE`` rather than a masked internal error.
"""

from __future__ import annotations

import asyncio
import functools
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog
from sqlalchemy import event
from sqlalchemy.engine import Result, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from core import sqlite, tracing
from core.errors import Unavailable
from core.metrics import watch_pool
from core.settings import Settings

BUSY_TRIES: Final = 3
"""How many times :func:`retry_busy` runs a unit that SQLite found locked."""

logger = structlog.get_logger("depot.db")
T = TypeVar("T")


def create_engine(settings: Settings) -> AsyncEngine:
    """Build the engine for ``settings.database_url``, tuned for its database.

    SQLite gets WAL (readers never wait for the writer), foreign keys (off by
    default there), a busy timeout (a second writer waits instead of
    failing) and one trip to aiosqlite's thread per statement
    (:mod:`core.sqlite`). PostgreSQL gets a sized pool, without ``pool_pre_ping``: the
    ping cost a ``BEGIN; ;ROLLBACK`` round trip per checkout, and a dead
    connection is recovered from when it is used instead (see the module's
    docstring). In production a statement's parameters (emails, token hashes,
    paths) stay out of error messages, and so out of logged tracebacks. With
    tracing on, its statements are traced (:func:`core.tracing.trace_sql`).
    """
    url = make_url(settings.database_url)
    hide_parameters = settings.is_production
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa_asyncio.create_async_engine(
            url, hide_parameters=hide_parameters, module=sqlite.dbapi()
        )
        configure = functools.partial(_configure_sqlite, settings.sqlite_busy_timeout_ms)
        event.listen(engine.sync_engine, "connect", configure)
    else:
        engine = sa_asyncio.create_async_engine(
            url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            hide_parameters=hide_parameters,
        )
    if settings.metrics_enabled:
        watch_pool(engine)
    if tracing.enabled():
        tracing.trace_sql(engine)
    return engine


def _configure_sqlite(busy_timeout_ms: int, dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def is_busy(exc: BaseException) -> bool:
    """SQLite's ``database is locked`` (``SQLITE_BUSY``, ``SQLITE_LOCKED`` and their
    extended codes): other writers held the database past the busy timeout, or a
    read snapshot went stale before its write. The statement changed nothing."""
    orig = exc.orig if isinstance(exc, OperationalError) else None
    code = getattr(orig, "sqlite_errorcode", None)
    return (
        isinstance(orig, sqlite3.OperationalError)
        and isinstance(code, int)
        and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    )


async def retry_busy(unit: Callable[[], Awaitable[T]], *, what: str) -> T:
    """``unit()``, run again (up to :data:`BUSY_TRIES` in all) while SQLite finds the
    database locked; then ``SERVICE_UNAVAILABLE`` (:class:`~core.errors.Unavailable`).

    ``unit`` must be one transaction or several that are each safe to repeat,
    in blocks of their own (a block that raises rolls back what it began,
    :class:`SharedSession`), so that giving up leaves nothing half-done, and
    must do what cannot be repeated (a send, an announcement) after its last
    commit only. ``what`` names it in the log. Each retry waits a little
    first, at random, so that the writers that timed out together do not
    meet again.
    """
    for tries in range(1, BUSY_TRIES + 1):
        try:
            return await unit()
        except OperationalError as exc:
            if not is_busy(exc):
                raise
            if tries == BUSY_TRIES:
                logger.warning("database busy; giving up", what=what, tries=tries)
                raise Unavailable(
                    "The database is busy with other changes; nothing was changed. Try again.",
                    retry_after=1,
                ) from exc
            logger.info("database busy; trying again", what=what, tries=tries)
            await asyncio.sleep(random.uniform(0.01, 0.1) * tries)  # noqa: S311 - jitter
    raise AssertionError("unreachable")


class DepotSession(Session):
    """SQLModel's session, with :func:`_retry_first_read` listening on it."""


@event.listens_for(DepotSession, "do_orm_execute")
def _retry_first_read(state: ORMExecuteState) -> Result[Any] | None:
    """Run a session's first statement, a read, again if its connection turned out dead.

    Only then is a retry sure to repeat nothing: no transaction was under
    way, no row was loaded or added (a rollback would expire or drop it), and
    a ``SELECT`` changes nothing if it did reach the server. Any other
    statement on a dead connection fails as before, and the pool, already
    invalidated, hands the next one a fresh connection. Costs one function
    call per statement, and a re-entry into the session for a session's
    first read.
    """
    session = state.session
    if not state.is_select or session.in_transaction() or session.identity_map or session.new:
        return None
    try:
        return state.invoke_statement()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.warning("database connection lost; reading again on a new one", error=str(exc.orig))
    session.rollback()
    return state.invoke_statement()


class SessionMaker(async_sessionmaker[AsyncSession]):
    """Sessions that keep loaded objects usable after commit (no lazy reloads).

    ``reads`` is the engine a read-only unit of work binds to: on PostgreSQL
    the same pool in autocommit, so a query's reads need no ``BEGIN`` and
    ``ROLLBACK`` round trips around them (READ COMMITTED, the default, gives
    each statement its own snapshot inside a transaction too). SQLite's
    driver begins a transaction only before a write, so there it is the
    engine itself.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(
            engine, class_=AsyncSession, sync_session_class=DepotSession, expire_on_commit=False
        )
        self.engine = engine
        self.reads = (
            engine
            if engine.dialect.name == "sqlite"
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    """Depot's sessions on ``engine`` (:class:`SessionMaker`)."""
    return SessionMaker(engine)


class SharedSession:
    """One session for a unit of work, lent to one block at a time: ``async with shared() as db``.

    An HTTP request's sign-in, resolvers and dataloaders each take a block;
    they share one session and connection, and a lock keeps the blocks of
    concurrently resolved fields from using it at once (an ``AsyncSession``
    allows only one statement at a time). The session opens lazily, so a
    request that reads nothing never checks out a connection.

    A unit reads outside transactions (``SessionMaker.reads``) until
    :meth:`for_writes` says it is a mutation's; from then on, to its end,
    every block runs in a transaction.

    A block is a unit, as when it had a session of its own: it commits what
    it means to keep (mutations commit where they always have), and one that
    raises closes the session, which rolls back whatever it began and
    detaches the rows read so far (still readable, unlike the expired rows a
    rollback leaves). The next block opens a new session. A row a caller
    keeps beyond its block (the signed-in user, a loader's cache) is taken
    out of the session (``expunge``), so that no other block's rollback
    expires it. :meth:`close` ends the unit, also between blocks; never take
    a block inside another one (the lock is not re-entrant).
    """

    def __init__(self, sessionmaker: SessionMaker) -> None:
        self._sessionmaker = sessionmaker
        self._session: AsyncSession | None = None
        self._writes = False
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        async with self._lock:
            if self._session is None:
                maker = self._sessionmaker
                self._session = maker() if self._writes else maker(bind=maker.reads)
            session = self._session
            try:
                yield session
            except BaseException:
                self._session = None
                # Shielded, as AsyncSession's own exit is: a cancelled block still gives
                # its connection back.
                await asyncio.shield(session.close())
                raise

    @property
    def writes(self) -> bool:
        """Whether the unit is a mutation's (:meth:`for_writes`)."""
        return self._writes

    async def for_writes(self) -> None:
        """Run every later block in a transaction, as a mutation's need to be.

        For good: a WebSocket's operations share the unit, and one still
        running must not lose its transactions to another one's end. A
        session open so far ends its autocommit "transaction" (nothing is
        sent: nothing was begun) and binds to the engine itself for the next.
        """
        async with self._lock:
            if self._writes:
                return
            self._writes = True
            session, engine = self._session, self._sessionmaker.engine
            if session is not None and session.bind is not engine:
                await session.commit()
                session.bind = engine
                session.sync_session.bind = engine.sync_engine

    async def close(self) -> None:
        """End the unit of work: roll back what no block committed, return the connection."""
        if self._session is None and not self._lock.locked():
            # Nothing to end and no block opening one (every request closes twice).
            return
        async with self._lock:
            session, self._session = self._session, None
            if session is not None:
                await asyncio.shield(session.close())
