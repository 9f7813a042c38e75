"""A job remembers the trace of the request that started it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE, as in 0002: batch mode would copy the table on SQLite.
    op.drop_column("job", "traceparent")
