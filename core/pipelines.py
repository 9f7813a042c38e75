"""Pipelines: jobs of jobs, and the one orchestrator that decides which step runs next.

A pipeline is a :class:`~core.models.Job` of kind ``pipeline`` whose
``params`` hold its checked steps (``{"steps": [...]}``, see :class:`Step`)
and whose inputs are the files its steps call ``:input``. A step that runs is
an ordinary job of its kind, with ``pipeline_id`` and ``step`` set: claimed,
run, cancelled and retried like any other, and its events go to the
pipeline's stream as well as its own (:mod:`core.events`).

Nothing but a step's job is stored per step; a step without a job is
*pending*, or *skipped* once a step it uses ended without succeeding or its
pipeline was asked to stop. :func:`advance` is called whenever a step's job
ends (by the worker that recorded it, on a redelivered message for a finished
step, by maintenance for a pipeline that has been quiet, after a cancel or a
retry): it starts every pending step whose inputs are ready and ends the
pipeline once every step is final. Both are guarded in the database, so that
any number of calls, on any number of processes, start each step once and end
the pipeline once: a step's job is inserted under the unique index
``(pipeline_id, step)`` (a second insert fails and is rolled back), and the
pipeline ends through one conditional UPDATE on ``status = running``.
"""

from __future__ import annotations

import enum
import fnmatch
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from sqlalchemy import bindparam, func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import jobs, metrics, webhooks
from core.errors import Conflict
from core.eventlog import EventLog
from core.events import JobProgressed, JobStatusChanged, announce
from core.models import PIPELINE, File, Job, JobInput, JobStatus
from core.time import utcnow
from core.tracing import trace_id_of

INPUT: Final = ":input"
"""What a step's ``use`` calls the pipeline's own files."""

MAX_STEP_INPUTS: Final = 2000
"""The most files a pipeline's steps read in all: a pipeline whose counts are known
before it runs (its own files) is refused past it (``workers.pipeline.check_steps``),
and a step that would read more at run time fails.

It bounds what ``job { steps { job { inputs } } }`` loads, so that the cost
limit (``schema.limits``) can count a step's inputs as this share of the
steps, not as an archive's 1,000 each: a pipeline's natural view fits it.
"""


@dataclass(frozen=True)
class Step:
    """One checked step, as a pipeline's ``params`` (and a template) keep it.

    ``params`` are its kind's stored parameters without the files, which the
    step's ``use`` supplies under the key ``files`` (a list when ``many``).
    ``passes``: the kind makes no files, so steps using this one read what it
    read. ``accept``: only the used files whose content type matches it.
    """

    name: str
    kind: str
    params: dict[str, Any]
    use: list[str]
    files: str
    many: bool
    passes: bool = False
    accept: str | None = None
    weight: float = 1.0
    max_attempts: int = 3

    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Step:
        return cls(**data)


def upload_key(file_id: uuid.UUID) -> str:
    """The idempotency key of the pipeline an upload started (``File.processing``): a
    retried completion finds the pipeline the first one started instead of a second."""
    return f"depot:upload:{file_id}"


# -- process on upload ------------------------------------------------------------------
#
# An upload that names a pipeline (``uploadFile``, ``createUpload``, tus,
# ``createMultipartUpload``) gets it in the transaction that makes its file,
# so no crash leaves a file without its processing: the pipeline is queued
# with the file as its input and ``upload_key`` as its key, and whatever
# advances it next (the request, once committed; maintenance, should the
# request die first) starts its steps. An upload that takes more than one
# request creates its pipeline with the upload instead (``awaiting_upload``,
# no input), so that one id and one stream cover the bytes arriving too
# (:func:`upload_progress`); nothing advances it until the file is attached
# (:func:`attach_file`), and an upload that ends without a file ends it
# (:func:`end_awaiting`), in the same transaction either way.


def awaiting(owner_id: uuid.UUID, steps: Sequence[Step], *, traceparent: str | None) -> Job:
    """A new pipeline (for the caller to add) that waits for an upload's file."""
    return Job(
        owner_id=owner_id,
        kind=PIPELINE,
        params={"steps": [step.to_data() for step in steps]},
        max_attempts=1,
        traceparent=traceparent,
        awaiting_upload=True,
        message="Waiting for the upload.",
    )


async def attach_file(db: AsyncSession, pipeline_id: uuid.UUID, file: File) -> None:
    """Make the completed upload's ``file`` the input of the pipeline that waited for it.

    Not committed: the caller commits it with the file's row. ``file`` must be
    flushed (the input row's foreign key). A pipeline cancelled meanwhile
    still becomes the file's ``processing``; it ran nothing and runs nothing.
    """
    result = await db.exec(
        update(Job)
        .where(col(Job.id) == pipeline_id, col(Job.awaiting_upload))
        .values(
            awaiting_upload=False,
            idempotency_key=upload_key(file.id),
            message=None,
            updated_at=utcnow(),
        )
    )
    if result.rowcount == 1:
        db.add(JobInput(job_id=pipeline_id, position=0, file_id=file.id))


async def start_for_file(
    db: AsyncSession, file: File, steps: Sequence[Step], *, traceparent: str | None
) -> Job:
    """A queued pipeline on the just-made (flushed) ``file``, in the caller's transaction."""
    job = awaiting(file.owner_id, steps, traceparent=traceparent)
    db.add(job)
    await db.flush()  # the job row first: JobInput's foreign key needs it
    await attach_file(db, job.id, file)
    return job


async def of_file(db: AsyncSession, file: File) -> Job | None:
    """The pipeline ``file``'s upload started (its ``File.processing``), if any."""
    found = await db.exec(
        select(Job).where(
            col(Job.owner_id) == file.owner_id, col(Job.idempotency_key) == upload_key(file.id)
        )
    )
    return found.first()


async def end_awaiting(
    db: AsyncSession, pipeline_id: uuid.UUID | None, status: JobStatus, reason: str
) -> Job | None:
    """End the pipeline of an upload that ended without a file: ``CANCELLED`` (the owner
    ended the upload) or ``FAILED`` (it expired, or its bytes were refused), with
    ``reason``. Not committed: it ends with the upload. None if it was not waiting."""
    if pipeline_id is None:
        return None
    now = utcnow()
    said: dict[str, Any] = (
        {"message": reason, "cancel_requested_at": now}
        if status is JobStatus.CANCELLED
        else {"error": reason, "message": None}
    )
    result = await db.exec(
        update(Job)
        .where(
            col(Job.id) == pipeline_id,
            col(Job.awaiting_upload),
            col(Job.status) == JobStatus.QUEUED,
        )
        .values(status=status, awaiting_upload=False, finished_at=now, updated_at=now, **said)
        .returning(Job)
    )
    job = result.scalars().first()
    if job is not None:
        await webhooks.queue_job_finished(db, job)
    return job


@dataclass(frozen=True)
class News:
    """Where to tell, once committed, of the pipelines an upload's end ended: the event
    log, and how long a finished job's stream is kept (``DEPOT_JOB_EVENTS_RETENTION_SECONDS``)."""

    events: EventLog
    retention_seconds: int

    async def ended(self, job: Job | None) -> None:
        if job is None:
            return
        metrics.JOBS_FINISHED.labels(PIPELINE, job.status.value).inc()
        await announce(
            self.events,
            JobStatusChanged.of(job),
            owner_id=job.owner_id,
            retention_seconds=self.retention_seconds,
        )


def upload_progress(pipeline: Job, received: int, total: int) -> JobProgressed:
    """The event of an upload's bytes received so far, on its pipeline's stream.

    The pipeline's own state is as it is (queued, no progress): a step's
    progress is the pipeline's, the bytes are the upload's.
    """
    return JobProgressed(
        job_id=pipeline.id,
        status=pipeline.status,
        progress=pipeline.progress,
        message=pipeline.message,
        at=utcnow(),
        trace_id=trace_id_of(pipeline.traceparent),
        upload_received=received,
        upload_total=total,
    )


def steps_of(pipeline: Job) -> list[Step]:
    """A pipeline's steps, in an order where each comes after the steps it uses."""
    return [Step.from_data(data) for data in pipeline.params.get("steps", [])]


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self not in (StepStatus.PENDING, StepStatus.QUEUED, StepStatus.RUNNING)


_ENDED_BADLY: Final = (StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED)


@dataclass(frozen=True)
class StepState:
    """A step now: its job if it has one, and its status."""

    step: Step
    job: Job | None
    status: StepStatus

    @property
    def progress(self) -> float:
        if self.status is StepStatus.SUCCEEDED:
            return 1.0
        return self.job.progress if self.job is not None else 0.0


def states(pipeline: Job, children: Sequence[Job]) -> list[StepState]:
    """Every step's state, from its pipeline and the jobs its steps started."""
    by_step = {job.step: job for job in children}
    status: dict[str, StepStatus] = {}
    found = []
    for step in steps_of(pipeline):
        job = by_step.get(step.name)
        if job is not None:
            status[step.name] = StepStatus(job.status.value)
        elif (
            pipeline.cancel_requested_at is not None
            or pipeline.status.is_final
            or any(status.get(used) in _ENDED_BADLY for used in step.use)
        ):
            status[step.name] = StepStatus.SKIPPED
        else:
            status[step.name] = StepStatus.PENDING
        found.append(StepState(step, job, status[step.name]))
    return found


def progress_of(found: Sequence[StepState]) -> float:
    """The pipeline's progress: its steps' progress weighted by their kinds' weights."""
    total = sum(state.step.weight for state in found)
    if not total:
        return 0.0
    return sum(state.step.weight * state.progress for state in found) / total


async def children_of(db: AsyncSession, pipeline_ids: Sequence[uuid.UUID]) -> list[Job]:
    """The jobs the steps of these pipelines started (one query for any number of them)."""
    found = await db.exec(
        select(Job)
        .where(col(Job.pipeline_id).in_(pipeline_ids))
        .execution_options(populate_existing=True)
    )
    return list(found.all())


@dataclass(frozen=True)
class Advanced:
    """What one :func:`advance` changed: the steps' jobs it made (queued ones to send),
    and the pipeline when its progress or status changed."""

    started: list[Job]
    pipeline: Job | None


NOTHING: Final = Advanced([], None)
"""What an :func:`advance` that changed nothing returns."""

# Built once, as the claim's statements are. FOR NO KEY UPDATE on PostgreSQL: two
# advances of one pipeline take turns, and a step's job inserted meanwhile (its
# foreign key's KEY SHARE lock) is not held up. SQLite has no row locks and needs
# none: its writers take turns, and the step's end that advances is a write first.
_LOCKED: Final = (
    select(Job)
    .where(col(Job.id) == bindparam("pipeline_id"))
    .with_for_update(key_share=True)
    .execution_options(populate_existing=True)
)


async def advance(db: AsyncSession, pipeline_id: uuid.UUID) -> Advanced:
    """Start the steps whose inputs are ready, and end the pipeline when all steps are final.

    Not committed: the caller commits it, with the end of the step that made
    it due when there is one (a worker finishing a step), so that no crash
    between the two leaves a pipeline that a step's end did not advance.
    Concurrent calls take turns on the pipeline's row (see :data:`_LOCKED`):
    the later one reads what the earlier one committed, so two branches that
    end at the same moment start what follows them once. ``IntegrityError``
    when a step's job could not be inserted all the same (a step started by
    an advance that read before this one wrote, on SQLite; an input file
    purged meanwhile): the caller rolls back and calls again.
    """
    pipeline = (await db.exec(_LOCKED, params={"pipeline_id": pipeline_id})).first()
    if pipeline is None or pipeline.kind != PIPELINE or pipeline.status.is_final:
        return NOTHING
    if pipeline.awaiting_upload and pipeline.cancel_requested_at is None:
        return NOTHING  # its file is not there yet
    if pipeline.status is JobStatus.QUEUED:
        now = utcnow()
        running = await db.exec(
            update(Job)
            .where(col(Job.id) == pipeline.id, col(Job.status) == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, started_at=now, updated_at=now)
            .returning(Job)
            .execution_options(populate_existing=True)
        )
        pipeline = running.scalars().first()
        if pipeline is None:
            # Started meanwhile by an advance that read it before this one (SQLite has
            # no row lock to wait on): this transaction now reads what that one did.
            return await advance(db, pipeline_id)
    children, read = await _children_reading(db, pipeline.id)
    return await _start_ready(db, pipeline, children, _Reads(read))


async def start(db: AsyncSession, pipeline: Job, inputs: Sequence[File]) -> Advanced:
    """The first advance of a pipeline inserted running in this transaction
    (``jobs.create_job(..., start=True)``), whose files ``inputs`` it has read.

    Not committed: the caller commits the pipeline, its first steps and their
    inputs at once, so a start is one transaction. No other transaction can
    see the pipeline yet: nothing to lock, no step's job to read, no file it
    does not know.
    """
    return await _start_ready(db, pipeline, [], _Reads(0, list(inputs)))


async def _children_reading(db: AsyncSession, pipeline_id: uuid.UUID) -> tuple[list[Job], int]:
    """The jobs the pipeline's steps started, and how many files they read in all: one
    query, read after the pipeline's lock (a statement of its own, so it sees what the
    advance that held the lock before committed)."""
    reading = (
        select(func.count())
        .select_from(JobInput)
        .where(col(JobInput.job_id) == col(Job.id))
        .scalar_subquery()
    )
    found = await db.exec(
        select(Job, reading)
        .where(col(Job.pipeline_id) == pipeline_id)
        .execution_options(populate_existing=True)
    )
    rows = found.all()
    return [job for job, _ in rows], sum(int(count) for _, count in rows)


@dataclass
class _Reads:
    """What one advance knows of its pipeline's files: how many its steps ``read`` in
    all and its own ``inputs`` (None until a step needs them), kept up to date as steps
    start."""

    read: int
    inputs: list[File] | None = None


async def _start_ready(
    db: AsyncSession, pipeline: Job, children: list[Job], reads: _Reads
) -> Advanced:
    """Start every pending step whose inputs are ready, then update the pipeline."""
    found = states(pipeline, children)
    done = {state.step.name: state for state in found}
    started: list[Job] = []
    for state in found:
        ready = all(
            used == INPUT or done[used].status is StepStatus.SUCCEEDED for used in state.step.use
        )
        if state.status is StepStatus.PENDING and ready:
            started.append(await _start_step(db, pipeline, state.step, done, reads))
    if started:
        # A step that failed at once skips what uses it: nothing it made is ready, so
        # nothing more starts, and the pipeline may end now. The steps' jobs are those
        # read under the lock and those just inserted: no need to read them again.
        found = states(pipeline, [*children, *started])
    return Advanced(started, await _update(db, pipeline, found))


async def _update(db: AsyncSession, pipeline: Job, found: list[StepState]) -> Job | None:
    """The pipeline's new progress, or its end once every step is final (not committed);
    None if unchanged."""
    progress = progress_of(found)
    now = utcnow()
    values: dict[str, Any] = {"progress": progress, "updated_at": now}
    if all(state.status.is_final for state in found):
        failed = [state for state in found if state.status is StepStatus.FAILED]
        if failed:
            first = failed[0]
            error = first.job.error if first.job is not None else None
            values.update(
                status=JobStatus.FAILED,
                error=f"Step {first.step.name!r} failed: {error or 'no reason given'}"[:2000],
            )
        elif all(state.status is StepStatus.SUCCEEDED for state in found):
            values.update(status=JobStatus.SUCCEEDED, message="Done.", progress=1.0)
        else:
            values.update(status=JobStatus.CANCELLED, message="Cancelled.")
        values["finished_at"] = now
    elif abs(progress - pipeline.progress) < 1e-9:
        return None
    result = await db.exec(
        update(Job)
        .where(col(Job.id) == pipeline.id, col(Job.status) == JobStatus.RUNNING)
        .values(**values)
        .returning(Job)
        .execution_options(populate_existing=True)
    )
    changed = result.scalars().first()
    if changed is not None and changed.status.is_final:
        # In the same transaction, as any job's end: its webhooks commit with it.
        await webhooks.queue_job_finished(db, changed)
    return changed


async def _start_step(
    db: AsyncSession, pipeline: Job, step: Step, done: dict[str, StepState], reads: _Reads
) -> Job:
    """Insert the step's job (not committed), reading what its ``use`` made."""
    found = await _used_files(db, pipeline, step, done, reads)
    if step.accept is not None:
        found = [file for file in found if fnmatch.fnmatch(file.content_type, step.accept)]
    now = utcnow()
    error = None
    if not found:
        error = f"Step {step.name!r} had no file to read: its `use` made none it accepts."
    elif not step.many and len(found) != 1:
        error = (
            f"Step {step.name!r} reads one file, and its `use` made {len(found)}; "
            "give it `accept` or a `use` that makes one."
        )
    elif reads.read + len(found) > MAX_STEP_INPUTS:
        error = (
            f"Step {step.name!r} would read {len(found)} files; a pipeline's steps read "
            f"at most {MAX_STEP_INPUTS} in all."
        )
    else:
        reads.read += len(found)
    ids = [file.id for file in found]
    params = step.params
    if error is None:
        params = {**params, step.files: [str(i) for i in ids] if step.many else str(ids[0])}
    job = Job(
        owner_id=pipeline.owner_id,
        kind=step.kind,
        params=params,
        max_attempts=step.max_attempts,
        traceparent=pipeline.traceparent,
        pipeline_id=pipeline.id,
        step=step.name,
        sent_at=now,
    )
    if error is not None:
        job.status, job.error, job.finished_at = JobStatus.FAILED, error, now
    db.add(job)
    # The job row first: JobInput's foreign key needs it. The unique index
    # (pipeline_id, step) refuses a second job for the step (IntegrityError).
    await db.flush()
    if error is None:
        db.add_all(
            JobInput(job_id=job.id, position=i, file_id=file_id) for i, file_id in enumerate(ids)
        )
        await db.flush()
    return job


async def _used_files(
    db: AsyncSession, pipeline: Job, step: Step, done: dict[str, StepState], reads: _Reads
) -> list[File]:
    """The files ``step`` reads: what each step of its ``use`` made, in order, once each."""
    seen: dict[uuid.UUID, File] = {}
    for used in step.use:
        if used == INPUT:
            if reads.inputs is None:
                reads.inputs = await _inputs(db, pipeline.id)
            found = reads.inputs
        else:
            source = done[used]
            assert source.job is not None, "a used step has succeeded, so it has a job"
            if source.step.passes:
                found = await _inputs(db, source.job.id)
            else:
                made = await db.exec(
                    select(File)
                    .where(
                        col(File.produced_by_job_id) == source.job.id,
                        col(File.trashed_at).is_(None),
                    )
                    .order_by(col(File.created_at), col(File.path))
                )
                found = list(made.all())
        for file in found:
            seen.setdefault(file.id, file)
    return list(seen.values())


async def _inputs(db: AsyncSession, job_id: uuid.UUID) -> list[File]:
    found = await db.exec(
        select(File)
        .join(JobInput, col(JobInput.file_id) == col(File.id))
        .where(col(JobInput.job_id) == job_id)
        .order_by(col(JobInput.position))
    )
    return list(found.all())


async def cancel(db: AsyncSession, owner_id: uuid.UUID, pipeline: Job) -> list[Job]:
    """Ask a running pipeline to stop; commits. Returns the steps' jobs cancelled now.

    Pending steps will never start (they are skipped); queued ones are
    cancelled at once, running ones at their next progress point. The caller
    then calls :func:`advance`, which ends the pipeline once all are final.
    """
    if pipeline.status is JobStatus.CANCELLED:
        return []
    if pipeline.status.is_final:
        raise Conflict(f"The job already {pipeline.status.value}; there is nothing to cancel.")
    now = utcnow()
    await db.exec(
        update(Job)
        .where(col(Job.id) == pipeline.id, col(Job.cancel_requested_at).is_(None))
        .values(cancel_requested_at=now, updated_at=now)
    )
    await db.commit()
    cancelled = []
    for child in await children_of(db, [pipeline.id]):
        if child.status.is_final:
            continue
        try:
            job, now_cancelled = await jobs.cancel_job(db, owner_id, child.id)
        except Conflict:
            continue  # it ended meanwhile
        if now_cancelled:
            cancelled.append(job)
    return cancelled


async def retry(
    db: AsyncSession,
    owner_id: uuid.UUID,
    pipeline: Job,
    *,
    traceparent: str | None = None,
    check_file: Callable[[Job, File], None] | None = None,
) -> tuple[Job, list[Job]]:
    """Run a failed or cancelled pipeline's failed and cancelled steps again; commits.

    What succeeded is kept, outputs included; skipped steps become pending
    again. The steps' jobs go back to the queue before the pipeline runs
    again, so no :func:`advance` meanwhile can end it on their old status.
    ``check_file(step's job, input)`` looks at each input of each step to run
    again, all before any is queued (it raises ``BadUserInput``), as a job's
    retry does. Returns the pipeline and the steps' jobs queued again (to send).
    """
    if pipeline.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise Conflict(
            f"Only a failed or cancelled job can be retried; this one is {pipeline.status}."
        )
    if not await _inputs(db, pipeline.id):
        raise Conflict("This pipeline's upload ended without a file: upload it again.")
    by_name = {step.name: step for step in steps_of(pipeline)}
    again = [
        child
        for child in await children_of(db, [pipeline.id])
        if child.status in (JobStatus.FAILED, JobStatus.CANCELLED)
    ]
    if check_file is not None:
        # Every step's inputs before any step is queued: one refused retries none.
        for child in again:
            for file in await jobs.job_inputs(db, child.id):
                if file is not None:  # a purged input: retry_job refuses it
                    check_file(child, file)
    retried = []
    for child in again:
        step = by_name.get(child.step or "")
        attempts = step.max_attempts if step is not None else 1
        retried.append(
            await jobs.retry_job(
                db, owner_id, child.id, max_attempts=attempts, traceparent=traceparent
            )
        )
    retraced: dict[str, Any] = {"traceparent": traceparent} if traceparent else {}
    result = await db.exec(
        update(Job)
        .where(col(Job.id) == pipeline.id, col(Job.status) == pipeline.status)
        .values(
            status=JobStatus.RUNNING,
            cancel_requested_at=None,
            finished_at=None,
            error=None,
            message=None,
            updated_at=utcnow(),
            **retraced,
        )
    )
    await db.commit()
    if result.rowcount != 1:
        raise Conflict("The job changed meanwhile; look at it again.")
    return await jobs.get_owned_job(db, owner_id, pipeline.id), retried


async def quiet(db: AsyncSession, *, before: Any) -> list[uuid.UUID]:
    """Unfinished pipelines unchanged since ``before``: maintenance advances them, in case
    the process that ended one of their steps stopped before it could."""
    found = await db.exec(
        select(col(Job.id)).where(
            col(Job.kind) == PIPELINE,
            col(Job.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            col(Job.updated_at) < before,
            # Its upload ends it, or makes it ready, in that change's transaction.
            col(Job.awaiting_upload).is_(False),
        )
    )
    return list(found.all())
