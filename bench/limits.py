"""What the default limits still admit, and what the cost analysis itself costs.

Two measurements against a real ``depot serve`` (SQLite, embedded jobs; one
account seeded with ``--files`` files and ``--jobs`` jobs, archives over all
its files and verifications, as in issue 11's repro):

1. **The heaviest admitted query.** Candidate shapes (a files page with its
   jobs and their outputs; jobs with their inputs and those files' jobs;
   aliased file pages) are each tuned, with Depot's own
   :func:`schema.limits.operation_cost`, to the largest pages whose cost the
   default ``DEPOT_GRAPHQL_MAX_COST`` admits; the slowest on the seeded data
   is the heaviest. It runs 4 at a time for ``--seconds`` while another
   client polls ``/healthz``; the report gives the query's latency and
   ``/healthz``'s p50 / p99 beside an idle run of the poller alone. Targets:
   the query under 1 s, ``/healthz`` p99 under 250 ms while it runs.
2. **Cost analysis overhead.** The same ``{ __typename }`` and a typical page
   (``files(first: 20)``) on that server and on a second ``depot serve``
   over the same database whose schema's cost check
   does nothing (:func:`serve_without_cost`), in
   interleaved rounds of sequential requests; the ratio on / off (target:
   under 1.05), and :func:`operation_cost`'s own time per call in process.
3. **Idle WebSockets.** ``--sockets`` signed-in sockets (500) left idle on a
   fresh ``depot serve`` (socket caps lifted): the server's CPU over
   ``--seconds``, with the credential poll every 10 s (the default before
   revocations were pushed) and at the default ``DEPOT_WS_AUTH_RECHECK_SECONDS``. ::

    python -m bench.limits                          # 10 s per load, 5 rounds of 200
    python -m bench.limits --seconds 2 --rounds 1 --requests 20   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from graphql import OperationDefinitionNode, parse

from bench.client import Account, Api, open_socket, payload
from bench.harness import Process, Stack, depot_env, free_port, progress
from bench.report import environment, ms, percentile, table, times, verdict

UPLOAD: Final = (
    "mutation Up($file: Upload!, $path: String) { uploadFile(file: $file, path: $path) { id } }"
)
START: Final = "mutation Start($input: JobInput!) { startJob(input: $input) { id } }"
JOBS_DONE: Final = "{ jobs(first: 100) { edges { node { status } } } }"
FINAL: Final = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
TYPENAME: Final = "{ __typename }"
PAGE: Final = (
    "query Page { files(first: 20) "
    "{ totalCount edges { cursor node { id path size contentType createdAt } } "
    "pageInfo { hasNextPage endCursor } } }"
)
# Candidate shapes of an expensive query; each `first` is a variable tuned to the limit.
SHAPES: Final = {
    "files → jobs → outputs": (
        "query Heavy($a: Int, $b: Int, $c: Int) { files(first: $a) { totalCount edges { node "
        "{ id path size sha256 owner { email } jobs(first: $b) { totalCount edges { node "
        "{ id kind status progress outputs(first: $c) { totalCount edges { node "
        "{ id path size } } } } } } } } } }"
    ),
    "jobs → inputs → jobs": (
        "query Heavy($a: Int, $b: Int, $c: Int) { jobs(first: $a) { edges { node "
        "{ id kind status inputs { id path size jobs(first: $b) { edges { node "
        "{ id status outputs(first: $c) { edges { node { id } } } } } } } } } } }"
    ),
    "3 aliased files pages with jobs": (
        "query Heavy($a: Int, $b: Int, $c: Int) { "
        + " ".join(
            f"{alias}: files(first: $a) {{ edges {{ node {{ id path owner {{ email }} "
            "jobs(first: $b) { edges { node { id status outputs(first: $c) "
            "{ edges { node { id } } } } } } } } }"
            for alias in ("x", "y", "z")
        )
        + " }"
    ),
}
PAGES: Final = (0, 1, 2, 3, 4, 5, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100)
HEALTH_EVERY_S: Final = 0.02
CONCURRENCY: Final = 4


def serve_without_cost() -> None:
    """``depot serve`` whose schema skips the cost analysis: the overhead's baseline.

    Run as ``python -c "from bench.limits import serve_without_cost; serve_without_cost()"
    serve …``. It replaces ``schema.limits.cost_refusal`` (which
    ``schema.operation`` looks up on its module) with one that refuses nothing,
    and ``operation_cost`` with one that costs nothing, so everything else (the
    other limits, the caches, the view) is Depot's own.
    """
    from api.cli import main
    from schema import limits, operation

    setattr(limits, "cost_refusal", lambda *_args: None)  # noqa: B010 - a patch, on purpose
    setattr(operation, "operation_cost", lambda *_args: 0)  # noqa: B010
    main()


# -- the heaviest admitted query ----------------------------------------------------------


def _coster(query: str) -> Callable[[dict[str, Any]], int]:
    """Depot's own cost of ``query`` for given variables (parsed once)."""
    from schema import build_schema
    from schema.limits import operation_cost

    graphql_schema = build_schema()._schema
    document = parse(query)
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    return lambda variables: operation_cost(graphql_schema, document, operation, variables)


def admitted(query: str, max_cost: int) -> tuple[dict[str, int], int]:
    """The pages (``$a``, ``$b``, ``$c``) of the costliest admitted variant of ``query``.

    Ties go to the larger outer page, which touches more rows.
    """
    cost_of = _coster(query)
    best: tuple[int, tuple[int, ...]] = (-1, ())
    for a, b, c in itertools.product(PAGES, repeat=3):
        cost = cost_of({"a": a, "b": b, "c": c})
        if cost <= max_cost and (cost, (a, b, c)) > best:
            best = (cost, (a, b, c))
    cost, (a, b, c) = best
    return {"a": a, "b": b, "c": c}, cost


@dataclass(frozen=True)
class Heavy:
    name: str
    query: str
    variables: dict[str, int]
    cost: int
    seconds: float  # one run, alone
    response_bytes: int


async def _timed(
    client: httpx.AsyncClient, account: Account, query: str, variables: Any
) -> tuple[float, int]:
    started = time.perf_counter()
    response = await client.post(
        "/graphql", json=payload(query, variables), headers=account.headers
    )
    elapsed = time.perf_counter() - started
    body = response.json()
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"the query was refused or failed: {str(body)[:500]}")
    return elapsed, len(response.content)


async def heaviest(url: str, account: Account, max_cost: int) -> list[Heavy]:
    """Every shape at its costliest admitted pages, slowest first."""
    found: list[Heavy] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for name, query in SHAPES.items():
            variables, cost = admitted(query, max_cost)
            await _timed(client, account, query, variables)  # warm the caches
            runs = [await _timed(client, account, query, variables) for _ in range(3)]
            seconds = statistics.median(run[0] for run in runs)
            found.append(Heavy(name, query, variables, cost, seconds, runs[0][1]))
    return sorted(found, key=lambda heavy: heavy.seconds, reverse=True)


async def _poll_health(url: str, stop: asyncio.Event) -> list[float]:
    samples: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = await client.get("/healthz")
            samples.append(time.perf_counter() - started)
            response.raise_for_status()
            await asyncio.sleep(HEALTH_EVERY_S)
    return samples


async def _load(url: str, account: Account, heavy: Heavy, stop: asyncio.Event) -> list[float]:
    samples: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while not stop.is_set():
            samples.append((await _timed(client, account, heavy.query, heavy.variables))[0])
    return samples


@dataclass(frozen=True)
class Loaded:
    idle_health: list[float]
    busy_health: list[float]
    query: list[float]


async def under_load(url: str, account: Account, heavy: Heavy, seconds: float) -> Loaded:
    """``/healthz`` alone, then while ``heavy`` runs CONCURRENCY at a time."""
    stop = asyncio.Event()
    idle = asyncio.create_task(_poll_health(url, stop))
    await asyncio.sleep(seconds)
    stop.set()
    idle_samples = await idle

    stop = asyncio.Event()
    health = asyncio.create_task(_poll_health(url, stop))
    loads = [asyncio.create_task(_load(url, account, heavy, stop)) for _ in range(CONCURRENCY)]
    await asyncio.sleep(seconds)
    stop.set()
    busy = await health
    query = [sample for load in loads for sample in await load]
    return Loaded(idle_samples, busy, query)


# -- cost analysis overhead ---------------------------------------------------------------


async def _sequential(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str], n: int
) -> float:
    """Mean seconds per request over ``n`` sequential requests."""
    started = time.perf_counter()
    for _ in range(n):
        response = await client.post("/graphql", json=body, headers=headers)
        if response.status_code != 200 or "errors" in response.json():
            raise RuntimeError(f"request failed: {response.text[:300]}")
    return (time.perf_counter() - started) / n


async def overhead(
    on_url: str, off_url: str, account: Account, rounds: int, requests: int
) -> dict[str, list[float]]:
    """Ratios on / off per request kind, one per round; the order flips every round."""
    ratios: dict[str, list[float]] = {"{ __typename }": [], "files(first: 20) page": []}
    bodies = {"{ __typename }": payload(TYPENAME), "files(first: 20) page": payload(PAGE)}
    async with (
        httpx.AsyncClient(base_url=on_url, timeout=60) as on,
        httpx.AsyncClient(base_url=off_url, timeout=60) as off,
    ):
        for body in bodies.values():  # warm both
            await _sequential(on, body, account.headers, 20)
            await _sequential(off, body, account.headers, 20)
        for round_ in range(rounds):
            for name, body in bodies.items():
                pair = [(on, "on"), (off, "off")]
                if round_ % 2:
                    pair.reverse()
                means = {
                    side: await _sequential(c, body, account.headers, requests) for c, side in pair
                }
                ratios[name].append(means["on"] / means["off"])
    return ratios


def cost_call_seconds(query: str, variables: dict[str, Any], n: int = 2000) -> float:
    """:func:`operation_cost`'s own time per call, on an already parsed document."""
    cost_of = _coster(query)
    started = time.perf_counter()
    for _ in range(n):
        cost_of(variables)
    return (time.perf_counter() - started) / n


# -- idle sockets -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (``/proc/<pid>/stat``; Linux only)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_sockets(workdir: Path, sockets: int, seconds: float, recheck: str | None) -> float:
    """The share of a core a fresh ``depot serve`` spends on ``sockets`` idle sockets."""
    port = free_port()
    settings = {
        "DEPOT_WS_CONNECTIONS_PER_USER": str(sockets),
        "DEPOT_WS_CONNECTIONS_PER_ADDRESS": str(sockets),
    }
    if recheck is not None:
        settings["DEPOT_WS_AUTH_RECHECK_SECONDS"] = recheck
    name = f"idle-{recheck or 'default'}"
    env = depot_env(workdir / name / "var", workdir / name / "storage", port, **settings)
    stack = Stack(workdir, env, port)
    try:
        serve = await asyncio.to_thread(stack.start_serve)
        api = Api(stack.url)
        try:
            account = await api.register(f"idle-{time.time_ns()}@example.com")
        finally:
            await api.aclose()
        opened = [await open_socket(stack.ws_url, account) for _ in range(sockets)]
        try:
            await asyncio.sleep(2)  # let the sign-ins settle
            used, started = cpu_seconds(serve.pid), time.monotonic()
            await asyncio.sleep(seconds)
            return (cpu_seconds(serve.pid) - used) / (time.monotonic() - started)
        finally:
            for ws in opened:
                await ws.close()
    finally:
        await asyncio.to_thread(stack.stop)


# -- the run ------------------------------------------------------------------------------


async def seed(url: str, files: int, jobs: int) -> Account:
    """One account with ``files`` files and ``jobs`` finished jobs over them."""
    api = Api(url)
    try:
        account = await api.register(f"bench-{time.time_ns()}@example.com")
        ids = [
            (await api.upload(account, UPLOAD, {"path": f"f/{i:03}.txt"}, b"x" * (100 + i)))[
                "uploadFile"
            ]["id"]
            for i in range(files)
        ]
        for j in range(jobs):
            job_input: dict[str, Any] = (
                {"archive": {"fileIds": ids, "path": f"a/{j}.zip"}}
                if j % 2 == 0
                else {"verify": {"fileId": ids[j % len(ids)]}}
            )
            await api.call(START, {"input": job_input}, account)
        deadline = time.monotonic() + 120
        while True:
            edges = (await api.call(JOBS_DONE, {}, account))["jobs"]["edges"]
            if all(edge["node"]["status"] in FINAL for edge in edges):
                return account
            if time.monotonic() > deadline:
                raise RuntimeError("the seeded jobs did not finish within 120 s")
            await asyncio.sleep(0.2)
    finally:
        await api.aclose()


def _summary(samples: list[float]) -> list[str]:
    if len(samples) < 2:
        return [ms(samples[0]) if samples else "-", "-", "-", str(len(samples))]
    return [
        ms(percentile(samples, 50)),
        ms(percentile(samples, 99)),
        ms(max(samples)),
        str(len(samples)),
    ]


def report(
    args: argparse.Namespace,
    max_cost: int,
    candidates: list[Heavy],
    loaded: Loaded,
    ratios: dict[str, list[float]],
    per_call: dict[str, float],
    idle: dict[str, float],
) -> str:
    heavy = candidates[0]
    lines = [
        "bench.limits: what the default limits admit, and the cost analysis' own cost",
        environment("strawberry-graphql", "graphql-core", "uvicorn", "limits"),
        f"depot serve on SQLite, one account with {args.files} files and {args.jobs} jobs; "
        f"DEPOT_GRAPHQL_MAX_COST={max_cost}",
        "",
        "Costliest admitted variant of each shape (one run alone, median of 3):",
        *table(
            [["shape", "pages a/b/c", "cost", "alone", "response"]]
            + [
                [
                    c.name,
                    "/".join(str(c.variables[k]) for k in "abc"),
                    str(c.cost),
                    ms(c.seconds),
                    f"{c.response_bytes / 1024:.0f} KiB",
                ]
                for c in candidates
            ],
            "  ",
        ),
        "",
        f"Heaviest: {heavy.name}, {CONCURRENCY} at a time for {args.seconds:g} s, "
        f"/healthz polled every {HEALTH_EVERY_S * 1000:.0f} ms:",
        *table(
            [
                ["", "p50", "p99", "max", "n"],
                ["heaviest query", *_summary(loaded.query)],
                ["/healthz, idle", *_summary(loaded.idle_health)],
                ["/healthz, under load", *_summary(loaded.busy_health)],
            ],
            "  ",
        ),
    ]
    query_p50 = percentile(loaded.query, 50) if len(loaded.query) > 1 else float("inf")
    health_p99 = percentile(loaded.busy_health, 99) if len(loaded.busy_health) > 1 else float("inf")
    lines += [
        f"  heaviest query p50 under 1 s: {verdict(query_p50 < 1.0)}",
        f"  /healthz p99 under 250 ms while it runs: {verdict(health_p99 < 0.25)}",
        "",
        f"Cost analysis on / off, {args.rounds} rounds of {args.requests} sequential requests:",
        *table(
            [["request", "min", "median", "max", "operation_cost per call"]]
            + [
                [
                    name,
                    times(min(r)),
                    times(statistics.median(r)),
                    times(max(r)),
                    f"{per_call[name] * 1e6:.0f} µs",
                ]
                for name, r in ratios.items()
            ],
            "  ",
        ),
        *[
            f"  {name} overhead under 5 %: {verdict(statistics.median(r) < 1.05)}"
            for name, r in ratios.items()
        ],
    ]
    if idle:
        lines += [
            "",
            f"{args.sockets} idle signed-in WebSockets, server CPU over {args.seconds:g} s:",
            *table(
                [["credential poll", "share of a core"]]
                + [[name, f"{share * 100:.1f} %"] for name, share in idle.items()],
                "  ",
            ),
        ]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    from core.settings import Settings

    max_cost = Settings.model_fields["graphql_max_cost"].default
    with tempfile.TemporaryDirectory(prefix="depot-bench-limits-") as tmp:
        workdir = Path(tmp)
        port, off_port = free_port(), free_port()
        env = depot_env(workdir / "var", workdir / "storage", port)
        stack = Stack(workdir, env, port)
        off: Process | None = None
        try:
            progress("starting depot serve")
            await asyncio.to_thread(stack.start_serve)
            progress(f"seeding {args.files} files and {args.jobs} jobs")
            account = await seed(stack.url, args.files, args.jobs)
            progress("tuning and timing the candidate shapes")
            candidates = await heaviest(stack.url, account, max_cost)
            progress(f"loading with {candidates[0].name}")
            loaded = await under_load(stack.url, account, candidates[0], args.seconds)
            progress("starting depot serve without cost analysis, same database")
            # The same environment: the same secret and issuer, so the same token works.
            off_env = dict(env)
            launcher = ("-c", "from bench.limits import serve_without_cost; serve_without_cost()")
            off_args = [*launcher, "serve", "--host", "127.0.0.1", "--port", str(off_port)]
            off = Process(
                "depot serve without cost analysis", off_args, off_env, workdir / "off.log"
            )
            await asyncio.to_thread(off.wait_until_healthy, f"http://127.0.0.1:{off_port}")
            progress("measuring the cost analysis' overhead")
            ratios = await overhead(
                stack.url, f"http://127.0.0.1:{off_port}", account, args.rounds, args.requests
            )
        finally:
            if off is not None:
                await asyncio.to_thread(off.stop)
            await asyncio.to_thread(stack.stop)
        idle: dict[str, float] = {}
        if args.sockets:
            progress(f"{args.sockets} idle sockets, polling every 10 s, then at the default")
            idle["every 10 s (before)"] = await idle_sockets(
                workdir, args.sockets, args.seconds, "10"
            )
            default = Settings.model_fields["ws_auth_recheck_seconds"].default
            idle[f"every {default:g} s (default), revocations pushed"] = await idle_sockets(
                workdir, args.sockets, args.seconds, None
            )
    per_call = {
        "{ __typename }": cost_call_seconds(TYPENAME, {}),
        "files(first: 20) page": cost_call_seconds(PAGE, {}),
    }
    return report(args, max_cost, candidates, loaded, ratios, per_call, idle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.limits", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="each load run (10)")
    parser.add_argument("--rounds", type=int, default=5, help="overhead rounds (5)")
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per side per round (200)"
    )
    parser.add_argument("--sockets", type=int, default=500, help="idle sockets; 0 skips (500)")
    parser.add_argument("--files", type=int, default=30, help="files seeded (30)")
    parser.add_argument("--jobs", type=int, default=10, help="jobs seeded (10)")
    parser.add_argument(
        "--note", default="", help="a line added to the report (say the machine was loaded)"
    )
    print(asyncio.run(run(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
