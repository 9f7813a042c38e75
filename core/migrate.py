"""Apply, inspect and check Alembic migrations from async code.

Alembic is synchronous; each command runs inside ``run_sync`` on one
connection of Depot's own engine, so SQLite and PostgreSQL take the same path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations

SCRIPT_LOCATION = Path(migrations.__file__).parent


class SchemaBehind(Exception):
    """Raised when the database is not at the latest migration in production."""


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest revision of the code running: read once per process.

    Finding it executes every version file (~20 ms, more as they grow), and
    every app start asks (``prepare_schema``); the files of a running process
    do not change under it.
    """
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def history() -> list[str]:
    """One line per revision, newest first, as ``rev (down) message``."""
    script = ScriptDirectory.from_config(alembic_config())
    return [
        f"{rev.revision} <- {rev.down_revision or 'base'}: {rev.doc}"
        for rev in script.walk_revisions()
    ]


async def _run(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: action(alembic_config(sync)))


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    await _run(engine, lambda config: command.downgrade(config, revision))


async def revision(engine: AsyncEngine, message: str, *, autogenerate: bool) -> None:
    def write(config: Config) -> None:
        command.revision(config, message=message, autogenerate=autogenerate)

    await _run(engine, write)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def ensure_current(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaBehind` unless the database is at the head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaBehind(
            f"the database schema is at {current or 'no revision'} but this version of "
            f"Depot needs {head}; run `depot migrate upgrade` and start again"
        )


async def prepare_schema(engine: AsyncEngine, *, production: bool) -> None:
    """At start: migrate in development; in production, refuse a schema that is behind."""
    if production:
        await ensure_current(engine)
    # A database already at head is the common start (every restart, every test's
    # copy of a migrated template): one SELECT instead of Alembic's upgrade, which
    # loads the environment and every version file again (~20 ms) to do nothing.
    elif await current_revision(engine) != head_revision():
        await upgrade(engine)
