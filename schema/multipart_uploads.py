"""Direct multipart uploads to S3, the five calls of Uppy's AwsS3 plugin.

``createMultipartUpload``, ``signUploadPart``, ``uploadParts``,
``completeMultipartUpload``; aborting is ``cancelUpload``, as for any
unfinished upload. The rules are ``core.multipart_uploads``'s.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import strawberry
from strawberry.scalars import JSON

from core import metrics, multipart_uploads
from core.events import FileCreated, announce
from core.ratelimit import Action
from core.users import require_verified
from schema.context import Info
from schema.direct_uploads import CreateUploadInput
from schema.ids import decode_id_of
from schema.nodes import File
from schema.permissions import IsAuthenticated
from schema.ratelimits import count
from schema.resumable_uploads import ResumableUpload
from schema.scalars import BigInt


@strawberry.type
class MultipartUpload:
    """An S3 multipart upload opened for a file: sign its parts, send them, complete it."""

    upload: ResumableUpload
    upload_id: str = strawberry.field(description="S3's id of the multipart upload.")
    key: str = strawberry.field(description="The object's key in the bucket (opaque).")


@strawberry.type
class SignedPart:
    """Send the part's bytes with this request; S3's answer carries its `ETag`."""

    url: str
    method: str
    headers: JSON = strawberry.field(description="Headers to send with the bytes, name to value.")
    expires_at: datetime


@strawberry.type
class UploadPart:
    part_number: int
    size: BigInt
    etag: str


@strawberry.input
class UploadPartInput:
    part_number: int
    etag: str = strawberry.field(description="The `ETag` S3 answered the part's PUT with.")


def _expiry(info: Info) -> timedelta:
    return timedelta(hours=info.context.settings.resumable_upload_hours)


@strawberry.type
class MultipartUploadQuery:
    @strawberry.field(
        description="The parts S3 already holds of a multipart upload, in order "
        "(Uppy's `listParts`): what a resumed upload need not send again.",
        permission_classes=[IsAuthenticated],
    )
    async def upload_parts(self, info: Info, id: strawberry.ID) -> list[UploadPart]:
        user = info.context.require_principal().user
        key = decode_id_of("ResumableUpload", id)
        async with info.context.db() as db:
            parts = await multipart_uploads.list_parts(db, info.context.storage, user.id, key)
        return [UploadPart(part_number=p.number, size=BigInt(p.size), etag=p.etag) for p in parts]


@strawberry.type
class MultipartUploadMutation:
    @strawberry.mutation(
        description="Reserve room for a file and open an S3 multipart upload for it "
        "(Uppy's `createMultipartUpload`); S3 storage only (elsewhere use tus). Parts "
        "are at least 5 MiB but the last, at most 10,000.",
        permission_classes=[IsAuthenticated],
    )
    async def create_multipart_upload(
        self, info: Info, input: CreateUploadInput
    ) -> MultipartUpload:
        user = info.context.require_principal().user
        settings = info.context.settings
        require_verified(settings, user)
        await count(info.context, Action.UPLOAD)
        async with info.context.db() as db:
            upload = await multipart_uploads.create(
                db,
                info.context.storage,
                user.id,
                path=input.path,
                size=input.size,
                content_type=input.content_type,
                sha256=input.sha256,
                max_upload_bytes=settings.max_upload_bytes,
                expires_in=_expiry(info),
            )
        return MultipartUpload(
            upload=ResumableUpload.from_model(upload),
            upload_id=upload.storage_handle,
            key=upload.storage_key,
        )

    @strawberry.mutation(
        description="A presigned request that sends one part straight to S3 "
        "(Uppy's `signPart`); moves the upload's expiry on.",
        permission_classes=[IsAuthenticated],
    )
    async def sign_upload_part(self, info: Info, id: strawberry.ID, part_number: int) -> SignedPart:
        user = info.context.require_principal().user
        key = decode_id_of("ResumableUpload", id)
        async with info.context.db() as db:
            request = await multipart_uploads.sign_part(
                db, info.context.storage, user.id, key, part_number, expires_in=_expiry(info)
            )
        assert request.expires_at is not None
        return SignedPart(
            url=request.url,
            method=request.method,
            headers=JSON(dict(request.headers)),
            expires_at=request.expires_at,
        )

    @strawberry.mutation(
        description="Assemble the parts sent into the file (Uppy's "
        "`completeMultipartUpload`): its size checked, its SHA-256 read back (and "
        "compared with the one declared), its type sniffed.",
        permission_classes=[IsAuthenticated],
    )
    async def complete_multipart_upload(
        self, info: Info, id: strawberry.ID, parts: list[UploadPartInput]
    ) -> File:
        user = info.context.require_principal().user
        key = decode_id_of("ResumableUpload", id)
        async with info.context.db() as db:
            file = await multipart_uploads.complete(
                db,
                info.context.storage,
                user.id,
                key,
                [(part.part_number, part.etag) for part in parts],
            )
        metrics.UPLOAD_BYTES.labels("s3-multipart").inc(file.size)
        await announce(info.context.events, FileCreated.of(file), owner_id=file.owner_id)
        return File.from_model(file)
