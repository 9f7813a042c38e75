"""A worker's long-lived clients, and the steps of a job's life that need them.

A :class:`Runtime` is opened on the event loop that runs the actors (Dramatiq's
event-loop thread), because database and Redis connections belong to one
loop. The lifecycle middleware calls :meth:`claim` before an actor runs and
:meth:`conclude` after; the actor itself only calls :meth:`execute`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import structlog
from redis.asyncio import Redis
from sqlmodel.ext.asyncio.session import AsyncSession

from core import files, jobs
from core.db import create_engine, create_sessionmaker
from core.errors import NotFound
from core.events import EventLog, RedisEventLog
from core.models import File, Job, JobStatus
from core.redis_client import open_redis
from core.settings import Settings
from core.time import utcnow
from storage import Storage, open_storage
from workers.context import JobContext, Resources
from workers.errors import is_transient
from workers.kind import Kind

logger = structlog.get_logger("depot.jobs")

# How long a step is retried while the database or the bus is unreachable.
PUBLISH_PATIENCE_SECONDS = 30.0

T = TypeVar("T")


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


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the lifecycle middleware read it."""

    status: JobStatus  # SUCCEEDED, FAILED or CANCELLED
    error: str | None = None
    # A failure worth another attempt (a service was unavailable).
    transient: bool = False


class Runtime:
    """Clients for one worker: database, storage, event bus; opened on the actors' loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        storage: Storage | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.settings = settings
        self._given_storage = storage
        self._given_events = events
        self._resources: Resources | None = None
        self._close: Callable[[], Awaitable[None]] | None = None
        self._contexts: dict[uuid.UUID, JobContext] = {}
        # Claimed by ``claim``, about to be run by ``execute`` (same thread, in turn).
        self._claimed: dict[uuid.UUID, Job] = {}

    @property
    def resources(self) -> Resources:
        if self._resources is None:
            raise RuntimeError("the job runtime is not open")
        return self._resources

    async def open(self) -> None:
        engine = create_engine(self.settings)
        storage = self._given_storage or open_storage(self.settings.storage_url, links=None)
        redis: Redis | None = None
        events = self._given_events
        if events is None:
            if self.settings.redis_url is None:
                raise RuntimeError("a worker without Redis shares the API's in-memory event bus")
            redis = open_redis(self.settings.redis_url)
            events = RedisEventLog(redis)

        async def close() -> None:
            if self._given_events is None:
                await events.aclose()
            if redis is not None:
                await redis.aclose()
            if self._given_storage is None:
                await storage.aclose()
            await engine.dispose()

        self._close = close
        self._resources = Resources(self.settings, create_sessionmaker(engine), storage, events)

    async def close(self) -> None:
        if self._close is not None:
            self._resources, close, self._close = None, self._close, None
            await close()

    # ----------------------------------------------------------------- steps

    async def publish(self, job: Job) -> None:
        """Announce a status change; retried while the bus is briefly unreachable."""
        try:
            await patiently(
                lambda: jobs.publish_status(
                    self.resources.events,
                    job,
                    retention_seconds=self.settings.job_events_retention_seconds,
                )
            )
        except Exception as exc:  # noqa: BLE001 - the database has the status
            # Subscribers read the final state from the database.
            logger.warning("status event lost", job_id=str(job.id), error=str(exc))

    async def claim(self, job_id: uuid.UUID) -> jobs.Claim:
        """Start the job's next attempt if it may run now; see :func:`core.jobs.claim`."""
        stale_before = utcnow() - timedelta(seconds=self.settings.job_stale_seconds)
        storage = self.resources.storage
        async with self.resources.sessionmaker() as db:
            claimed = await jobs.claim(
                db,
                job_id,
                stale_before=stale_before,
                max_running=self.settings.max_running_jobs_per_user,
            )
            job = claimed.job
            if job is None:
                return claimed.claim
            if claimed.took_over or claimed.claim is jobs.Claim.END:
                # What a dead attempt wrote is partial: it goes before anything else.
                await jobs.remove_outputs(db, storage, job)
            if claimed.claim is jobs.Claim.END:
                assert claimed.status is not None
                ended = await jobs.finish(
                    db, job.id, claimed.status, error=claimed.error, message=claimed.message
                )
                if ended is not None:
                    await self.publish(ended)
                return jobs.Claim.SKIP
        self._claimed[job_id] = job
        await self.publish(job)
        return claimed.claim

    async def execute(self, kind: Kind, job_id: uuid.UUID) -> None:
        """Run the job this worker claimed, with heartbeats; keeps its outputs for ``conclude``."""
        job = self._claimed.pop(job_id, None)
        if job is None:
            return  # not claimed here (the claim failed): nothing to run
        context = JobContext(job, self.resources, input_count=len(kind.inputs(job.params)))
        self._contexts[job_id] = context
        async with context.running():
            await kind.run(context)

    async def conclude(self, job_id: uuid.UUID, outcome: Outcome) -> bool:
        """Record how the attempt ended and announce it; returns whether to send it again.

        A database that is briefly unreachable is waited for (a job left
        running with no worker would wait for maintenance to notice); the
        announcements go out after the record, never undoing it.
        """
        context = self._contexts.pop(job_id, None)
        claimed = self._claimed.pop(job_id, None)
        ran = context.job if context is not None else claimed
        if ran is None:
            return False
        again, changed = await patiently(lambda: self._record(ran, context, outcome))
        if changed is not None:
            if changed.status is JobStatus.SUCCEEDED and context is not None:
                for file in context.outputs:
                    await self._announce(file)
            await self.publish(changed)
        return again

    async def _announce(self, file: File) -> None:
        async def send() -> None:
            await jobs.publish_file(self.resources.events, file, deleted=False)

        try:
            await patiently(send)
        except Exception as exc:  # noqa: BLE001 - the file exists either way
            logger.warning("file event lost", file_id=str(file.id), error=str(exc))

    async def _record(
        self, ran: Job, context: JobContext | None, outcome: Outcome
    ) -> tuple[bool, Job | None]:
        """The database side of ``conclude``: (send again?, the job if its status changed).

        Safe to repeat after a failure midway: a status this attempt already
        recorded is recognised, not undone.
        """
        job_id, attempt = ran.id, ran.attempts
        mine = {f.id for f in context.outputs} if context is not None else set()
        storage = self.resources.storage
        async with self.resources.sessionmaker() as db:
            job = await db.get(Job, job_id, populate_existing=True)
            if job is None:
                return False, None
            if job.attempts == attempt and job.status is not JobStatus.RUNNING:
                if job.status is outcome.status:
                    return False, job  # recorded by an earlier try of this very step
                if job.status is JobStatus.QUEUED and outcome.transient:
                    return True, job
            if job.status is not JobStatus.RUNNING or job.attempts != attempt:
                # Not ours any more (taken over while our heartbeat was stale):
                # keep nothing of this attempt.
                await self._remove(db, job, only=mine)
                return False, None
            if outcome.status is JobStatus.SUCCEEDED:
                ended = await jobs.finish(
                    db, job_id, JobStatus.SUCCEEDED, message="Done.", attempt=attempt
                )
                if ended is None:
                    await self._remove(db, job, only=mine)
                return False, ended
            await jobs.remove_outputs(db, storage, job)
            if outcome.transient and attempt < job.max_attempts:
                requeued = await jobs.requeue(
                    db,
                    job_id,
                    f"Attempt {attempt} met a temporary problem; trying again.",
                    attempt=attempt,
                )
                return requeued is not None, requeued
            message = "Cancelled." if outcome.status is JobStatus.CANCELLED else None
            ended = await jobs.finish(
                db, job_id, outcome.status, error=outcome.error, message=message, attempt=attempt
            )
            return False, ended

    async def _remove(self, db: AsyncSession, job: Job, only: set[uuid.UUID]) -> None:
        for file_id in only:
            with contextlib.suppress(NotFound):
                await files.purge(db, self.resources.storage, job.owner_id, file_id)
