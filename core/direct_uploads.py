"""Direct uploads: a ticket to send a file's bytes straight to storage, then a check.

Large files should not pass through a GraphQL request. ``create_ticket``
validates the future file (path, size, quota) *before* any byte moves, and
reserves its size against the quota; the client then sends the bytes to the
ticket's URL (presigned S3, or Depot's own signed route for local storage);
``complete_ticket`` re-reads what arrived, checks it against what was declared
and only then creates the ``File``. Whatever goes wrong, nothing is left half
done: no row, no stray object, no reserved byte.

A ticket is claimed with one conditional UPDATE (``completed_at IS NULL``), in
the same transaction as the file row (and its pipeline's input), so two
concurrent completions cannot both create a file: the second, and any retry,
answers the file the first made (``Upload.file_id``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import pipelines, quota, webhooks
from core.content import OCTET_STREAM, TEXT, Fingerprint
from core.errors import BadUserInput, Conflict, NotFound
from core.files import ensure_path_free, storage_key
from core.models import File, Job, JobStatus, Upload
from core.paths import file_name, normalize_path
from core.pipelines import Step
from core.probe import Sample, probe
from core.time import utcnow
from core.tracing import current_traceparent
from storage.base import Links, SignedRequest, Storage
from storage.errors import ObjectNotFound

_SHA256 = re.compile(r"[0-9a-f]{64}")
# type "/" subtype, optional parameters; no spaces, quotes or control characters around them.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
MAX_CONTENT_TYPE = 255


@dataclass(frozen=True)
class Ticket:
    """A created upload and the request that sends its bytes."""

    upload: Upload
    request: SignedRequest
    pipeline: Job | None = None


def check_content_type(content_type: str | None, *, field: str = "contentType") -> str:
    """The declared media type without parameters, lowercased; a hint, never trusted."""
    if content_type is None or not content_type.strip():
        return OCTET_STREAM
    media = content_type.split(";", 1)[0].strip().lower()
    if len(media) > MAX_CONTENT_TYPE or not _MEDIA_TYPE.fullmatch(media):
        raise BadUserInput(f"{content_type!r} is not a media type like text/csv.", field=field)
    return media


def check_sha256(sha256: str | None, *, field: str = "sha256") -> str | None:
    if sha256 is None:
        return None
    if not _SHA256.fullmatch(sha256):
        raise BadUserInput("Give the SHA-256 as 64 lowercase hex digits.", field=field)
    return sha256


def check_size(size: int, max_upload_bytes: int, *, field: str = "size") -> int:
    if size < 0:
        raise BadUserInput("A size cannot be negative.", field=field)
    if size > max_upload_bytes:
        raise BadUserInput(
            f"Files may have at most {max_upload_bytes} bytes; this one has {size}.", field=field
        )
    return size


async def create_ticket(
    db: AsyncSession,
    storage: Storage,
    links: Links,
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
) -> Ticket:
    """Validate the future file, reserve its bytes and open a ticket; commits.

    Raises ``BAD_USER_INPUT``, ``CONFLICT`` (path taken) or ``QUOTA_EXCEEDED``
    before anything is reserved or stored. ``pipeline``: checked steps to start
    on the file once complete: the pipeline is created with the ticket, waiting
    for it (``Ticket.pipeline``, ``core.pipelines``). The request is storage's presigned
    one (S3), or a PUT to Depot's upload route through ``links``. ``news``: where
    to tell of the pipelines of the owner's expired tickets this ends.
    """
    path = normalize_path(path)
    size = check_size(size, max_upload_bytes)
    sha256 = check_sha256(sha256)
    media = check_content_type(content_type)
    # The owner's abandoned tickets give their bytes back before new ones are
    # reserved, so a quota never stays held by uploads nobody will finish.
    await expire_tickets(db, storage, utcnow(), owner_id, news=news)
    await ensure_path_free(db, owner_id, path)
    key = storage_key(owner_id)
    now = utcnow()
    request = await storage.upload_request(
        key, size=size, content_type=media, expires_in=expires_in
    ) or SignedRequest(
        links.upload(key, size=size, expires_at=now + expires_in),
        "PUT",
        {"Content-Type": media, "Content-Length": str(size)},
        now + expires_in,
    )
    upload = Upload(
        owner_id=owner_id,
        path=path,
        size=size,
        content_type=media,
        sha256=sha256,
        storage_key=key,
        created_at=now,
        expires_at=request.expires_at or now + expires_in,
    )
    job = None
    await quota.reserve(db, owner_id, size)
    try:
        if pipeline is not None:
            job = pipelines.awaiting(owner_id, pipeline, traceparent=current_traceparent())
            db.add(job)
            await db.flush()
            upload.pipeline_id = job.id
        db.add(upload)
        await db.commit()
    except BaseException:
        with anyio.CancelScope(shield=True):  # a cancelled request still gives the bytes back
            await db.rollback()
            await quota.release(db, owner_id, size)
            await db.commit()
        raise
    return Ticket(upload, request, job)


async def open_ticket(db: AsyncSession, key: str) -> Upload | None:
    """The ticket for storage ``key`` if it can still receive bytes (the PUT route asks)."""
    found = await db.exec(select(Upload).where(col(Upload.storage_key) == key))
    upload = found.first()
    if upload is None or upload.completed_at is not None or upload.expires_at <= utcnow():
        return None
    return upload


async def record_seen(
    db: AsyncSession, key: str, fingerprint: Fingerprint, meta: dict[str, Any], etag: str
) -> None:
    """Remember what the PUT route hashed (and probed: ``meta``) as the bytes of object
    ``key`` (ETag ``etag``) streamed in; commits. :func:`complete_ticket` trusts it
    while the object keeps that ETag, and reads the object again otherwise."""
    await db.exec(
        update(Upload)
        .where(col(Upload.storage_key) == key, col(Upload.completed_at).is_(None))
        .values(
            seen_sha256=fingerprint.sha256,
            seen_content_type=fingerprint.content_type,
            seen_meta=meta,
            seen_etag=etag,
        )
    )
    await db.commit()


async def complete_ticket(
    db: AsyncSession,
    storage: Storage,
    owner_id: uuid.UUID,
    upload_id: uuid.UUID,
    *,
    news: pipelines.News | None = None,
) -> tuple[File, bool]:
    """Check the uploaded bytes against the ticket and turn them into a ``File``; commits.

    Returns ``(file, made)``: a ticket completed before (a retry, or a
    completion racing this one) answers the file it made and ``False``. The
    ticket's pipeline gets the file as its input in the file's transaction.
    ``NOT_FOUND`` for another user's ticket; ``CONFLICT`` for one that ended
    without a file; ``BAD_USER_INPUT`` for one that expired, got no bytes, or
    got bytes that do not match the declared size or SHA-256. Every failure
    but the first two ends the ticket (and its pipeline, told to ``news``):
    its object is deleted and its bytes released.
    """
    upload = await db.get(Upload, upload_id, populate_existing=True)
    if upload is None or upload.owner_id != owner_id:
        raise NotFound("No such upload.")
    if upload.completed_at is not None:
        return await _made(db, upload_id), False
    if upload.expires_at <= utcnow():
        await _abandon(db, storage, upload, "The upload expired before it was completed.", news)
        raise BadUserInput(
            "This upload expired before it was completed; create a new one.", field="id"
        )
    try:
        before = await storage.stat(upload.storage_key)
    except ObjectNotFound:
        # No bytes yet, or a completion racing this one moved them: taking the
        # ticket tells which (it waits for that completion's commit).
        ending = _Ending.of(upload)
        taken = await _claim(db, ending.id)
        await db.rollback()
        if not taken:
            return await _made(db, ending.id), False
        # The ticket stays open: the client may still send the bytes and retry.
        raise BadUserInput(
            "No bytes were uploaded for this ticket yet: send them to its URL first.", field="id"
        ) from None
    if before.size != upload.size:
        message = (
            f"{before.size} bytes were uploaded, but {upload.size} were declared; "
            "the upload was discarded."
        )
        await _abandon(db, storage, upload, message, news)
        raise BadUserInput(message, field="id")
    if upload.seen_etag is not None and upload.seen_etag == before.etag:
        # Hashed by Depot's PUT route as the bytes came in: no second read.
        sha256 = upload.seen_sha256
        sniffed = upload.seen_content_type or OCTET_STREAM
        meta = upload.seen_meta or {}
    else:
        fingerprint = Fingerprint(storage.open(upload.storage_key))
        sample = Sample(fingerprint)
        async for _ in sample:
            pass
        # A size other than the stat's: replaced while being read, refused below.
        sha256 = fingerprint.sha256 if fingerprint.size == upload.size else None
        sniffed = fingerprint.content_type
        meta = await anyio.to_thread.run_sync(probe, sample, sniffed)
    if sha256 is None or (upload.sha256 is not None and sha256 != upload.sha256):
        message = "The uploaded bytes do not match the declared SHA-256; the upload was discarded."
        await _abandon(db, storage, upload, message, news)
        raise BadUserInput(message, field="id")
    # The file gets a key of its own: the ticket's URL may outlive the ticket
    # (a presigned S3 URL works until it expires), and must never reach a file.
    file = File(
        owner_id=owner_id,
        path=upload.path,
        name=file_name(upload.path),
        size=upload.size,
        content_type=chosen_content_type(sniffed, upload.content_type),
        sha256=sha256,
        storage_key=storage_key(owner_id),
        meta=meta,
    )
    ending = _Ending.of(upload)
    legacy_steps = [Step.from_data(data) for data in upload.pipeline or ()]
    moved = False
    try:
        if not await _claim(db, ending.id, file_id=file.id):
            # Another completion took it first (and committed: the UPDATE waited).
            await db.rollback()
            return await _made(db, ending.id), False
        db.add(file)
        await db.flush()  # the live-path index speaks here, before any byte moves
        if ending.pipeline_id is not None:
            await pipelines.attach_file(db, ending.pipeline_id, file)
        elif legacy_steps:
            await pipelines.start_for_file(
                db, file, legacy_steps, traceparent=current_traceparent()
            )
        await storage.move(ending.storage_key, file.storage_key)
        moved = True
        if (await storage.stat(file.storage_key)).etag != before.etag:
            # Bytes sent again while these were being checked: they were not checked.
            raise _Changed
        await webhooks.queue_file_created(db, file)
        await db.commit()
    except IntegrityError:
        await db.rollback()
        message = f"A file already exists at {file.path!r}; the upload was discarded."
        await _abandon(db, storage, ending, message, news)
        raise Conflict(message) from None
    except BaseException as exc:
        # Shielded: whatever stopped us, the ticket stays open with its bytes.
        with anyio.CancelScope(shield=True):
            await db.rollback()
            if moved:
                await storage.move(file.storage_key, ending.storage_key)
        if isinstance(exc, _Changed):
            raise Conflict(
                "The upload changed while it was being completed; complete it again."
            ) from None
        raise
    return file, True


async def _made(db: AsyncSession, upload_id: uuid.UUID) -> File:
    """The file an ended ticket made; ``CONFLICT`` if it made none (or it is gone)."""
    upload = await db.get(Upload, upload_id, populate_existing=True)
    file = None
    if upload is not None and upload.file_id is not None:
        file = await db.get(File, upload.file_id, populate_existing=True)
    if file is None:
        raise Conflict("This upload has already ended; create a new one to upload again.")
    return file


class _Changed(Exception):
    """The ticket's object was replaced between its check and its move."""


def chosen_content_type(sniffed: str, declared: str) -> str:
    """The sniffed type; for text, which has no magic number, the declared text type."""
    if sniffed == TEXT and declared.startswith("text/"):
        return declared
    return sniffed


async def _claim(db: AsyncSession, upload_id: uuid.UUID, file_id: uuid.UUID | None = None) -> bool:
    """Mark the ticket ended (with the file it makes), unless someone else already did
    (not committed)."""
    result = await db.exec(
        update(Upload)
        .where(col(Upload.id) == upload_id, col(Upload.completed_at).is_(None))
        .values(completed_at=utcnow(), file_id=file_id)
    )
    return bool(result.rowcount == 1)


@dataclass(frozen=True)
class _Ending:
    """What ending a ticket needs, read before any rollback expires the row."""

    id: uuid.UUID
    owner_id: uuid.UUID
    size: int
    storage_key: str
    pipeline_id: uuid.UUID | None

    @classmethod
    def of(cls, upload: Upload) -> _Ending:
        return cls(upload.id, upload.owner_id, upload.size, upload.storage_key, upload.pipeline_id)


async def _abandon(
    db: AsyncSession,
    storage: Storage,
    upload: Upload | _Ending,
    reason: str,
    news: pipelines.News | None,
) -> None:
    """End the ticket without a file: its pipeline fails with ``reason``; release its
    bytes, then delete its object."""
    ending = upload if isinstance(upload, _Ending) else _Ending.of(upload)
    if await _claim(db, ending.id):
        await quota.release(db, ending.owner_id, ending.size)
        ended = await pipelines.end_awaiting(db, ending.pipeline_id, JobStatus.FAILED, reason)
        await db.commit()
        if news is not None:
            await news.ended(ended)
        await storage.delete(ending.storage_key)
    else:
        await db.rollback()


async def expire_tickets(
    db: AsyncSession,
    storage: Storage,
    now: datetime,
    owner_id: uuid.UUID | None = None,
    *,
    news: pipelines.News | None = None,
) -> int:
    """End every ticket (of ``owner_id``, or everyone's) that expired uncompleted by ``now``.

    Releases their reservations, deletes whatever bytes they received and
    fails their pipelines (told to ``news``). Returns how many ended.
    """
    conditions = [col(Upload.completed_at).is_(None), col(Upload.expires_at) <= now]
    if owner_id is not None:
        conditions.append(col(Upload.owner_id) == owner_id)
    found = await db.exec(select(Upload).where(*conditions))
    ended = 0
    for upload in found.all():
        await _abandon(db, storage, upload, "The upload expired before it was completed.", news)
        ended += 1
    return ended
