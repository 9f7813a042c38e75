"""Depot's Prometheus metrics: every family in one place, and the scrape.

Each family is a module-level prometheus-client object, as the library
intends: whoever records imports it and calls ``.labels(...).inc()`` (or
``observe``). Every label takes its values from a set the code bounds —
route templates, known methods, error codes, job kinds and statuses —
never from what a client sends (a raw path would put signed tokens in the
labels, and let anyone grow the series without end).

Several processes (``depot serve --workers N``) share one set of numbers
through prometheus-client's multiprocess mode: each process writes its
values to files under ``PROMETHEUS_MULTIPROC_DIR`` (the library picks the
mode from that variable when it is first imported), and :func:`scrape`
adds them up. Gauges of what is alive now (sockets, subscriptions, pool
connections) count only live processes (``livesum``); the supervisor marks
a dead worker's files (``api.multiprocess``).

The job gauges ``depot_jobs_queued`` and ``depot_jobs_running`` are not kept
by anyone: they are read from the database when scraped
(:data:`JobCounts`), because the truth about jobs is there and several
processes on several machines change it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"

# Request latencies: a GraphQL answer is milliseconds, a multipart upload minutes.
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
# Jobs run from under a second (verify a small file) to the hour a kind may take.
_JOB_BUCKETS: Final = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)

# -- HTTP (api.middleware) --------------------------------------------------------

HTTP_REQUESTS: Final = Counter(
    "depot_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION: Final = Histogram(
    "depot_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer.",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
WEBSOCKET_CONNECTIONS: Final = Gauge(
    "depot_websocket_connections",
    "WebSocket connections open now (accepted, not yet closed).",
    multiprocess_mode="livesum",
)
UPLOAD_BYTES: Final = Counter(
    "depot_upload_bytes_total",
    "Bytes of files uploaded and stored, by method (multipart: uploadFile; "
    "direct: completeUpload of a direct-upload ticket; tus: the tus endpoint; "
    "s3-multipart: completeMultipartUpload).",
    ["method"],
)

# -- GraphQL (schema.metrics) ----------------------------------------------------

GRAPHQL_OPERATIONS: Final = Counter(
    "depot_graphql_operations_total",
    "GraphQL operations, by operation name (trusted documents only, else "
    "`anonymous`), type, and outcome (`ok` or the first error's code).",
    ["operation", "type", "outcome"],
)
GRAPHQL_DURATION: Final = Histogram(
    "depot_graphql_operation_duration_seconds",
    "Time a query or mutation took, from parsing to the result (subscriptions "
    "are not timed: their length is the client's choice).",
    ["operation", "type"],
    buckets=_LATENCY_BUCKETS,
)
SUBSCRIPTIONS: Final = Gauge(
    "depot_subscriptions",
    "GraphQL subscriptions running now.",
    multiprocess_mode="livesum",
)

# -- jobs (core.jobs) --------------------------------------------------------------

JOBS_STARTED: Final = Counter(
    "depot_jobs_started_total", "Jobs whose first attempt started, by kind.", ["kind"]
)
JOBS_FINISHED: Final = Counter(
    "depot_jobs_finished_total",
    "Jobs that reached a final status, by kind and status.",
    ["kind", "status"],
)
JOB_DURATION: Final = Histogram(
    "depot_job_duration_seconds",
    "Run time of a job's last attempt, from its start to its final status.",
    ["kind"],
    buckets=_JOB_BUCKETS,
)
JOB_QUEUE_WAIT: Final = Histogram(
    "depot_job_queue_wait_seconds",
    "Time from startJob to the start of the job's first attempt.",
    ["kind"],
    buckets=_JOB_BUCKETS,
)
JOB_ATTEMPTS: Final = Counter(
    "depot_job_attempts_total", "Attempts started, first ones and retries, by kind.", ["kind"]
)
JOB_TAKEOVERS: Final = Counter(
    "depot_job_takeovers_total",
    "Attempts started on a job whose worker had stopped beating (it died), by kind.",
    ["kind"],
)

# -- webhooks (core.webhooks) ------------------------------------------------------

WEBHOOK_ATTEMPTS: Final = Counter(
    "depot_webhook_attempts_total",
    "Webhook delivery attempts, by event and outcome: succeeded, retried (another "
    "attempt follows) or failed (none does).",
    ["event", "outcome"],
)

# -- the rest ----------------------------------------------------------------------

EVENT_PUBLISH_FAILURES: Final = Counter(
    "depot_event_publish_failures_total",
    "Events the bus could not take (logged and lost; subscribers fall back on the "
    "database), by event type.",
    ["type"],
)
DATABASE_CONNECTIONS_IN_USE: Final = Gauge(
    "depot_database_connections_in_use",
    "Database connections checked out of the pool now.",
    multiprocess_mode="livesum",
)

JOBS_QUEUED: Final = "depot_jobs_queued"
JOBS_RUNNING: Final = "depot_jobs_running"

JobCounts = Mapping[tuple[str, str], int]
"""Unfinished jobs by ``(kind, status)``, status ``queued`` or ``running``."""

_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CODE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,39}")


# Label children by their label values: ``labels()`` validates and locks on every
# call; a dict lookup does not. Bounded, as the label values are.
_http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_operation_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


def http_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count and time one HTTP request (``route``: its template; ``method`` as sent)."""
    key = (route, method, status)
    children = _http_children.get(key)
    if children is None:
        labels = (route, method_label(method), str(status))
        children = (HTTP_REQUESTS.labels(*labels), HTTP_DURATION.labels(*labels))
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def graphql_operation(operation: str, kind: str, outcome: str, seconds: float | None) -> None:
    """Count one GraphQL operation, and time it unless ``seconds`` is None."""
    key = (operation, kind, outcome)
    children = _operation_children.get(key)
    if children is None:
        children = (
            GRAPHQL_OPERATIONS.labels(operation, kind, outcome),
            GRAPHQL_DURATION.labels(operation, kind),
        )
        _operation_children[key] = children
    children[0].inc()
    if seconds is not None:
        children[1].observe(seconds)


def method_label(method: str) -> str:
    """An HTTP method as a label: the standard ones as they are, anything else ``OTHER``."""
    return method if method in _METHODS else "OTHER"


def code_label(code: object) -> str:
    """An error code as a label. Codes are Depot's own (``ErrorCodes`` gives every
    error one); this only keeps a malformed one from becoming a series."""
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "OTHER"


def watch_pool(engine: AsyncEngine) -> None:
    """Count ``engine``'s connections in use (``depot_database_connections_in_use``).

    Two pool events per checkout, each a gauge step (a few microseconds);
    a connection invalidated while out is checked in too.
    """
    pool = engine.sync_engine.pool
    event.listen(pool, "checkout", lambda *_: DATABASE_CONNECTIONS_IN_USE.inc())
    event.listen(pool, "checkin", lambda *_: DATABASE_CONNECTIONS_IN_USE.dec())


# -- the scrape ----------------------------------------------------------------------


class _JobGauges:
    """``depot_jobs_queued`` and ``depot_jobs_running`` from counts read at scrape time."""

    def __init__(self, counts: Callable[[], JobCounts | None]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        counts = self._counts()
        if counts is None:
            return  # the database did not answer: say nothing rather than zero
        queued = GaugeMetricFamily(JOBS_QUEUED, "Jobs waiting to start, by kind.", labels=["kind"])
        running = GaugeMetricFamily(JOBS_RUNNING, "Jobs running now, by kind.", labels=["kind"])
        for (kind, status), count in sorted(counts.items()):
            family = queued if status == "queued" else running
            family.add_metric([kind], count)
        yield queued
        yield running


class _Scrapable(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _Sources:
    """What one scrape reads, in order: anything with ``collect``, as a registry."""

    def __init__(self, sources: Iterable[_Scrapable]) -> None:
        self._sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        for source in self._sources:
            yield from source.collect()


# A live gauge's file in the multiprocess directory, named after its process.
_LIVE_GAUGE_FILE: Final = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


# Linux tells a zombie (dead, not yet reaped by its parent) from a live process.
_PROC: Final = os.path.exists("/proc/self/stat")


def _alive(pid: int) -> bool:
    if _PROC:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
                state = stat.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        # A zombie is dead: uvicorn's supervisor may take a while to reap it.
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: alive
    return True


class _AllProcesses:
    """Every process's values from the multiprocess directory.

    First drops the live gauges of processes that died without a word
    (killed, crashed), as ``multiprocess.mark_process_dead`` does for one pid:
    a directory listing and a signal-0 probe per file at each scrape. A
    process that stops cleanly is replaced by uvicorn under a new pid, so the
    dead one's files are found the same way.
    """

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._collector = multiprocess.MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        for name in os.listdir(self._directory):
            match = _LIVE_GAUGE_FILE.fullmatch(name)
            if match is not None and not _alive(int(match[1])):
                with contextlib.suppress(FileNotFoundError):  # another scrape was first
                    os.remove(os.path.join(self._directory, name))
        collected: Iterable[Metric] = self._collector.collect()  # type: ignore[no-untyped-call]
        return collected


def _sources(job_counts: Callable[[], JobCounts | None] | None) -> _Sources:
    # Multiprocess mode, which prometheus-client chose at import from the
    # variable: every process's files; otherwise this process's registry.
    directory = os.environ.get(MULTIPROC_DIR)
    own: _Scrapable = _AllProcesses(directory) if directory else REGISTRY
    extra: list[_Scrapable] = [] if job_counts is None else [_JobGauges(job_counts)]
    return _Sources([own, *extra])


def scrape(job_counts: JobCounts | None = None) -> bytes:
    """The text exposition of every family (all processes' in multiprocess mode),
    plus the job gauges from ``job_counts`` when given."""
    return generate_latest(_sources(None if job_counts is None else lambda: job_counts))


def serve_metrics(
    port: int, host: str, job_counts: Callable[[], JobCounts | None]
) -> Callable[[], None]:
    """Serve :func:`scrape` on ``host:port`` from a thread (``--metrics-port``); returns
    the function that stops it. ``job_counts`` is called at each scrape."""
    server, thread = _start_http_server(port, host, registry=_sources(job_counts))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
