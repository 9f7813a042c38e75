"""Alembic migrations on each database, and what the app does with them at start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from asgi_lifespan import LifespanManager
from sqlalchemy import inspect
from sqlalchemy.engine import Inspector
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from api.app import create_app
from core import migrate
from core.db import create_sessionmaker
from core.models import User
from core.settings import Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

T = TypeVar("T")

USER_COLUMNS = {"id", "email", "display_name", "role", "is_active", "created_at", "updated_at"}


async def _inspect(engine: AsyncEngine, look: Callable[[Inspector], T]) -> T:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: look(inspect(sync)))


async def _tables(engine: AsyncEngine) -> set[str]:
    return set(await _inspect(engine, Inspector.get_table_names))


async def test_upgrade_creates_the_user_table(engine: AsyncEngine) -> None:
    assert await _tables(engine) == set()
    await migrate.upgrade(engine)
    assert await _tables(engine) == {"alembic_version", "user"}
    columns = await _inspect(engine, lambda inspector: inspector.get_columns("user"))
    assert {column["name"] for column in columns} == USER_COLUMNS
    assert not any(column["nullable"] for column in columns)
    primary_key = await _inspect(engine, lambda inspector: inspector.get_pk_constraint("user"))
    assert primary_key["constrained_columns"] == ["id"]
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_downgrade_to_base_and_upgrade_again(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    await migrate.downgrade(engine, "base")
    assert await _tables(engine) == {"alembic_version"}
    assert await migrate.current_revision(engine) is None
    await migrate.upgrade(engine)
    assert "user" in await _tables(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_email_is_unique_ignoring_case(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session:
        session.add(User(email="Ada@Example.com", display_name="Ada"))
        await session.commit()
        session.add(User(email="ada@example.COM", display_name="Ada again"))
        with pytest.raises(IntegrityError):
            await session.commit()


# SQLite cannot reflect expression indexes, so there the case-insensitive email
# index is left out of the comparison (with these warnings); PostgreSQL compares
# it, and the test above checks its effect on both.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
async def test_models_match_the_migrations(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), SQLModel.metadata)
        )
    assert differences == []


async def test_development_migrates_at_start(settings: Settings, engine: AsyncEngine) -> None:
    async with LifespanManager(create_app(settings)):
        assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_production_refuses_an_unmigrated_database(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    app = create_app(make_settings(tmp_path, database_url=database_url, environment="production"))
    with pytest.raises(migrate.SchemaBehind, match=r"run `depot migrate upgrade`"):
        async with LifespanManager(app):
            pass
    assert await _tables(engine) == set()

    await migrate.upgrade(engine)
    async with LifespanManager(app):
        assert await migrate.current_revision(engine) == migrate.head_revision()
