"""The engine ``core.db`` builds, and the UTC timestamp type, on each database."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.db import create_engine
from core.time import UTCDateTime
from tests.conftest import ReusedSqliteDatabase, make_settings

pytestmark = pytest.mark.anyio

_metadata = MetaData()
_stamps = Table(
    "stamps",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("at", UTCDateTime, nullable=True),
)


@pytest.fixture
async def stamps(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection, in a transaction, to a database holding a ``stamps`` table."""
    async with engine.begin() as connection:
        await connection.run_sync(_metadata.create_all)
        yield connection


async def _round_trip(connection: AsyncConnection, value: datetime | None) -> datetime | None:
    row_id = await connection.scalar(insert(_stamps).values(at=value).returning(_stamps.c.id))
    stored: datetime | None = await connection.scalar(
        select(_stamps.c.at).where(_stamps.c.id == row_id)
    )
    return stored


async def _pragmas(connection: AsyncConnection) -> dict[str, object]:
    return {
        name: await connection.scalar(text(f"PRAGMA {name}"))
        for name in ("journal_mode", "foreign_keys", "busy_timeout")
    }


async def test_sqlite_connections_are_tuned(tmp_path: Path) -> None:
    engine = create_engine(make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'a.db'}"))
    try:
        # Two connections open at once are two DBAPI connections: each must be set up.
        async with engine.connect() as first, engine.connect() as second:
            raw = [await c.get_raw_connection() for c in (first, second)]
            assert raw[0].dbapi_connection is not raw[1].dbapi_connection
            expected = {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000}
            assert await _pragmas(first) == expected
            assert await _pragmas(second) == expected
    finally:
        await engine.dispose()


async def test_sqlite_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there" / "depot.db"
    engine = create_engine(make_settings(tmp_path, database_url=f"sqlite:///{path}"))
    try:
        assert path.parent.is_dir()
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert path.is_file()
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    "value",
    [
        datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2030, 1, 2, 5, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
        datetime(2030, 1, 1, 22, 4, 5, 678901, tzinfo=timezone(timedelta(hours=-5))),
    ],
    ids=["utc", "east", "west"],
)
async def test_utc_datetime_round_trips_as_aware_utc(
    stamps: AsyncConnection, value: datetime
) -> None:
    stored = await _round_trip(stamps, value)
    assert stored == value
    assert stored is not None
    assert stored.tzinfo is UTC
    assert stored.replace(tzinfo=None) == datetime(2030, 1, 2, 3, 4, 5, 678901)


async def test_utc_datetime_keeps_null(stamps: AsyncConnection) -> None:
    assert await _round_trip(stamps, None) is None


async def test_utc_datetime_refuses_naive_values(stamps: AsyncConnection) -> None:
    with pytest.raises(StatementError, match="naive datetime given"):
        await _round_trip(stamps, datetime(2030, 1, 2, 3, 4, 5))


@pytest.mark.parametrize("environment", ["development", "production"])
async def test_statement_parameters_stay_out_of_errors_in_production(
    tmp_path: Path, database_url: str, environment: str
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, environment=environment)
    engine = create_engine(settings)
    secret = "ada-secret@example.com"
    try:
        async with engine.connect() as connection:
            with pytest.raises(Exception) as raised:  # noqa: PT011 - each driver its own
                await connection.execute(
                    text("SELECT * FROM no_such_table WHERE email = :email"), {"email": secret}
                )
    finally:
        await engine.dispose()
    assert (secret in str(raised.value)) is (environment == "development")


def _row_in_every_column(db: sqlite3.Connection, table: str) -> None:
    """Insert one row into ``table``, a value of its type in every column."""
    columns = [(row[1], row[2].upper()) for row in db.execute(f'PRAGMA table_info("{table}")')]
    values = [0 if "INT" in kind or "BOOL" in kind else "2026-01-01" for _, kind in columns]
    names = ", ".join(f'"{name}"' for name, _ in columns)
    marks = ", ".join("?" for _ in columns)
    db.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', values)  # noqa: S608


def test_a_reused_sqlite_database_is_emptied_or_copied_again(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """What the job tests that share a worker get (tests.conftest.ReusedSqliteDatabase):
    the same file with no rows, or a new copy once a test changed the schema."""
    reused = ReusedSqliteDatabase(request.getfixturevalue("_sqlite_template"), tmp_path)
    url = reused.checkout()
    path = Path(url.removeprefix("sqlite:///"))
    with closing(sqlite3.connect(path)) as db, db:
        _row_in_every_column(db, "user")
        _row_in_every_column(db, "pipeline_template")
    assert reused.checkout() == url
    with closing(sqlite3.connect(path)) as db:
        assert db.execute('SELECT count(*) FROM "user"').fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM pipeline_template").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    with closing(sqlite3.connect(path)) as db, db:
        db.execute('ALTER TABLE "pipeline_template" RENAME TO "renamed"')
    fresh = reused.checkout()
    assert fresh != url
    with closing(sqlite3.connect(fresh.removeprefix("sqlite:///"))) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "pipeline_template" in names
    assert "renamed" not in names
