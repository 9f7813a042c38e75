"""The Dramatiq broker: its names in Redis, sending jobs, and the worker threads.

With ``DEPOT_REDIS_URL`` the broker is a ``RedisBroker`` and ``depot worker``
processes run the actors. Without it (the embedded mode) a ``StubBroker``
keeps messages in memory and the API process runs them in its own
:class:`Worker` threads, started when the first job is sent.

A :class:`Jobs` is the handle the rest of Depot sends jobs through; the
brokers whose workers run jobs (with :class:`workers.lifecycle.JobLifecycle`)
are built in :mod:`workers.lifecycle`. Each call builds its own broker, so
one process may hold several apps (tests). Actors receive only the job id.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any, Final

import anyio
import dramatiq
import structlog
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, CurrentMessage, TimeLimit

from core.models import JobKind
from core.settings import Settings
from workers.doorbell import DoorbellRedisBroker, DoorbellStubBroker

logger = structlog.get_logger("depot.jobs")

# How often a worker's consumer looks at Redis while it holds messages (an idle one
# waits on its doorbell instead: workers.doorbell), and its threads at their queue.
POLL_MS: Final = 10
# A worker silent this long in Redis has its unfinished messages handed to others.
REDIS_HEARTBEAT_TIMEOUT_MS: Final = 15_000


def queue_name(prefix: str) -> str:
    """The Dramatiq queue of an installation whose Redis names start with ``prefix``.

    ``depot-jobs`` for the default prefix, the name every release so far used.
    """
    return f"{prefix}-jobs"


def actor_name(kind: JobKind) -> str:
    return f"depot.{kind}"


class Jobs:
    """How this process hands jobs on: a broker and the queue its workers read.

    With a ``worker`` (the embedded mode), the first job sent starts its
    threads, so an app that never runs a job never pays for them.
    """

    def __init__(
        self, broker: dramatiq.Broker, queue: str, *, worker: Worker | None = None
    ) -> None:
        self.broker = broker
        self.queue = queue
        self._worker = worker
        broker.declare_queue(queue)

    def send_now(self, job_id: uuid.UUID, kind: JobKind) -> None:
        """Hand a job's message to the broker (blocking on Redis, or while threads start)."""
        self._enqueue(actor_name(kind), str(job_id))

    async def send(self, job_id: uuid.UUID, kind: JobKind) -> None:
        """Hand a job's message to the broker without blocking the event loop."""
        await anyio.to_thread.run_sync(self.send_now, job_id, kind)

    async def send_to(self, actor: str, *args: Any, delay_ms: int | None = None) -> None:
        """Hand a message to another actor of the same queue (a webhook delivery, a mail:
        :mod:`workers.mail`); its worker runs it ``delay_ms`` later."""
        await anyio.to_thread.run_sync(lambda: self._enqueue(actor, *args, delay_ms=delay_ms))

    def _enqueue(self, actor: str, *args: Any, delay_ms: int | None = None) -> None:
        if self._worker is not None:
            self._worker.start()
        self.broker.enqueue(
            dramatiq.Message(
                queue_name=self.queue, actor_name=actor, args=args, kwargs={}, options={}
            ),
            delay=delay_ms,
        )

    async def aclose(self) -> None:
        """Stop the embedded worker's threads if they started (their jobs have the
        grace period to finish, then go back to the queue), and close the broker."""
        if self._worker is not None:
            await anyio.to_thread.run_sync(self._worker.stop)
        else:
            self.broker.close()


def redis_broker(
    settings: Settings, middleware: Sequence[dramatiq.Middleware] = ()
) -> DoorbellRedisBroker:
    """A broker over ``DEPOT_REDIS_URL``; without ``middleware`` it only sends (and
    rings the doorbell of the queue it sends to)."""
    assert settings.redis_url is not None
    return DoorbellRedisBroker(
        url=settings.redis_url,
        middleware=list(middleware),
        heartbeat_timeout=REDIS_HEARTBEAT_TIMEOUT_MS,
    )


def sender(settings: Settings) -> Jobs:
    """Jobs for a process that sends but never runs them: over Redis, or into a
    memory queue nobody reads (a scheduler or CLI command without Redis)."""
    broker = redis_broker(settings) if settings.redis_url else StubBroker(middleware=[])
    return Jobs(broker, queue_name(settings.redis_prefix))


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


def running_middleware() -> list[dramatiq.Middleware]:
    """What a broker whose workers run actors needs before Depot's own middleware:
    the actors' event loop, time limits, and the message each worker thread runs."""
    return [AsyncIO(), _TIME_LIMIT, CurrentMessage()]


# Dramatiq keeps the actors' event loop in a global: one worker per process.
_started: Worker | None = None
_started_lock = threading.Lock()


class Worker:
    """Dramatiq worker threads running the actors of ``broker`` in this process."""

    def __init__(self, broker: dramatiq.Broker, queue: str, threads: int) -> None:
        self._broker = broker
        self._worker = dramatiq.Worker(
            broker, queues={queue}, worker_threads=threads, worker_timeout=POLL_MS
        )
        self._lock = threading.Lock()
        self._state: bool | None = None  # started (True), refused (False), not tried

    def start(self) -> bool:
        """Start the threads unless they run already; False when another worker
        of this process runs instead (Dramatiq allows one)."""
        global _started
        with self._lock:
            if self._state is not None:
                return self._state
            with _started_lock:
                self._state = _started is None
                if self._state:
                    _started = self
            if not self._state:
                logger.warning(
                    "another app in this process runs the embedded worker; jobs wait here"
                )
                return False
            self._broker.emit_after("process_boot")
            self._worker.start()
            return True

    def stop(self, timeout_ms: int = 30_000) -> None:
        """Let running jobs finish (those still running after the grace period are
        interrupted, see :class:`workers.lifecycle.JobLifecycle`), then stop, and
        close the broker."""
        global _started
        with self._lock:
            try:
                if self._state:
                    if isinstance(self._broker, DoorbellRedisBroker | DoorbellStubBroker):
                        self._broker.stop_waiting()
                    self._worker.stop(timeout=timeout_ms)
                self._broker.close()
            finally:
                self._state = False
                with _started_lock:
                    if _started is self:
                        _started = None
