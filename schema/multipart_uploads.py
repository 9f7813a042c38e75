"""Direct multipart uploads to S3, the five calls of Uppy's AwsS3 plugin.

``createMultipartUpload``, ``signUploadPart``, ``uploadParts``,
``completeMultipartUpload``; aborting is ``cancelUpload``, as for any
unfinished upload (the functions Uppy 3 and 4's plugin took). Uppy 6's
(``@uppy/aws-s3`` 6) asks one ``signRequest`` for each S3 request instead:
``signUploadRequest``. The rules are ``core.multipart_uploads``'s.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import strawberry
from strawberry.scalars import JSON

from core import metrics, multipart_uploads
from core.downloads import credential_of
from core.errors import BadUserInput
from core.events import FileCreated, announce
from core.models import Job as JobRow
from core.ratelimit import Action
from core.time import utcnow
from core.users import require_verified
from schema.context import Info
from schema.direct_uploads import CreateUploadInput
from schema.ids import decode_id_of, encode_id
from schema.nodes import File
from schema.permissions import IsAuthenticated
from schema.pipelines import announce_waiting, upload_completed, upload_news, upload_steps
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


@strawberry.input(
    description="One S3 request of a multipart upload, as Uppy's AwsS3 plugin (Uppy 6, "
    "`@uppy/aws-s3` 6) hands it to its `signRequest` option: pass it on unchanged."
)
class UploadRequestInput:
    method: str = strawberry.field(description="`POST`, `PUT`, `GET` or `DELETE`.")
    key: str = strawberry.field(
        description="The upload's key: the one `signUploadRequest` answered its create "
        "with (the `ResumableUpload`'s id). When creating, the client's proposal, "
        "which Depot replaces."
    )
    upload_id: str | None = strawberry.field(default=None, description="S3's upload id.")
    part_number: int | None = None
    content_type: str | None = strawberry.field(
        default=None, description="A whole-object PUT's, which Depot does not sign here."
    )
    expires_in: int | None = strawberry.field(
        default=None, description="Ignored: Depot says how long what it signs works."
    )


@strawberry.type
class SignedUploadRequest:
    """Where to send the request, as Uppy's `signRequest` returns it (`PresignedResponse`)."""

    url: str = strawberry.field(
        description="A part's PUT goes straight to S3; creating, listing, completing and "
        "aborting go to Depot, which answers as S3 would."
    )
    key: str = strawberry.field(description="The upload's key from now on (its id).")
    headers: JSON = strawberry.field(description="Headers to send, name to value.")
    expires_at: datetime


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
        steps = await upload_steps(info, input.pipeline, input.content_type)
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
                pipeline=steps,
                news=upload_news(info),
            )
            pipeline = await db.get(JobRow, upload.pipeline_id) if upload.pipeline_id else None
        # Its bytes go straight to S3: the stream hears of none until completion.
        await announce_waiting(info, pipeline, input.size)
        return MultipartUpload(
            upload=ResumableUpload.from_model(upload),
            upload_id=upload.storage_handle,
            key=upload.storage_key,
        )

    @strawberry.mutation(
        description="Sign one S3 request of a multipart upload: what Uppy's AwsS3 "
        "`signRequest` returns (`shouldUseMultipart: true`). Creating needs `file` and "
        "reserves its size; the parts go straight to S3; completing (which makes the File: "
        "the plugin's `upload-success` body's `key` is its id) and aborting (which "
        "releases the reservation) are answered by Depot. S3 storage only.",
        permission_classes=[IsAuthenticated],
    )
    async def sign_upload_request(
        self, info: Info, request: UploadRequestInput, file: CreateUploadInput | None = None
    ) -> SignedUploadRequest:
        principal = info.context.require_principal()
        user = principal.user
        operation = multipart_uploads.operation(
            request.method, request.upload_id, request.part_number
        )
        storage = info.context.storage
        async with info.context.db() as db:
            if operation is multipart_uploads.Operation.CREATE:
                if file is None:
                    raise BadUserInput(
                        "Creating a multipart upload needs `file`: its path and size.",
                        field="file",
                    )
                settings = info.context.settings
                require_verified(settings, user)
                await count(info.context, Action.UPLOAD)
                steps = await upload_steps(info, file.pipeline, file.content_type)
                upload = await multipart_uploads.create(
                    db,
                    storage,
                    user.id,
                    path=file.path,
                    size=file.size,
                    content_type=file.content_type,
                    sha256=file.sha256,
                    max_upload_bytes=settings.max_upload_bytes,
                    expires_in=_expiry(info),
                    pipeline=steps,
                    news=upload_news(info),
                )
                key = upload.id
                if upload.pipeline_id is not None:
                    pipeline = await db.get(JobRow, upload.pipeline_id)
                    await announce_waiting(info, pipeline, file.size)
            else:
                key = decode_id_of("ResumableUpload", request.key, field="key")
                assert request.upload_id is not None  # as operation() saw
                upload = await multipart_uploads.get(db, user.id, key, request.upload_id)
            if operation is multipart_uploads.Operation.PART:
                assert request.part_number is not None
                signed = await multipart_uploads.sign_part(
                    db, storage, user.id, key, request.part_number, expires_in=_expiry(info)
                )
                assert signed.expires_at is not None
                return SignedUploadRequest(
                    url=signed.url,
                    key=request.key,
                    headers=JSON(dict(signed.headers)),
                    expires_at=signed.expires_at,
                )
        expires_at = utcnow() + timedelta(minutes=multipart_uploads.CONTROL_LINK_MINUTES)
        url = info.context.links.multipart(
            key.hex,
            owner=user.id.hex,
            operation=operation.value,
            expires_at=expires_at,
            credential=credential_of(principal),
        )
        return SignedUploadRequest(
            url=url,
            key=encode_id("ResumableUpload", upload.id),
            headers=JSON({}),
            expires_at=expires_at,
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
                news=upload_news(info),
            )
            db.expunge(file)  # kept: a later block's rollback (a raced advance) must not expire it
        metrics.UPLOAD_BYTES.labels("s3-multipart").inc(file.size)
        await announce(info.context.events, FileCreated.of(file), owner_id=file.owner_id)
        await upload_completed(info, file)
        return File.from_model(file)
