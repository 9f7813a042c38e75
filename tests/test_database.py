"""The engine ``core.db`` builds, and the UTC timestamp type, on each database."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select, text
from sqlalchemy.exc import IntegrityError, StatementError
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


class _CountedCalls:
    """aiosqlite's queue of calls for its connection's thread, counting what is put on it."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.calls = 0

    def put_nowait(self, item: Any) -> None:
        self.calls += 1
        self.queue.put_nowait(item)


async def _counted(connection: AsyncConnection) -> _CountedCalls:
    raw = await connection.get_raw_connection()
    driver = raw.dbapi_connection._connection  # type: ignore[union-attr]
    counted = _CountedCalls(driver._tx)
    driver._tx = counted
    return counted


_rows = Table(
    "rows", MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer, unique=True)
)


async def test_a_sqlite_statement_is_one_trip_to_its_thread(tmp_path: Path) -> None:
    """core.sqlite: each statement is one call on aiosqlite's thread (SQLAlchemy's adapter
    made three or four), an empty COMMIT or ROLLBACK none, and what the driver reports
    (returned rows, row counts, last row ids, errors, rollbacks) is as before."""
    engine = create_engine(make_settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'a.db'}"))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_rows.metadata.create_all)
        async with engine.connect() as connection:
            counted = await _counted(connection)
            returned = await connection.execute(
                insert(_rows).values(n=1).returning(_rows.c.id, _rows.c.n)
            )
            assert returned.all() == [(1, 1)]
            inserted = await connection.execute(insert(_rows).values(n=2))
            assert inserted.inserted_primary_key == (2,)  # the cursor's lastrowid
            await connection.execute(insert(_rows), [{"n": 3}, {"n": 4}])  # executemany
            changed = await connection.execute(
                _rows.update().where(_rows.c.n > 2).values(n=_rows.c.n * 10)
            )
            assert changed.rowcount == 2
            assert (await connection.execute(select(_rows.c.n).order_by(_rows.c.n))).all() == [
                (1,),
                (2,),
                (30,),
                (40,),
            ]
            await connection.commit()
            assert counted.calls == 6  # five statements and the COMMIT
            # A read outside a transaction: one call, and none to end it.
            assert await connection.scalar(select(func.count()).select_from(_rows)) == 4
            await connection.commit()
            await connection.rollback()
            assert counted.calls == 7
            # A failed statement raises as before, and a transaction's ROLLBACK still goes.
            await connection.execute(insert(_rows).values(n=5))
            with pytest.raises(IntegrityError):
                await connection.execute(insert(_rows).values(n=1))
            await connection.rollback()
            assert counted.calls == 10
        async with engine.connect() as connection:
            assert await connection.scalar(select(func.max(_rows.c.n))) == 40
    finally:
        await engine.dispose()
