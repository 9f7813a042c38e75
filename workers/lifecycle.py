"""The one Dramatiq middleware that owns a job attempt: its clients, status, timing, errors.

Actors only do their kind's work. Before one runs, :class:`JobLifecycle`
claims the job in the database (a redelivered message for a finished or
running job is skipped; a user at their running-jobs limit waits); the actor
runs the attempt it claimed; afterwards the middleware records how the
attempt ended (an :data:`Outcome`): succeeded, cancelled, failed with a
message, or — for a transient error with attempts left — queued again with a
backoff; cut short by its worker stopping, queued again at once. It opens
the worker's clients (:func:`workers.resources.open_resources`) on the
actors' event loop when the worker boots and closes them when it stops; an
attempt's state lives here, by message id, from claim to record.

Brokers whose workers run jobs are built here too: :func:`worker_jobs`
(``depot worker``, over Redis) and :func:`embedded_jobs` (threads of the API
process, started by the first job sent); they also declare the webhook
actor (:mod:`workers.webhooks`), whose messages this middleware lets pass, and
a ``depot worker`` runs the webhook dispatcher on its actors' loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, ClassVar, Final, TypeVar

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage
from dramatiq.middleware.time_limit import TimeLimitExceeded
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from core import jobs, pipelines, tracing
from core.errors import Conflict, QuotaExceeded
from core.events import FileCreated, JobStatusChanged, announce
from core.models import File, Job, JobStatus
from core.settings import Settings
from core.time import utcnow
from storage.errors import StorageError
from workers import mail
from workers.broker import (
    Jobs,
    Worker,
    actor_name,
    queue_name,
    redis_broker,
    running_middleware,
)
from workers.context import JobContext
from workers.doorbell import DoorbellStubBroker
from workers.errors import JobCancelled, JobFailed, JobInterrupted, is_transient
from workers.kind import Kind
from workers.pipeline import advance, release
from workers.registry import KINDS
from workers.resources import Resources, Shared, open_resources
from workers.scratch import remove_abandoned
from workers.webhooks import ACTOR as WEBHOOK_ACTOR
from workers.webhooks import Dispatcher, deliver

logger = structlog.get_logger("depot.jobs")

T = TypeVar("T")

# A job whose owner is at the running-jobs limit is looked at again after this.
DEFER_MS: Final = 1000
RETRY_MIN_BACKOFF_MS: Final = 1000
RETRY_MAX_BACKOFF_MS: Final = 60_000
# How long a step is retried while the database or the bus is unreachable.
PUBLISH_PATIENCE_SECONDS = 30.0


# ----------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Succeeded:
    """The kind's ``run`` returned."""

    status: ClassVar[JobStatus] = JobStatus.SUCCEEDED


@dataclass(frozen=True)
class Cancelled:
    """The owner cancelled the job and its ``run`` stopped at a progress point."""

    status: ClassVar[JobStatus] = JobStatus.CANCELLED


@dataclass(frozen=True)
class Interrupted:
    """Its worker stopped before the attempt finished: it goes back to the queue at once,
    the attempt not counted (``worker_stop_grace_seconds``)."""

    status: ClassVar[JobStatus] = JobStatus.QUEUED


@dataclass(frozen=True)
class Failed:
    """The attempt cannot succeed; ``error`` is what its owner reads."""

    error: str
    status: ClassVar[JobStatus] = JobStatus.FAILED


@dataclass(frozen=True)
class Unavailable(Failed):
    """A service was unavailable: worth another attempt while attempts are left."""


@dataclass(frozen=True)
class Crashed(Failed):
    """A bug stopped the attempt; the owner reads a generic error, the log has the rest."""

    error: str = "An internal error stopped the job."


Outcome = Succeeded | Cancelled | Interrupted | Failed


def read_outcome(kind: Kind | None, exception: BaseException | None) -> Outcome:
    """What an attempt's exception (or its absence) means for the job."""
    if exception is None:
        return Succeeded()
    if isinstance(exception, JobCancelled):
        return Cancelled()
    if isinstance(exception, JobInterrupted):
        return Interrupted()
    if isinstance(exception, JobFailed):
        return Failed(str(exception))
    if isinstance(exception, TimeLimitExceeded):
        limit = kind.time_limit_seconds if kind is not None else 0
        return Failed(f"The job took longer than {limit:g} s, the limit for its kind.")
    if is_transient(exception):
        return Unavailable(f"A service was unavailable: {type(exception).__name__}.")
    return Crashed()


# ----------------------------------------------------------------- steps


async def patiently(step: Callable[[], Awaitable[T]]) -> T:
    """``step()``, tried again while it fails for a transient reason, for up to
    ``PUBLISH_PATIENCE_SECONDS``."""
    delay, waited = 0.1, 0.0
    while True:
        try:
            return await step()
        except Exception as exc:
            if not is_transient(exc) or waited >= PUBLISH_PATIENCE_SECONDS:
                raise
            logger.warning("retrying after a transient error", error=str(exc))
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)


async def _publish_status(resources: Resources, job: Job) -> None:
    """Announce a status change, patiently while the bus is briefly unreachable.

    Lost for good, it costs nothing worse: subscribers read the final state
    from the database.
    """
    await announce(
        resources.events,
        JobStatusChanged.of(job),
        owner_id=job.owner_id,
        retention_seconds=resources.settings.job_events_retention_seconds,
        patience=PUBLISH_PATIENCE_SECONDS,
    )


async def _publish_file(resources: Resources, file: File) -> None:
    """Announce an output file of a job that succeeded."""
    await announce(
        resources.events,
        FileCreated.of(file),
        owner_id=file.owner_id,
        patience=PUBLISH_PATIENCE_SECONDS,
    )


@dataclass
class _Attempt:
    """One claimed attempt, from the claim to the record of how it ended."""

    job: Job
    # None for an actor this worker does not declare (Dramatiq then fails the message).
    kind: Kind | None
    # The attempt's span, a child of the request that started the job (core.tracing).
    span: Span
    # Its input files, as the claim read them.
    inputs: list[File | None] | None = None
    # Once the actor started it (it holds what the attempt produced).
    context: JobContext | None = None


async def _claim(resources: Resources, job_id: uuid.UUID) -> jobs.Claimed:
    """Start the job's next attempt if it may run now; see :func:`core.jobs.claim`.

    RUN comes with the job and its inputs; anything else is a bare claim.
    """
    settings = resources.settings
    stale_before = utcnow() - timedelta(seconds=settings.job_stale_seconds)
    async with resources.sessionmaker() as db:
        claimed = await jobs.claim(
            db, job_id, stale_before=stale_before, max_running=settings.max_running_jobs_per_user
        )
        job = claimed.job
        if claimed.claim is jobs.Claim.SKIP:
            if job is not None and job.pipeline_id is not None:
                # Its step ended, maybe with its pipeline not told (the worker stopped).
                await _advance(resources, job.pipeline_id)
            return jobs.Claimed(claimed.claim)
        if job is None:
            return jobs.Claimed(claimed.claim)
        if claimed.took_over or claimed.claim is jobs.Claim.END:
            # Kept as claimed: a purge that loses a race with another process
            # removing the same outputs rolls back, which would expire it.
            db.expunge(job)
            for file in claimed.inputs or ():
                if file is not None:
                    db.expunge(file)
            # What a dead attempt wrote is partial: it goes before anything else.
            await jobs.remove_outputs(db, resources.storage, job)
        if claimed.claim is jobs.Claim.END:
            assert claimed.status is not None
            ending = await _finish(
                db,
                job.id,
                claimed.status,
                notify=resources.settings.mail_enabled,
                error=claimed.error,
                message=claimed.message,
            )
            if ending.job is not None:
                await _publish_status(resources, ending.job)
            if job.pipeline_id is not None:
                await _advance(resources, job.pipeline_id, ending.advanced)
            return jobs.Claimed(jobs.Claim.SKIP)
    await _publish_status(resources, job)
    return claimed


async def _execute(resources: Resources, attempt: _Attempt) -> None:
    """Run the claimed attempt's kind, with heartbeats."""
    job, kind = attempt.job, attempt.kind
    assert kind is not None, "only declared actors run"
    context = JobContext(
        job, resources, input_count=len(kind.inputs(job.params)), inputs=attempt.inputs
    )
    attempt.context = context
    with trace.use_span(attempt.span, end_on_exit=False):
        async with context.running():
            await kind.run(context)


async def _conclude(resources: Resources, attempt: _Attempt, outcome: Outcome) -> bool:
    """Record how the attempt ended and announce it; returns whether to send it again.

    A database that is briefly unreachable is waited for (a job left running
    with no worker would wait for maintenance to notice); the announcements
    go out after the record, never undoing it.
    """
    outputs = attempt.context.outputs if attempt.context is not None else []
    file_meta = attempt.context.file_meta if attempt.context is not None else {}
    with trace.use_span(attempt.span, end_on_exit=False):
        recorded = await patiently(
            lambda: _record(resources, attempt.job, outputs, outcome, file_meta)
        )
        changed = recorded.job
        pipeline_id = attempt.job.pipeline_id
        advanced = recorded.advanced
        if not recorded.again and pipeline_id is not None and advanced and advanced.started:
            # The steps this end started go first, so that a worker claims the next one
            # while this one's end is announced (each step's QUEUED still comes before
            # its RUNNING); the pipeline's own news, last, follows this step's.
            await _advance(resources, pipeline_id, replace(advanced, pipeline=None))
            advanced = replace(advanced, started=[])
        if changed is not None:
            if changed.status is JobStatus.SUCCEEDED:
                for file in outputs:
                    await _publish_file(resources, file)
            await _publish_status(resources, changed)
        if not recorded.again and pipeline_id is not None:
            await _advance(resources, pipeline_id, advanced)
    return recorded.again


@dataclass(frozen=True)
class _Ending:
    """What :func:`_finish` did: the job if it ended it, and what its pipeline's advance
    decided in the same transaction (None: the pipeline is still to be advanced)."""

    job: Job | None
    advanced: pipelines.Advanced | None


async def _finish(
    db: AsyncSession,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    notify: bool,
    attempt: int | None = None,
    error: str | None = None,
    message: str | None = None,
    outputs: Sequence[File] = (),
    file_meta: Mapping[uuid.UUID, dict[str, Any]] | None = None,
) -> _Ending:
    """End the job (:func:`core.jobs.finish`) and, a pipeline's step, advance its pipeline
    in the same transaction (:func:`core.pipelines.advance`); commits.

    The worker's one way to end a job. One transaction for both, so that no
    crash ends a step without advancing its pipeline, and a pipeline step
    costs one transaction, not two; the caller releases what the advance
    started (:func:`_advance`) once it has announced the step's end. An
    advance that cannot insert a step's job (``IntegrityError``, rare: see
    :func:`core.pipelines.advance`) is undone, and the step ends alone, its
    pipeline advanced on its own afterwards.
    """

    async def end(commit: bool) -> Job | None:
        return await jobs.finish(
            db,
            job_id,
            status,
            error=error,
            message=message,
            attempt=attempt,
            notify=notify,
            file_meta=file_meta,
            outputs=outputs,
            commit=commit,
        )

    ended = await end(commit=False)
    advanced: pipelines.Advanced | None = pipelines.NOTHING
    if ended is not None and ended.pipeline_id is not None:
        try:
            advanced = await pipelines.advance(db, ended.pipeline_id)
        except IntegrityError:
            await db.rollback()
            return _Ending(await end(commit=True), None)
    await db.commit()
    if ended is not None:
        jobs.count_finished(ended)
    return _Ending(ended, advanced)


@dataclass(frozen=True)
class _Recorded:
    """What :func:`_record` did: whether to send the job again, the job if its status
    changed, and its pipeline's advance when the record made one (see :class:`_Ending`)."""

    again: bool
    job: Job | None
    advanced: pipelines.Advanced | None = None


async def _record(
    resources: Resources,
    ran: Job,
    outputs: list[File],
    outcome: Outcome,
    file_meta: dict[uuid.UUID, dict[str, Any]],
) -> _Recorded:
    """The database side of ``_conclude``.

    A success writes the attempt's output rows and their quota with the
    final status (:func:`_finish`); a full quota or a path taken meanwhile
    fails the job instead. Safe to repeat after a failure midway: a status
    this attempt already recorded is recognised, not undone.
    """
    job_id, attempt = ran.id, ran.attempts
    storage = resources.storage
    # Its notification (before the announcement, so a subscriber that sees the
    # final event finds the row) and what it learnt about files go with the status.
    notify = resources.settings.mail_enabled
    async with resources.sessionmaker() as db:
        if isinstance(outcome, Succeeded):
            # The common case, in one transaction and no read: its conditional UPDATE
            # wins only while this attempt is the job's running one; otherwise the
            # row tells below (recorded by an earlier try, or taken over).
            try:
                ending = await _finish(
                    db,
                    job_id,
                    JobStatus.SUCCEEDED,
                    notify=notify,
                    attempt=attempt,
                    message="Done.",
                    outputs=outputs,
                    file_meta=file_meta,
                )
            except (Conflict, QuotaExceeded) as exc:
                await db.rollback()
                outcome = Failed(exc.message)
            else:
                if ending.job is not None:
                    return _Recorded(False, ending.job, ending.advanced)
        job = await db.get(Job, job_id, populate_existing=True)
        if job is None:
            await _discard(resources, outputs)
            return _Recorded(False, None)
        if job.attempts == attempt and job.status is not JobStatus.RUNNING:
            if job.status is outcome.status:
                return _Recorded(False, job)  # recorded by an earlier try of this very step
            if job.status is JobStatus.QUEUED and isinstance(outcome, Unavailable | Interrupted):
                return _Recorded(True, job)
        if (
            job.status is not JobStatus.RUNNING
            or job.attempts != attempt
            or isinstance(outcome, Succeeded)
        ):
            # Not ours any more (taken over while our heartbeat was stale):
            # keep nothing of this attempt.
            await _discard(resources, outputs)
            return _Recorded(False, None)
        # Whatever this attempt stored, its rows unwritten, goes with the job's prefix.
        await jobs.remove_outputs(db, storage, job)
        if isinstance(outcome, Interrupted):
            requeued = await jobs.requeue(
                db,
                job_id,
                "Its worker stopped; another one takes it over.",
                attempt=attempt,
                refund=True,
            )
            return _Recorded(requeued is not None, requeued)
        if isinstance(outcome, Unavailable) and attempt < job.max_attempts:
            requeued = await jobs.requeue(
                db,
                job_id,
                f"Attempt {attempt} met a temporary problem; trying again.",
                attempt=attempt,
            )
            return _Recorded(requeued is not None, requeued)
        ending = await _finish(
            db,
            job_id,
            outcome.status,
            notify=notify,
            attempt=attempt,
            error=outcome.error if isinstance(outcome, Failed) else None,
            message="Cancelled." if isinstance(outcome, Cancelled) else None,
            file_meta=file_meta,
        )
        return _Recorded(False, ending.job, ending.advanced)


async def _advance(
    resources: Resources, pipeline_id: uuid.UUID, advanced: pipelines.Advanced | None = None
) -> None:
    """Tell a step's pipeline that the step ended: release what the step's finishing
    transaction decided (:func:`workers.pipeline.release`), or, with nothing decided,
    advance it on its own (:func:`workers.pipeline.advance`).

    Patient with a briefly unreachable database; if it still fails, the
    pipeline waits for maintenance, which advances quiet pipelines (and
    sends queued jobs whose message was lost).
    """
    sessions, send, events, settings = (
        resources.sessionmaker,
        resources.jobs.send,
        resources.events,
        resources.settings,
    )
    try:
        if advanced is not None:
            await release(sessions, send, events, settings, advanced)
        else:
            await patiently(lambda: advance(sessions, send, events, settings, pipeline_id))
    except Exception:
        logger.exception("pipeline not advanced", pipeline_id=str(pipeline_id))


async def _discard(resources: Resources, outputs: list[File]) -> None:
    """Delete the bytes of outputs whose rows were never written (an attempt that lost)."""
    for file in outputs:
        try:
            await resources.storage.delete(file.storage_key)
        except StorageError as exc:  # unnamed bytes only cost space
            logger.warning("output not deleted", key=file.storage_key, error=str(exc))


# ----------------------------------------------------------------- the middleware


def _run(coro: Awaitable[T]) -> T:
    thread = get_event_loop_thread()
    if thread is None:
        raise RuntimeError("the AsyncIO middleware must come before JobLifecycle")
    return thread.run_coroutine(coro)


def job_id_of(message: dramatiq.Message[Any] | dramatiq.MessageProxy) -> uuid.UUID:
    return uuid.UUID(str(message.args[0]))


class JobLifecycle(Middleware):
    """Claims jobs before their actor runs and records how each attempt ended.

    ``shared``: the clients of this process that the worker's loop uses
    instead of opening its own (see :class:`workers.resources.Shared`).
    """

    def __init__(
        self, settings: Settings, shared: Shared | None = None, *, dispatch: bool = False
    ) -> None:
        self._settings = settings
        self._shared = shared or Shared()
        # Whether this worker also hands due webhook deliveries to the broker
        # (``depot worker``; embedded, the API process does).
        self._dispatch = dispatch
        self._dispatcher: Dispatcher | None = None
        # By actor name.
        self._kinds: dict[str, Kind] = {actor_name(k.name): k for k in KINDS.values()}
        self._clients = contextlib.AsyncExitStack()
        self._resources: Resources | None = None
        # By message id: claimed in ``before_process_message``, run by the
        # actor, recorded in ``after_process_message`` (one worker thread, in turn).
        self._attempts: dict[str, _Attempt] = {}
        # Interrupts what still runs once the grace after a stop is up.
        self._grace: threading.Timer | None = None

    @property
    def actor_options(self) -> set[str]:
        return {"throws"}

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def resources(self) -> Resources:
        if self._resources is None:
            raise RuntimeError("the worker has not booted: its clients are not open")
        return self._resources

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Before the worker threads start taking messages (a backlog waits at
        # boot); the AsyncIO middleware, listed first, has started the loop.
        if removed := remove_abandoned():
            logger.info("removed scratch directories of dead workers", count=removed)
        shared = self._shared
        if shared.jobs is None:
            shared = replace(shared, jobs=Jobs(broker, queue_name(self._settings.redis_prefix)))
        self._resources = _run(
            self._clients.enter_async_context(open_resources(self._settings, shared=shared))
        )
        if self._dispatch:
            self._dispatcher = Dispatcher(self._resources)
            _run(_started(self._dispatcher))

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # No new message starts now; running attempts get the grace period, then stop
        # at their next progress point and go back to the queue.
        self._grace = threading.Timer(self._settings.worker_stop_grace_seconds, self._interrupt)
        self._grace.daemon = True
        self._grace.start()

    def _interrupt(self) -> None:
        for attempt in self._attempts.copy().values():  # copied atomically; threads add
            if attempt.context is not None:
                logger.info("job interrupted: its worker is stopping", job_id=str(attempt.job.id))
                attempt.context.interrupt()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Worker threads have finished their messages; ``after_*`` hooks run in
        # reverse order, so this comes before the AsyncIO middleware stops the loop.
        if self._grace is not None:
            self._grace.cancel()
        if self._dispatcher is not None:
            _run(self._dispatcher.stop())
        self._resources = None
        _run(self._clients.aclose())

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        kind = self._kinds.get(message.actor_name)
        if kind is None and message.actor_name in broker.actors:
            # Not a job: another actor of this worker (a webhook delivery, a mail),
            # which keeps its own state.
            return
        job_id = job_id_of(message)
        try:
            claimed = _run(_claim(self.resources, job_id))
        except Exception as exc:
            if not is_transient(exc):
                logger.exception("job claim failed", job_id=str(job_id))
                raise SkipMessage() from exc
            logger.warning("job claim failed; trying later", job_id=str(job_id), error=str(exc))
            claimed = jobs.Claimed(jobs.Claim.DEFER)
        job = claimed.job
        if claimed.claim is jobs.Claim.DEFER:
            broker.enqueue(message.copy(), delay=DEFER_MS)
        if claimed.claim is not jobs.Claim.RUN or job is None:
            raise SkipMessage()
        span = tracing.start_attempt_span(
            f"job {job.kind}",
            job.traceparent,
            {
                "depot.job.id": str(job.id),
                "depot.job.kind": job.kind,
                "depot.job.attempt": job.attempts,
            },
        )
        self._attempts[message.message_id] = _Attempt(job, kind, span, claimed.inputs)

    def run_current(self) -> None:
        """The actors' body: run the attempt claimed for the message this thread handles."""
        message = CurrentMessage.get_current_message()
        attempt = self._attempts.get(message.message_id) if message is not None else None
        if attempt is None:
            return  # not claimed here: nothing to run
        _run(_execute(self.resources, attempt))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        attempt = self._attempts.pop(message.message_id, None)
        if attempt is None:
            return
        outcome = read_outcome(attempt.kind, exception)
        if isinstance(outcome, Crashed):
            with trace.use_span(attempt.span, end_on_exit=False):
                logger.error(
                    "job failed unexpectedly", job_id=str(attempt.job.id), exc_info=exception
                )
        try:
            again = _run(_conclude(self.resources, attempt, outcome))
        finally:
            attempt.span.set_attribute("depot.job.outcome", type(outcome).__name__.lower())
            if isinstance(outcome, Failed):
                attempt.span.set_status(Status(StatusCode.ERROR, outcome.error))
            attempt.span.end()
        if not again:
            return
        if isinstance(outcome, Interrupted):
            broker.enqueue(message.copy())  # for another worker, now
        else:
            tries = int(message.options.get("depot_attempt", 0)) + 1
            _, backoff = compute_backoff(
                tries, factor=RETRY_MIN_BACKOFF_MS, max_backoff=RETRY_MAX_BACKOFF_MS
            )
            retry = message.copy(options={**message.options, "depot_attempt": tries})
            broker.enqueue(retry, delay=backoff)


async def _started(dispatcher: Dispatcher) -> None:
    dispatcher.start()


def _declare_actors(broker: dramatiq.Broker, queue: str, lifecycle: JobLifecycle) -> None:
    def run(job_id: str) -> None:
        lifecycle.run_current()

    def run_delivery(delivery_id: str) -> None:
        _run(deliver(lifecycle.resources, uuid.UUID(delivery_id)))

    timeout = lifecycle.settings.webhook_timeout_seconds
    dramatiq.Actor(
        run_delivery,
        broker=broker,
        actor_name=WEBHOOK_ACTOR,
        queue_name=queue,
        priority=0,
        options={"time_limit": int((timeout * 2 + 30) * 1000)},
    )

    for kind in KINDS.values():
        dramatiq.Actor(
            run,
            broker=broker,
            actor_name=actor_name(kind.name),
            queue_name=queue,
            priority=0,
            options={
                "time_limit": int(kind.time_limit_seconds * 1000),
                # Expected ends: Dramatiq logs them in one line, not as an error
                # with a traceback (whose rendering, locals and all, took seconds
                # of a stopping worker's time when a job was handed back).
                "throws": (JobFailed, JobCancelled, JobInterrupted),
            },
        )


def worker_jobs(settings: Settings) -> Jobs:
    """Jobs over Redis that this process runs too, in a :class:`Worker` (``depot worker``)."""
    lifecycle = JobLifecycle(settings, dispatch=True)
    broker = redis_broker(settings, [*running_middleware(), lifecycle])
    queue = queue_name(settings.redis_prefix)
    _declare_actors(broker, queue, lifecycle)
    mail.declare_actors(broker, queue, lambda: lifecycle.resources)
    return Jobs(broker, queue)


def embedded_jobs(settings: Settings, shared: Shared) -> Jobs:
    """Jobs kept in this process's memory and run by its own worker threads, which
    start with the first job sent; their loop uses the in-memory clients ``shared``."""
    lifecycle = JobLifecycle(settings, shared)
    broker = DoorbellStubBroker(middleware=[*running_middleware(), lifecycle])
    queue = queue_name(settings.redis_prefix)
    _declare_actors(broker, queue, lifecycle)
    mail.declare_actors(broker, queue, lambda: lifecycle.resources)
    return Jobs(broker, queue, worker=Worker(broker, queue, settings.worker_threads))
