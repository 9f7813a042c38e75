"""SQLModel entities: the truth about users (and, later, files and jobs)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import Enum, Index, func
from sqlmodel import Field, SQLModel

from core.time import UTCDateTime, utcnow


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class User(SQLModel, table=True):
    """An account. ``email`` is stored normalised and unique ignoring case."""

    __tablename__ = "user"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=320)
    display_name: str = Field(max_length=100)
    role: Role = Field(
        default=Role.USER,
        sa_type=Enum(
            Role, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]
        ),
    )
    is_active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# Unique ignoring case on both databases, whatever normalisation a caller forgot.
Index("uq_user_email_lower", func.lower(SQLModel.metadata.tables["user"].c.email), unique=True)
