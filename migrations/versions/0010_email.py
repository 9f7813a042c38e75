"""Mail: verified addresses, single-use tokens sent by mail, notification preferences
and the notifications waiting to be mailed.

Accounts from before this revision count as verified: nobody could verify before.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.time

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PREFERENCES = (
    "mail_job_succeeded",
    "mail_job_failed",
    "mail_storage_full",
    "mail_webhook_disabled",
)
_DATES = ("email_verified_at", "notified_at", "storage_warned_at")


def upgrade() -> None:
    # Plain ALTER TABLE, not batch mode: on SQLite, batch mode copies the table
    # and silently drops the expression index uq_user_email_lower (see 0002).
    for name in _DATES:
        op.add_column("user", sa.Column(name, core.time.UTCDateTime(), nullable=True))
    for name in _PREFERENCES:
        op.add_column(
            "user", sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.true())
        )
    op.execute(sa.text('UPDATE "user" SET email_verified_at = created_at'))
    op.create_table(
        "email_token",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "purpose",
            sa.Enum("reset", "verify", name="tokenpurpose", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("expires_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("used_at", core.time.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_email_token_user_id", "email_token", ["user_id"])
    op.create_table(
        "notification",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "job_succeeded",
                "job_failed",
                "storage_full",
                "webhook_disabled",
                name="notificationkind",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("subject_id", sa.Uuid(), nullable=True),
        sa.Column("summary", sa.String(length=500), nullable=False),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_notification_user_subject", "notification", ["user_id", "subject_id"])
    op.create_index("ix_notification_created_at", "notification", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_notification_created_at", table_name="notification")
    op.drop_index("ix_notification_user_subject", table_name="notification")
    op.drop_table("notification")
    op.drop_index("ix_email_token_user_id", table_name="email_token")
    op.drop_table("email_token")
    for name in (*_PREFERENCES, *_DATES):
        op.drop_column("user", name)
