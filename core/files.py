"""What an owner does to their files once stored: find, move, copy, trash, restore, purge.

Every operation takes the owner's id and finds the file through
``get_owned_file``, so another user's file is ``NOT_FOUND`` exactly like an
id that never existed. Paths are unique among an owner's live files: the
checks here give a friendly ``CONFLICT`` early, and the partial unique index
decides races (its ``IntegrityError`` becomes the same ``CONFLICT``).

Bytes and rows change in an order that never loses data nor leaks quota: a
copy reserves its bytes before storage copies them and gives them back if
anything fails; a purge deletes the row and frees its bytes in one
transaction, and only then deletes the object (a stray object is harmless, a
row without its bytes is not).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any, Final

import anyio
import structlog
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import quota, webhooks
from core.errors import Conflict, NotFound
from core.models import File
from core.paths import file_name, normalize_path
from core.time import utcnow
from storage.base import Storage

logger = structlog.get_logger("depot.files")


def storage_key(owner_id: uuid.UUID, job_id: uuid.UUID | None = None) -> str:
    """A fresh opaque key for one of ``owner_id``'s objects; never derived from a path.

    A job's outputs go under ``output_prefix``, so whatever a failed or killed
    attempt wrote can be found and deleted without a row naming it.
    """
    if job_id is not None:
        return f"{output_prefix(owner_id, job_id)}{uuid.uuid4().hex}"
    return f"u/{owner_id.hex}/{uuid.uuid4().hex}"


def output_prefix(owner_id: uuid.UUID, job_id: uuid.UUID) -> str:
    """The storage prefix (for ``Storage.delete_prefix``) of every output of one job."""
    return f"u/{owner_id.hex}/j/{job_id.hex}/"


def _not_found() -> NotFound:
    # One message for missing and foreign files alike: nothing tells them apart.
    return NotFound("No such file.")


def path_taken(path: str) -> Conflict:
    return Conflict(f"A file already exists at {path!r}.")


async def get_owned_file(db: AsyncSession, owner_id: uuid.UUID, file_id: uuid.UUID) -> File:
    """``owner_id``'s file ``file_id`` (live or trashed), or ``NOT_FOUND``."""
    file = await db.get(File, file_id)
    if file is None or file.owner_id != owner_id:
        raise _not_found()
    return file


# How many paths one query looks up: far below any database's bound-parameter limit.
_PATHS_PER_QUERY: Final = 500


async def taken_paths(db: AsyncSession, owner_id: uuid.UUID, paths: Sequence[str]) -> set[str]:
    """Those of ``paths`` a live file of the owner already has.

    Looked up in batches, so a job checking thousands of outputs before it
    writes one (``extract``) costs a handful of queries, not one per path.
    """
    taken: set[str] = set()
    for start in range(0, len(paths), _PATHS_PER_QUERY):
        batch = paths[start : start + _PATHS_PER_QUERY]
        found = await db.exec(
            select(File.path).where(
                col(File.owner_id) == owner_id,
                col(File.path).in_(batch),
                col(File.trashed_at).is_(None),
            )
        )
        taken.update(found.all())
    return taken


async def first_taken_path(
    db: AsyncSession, owner_id: uuid.UUID, paths: Sequence[str]
) -> str | None:
    """The first of ``paths`` (in their order) a live file of the owner already has."""
    taken = await taken_paths(db, owner_id, paths)
    return next((path for path in paths if path in taken), None)


async def ensure_path_free(db: AsyncSession, owner_id: uuid.UUID, path: str) -> None:
    """``CONFLICT`` if a live file of the owner already has ``path`` (an early check)."""
    if await first_taken_path(db, owner_id, [path]) is not None:
        raise path_taken(path)


async def set_meta(db: AsyncSession, file_id: uuid.UUID, meta: dict[str, Any]) -> None:
    """Replace a file's metadata (what a job learnt about it); not committed: a job's
    go with its final status (:func:`core.jobs.finish`).

    One UPDATE by id, so a job whose copy of the row is old changes nothing
    else about the file (its path may have moved meanwhile).
    """
    await db.exec(update(File).where(col(File.id) == file_id).values(meta=meta))


def _require_live(file: File) -> None:
    if file.trashed_at is not None:
        raise Conflict("The file is in the trash; restore it first.")


async def _commit_path(db: AsyncSession, file: File) -> None:
    """Commit a row whose path may clash; the unique index has the last word."""
    path = file.path  # the rollback below expires the row's attributes
    db.add(file)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise path_taken(path) from None


async def move(db: AsyncSession, owner_id: uuid.UUID, file_id: uuid.UUID, path: str) -> File:
    """Give a live file a new path (``CONFLICT`` if taken); commits."""
    path = normalize_path(path)
    file = await get_owned_file(db, owner_id, file_id)
    _require_live(file)
    if file.path == path:
        return file
    await ensure_path_free(db, owner_id, path)
    file.path, file.name, file.updated_at = path, file_name(path), utcnow()
    await _commit_path(db, file)
    return file


async def copy(
    db: AsyncSession, storage: Storage, owner_id: uuid.UUID, file_id: uuid.UUID, path: str
) -> File:
    """A new file at ``path`` with the same bytes, copied inside storage; commits.

    The copy's bytes count against the quota (``QUOTA_EXCEEDED`` before any
    byte moves); if the copy or the row fails, the bytes are released and the
    new object removed.
    """
    path = normalize_path(path)
    source = await get_owned_file(db, owner_id, file_id)
    _require_live(source)
    await ensure_path_free(db, owner_id, path)
    await quota.reserve(db, owner_id, source.size)
    copied = File(
        owner_id=owner_id,
        path=path,
        name=file_name(path),
        size=source.size,
        content_type=source.content_type,
        sha256=source.sha256,
        storage_key=storage_key(owner_id),
        meta=dict(source.meta),
    )
    try:
        await storage.copy(source.storage_key, copied.storage_key)
        await _commit_path(db, copied)
    except BaseException:
        # Shielded: a cancelled request must still give its bytes back.
        with anyio.CancelScope(shield=True):
            await db.rollback()
            await quota.release(db, owner_id, source.size)
            await db.commit()
            await storage.delete(copied.storage_key)
        raise
    return copied


async def derivatives(db: AsyncSession, owner_id: uuid.UUID, file_id: uuid.UUID) -> list[File]:
    """Every file derived from ``file_id``, directly or from another derivative
    (a thumbnail of a conversion), nearest first; one query per generation."""
    found: list[File] = []
    seen, generation = {file_id}, [file_id]
    while generation:
        rows = await db.exec(
            select(File).where(
                col(File.owner_id) == owner_id, col(File.derived_from_id).in_(generation)
            )
        )
        children = [row for row in rows.all() if row.id not in seen]
        seen.update(child.id for child in children)
        found.extend(children)
        generation = [child.id for child in children]
    return found


async def trash(
    db: AsyncSession, owner_id: uuid.UUID, file_id: uuid.UUID, *, follow: bool = False
) -> list[File]:
    """Move a file to the trash, freeing its path (its bytes still count); commits.

    With ``follow``, its live derivatives go with it, at the same moment (so
    :func:`restore` knows them). Returns the files trashed now, the one asked
    for first (also when it already was: trashing it again changes nothing).
    """
    file = await get_owned_file(db, owner_id, file_id)
    targets = [file, *(await derivatives(db, owner_id, file_id) if follow else [])]
    now = utcnow()
    trashed = [target for target in targets if target.trashed_at is None]
    for target in trashed:
        await webhooks.queue_file_deleted(db, target)
        target.trashed_at = target.updated_at = now
        db.add(target)
    if trashed:
        await db.commit()
    return [file, *(target for target in trashed if target is not file)]


async def restore(
    db: AsyncSession, owner_id: uuid.UUID, file_id: uuid.UUID, *, follow: bool = False
) -> list[File]:
    """Bring a file back from the trash at its path (``CONFLICT`` if now taken); commits.

    With ``follow``, the derivatives trashed with it come back too, each whose
    path is still free and whose own source came back (one whose path was
    taken meanwhile stays in the trash, and so does what was made from it).
    Returns the files restored, the one asked for first.
    """
    file = await get_owned_file(db, owner_id, file_id)
    if file.trashed_at is None:
        return [file]
    await ensure_path_free(db, owner_id, file.path)
    trashed_at, now = file.trashed_at, utcnow()
    along: list[File] = []
    if follow:
        candidates = [
            d for d in await derivatives(db, owner_id, file_id) if d.trashed_at == trashed_at
        ]
        taken = await taken_paths(db, owner_id, [d.path for d in candidates])
        back = {file.id}
        for derived in candidates:  # nearest first: a source before what was made from it
            if derived.path not in taken and derived.derived_from_id in back:
                back.add(derived.id)
                along.append(derived)
    for target in (file, *along):
        target.trashed_at, target.updated_at = None, now
        db.add(target)
    await _commit_path(db, file)
    return [file, *along]


async def purge_following(
    db: AsyncSession, storage: Storage, owner_id: uuid.UUID, file_id: uuid.UUID
) -> list[File]:
    """Purge a file and everything derived from it, the farthest derivatives first.

    Each goes as :func:`purge` takes it (row and quota, then bytes), so a
    failure midway leaves no file without its bytes. Returns the files
    purged, the one asked for first.
    """
    await get_owned_file(db, owner_id, file_id)
    gone = []
    for derived in reversed(await derivatives(db, owner_id, file_id)):
        with contextlib.suppress(NotFound):  # purged meanwhile
            gone.append(await purge(db, storage, owner_id, derived.id))
    return [await purge(db, storage, owner_id, file_id), *reversed(gone)]


async def purge(
    db: AsyncSession, storage: Storage, owner_id: uuid.UUID, file_id: uuid.UUID
) -> File:
    """Delete a file for good, live or trashed: row and quota in one commit, then the bytes.

    The row is deleted conditionally, so of two concurrent purges only one
    releases the bytes. Returns the row as it was.
    """
    file = await get_owned_file(db, owner_id, file_id)
    result = await db.exec(
        delete(File).where(col(File.id) == file.id, col(File.owner_id) == owner_id)
    )
    if result.rowcount != 1:
        await db.rollback()
        raise _not_found()
    await quota.release(db, owner_id, file.size)
    await webhooks.queue_file_deleted(db, file)
    await db.commit()
    try:
        await storage.delete(file.storage_key)
    except Exception:
        # The file is gone for its owner either way; an orphaned object only costs space.
        logger.warning("purged file's object not deleted", key=file.storage_key, exc_info=True)
    return file
