"""CPU cost per request, Depot next to its baselines, in one process: figures a busy machine keeps.

``bench.http`` measures throughput, which on a shared machine is mostly the
neighbours' noise. This one measures what a request costs: each target (a
Depot request, or the same on ``bench.http_baselines``' apps) is driven
in-process through its ASGI app by a tiny raw ASGI driver, ``--count``
requests one after the other, and the CPU time of the process for the block
(``time.process_time``, so aiosqlite's thread counts too) is divided by the
count. Waiting (PostgreSQL's own work, the scheduler's other tenants) does
not count; sharing the cores still slows what does a little, so each
target's figure is its cheapest round (``--rounds``, interleaved, the order
flipped every round) and the ratio is the baseline's cost over Depot's: the
throughput Depot would have next to the baseline's on an idle core.

With ``--callgrind`` the same run goes on under Valgrind's callgrind, which
counts instructions: exact and repeatable whatever else runs, about 50 times
slower. The bench re-starts itself under ``valgrind``; each block is
bracketed with ``callgrind_control --zero`` and ``--dump``, and the fixed
cost of that bracket (an empty block) is taken off.

Run from the repository root::

    python -m bench.cost                                  # 20 rounds of 50 requests per target
    python -m bench.cost --database-url postgresql://depot@127.0.0.1:54329/postgres
    python -m bench.cost --callgrind --count 40 --requests typename,me
    python -m bench.cost --profile files --count 200      # where Depot's time goes (cProfile)

The files page's baseline is ``bench.http_baselines``' asyncpg page on
PostgreSQL and, on SQLite, a hand-written page over the standard library's
sqlite3 (:func:`sqlite_files_page`: the same one query and JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from sqlalchemy import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from bench import http_baselines
from bench.client import CSRF, REGISTER, multipart, registration
from bench.harness import Process, depot_env, free_port, progress, throwaway_postgres
from bench.http import CREATE_TOKEN, FILES, HELLO, ME, TYPENAME, UPLOAD
from bench.report import environment, table, times
from core.logging import configure_logging
from schema.ids import decode_id

REQUESTS: Final = ("typename", "me", "token", "files", "metrics", "tracing")
# What the ``tracing`` targets' traced Depot samples by default: every trace.
SAMPLER: Final = "always_on"
UNDER_CALLGRIND: Final = "BENCH_COST_CALLGRIND_DIR"

# ------------------------------------------------------------------ the ASGI driver


class Served:
    """One ASGI app, its lifespan run by hand, and requests sent to it without a server.

    What a server would add (sockets, HTTP parsing) is the same for Depot and a
    baseline, so it is left out; the driver's own cost is a few dict literals.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._lifespan: asyncio.Task[None] | None = None
        self._shutdown = asyncio.Event()

    async def start(self) -> None:
        started = asyncio.get_running_loop().create_future()
        sent_startup = False

        async def receive() -> Message:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set_result(None)
            elif message["type"] == "lifespan.startup.failed":
                started.set_exception(RuntimeError(message.get("message", "startup failed")))

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._lifespan = asyncio.ensure_future(self.app(scope, receive, send))
        await started

    async def stop(self) -> None:
        self._shutdown.set()
        if self._lifespan is not None:
            await self._lifespan

    async def request(
        self, path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path``: the status and the whole answer."""
        raw_path, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [(b"host", b"bench"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("bench", 80),
            # Per request, a shallow copy of the lifespan state, as uvicorn does.
            "state": dict(self.state),
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


@dataclass(frozen=True)
class Target:
    """One request, sent again and again to one app."""

    name: str
    served: Served
    path: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    async def send(self) -> tuple[int, bytes]:
        return await self.served.request(self.path, self.body, self.headers)

    async def checked(self) -> dict[str, Any]:
        """One request that must succeed: its JSON (any error stops the bench)."""
        status, answer = await self.send()
        decoded: dict[str, Any] = json.loads(answer)
        if status != 200 or decoded.get("errors"):
            raise RuntimeError(f"{self.name}: {status} {answer[:500]!r}")
        return decoded


def json_request(query: str, variables: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"query": query, "variables": variables or {}}).encode()


def headers(token: str | None = None, *, gzip: bool = False) -> tuple[tuple[bytes, bytes], ...]:
    pairs = [(b"content-type", b"application/json"), (b"accept", b"application/json")]
    if token is not None:
        pairs.append((b"authorization", f"Bearer {token}".encode()))
    if gzip:
        pairs.append((b"accept-encoding", b"gzip"))
    return tuple(pairs)


# ------------------------------------------------------------------------- meters


class CpuMeter:
    """CPU seconds of this process (every thread) over a block."""

    unit = "µs"
    scale = 1e6

    def __init__(self) -> None:
        self._started = 0.0

    def start(self) -> None:
        self._started = time.process_time()

    def stop(self) -> float:
        return time.process_time() - self._started


class CallgrindMeter:
    """Instructions over a block, counted by the callgrind this process runs under."""

    unit = "k instr"
    scale = 1e-3

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dumps = 0
        self.bracket = 0.0
        self.bracket = min(self._empty() for _ in range(3))

    def _control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True
        )

    def _empty(self) -> float:
        self.start()
        return self.stop()

    def start(self) -> None:
        self._control("--zero")

    def stop(self) -> float:
        self._control("--dump=block")
        self.dumps += 1
        dumped = max(self.directory.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime_ns)
        match = re.search(r"^summary: (\d+)", dumped.read_text(), re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no summary line in {dumped}")
        dumped.unlink()
        return max(float(match[1]) - self.bracket, 0.0)


Meter = CpuMeter | CallgrindMeter


async def block(target: Target, count: int, meter: Meter) -> float:
    """What one request of ``target`` costs, from a block of ``count`` of them."""
    await target.checked()
    gc.collect()
    send = target.send
    meter.start()
    for _ in range(count):
        await send()
    return meter.stop() / count


# -------------------------------------------------------------- the baselines' apps


FILES_PAGE_SQLITE: Final = """
SELECT f.id, f.path, f.size, f.content_type, u.email, count(*) OVER () AS total
FROM file AS f JOIN user AS u ON u.id = f.owner_id
WHERE f.owner_id = ? AND f.trashed_at IS NULL
ORDER BY f.created_at, f.id
LIMIT ?
"""


def sqlite_files_page(database: Path) -> Callable[[Request], Awaitable[Response]]:
    """The asyncpg page's twin on SQLite: one query (stdlib sqlite3, blocking), the same JSON.

    Blocking the loop is what a hand-written page on a local file would do;
    Depot's aiosqlite hops to a thread instead, which is part of its cost.
    """
    connection = sqlite3.connect(database, check_same_thread=False)

    async def page(request: Request) -> Response:
        await request.body()
        owner = uuid.UUID(request.query_params["owner"])
        first = int(request.query_params.get("first", "50"))
        rows = connection.execute(FILES_PAGE_SQLITE, (owner.hex, first)).fetchall()
        edges = [
            {
                "node": {
                    "id": http_baselines._global_id("File", uuid.UUID(row[0])),
                    "path": row[1],
                    "size": row[2],
                    "contentType": row[3],
                    "owner": {"email": row[4]},
                }
            }
            for row in rows
        ]
        total = rows[0][5] if rows else 0
        answer = {"data": {"files": {"totalCount": total, "edges": edges}}}
        return Response(http_baselines.dumps(answer), media_type="application/json")

    return page


def baselines(sqlite_database: Path | None) -> Starlette:
    """``bench.http_baselines``' app, with the SQLite files page added when Depot runs on SQLite."""
    app = http_baselines.create_app()
    if sqlite_database is not None:
        app.router.routes.append(
            Route("/files-sqlite", sqlite_files_page(sqlite_database), methods=["POST"])
        )
    return app


# ---------------------------------------------------------------------------- run


@dataclass
class Comparison:
    label: str
    depot: Target
    baseline: Target
    costs: dict[str, list[float]] = field(default_factory=dict)


async def seed(depot: Served, files: int) -> tuple[str, str, str]:
    """An account, its personal token and ``files`` tiny files: (JWT, token, owner uuid)."""
    register = Target(
        "register",
        depot,
        "/graphql",
        json_request(REGISTER, registration("bench-cost@example.com")),
        headers(),
    )
    result = (await register.checked())["data"]["register"]
    jwt, user_id = result["accessToken"], result["user"]["id"]
    create = Target("token", depot, "/graphql", json_request(CREATE_TOKEN), headers(jwt))
    token = (await create.checked())["data"]["createAccessToken"]["token"]
    for i in range(files):
        request = httpx.Request(
            "POST",
            "http://bench/graphql",
            data=multipart(UPLOAD, {"path": f"bench/{i:04d}.txt"}),
            files={"0": ("bench.txt", b"depot bench file", "text/plain")},
            headers={**CSRF, "authorization": f"Bearer {jwt}"},
        )
        upload = Target(
            "upload",
            depot,
            "/graphql",
            request.read(),
            tuple((k.encode(), v.encode()) for k, v in request.headers.items() if k != "host"),
        )
        await upload.checked()
    _, key = decode_id(user_id)
    return jwt, token, str(key)


@dataclass(frozen=True)
class Observed:
    """The same Depot with metrics off, and traced (each None unless asked for)."""

    unmetered: Served | None = None
    traced: Served | None = None
    sampler: str = SAMPLER


def comparisons(
    depot: Served,
    base: Served,
    seeded: tuple[str, str, str],
    requests: Sequence[str],
    page: int,
    sqlite: bool,
    observed: Observed = Observed(),
) -> list[Comparison]:
    jwt, token, owner = seeded
    strawberry = "/graphql"
    runs: list[Comparison] = []
    depot_typename = Target(
        "Depot { __typename }", depot, "/graphql", json_request(TYPENAME), headers()
    )
    depot_me = Target("Depot me (JWT)", depot, "/graphql", json_request(ME), headers(jwt))
    if observed.unmetered is not None:
        # The same Depot, the same database: only DEPOT_METRICS_ENABLED differs.
        runs.append(
            Comparison(
                "{ __typename }: metrics on / off",
                depot_typename,
                Target(
                    "Depot, metrics off, { __typename }",
                    observed.unmetered,
                    "/graphql",
                    json_request(TYPENAME),
                    headers(),
                ),
            )
        )
    if observed.unmetered is not None and "me" in requests:
        runs.append(
            Comparison(
                "me (JWT): metrics on / off",
                depot_me,
                Target(
                    "Depot, metrics off, me (JWT)",
                    observed.unmetered,
                    "/graphql",
                    json_request(ME),
                    headers(jwt),
                ),
            )
        )
    if observed.traced is not None:
        runs.append(
            Comparison(
                f"{{ __typename }}: traced ({observed.sampler}) / not",
                Target(
                    "Depot traced { __typename }",
                    observed.traced,
                    "/graphql",
                    json_request(TYPENAME),
                    headers(),
                ),
                depot_typename,
            )
        )
    if observed.traced is not None and "me" in requests:
        runs.append(
            Comparison(
                f"me (JWT): traced ({observed.sampler}) / not",
                Target(
                    "Depot traced me (JWT)",
                    observed.traced,
                    "/graphql",
                    json_request(ME),
                    headers(jwt),
                ),
                depot_me,
            )
        )
    if "typename" in requests:
        runs.append(
            Comparison(
                "{ __typename } / bare Strawberry",
                depot_typename,
                Target(
                    "bare Strawberry { __typename }",
                    base,
                    strawberry,
                    json_request(TYPENAME),
                    headers(),
                ),
            )
        )
        runs.append(
            Comparison(
                "{ __typename } / raw Starlette",
                depot_typename,
                Target("raw Starlette JSON", base, "/json", json_request(TYPENAME), headers()),
            )
        )
    hello = Target("bare Strawberry { hello }", base, strawberry, json_request(HELLO), headers())
    if "me" in requests:
        runs.append(
            Comparison(
                "me (JWT) / bare { hello }",
                depot_me,
                hello,
            )
        )
    if "token" in requests:
        runs.append(
            Comparison(
                "me (personal token) / bare { hello }",
                Target(
                    "Depot me (personal token)", depot, "/graphql", json_request(ME), headers(token)
                ),
                hello,
            )
        )
    if "files" in requests:
        path = "/files-sqlite" if sqlite else "/files"
        runs.append(
            Comparison(
                f"files(first: {page}) / hand-written {'sqlite3' if sqlite else 'asyncpg'} page",
                Target(
                    f"Depot files({page})",
                    depot,
                    "/graphql",
                    json_request(FILES, {"first": page}),
                    headers(jwt),
                ),
                Target(
                    "hand-written page",
                    base,
                    f"{path}?owner={owner}&first={page}",
                    json_request(FILES),
                    headers(),
                ),
            )
        )
    return runs


async def check_pages(runs: Sequence[Comparison]) -> None:
    """A files page answers what Depot does (the comparison is of the same work)."""
    for run in runs:
        depot = await run.depot.checked()
        baseline = await run.baseline.checked()
        if "files" in depot["data"] and depot != baseline:
            raise RuntimeError(f"{run.label}: the pages differ:\n{depot}\n{baseline}")


async def measure(runs: list[Comparison], rounds: int, count: int, meter: Meter) -> None:
    targets: dict[str, Target] = {}
    for run in runs:
        targets.setdefault(run.depot.name, run.depot)
        targets.setdefault(run.baseline.name, run.baseline)
    order = list(targets.values())
    for target in order:  # warm-up: pools, statement caches, parser and validation caches
        for _ in range(max(count // 5, 5)):
            await target.send()
    costs: dict[str, list[float]] = {name: [] for name in targets}
    for turn in range(rounds):
        progress(f"round {turn + 1} of {rounds}")
        for target in order if turn % 2 == 0 else order[::-1]:
            costs[target.name].append(await block(target, count, meter))
    for run in runs:
        run.costs = {"depot": costs[run.depot.name], "baseline": costs[run.baseline.name]}


def report(
    runs: Sequence[Comparison], args: argparse.Namespace, meter: Meter, notes: list[str]
) -> str:
    how = "instructions (callgrind)" if isinstance(meter, CallgrindMeter) else "CPU time"
    rows = [
        [
            "request / baseline",
            f"Depot, {meter.unit}/req",
            f"baseline, {meter.unit}/req",
            "ratio (min)",
            "ratio per round (min-max)",
        ]
    ]
    for run in runs:
        depot, base = run.costs["depot"], run.costs["baseline"]
        per_round = [b / d for d, b in zip(depot, base, strict=True)]
        rows.append(
            [
                run.label,
                f"{min(depot) * meter.scale:,.1f}",
                f"{min(base) * meter.scale:,.1f}",
                times(min(base) / min(depot)),
                f"{times(min(per_round))}-{times(max(per_round))}",
            ]
        )
    load = os.getloadavg()[0]
    return "\n".join(
        [
            f"Depot's cost per request next to its baselines: {how}, {args.count} requests "
            f"per block, {args.rounds} rounds, cheapest round; in-process ASGI, no server",
            environment("strawberry-graphql", "graphql-core", "starlette", "sqlalchemy"),
            f"load average at the end: {load:.1f}",
            *notes,
            "",
            *table(rows),
            "",
            "ratio: baseline's cost / Depot's (1.00x = Depot costs what the baseline does)",
        ]
    )


async def run(args: argparse.Namespace) -> str:
    notes: list[str] = []
    meter: Meter
    callgrind_dir = os.environ.get(UNDER_CALLGRIND)
    meter = CallgrindMeter(Path(callgrind_dir)) if callgrind_dir else CpuMeter()
    with tempfile.TemporaryDirectory(prefix="depot-bench-cost-") as tmp:
        workdir = Path(tmp)
        postgres = (
            None
            if args.sqlite
            else (args.database_url or os.environ.get("DEPOT_TEST_POSTGRES_URL"))
        )
        if postgres:
            async with throwaway_postgres(postgres) as url:
                os.environ["BENCH_DATABASE_URL"] = (
                    make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
                )
                notes.append("Depot on PostgreSQL")
                return await _run(args, workdir, url, None, meter, notes)
        database = workdir / "depot.db"
        notes.append("Depot on SQLite")
        return await _run(args, workdir, f"sqlite:///{database}", database, meter, notes)


async def _run(
    args: argparse.Namespace,
    workdir: Path,
    database_url: str,
    sqlite: Path | None,
    meter: Meter,
    notes: list[str],
) -> str:
    from api.app import create_app
    from core.settings import Settings

    env = depot_env(
        workdir / "var",
        workdir / "storage",
        80,
        DEPOT_DATABASE_URL=database_url,
        DEPOT_ACCESS_TOKEN_MINUTES="720",  # noqa: S106 - a lifetime, not a secret
        **dict(args.setting),
    )
    os.environ.clear()
    os.environ.update(env)
    settings = Settings(_env_file=None)
    configure_logging(settings.log_level, json=settings.json_logs)
    served: list[Served] = []
    sink: Process | None = None

    async def started(app: ASGIApp) -> Served:
        one = Served(app)
        await one.start()
        served.append(one)
        return one

    try:
        depot = await started(create_app(settings))
        files = args.files if "files" in args.requests else 0
        progress(f"seeding an account and {files} files")
        seeded = await seed(depot, files)
        base = await started(baselines(sqlite))
        unmetered = None
        if "metrics" in args.requests:
            unmetered = await started(create_app(Settings(_env_file=None, metrics_enabled=False)))
        traced = None
        if "tracing" in args.requests:
            # Last: tracing is one switch per process, and what was built before stays untraced.
            sink = start_trace_sink(workdir)
            configure_traces(sink, args.sampler)
            notes.append(f"traced Depot: OTLP/HTTP to a sink on loopback, sampler {args.sampler}")
            traced = await started(create_app(settings))
        observed = Observed(unmetered, traced, args.sampler)
        runs = comparisons(
            depot, base, seeded, args.requests, args.files, sqlite is not None, observed
        )
        await check_pages(runs)
        if args.profile:
            return await profile(runs, args)
        await measure(runs, args.rounds, args.count, meter)
        await check_pages(runs)
    finally:
        for one in reversed(served):
            await one.stop()
        if sink is not None:
            flush_traces()
            sink.stop()
    return report(runs, args, meter, notes)


def start_trace_sink(workdir: Path) -> Process:
    """``bench.http_baselines`` in a process of its own: it takes OTLP posts and answers 200.

    Its own CPU is not the measuring process's, as a collector's would not be.
    """
    port = free_port()
    sink = Process(
        "trace sink",
        ["-m", "bench.http_baselines", "--port", str(port)],
        dict(os.environ),
        workdir / "sink.log",
    )
    sink.wait_until_healthy(f"http://127.0.0.1:{port}")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    return sink


def configure_traces(sink: Process, sampler: str) -> None:
    """Turn this process's tracing on, as ``OTEL_*`` would in a real one.

    ``sampler`` is ``OTEL_TRACES_SAMPLER``, with ``:ARG`` for its argument
    (``parentbased_traceidratio:0.01``).
    """
    from core.tracing import configure_tracing

    name, _, argument = sampler.partition(":")
    os.environ["OTEL_TRACES_EXPORTER"] = "otlp"
    os.environ["OTEL_TRACES_SAMPLER"] = name
    if argument:
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = argument
    sink.check_alive()
    configure_tracing("depot-bench")


def flush_traces() -> None:
    """Send what the batch processor still holds, so the sink is not stopped under it."""
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush()


async def profile(runs: Sequence[Comparison], args: argparse.Namespace) -> str:
    """Where ``--count`` requests of the Depot target named by ``--profile`` spend their time.

    pyinstrument's sampling profile if it is installed (``pip install pyinstrument``:
    its call tree is what to read), else cProfile's, timed by this thread's CPU
    clock (what it waits for, a database or another thread, does not count).
    cProfile's own cost per call skews it towards code with many small calls.
    """
    wanted, baseline = args.profile.removeprefix("baseline:"), args.profile.startswith("baseline:")
    # By the label's start: "me" is also in "{ __typename }".
    starts = {
        "typename": "{ __typename }",
        "me": "me (JWT)",
        "token": "me (personal",
        "files": "files(",
    }
    run = next(run for run in runs if run.label.startswith(starts.get(wanted, wanted)))
    target = run.baseline if baseline else run.depot
    for _ in range(20):
        await target.send()
    try:
        from pyinstrument import Profiler  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for _ in range(args.count):
            await target.send()
        profiler.disable()
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        if dump := os.environ.get("BENCH_PROFILE_DUMP"):
            stats.dump_stats(dump)  # for pstats' callers/callees, or snakeviz
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("tottime").print_stats(40)
        return f"cProfile of {target.name}, {args.count} requests\n{buffer.getvalue()}"
    sampler = Profiler(interval=0.0002, async_mode="disabled")
    sampler.start()
    for _ in range(args.count):
        await target.send()
    sampler.stop()
    text = sampler.output_text(
        unicode=True, color=False, show_all=bool(os.environ.get("BENCH_PROFILE_ALL"))
    )
    return f"pyinstrument profile of {target.name}, {args.count} requests\n{text}"


def under_callgrind(argv: list[str]) -> int:
    """Run this bench again under callgrind, collecting only between its brackets."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("--callgrind needs Valgrind: sudo apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="depot-bench-callgrind-") as directory:
        env = dict(os.environ, **{UNDER_CALLGRIND: directory})
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={directory}/callgrind.out",
            sys.executable,
            "-m",
            "bench.cost",
            *(arg for arg in argv if arg != "--callgrind"),
        ]
        return subprocess.run(
            command, env=env, check=False, stderr=subprocess.DEVNULL if False else None
        ).returncode


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=50, help="requests per block (50)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    parser.add_argument("--files", type=int, default=50, help="files seeded and paged (50)")
    parser.add_argument(
        "--requests",
        type=lambda s: [r for r in s.split(",") if r],
        default=list(REQUESTS),
        help=f"comma-separated, of {','.join(REQUESTS)} (all)",
    )
    parser.add_argument(
        "--database-url", help="a PostgreSQL server (default DEPOT_TEST_POSTGRES_URL)"
    )
    parser.add_argument("--sqlite", action="store_true", help="SQLite even with PostgreSQL known")
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions under callgrind"
    )
    parser.add_argument(
        "--profile",
        help="profile this Depot request (typename, me, token, files), or its baseline "
        "(baseline:typename, ...)",
    )
    parser.add_argument(
        "--sampler",
        default=SAMPLER,
        help="the tracing targets' OTEL_TRACES_SAMPLER, with :ARG for its argument "
        f"(parentbased_traceidratio:0.01; default {SAMPLER})",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        help="a DEPOT_NAME=value for Depot (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.callgrind and UNDER_CALLGRIND not in os.environ:
        sys.exit(under_callgrind(argv))
    print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
