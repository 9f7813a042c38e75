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

# Every test here starts from a really empty database, not the migrated copy.
pytestmark = [pytest.mark.anyio, pytest.mark.empty_database]

T = TypeVar("T")

USER_COLUMNS = {
    "id",
    "email",
    "display_name",
    "password_hash",
    "role",
    "is_active",
    "quota_bytes",
    "used_bytes",
    "created_at",
    "updated_at",
    "email_verified_at",
    "mail_job_succeeded",
    "mail_job_failed",
    "mail_storage_full",
    "mail_webhook_disabled",
    "notified_at",
    "storage_warned_at",
}
# The user's columns that may be null: times of what may not have happened yet.
USER_NULLABLE = {"email_verified_at", "notified_at", "storage_warned_at"}
TABLES = {
    "alembic_version",
    "user",
    "session",
    "credential",
    "file",
    "upload",
    "resumable_upload",
    "job",
    "job_input",
    "webhook",
    "webhook_delivery",
    "email_token",
    "notification",
    "pipeline_template",
}


async def _inspect(engine: AsyncEngine, look: Callable[[Inspector], T]) -> T:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: look(inspect(sync)))


async def _tables(engine: AsyncEngine) -> set[str]:
    return set(await _inspect(engine, Inspector.get_table_names))


def _user(email: str) -> User:
    return User(email=email, display_name="Ada", password_hash="!", quota_bytes=0)


async def _assert_email_unique_ignoring_case(engine: AsyncEngine) -> None:
    async with create_sessionmaker(engine)() as session:
        session.add(_user("Ada@Example.com"))
        await session.commit()
        session.add(_user("ada@example.COM"))
        with pytest.raises(IntegrityError):
            await session.commit()


async def test_upgrade_creates_the_tables(engine: AsyncEngine) -> None:
    assert await _tables(engine) == set()
    await migrate.upgrade(engine)
    assert await _tables(engine) == TABLES
    columns = await _inspect(engine, lambda inspector: inspector.get_columns("user"))
    assert {column["name"] for column in columns} == USER_COLUMNS
    assert {column["name"] for column in columns if column["nullable"]} == USER_NULLABLE
    primary_key = await _inspect(engine, lambda inspector: inspector.get_pk_constraint("user"))
    assert primary_key["constrained_columns"] == ["id"]
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_downgrade_to_base_and_upgrade_again(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    await migrate.downgrade(engine, "base")
    assert await _tables(engine) == {"alembic_version"}
    assert await migrate.current_revision(engine) is None
    await migrate.upgrade(engine)
    assert await _tables(engine) == TABLES
    assert await migrate.current_revision(engine) == migrate.head_revision()
    # SQLite's batch mode would rebuild the table and silently drop the expression index.
    await _assert_email_unique_ignoring_case(engine)


async def test_downgrading_the_accounts_revision_keeps_the_email_index(
    engine: AsyncEngine,
) -> None:
    await migrate.upgrade(engine)
    await migrate.downgrade(engine, "0001")
    assert await _tables(engine) == {"alembic_version", "user"}
    await migrate.upgrade(engine)
    await _assert_email_unique_ignoring_case(engine)


async def test_email_is_unique_ignoring_case(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    await _assert_email_unique_ignoring_case(engine)


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
