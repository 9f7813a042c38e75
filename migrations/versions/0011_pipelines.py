"""Pipelines: a step's job names its pipeline and step; users save pipeline templates.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.time

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("pipeline_id", sa.Uuid(), nullable=True))
    op.add_column("upload", sa.Column("pipeline", sa.JSON(), nullable=True))
    op.add_column("job", sa.Column("step", sa.String(length=64), nullable=True))
    op.create_index("uq_job_pipeline_step", "job", ["pipeline_id", "step"], unique=True)
    op.create_table(
        "pipeline_template",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("created_at", core.time.UTCDateTime(), nullable=False),
        sa.Column("updated_at", core.time.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "uq_pipeline_template_owner_name", "pipeline_template", ["owner_id", "name"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_pipeline_template_owner_name", table_name="pipeline_template")
    op.drop_table("pipeline_template")
    op.drop_index("uq_job_pipeline_step", table_name="job")
    # Plain ALTER TABLE, as in 0002: batch mode would copy the table on SQLite.
    op.drop_column("job", "step")
    op.drop_column("job", "pipeline_id")
    op.drop_column("upload", "pipeline")
