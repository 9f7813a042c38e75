"""Files in GraphQL: finding and listing your files, and changing them.

The ``File`` type itself is in ``schema.nodes``. A file is visible to its
owner only; to anyone else, by id or in a list, it does not exist
(``NOT_FOUND``, exactly as for an id never issued).
"""

from __future__ import annotations

import strawberry

from core import files
from core.events import FileDeleted, announce
from schema.context import Info
from schema.filters import FileFilter, FileOrder
from schema.ids import decode_id_of, encode_id
from schema.nodes import File, list_files
from schema.pagination import Connection
from schema.permissions import IsAuthenticated, owned


@strawberry.type
class FileQuery:
    @strawberry.field(
        description="One of your files, live or trashed; `NOT_FOUND` for any other id.",
        permission_classes=[IsAuthenticated],
    )
    async def file(self, info: Info, id: strawberry.ID) -> File | None:
        key = decode_id_of("File", id)
        return File.from_model(await owned(info.context.loaders.files, info.context.user, key))

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
        async with info.context.db() as db:
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
        async with info.context.db() as db:
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
        follow = info.context.settings.derivatives_follow_source
        async with info.context.db() as db:
            file, *along = await files.trash(db, user.id, key, follow=follow)
        for gone in (file, *along):
            await announce(info.context.events, FileDeleted.of(gone), owner_id=gone.owner_id)
        return File.from_model(file)

    @strawberry.mutation(
        description="Bring a file back from the trash at its path; `CONFLICT` if a live "
        "file has taken that path meanwhile (move that one first).",
        permission_classes=[IsAuthenticated],
    )
    async def restore_file(self, info: Info, id: strawberry.ID) -> File:
        user = info.context.require_principal().user
        key = decode_id_of("File", id)
        follow = info.context.settings.derivatives_follow_source
        async with info.context.db() as db:
            file, *_ = await files.restore(db, user.id, key, follow=follow)
        return File.from_model(file)

    @strawberry.mutation(
        description="Delete a file (live or trashed) for good, bytes and all, freeing its "
        "quota. Returns the id of the file that is gone.",
        permission_classes=[IsAuthenticated],
    )
    async def purge_file(self, info: Info, id: strawberry.ID) -> strawberry.ID:
        user = info.context.require_principal().user
        key = decode_id_of("File", id)
        storage = info.context.storage
        async with info.context.db() as db:
            if info.context.settings.derivatives_follow_source:
                file, *along = await files.purge_following(db, storage, user.id, key)
            else:
                file, along = await files.purge(db, storage, user.id, key), []
        for gone in (file, *along):
            await announce(info.context.events, FileDeleted.of(gone), owner_id=gone.owner_id)
        return strawberry.ID(encode_id("File", file.id))
