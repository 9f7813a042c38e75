"""``--metrics-port`` of ``depot worker`` and ``depot scheduler``: their own scrape.

Neither serves HTTP otherwise, so prometheus-client's threaded server answers
on the port (every interface: a Prometheus in the cluster scrapes the pod's
address; keep the port off the public network). What a worker counts — its
attempts, finishes, takeovers, durations, publish failures, pool — is in its
own process, so each worker is scraped and Prometheus adds them up.

The job gauges are read at each scrape, like the API's: the scrape's thread
asks the process's event loop, where its database clients live, and goes on
without them after a moment if the database does not answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from dramatiq.asyncio import get_event_loop_thread

from core import jobs as job_states
from core.db import SessionMaker
from core.metrics import JobCounts, serve_metrics
from workers.broker import Jobs
from workers.lifecycle import JobLifecycle

logger = structlog.get_logger("depot.metrics")

# All interfaces: see the module's docstring.
HOST = "0.0.0.0"  # noqa: S104
# A scrape waits this long for the job counts, then goes on without them.
JOB_COUNTS_TIMEOUT_S = 2.0


def job_counts_on(
    loop: asyncio.AbstractEventLoop, sessionmaker: SessionMaker
) -> Callable[[], JobCounts | None]:
    """Read the job counts on ``loop`` from another thread (None if that fails)."""

    async def count() -> JobCounts:
        async with sessionmaker() as db:
            return await job_states.count_unfinished(db)

    def read() -> JobCounts | None:
        future = asyncio.run_coroutine_threadsafe(count(), loop)
        try:
            return future.result(timeout=JOB_COUNTS_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the other families are worth answering with
            future.cancel()
            logger.warning("job counts unavailable for the metrics", error=str(exc))
            return None

    return read


def serve_worker_metrics(jobs: Jobs, port: int) -> Callable[[], None]:
    """Serve a started worker's metrics on ``port``; returns the function that stops it."""
    thread = get_event_loop_thread()
    [lifecycle] = [m for m in jobs.broker.middleware if isinstance(m, JobLifecycle)]
    if thread is None:
        raise RuntimeError("the worker has not started: its event loop is not running")
    return serve_metrics(port, HOST, job_counts_on(thread.loop, lifecycle.resources.sessionmaker))
