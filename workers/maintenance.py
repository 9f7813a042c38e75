"""Periodic maintenance: the chores that keep the database, storage and quotas honest.

Each task is a plain function taking what it needs and returning how much it
did; :func:`run_all` runs them in turn for the scheduler. Every task is safe to
run twice at once (each change is conditional or idempotent), so a scheduler
that lost its lock mid-run costs work, never correctness.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import BigInteger, cast, delete, func, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col, select

from core import direct_uploads, files, jobs, notifications, pipelines, resumable_uploads
from core.db import SessionMaker
from core.errors import NotFound
from core.eventlog import EventLog
from core.events import FileDeleted, announce
from core.models import File, JobKind, ResumableUpload, Upload, User
from core.settings import Settings
from core.time import utcnow
from storage.base import Storage
from workers.pipeline import advance

logger = structlog.get_logger("depot.maintenance")

# Rows handled per query, so a huge trash or user table never loads at once.
BATCH: Final = 500

SendJob = Callable[[uuid.UUID, JobKind], Awaitable[None]]
"""Hands a job's message to the broker (``workers.broker.Jobs.send``)."""


async def purge_trash(
    sessionmaker: SessionMaker,
    storage: Storage,
    events: EventLog,
    settings: Settings,
    now: datetime,
) -> int:
    """Purge the files trashed more than ``settings.trash_days`` ago; returns how many.

    Each file goes with :func:`core.files.purge` (row and quota, then bytes) and
    its owner hears ``FILE_DELETED``.
    """
    cutoff = now - timedelta(days=settings.trash_days)
    purged = 0
    after: uuid.UUID | None = None
    while True:
        async with sessionmaker() as db:
            conditions = [col(File.trashed_at) <= cutoff]
            if after is not None:
                conditions.append(col(File.id) > after)
            found = await db.exec(
                select(col(File.id), col(File.owner_id))
                .where(*conditions)
                .order_by(col(File.id))
                .limit(BATCH)
            )
            batch = found.all()
            for file_id, owner_id in batch:
                # Restored since the query (or purged by its owner): not ours to purge.
                current = await db.get(File, file_id, populate_existing=True)
                if current is None or current.trashed_at is None or current.trashed_at > cutoff:
                    continue
                try:
                    file = await files.purge(db, storage, owner_id, file_id)
                except NotFound:
                    continue
                purged += 1
                await announce(events, FileDeleted.of(file), owner_id=file.owner_id)
        if len(batch) < BATCH:
            return purged
        after = batch[-1][0]


async def expire_tickets(
    sessionmaker: SessionMaker,
    storage: Storage,
    events: EventLog,
    settings: Settings,
    now: datetime,
) -> int:
    """End the upload tickets that expired unused, and forget the long-ended ones.

    A presigned S3 URL keeps working until it expires, even after its ticket
    ended, so a late PUT may leave an object at an ended ticket's key. Once a
    ticket ended longer ago than a URL lives, and its URL has expired, that
    object is deleted and the ticket row with it. Returns tickets ended plus
    rows removed.
    """
    async with sessionmaker() as db:
        ended = await direct_uploads.expire_tickets(
            db, storage, now, news=pipelines.News(events, settings.job_events_retention_seconds)
        )
    removed = await _sweep_ended_tickets(
        sessionmaker, storage, now - timedelta(minutes=settings.upload_url_minutes), now
    )
    if ended or removed:
        logger.info("upload tickets cleaned", ended=ended, removed=removed)
    return ended + removed


async def _sweep_ended_tickets(
    sessionmaker: SessionMaker, storage: Storage, ended_before: datetime, now: datetime
) -> int:
    removed = 0
    while True:
        async with sessionmaker() as db:
            found = await db.exec(
                select(col(Upload.id), col(Upload.storage_key))
                .where(
                    col(Upload.completed_at) <= ended_before,
                    col(Upload.expires_at) <= now,
                )
                .order_by(col(Upload.id))
                .limit(BATCH)
            )
            batch = found.all()
            for upload_id, key in batch:
                # The object first: should the delete fail, the row keeps the key to retry.
                await storage.delete(key)
                await db.exec(delete(Upload).where(col(Upload.id) == upload_id))
                await db.commit()
                removed += 1
        if len(batch) < BATCH:
            return removed


async def expire_resumable_uploads(
    sessionmaker: SessionMaker,
    storage: Storage,
    events: EventLog,
    settings: Settings,
    now: datetime,
) -> int:
    """End the resumable (tus) uploads that expired unfinished: bytes deleted, reservations
    released, pipelines failed. One a request is still appending to waits for the next
    run. Returns how many."""
    news = pipelines.News(events, settings.job_events_retention_seconds)
    async with sessionmaker() as db:
        ended = await resumable_uploads.expire_uploads(db, storage, now, news=news)
    if ended:
        logger.info("resumable uploads expired", ended=ended)
    return ended


async def resend_stuck_jobs(
    sessionmaker: SessionMaker, send: SendJob, settings: Settings, now: datetime
) -> int:
    """Send again the jobs whose message looks lost; returns how many were sent.

    Queued jobs not sent for ``job_resend_after_seconds`` and running jobs
    silent for ``job_stale_seconds`` (their worker died). Redelivery is
    harmless: a worker claims a job only in the state it expects. A send that
    fails is logged and left for the next run.
    """
    async with sessionmaker() as db:
        due = await jobs.due_for_sending(
            db,
            resend_before=now - timedelta(seconds=settings.job_resend_after_seconds),
            stale_before=now - timedelta(seconds=settings.job_stale_seconds),
        )
    sent: list[uuid.UUID] = []
    for job_id, kind in due:
        try:
            await send(job_id, kind)
        except Exception as exc:  # noqa: BLE001 - the job stays due and is tried next time
            logger.warning("job not re-sent", job_id=str(job_id), error=str(exc))
            continue
        sent.append(job_id)
    for start in range(0, len(sent), BATCH):
        async with sessionmaker() as db:
            await jobs.mark_sent(db, sent[start : start + BATCH])
    if sent:
        logger.info("stuck jobs re-sent", job_ids=[str(job_id) for job_id in sent])
    return len(sent)


async def advance_pipelines(
    sessionmaker: SessionMaker, send: SendJob, events: EventLog, settings: Settings, now: datetime
) -> int:
    """Advance the unfinished pipelines quiet for ``job_resend_after_seconds``; returns how many.

    A step's worker advances its pipeline when the step ends; one that stopped
    between the two leaves it to this. Advancing is idempotent
    (:mod:`core.pipelines`), so one that needed nothing changes nothing.
    """
    async with sessionmaker() as db:
        quiet = await pipelines.quiet(
            db, before=now - timedelta(seconds=settings.job_resend_after_seconds)
        )
    for pipeline_id in quiet:
        await advance(sessionmaker, send, events, settings, pipeline_id)
    return len(quiet)


async def prune_events(events: EventLog) -> int:
    """Forget the event streams whose retention is over; returns how many.

    Redis needs nothing more: job streams expire by ``EXPIRE`` and user
    streams are capped by ``MAXLEN``.
    """
    return await events.prune()


def _actual_usage() -> ColumnElement[int]:
    """What a user's ``used_bytes`` should be: their files, trash included, and the
    bytes reserved by their unfinished upload tickets and resumable uploads.

    A ticket or upload holds its reservation until it is ended, even past its
    expiry (ending it releases the bytes), so expired unfinished ones count too.
    """
    file_bytes = (
        select(func.coalesce(func.sum(col(File.size)), 0))
        .where(col(File.owner_id) == col(User.id))
        .scalar_subquery()
    )
    ticket_bytes = (
        select(func.coalesce(func.sum(col(Upload.size)), 0))
        .where(col(Upload.owner_id) == col(User.id), col(Upload.completed_at).is_(None))
        .scalar_subquery()
    )
    resumable_bytes = (
        select(func.coalesce(func.sum(col(ResumableUpload.length)), 0))
        # A completed upload's kept record reserves nothing: its file's size counts.
        .where(col(ResumableUpload.owner_id) == col(User.id), resumable_uploads.unfinished())
        .scalar_subquery()
    )
    # PostgreSQL sums a bigint as numeric: back to the column's type.
    return cast(file_bytes + ticket_bytes + resumable_bytes, BigInteger)


UsageSuspects = dict[uuid.UUID, tuple[int, int]]


async def recount_usage(sessionmaker: SessionMaker, suspects: UsageSuspects) -> int:
    """Set ``used_bytes`` right for users whose count was off, the same way, on two runs.

    A user whose ``used_bytes`` differs from what their files and tickets hold
    may just be mid-upload (bytes reserved as they stream, no row yet): a
    one-off difference proves nothing. ``suspects`` carries from one run to
    the next each user's ``(used_bytes, what it should be)``; only a user found
    with the very same pair again — nothing moved for a whole interval — is
    corrected, by an UPDATE conditional on the value it was decided from.
    Returns how many users were corrected.
    """
    changed = 0
    after: uuid.UUID | None = None
    actual = _actual_usage()
    seen: UsageSuspects = {}
    while True:
        async with sessionmaker() as db:
            conditions = [col(User.used_bytes) != actual]
            if after is not None:
                conditions.append(col(User.id) > after)
            found = await db.exec(
                select(col(User.id), col(User.used_bytes), actual)
                .where(*conditions)
                .order_by(col(User.id))
                .limit(BATCH)
            )
            batch: Sequence[tuple[uuid.UUID, int, int]] = found.all()
            for user_id, was, should_be in batch:
                if suspects.get(user_id) != (was, should_be):
                    seen[user_id] = (was, should_be)
                    continue
                result = await db.exec(
                    update(User)
                    .where(col(User.id) == user_id, col(User.used_bytes) == was)
                    .values(used_bytes=should_be)
                )
                await db.commit()
                if result.rowcount == 1:
                    changed += 1
                    logger.warning("usage recounted", user_id=str(user_id), was=was, now=should_be)
        if len(batch) < BATCH:
            suspects.clear()
            suspects.update(seen)
            return changed
        after = batch[-1][0]


async def run_all(
    sessionmaker: SessionMaker,
    storage: Storage,
    events: EventLog,
    settings: Settings,
    send: SendJob,
    now: datetime | None = None,
    usage_suspects: UsageSuspects | None = None,
) -> dict[str, int]:
    """Run every task, logging what each did; one task's failure never stops the others.

    ``usage_suspects`` is what the previous run's recount noticed (see
    :func:`recount_usage`). Returns the counts of the tasks that finished, by name.
    """
    suspects = {} if usage_suspects is None else usage_suspects
    now = now or utcnow()
    tasks: dict[str, Callable[[], Awaitable[int]]] = {
        "purge_trash": lambda: purge_trash(sessionmaker, storage, events, settings, now),
        "expire_tickets": lambda: expire_tickets(sessionmaker, storage, events, settings, now),
        "expire_resumable_uploads": lambda: expire_resumable_uploads(
            sessionmaker, storage, events, settings, now
        ),
        "resend_stuck_jobs": lambda: resend_stuck_jobs(sessionmaker, send, settings, now),
        "advance_pipelines": lambda: advance_pipelines(sessionmaker, send, events, settings, now),
        "prune_events": lambda: prune_events(events),
        # Last: it sees the quota after everything above released bytes.
        "recount_usage": lambda: recount_usage(sessionmaker, suspects),
    }
    if settings.mail_enabled:
        # After the recount, on usage as it is.
        tasks["storage_warnings"] = lambda: notifications.storage_warnings(sessionmaker, now)
    done: dict[str, int] = {}
    for name, task in tasks.items():
        try:
            done[name] = await task()
        except Exception:
            logger.exception("maintenance task failed", task=name)
    logger.info("maintenance finished", **done)
    return done
