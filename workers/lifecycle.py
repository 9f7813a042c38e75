"""The one Dramatiq middleware that owns a job's status, attempts, timing and errors.

Actors only do their kind's work. Before one runs, this middleware claims the
job in the database (a redelivered message for a finished or running job is
skipped; a user at their running-jobs limit waits); after it ran, it records
how the attempt ended: succeeded, cancelled, failed with a message, or — for
a transient error with attempts left — queued again with a backoff.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, Final, TypeVar

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.common import compute_backoff
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.middleware.time_limit import TimeLimitExceeded

from core.jobs import Claim
from core.models import JobStatus
from workers.errors import JobCancelled, JobFailed, is_transient
from workers.kind import Kind
from workers.runtime import Outcome, Runtime

logger = structlog.get_logger("depot.jobs")

T = TypeVar("T")

# A job whose owner is at the running-jobs limit is looked at again after this.
DEFER_MS: Final = 1000
RETRY_MIN_BACKOFF_MS: Final = 1000
RETRY_MAX_BACKOFF_MS: Final = 60_000


def _run(coro: Awaitable[T]) -> T:
    thread = get_event_loop_thread()
    if thread is None:
        raise RuntimeError("the AsyncIO middleware must come before JobLifecycle")
    return thread.run_coroutine(coro)


def job_id_of(message: dramatiq.Message[Any] | dramatiq.MessageProxy) -> uuid.UUID:
    return uuid.UUID(str(message.args[0]))


def read_outcome(kind: Kind | None, exception: BaseException | None) -> Outcome:
    """What an attempt's exception (or its absence) means for the job."""
    if exception is None:
        return Outcome(JobStatus.SUCCEEDED)
    if isinstance(exception, JobCancelled):
        return Outcome(JobStatus.CANCELLED)
    if isinstance(exception, JobFailed):
        return Outcome(JobStatus.FAILED, error=str(exception))
    if isinstance(exception, TimeLimitExceeded):
        limit = kind.time_limit_seconds if kind is not None else 0
        return Outcome(
            JobStatus.FAILED,
            error=f"The job took longer than {limit:g} s, the limit for its kind.",
        )
    if is_transient(exception):
        return Outcome(
            JobStatus.FAILED,
            error=f"A service was unavailable: {type(exception).__name__}.",
            transient=True,
        )
    return Outcome(JobStatus.FAILED, error="An internal error stopped the job.")


class JobLifecycle(Middleware):
    """Claims jobs before their actor runs and records how each attempt ended."""

    def __init__(self, runtime: Runtime, kinds: Mapping[str, Kind]) -> None:
        self.runtime = runtime
        # By actor name.
        self.kinds = kinds

    @property
    def actor_options(self) -> set[str]:
        return {"throws"}

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Before the worker threads start taking messages (a backlog waits at
        # boot); the AsyncIO middleware, listed first, has started the loop.
        _run(self.runtime.open())

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Worker threads have finished their messages; ``after_*`` hooks run in
        # reverse order, so this comes before the AsyncIO middleware stops the loop.
        _run(self.runtime.close())

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        job_id = job_id_of(message)
        try:
            claim = _run(self.runtime.claim(job_id))
        except Exception as exc:
            if not is_transient(exc):
                logger.exception("job claim failed", job_id=str(job_id))
                raise SkipMessage() from exc
            logger.warning("job claim failed; trying later", job_id=str(job_id), error=str(exc))
            claim = Claim.DEFER
        if claim is Claim.DEFER:
            broker.enqueue(message.copy(), delay=DEFER_MS)
        if claim is not Claim.RUN:
            raise SkipMessage()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        job_id = job_id_of(message)
        kind = self.kinds.get(message.actor_name)
        outcome = read_outcome(kind, exception)
        if outcome.error == "An internal error stopped the job.":
            logger.error("job failed unexpectedly", job_id=str(job_id), exc_info=exception)
        again = _run(self.runtime.conclude(job_id, outcome))
        if again:
            attempt = int(message.options.get("depot_attempt", 0)) + 1
            _, backoff = compute_backoff(
                attempt, factor=RETRY_MIN_BACKOFF_MS, max_backoff=RETRY_MAX_BACKOFF_MS
            )
            retry = message.copy(options={**message.options, "depot_attempt": attempt})
            broker.enqueue(retry, delay=backoff)
