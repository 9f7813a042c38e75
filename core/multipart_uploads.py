"""Direct multipart uploads: a client sends a file's parts straight to S3.

A file past what one presigned PUT takes (5 GiB), or one a browser wants to
resume after a reload without Depot in the byte path, goes up in parts:
``create`` checks the future file and reserves its size like any upload and
opens an S3 multipart upload; ``sign_part`` presigns a PUT per part;
``list_parts`` says which parts S3 already has (to resume); ``complete``
assembles them, checks the size, reads the object back once for its SHA-256
and content type, and makes the file in one commit; an unfinished one ends by
``resumable_uploads.terminate`` or expiry. These are the five calls Uppy's
AwsS3 plugin makes (createMultipartUpload, signPart, listParts,
completeMultipartUpload, abortMultipartUpload).

Each is a resumable upload row of kind MULTIPART, so ``uploads`` lists it,
``cancelUpload`` ends it and maintenance expires it with the tus ones. Only
storage that presigns (S3) takes them; elsewhere, use tus.

**Uppy 6's AwsS3 plugin** (``@uppy/aws-s3`` 6.3) no longer takes these five
functions: it asks one ``signRequest`` callback to presign each S3 request
(:class:`Operation`, told apart by ``operation``) and sends it itself. Only
the bytes (``PART``) go to S3, presigned by ``sign_part``; the other four
are answered by Depot (``api.multipart_uploads``, at links signed for the
caller's own upload), so creating reserves the quota, completing makes the
file and aborting releases the reservation, as the calls above do.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Final

import anyio
from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from core import pipelines, resumable_uploads
from core.errors import BadUserInput, NotFound
from core.models import File, ResumableUpload, UploadKind
from core.pipelines import Step
from core.time import utcnow
from storage.base import Part, SignedRequest, Storage
from storage.errors import PermanentStorageError

MAX_PARTS: Final = 10_000
"""S3's most parts per upload."""

PART_URL_MINUTES: Final = 60
"""How long a part's presigned PUT works: long enough for one slow part."""

CONTROL_LINK_MINUTES: Final = 10
"""How long a link to one of Depot's answers to an S3 control request works
(``api.multipart_uploads``): Uppy sends it as soon as it is signed."""

COMPLETE_LEASE: Final = timedelta(minutes=30)
"""How long completing may hold the upload: S3 assembles, then the object is read back."""


class Operation(StrEnum):
    """The S3 requests of a multipart upload, as Uppy's ``signRequest`` asks for them."""

    CREATE = "create"  # POST {key}?uploads
    PART = "part"  # PUT {key}?uploadId=&partNumber=
    LIST = "list"  # GET {key}?uploadId=
    COMPLETE = "complete"  # POST {key}?uploadId=
    ABORT = "abort"  # DELETE {key}?uploadId=


METHODS: Final = {
    Operation.CREATE: "POST",
    Operation.PART: "PUT",
    Operation.LIST: "GET",
    Operation.COMPLETE: "POST",
    Operation.ABORT: "DELETE",
}
"""The HTTP method each operation is sent with."""


def operation(method: str, upload_id: str | None, part_number: int | None) -> Operation:
    """Which multipart request an S3 request (``method``, ``uploadId``, ``partNumber``) is.

    ``BAD_USER_INPUT`` for the rest (a whole-object PUT or DELETE): those are
    ``createUpload``'s tickets and ``deleteFile``'s.
    """
    method = method.upper()
    if upload_id is None:
        if method == "POST" and part_number is None:
            return Operation.CREATE
    elif part_number is not None:
        if method == "PUT":
            return Operation.PART
    else:
        found = {"GET": Operation.LIST, "POST": Operation.COMPLETE, "DELETE": Operation.ABORT}
        if method in found:
            return found[method]
    raise BadUserInput(
        f"Depot signs the requests of multipart uploads only, not {method} "
        f"{'with' if upload_id else 'without'} an uploadId"
        f"{' and a partNumber' if part_number is not None else ''}: "
        "give Uppy's AwsS3 `shouldUseMultipart: true`, or upload by `createUpload`.",
        field="request",
    )


async def get(
    db: AsyncSession, owner_id: uuid.UUID, upload_id: uuid.UUID, handle: str
) -> ResumableUpload:
    """``owner_id``'s live multipart upload whose S3 upload is ``handle``; ``NOT_FOUND`` else.

    A client names an upload by both (Uppy's ``key`` and ``uploadId``); a
    mismatch is someone else's upload, or none.
    """
    upload = await resumable_uploads.get_upload(db, owner_id, upload_id, UploadKind.MULTIPART)
    if upload.storage_handle != handle:
        raise NotFound("No such upload.")
    return upload


async def create(
    db: AsyncSession,
    storage: Storage,
    owner_id: uuid.UUID,
    *,
    path: str,
    size: int,
    content_type: str | None,
    sha256: str | None,
    max_upload_bytes: int,
    expires_in: timedelta,
    pipeline: Sequence[Step] | None = None,
    news: pipelines.News | None = None,
) -> ResumableUpload:
    """Check the future file, reserve its size and open the multipart upload; commits.

    ``BAD_USER_INPUT`` when storage cannot take parts from clients (local),
    and whatever ``resumable_uploads.create`` raises; ``pipeline`` and ``news``
    as there.
    """
    # Presigning is a local computation: asking costs nothing and writes nothing.
    probe = await storage.upload_request(
        "probe", size=0, content_type="application/octet-stream", expires_in=timedelta(minutes=1)
    )
    if probe is None:
        raise BadUserInput(
            "This storage takes no parts from clients: upload through tus (/files/tus/).",
            field="input",
        )
    return await resumable_uploads.create(
        db,
        storage,
        None,
        owner_id,
        path=path,
        length=size,
        content_type=content_type,
        sha256=sha256,
        metadata="",
        max_upload_bytes=max_upload_bytes,
        expires_in=expires_in,
        kind=UploadKind.MULTIPART,
        pipeline=pipeline,
        news=news,
    )


async def sign_part(
    db: AsyncSession,
    storage: Storage,
    owner_id: uuid.UUID,
    upload_id: uuid.UUID,
    number: int,
    *,
    expires_in: timedelta,
) -> SignedRequest:
    """A presigned PUT of part ``number`` (1 to 10,000); the upload's expiry moves on.

    The client reads the part's ``ETag`` from S3's answer, for ``complete``.
    """
    if not 1 <= number <= MAX_PARTS:
        raise BadUserInput(f"Parts are numbered 1 to {MAX_PARTS}.", field="partNumber")
    upload = await resumable_uploads.get_upload(db, owner_id, upload_id, UploadKind.MULTIPART)
    request = await storage.part_upload_request(
        upload.storage_key,
        upload.storage_handle,
        number,
        expires_in=timedelta(minutes=PART_URL_MINUTES),
    )
    if request is None:  # storage changed under the upload
        raise BadUserInput("This storage takes no parts from clients.", field="id")
    await db.exec(
        update(ResumableUpload)
        .where(col(ResumableUpload.id) == upload.id)
        .values(expires_at=utcnow() + expires_in)
    )
    await db.commit()
    return request


async def list_parts(
    db: AsyncSession, storage: Storage, owner_id: uuid.UUID, upload_id: uuid.UUID
) -> list[Part]:
    """The parts S3 already has, in order: what a resumed client need not send again."""
    upload = await resumable_uploads.get_upload(db, owner_id, upload_id, UploadKind.MULTIPART)
    return await storage.list_parts(upload.storage_key, upload.storage_handle)


async def complete(
    db: AsyncSession,
    storage: Storage,
    owner_id: uuid.UUID,
    upload_id: uuid.UUID,
    parts: list[tuple[int, str]],
    *,
    news: pipelines.News | None = None,
) -> File:
    """Assemble ``parts`` (number, ETag) into the file; commits.

    ``BAD_USER_INPUT`` when S3 refuses the parts (the upload stays open: fix
    the list and complete again) or they do not add up to the declared size
    (the upload ends); then as ``resumable_uploads.make_file``.
    """
    if not parts:
        raise BadUserInput("Name the parts sent, with their ETags.", field="parts")
    upload = await resumable_uploads.claim(
        db, owner_id, upload_id, 0, COMPLETE_LEASE, UploadKind.MULTIPART
    )
    sent = [Part(number, 0, etag) for number, etag in sorted(parts)]
    try:
        await storage.complete_parts(upload.storage_key, upload.storage_handle, sent)
    except PermanentStorageError as refused:
        with anyio.CancelScope(shield=True):
            await resumable_uploads.release(db, upload.id, 0)
        raise BadUserInput(
            f"S3 would not assemble these parts ({refused}); check their numbers and ETags.",
            field="parts",
        ) from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await resumable_uploads.release(db, upload.id, 0)
        raise
    size = (await storage.stat(upload.storage_key)).size
    if size != upload.length:
        with anyio.CancelScope(shield=True):
            await resumable_uploads.release(db, upload.id, 0)
            await resumable_uploads.terminate(db, storage, None, owner_id, upload.id, news=news)
        raise BadUserInput(
            f"The parts hold {size} bytes, but {upload.length} were declared; "
            "the upload was discarded.",
            field="parts",
        )
    return await resumable_uploads.make_file(db, storage, upload, None, news=news)
