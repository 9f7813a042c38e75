"""A job's life in the database, which is the truth about it.

``queued → running → succeeded | failed | cancelled``. Every change is one
conditional UPDATE on the state it was decided from, so two workers handed
the same message (Dramatiq delivers at least once), a worker and a
``cancelJob``, or maintenance and a late worker cannot both win: each job
reaches exactly one final status. The broker and the event log are transport;
whoever changes a job announces the change after committing it
(:func:`core.events.announce`).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import structlog
from sqlalchemy import func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import files, metrics, notifications, quota, webhooks
from core.errors import BadUserInput, Conflict, NotFound
from core.models import FINAL_STATUSES, PIPELINE, File, Job, JobInput, JobKind, JobStatus
from core.time import utcnow
from storage.base import Storage
from storage.errors import StorageError

logger = structlog.get_logger("depot.jobs")

MAX_IDEMPOTENCY_KEY: Final = 255


def _not_found() -> NotFound:
    return NotFound("No such job.")


# ----------------------------------------------------------------- the API side


async def get_owned_job(db: AsyncSession, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """``owner_id``'s job, or ``NOT_FOUND`` (for another user's job too)."""
    job = await db.get(Job, job_id, populate_existing=True)
    if job is None or job.owner_id != owner_id:
        raise _not_found()
    return job


async def _by_key(db: AsyncSession, owner_id: uuid.UUID, key: str) -> Job | None:
    found = await db.exec(
        select(Job).where(col(Job.owner_id) == owner_id, col(Job.idempotency_key) == key)
    )
    return found.first()


async def _check_input(
    db: AsyncSession,
    owner_id: uuid.UUID,
    file_id: uuid.UUID,
    check_file: Callable[[File], None] | None,
) -> None:
    """An input as a job starts (or starts again): the owner's, live, and what the kind
    reads (``check_file`` raises ``BadUserInput``)."""
    file = await files.get_owned_file(db, owner_id, file_id)
    if file.trashed_at is not None:
        raise Conflict(f"The file {file.path!r} is in the trash; restore it first.")
    if check_file is not None:
        check_file(file)


async def create_job(
    db: AsyncSession,
    owner_id: uuid.UUID,
    kind: JobKind,
    params: dict[str, Any],
    input_ids: Sequence[uuid.UUID],
    *,
    max_attempts: int,
    idempotency_key: str | None = None,
    traceparent: str | None = None,
    check_file: Callable[[File], None] | None = None,
    start: bool = False,
    commit: bool = True,
) -> tuple[Job, bool]:
    """Record a queued job reading the owner's live files ``input_ids``; commits.

    Returns ``(job, created)``: with an idempotency key already used by the
    owner, the job it named and ``False``. An input that is missing, someone
    else's or in the trash is ``NOT_FOUND`` / ``CONFLICT``. ``traceparent``:
    the trace of the request starting it, which its attempts continue.
    ``check_file``: the kind's look at each input (it raises ``BadUserInput``).
    ``start``: the job is running from its insert (a pipeline, which has no
    message: its first steps start in the same transaction). With
    ``commit=False`` the caller commits (a pipeline's start, with its first
    steps); the rows are flushed, and an idempotency key that lost its race
    has rolled back what the transaction held, as with ``commit=True``.
    """
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise BadUserInput(
                f"An idempotency key has 1 to {MAX_IDEMPOTENCY_KEY} characters.",
                field="idempotencyKey",
            )
        existing = await _by_key(db, owner_id, idempotency_key)
        if existing is not None:
            return existing, False
    for file_id in input_ids:
        await _check_input(db, owner_id, file_id, check_file)
    now = utcnow()
    job = Job(
        owner_id=owner_id,
        kind=kind,
        params=params,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
        traceparent=traceparent,
        # The caller sends it next (and says so if that fails: ``mark_sent``).
        sent_at=now,
    )
    if start:
        job.status, job.started_at = JobStatus.RUNNING, now
    db.add(job)
    try:
        # The job row first: JobInput's foreign key needs it (no relationship() orders them).
        await db.flush()
        db.add_all(
            JobInput(job_id=job.id, position=i, file_id=file_id)
            for i, file_id in enumerate(input_ids)
        )
        if commit:
            await db.commit()
        else:
            await db.flush()
    except IntegrityError:
        # Another request with the same key won the race: answer with its job.
        await db.rollback()
        if idempotency_key is not None:
            existing = await _by_key(db, owner_id, idempotency_key)
            if existing is not None:
                return existing, False
        raise
    return job, True


async def mark_sent(db: AsyncSession, job_ids: Sequence[uuid.UUID], *, sent: bool = True) -> None:
    """Remember that the broker has (or, with ``sent=False``, lacks) these jobs' messages."""
    await db.exec(
        update(Job).where(col(Job.id).in_(job_ids)).values(sent_at=utcnow() if sent else None)
    )
    await db.commit()


async def cancel_job(db: AsyncSession, owner_id: uuid.UUID, job_id: uuid.UUID) -> tuple[Job, bool]:
    """Cancel a job; commits. Returns ``(job, now_cancelled)``.

    A queued job is cancelled at once and never starts. A running one is asked
    to stop: its worker cancels it at its next progress point. Cancelling a
    cancelled job changes nothing; a job that succeeded or failed is
    ``CONFLICT``.
    """
    job = await get_owned_job(db, owner_id, job_id)
    now = utcnow()
    if job.status is JobStatus.QUEUED:
        result = await db.exec(
            update(Job)
            .where(col(Job.id) == job.id, col(Job.status) == JobStatus.QUEUED)
            .values(
                status=JobStatus.CANCELLED,
                cancel_requested_at=now,
                finished_at=now,
                updated_at=now,
                message="Cancelled before it started.",
            )
            .returning(Job)
        )
        cancelled_now = result.scalars().first()
        if cancelled_now is not None:
            await webhooks.queue_job_finished(db, cancelled_now)
        await db.commit()
        if cancelled_now is not None:
            cancelled = await get_owned_job(db, owner_id, job_id)
            count_finished(cancelled)
            return cancelled, True
        # It started meanwhile: ask its worker instead.
        job = await get_owned_job(db, owner_id, job_id)
    if job.status is JobStatus.RUNNING:
        await db.exec(
            update(Job)
            .where(col(Job.id) == job.id, col(Job.cancel_requested_at).is_(None))
            .values(cancel_requested_at=now)
        )
        await db.commit()
        return await get_owned_job(db, owner_id, job_id), False
    if job.status is JobStatus.CANCELLED:
        return job, False
    raise Conflict(f"The job already {job.status.value}; there is nothing to cancel.")


async def retry_job(
    db: AsyncSession,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    *,
    max_attempts: int,
    traceparent: str | None = None,
    check_file: Callable[[File], None] | None = None,
) -> Job:
    """Queue a failed or cancelled job again as a new attempt; commits.

    ``CONFLICT`` for a job that is queued, running or succeeded. Its next
    attempts continue the retrying request's trace, when it has one. Its
    inputs are checked again as :func:`create_job` checks them (``check_file``
    included): the limits may have changed since, or the file (one query per
    input, as at start).
    """
    retraced: dict[str, Any] = {"traceparent": traceparent} if traceparent else {}
    job = await get_owned_job(db, owner_id, job_id)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise Conflict(f"Only a failed or cancelled job can be retried; this one is {job.status}.")
    inputs = await db.exec(
        select(JobInput.file_id)
        .where(col(JobInput.job_id) == job.id)
        .order_by(col(JobInput.position))
    )
    for file_id in inputs.all():
        await _check_input(db, owner_id, file_id, check_file)
    result = await db.exec(
        update(Job)
        .where(col(Job.id) == job.id, col(Job.status) == job.status)
        .values(
            status=JobStatus.QUEUED,
            progress=0.0,
            message=None,
            error=None,
            cancel_requested_at=None,
            finished_at=None,
            heartbeat_at=None,
            sent_at=None,
            max_attempts=col(Job.attempts) + max_attempts,
            updated_at=utcnow(),
            **retraced,
        )
    )
    await db.commit()
    if result.rowcount != 1:
        raise Conflict("The job changed meanwhile; look at it again.")
    return await get_owned_job(db, owner_id, job_id)


# ----------------------------------------------------------------- the worker side


class Claim(enum.Enum):
    RUN = "run"  # this attempt is ours to run
    SKIP = "skip"  # nothing to do: finished, running elsewhere, or gone
    DEFER = "defer"  # the owner has too many jobs running: try later
    END = "end"  # its worker died and it may not run again: end it (outputs first)


@dataclass(frozen=True)
class Claimed:
    """What :func:`claim` decided, with the job when there is one to act on."""

    claim: Claim
    job: Job | None = None
    # RUN: the job's input files in order, read in the claim's transaction
    # (None where the file is gone): the attempt needs no transaction of its own to find them.
    inputs: list[File | None] | None = None
    # RUN: the job was running under a worker that died (its outputs are partial).
    took_over: bool = False
    # END: how it ends.
    status: JobStatus | None = None
    error: str | None = None
    message: str | None = None


def _started(now: datetime) -> dict[str, Any]:
    return {
        "status": JobStatus.RUNNING,
        "attempts": col(Job.attempts) + 1,
        "progress": 0.0,
        "message": None,
        "started_at": now,
        "heartbeat_at": now,
        "updated_at": now,
    }


# Built once: an alias made per claim cost about a tenth of a worker's CPU.
_OTHER: Final = aliased(Job, name="other")


def _running_of_owner(stale_before: datetime, owner_id: Any, besides: Any) -> Any:
    other = _OTHER
    return (
        select(func.count())
        .select_from(other)
        .where(
            col(other.owner_id) == owner_id,
            col(other.status) == JobStatus.RUNNING,
            col(other.id) != besides,
            col(other.heartbeat_at) >= stale_before,
        )
        .scalar_subquery()
    )


async def claim(
    db: AsyncSession, job_id: uuid.UUID, *, stale_before: datetime, max_running: int
) -> Claimed:
    """Decide what a delivered message for ``job_id`` means, and start the job if it may.

    A queued job starts (one statement, the common case) unless its owner
    already runs ``max_running`` jobs. A running job silent since before
    ``stale_before`` lost its worker: it starts again as its next attempt
    (``took_over``), or, when its attempts are used up or its owner asked to
    cancel it, must end (``END``) — the caller removes the dead attempt's
    outputs first, then calls :func:`finish`.
    """
    now = utcnow()
    started = await db.exec(
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == JobStatus.QUEUED,
            _running_of_owner(stale_before, Job.owner_id, Job.id) < max_running,
        )
        .values(**_started(now))
        .returning(Job)
    )
    job = started.scalars().first()
    if job is not None:
        inputs = await job_inputs(db, job.id)
        await db.commit()
        _count_attempt(job, took_over=False)
        return Claimed(Claim.RUN, job, inputs=inputs)
    await db.commit()
    job = await db.get(Job, job_id, populate_existing=True)
    if job is None or job.status in FINAL_STATUSES:
        # With the finished job: a redelivered step's message still advances its pipeline.
        return Claimed(Claim.SKIP, job)
    if job.status is JobStatus.QUEUED:
        return Claimed(Claim.DEFER)  # the owner is at the limit
    if job.heartbeat_at is not None and job.heartbeat_at >= stale_before:
        return Claimed(Claim.SKIP)  # running, alive, elsewhere
    if job.cancel_requested_at is not None:
        return Claimed(Claim.END, job, status=JobStatus.CANCELLED, message="Cancelled.")
    if job.attempts >= job.max_attempts:
        return Claimed(
            Claim.END,
            job,
            status=JobStatus.FAILED,
            error=f"Its worker stopped responding during attempt {job.attempts} of "
            f"{job.max_attempts}; no attempts are left.",
        )
    taken = await db.exec(
        update(Job)
        .where(
            col(Job.id) == job.id,
            col(Job.status) == JobStatus.RUNNING,
            col(Job.updated_at) == job.updated_at,
            _running_of_owner(stale_before, job.owner_id, job.id) < max_running,
        )
        .values(**_started(now))
        .returning(Job)
    )
    job = taken.scalars().first()
    if job is None:
        await db.commit()
        # Someone else decided first, or the owner is at the limit: look again later.
        return Claimed(Claim.DEFER)
    inputs = await job_inputs(db, job.id)
    await db.commit()
    _count_attempt(job, took_over=True)
    return Claimed(Claim.RUN, job, took_over=True, inputs=inputs)


async def job_inputs(db: AsyncSession, job_id: uuid.UUID) -> list[File | None]:
    """The job's input files in the order it was given them, None for one since purged."""
    found = await db.exec(
        select(JobInput.file_id, File)
        .join(File, col(File.id) == col(JobInput.file_id), isouter=True)
        .where(col(JobInput.job_id) == job_id)
        .order_by(col(JobInput.position))
    )
    return [file for _, file in found.all()]


def _count_attempt(job: Job, *, took_over: bool) -> None:
    """An attempt started (committed): attempts, takeovers, and a first start's wait."""
    kind = job.kind
    metrics.JOB_ATTEMPTS.labels(kind).inc()
    if took_over:
        metrics.JOB_TAKEOVERS.labels(kind).inc()
    if job.attempts == 1 and job.started_at is not None:
        metrics.JOBS_STARTED.labels(kind).inc()
        waited = (job.started_at - job.created_at).total_seconds()
        metrics.JOB_QUEUE_WAIT.labels(kind).observe(max(waited, 0.0))


def count_finished(job: Job) -> None:
    """A final status committed: every one is written by ``finish`` or ``cancel_job``,
    so counting in those two (or after the commit of ``finish(commit=False)``) misses
    none and counts none twice."""
    metrics.JOBS_FINISHED.labels(job.kind, job.status.value).inc()
    if job.started_at is not None and job.finished_at is not None:
        ran = (job.finished_at - job.started_at).total_seconds()
        metrics.JOB_DURATION.labels(job.kind).observe(max(ran, 0.0))


async def beat(db: AsyncSession, job_id: uuid.UUID, progress: float, message: str | None) -> bool:
    """Record that a running job is alive, with its progress; commits.

    Returns whether its owner asked to cancel it (or it is no longer ours).
    """
    now = utcnow()
    result = await db.exec(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.status) == JobStatus.RUNNING)
        .values(heartbeat_at=now, progress=progress, message=message, updated_at=now)
        .returning(col(Job.cancel_requested_at))
    )
    row = result.first()
    await db.commit()
    return row is None or row[0] is not None


async def finish(
    db: AsyncSession,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    error: str | None = None,
    message: str | None = None,
    attempt: int | None = None,
    notify: bool = False,
    file_meta: Mapping[uuid.UUID, dict[str, Any]] | None = None,
    outputs: Sequence[File] = (),
    commit: bool = True,
) -> Job | None:
    """End a running job with ``status``; commits (with ``commit=False`` the caller does,
    then calls :func:`count_finished`: a step's end commits with its pipeline's advance).

    None if it was not running (or, given ``attempt``, runs another attempt:
    a worker whose heartbeat went stale was taken over). In the same
    transaction, only if it ends the job: its webhooks, with ``notify`` the
    owner's notification (:func:`core.notifications.job_ended`), the
    metadata the attempt learnt about files (``file_meta``, by file id; see
    :meth:`workers.context.JobContext.set_meta`), and the rows of the
    ``outputs`` it stored (:func:`core.uploads.stage_output`) with the quota
    their bytes take: one transaction per finish. ``QUOTA_EXCEEDED`` or
    ``CONFLICT`` (a path another file took meanwhile) with nothing written;
    the caller rolls back and ends the job otherwise.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "updated_at": now,
        "error": error,
    }
    if message is not None:
        values["message"] = message
    if status is JobStatus.SUCCEEDED:
        values["progress"] = 1.0
    conditions = [col(Job.id) == job_id, col(Job.status) == JobStatus.RUNNING]
    if attempt is not None:
        conditions.append(col(Job.attempts) == attempt)
    # With whether its owner has webhooks: most have none, and then they cost no SELECT.
    result = await db.exec(
        update(Job)
        .where(*conditions)
        .values(**values)
        .returning(Job, webhooks.any_enabled(Job.owner_id))
    )
    job, hooked = result.one_or_none() or (None, False)
    if job is not None:
        # In the same transaction: the final status, its outputs, its webhooks
        # and its notification commit together.
        if outputs:
            await _keep_outputs(db, job.owner_id, outputs)
        for file_id, meta in (file_meta or {}).items():
            await files.set_meta(db, file_id, meta)
        await webhooks.queue_job_finished(db, job, any_enabled=bool(hooked))
        if notify:
            await notifications.job_ended(db, job)
    if commit:
        await db.commit()
        if job is not None:
            count_finished(job)
    return job


async def _keep_outputs(db: AsyncSession, owner_id: uuid.UUID, outputs: Sequence[File]) -> None:
    """Insert an attempt's output rows and reserve their bytes (not committed).

    One conditional UPDATE for the quota and one INSERT per row, in the
    finishing transaction, so a worker killed before it commits leaks no
    reserved bytes. A path taken meanwhile fails the unique index: ``CONFLICT``
    naming it (the job's early checks make that a rare race).
    """
    await quota.reserve(db, owner_id, sum(file.size for file in outputs), commit=False)
    paths = [file.path for file in outputs]
    db.add_all(outputs)
    try:
        await db.flush()
    except IntegrityError:
        await db.rollback()
        taken = await files.first_taken_path(db, owner_id, paths)
        raise files.path_taken(taken or paths[0]) from None


async def requeue(
    db: AsyncSession, job_id: uuid.UUID, message: str, *, attempt: int, refund: bool = False
) -> Job | None:
    """Put attempt ``attempt`` of a running job back in the queue (a transient error); commits.

    ``refund``: the attempt does not count against the job's attempts (its
    worker stopped, through no fault of the job's).
    """
    now = utcnow()
    refunded: dict[str, Any] = {"attempts": col(Job.attempts) - 1} if refund else {}
    result = await db.exec(
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == JobStatus.RUNNING,
            col(Job.attempts) == attempt,
        )
        .values(
            status=JobStatus.QUEUED,
            message=message,
            heartbeat_at=None,
            sent_at=now,
            updated_at=now,
            **refunded,
        )
        .returning(Job)
    )
    job = result.scalars().first()
    await db.commit()
    return job


async def remove_outputs(
    db: AsyncSession, storage: Storage, job: Job, keep: Sequence[uuid.UUID] = ()
) -> list[File]:
    """Delete the files ``job`` produced, bytes and quota too; commits.

    Without ``keep``, also whatever a dead attempt left under the job's
    storage prefix that no row names (a half-written object, a temp file).
    """
    # Read before any purge: one that finds its file gone (another process removing
    # the same dead attempt's outputs) rolls back, which expires every loaded row.
    job_id, owner_id = job.id, job.owner_id
    found = await db.exec(select(col(File.id)).where(col(File.produced_by_job_id) == job_id))
    removed = []
    for file_id in found.all():
        if file_id in keep:
            continue
        try:
            removed.append(await files.purge(db, storage, owner_id, file_id))
        except NotFound:
            continue  # removed meanwhile
    if not keep:
        try:
            await storage.delete_prefix(files.output_prefix(owner_id, job_id))
        except StorageError as exc:
            # Unnamed bytes only cost space; the job's rows are right either way.
            logger.warning("job leftovers not deleted", job_id=str(job_id), error=str(exc))
    return removed


async def due_for_sending(
    db: AsyncSession, *, resend_before: datetime, stale_before: datetime
) -> list[tuple[uuid.UUID, JobKind]]:
    """Jobs whose message looks lost: queued and not sent since ``resend_before``,
    or running without a heartbeat since ``stale_before`` (their worker died)."""
    found = await db.exec(
        select(col(Job.id), col(Job.kind)).where(
            # A pipeline has no message of its own: maintenance advances it instead.
            col(Job.kind) != PIPELINE,
            or_(
                (col(Job.status) == JobStatus.QUEUED)
                & or_(col(Job.sent_at).is_(None), col(Job.sent_at) < resend_before),
                (col(Job.status) == JobStatus.RUNNING)
                & or_(col(Job.heartbeat_at).is_(None), col(Job.heartbeat_at) < stale_before),
            ),
        )
    )
    return [(job_id, kind) for job_id, kind in found.all()]


async def count_unfinished(db: AsyncSession) -> dict[tuple[str, str], int]:
    """Queued and running jobs by ``(kind, status)``, for the metrics' job gauges.

    One grouped ``SELECT`` that the ``(status, updated_at)`` index narrows to
    the unfinished rows, however many finished jobs the table holds.
    """
    found = await db.exec(
        select(col(Job.kind), col(Job.status), func.count())
        .where(col(Job.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .group_by(col(Job.kind), col(Job.status))
    )
    return {(str(kind), status.value): count for kind, status, count in found.all()}


async def orphan_running(db: AsyncSession) -> None:
    """Mark every running job as silent: the embedded mode's only worker just started."""
    await db.exec(update(Job).where(col(Job.status) == JobStatus.RUNNING).values(heartbeat_at=None))
    await db.commit()
