"""Alembic environment: runs on the connection ``core.migrate`` hands over.

``depot migrate`` (and ``depot serve`` in development) open the connection on
the configured database and pass it in ``config.attributes["connection"]``, so
migrations run the same on SQLite and PostgreSQL, from sync or async code.
"""

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from core.time import UTCDateTime


def render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render Depot's own column types with the import they need."""
    if kind == "type" and isinstance(item, UTCDateTime):
        autogen_context.imports.add("import core.time")
        return "core.time.UTCDateTime()"
    return False


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `depot migrate`, not the alembic command")
run(connection)
