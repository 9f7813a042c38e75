"""Storing an incoming byte stream as a user's file, all or nothing.

The bytes go to storage as they arrive, hashed and sniffed on the way
(:class:`core.content.Fingerprint`); quota is reserved as they come, so an
upload over quota stops early. Whatever goes wrong — bad input, quota, size
limit, a broken request, a client that goes away, cancellation — the storage
object is deleted and exactly what was reserved is released: a failed upload
leaves neither bytes nor a row behind.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from core import models, pipelines, quota, webhooks
from core.content import Fingerprint
from core.errors import QuotaExceeded
from core.files import ensure_path_free, path_taken, storage_key
from core.paths import file_name, normalize_path
from core.pipelines import Step
from core.probe import Sample, probe
from core.settings import Settings
from core.tracing import current_traceparent
from storage.base import Storage
from storage.errors import TooLarge

# Quota is reserved for the bytes received so far each time this many more
# have arrived (and once at the end): one UPDATE per 8 MiB, not per chunk,
# while an upload over quota still stops within 8 MiB of it.
RESERVE_STEP = 8 * 1024 * 1024


@runtime_checkable
class IncomingFile(Protocol):
    """A file as a transport hands it over: read once, as its bytes arrive.

    ``complete()`` returns once the whole request that carried the file has
    arrived and was well formed, and raises :class:`BadRequest` otherwise: a
    file is kept only after it, so a truncated request never leaves a file.
    """

    filename: str | None
    content_type: str | None

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def complete(self) -> None: ...


class Produced:
    """Bytes Depot made itself (a job's output, an image variant), as
    :func:`store_upload` takes them: complete once read."""

    filename: str | None = None
    content_type: str | None = None

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks.__aiter__()

    async def complete(self) -> None:
        return None


class _Reservation:
    """Reserves quota for the bytes of a stream as they pass, remembering how much."""

    def __init__(self, db: AsyncSession, owner_id: uuid.UUID) -> None:
        self.db = db
        self.owner_id = owner_id
        self.reserved = 0
        self.seen = 0

    async def _catch_up(self) -> None:
        if self.seen > self.reserved:
            await quota.reserve(self.db, self.owner_id, self.seen - self.reserved)
            self.reserved = self.seen

    async def through(self, incoming: IncomingFile) -> AsyncGenerator[bytes]:
        chunks = incoming.__aiter__()
        try:
            async for chunk in chunks:
                self.seen += len(chunk)
                if self.seen - self.reserved >= RESERVE_STEP:
                    await self._catch_up()
                yield chunk
            # Before the stream ends, so storage never completes an unpaid object.
            await self._catch_up()
        finally:
            # Tell the transport at once that nobody reads the rest.
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()


async def _put(
    storage: Storage,
    settings: Settings,
    key: str,
    chunks: AsyncIterable[bytes],
    fingerprint: Fingerprint,
) -> int:
    """Store ``chunks``, which pass ``fingerprint`` (``Fingerprint.tapped``): storage
    hashes them as it writes them."""
    try:
        return await storage.put(
            key, chunks, max_size=settings.max_upload_bytes, tap=fingerprint.tap
        )
    except TooLarge:
        raise QuotaExceeded(
            f"A file may have at most {settings.max_upload_bytes} bytes "
            "(DEPOT_MAX_UPLOAD_BYTES); this one has more."
        ) from None


async def stage_output(
    storage: Storage,
    settings: Settings,
    owner_id: uuid.UUID,
    path: str,
    chunks: AsyncIterable[bytes],
    *,
    produced_by: uuid.UUID,
    derived_from: uuid.UUID | None = None,
    meta: dict[str, Any] | None = None,
) -> models.File:
    """Store a job's output's bytes and return its row, not added to any session.

    The row is written later, with the job's final status and the quota its
    bytes take, in one transaction (:func:`core.jobs.finish`): a worker killed
    before that leaves bytes under the job's storage prefix, which the next
    attempt deletes, and neither a row nor reserved bytes. Hence no quota
    here, only ``settings.max_upload_bytes`` per file (``QUOTA_EXCEEDED``);
    a bad path is ``BAD_USER_INPUT``. On any error nothing stays stored.
    """
    path = normalize_path(path)
    key = storage_key(owner_id, job_id=produced_by)
    fingerprint = Fingerprint.tapped(chunks)
    sample = Sample(fingerprint)
    try:
        size = await _put(storage, settings, key, sample, fingerprint)
        if meta is None:
            meta = await anyio.to_thread.run_sync(probe, sample, fingerprint.content_type)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await storage.delete(key)
        raise
    return _row(owner_id, path, key, size, fingerprint, produced_by, derived_from, meta)


def _row(
    owner_id: uuid.UUID,
    path: str,
    key: str,
    size: int,
    fingerprint: Fingerprint,
    produced_by: uuid.UUID | None,
    derived_from: uuid.UUID | None,
    meta: dict[str, Any],
) -> models.File:
    """The row of a file stored under ``key``, its bytes seen by ``fingerprint``."""
    return models.File(
        owner_id=owner_id,
        path=path,
        name=file_name(path),
        size=size,
        content_type=fingerprint.content_type,
        sha256=fingerprint.sha256,
        storage_key=key,
        produced_by_job_id=produced_by,
        derived_from_id=derived_from,
        meta=meta,
    )


async def store_upload(
    db: AsyncSession,
    storage: Storage,
    settings: Settings,
    owner_id: uuid.UUID,
    path: str | None,
    incoming: IncomingFile,
    *,
    produced_by: uuid.UUID | None = None,
    derived_from: uuid.UUID | None = None,
    meta: dict[str, Any] | None = None,
    pipeline: Sequence[Step] | None = None,
) -> models.File:
    """Store ``incoming`` as ``owner_id``'s file at ``path`` (default: its filename).

    ``pipeline``: checked steps to start on the file, queued in the same
    transaction as its row (``core.pipelines``); the caller advances it.

    A job's output names the job (``produced_by``), maybe the file it was made
    from (``derived_from``), and may carry ``meta``;
    without it, the file gets what the probe of its headers finds
    (:mod:`core.probe`).

    Raises ``BAD_USER_INPUT`` for a bad path, ``CONFLICT`` for a path in use,
    ``QUOTA_EXCEEDED`` past the quota or ``settings.max_upload_bytes``, and
    ``BAD_REQUEST`` when the request carrying the file was broken.
    """
    path = normalize_path(incoming.filename or "" if path is None else path)
    # Checked again by the unique index on insert; this spares a doomed transfer.
    await ensure_path_free(db, owner_id, path)
    key = storage_key(owner_id, job_id=produced_by)
    reservation = _Reservation(db, owner_id)
    chunks = reservation.through(incoming)
    fingerprint = Fingerprint.tapped(chunks)
    sample = Sample(fingerprint)
    try:
        size = await _put(storage, settings, key, sample, fingerprint)
        await incoming.complete()
        if meta is None:
            meta = await anyio.to_thread.run_sync(probe, sample, fingerprint.content_type)
        file = _row(owner_id, path, key, size, fingerprint, produced_by, derived_from, meta)
        db.add(file)
        try:
            if produced_by is None:  # a job's outputs are told of when it succeeds
                await webhooks.queue_file_created(db, file)
            if pipeline is not None:
                await db.flush()  # the file first: the pipeline's input names it
                await pipelines.start_for_file(
                    db, file, pipeline, traceparent=current_traceparent()
                )
            await db.commit()
        except IntegrityError:
            raise path_taken(path) from None
    except BaseException:
        # Shielded: a client that disconnects (cancellation) must not stop the cleanup.
        with anyio.CancelScope(shield=True):
            # Storage may have stopped reading midway (e.g. too large).
            await chunks.aclose()
            await db.rollback()
            await storage.delete(key)
            await quota.release(db, owner_id, reservation.reserved)
            await db.commit()
        raise
    await db.refresh(file)
    return file
