"""``uploads`` and ``cancelUpload``: the viewer's unfinished resumable (tus) uploads.

The bytes go through the tus endpoint (``api.tus``, ``/files/tus/``); GraphQL
only shows where each upload stands and ends one that will not be finished.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Self

import strawberry
from sqlmodel import col

from core import resumable_uploads
from core.models import ResumableUpload as ResumableUploadRow
from core.time import utcnow
from schema.context import Info
from schema.ids import decode_id_of, encode_id
from schema.node import Node
from schema.nodes import Job
from schema.pagination import Connection, paginate
from schema.permissions import IsAuthenticated
from schema.pipelines import upload_news
from schema.scalars import BigInt


@strawberry.type
class ResumableUpload(Node):
    """An unfinished resumable upload: `length` bytes reserved, `offset` of them received.

    Its tus URL is the `Location` its creation answered (`/files/tus/…`); once
    the last byte arrives it becomes a file and leaves this list.
    """

    path: str
    offset: BigInt
    length: BigInt
    created_at: datetime
    expires_at: datetime = strawberry.field(
        description="When it ends unless more bytes arrive (`DEPOT_RESUMABLE_UPLOAD_HOURS` "
        "after the last ones): its bytes are deleted and its reservation released."
    )

    pipeline_id: strawberry.Private[uuid.UUID | None] = None

    @strawberry.field(
        description="The pipeline the upload named (tus `Upload-Metadata` `template`, or "
        "`createMultipartUpload`'s `pipeline`), queued until the file is complete: its "
        "`jobEvents` carry the bytes received, then its steps. Null without one."
    )
    async def processing(self, info: Info) -> Job | None:
        if self.pipeline_id is None:
            return None
        found = await info.context.loaders.jobs.load(self.pipeline_id)
        return Job.from_model(found) if found is not None else None

    @classmethod
    def from_model(cls, upload: ResumableUploadRow) -> Self:
        return cls(
            id=strawberry.ID(encode_id("ResumableUpload", upload.id)),
            key=upload.id,
            path=upload.path,
            offset=BigInt(upload.offset),
            length=BigInt(upload.length),
            created_at=upload.created_at,
            expires_at=upload.expires_at,
            pipeline_id=upload.pipeline_id,
        )


@strawberry.type
class ResumableUploadQuery:
    @strawberry.field(
        description="The signed-in user's unfinished resumable (tus) uploads, oldest first.",
        permission_classes=[IsAuthenticated],
    )
    async def uploads(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[ResumableUpload]:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            return await paginate(
                db,
                ResumableUploadRow,
                [
                    col(ResumableUploadRow.owner_id) == user.id,
                    col(ResumableUploadRow.expires_at) > utcnow(),
                    resumable_uploads.unfinished(),
                ],
                first=first,
                after=after,
                to_node=ResumableUpload.from_model,
            )


@strawberry.type
class ResumableUploadMutation:
    @strawberry.mutation(
        description="End an unfinished resumable upload (as tus's DELETE does): its bytes "
        "are deleted, its reservation released and its pipeline cancelled. Returns its "
        "id. CONFLICT while a request is sending bytes to it.",
        permission_classes=[IsAuthenticated],
    )
    async def cancel_upload(self, info: Info, id: strawberry.ID) -> strawberry.ID:
        user = info.context.require_principal().user
        key = decode_id_of("ResumableUpload", id)
        async with info.context.db() as db:
            await resumable_uploads.terminate(
                db, info.context.storage, None, user.id, key, news=upload_news(info)
            )
        return id


async def resolve_resumable_upload(info: Info, key: uuid.UUID) -> ResumableUpload | None:
    """An upload is visible to its owner only, until it ends or expires."""
    viewer = info.context.user
    if viewer is None:
        return None
    async with info.context.db() as db:
        upload = await db.get(ResumableUploadRow, key)
    if (
        upload is None
        or upload.owner_id != viewer.id
        or upload.expires_at <= utcnow()
        or resumable_uploads.is_complete(upload)
    ):
        return None
    return ResumableUpload.from_model(upload)
