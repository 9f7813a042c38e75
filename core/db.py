"""The async database engine and sessions, for SQLite and PostgreSQL alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from core.metrics import watch_pool
from core.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 5000

SessionMaker = async_sessionmaker[AsyncSession]


def create_engine(settings: Settings) -> AsyncEngine:
    """Build the engine for ``settings.database_url``, tuned for its database.

    SQLite gets WAL (readers never wait for the writer), foreign keys (off by
    default there) and a busy timeout (a second writer waits instead of
    failing). PostgreSQL gets a sized, pre-pinged pool. In production a
    statement's parameters (emails, token hashes, paths) stay out of error
    messages, and so out of logged tracebacks.
    """
    url = make_url(settings.database_url)
    hide_parameters = settings.is_production
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # Looked up on the module: traced once core.tracing instrumented it.
        engine = sa_asyncio.create_async_engine(url, hide_parameters=hide_parameters)
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
    else:
        engine = sa_asyncio.create_async_engine(
            url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_pre_ping=True,
            hide_parameters=hide_parameters,
        )
    if settings.metrics_enabled:
        watch_pool(engine)
    return engine


def _configure_sqlite(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    """Sessions that keep loaded objects usable after commit (no lazy reloads)."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
