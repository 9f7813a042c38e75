"""A file remembers the file it was derived from (a thumbnail's source).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("file", sa.Column("derived_from_id", sa.Uuid(), nullable=True))
    op.create_index("ix_file_derived_from_id", "file", ["derived_from_id"])


def downgrade() -> None:
    op.drop_index("ix_file_derived_from_id", table_name="file")
    # Plain ALTER TABLE, as in 0002: batch mode would copy the table on SQLite.
    op.drop_column("file", "derived_from_id")
