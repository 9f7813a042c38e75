"""A direct-upload ticket keeps the fingerprint of the bytes Depot's PUT route saw.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("seen_sha256", 64), ("seen_content_type", 255), ("seen_etag", 255))


def upgrade() -> None:
    for name, length in COLUMNS:
        op.add_column("upload", sa.Column(name, sa.String(length=length), nullable=True))
    # What the probe of the headers found (core.probe), for the file's metadata.
    op.add_column("upload", sa.Column("seen_meta", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE, as in 0002: batch mode would copy the table on SQLite.
    op.drop_column("upload", "seen_meta")
    for name, _ in reversed(COLUMNS):
        op.drop_column("upload", name)
