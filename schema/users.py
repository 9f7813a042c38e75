"""The ``User`` type and how users are looked up by global id."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Self

import strawberry

from core import models
from core.errors import Forbidden
from schema.context import Info
from schema.enums import Role
from schema.files import File, FileFilter, FileOrder, list_files
from schema.ids import decode_id, encode_id
from schema.node import Node
from schema.pagination import Connection
from schema.scalars import BigInt

if TYPE_CHECKING:
    from schema.jobs import Job, JobFilter


@strawberry.type
class Usage:
    used_bytes: BigInt = strawberry.field(
        description="Bytes held by your files (trash included) and open uploads."
    )
    quota_bytes: BigInt
    owner_id: strawberry.Private[uuid.UUID]

    @strawberry.field(
        description="How many live files you have; files in the trash are not counted "
        "(their bytes still are, in usedBytes, until they are purged)."
    )
    async def file_count(self, info: Info) -> int:
        return await info.context.loaders.live_file_counts.load(self.owner_id)


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
            role=user.role,
            is_active=user.is_active,
            created_at=user.created_at,
            usage=Usage(
                used_bytes=BigInt(user.used_bytes),
                quota_bytes=BigInt(user.quota_bytes),
                owner_id=user.id,
            ),
        )

    @strawberry.field(
        description="Your files, as the top-level `files` lists them. Files are visible "
        "to their owner only: an admin asking for another user's gets `FORBIDDEN`."
    )
    async def files(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: FileFilter | None = None,
        order_by: FileOrder | None = None,
    ) -> Connection[File]:
        _, key = decode_id(self.id)
        # Owner only, as everywhere for files; it also keeps this one listing per
        # operation, where a list of users would cost one query per user.
        if info.context.require_principal().user.id != key:
            raise Forbidden("Files are visible to their owner only.")
        return await list_files(
            info, key, first=first, after=after, filter=filter, order_by=order_by
        )

    @strawberry.field(
        description="Your jobs, as the top-level `jobs` lists them; owner only, like `files`."
    )
    async def jobs(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: Annotated[JobFilter, strawberry.lazy("schema.jobs")] | None = None,
    ) -> Connection[Annotated[Job, strawberry.lazy("schema.jobs")]]:
        from schema.jobs import list_jobs

        _, key = decode_id(self.id)
        if info.context.require_principal().user.id != key:
            raise Forbidden("Jobs are visible to their owner only.")
        page: Connection[Job] = await list_jobs(info, key, first=first, after=after, filter=filter)
        return page


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
