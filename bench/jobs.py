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
   messages (an ``INCR``), run by a worker process with as many threads; and
   (2b) the same throughput, and the CPU time per job, with metrics and
   tracing on against both off, in interleaved rounds; and (2c) a three-step
   **pipeline** (verify → convert → thumbnails of a small PNG) end to end,
   against the same three kinds run as separate jobs one after the other, in
   the same run, and two independent steps (thumbnails and verify of the
   upload) as one pipeline against the two run one after the other;
3. the **memory per idle subscription**: ``depot serve``'s resident memory
   before and after opening ``jobEvents`` subscriptions to jobs that stay
   queued (the worker is stopped), spread over a few WebSockets and then one
   WebSocket each.

Run from the repository root:
``.venv/bin/python -m bench.jobs [--redis-url redis://host:6379/9]``.
The Redis database must be one no other Depot or Dramatiq process uses.
Linux only (``/proc``).

This module measures; the processes come from :mod:`bench.harness`, the
GraphQL client from :mod:`bench.client`, the baseline from
:mod:`bench.bare_dramatiq`, the Redis bookkeeping from :mod:`bench.redis_claim`
and the figures' formatting from :mod:`bench.jobs_report`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

from PIL import Image
from websockets.asyncio.client import ClientConnection

from bench import bare_dramatiq, redis_claim
from bench.client import Account, Api, event, open_socket, receive, socket, subscribe
from bench.harness import (
    TIMEOUT_S,
    Process,
    Stack,
    cpu_seconds,
    depot_env,
    free_port,
    progress,
    rss_bytes,
    throwaway_postgres,
)
from bench.jobs_report import (
    SAMPLE_EVERY,
    Latencies,
    Memory,
    Observed,
    Pipelines,
    Results,
    Throughput,
    report,
)
from bench.report import KIB
from core.settings import Settings

TINY_FILE: Final = b"depot bench file"
WARMUP_JOBS: Final = 10
FINAL: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

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


@dataclass(eq=False)
class Owner:
    """A user of part 3, the file its jobs verify, and its jobs that stay queued."""

    account: Account
    file_id: str
    queued: list[str] = field(default_factory=list)


def jobs_env(
    workdir: Path, database_url: str, redis_url: str, threads: int, port: int
) -> dict[str, str]:
    """The DEPOT_* variables ``depot serve`` and ``depot worker`` share here."""
    return depot_env(
        workdir / "var",
        workdir / "storage",
        port,
        DEPOT_DATABASE_URL=database_url,
        DEPOT_REDIS_URL=redis_url,
        DEPOT_WORKER_THREADS=str(threads),
        # One user starts every job here; the per-user limit would measure itself.
        DEPOT_MAX_RUNNING_JOBS_PER_USER="1000",
        # The shortest allowed: the run's job streams leave Redis soon after it.
        DEPOT_JOB_EVENTS_RETENTION_SECONDS="60",
    )


async def upload(api: Api, account: Account, path: str) -> str:
    """A tiny file at ``path``; its id."""
    result = await api.upload(account, UPLOAD_FILE, {"path": path}, TINY_FILE)
    file_id: str = result["uploadFile"]["id"]
    return file_id


async def start_verify(api: Api, account: Account, file_id: str) -> str:
    """A ``verify`` job of the file; its id."""
    job = await api.call(START_JOB, {"input": {"verify": {"fileId": file_id}}}, account)
    job_id: str = job["startJob"]["id"]
    return job_id


async def cancel(api: Api, account: Account, job_id: str) -> None:
    await api.call(CANCEL_JOB, {"id": job_id}, account)


async def gather_limited(limit: int, actions: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``actions`` with at most ``limit`` at a time; their results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(action: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await action()

    return await asyncio.gather(*(run(action) for action in actions))


# ----------------------------------------------------------------- 1. first-event latency


async def first_event_latencies(
    api: Api, ws_url: str, account: Account, file_id: str, count: int
) -> Latencies:
    """One job at a time: start it, subscribe at once, time the first event, await the end."""
    result = Latencies()
    async with socket(ws_url, account) as ws:
        for turn in range(WARMUP_JOBS + count):
            requested = time.perf_counter()
            job_id = await start_verify(api, account, file_id)
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
                    first = event(message, "jobEvents")
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
                mine = event(message, "myEvents")
                if mine["type"] == "JOB_STATUS" and mine["status"] in FINAL:
                    finals[mine["jobId"]] = (time.perf_counter(), mine["status"])
                    check()

        async def start_loop(file_id: str, count: int) -> None:
            for _ in range(count):
                started.add(await start_verify(api, account, file_id))

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


# ------------------------------------------- 2b. what metrics and tracing cost a job


async def observed_throughput(
    workdir: Path, env: dict[str, str], args: argparse.Namespace, users: list[str]
) -> list[Observed]:
    """No-op (verify) job throughput with metrics and tracing on, and with both off.

    Two stacks on the run's database and Redis, told apart only by
    ``DEPOT_METRICS_ENABLED`` and ``OTEL_TRACES_EXPORTER`` (on: OTLP to a sink
    on loopback, ``--observed-sampler``: by default every trace, as an operator
    who traces everything runs it). Their ``depot worker`` processes share Dramatiq's queue, so only
    one runs at a time: each round starts one side's worker, warms it, times
    ``--throughput-jobs`` jobs and stops it, the order flipping every round.
    The CPU time of its ``depot serve`` and ``depot worker`` over the timed
    jobs is what each job cost.
    """
    sink_port = free_port()
    sink = Process(
        "trace sink",
        ["-m", "bench.http_baselines", "--port", str(sink_port)],
        dict(os.environ),
        workdir / "sink.log",
    )
    metered = args.observed_on in ("both", "metrics")
    traced = args.observed_on in ("both", "tracing")
    sides = {
        "on": dict(
            env,
            DEPOT_METRICS_ENABLED=str(metered).lower(),
            OTEL_TRACES_EXPORTER="otlp" if traced else "none",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink_port}",
            **sampler_env(args.observed_sampler),
        ),
        "off": dict(env, DEPOT_METRICS_ENABLED="false", OTEL_TRACES_EXPORTER="none"),
    }
    stacks: dict[str, Stack] = {}
    rounds: list[Observed] = []
    try:
        await asyncio.to_thread(sink.wait_until_healthy, f"http://127.0.0.1:{sink_port}")
        for name, side_env in sides.items():
            port = free_port()
            side_env["DEPOT_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
            stacks[name] = Stack(workdir, side_env, port)
            await asyncio.to_thread(stacks[name].start_serve)
        for round_ in range(args.observed_rounds):
            order = ["on", "off"] if round_ % 2 == 0 else ["off", "on"]
            figures: dict[str, tuple[Throughput, dict[str, float], dict[str, float]]] = {}
            for name in order:
                progress(f"2b. round {round_ + 1}/{args.observed_rounds}, metrics+tracing {name}")
                figures[name] = await _observed_side(stacks[name], args, f"{name}{round_}", users)
            on, off = figures["on"], figures["off"]
            rounds.append(Observed(on[0], on[1], off[0], off[1], on[2], off[2]))
    finally:
        for stack in stacks.values():
            stack.stop()
        sink.stop()
    return rounds


# 2b: how long each side's processes are watched idle before its timed jobs.
IDLE_S: Final = 2.0


def sampler_env(sampler: str) -> dict[str, str]:
    """``OTEL_TRACES_SAMPLER`` (and ``_ARG``) from ``name`` or ``name:argument``."""
    name, _, argument = sampler.partition(":")
    return {
        "OTEL_TRACES_SAMPLER": name,
        **({"OTEL_TRACES_SAMPLER_ARG": argument} if argument else {}),
    }


async def _observed_side(
    stack: Stack, args: argparse.Namespace, tag: str, users: list[str]
) -> tuple[Throughput, dict[str, float], dict[str, float]]:
    """One side of one round: its throughput, each process's CPU seconds per job, and
    each process's CPU seconds per second while idle just before (``IDLE_S``).

    An idle ``depot worker`` polls Redis every few milliseconds, so a side whose
    jobs take longer also spends more CPU per job polling, whatever each job
    itself costs: the idle rate lets the report take that off.
    """
    worker = await asyncio.to_thread(stack.start_worker)
    assert stack.serve is not None
    api = Api(stack.url)
    try:
        account = await api.register(f"observed-{tag}@example.com")
        users.append(account.user_id)
        files = [await upload(api, account, f"bench/{i}.txt") for i in range(args.clients)]
        await depot_throughput(api, stack.ws_url, account, files, WARMUP_JOBS)
        pids = {"serve": stack.serve.pid, "worker": worker.pid}
        await asyncio.sleep(IDLE_S / 4)  # the warm-up's last events delivered
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        await asyncio.sleep(IDLE_S)
        idle = {name: (cpu_seconds(pid) - before[name]) / IDLE_S for name, pid in pids.items()}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        throughput = await depot_throughput(api, stack.ws_url, account, files, args.throughput_jobs)
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    finally:
        await api.aclose()
        stack.stop_worker()
    return throughput, {name: seconds / throughput.jobs for name, seconds in cpu.items()}, idle


# ----------------------------------------------------------------- 2c. a pipeline

OUTPUTS: Final = (
    "query J($id: ID!) { job(id: $id) { status outputs(first: 10) { edges { node { id } } } } }"
)
STEPS: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("verify", {}),
    ("convert", {"format": "WEBP"}),
    ("thumbnails", {"sizes": [16]}),
)


def small_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def upload_png(api: Api, account: Account, path: str) -> str:
    result = await api.upload(account, UPLOAD_FILE, {"path": path}, small_png())
    file_id: str = result["uploadFile"]["id"]
    return file_id


async def until_final(ws: ClientConnection, sub: str, job_id: str) -> str:
    """Follow ``jobEvents`` of ``job_id`` until the server completes it; its last status."""
    await subscribe(ws, sub, JOB_EVENTS, {"id": job_id})
    status = ""
    while True:
        message = await receive(ws)
        if message.get("id") != sub:
            raise RuntimeError(f"unexpected message: {message}")
        if message["type"] == "complete":
            return status
        status = event(message, "jobEvents")["status"]


async def as_pipeline(api: Api, ws: ClientConnection, account: Account, turn: int) -> bool:
    file_id = await upload_png(api, account, f"bench/p{turn}.png")
    steps = [
        {"name": kind, "run": {kind: params}, **({"use": [STEPS[i - 1][0]]} if i else {})}
        for i, (kind, params) in enumerate(STEPS)
    ]
    job = await api.call(
        START_JOB, {"input": {"pipeline": {"fileIds": [file_id], "steps": steps}}}, account
    )
    return await until_final(ws, f"p{turn}", job["startJob"]["id"]) == "SUCCEEDED"


async def as_separate_jobs(api: Api, ws: ClientConnection, account: Account, turn: int) -> bool:
    source = await upload_png(api, account, f"bench/s{turn}.png")
    ok = True
    for n, (kind, params) in enumerate(STEPS):
        job = await api.call(START_JOB, {"input": {kind: {**params, "fileId": source}}}, account)
        job_id = job["startJob"]["id"]
        ok = ok and await until_final(ws, f"s{turn}-{n}", job_id) == "SUCCEEDED"
        if kind == "convert":  # the thumbnails are of the WebP
            made = await api.call(OUTPUTS, {"id": job_id}, account)
            source = made["job"]["outputs"]["edges"][0]["node"]["id"]
    return ok


# Independent of each other: a pipeline runs them at once (on two worker threads, each
# step's decoding in a decoder process of its own), so each must be real work: tiny
# steps would time only the pipeline's own bookkeeping, not what branching buys.
BRANCHES: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    ("thumbnails", {"sizes": [256]}),
    ("convert", {"format": "WEBP"}),
)


@functools.cache
def photo_png() -> bytes:
    """A 3-megapixel picture with detail (Gaussian noise), which costs a decoder and an
    encoder about as much as a photograph: the branches' source."""
    out = io.BytesIO()
    Image.effect_noise((2000, 1500), 48).convert("RGB").save(out, "PNG", compress_level=1)
    return out.getvalue()


async def as_branches(api: Api, ws: ClientConnection, account: Account, turn: int) -> bool:
    result = await api.upload(account, UPLOAD_FILE, {"path": f"bench/b{turn}.png"}, photo_png())
    file_id = result["uploadFile"]["id"]
    steps = [{"name": kind, "run": {kind: params}} for kind, params in BRANCHES]
    job = await api.call(
        START_JOB, {"input": {"pipeline": {"fileIds": [file_id], "steps": steps}}}, account
    )
    return await until_final(ws, f"b{turn}", job["startJob"]["id"]) == "SUCCEEDED"


async def as_separate_branches(api: Api, ws: ClientConnection, account: Account, turn: int) -> bool:
    result = await api.upload(account, UPLOAD_FILE, {"path": f"bench/t{turn}.png"}, photo_png())
    source = result["uploadFile"]["id"]
    ok = True
    for n, (kind, params) in enumerate(BRANCHES):
        job = await api.call(START_JOB, {"input": {kind: {**params, "fileId": source}}}, account)
        ok = ok and await until_final(ws, f"t{turn}-{n}", job["startJob"]["id"]) == "SUCCEEDED"
    return ok


async def pipeline_rounds(api: Api, ws_url: str, account: Account, rounds: int) -> Pipelines:
    """Each round (after two of warm-up), on fresh uploads: verify, convert to WebP and
    thumbnails of the WebP as one pipeline, then as three jobs one after the other;
    then a 256-pixel thumbnail and a WebP conversion of a 3-megapixel upload as one
    pipeline of two parallel branches, then as two jobs one after the other. Uploads
    are outside the timings."""
    found = Pipelines()
    ways = (as_pipeline, as_separate_jobs, as_branches, as_separate_branches)
    async with socket(ws_url, account) as ws:
        for turn in range(rounds + 2):
            timed = []
            for way in ways:
                began = time.perf_counter()
                ok = await way(api, ws, account, turn)
                timed.append(time.perf_counter() - began)
                found.failed += turn >= 2 and not ok
            if turn >= 2:
                found.pipeline.append(timed[0])
                found.separate.append(timed[1])
                found.branched.append(timed[2])
                found.branches_separate.append(timed[3])
    return found


# ----------------------------------------------------------------- 3. memory per subscription


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
    actions = [partial(start_verify, api, account, file_id) for _ in range(count)]
    job_ids: list[str] = await gather_limited(8, actions)
    return job_ids


async def memory_accounts(api: Api, solo: Account, file_id: str, users: int) -> list[Owner]:
    """Part 3's users: ``solo`` and ``users - 1`` more, each with a file to start jobs of."""
    owners = [Owner(solo, file_id)]
    for i in range(1, users):
        account = await api.register(f"memory{i}@example.com")
        owners.append(Owner(account, await upload(api, account, "bench/memory.txt")))
    return owners


def owner_of(owners: Sequence[Owner], socket_index: int) -> Owner:
    """The user socket ``socket_index`` signs in as: the users take turns."""
    return owners[socket_index % len(owners)]


async def queue_for(
    api: Api, owners: Sequence[Owner], connections: int, per_connection: int
) -> None:
    """Top up each owner's queued jobs to what ``connections`` x ``per_connection`` follows."""
    needed = Counter(owner_of(owners, c).account.user_id for c in range(connections))
    for owner in owners:
        missing = needed[owner.account.user_id] * per_connection - len(owner.queued)
        if missing > 0:
            owner.queued += await queued_jobs(api, owner.account, owner.file_id, missing)


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
            if message["type"] == "next" and event(message, "jobEvents")["status"] == "CANCELLED":
                cancelled.add(sub)
            elif message["type"] == "complete":
                pending.discard(sub)
    return len(cancelled & (subs - pending))


async def subscription_memory(
    stack: Stack, owners: Sequence[Owner], connections: int, per_connection: int
) -> Memory:
    """RSS of a fresh ``depot serve`` before and after opening the subscriptions.

    Socket ``c`` signs in as ``owner_of(owners, c)`` and follows that user's
    own queued jobs, one per subscription. Afterwards every
    ``SAMPLE_EVERY``-th subscription's job is cancelled (and dropped from its
    owner's queue); its subscription must deliver that: it was live.
    """
    serve = await asyncio.to_thread(stack.restart_serve)
    api = Api(stack.url)
    sockets: list[ClientConnection] = []
    total = connections * per_connection
    # Subscription i (socket i // per_connection) follows jobs[i] of owners[i].
    taken: Counter[str] = Counter()
    followed: list[tuple[Owner, str]] = []
    for c in range(connections):
        owner = owner_of(owners, c)
        start = taken[owner.account.user_id]
        taken[owner.account.user_id] += per_connection
        followed += [(owner, job) for job in owner.queued[start : start + per_connection]]
    try:
        # Warm up: what a subscription needs is loaded before the baseline.
        first = owners[0]
        async with socket(stack.ws_url, first.account) as ws:
            for k, job_id in enumerate(first.queued[:20]):
                await subscribe(ws, f"w{k}", JOB_EVENTS, {"id": job_id})
            await asyncio.sleep(1)
        before = await steady_rss(serve.pid)
        # In two halves: what fills once (the database's pool, caches) lands in the
        # first; the second half's growth is what one more subscription costs.
        half = connections // 2
        middle = before
        for lo, hi in ((0, half), (half, connections)):
            opened = await gather_limited(
                20,
                [
                    partial(open_socket, stack.ws_url, owner_of(owners, c).account)
                    for c in range(lo, hi)
                ],
            )
            sockets += opened
            for c, ws in enumerate(opened, start=lo):
                for k in range(per_connection):
                    job_id = followed[c * per_connection + k][1]
                    await subscribe(ws, f"s{k}", JOB_EVENTS, {"id": job_id})
            if hi == half:
                middle = await steady_rss(serve.pid, quiet_s=2.0)
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
        cancelled = [followed[i] for i in sampled]
        await gather_limited(
            8, [partial(cancel, api, owner.account, job_id) for owner, job_id in cancelled]
        )
        confirmed = sum(await asyncio.gather(*readers))
        for owner, job_id in cancelled:
            owner.queued.remove(job_id)
        users = len({owner.account.user_id for owner, _ in followed})
        return Memory(
            connections,
            per_connection,
            before,
            after,
            len(cancelled),
            confirmed,
            users,
            middle,
            half * per_connection,
        )
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        await api.aclose()


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


async def run(args: argparse.Namespace, redis_url: str, postgres_url: str | None) -> str:
    notes: list[str] = []
    layouts = [(args.connections, args.subscriptions // args.connections)]
    if raise_file_limit(args.subscriptions + 512):
        layouts.append((args.subscriptions, 1))
    else:
        notes.append(
            f"{args.subscriptions} WebSockets x 1: skipped, the open-file limit is too low"
        )
    known = redis_claim.claim_redis(redis_url)
    db = "PostgreSQL" if postgres_url else "SQLite"
    setup = (
        f"Depot jobs: depot serve + one depot worker ({args.threads} threads), {db}, "
        f"{redis_claim.describe(redis_url)}, local storage, all on 127.0.0.1"
    )
    users: list[str] = []
    with tempfile.TemporaryDirectory(prefix="depot-bench-") as name:
        workdir = Path(name)
        async with database(postgres_url, workdir) as database_url:
            port = free_port()
            stack = Stack(
                workdir, jobs_env(workdir, database_url, redis_url, args.threads, port), port
            )
            try:
                await asyncio.to_thread(stack.start_serve)
                await asyncio.to_thread(stack.start_worker)
                api = Api(stack.url)
                pipelines: Pipelines | None = None
                try:
                    solo = await api.register("latency@example.com")
                    users.append(solo.user_id)
                    file_id = await upload(api, solo, "bench/latency.txt")
                    progress(f"1/3 first-event latency over {args.jobs} jobs…")
                    latencies = await first_event_latencies(
                        api, stack.ws_url, solo, file_id, args.jobs
                    )
                    busy = await api.register("throughput@example.com")
                    users.append(busy.user_id)
                    files = [await upload(api, busy, f"bench/{i}.txt") for i in range(args.clients)]
                    progress(f"2/3 throughput of {args.throughput_jobs} jobs…")
                    assert stack.serve is not None
                    assert stack.worker is not None
                    pids = {"serve": stack.serve.pid, "worker": stack.worker.pid}
                    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                    depot = await depot_throughput(
                        api, stack.ws_url, busy, files, args.throughput_jobs
                    )
                    depot = replace(
                        depot,
                        cpu={
                            name: (cpu_seconds(pid) - before[name]) / depot.jobs
                            for name, pid in pids.items()
                        },
                    )
                    if args.pipelines:  # --pipelines 0 skips 2c
                        progress(f"2c. a three-step pipeline against its steps x {args.pipelines}…")
                        pipelines = await pipeline_rounds(api, stack.ws_url, busy, args.pipelines)
                finally:
                    await api.aclose()
                stack.stop_worker()
                seconds, bare_cpu = await asyncio.to_thread(
                    bare_dramatiq.bare_throughput,
                    workdir,
                    redis_url,
                    args.threads,
                    args.throughput_jobs,
                )
                bare = Throughput(args.throughput_jobs, seconds, 0, {"worker": bare_cpu})
                observed: list[Observed] = []
                if args.observed_rounds:
                    progress(f"2b. metrics and tracing on / off, {args.observed_rounds} rounds…")
                    observed = await observed_throughput(workdir, stack.env, args, users)
                memories = []
                if args.subscriptions:  # --subscriptions 0 skips 3
                    progress(f"3/3 memory: {args.users} users…")
                    api = Api(stack.url)
                    try:
                        owners = await memory_accounts(api, solo, file_id, args.users)
                        users += [owner.account.user_id for owner in owners[1:]]
                    finally:
                        await api.aclose()
                    for connections, per_connection in layouts:
                        progress(f"3/3 memory: {connections} WebSockets x {per_connection}…")
                        # Jobs that stay queued (no worker runs now), each user's own.
                        api = Api(stack.url)
                        try:
                            await queue_for(api, owners, connections, per_connection)
                        finally:
                            await api.aclose()
                        memories.append(
                            await subscription_memory(stack, owners, connections, per_connection)
                        )
            finally:
                stack.stop()
                redis_claim.release_redis(redis_url, known, users)
    return report(
        Results(
            setup,
            latencies,
            bare,
            depot,
            args.clients,
            args.threads,
            memories,
            notes,
            observed,
            pipelines,
            args.observed_sampler,
            args.observed_on,
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=500, help="jobs timed for latency (500)")
    parser.add_argument(
        "--throughput-jobs", type=int, default=300, help="jobs for throughput, each path (300)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent startJob loops (8)")
    parser.add_argument(
        "--observed-rounds",
        type=int,
        default=4,
        help="rounds of metrics+tracing on / off, --throughput-jobs each side (4; 0 skips)",
    )
    parser.add_argument(
        "--observed-sampler",
        default="always_on",
        help="2b's OTEL_TRACES_SAMPLER, with :ARG for its argument "
        "(parentbased_traceidratio:0.01; default always_on: every trace)",
    )
    parser.add_argument(
        "--observed-on",
        choices=("both", "metrics", "tracing"),
        default="both",
        help="what 2b's 'on' side switches on (both; metrics or tracing alone splits the cost)",
    )
    parser.add_argument(
        "--pipelines", type=int, default=20, help="pipeline rounds against separate jobs (20)"
    )
    parser.add_argument(
        "--subscriptions",
        type=int,
        default=1000,
        help="idle subscriptions measured (1000; 0 skips part 3)",
    )
    parser.add_argument(
        "--connections", type=int, default=50, help="WebSockets they share at first (50)"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=1,
        help="users the memory part's sockets sign in as, taking turns (1: one user, whose "
        "sockets share one credentials watch; real sockets mostly belong to different users)",
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
        bare_dramatiq.serve_bare_worker(args.redis_url, args.threads)
        return
    if min(args.jobs, args.throughput_jobs) < 20 or args.clients < 1 or args.threads < 1:
        parser.error("--jobs and --throughput-jobs need at least 20; --clients and --threads 1")
    if args.users < 1:
        parser.error("--users needs at least 1")
    if args.connections < 1 or args.subscriptions % args.connections:
        parser.error("--subscriptions must be a multiple of --connections")
    postgres_url = None if args.sqlite else args.database_url
    print(asyncio.run(run(args, args.redis_url, postgres_url)))


if __name__ == "__main__":
    main()
