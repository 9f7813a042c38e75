"""Files in GraphQL: the ``File`` type, finding and listing files, and changing them.

A file is visible to its owner only; to anyone else, by id or in a list, it
does not exist (``NOT_FOUND``, exactly as for an id never issued). Its owner
is loaded through the operation's dataloaders, so a page of files costs the
same number of queries whatever its length.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Self

import strawberry
from sqlalchemy import ColumnElement, or_
from sqlmodel import col
from strawberry.scalars import JSON

from core import files, jobs, models
from core.errors import BadUserInput, NotFound
from core.paths import normalize_path
from schema.context import Info
from schema.ids import decode_id_of, encode_id
from schema.node import Node
from schema.pagination import (
    CREATED_AT,
    Connection,
    OrderDirection,
    Ordering,
    SortKey,
    load_int,
    paginate,
)
from schema.permissions import IsAuthenticated
from schema.scalars import BigInt

if TYPE_CHECKING:
    from schema.jobs import Job
    from schema.users import User


@strawberry.type
class File(Node):
    """A file owned by one user; to anyone else it does not exist."""

    path: str
    name: str
    size: BigInt
    content_type: str
    sha256: str
    metadata: JSON
    created_at: datetime
    updated_at: datetime
    trashed_at: datetime | None
    owner_id: strawberry.Private[uuid.UUID]
    storage_key: strawberry.Private[str]
    produced_by_job_id: strawberry.Private[uuid.UUID | None]

    @classmethod
    def from_model(cls, file: models.File) -> Self:
        return cls(
            id=strawberry.ID(encode_id("File", file.id)),
            path=file.path,
            name=file.name,
            size=BigInt(file.size),
            content_type=file.content_type,
            sha256=file.sha256,
            metadata=JSON(file.meta),
            created_at=file.created_at,
            updated_at=file.updated_at,
            trashed_at=file.trashed_at,
            owner_id=file.owner_id,
            storage_key=file.storage_key,
            produced_by_job_id=file.produced_by_job_id,
        )

    @strawberry.field(
        description="A link that downloads the bytes until it expires "
        "(`DEPOT_DOWNLOAD_URL_MINUTES`); ask again for a fresh one."
    )
    async def download_url(self, info: Info) -> str:
        settings = info.context.settings
        return await info.context.storage.download_url(
            self.storage_key,
            filename=self.name,
            content_type=self.content_type,
            expires_in=timedelta(minutes=settings.download_url_minutes),
        )

    @strawberry.field(description="The user the file belongs to.")
    async def owner(self, info: Info) -> Annotated[User, strawberry.lazy("schema.users")]:
        from schema.users import User

        owner = await info.context.loaders.users.load(self.owner_id)
        if owner is None:  # owners' files go with them (ON DELETE CASCADE)
            raise NotFound("No such user.")
        return User.from_model(owner)

    @strawberry.field(description="The job that made this file; null for an upload.")
    async def produced_by(
        self, info: Info
    ) -> Annotated[Job, strawberry.lazy("schema.jobs")] | None:
        from schema.jobs import Job

        if self.produced_by_job_id is None:
            return None
        job = await info.context.loaders.jobs.load(self.produced_by_job_id)
        return Job.from_model(job) if job is not None else None

    @strawberry.field(description="Jobs that read this file, oldest first.")
    async def jobs(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Annotated[Job, strawberry.lazy("schema.jobs")]]:
        from schema.jobs import file_jobs

        loader = info.context.loaders.paged("file_jobs", first, after, file_jobs)
        page: Connection[Job] = await loader.load(self.id_key)
        return page

    @property
    def id_key(self) -> uuid.UUID:
        return decode_id_of("File", self.id)


# -- listing -----------------------------------------------------------------------


@strawberry.input(description="Which files to list; every condition given must hold.")
class FileFilter:
    path_prefix: str | None = strawberry.field(
        default=None,
        description='Files at this path or below it, by whole segments: "a/b" matches '
        '"a/b" and "a/b/c", not "a/bc".',
    )
    name_contains: str | None = strawberry.field(
        default=None, description="Part of the file name, ignoring case (`%` and `_` are literal)."
    )
    content_type: str | None = strawberry.field(
        default=None, description='An exact content type, or a family like "image/*".'
    )
    trashed: bool = strawberry.field(
        default=False, description="False (default): live files only; true: the trash only."
    )


@strawberry.enum
class FileOrderField(Enum):
    PATH = "PATH"
    CREATED_AT = "CREATED_AT"
    SIZE = "SIZE"


@strawberry.input(description="How files are ordered; the id breaks ties.")
class FileOrder:
    field: FileOrderField = FileOrderField.CREATED_AT
    direction: OrderDirection = OrderDirection.ASC


_SORT_KEYS = {
    FileOrderField.PATH: SortKey("PATH", "path"),
    FileOrderField.CREATED_AT: CREATED_AT,
    FileOrderField.SIZE: SortKey("SIZE", "size", load=load_int),
}

# type "/" subtype, or type "/*".
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)")


def _escape_like(text: str) -> str:
    """``text`` for a LIKE pattern with ``\\`` as escape: its wildcards match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def file_conditions(owner_id: uuid.UUID, filter: FileFilter | None) -> list[ColumnElement[bool]]:
    """The WHERE conditions for ``owner_id``'s files matching ``filter``."""
    filter = filter or FileFilter()
    trashed = col(models.File.trashed_at)
    conditions = [
        col(models.File.owner_id) == owner_id,
        trashed.is_not(None) if filter.trashed else trashed.is_(None),
    ]
    if filter.path_prefix is not None and filter.path_prefix.strip("/"):
        prefix = normalize_path(filter.path_prefix, field="filter.pathPrefix")
        path = col(models.File.path)
        conditions.append(or_(path == prefix, path.like(_escape_like(prefix) + "/%", escape="\\")))
    if filter.name_contains:
        pattern = f"%{_escape_like(filter.name_contains)}%"
        conditions.append(col(models.File.name).ilike(pattern, escape="\\"))
    if filter.content_type is not None:
        wanted = filter.content_type.strip().lower()
        if not _CONTENT_TYPE.fullmatch(wanted):
            raise BadUserInput(
                f"{filter.content_type!r} is not a content type like image/png or image/*.",
                field="filter.contentType",
            )
        content_type = col(models.File.content_type)
        if wanted.endswith("/*"):
            conditions.append(content_type.like(_escape_like(wanted[:-1]) + "%", escape="\\"))
        else:
            conditions.append(content_type == wanted)
    return conditions


def file_ordering(order_by: FileOrder | None) -> Ordering:
    order_by = order_by or FileOrder()
    return Ordering(_SORT_KEYS[order_by.field], order_by.direction is OrderDirection.DESC)


async def list_files(
    info: Info,
    owner_id: uuid.UUID,
    *,
    first: int | None,
    after: str | None,
    filter: FileFilter | None,
    order_by: FileOrder | None,
) -> Connection[File]:
    """One page of ``owner_id``'s files: the same listing for ``files`` and ``User.files``."""
    conditions = file_conditions(owner_id, filter)
    async with info.context.sessionmaker() as db:
        return await paginate(
            db,
            models.File,
            conditions,
            first=first,
            after=after,
            to_node=File.from_model,
            ordering=file_ordering(order_by),
        )


async def resolve_file(info: Info, key: uuid.UUID) -> File | None:
    """A file is visible to its owner only (``node(id:)``); None otherwise."""
    viewer = info.context.user
    if viewer is None:
        return None
    file = await info.context.loaders.files.load(key)
    if file is None or file.owner_id != viewer.id:
        return None
    return File.from_model(file)


@strawberry.type
class FileQuery:
    @strawberry.field(
        description="One of your files, live or trashed; `NOT_FOUND` for any other id.",
        permission_classes=[IsAuthenticated],
    )
    async def file(self, info: Info, id: strawberry.ID) -> File | None:
        found = await resolve_file(info, decode_id_of("File", id))
        if found is None:
            raise NotFound("No such file.")
        return found

    @strawberry.field(
        description="Your files, oldest first unless `orderBy` says otherwise.",
        permission_classes=[IsAuthenticated],
    )
    async def files(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: FileFilter | None = None,
        order_by: FileOrder | None = None,
    ) -> Connection[File]:
        user = info.context.require_principal().user
        return await list_files(
            info, user.id, first=first, after=after, filter=filter, order_by=order_by
        )


# -- changes -----------------------------------------------------------------------


@strawberry.type
class FileMutation:
    @strawberry.mutation(
        description="Give a live file a new path; `CONFLICT` if another live file has it.",
        permission_classes=[IsAuthenticated],
    )
    async def move_file(self, info: Info, id: strawberry.ID, path: str) -> File:
        user = info.context.require_principal().user
        key = decode_id_of("File", id)
        async with info.context.sessionmaker() as db:
            file = await files.move(db, user.id, key, path)
        return File.from_model(file)

    @strawberry.mutation(
        description="Copy a live file to a new path inside storage; the copy counts "
        "against your quota (`QUOTA_EXCEEDED` if it does not fit).",
        permission_classes=[IsAuthenticated],
    )
    async def copy_file(self, info: Info, id: strawberry.ID, path: str) -> File:
        user = info.context.require_principal().user
        key = decode_id_of("File", id)
        async with info.context.sessionmaker() as db:
            file = await files.copy(db, info.context.storage, user.id, key, path)
        return File.from_model(file)

    @strawberry.mutation(
        description="Move a file to the trash: its path is free again, its bytes still "
        "count against your quota until it is purged.",
        permission_classes=[IsAuthenticated],
    )
    async def delete_file(self, info: Info, id: strawberry.ID) -> File:
        user = info.context.require_principal().user
        key = decode_id_of("File", id)
        async with info.context.sessionmaker() as db:
            file = await files.trash(db, user.id, key)
        await jobs.publish_file(info.context.events, file, deleted=True)
        return File.from_model(file)

    @strawberry.mutation(
        description="Bring a file back from the trash at its path; `CONFLICT` if a live "
        "file has taken that path meanwhile (move that one first).",
        permission_classes=[IsAuthenticated],
    )
    async def restore_file(self, info: Info, id: strawberry.ID) -> File:
        user = info.context.require_principal().user
        key = decode_id_of("File", id)
        async with info.context.sessionmaker() as db:
            file = await files.restore(db, user.id, key)
        return File.from_model(file)

    @strawberry.mutation(
        description="Delete a file (live or trashed) for good, bytes and all, freeing its "
        "quota. Returns the id of the file that is gone.",
        permission_classes=[IsAuthenticated],
    )
    async def purge_file(self, info: Info, id: strawberry.ID) -> strawberry.ID:
        user = info.context.require_principal().user
        key = decode_id_of("File", id)
        async with info.context.sessionmaker() as db:
            file = await files.purge(db, info.context.storage, user.id, key)
        await jobs.publish_file(info.context.events, file, deleted=True)
        return strawberry.ID(encode_id("File", file.id))
