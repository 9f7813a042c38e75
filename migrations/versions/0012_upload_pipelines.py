"""An upload's pipeline exists from the upload's creation; a ticket names the file it made.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "job",
        sa.Column("awaiting_upload", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("upload", sa.Column("pipeline_id", sa.Uuid(), nullable=True))
    op.add_column("upload", sa.Column("file_id", sa.Uuid(), nullable=True))
    op.add_column("resumable_upload", sa.Column("pipeline_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE, as in 0002: batch mode would copy the table on SQLite.
    op.drop_column("resumable_upload", "pipeline_id")
    op.drop_column("upload", "file_id")
    op.drop_column("upload", "pipeline_id")
    op.drop_column("job", "awaiting_upload")
