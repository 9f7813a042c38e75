"""Accounts: passwords, quotas, sessions and credentials.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.time

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE, not batch mode: on SQLite, batch mode copies the table
    # and silently drops the expression index uq_user_email_lower.
    # "!" is no valid Argon2 hash: rows from before this revision cannot sign in.
    op.add_column(
        "user", sa.Column("password_hash", sa.String(255), nullable=False, server_default="!")
    )
    op.add_column(
        "user", sa.Column("quota_bytes", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.add_column(
        "user", sa.Column("used_bytes", sa.BigInteger(), nullable=False, server_default="0")
    )
    op.create_table(
        "session",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", core.time.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_session_user_id", "session", ["user_id"])
    op.create_table(
        "credential",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("refresh", "personal", name="credentialkind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("expires_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("last_used_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("used_at", core.time.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", core.time.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["session_id"], ["session.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_credential_session_id", "credential", ["session_id"])
    op.create_index("ix_credential_user_id", "credential", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_credential_user_id", table_name="credential")
    op.drop_index("ix_credential_session_id", table_name="credential")
    op.drop_table("credential")
    op.drop_index("ix_session_user_id", table_name="session")
    op.drop_table("session")
    for column in ("used_bytes", "quota_bytes", "password_hash"):
        op.drop_column("user", column)
