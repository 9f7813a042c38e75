"""Resumable uploads: one file's bytes sent over many requests, any of which may break.

The protocol (tus) is ``api.tus``'s; here is what it asks of Depot, over any
transport. ``create`` checks the future file (path, size, quota) like a
direct-upload ticket and reserves its whole length at once; ``append`` adds
the bytes of one request at the offset the upload is at, keeping what
arrived when the request breaks (unless the request carried a checksum, which
only a whole request can match); the append that brings the last byte makes
the file: the object becomes visible (``Storage.finish_append``), its content
type is sniffed from its first bytes, its SHA-256 checked against the one the
client declared, and the file's row replaces the upload's in one transaction.
``terminate`` and ``expire_uploads`` end an unfinished upload, its bytes
deleted and its reservation released.

**A completed tus upload keeps its row** until it expires, at ``offset ==
length`` (:func:`is_complete`; ``length > 0``: an empty upload completes at
its creation, with no ``PATCH`` to retry): a client whose last ``PATCH``
lost its answer asks again, and ``HEAD`` and the retried ``PATCH`` are told
the final offset (:class:`UploadComplete`) instead of 404. The row holds no
bytes and no reservation of its own (its key is the file's now), so expiry
only deletes it; every rule about unfinished uploads (the lease, the list,
cancelling, the quota recount) reads :func:`unfinished` rows only.

Requests for one upload never append at once, on one replica or many: each
takes a lease (``busy_until``) with one conditional UPDATE on the offset it
starts from, renews it while bytes flow, and gives it back with the new
offset. A second request meanwhile is ``UploadBusy``; a lease whose holder
died lapses after ``lease``.

**The SHA-256** is computed as bytes arrive. ``hashlib`` cannot export a
hash's state, and S3 cannot read the parts of an unfinished multipart upload
back, so the state is not persisted: the process that received an upload's
bytes keeps it in memory (:class:`Hashes`, keyed by upload and offset), and
the next request it serves for that upload goes on from it. When the state
is not there (another replica took a request, the process restarted), the
upload goes on without one and the finished object is read back once to
hash it: the cost of a lost state is one read of the file at the end,
never a read per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import anyio
from sqlalchemy import BindParameter, bindparam, delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import pipelines, quota, webhooks
from core.auth import Deferred
from core.content import HEAD_BYTES, Fingerprint, sniff
from core.direct_uploads import check_content_type, check_sha256, check_size, chosen_content_type
from core.errors import BadUserInput, Conflict, NotFound
from core.files import ensure_path_free, path_taken, storage_key
from core.models import File, JobStatus, ResumableUpload, UploadKind
from core.paths import file_name, normalize_path
from core.pipelines import Step
from core.probe import SAMPLE_BYTES, Sample, probe
from core.sessions import SESSION_IS_LIVE
from core.time import utcnow
from core.tracing import current_traceparent
from storage.base import AppendInterrupted, Storage
from storage.errors import PermanentStorageError, StorageError, TooLarge

CHECKSUM_ALGORITHMS: Final = ("sha1", "sha256", "md5")
"""What a request's own checksum may use (tus's ``Upload-Checksum``); tus requires SHA-1."""

MAX_METADATA = 4096
"""Longest metadata kept with an upload (tus's ``Upload-Metadata``, as sent)."""

HASH_BATCH: Final = 2 * 1024 * 1024
"""Bytes of a request hashed in one go, in a thread, while the next arrive: four
trips to a thread per 8 MiB PATCH, at most two batches (4 MiB) held meanwhile."""

HASHES_KEPT: Final = 10_000
"""Hash states one process keeps (about 200 bytes each); the oldest go first."""


_CANCELLED: Final = (JobStatus.CANCELLED, "The upload was cancelled before it was complete.")
_EXPIRED: Final = (JobStatus.FAILED, "The upload expired before it was complete.")
_LOST: Final = (JobStatus.FAILED, "The upload's bytes were lost before it was complete.")


class WrongOffset(Conflict):
    """Raised when a request appends at another offset than the upload is at."""


class UploadBusy(Conflict):
    """Raised when another request is appending to the upload right now."""


class UploadComplete(Conflict):
    """Raised for an append to a completed upload (its file exists); says its final
    ``length`` and until when the record is kept, for a retried request's answer."""

    def __init__(self, length: int, expires_at: datetime) -> None:
        super().__init__(f"The upload is complete, at offset {length}.")
        self.length, self.expires_at = length, expires_at


class UploadExpired(NotFound):
    """Raised for an upload whose time ran out; its bytes are (or will be) deleted."""


class ChecksumMismatch(BadUserInput):
    """Raised when bytes do not match the checksum sent with them; nothing of them is kept."""


@dataclass(frozen=True)
class Checksum:
    """A request's own checksum: a ``hashlib`` algorithm and the digest it must give."""

    algorithm: str
    digest: bytes


@dataclass(frozen=True)
class Progress:
    """Where an upload stands after an append: its offset and expiry, or the file it made."""

    offset: int
    expires_at: datetime
    file: File | None = None


Watch = Callable[[ResumableUpload, AsyncIterable[bytes]], Awaitable[AsyncIterable[bytes]]]
"""Given the claimed upload and its chunks, the chunks to append: how a transport
watches the bytes pass (``api.upload_progress``) without reading the row again."""


class Hashes:
    """The SHA-256 states of the uploads this process receives, each with its offset.

    One per app, held by the upload route. A state is taken by the request
    that goes on from its offset and kept again at the offset it reached.
    """

    def __init__(self, capacity: int = HASHES_KEPT) -> None:
        self._states: OrderedDict[uuid.UUID, tuple[int, Any]] = OrderedDict()
        self._capacity = capacity

    def take(self, upload_id: uuid.UUID, offset: int) -> Any | None:
        """The state of ``upload_id``'s first ``offset`` bytes, if this process has it."""
        entry = self._states.pop(upload_id, None)
        if entry is None or entry[0] != offset:
            return None
        return entry[1]

    def keep(self, upload_id: uuid.UUID, offset: int, state: Any) -> None:
        self._states[upload_id] = (offset, state)
        self._states.move_to_end(upload_id)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def forget(self, upload_id: uuid.UUID) -> None:
        self._states.pop(upload_id, None)


def _update(states: list[Any], chunks: list[bytes]) -> None:
    """Feed ``chunks`` to each hash state (in a worker thread)."""
    for state in states:
        for chunk in chunks:
            state.update(chunk)


def is_complete(upload: ResumableUpload) -> bool:
    """Whether ``upload`` is the kept record of a completed one (see the module's docstring)."""
    return upload.length > 0 and upload.offset == upload.length


def unfinished() -> Any:
    """The SQL condition for the rows of uploads still under way (not :func:`is_complete`)."""
    return or_(
        col(ResumableUpload.offset) < col(ResumableUpload.length), col(ResumableUpload.length) == 0
    )


def _free_of_leases(now: datetime | BindParameter[datetime]) -> Any:
    return or_(col(ResumableUpload.busy_until).is_(None), col(ResumableUpload.busy_until) <= now)


async def create(
    db: AsyncSession,
    storage: Storage,
    hashes: Hashes | None,
    owner_id: uuid.UUID,
    *,
    path: str,
    length: int,
    content_type: str | None,
    sha256: str | None,
    metadata: str,
    max_upload_bytes: int,
    expires_in: timedelta,
    kind: UploadKind = UploadKind.TUS,
    pipeline: Sequence[Step] | None = None,
    news: pipelines.News | None = None,
) -> ResumableUpload:
    """Check the future file, reserve its ``length`` and open the upload; commits.

    Raises ``BAD_USER_INPUT`` (path, length, content type, SHA-256),
    ``CONFLICT`` (path taken) or ``QUOTA_EXCEEDED`` before anything is stored.
    ``pipeline``: checked steps to start on the file, created now and waiting
    for it (``ResumableUpload.pipeline_id``, ``core.pipelines``). ``news``:
    where to tell of the pipelines of the owner's expired uploads this ends.
    """
    path = normalize_path(path)
    length = check_size(length, max_upload_bytes, field="length")
    media = check_content_type(content_type)
    sha256 = check_sha256(sha256)
    if len(metadata) > MAX_METADATA:
        raise BadUserInput(
            f"Upload metadata may have at most {MAX_METADATA} characters.", field="metadata"
        )
    now = utcnow()
    # The owner's abandoned uploads give their bytes back before new ones are reserved.
    await expire_uploads(db, storage, now, owner_id, news=news)
    await ensure_path_free(db, owner_id, path)
    key = storage_key(owner_id)
    await quota.reserve(db, owner_id, length)
    handle: str | None = None
    try:
        handle = await storage.start_append(key)
        upload = ResumableUpload(
            owner_id=owner_id,
            kind=kind,
            path=path,
            length=length,
            content_type=media,
            sha256=sha256,
            upload_metadata=metadata,
            storage_key=key,
            storage_handle=handle,
            created_at=now,
            expires_at=now + expires_in,
        )
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
            await quota.release(db, owner_id, length)
            await db.commit()
            if handle is not None:
                await storage.abort_append(key, handle)
        raise
    await db.refresh(upload)
    if hashes is not None:
        hashes.keep(upload.id, 0, hashlib.sha256())
    return upload


async def get_upload(
    db: AsyncSession, owner_id: uuid.UUID, upload_id: uuid.UUID, kind: UploadKind | None = None
) -> ResumableUpload:
    """``owner_id``'s live upload (of ``kind``); ``NOT_FOUND`` for anyone else's or another
    kind, ``UploadExpired`` late."""
    upload = await db.get(ResumableUpload, upload_id, populate_existing=True)
    if upload is None or upload.owner_id != owner_id or kind not in (None, upload.kind):
        raise NotFound("No such upload.")
    if upload.expires_at <= utcnow():
        raise UploadExpired("This upload expired; start it again.")
    return upload


async def claim(
    db: AsyncSession,
    owner_id: uuid.UUID,
    upload_id: uuid.UUID,
    offset: int,
    lease: timedelta,
    kind: UploadKind = UploadKind.TUS,
    signed_in: Deferred | None = None,
) -> ResumableUpload:
    """Take the lease on an upload of ``kind`` at ``offset`` (committed), or raise why not.

    One conditional UPDATE that returns the row it leased, then the commit;
    only a refusal reads the row again, to say why. ``signed_in``: a further
    condition the UPDATE checks, the caller's credential still live
    (``core.auth.defer``); when it fails the refusal is what the row says, and
    the caller signs in to say why instead.
    """
    now = utcnow()
    params: dict[str, Any] = {
        "upload_id": upload_id,
        "upload_owner_id": owner_id,
        "upload_kind": kind,
        "at": offset,
        "now": now,
        "until": now + lease,
    }
    if signed_in is not None:
        params.update(signed_in.params)
    result = await db.exec(_CLAIMS[signed_in is not None], params=params)
    leased: ResumableUpload | None = result.scalars().first()
    await db.commit()
    if leased is not None:
        return leased
    upload = await get_upload(db, owner_id, upload_id, kind)
    if is_complete(upload):
        raise UploadComplete(upload.length, upload.expires_at)
    if upload.offset != offset:
        raise WrongOffset(f"The upload is at offset {upload.offset}, not {offset}.")
    raise UploadBusy("Another request is sending bytes to this upload; try again shortly.")


def _claim_statement(signed_in: bool) -> Any:
    """:func:`claim`'s UPDATE, with bind parameters (``signed_in``: with
    ``core.sessions.SESSION_IS_LIVE`` too)."""
    now: BindParameter[datetime] = bindparam("now")
    return (
        update(ResumableUpload)
        .where(
            col(ResumableUpload.id) == bindparam("upload_id"),
            col(ResumableUpload.owner_id) == bindparam("upload_owner_id"),
            col(ResumableUpload.kind) == bindparam("upload_kind"),
            col(ResumableUpload.offset) == bindparam("at"),
            col(ResumableUpload.expires_at) > now,
            unfinished(),
            _free_of_leases(now),
            *([SESSION_IS_LIVE] if signed_in else []),
        )
        .values(busy_until=bindparam("until"))
        .returning(ResumableUpload)
        # The row comes back whole (RETURNING): nothing in the session to bring up
        # to date by evaluating the WHERE in Python, which SQLAlchemy's default
        # ("auto") did for each lease, compiling its evaluator every time.
        .execution_options(populate_existing=True, synchronize_session=False)
    )


# Built once: building the statement took a quarter of a lease's own Python time.
_CLAIMS: Final = {False: _claim_statement(False), True: _claim_statement(True)}


_ADVANCE: Final = (
    update(ResumableUpload)
    .where(
        col(ResumableUpload.id) == bindparam("upload_id"),
        col(ResumableUpload.offset) == bindparam("at"),
    )
    .values(busy_until=None, offset=bindparam("new_offset"), expires_at=bindparam("new_expiry"))
    # Nobody reads the leased row after it (the session ends): no evaluation in Python.
    .execution_options(synchronize_session=False)
)
""":func:`advance`'s UPDATE, built once like :data:`_CLAIMS`."""


async def advance(
    db: AsyncSession, upload_id: uuid.UUID, at: int, offset: int, expires_at: datetime
) -> bool:
    """Give the lease back at the new ``offset`` and expiry, unless the upload moved on
    from ``at``; commits. Every appending request ends here."""
    params = {"upload_id": upload_id, "at": at, "new_offset": offset, "new_expiry": expires_at}
    result = await db.exec(_ADVANCE, params=params)
    await db.commit()
    return bool(result.rowcount == 1)


async def release(db: AsyncSession, upload_id: uuid.UUID, at: int, **values: Any) -> bool:
    """Give the lease back (with ``values``), unless the upload moved on from ``at``; commits."""
    result = await db.exec(
        update(ResumableUpload)
        .where(col(ResumableUpload.id) == upload_id, col(ResumableUpload.offset) == at)
        .values(busy_until=None, **values)
    )
    await db.commit()
    return bool(result.rowcount == 1)


class _Passing:
    """The bytes of one append on their way to storage: hashed, checked, the lease renewed."""

    def __init__(
        self,
        db: AsyncSession,
        upload: ResumableUpload,
        sha256: Any | None,
        checksum: Checksum | None,
        lease: timedelta,
    ) -> None:
        self.db = db
        self.upload_id = upload.id
        self.offset = upload.offset
        self.sha256 = sha256
        self.checksum = checksum
        self.lease = lease
        self.received = 0
        self._last: asyncio.Future[None] | None = None

    async def through(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` on to storage as they come; hashed beside them, in a thread.

        Hashing an 8 MiB PATCH on the event loop took as long as writing it
        (SHA-256 runs at about the speed of a page-cache copy), and nothing
        else ran meanwhile: the body waited in the socket. So each
        ``HASH_BATCH`` of chunks is hashed in a worker thread (``hashlib``
        lets go of the GIL) while the loop takes the next from the socket;
        one batch at a time, in order, so the states see the bytes as sent.
        Every byte yielded is hashed before this ends, however it ends, except
        that without a request checksum (which must be matched before storage
        keeps the bytes) the last batch is left hashing while storage writes
        and flushes the last block: :meth:`hashed` waits for it.
        """
        request_hash = None if self.checksum is None else hashlib.new(self.checksum.algorithm)
        states = [state for state in (self.sha256, request_hash) if state is not None]
        batch: list[bytes] = []
        batched = 0
        hashing: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()

        async def hand_over() -> None:
            """The previous batch hashed, this one started."""
            nonlocal batch, batched, hashing
            if hashing is not None:
                await hashing
            hashing = loop.run_in_executor(None, _update, states, batch) if batch else None
            batch, batched = [], 0

        renewed = time.monotonic()
        try:
            async for chunk in chunks:
                if states:
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= HASH_BATCH:
                        await hand_over()
                self.received += len(chunk)
                if time.monotonic() - renewed > self.lease.total_seconds() / 3:
                    await self._renew()
                    renewed = time.monotonic()
                yield chunk
        finally:
            # Shielded: what was yielded is in storage, so it is in the hash too.
            with anyio.CancelScope(shield=True):
                await hand_over()
                if self.checksum is None:
                    self._last, hashing = hashing, None
                else:
                    await hand_over()
        if (
            self.checksum is not None
            and request_hash is not None
            and request_hash.digest() != self.checksum.digest
        ):
            raise ChecksumMismatch(
                f"The bytes sent do not match their {self.checksum.algorithm} checksum; "
                "none of them were kept.",
                field="checksum",
            )

    async def hashed(self) -> None:
        """Wait until every byte passed is in the hash states (see :meth:`through`)."""
        if self._last is not None:
            with anyio.CancelScope(shield=True):
                await self._last
            self._last = None

    async def _renew(self) -> None:
        await self.db.exec(
            update(ResumableUpload)
            .where(
                col(ResumableUpload.id) == self.upload_id,
                col(ResumableUpload.offset) == self.offset,
            )
            .values(busy_until=utcnow() + self.lease)
        )
        await self.db.commit()


async def append(
    db: AsyncSession,
    storage: Storage,
    hashes: Hashes,
    owner_id: uuid.UUID,
    upload_id: uuid.UUID,
    *,
    offset: int,
    chunks: AsyncIterable[bytes],
    checksum: Checksum | None,
    lease: timedelta,
    expires_in: timedelta,
    news: pipelines.News | None = None,
    watch: Watch | None = None,
    signed_in: Deferred | None = None,
) -> Progress:
    """Append ``chunks`` at ``offset``; the append that brings the last byte makes the file.

    ``lease`` must outlast the longest silence of a live request. Raises
    ``NOT_FOUND``, ``UploadExpired``, ``WrongOffset``, ``UploadBusy``;
    ``ChecksumMismatch`` (nothing kept); ``TooLarge`` past the declared length
    (nothing kept); the chunks' own error once what arrived is kept (no
    ``checksum``) or dropped; and, for the last byte, whatever stops the file
    (``CONFLICT`` for a path taken meanwhile, ``ChecksumMismatch`` for a file
    that is not the declared SHA-256: both end the upload). ``signed_in``: as
    :func:`claim`'s.
    """
    upload = await claim(db, owner_id, upload_id, offset, lease, signed_in=signed_in)
    if watch is not None:
        try:
            chunks = await watch(upload, chunks)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await release(db, upload.id, offset)
            raise
    start = hashes.take(upload.id, offset)
    passing = _Passing(db, upload, None if start is None else start.copy(), checksum, lease)
    interrupted: BaseException | None = None
    try:
        try:
            size = await storage.append(
                upload.storage_key,
                upload.storage_handle,
                offset,
                passing.through(chunks),
                max_size=upload.length - offset,
                keep_partial=checksum is None,
            )
        except AppendInterrupted as stop:
            size, interrupted = stop.size, stop.__cause__
        finally:
            await passing.hashed()
    except TooLarge:
        with anyio.CancelScope(shield=True):
            await _give_back(db, hashes, upload.id, offset, start)
        raise
    except PermanentStorageError:
        # The staged bytes are not what the row says (lost, or a crash mid-finish):
        # this upload cannot go on.
        with anyio.CancelScope(shield=True):
            await release(db, upload.id, offset)
            await _end(db, storage, hashes, upload.id, expired_before=None, why=_LOST, news=news)
        raise UploadExpired("This upload's bytes were lost; start it again.") from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _give_back(db, hashes, upload.id, offset, start)
        raise
    sha256 = passing.sha256 if size == offset + passing.received else None
    if size == upload.length:
        made = await _finish(db, storage, hashes, upload, sha256, news)
        return Progress(size, upload.expires_at, made)
    expires_at = utcnow() + expires_in
    with anyio.CancelScope(shield=True):
        if await advance(db, upload.id, offset, size, expires_at):
            if size == offset and start is not None:
                hashes.keep(upload.id, offset, start)
            elif sha256 is not None:
                hashes.keep(upload.id, size, sha256)
    if interrupted is not None:
        raise interrupted
    return Progress(size, expires_at)


async def _give_back(
    db: AsyncSession, hashes: Hashes, upload_id: uuid.UUID, offset: int, start: Any | None
) -> None:
    """After an append that kept nothing: the lease back, the hash state as it was."""
    if start is not None:
        hashes.keep(upload_id, offset, start)
    await release(db, upload_id, offset)


@dataclass(frozen=True)
class _Ending:
    """What ending an upload needs, read before a rollback expires the row."""

    id: uuid.UUID
    owner_id: uuid.UUID
    length: int
    offset: int
    storage_key: str
    pipeline_id: uuid.UUID | None

    @classmethod
    def of(cls, upload: ResumableUpload) -> _Ending:
        return cls(
            upload.id,
            upload.owner_id,
            upload.length,
            upload.offset,
            upload.storage_key,
            upload.pipeline_id,
        )


async def _finish(
    db: AsyncSession,
    storage: Storage,
    hashes: Hashes,
    upload: ResumableUpload,
    sha256: Any | None,
    news: pipelines.News | None,
) -> File:
    """Make the appended object visible and turn the upload into its file, in one commit."""
    hashes.forget(upload.id)
    try:
        await storage.finish_append(upload.storage_key, upload.storage_handle, upload.length)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await release(db, upload.id, upload.offset)
        raise
    return await make_file(db, storage, upload, sha256, news=news)


async def make_file(
    db: AsyncSession,
    storage: Storage,
    upload: ResumableUpload,
    sha256: Any | None,
    *,
    news: pipelines.News | None = None,
) -> File:
    """Turn a leased upload whose object is now visible into its file, in one commit
    (with its pipeline's input: ``core.pipelines.attach_file``).

    The head is sniffed and the headers probed (``core.probe``); the SHA-256
    is ``sha256``'s, or read back from the object when None. A SHA-256 other
    than the one declared, or a path taken meanwhile, ends the upload (bytes,
    reservation and pipeline, told to ``news``); any other failure gives the
    lease back.
    """
    ending = _Ending.of(upload)
    key, length = upload.storage_key, upload.length
    try:
        if sha256 is None:
            # The hash state was not in this process: read the file back once.
            fingerprint = Fingerprint(storage.open(key))
            sample = Sample(fingerprint)
            async for _ in sample:
                pass
            digest = fingerprint.sha256
        else:
            # The probe's sample: the two ends, read back (the bytes came over many requests).
            head = await _read(storage, key, 0, SAMPLE_BYTES)
            tail = await _read(storage, key, max(0, length - SAMPLE_BYTES), length)
            sample = Sample.of_ends(head, tail, length)
            digest = sha256.hexdigest()
        content_type = chosen_content_type(
            sniff(bytes(sample.head[:HEAD_BYTES])), upload.content_type
        )
        meta = await anyio.to_thread.run_sync(probe, sample, content_type)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await release(db, upload.id, upload.offset)
        raise
    if upload.sha256 is not None and digest != upload.sha256:
        message = (
            f"The file's SHA-256 is {digest}, not the {upload.sha256} declared; "
            "the upload was discarded."
        )
        with anyio.CancelScope(shield=True):
            await _discard(db, storage, ending, message, news)
        raise ChecksumMismatch(message, field="sha256")
    path = upload.path
    file = File(
        owner_id=upload.owner_id,
        path=path,
        name=file_name(path),
        size=upload.length,
        content_type=content_type,
        sha256=digest,
        meta=meta,
        # No URL can write to the key once the upload is complete (tus bytes
        # come through Depot; S3 refuses parts of a completed upload), so the
        # file keeps the upload's key.
        storage_key=upload.storage_key,
    )
    this_upload = (
        col(ResumableUpload.id) == upload.id,
        col(ResumableUpload.offset) == upload.offset,
    )
    try:
        if upload.kind == UploadKind.TUS and length > 0:
            # Kept, complete, until it expires: a retried PATCH is told its final offset.
            await db.exec(
                update(ResumableUpload).where(*this_upload).values(offset=length, busy_until=None)
            )
        else:
            await db.exec(delete(ResumableUpload).where(*this_upload))
        db.add(file)
        if ending.pipeline_id is not None:
            await db.flush()  # the file first: the pipeline's input names it
            await pipelines.attach_file(db, ending.pipeline_id, file)
        await webhooks.queue_file_created(db, file)
        await db.commit()
    except IntegrityError:
        await db.rollback()
        taken = path_taken(path)
        with anyio.CancelScope(shield=True):
            await _discard(db, storage, ending, taken.message, news)
        raise taken from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await db.rollback()
            await _discard(db, storage, ending, "The upload could not be completed.", news)
        raise
    await db.refresh(file)
    return file


async def _read(storage: Storage, key: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in storage.open(key, start, end)])


async def _discard(
    db: AsyncSession,
    storage: Storage,
    ending: _Ending,
    reason: str,
    news: pipelines.News | None,
) -> None:
    """End a finished-but-refused upload: its row, reservation and pipeline (failed with
    ``reason``), then its object."""
    result = await db.exec(
        delete(ResumableUpload).where(
            col(ResumableUpload.id) == ending.id, col(ResumableUpload.offset) == ending.offset
        )
    )
    ended = None
    if result.rowcount == 1:
        await quota.release(db, ending.owner_id, ending.length)
        ended = await pipelines.end_awaiting(db, ending.pipeline_id, JobStatus.FAILED, reason)
    await db.commit()
    if news is not None:
        await news.ended(ended)
    await storage.delete(ending.storage_key)


async def _end(
    db: AsyncSession,
    storage: Storage,
    hashes: Hashes | None,
    upload_id: uuid.UUID,
    *,
    expired_before: datetime | None,
    why: tuple[JobStatus, str],
    news: pipelines.News | None,
) -> bool:
    """End an unfinished upload nobody is appending to (only an expired one, with
    ``expired_before``): its bytes, then its row, reservation and pipeline (ended
    ``why``: a status and its reason). ``False`` if busy."""
    now = utcnow()
    conditions = [col(ResumableUpload.id) == upload_id, unfinished(), _free_of_leases(now)]
    if expired_before is not None:
        conditions.append(col(ResumableUpload.expires_at) <= expired_before)
    # Leased for as long as ending takes, so no append starts meanwhile.
    claimed = await db.exec(
        update(ResumableUpload).where(*conditions).values(busy_until=now + timedelta(minutes=5))
    )
    await db.commit()
    if claimed.rowcount != 1:
        return False
    upload = await db.get(ResumableUpload, upload_id, populate_existing=True)
    assert upload is not None
    if hashes is not None:
        hashes.forget(upload_id)
    # The bytes first: should that fail, the row keeps the key to try again.
    try:
        await storage.abort_append(upload.storage_key, upload.storage_handle)
        # And the object itself, should a crash have stopped a finished one short of its file.
        await storage.delete(upload.storage_key)
    except StorageError:
        await release(db, upload_id, upload.offset)
        raise
    pipeline_id = upload.pipeline_id
    await db.exec(delete(ResumableUpload).where(col(ResumableUpload.id) == upload_id))
    await quota.release(db, upload.owner_id, upload.length)
    ended = await pipelines.end_awaiting(db, pipeline_id, *why)
    await db.commit()
    if news is not None:
        await news.ended(ended)
    return True


async def terminate(
    db: AsyncSession,
    storage: Storage,
    hashes: Hashes | None,
    owner_id: uuid.UUID,
    upload_id: uuid.UUID,
    *,
    news: pipelines.News | None = None,
) -> ResumableUpload:
    """End ``owner_id``'s unfinished upload: bytes deleted, reservation released, its
    pipeline cancelled (told to ``news``).

    Returns the upload as it was. ``NOT_FOUND`` for anyone else's;
    ``UploadBusy`` while a request is appending to it.
    """
    upload = await db.get(ResumableUpload, upload_id, populate_existing=True)
    if upload is None or upload.owner_id != owner_id or is_complete(upload):
        raise NotFound("No such upload.")
    db.expunge(upload)
    if not await _end(
        db, storage, hashes, upload_id, expired_before=None, why=_CANCELLED, news=news
    ):
        if await db.get(ResumableUpload, upload_id, populate_existing=True) is None:
            raise NotFound("No such upload.")
        raise UploadBusy("A request is sending bytes to this upload; try again shortly.")
    return upload


async def expire_uploads(
    db: AsyncSession,
    storage: Storage,
    now: datetime,
    owner_id: uuid.UUID | None = None,
    *,
    news: pipelines.News | None = None,
) -> int:
    """End every unfinished upload (of ``owner_id``, or everyone's) that expired by
    ``now``, failing their pipelines (told to ``news``); how many. The expired records
    of completed ones go too, in one DELETE: their bytes are their files'."""
    conditions = [col(ResumableUpload.expires_at) <= now]
    if owner_id is not None:
        conditions.append(col(ResumableUpload.owner_id) == owner_id)
    kept = await db.exec(delete(ResumableUpload).where(*conditions, ~unfinished()))
    if kept.rowcount:
        await db.commit()
    found = await db.exec(select(col(ResumableUpload.id)).where(*conditions, unfinished()))
    ended = 0
    for upload_id in found.all():
        if await _end(db, storage, None, upload_id, expired_before=now, why=_EXPIRED, news=news):
            ended += 1
    return ended
