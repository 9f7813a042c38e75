"""Jobs end to end: first-event latency, throughput against bare Dramatiq, subscription memory.

Real processes: ``depot serve`` (uvicorn) on a free port and one ``depot
worker``, both on Redis, on PostgreSQL (a throwaway database created on the
server of ``--database-url`` or ``DEPOT_TEST_POSTGRES_URL``) or else a SQLite
file, with local storage, in a temporary directory. A signed-in client then
measures

1. the **first-event latency**: ``startJob`` (``verify`` of a 16-byte file)
   returns, the client subscribes to ``jobEvents`` over graphql-transport-ws,
   and the time until the first ``next`` message (the RUNNING event the worker
   publishes when it claims the job), one job after the other;
2. the **throughput** of such jobs through the whole path (mutation, worker,
   final event at a ``myEvents`` subscriber), against the baseline measured in
   the same run on the same Redis: a bare Dramatiq actor that only counts its
   messages (an ``INCR``), run by a worker process with as many threads;
3. the **memory per idle subscription**: ``depot serve``'s resident memory
   before and after opening ``jobEvents`` subscriptions to jobs that stay
   queued (the worker is stopped), spread over a few WebSockets and then one
   WebSocket each.

Run from the repository root:
``.venv/bin/python -m bench.jobs [--redis-url redis://host:6379/9]``.
The Redis database must be one no other Depot or Dramatiq process uses.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final, cast

import dramatiq
import httpx
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.uploads import free_port, rss_bytes
from core.events import KEY_PREFIX
from core.jobs import user_stream
from core.settings import Settings
from schema.ids import decode_id
from workers.broker import POLL_MS, QUEUE

KIB: Final = 1024
MIB: Final = 1024 * KIB
# The benchmark accounts' own throwaway credentials.
PASSWORD: Final = "benchmark passphrase 7f3a9c"  # noqa: S105
CSRF: Final = {"x-depot-csrf": "1"}
PROTOCOL: Final = [Subprotocol("graphql-transport-ws")]
TINY_FILE: Final = b"depot bench file"
WARMUP_JOBS: Final = 10
TIMEOUT_S: Final = 60.0
# One idle subscription in this many is checked to be live (its job is then cancelled).
SAMPLE_EVERY: Final = 20
FINAL: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

LATENCY_TARGET_MS: Final = 20.0
RATIO_TARGET: Final = 0.3
SUBSCRIPTION_TARGET_KIB: Final = 50.0

# The baseline's own corner of Redis: its queue never mixes with Depot's.
BARE_NAMESPACE: Final = "depot-bench-bare"
BARE_QUEUE: Final = "noop"
BARE_COUNT_KEY: Final = f"{BARE_NAMESPACE}:count"
BARE_READY: Final = "bare worker ready"
# A Dramatiq worker touches Redis at least this often (heartbeats) while it runs.
IN_USE_WINDOW_MS: Final = 15_000
HEARTBEATS: Final = ("dramatiq:__heartbeats__", f"{BARE_NAMESPACE}:__heartbeats__")

REGISTER: Final = (
    "mutation Register($input: RegisterInput!) "
    "{ register(input: $input) { accessToken user { id } } }"
)
UPLOAD_FILE: Final = (
    "mutation Upload($file: Upload!, $path: String) { uploadFile(file: $file, path: $path) { id } }"
)
START_JOB: Final = "mutation Start($input: JobInput!) { startJob(input: $input) { id status } }"
CANCEL_JOB: Final = "mutation Cancel($id: ID!) { cancelJob(id: $id) { id status } }"
JOB_EVENTS: Final = (
    "subscription Events($id: ID!) { jobEvents(jobId: $id) { cursor status progress at } }"
)
# From the start of the user's stream (the user is new), so no event can slip
# by between subscribing and the server registering the subscription.
MY_EVENTS: Final = 'subscription { myEvents(after: "0-0") { type jobId status } }'


# ----------------------------------------------------------------- processes


class Process:
    """A child process whose combined output goes to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as output:
            self.popen = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=output, stderr=output
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.output()[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    async def wait_for_output(self, marker: str, timeout_s: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while marker not in self.output():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {marker!r} not seen within {timeout_s:g} s")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within 20 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


DEPOT: Final = ["-c", "from api.cli import main; main()"]


@dataclass
class Stack:
    """``depot serve`` and ``depot worker``, configured alike, restartable one by one."""

    workdir: Path
    env: dict[str, str]
    port: int
    serve: Process | None = None
    worker: Process | None = None
    _runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def _log(self, name: str) -> Path:
        self._runs += 1
        return self.workdir / f"{self._runs:02d}-{name}.log"

    async def start_serve(self) -> Process:
        args = [*DEPOT, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.serve = Process("depot serve", args, self.env, self._log("serve"))
        deadline = time.monotonic() + TIMEOUT_S
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while True:
                self.serve.check_alive()
                with suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        return self.serve
                if time.monotonic() > deadline:
                    raise RuntimeError(f"depot serve not ready within {TIMEOUT_S:g} s")
                await asyncio.sleep(0.1)

    async def restart_serve(self) -> Process:
        """A fresh ``depot serve``: memory measured from a clean start."""
        if self.serve is not None:
            self.serve.stop()
        return await self.start_serve()

    async def start_worker(self) -> Process:
        self.worker = Process("depot worker", [*DEPOT, "worker"], self.env, self._log("worker"))
        await self.worker.wait_for_output("Depot worker running")
        return self.worker

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        if self.serve is not None:
            self.serve.stop()
            self.serve = None


def depot_env(
    workdir: Path, database_url: str, redis_url: str, threads: int, port: int
) -> dict[str, str]:
    """The DEPOT_* variables both processes share (and the rest of this environment)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DEPOT_")}
    env.update(
        DEPOT_ENVIRONMENT="development",
        DEPOT_VAR_DIR=str(workdir / "var"),
        DEPOT_DATABASE_URL=database_url,
        DEPOT_STORAGE_URL=(workdir / "storage").resolve().as_uri(),
        DEPOT_REDIS_URL=redis_url,
        DEPOT_SECRET_KEY=secrets.token_urlsafe(48),
        DEPOT_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        DEPOT_LOG_LEVEL="WARNING",
        DEPOT_WORKER_THREADS=str(threads),
        # One user starts every job here; the per-user limit would measure itself.
        DEPOT_MAX_RUNNING_JOBS_PER_USER="1000",
        # The shortest allowed: the run's job streams leave Redis soon after it.
        DEPOT_JOB_EVENTS_RETENTION_SECONDS="60",
    )
    # OWASP's minimum Argon2id cost: sign-in speed is not what is measured here.
    env["DEPOT_PASSWORD_HASH_MEMORY_KIB"] = "19456"  # noqa: S105 - a cost, not a secret
    env["DEPOT_PASSWORD_HASH_ITERATIONS"] = "2"  # noqa: S105
    return env


# ----------------------------------------------------------------- services


@asynccontextmanager
async def throwaway_postgres(server_url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of ``server_url``; dropped afterwards."""
    server = make_url(server_url).set(drivername="postgresql+asyncpg")
    name = f"depot_bench_{secrets.token_hex(6)}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


def claim_redis(url: str) -> set[bytes]:
    """Refuse a Redis database other Dramatiq workers use; clear a crashed run's leftovers.

    Depot's queue and event channel have fixed names, so a benchmark sharing
    a database with, say, a test run would hand its jobs to that run's
    workers (which drop them) and wait forever. Returns the Dramatiq
    processes Redis knew before this run (see :func:`release_redis`).
    """
    client = redis.Redis.from_url(url)
    try:
        now_ms = int(time.time() * 1000)
        busy = client.zcount(HEARTBEATS[0], now_ms - IN_USE_WINDOW_MS, "+inf")
        known = {member for key in HEARTBEATS for member in _members(client, key)}
    finally:
        client.close()
    if busy:
        raise SystemExit(
            f"{busy} Dramatiq process(es) are using this Redis database. Give the benchmark "
            "a database of its own, e.g. --redis-url redis://127.0.0.1:6379/9"
        )
    flush_queues(url)
    return known


def _members(client: redis.Redis, key: str) -> list[bytes]:
    return cast(list[bytes], client.zrange(key, 0, -1))


def release_redis(url: str, known: set[bytes], user_ids: list[str]) -> None:
    """Leave Redis as the run found it: queues empty, the run's processes and streams gone.

    Stopped Dramatiq processes stay in the heartbeat sets until a worker's
    maintenance drops them; the next run would take them for live ones.
    """
    flush_queues(url)
    client = redis.Redis.from_url(url)
    try:
        for key in HEARTBEATS:
            ours = [member for member in _members(client, key) if member not in known]
            if ours:
                client.zrem(key, *ours)
        # Job streams expire by themselves (the retention is set to a minute).
        streams = [KEY_PREFIX + user_stream(decode_id(user_id)[1]) for user_id in user_ids]
        client.delete(BARE_COUNT_KEY, *streams)
    finally:
        client.close()


def flush_queues(url: str) -> None:
    """Drop the messages left in Depot's queue and the baseline's (their jobs are gone)."""
    for namespace, queue in (("dramatiq", QUEUE), (BARE_NAMESPACE, BARE_QUEUE)):
        broker = RedisBroker(url=url, namespace=namespace, middleware=[])  # type: ignore[no-untyped-call]
        try:
            broker.flush(queue)
        finally:
            broker.close()


# ----------------------------------------------------------------- the baseline


def bare_actor(url: str) -> dramatiq.Actor[[], None]:
    """A Dramatiq actor that only counts its messages, on its own broker and namespace."""
    broker = RedisBroker(url=url, namespace=BARE_NAMESPACE)  # type: ignore[no-untyped-call]
    counter = redis.Redis.from_url(url)

    def noop() -> None:
        counter.incr(BARE_COUNT_KEY)

    return dramatiq.Actor(
        noop, broker=broker, actor_name="noop", queue_name=BARE_QUEUE, priority=0, options={}
    )


def serve_bare_worker(url: str, threads: int) -> None:
    """``--bare-worker``: run the baseline actor until SIGTERM (in its own process)."""
    actor = bare_actor(url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    # Depot's worker waits as long between looks at an idle Redis.
    worker = dramatiq.Worker(
        actor.broker, queues={BARE_QUEUE}, worker_threads=threads, worker_timeout=POLL_MS
    )
    actor.broker.emit_after("process_boot")
    worker.start()
    print(BARE_READY, file=sys.stderr, flush=True)
    while not stop.wait(1):
        pass
    worker.stop()
    actor.broker.close()


def bare_run(url: str, total: int) -> float:
    """Seconds from the first ``send`` until the worker has counted ``total`` messages."""
    actor = bare_actor(url)
    counter = redis.Redis.from_url(url)
    try:
        counter.delete(BARE_COUNT_KEY)
        started = time.perf_counter()
        for _ in range(total):
            actor.send()
        deadline = time.monotonic() + TIMEOUT_S
        while int(counter.get(BARE_COUNT_KEY) or 0) < total:
            if time.monotonic() > deadline:
                raise RuntimeError("the bare worker did not process its messages in time")
            time.sleep(0.001)
        return time.perf_counter() - started
    finally:
        counter.close()
        actor.broker.close()


async def bare_throughput(
    workdir: Path, url: str, threads: int, total: int, rounds: int = 2
) -> float:
    """The fastest of ``rounds`` bare runs, each timed with the bare worker already idle."""
    args = ["-m", "bench.jobs", "--bare-worker", "--redis-url", url, "--threads", str(threads)]
    worker = Process("bare worker", args, dict(os.environ), workdir / "bare-worker.log")
    try:
        await worker.wait_for_output(BARE_READY)
        bare_run(url, min(total, 50))  # warm-up: connections, imports
        return min([await asyncio.to_thread(bare_run, url, total) for _ in range(rounds)])
    finally:
        worker.stop()


# ----------------------------------------------------------------- the client


@dataclass(frozen=True)
class Account:
    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


class Api:
    """GraphQL over HTTP to one ``depot serve``; every call insists on success."""

    def __init__(self, url: str) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=limits)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self, query: str, variables: dict[str, Any], account: Account | None = None
    ) -> dict[str, Any]:
        headers = account.headers if account is not None else None
        response = await self.client.post(
            "/graphql", json={"query": query, "variables": variables}, headers=headers
        )
        return _data(response)

    async def register(self, email: str) -> Account:
        account = {"email": email, "password": PASSWORD, "displayName": "Bench"}
        payload = (await self.call(REGISTER, {"input": account}))["register"]
        return Account(payload["accessToken"], payload["user"]["id"])

    async def upload(self, account: Account, path: str) -> str:
        operations = {"query": UPLOAD_FILE, "variables": {"file": None, "path": path}}
        response = await self.client.post(
            "/graphql",
            data={
                "operations": json.dumps(operations),
                "map": json.dumps({"0": ["variables.file"]}),
            },
            files={"0": ("bench.txt", TINY_FILE, "text/plain")},
            headers={**CSRF, **account.headers},
        )
        file_id: str = _data(response)["uploadFile"]["id"]
        return file_id

    async def start_verify(self, account: Account, file_id: str) -> str:
        job = await self.call(START_JOB, {"input": {"verify": {"fileId": file_id}}}, account)
        job_id: str = job["startJob"]["id"]
        return job_id

    async def cancel(self, account: Account, job_id: str) -> None:
        await self.call(CANCEL_JOB, {"id": job_id}, account)


def _data(response: httpx.Response) -> dict[str, Any]:
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    if body.get("errors"):
        raise RuntimeError(f"GraphQL errors: {body['errors']}")
    data: dict[str, Any] = body["data"]
    return data


async def open_socket(url: str, account: Account) -> ClientConnection:
    """A graphql-transport-ws connection, acknowledged; compression on, as browsers ask."""
    ws = await connect(url, subprotocols=PROTOCOL, open_timeout=TIMEOUT_S, ping_interval=None)
    await send(ws, {"type": "connection_init", "payload": account.headers})
    ack = await receive(ws)
    if ack.get("type") != "connection_ack":
        raise RuntimeError(f"connection refused: {ack}")
    return ws


@asynccontextmanager
async def socket(url: str, account: Account) -> AsyncIterator[ClientConnection]:
    ws = await open_socket(url, account)
    try:
        yield ws
    finally:
        await ws.close()


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def subscribe(
    ws: ClientConnection, id_: str, query: str, variables: dict[str, Any] | None = None
) -> None:
    payload = {"query": query, "variables": variables or {}}
    await send(ws, {"type": "subscribe", "id": id_, "payload": payload})


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a ping (pings are answered)."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        if message.get("type") == "ping":
            await send(ws, {"type": "pong"})
            continue
        if message.get("type") == "error":
            raise RuntimeError(f"subscription {message.get('id')} failed: {message}")
        return message


def _event(message: dict[str, Any], field_name: str) -> dict[str, Any]:
    if message.get("payload", {}).get("errors"):
        raise RuntimeError(f"subscription {message.get('id')} failed: {message}")
    event: dict[str, Any] = message["payload"]["data"][field_name]
    return event


async def gather_limited(limit: int, actions: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``actions`` with at most ``limit`` at a time; their results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(action: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await action()

    return await asyncio.gather(*(run(action) for action in actions))


# ----------------------------------------------------------------- 1. first-event latency


@dataclass
class Latencies:
    """Seconds, one sample per job."""

    first_event: list[float] = field(default_factory=list)  # startJob returned → first event
    start_job: list[float] = field(default_factory=list)  # startJob's round trip
    # The same span split at the event's `at` (set when the worker publishes it):
    to_publish: list[float] = field(default_factory=list)  # → the worker publishes RUNNING
    to_client: list[float] = field(default_factory=list)  # → the client has it
    not_running: int = 0  # first events that were not RUNNING


async def first_event_latencies(
    api: Api, ws_url: str, account: Account, file_id: str, count: int
) -> Latencies:
    """One job at a time: start it, subscribe at once, time the first event, await the end."""
    result = Latencies()
    async with socket(ws_url, account) as ws:
        for turn in range(WARMUP_JOBS + count):
            requested = time.perf_counter()
            job_id = await api.start_verify(account, file_id)
            returned, returned_wall = time.perf_counter(), time.time()
            sub = f"j{turn}"
            await subscribe(ws, sub, JOB_EVENTS, {"id": job_id})
            first: dict[str, Any] | None = None
            while True:
                message = await receive(ws)
                if message.get("id") != sub:
                    raise RuntimeError(f"unexpected message: {message}")
                if message["type"] == "complete":
                    break
                if first is None:
                    received, received_wall = time.perf_counter(), time.time()
                    first = _event(message, "jobEvents")
                    if turn < WARMUP_JOBS:
                        continue
                    at = datetime.fromisoformat(first["at"]).timestamp()
                    result.first_event.append(received - returned)
                    result.start_job.append(returned - requested)
                    result.to_publish.append(at - returned_wall)
                    result.to_client.append(received_wall - at)
                    result.not_running += first["status"] != "RUNNING"
            if first is None:
                raise RuntimeError(f"job {job_id} completed without an event")
    return result


# ----------------------------------------------------------------- 2. throughput


@dataclass(frozen=True)
class Throughput:
    jobs: int
    seconds: float
    failed: int

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


async def depot_throughput(
    api: Api, ws_url: str, account: Account, file_ids: list[str], total: int
) -> Throughput:
    """``total`` verify jobs started by ``len(file_ids)`` concurrent loops (one file each).

    Timed from the first ``startJob`` until a ``myEvents`` subscriber has
    received every one of them's final event.
    """
    finals: dict[str, tuple[float, str]] = {}
    started: set[str] = set()
    starting = True
    done = asyncio.Event()

    def check() -> None:
        if not starting and started <= finals.keys():
            done.set()

    async with socket(ws_url, account) as ws:
        await subscribe(ws, "mine", MY_EVENTS)

        async def collect() -> None:
            while True:
                message = await receive(ws)
                if message["type"] != "next":
                    raise RuntimeError(f"myEvents ended: {message}")
                event = _event(message, "myEvents")
                if event["type"] == "JOB_STATUS" and event["status"] in FINAL:
                    finals[event["jobId"]] = (time.perf_counter(), event["status"])
                    check()

        async def start_loop(file_id: str, count: int) -> None:
            for _ in range(count):
                started.add(await api.start_verify(account, file_id))

        shares = [
            total // len(file_ids) + (i < total % len(file_ids)) for i in range(len(file_ids))
        ]
        collector = asyncio.create_task(collect())
        waiter = asyncio.create_task(done.wait())
        began = time.perf_counter()
        try:
            await asyncio.gather(*(start_loop(f, n) for f, n in zip(file_ids, shares, strict=True)))
            starting = False
            check()
            await asyncio.wait(
                {collector, waiter}, timeout=TIMEOUT_S, return_when="FIRST_COMPLETED"
            )
            if collector.done():
                collector.result()  # its error
            if not done.is_set():
                raise RuntimeError(f"not every job ended within {TIMEOUT_S:g} s")
        finally:
            for task in (collector, waiter):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
    last = max(finals[job_id][0] for job_id in started)
    failed = sum(finals[job_id][1] != "SUCCEEDED" for job_id in started)
    return Throughput(total, last - began, failed)


# ----------------------------------------------------------------- 3. memory per subscription


@dataclass(frozen=True)
class Memory:
    connections: int
    per_connection: int
    before: int  # bytes of RSS
    after: int
    sampled: int  # subscriptions whose job was then cancelled
    confirmed: int  # of those, the ones that delivered it: they were live

    @property
    def subscriptions(self) -> int:
        return self.connections * self.per_connection

    @property
    def per_subscription(self) -> float:
        return (self.after - self.before) / self.subscriptions


async def steady_rss(pid: int, quiet_s: float = 1.0, limit_s: float = 15.0) -> int:
    """The process's RSS once it moved less than 64 KiB for ``quiet_s`` (or after ``limit_s``)."""
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    while True:
        now = time.monotonic()
        samples.append((now, rss_bytes(pid)))
        window = [rss for at, rss in samples if at >= now - quiet_s]
        if now - started >= quiet_s and max(window) - min(window) <= 64 * KIB:
            return window[-1]
        if now - started >= limit_s:
            return window[-1]
        await asyncio.sleep(0.1)


async def queued_jobs(api: Api, account: Account, file_id: str, count: int) -> list[str]:
    """``count`` jobs that stay queued (no worker runs)."""
    actions = [partial(api.start_verify, account, file_id) for _ in range(count)]
    job_ids: list[str] = await gather_limited(8, actions)
    return job_ids


async def expect_cancelled(ws: ClientConnection, subs: set[str]) -> int:
    """How many of ``subs`` deliver a CANCELLED event and complete."""
    if not subs:
        return 0
    cancelled: set[str] = set()
    pending = set(subs)
    with suppress(TimeoutError):
        while pending:
            message = await receive(ws)
            sub = message.get("id", "")
            if message["type"] == "next" and _event(message, "jobEvents")["status"] == "CANCELLED":
                cancelled.add(sub)
            elif message["type"] == "complete":
                pending.discard(sub)
    return len(cancelled & (subs - pending))


async def subscription_memory(
    stack: Stack, account: Account, queued: list[str], connections: int, per_connection: int
) -> Memory:
    """RSS of a fresh ``depot serve`` before and after opening the subscriptions.

    Each subscription follows its own job, taken from ``queued``. Afterwards
    every ``SAMPLE_EVERY``-th of those jobs is cancelled (and removed from
    ``queued``); its subscription must deliver that: it was live.
    """
    serve = await stack.restart_serve()
    api = Api(stack.url)
    sockets: list[ClientConnection] = []
    total = connections * per_connection
    try:
        # Warm up: what a subscription needs is loaded before the baseline.
        async with socket(stack.ws_url, account) as ws:
            for k, job_id in enumerate(queued[:20]):
                await subscribe(ws, f"w{k}", JOB_EVENTS, {"id": job_id})
            await asyncio.sleep(1)
        before = await steady_rss(serve.pid)
        sockets = await gather_limited(
            20, [lambda: open_socket(stack.ws_url, account) for _ in range(connections)]
        )
        for c, ws in enumerate(sockets):
            for k in range(per_connection):
                await subscribe(ws, f"s{k}", JOB_EVENTS, {"id": queued[c * per_connection + k]})
        after = await steady_rss(serve.pid, quiet_s=2.0)
        sampled = range(0, total, SAMPLE_EVERY)
        readers = [
            asyncio.create_task(
                expect_cancelled(
                    ws,
                    {f"s{i % per_connection}" for i in sampled if i // per_connection == c},
                )
            )
            for c, ws in enumerate(sockets)
        ]
        cancelled = [queued[i] for i in sampled]
        await gather_limited(8, [partial(api.cancel, account, job_id) for job_id in cancelled])
        confirmed = sum(await asyncio.gather(*readers))
        queued[:] = [job_id for job_id in queued if job_id not in set(cancelled)]
        return Memory(connections, per_connection, before, after, len(cancelled), confirmed)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await api.aclose()


# ----------------------------------------------------------------- the report


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def table(rows: list[list[str]]) -> list[str]:
    """Rows as aligned text: the first column to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  "
        + "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def verdict(ok: bool) -> str:
    return "meets its target" if ok else "MISSES its target"


@dataclass(frozen=True)
class Results:
    setup: str
    latencies: Latencies
    bare: Throughput
    depot: Throughput
    clients: int
    threads: int
    memories: list[Memory]
    notes: list[str]


def report(results: Results) -> str:
    lat = results.latencies
    first = lat.first_event
    median = statistics.median(first)
    lines = [
        results.setup,
        f"Python {platform.python_version()}, dramatiq {version('dramatiq')}, "
        f"strawberry-graphql {version('strawberry-graphql')}, uvicorn {version('uvicorn')}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs",
        "",
        f"1. First event after startJob returns ({len(first)} verify jobs, one at a time)",
        *table(
            [
                ["", "latency", "target"],
                ["median", ms(median), f"< {LATENCY_TARGET_MS:g} ms"],
                ["p95", ms(percentile(first, 95)), ""],
                ["p99", ms(percentile(first, 99)), ""],
                ["max", ms(max(first)), ""],
            ]
        ),
        f"  medians of the parts: startJob round trip {ms(statistics.median(lat.start_job))}; "
        f"startJob returned → worker publishes RUNNING {ms(statistics.median(lat.to_publish))}; "
        f"→ client has it {ms(statistics.median(lat.to_client))}",
    ]
    if lat.not_running:
        lines.append(f"  {lat.not_running} first events were not RUNNING")
    bare, depot = results.bare, results.depot
    ratio = depot.rate / bare.rate
    lines += [
        "",
        f"2. Throughput, {results.threads} worker threads in each worker process",
        *table(
            [
                ["path", "jobs", "time", "jobs/s", "vs bare", "target"],
                [
                    "bare Dramatiq actor (one INCR)",
                    str(bare.jobs),
                    f"{bare.seconds:.2f} s",
                    f"{bare.rate:.0f}",
                    "1.00x",
                    "",
                ],
                [
                    f"Depot verify jobs, {results.clients} GraphQL clients",
                    str(depot.jobs),
                    f"{depot.seconds:.2f} s",
                    f"{depot.rate:.0f}",
                    f"{ratio:.2f}x",
                    f">= {RATIO_TARGET:.2f}x",
                ],
            ]
        ),
    ]
    if depot.failed:
        lines.append(f"  {depot.failed} Depot jobs did not succeed")
    rows = [["layout", "subscriptions", "RSS before", "RSS after", "each", "live*", "target"]]
    for memory in results.memories:
        rows.append(
            [
                f"{memory.connections} WebSockets x {memory.per_connection}",
                str(memory.subscriptions),
                f"{memory.before / MIB:.1f} MiB",
                f"{memory.after / MIB:.1f} MiB",
                f"{memory.per_subscription / KIB:.1f} KiB",
                f"{memory.confirmed}/{memory.sampled}",
                f"< {SUBSCRIPTION_TARGET_KIB:g} KiB",
            ]
        )
    lines += [
        "",
        "3. Memory per idle subscription (jobEvents of queued jobs; depot serve's RSS, "
        "fresh process each)",
        *table(rows),
        f"  * every {SAMPLE_EVERY}th subscription's job is cancelled afterwards: those that "
        "deliver it were live",
        *(f"  {note}" for note in results.notes),
        "",
        f"median first-event latency {ms(median)}: {verdict(median * 1000 < LATENCY_TARGET_MS)}",
        f"throughput ratio {ratio:.2f}x: {verdict(ratio >= RATIO_TARGET and not depot.failed)}",
    ]
    for memory in results.memories:
        ok = (
            memory.per_subscription / KIB < SUBSCRIPTION_TARGET_KIB
            and memory.confirmed == memory.sampled
        )
        lines.append(
            f"{memory.connections} WebSockets x {memory.per_connection}: "
            f"{memory.per_subscription / KIB:.1f} KiB per subscription: {verdict(ok)}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------- the run


def raise_file_limit(needed: int) -> bool:
    """Raise this process's (and so its children's) open-file limit; whether it suffices."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft == resource.RLIM_INFINITY or soft >= needed


@asynccontextmanager
async def database(postgres_url: str | None, workdir: Path) -> AsyncIterator[str]:
    if postgres_url is None:
        yield f"sqlite:///{workdir / 'depot.db'}"
        return
    async with throwaway_postgres(postgres_url) as url:
        yield url


def describe_setup(postgres_url: str | None, redis_url: str, threads: int) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    db = "PostgreSQL" if postgres_url else "SQLite"
    return (
        f"Depot jobs: depot serve + one depot worker ({threads} threads), {db}, "
        f"Redis {redis_version} (database {client.get_connection_kwargs().get('db', 0)}), "
        "local storage, all on 127.0.0.1"
    )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(args: argparse.Namespace, redis_url: str, postgres_url: str | None) -> str:
    notes: list[str] = []
    layouts = [(args.connections, args.subscriptions // args.connections)]
    if raise_file_limit(args.subscriptions + 512):
        layouts.append((args.subscriptions, 1))
    else:
        notes.append(
            f"{args.subscriptions} WebSockets x 1: skipped, the open-file limit is too low"
        )
    known = claim_redis(redis_url)
    setup = describe_setup(postgres_url, redis_url, args.threads)
    users: list[str] = []
    with tempfile.TemporaryDirectory(prefix="depot-bench-") as name:
        workdir = Path(name)
        async with database(postgres_url, workdir) as database_url:
            port = free_port()
            stack = Stack(
                workdir, depot_env(workdir, database_url, redis_url, args.threads, port), port
            )
            try:
                await stack.start_serve()
                await stack.start_worker()
                api = Api(stack.url)
                try:
                    solo = await api.register("latency@example.com")
                    users.append(solo.user_id)
                    file_id = await api.upload(solo, "bench/latency.txt")
                    progress(f"1/3 first-event latency over {args.jobs} jobs…")
                    latencies = await first_event_latencies(
                        api, stack.ws_url, solo, file_id, args.jobs
                    )
                    busy = await api.register("throughput@example.com")
                    users.append(busy.user_id)
                    files = [await api.upload(busy, f"bench/{i}.txt") for i in range(args.clients)]
                    progress(f"2/3 throughput of {args.throughput_jobs} jobs…")
                    depot = await depot_throughput(
                        api, stack.ws_url, busy, files, args.throughput_jobs
                    )
                finally:
                    await api.aclose()
                stack.stop_worker()
                seconds = await bare_throughput(
                    workdir, redis_url, args.threads, args.throughput_jobs
                )
                bare = Throughput(args.throughput_jobs, seconds, 0)
                # Jobs that stay queued (no worker runs now): enough for every layout.
                spare = (args.subscriptions // SAMPLE_EVERY + 1) * (len(layouts) - 1)
                progress(f"3/3 memory: starting {args.subscriptions + spare} jobs to follow…")
                api = Api(stack.url)
                try:
                    queued = await queued_jobs(api, solo, file_id, args.subscriptions + spare)
                finally:
                    await api.aclose()
                memories = []
                for connections, per_connection in layouts:
                    progress(f"3/3 memory: {connections} WebSockets x {per_connection}…")
                    memories.append(
                        await subscription_memory(stack, solo, queued, connections, per_connection)
                    )
            finally:
                stack.stop()
                release_redis(redis_url, known, users)
    return report(
        Results(setup, latencies, bare, depot, args.clients, args.threads, memories, notes)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=500, help="jobs timed for latency (500)")
    parser.add_argument(
        "--throughput-jobs", type=int, default=300, help="jobs for throughput, each path (300)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent startJob loops (8)")
    parser.add_argument(
        "--subscriptions", type=int, default=1000, help="idle subscriptions measured (1000)"
    )
    parser.add_argument(
        "--connections", type=int, default=50, help="WebSockets they share at first (50)"
    )
    default_threads = Settings.model_fields["worker_threads"].default
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads,
        help=f"worker threads of each worker process (Depot's default, {default_threads})",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("DEPOT_TEST_REDIS_URL"),
        help="a Redis database no other Depot uses (default: $DEPOT_TEST_REDIS_URL)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DEPOT_TEST_POSTGRES_URL"),
        help="a PostgreSQL server to create a throwaway database on "
        "(default: $DEPOT_TEST_POSTGRES_URL; without either, SQLite)",
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite even if PostgreSQL is known")
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("needs Redis: --redis-url redis://host:6379/9 or DEPOT_TEST_REDIS_URL")
    if args.bare_worker:
        serve_bare_worker(args.redis_url, args.threads)
        return
    if min(args.jobs, args.throughput_jobs) < 20 or args.clients < 1 or args.threads < 1:
        parser.error("--jobs and --throughput-jobs need at least 20; --clients and --threads 1")
    if args.connections < 1 or args.subscriptions % args.connections:
        parser.error("--subscriptions must be a multiple of --connections")
    postgres_url = None if args.sqlite else args.database_url
    print(asyncio.run(run(args, args.redis_url, postgres_url)))


if __name__ == "__main__":
    main()
