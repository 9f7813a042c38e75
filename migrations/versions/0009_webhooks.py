"""Webhooks and their deliveries.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.time

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVENTS = ("JOB_SUCCEEDED", "JOB_FAILED", "JOB_CANCELLED", "FILE_CREATED", "FILE_DELETED")


def upgrade() -> None:
    op.create_table(
        "webhook",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("failing_since", core.time.UTCDateTime(), nullable=True),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("updated_at", core.time.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_owner_id", "webhook", ["owner_id"])
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("webhook_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column(
            "event_type",
            sa.Enum(*_EVENTS, name="webhookeventtype", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("payload", sa.String(length=65536), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("first_due_at", core.time.UTCDateTime(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "succeeded",
                "failed",
                name="deliverystatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("due_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("sent_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("attempted_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("response_excerpt", sa.String(length=1024), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("next_retry_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhook.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_webhook_delivery_webhook_created",
        "webhook_delivery",
        ["webhook_id", "created_at", "id"],
    )
    op.create_index("ix_webhook_delivery_status_due", "webhook_delivery", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_delivery_status_due", table_name="webhook_delivery")
    op.drop_index("ix_webhook_delivery_webhook_created", table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_index("ix_webhook_owner_id", table_name="webhook")
    op.drop_table("webhook")
