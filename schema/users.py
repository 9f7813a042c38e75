"""The ``User`` type and how users are looked up by global id."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Self

import strawberry

from core import models
from schema.context import Info
from schema.ids import encode_id
from schema.node import Node
from schema.scalars import BigInt


@strawberry.enum
class Role(Enum):
    USER = "user"
    ADMIN = "admin"


@strawberry.type
class Usage:
    used_bytes: BigInt
    quota_bytes: BigInt


@strawberry.type
class User(Node):
    """A Depot account, visible to itself and to admins."""

    email: str
    display_name: str
    role: Role
    is_active: bool
    created_at: datetime
    usage: Usage

    @classmethod
    def from_model(cls, user: models.User) -> Self:
        return cls(
            id=strawberry.ID(encode_id("User", user.id)),
            email=user.email,
            display_name=user.display_name,
            role=Role(user.role.value),
            is_active=user.is_active,
            created_at=user.created_at,
            usage=Usage(used_bytes=BigInt(user.used_bytes), quota_bytes=BigInt(user.quota_bytes)),
        )


async def resolve_user(info: Info, key: uuid.UUID) -> User | None:
    """A user is visible to themselves and to admins; to anyone else it does not exist."""
    viewer = info.context.user
    if viewer is None:
        return None
    if viewer.id != key and viewer.role is not models.Role.ADMIN:
        return None
    async with info.context.sessionmaker() as session:
        user = await session.get(models.User, key)
    return User.from_model(user) if user is not None else None
