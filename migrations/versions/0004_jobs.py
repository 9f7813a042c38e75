"""Jobs and the files they read.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.time

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("thumbnails", "convert", "archive", "extract", "verify")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind", sa.Enum(*KINDS, name="jobkind", native_enum=False, length=16), nullable=False
        ),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="jobstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("updated_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("sent_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("started_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("cancel_requested_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("finished_at", core.time.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_owner_created", "job", ["owner_id", "created_at", "id"])
    op.create_index("ix_job_status_updated", "job", ["status", "updated_at"])
    op.create_index("uq_job_owner_idempotency", "job", ["owner_id", "idempotency_key"], unique=True)
    op.create_table(
        "job_input",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["file_id"], ["file.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "position"),
    )
    op.create_index("ix_job_input_file_id", "job_input", ["file_id"])
    op.create_index("ix_file_produced_by_job_id", "file", ["produced_by_job_id"])


def downgrade() -> None:
    op.drop_index("ix_file_produced_by_job_id", table_name="file")
    op.drop_index("ix_job_input_file_id", table_name="job_input")
    op.drop_table("job_input")
    op.drop_index("uq_job_owner_idempotency", table_name="job")
    op.drop_index("ix_job_status_updated", table_name="job")
    op.drop_index("ix_job_owner_created", table_name="job")
    op.drop_table("job")
