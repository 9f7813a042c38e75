"""The Dramatiq broker, its actors (one per job kind), and sending jobs to them.

With ``DEPOT_REDIS_URL`` the broker is a ``RedisBroker`` and ``depot worker``
processes run the actors. Without it (the embedded mode) a ``StubBroker``
keeps messages in memory and the API process runs them in its own worker
threads (:class:`EmbeddedWorker`), started and stopped by its lifespan.

Each call builds its own broker, so one process may hold several apps (tests).
Actors are ``async def`` and receive only the job id.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import anyio
import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, TimeLimit

from core.models import JobKind
from core.settings import Settings
from workers.errors import JobCancelled, JobFailed
from workers.kind import Kind
from workers.lifecycle import JobLifecycle
from workers.registry import KINDS
from workers.runtime import Runtime

logger = structlog.get_logger("depot.jobs")

QUEUE: Final = "depot-jobs"
# How long an idle worker waits between looks at Redis (Dramatiq polls it):
# the worst-case delay before a new job starts.
POLL_MS: Final = 10
# A worker silent this long in Redis has its unfinished messages handed to others.
REDIS_HEARTBEAT_TIMEOUT_MS: Final = 15_000


def actor_name(kind: JobKind) -> str:
    return f"depot.{kind}"


@dataclass(frozen=True)
class Jobs:
    """A broker with Depot's actors declared on it."""

    broker: dramatiq.Broker
    runtime: Runtime | None

    def send_now(self, job_id: uuid.UUID, kind: JobKind) -> None:
        """Hand a job's message to the broker (blocking on Redis)."""
        self.broker.enqueue(
            dramatiq.Message(
                queue_name=QUEUE,
                actor_name=actor_name(kind),
                args=(str(job_id),),
                kwargs={},
                options={},
            )
        )

    async def send(self, job_id: uuid.UUID, kind: JobKind) -> None:
        """Hand a job's message to the broker without blocking the event loop."""
        await anyio.to_thread.run_sync(self.send_now, job_id, kind)


def _declare(broker: dramatiq.Broker, runtime: Runtime | None) -> None:
    for kind in KINDS.values():

        async def run(job_id: str, kind: Kind = kind) -> None:
            assert runtime is not None, "this broker only sends messages"
            await runtime.execute(kind, uuid.UUID(job_id))

        dramatiq.Actor(
            run,  # type: ignore[arg-type]  # Dramatiq's ParamSpec typing cannot see defaults
            broker=broker,
            actor_name=actor_name(kind.name),
            queue_name=QUEUE,
            priority=0,
            options={
                "time_limit": int(kind.time_limit_seconds * 1000),
                "throws": (JobFailed, JobCancelled),
            },
        )


class _TimeLimit(TimeLimit):
    """Dramatiq's TimeLimit, whose watchdog thread (it never stops) starts once per process.

    Every broker of the process shares this one instance: a process that
    builds several apps (tests) would otherwise gather a thread per app.
    """

    _started = False
    _lock = threading.Lock()

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        with self._lock:
            if not _TimeLimit._started:
                _TimeLimit._started = True
                super().after_process_boot(broker)  # type: ignore[no-untyped-call]


_TIME_LIMIT = _TimeLimit()


def _middleware(runtime: Runtime | None) -> list[dramatiq.Middleware]:
    kinds: Mapping[str, Kind] = {actor_name(k.name): k for k in KINDS.values()}
    middleware: list[dramatiq.Middleware] = [AsyncIO(), _TIME_LIMIT]
    if runtime is not None:
        middleware.append(JobLifecycle(runtime, kinds))
    return middleware


def redis_jobs(settings: Settings, runtime: Runtime | None = None) -> Jobs:
    """Jobs over Redis; with a ``runtime`` this process can also run them (``depot worker``)."""
    assert settings.redis_url is not None
    broker = RedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        middleware=_middleware(runtime),
        heartbeat_timeout=REDIS_HEARTBEAT_TIMEOUT_MS,
    )
    _declare(broker, runtime)
    return Jobs(broker, runtime)


def embedded_jobs(runtime: Runtime) -> Jobs:
    """Jobs kept in this process's memory, for an :class:`EmbeddedWorker` to run."""
    broker = StubBroker(middleware=_middleware(runtime))
    _declare(broker, runtime)
    return Jobs(broker, runtime)


# Dramatiq keeps the actors' event loop in a global: one worker per process.
_started: Worker | None = None
_started_lock = threading.Lock()


class Worker:
    """Dramatiq worker threads running the actors of ``jobs`` in this process."""

    def __init__(self, jobs: Jobs, threads: int) -> None:
        self._jobs = jobs
        self._worker = dramatiq.Worker(
            jobs.broker, queues={QUEUE}, worker_threads=threads, worker_timeout=POLL_MS
        )

    def start(self) -> bool:
        """Start the threads; False when this process already runs a worker."""
        global _started
        with _started_lock:
            if _started is not None:
                return False
            _started = self
        self._jobs.broker.emit_after("process_boot")
        self._worker.start()
        return True

    def stop(self, timeout_ms: int = 30_000) -> None:
        """Let running jobs finish their current step, then stop (and close the runtime)."""
        global _started
        try:
            self._worker.stop(timeout=timeout_ms)
            self._jobs.broker.close()
        finally:
            with _started_lock:
                if _started is self:
                    _started = None
