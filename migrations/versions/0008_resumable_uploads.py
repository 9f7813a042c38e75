"""Resumable uploads: through tus, or in parts sent straight to S3.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.time

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resumable_upload",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("tus", "multipart", name="uploadkind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("upload_metadata", sa.String(length=4096), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("storage_handle", sa.String(length=1024), nullable=False),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("expires_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("busy_until", core.time.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("storage_key"),
    )
    op.create_index("ix_resumable_upload_owner_id", "resumable_upload", ["owner_id"])
    op.create_index("ix_resumable_upload_expires_at", "resumable_upload", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_resumable_upload_expires_at", table_name="resumable_upload")
    op.drop_index("ix_resumable_upload_owner_id", table_name="resumable_upload")
    op.drop_table("resumable_upload")
