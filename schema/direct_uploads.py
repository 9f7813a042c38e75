"""``createUpload`` and ``completeUpload``: large files sent straight to storage."""

from __future__ import annotations

from datetime import datetime, timedelta

import strawberry
from strawberry.scalars import JSON

from core import direct_uploads, metrics
from core.events import FileCreated, announce
from core.ratelimit import Action
from core.users import require_verified
from schema.context import Info
from schema.ids import decode_id_of, encode_id
from schema.nodes import File, Job
from schema.permissions import IsAuthenticated
from schema.pipelines import (
    UploadPipelineInput,
    announce_waiting,
    upload_completed,
    upload_news,
    upload_steps,
)
from schema.ratelimits import count
from schema.scalars import BigInt


@strawberry.input
class CreateUploadInput:
    path: str = strawberry.field(description="Where the file will be, e.g. `reports/q3.pdf`.")
    size: BigInt = strawberry.field(description="Exactly how many bytes will be sent.")
    content_type: str | None = strawberry.field(
        default=None,
        description="A hint only: Depot sniffs the type from the bytes (text keeps "
        "a declared `text/*` type, having no magic number).",
    )
    sha256: str | None = strawberry.field(
        default=None,
        description="The bytes' SHA-256 in lowercase hex; `completeUpload` refuses other bytes.",
    )
    pipeline: UploadPipelineInput | None = strawberry.field(
        default=None,
        description="A pipeline to start once the upload made the file "
        "(`File.processing`); checked now, and created now (the ticket's `processing`), "
        "so that its `jobEvents` carry the upload's bytes first.",
    )


@strawberry.type
class UploadTicket:
    """Send the bytes with this request, then call ``completeUpload(id)``."""

    id: strawberry.ID
    url: str
    method: str
    headers: JSON = strawberry.field(description="Headers to send with the bytes, name to value.")
    expires_at: datetime
    processing: Job | None = strawberry.field(
        default=None,
        description="The pipeline the ticket's `pipeline` created, queued until the file is "
        "complete: subscribe to its `jobEvents` now for the bytes received, then its steps.",
    )


@strawberry.type
class DirectUploadMutation:
    @strawberry.mutation(
        description="Reserve room for a file and get a request that sends its bytes "
        "straight to storage, until `expiresAt` (`DEPOT_UPLOAD_URL_MINUTES`).",
        permission_classes=[IsAuthenticated],
    )
    async def create_upload(self, info: Info, input: CreateUploadInput) -> UploadTicket:
        user = info.context.require_principal().user
        settings = info.context.settings
        require_verified(settings, user)
        await count(info.context, Action.UPLOAD)
        steps = await upload_steps(info, input.pipeline, input.content_type)
        async with info.context.db() as db:
            ticket = await direct_uploads.create_ticket(
                db,
                info.context.storage,
                info.context.links,
                user.id,
                path=input.path,
                size=input.size,
                content_type=input.content_type,
                sha256=input.sha256,
                max_upload_bytes=settings.max_upload_bytes,
                expires_in=timedelta(minutes=settings.upload_url_minutes),
                pipeline=steps,
                news=upload_news(info),
            )
        await announce_waiting(info, ticket.pipeline, input.size)
        return UploadTicket(
            id=strawberry.ID(encode_id("Upload", ticket.upload.id)),
            url=ticket.request.url,
            method=ticket.request.method,
            headers=JSON(dict(ticket.request.headers)),
            expires_at=ticket.upload.expires_at,
            processing=Job.from_model(ticket.pipeline) if ticket.pipeline is not None else None,
        )

    @strawberry.mutation(
        description="Check the bytes sent for a ticket (size, and SHA-256 when declared) "
        "and turn them into a file; bytes that do not match are discarded (and the "
        "ticket's pipeline fails). The file and its pipeline's start commit together; "
        "completing a completed ticket again answers the same file (and pipeline).",
        permission_classes=[IsAuthenticated],
    )
    async def complete_upload(self, info: Info, id: strawberry.ID) -> File:
        user = info.context.require_principal().user
        key = decode_id_of("Upload", id)
        async with info.context.db() as db:
            file, made = await direct_uploads.complete_ticket(
                db, info.context.storage, user.id, key, news=upload_news(info)
            )
            db.expunge(file)  # kept: a later block's rollback (a raced advance) must not expire it
        if made:
            metrics.UPLOAD_BYTES.labels("direct").inc(file.size)
            await announce(info.context.events, FileCreated.of(file), owner_id=file.owner_id)
        # Also on a retry: it starts what a completion that died after its commit did not.
        await upload_completed(info, file)
        return File.from_model(file)
