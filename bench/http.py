"""HTTP request throughput: Depot's request path next to the libraries under it.

A real ``depot serve`` (uvicorn, one process) and the baselines of
``bench.http_baselines`` (uvicorn, one process) run side by side on this
machine; ``wrk`` (a separate process, ``-t1 -c16`` by default) loads one
target at a time, in interleaved rounds. Each round measures a request on
Depot and on its baseline back to back (the order flips every round), so the
ratio of a round compares two runs under the same conditions; the report
gives min / median / max of those ratios over the rounds. ::

    python -m bench.http                                  # 5 rounds x 5 s, every request
    python -m bench.http --rounds 3 --seconds 5 --requests typename,me
    python -m bench.http --connections 64 --threads 2
    python -m bench.http --requests metrics               # what the metrics cost
    python -m bench.http --requests tracing               # what tracing costs, when on

``metrics`` compares ``{ __typename }`` on Depot with a second ``depot serve``
that has ``DEPOT_METRICS_ENABLED=false``: the ratio is what metrics leave of
the throughput. ``tracing`` compares a third ``depot serve`` that exports every
trace (``OTEL_TRACES_EXPORTER=otlp``, always sampled, to a sink in the
baselines' process) with the untraced one: what switching tracing on costs
(off, it installs nothing).

PostgreSQL (``--database-url``, else ``DEPOT_TEST_POSTGRES_URL``) is needed for
the files page; without it Depot runs on SQLite and that request is skipped.
SQL round trips per request are counted on the wire (``bench.pg_wire``) by a
second, short-lived ``depot serve`` and baseline whose database connections go
through a counting proxy, so the load runs never pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from sqlalchemy import make_url

from bench.client import Account, Api, payload
from bench.harness import (
    Process,
    Stack,
    cpu_seconds,
    depot_env,
    free_port,
    progress,
    throwaway_postgres,
)
from bench.pg_wire import WireCounter, is_bookkeeping, verb
from bench.report import environment, table, times
from schema.ids import decode_id

WRK_MISSING: Final = (
    "bench.http needs wrk (https://github.com/wg/wrk), the load generator, on PATH:\n"
    "  Debian/Ubuntu: sudo apt-get install -y wrk\n"
    "  Fedora: sudo dnf install wrk    macOS: brew install wrk"
)
TYPENAME: Final = "{ __typename }"
HELLO: Final = "{ hello }"
ME: Final = "{ me { id email } }"
FILES: Final = (
    "query Files($first: Int) { files(first: $first) "
    "{ totalCount edges { node { id path size contentType owner { email } } } } }"
)
UPLOAD: Final = (
    "mutation Up($file: Upload!, $path: String) { uploadFile(file: $file, path: $path) { id } }"
)
CREATE_TOKEN: Final = 'mutation { createAccessToken(name: "bench") { token } }'  # noqa: S105
REQUESTS: Final = ("typename", "me", "files", "metrics", "tracing")
# Samples of a counted request; the first few warm the pools and statement caches.
COUNT_WARMUP: Final = 3
COUNT_SAMPLES: Final = 5
WARMUP_S: Final = 1


@dataclass(frozen=True)
class Target:
    """One thing wrk loads: a POST of a JSON body to a URL, with headers."""

    name: str
    url: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def script(self) -> str:
        """wrk's Lua: the method, body and headers of every request."""
        lines = [
            'wrk.method = "POST"',
            f"wrk.body = {_lua_string(_json(self.body))}",
            'wrk.headers["Content-Type"] = "application/json"',
            'wrk.headers["Accept"] = "application/json"',
        ]
        for name, value in self.headers.items():
            lines.append(f"wrk.headers[{_json(name)}] = {_lua_string(value)}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Comparison:
    """A Depot request and the baseline it is measured against."""

    label: str
    depot: Target
    baseline: Target
    ratios: list[float] = field(default_factory=list)
    depot_rps: list[float] = field(default_factory=list)
    baseline_rps: list[float] = field(default_factory=list)
    # The serving process's CPU seconds per request, each round (see `harness.cpu_seconds`).
    depot_cpu: list[float] = field(default_factory=list)
    baseline_cpu: list[float] = field(default_factory=list)

    @property
    def cpu_ratios(self) -> list[float]:
        """Baseline CPU per request over Depot's, per round: read like the req/s ratios."""
        return [b / d for d, b in zip(self.depot_cpu, self.baseline_cpu, strict=True)]


@dataclass
class Trips:
    """SQL round trips of one request, averaged over samples; the last sample's statements."""

    per_request: float
    statements: list[str]

    @property
    def work(self) -> int:
        return sum(1 for sql in self.statements if not is_bookkeeping(sql))

    def summary(self) -> str:
        verbs: dict[str, int] = {}
        for sql in self.statements:
            name = verb(sql) or "ping"
            verbs[name] = verbs.get(name, 0) + 1
        return ", ".join(f"{count} {name}" for name, count in verbs.items())


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _lua_string(text: str) -> str:
    level = "=" * 3
    if f"]{level}]" in text:
        raise ValueError("a body wrk cannot quote")
    return f"[{level}[{text}]{level}]"


# ------------------------------------------------------------------------ the servers


def depot_environment(workdir: Path, port: int, database_url: str) -> dict[str, str]:
    """``depot serve``'s DEPOT_* variables here: the shared ones, PostgreSQL or SQLite."""
    return depot_env(
        workdir / "var",
        workdir / "storage",
        port,
        DEPOT_DATABASE_URL=database_url,
        # Tokens outlive the run, whatever its length.
        DEPOT_ACCESS_TOKEN_MINUTES="720",  # noqa: S106 - a lifetime, not a secret
    )


def start_baselines(workdir: Path, port: int, database_url: str | None, log: str) -> Process:
    """``bench.http_baselines`` on ``port``, once it answers; its files page on ``database_url``."""
    env = {k: v for k, v in os.environ.items() if k != "BENCH_DATABASE_URL"}
    if database_url is not None:
        env["BENCH_DATABASE_URL"] = (
            make_url(database_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
    process = Process(
        "baselines", ["-m", "bench.http_baselines", "--port", str(port)], env, workdir / log
    )
    process.wait_until_healthy(f"http://127.0.0.1:{port}")
    return process


@dataclass(frozen=True)
class Seeded:
    """What the bench created in Depot: an account, its personal token, its files."""

    account: Account
    personal_token: str
    owner: str  # the account's user id as a UUID string

    @property
    def personal_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.personal_token}"}


async def seed(url: str, files: int) -> Seeded:
    api = Api(url)
    try:
        account = await api.register("bench-http@example.com")
        token = (await api.call(CREATE_TOKEN, {}, account))["createAccessToken"]["token"]
        for i in range(files):
            await api.upload(account, UPLOAD, {"path": f"bench/{i:04d}.txt"}, b"depot bench file")
    finally:
        await api.aclose()
    _, key = decode_id(account.user_id)
    return Seeded(account, token, str(key))


def comparisons(
    depot_url: str,
    baseline_url: str,
    seeded: Seeded,
    requests: Sequence[str],
    page: int,
    unmetered_url: str | None = None,
    traced_url: str | None = None,
) -> list[Comparison]:
    jwt = seeded.account.headers
    depot = f"{depot_url}/graphql"
    strawberry = f"{baseline_url}/graphql"
    hello = Target("bare Strawberry { hello }", strawberry, payload(HELLO))
    found: list[Comparison] = []
    if "typename" in requests:
        typename = Target("Depot { __typename }", depot, payload(TYPENAME))
        found += [
            Comparison(
                "{ __typename } / bare Strawberry (caches on)",
                typename,
                Target("bare Strawberry { __typename }", strawberry, payload(TYPENAME)),
            ),
            Comparison(
                "{ __typename } / raw Starlette JSON",
                typename,
                Target("raw Starlette JSON", f"{baseline_url}/json", payload(TYPENAME)),
            ),
        ]
    if "metrics" in requests and unmetered_url is not None:
        found.append(
            Comparison(
                "{ __typename }, metrics on / off",
                Target("Depot { __typename }, metrics on", depot, payload(TYPENAME)),
                Target(
                    "Depot { __typename }, metrics off",
                    f"{unmetered_url}/graphql",
                    payload(TYPENAME),
                ),
            )
        )
    if "tracing" in requests and traced_url is not None:
        found.append(
            Comparison(
                "{ __typename }, tracing on / off",
                Target("Depot { __typename }, traced", f"{traced_url}/graphql", payload(TYPENAME)),
                Target("Depot { __typename }, untraced", depot, payload(TYPENAME)),
            )
        )
    if "me" in requests:
        found += [
            Comparison(
                "me, session JWT / bare { hello }",
                Target("Depot me (JWT)", depot, payload(ME), jwt),
                hello,
            ),
            Comparison(
                "me, personal token / bare { hello }",
                Target("Depot me (personal token)", depot, payload(ME), seeded.personal_headers),
                hello,
            ),
        ]
    if "files" in requests:
        files_body = payload(FILES, {"first": page})
        asyncpg_page = Target(
            "asyncpg files page",
            f"{baseline_url}/files?owner={seeded.owner}&first={page}",
            files_body,
        )
        gzipped = {**jwt, "Accept-Encoding": "gzip"}
        found += [
            Comparison(
                f"files(first: {page}) / asyncpg page",
                Target(f"Depot files({page})", depot, files_body, jwt),
                asyncpg_page,
            ),
            # What compression costs: the same page, gzipped (DEPOT_GZIP_MIN_BYTES).
            Comparison(
                f"files(first: {page}), gzip / asyncpg page",
                Target(f"Depot files({page}), gzip", depot, files_body, gzipped),
                asyncpg_page,
            ),
        ]
    return found


async def answer(client: httpx.AsyncClient, target: Target) -> dict[str, Any]:
    """One request to the target; its JSON, which must carry no GraphQL error."""
    headers = {"accept": "application/json", **target.headers}
    response = await client.post(target.url, json=target.body, headers=headers)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    if result.get("errors") or "data" not in result:
        raise RuntimeError(f"{target.name} answered {result}")
    return result


async def check(runs: list[Comparison]) -> None:
    """Every target answers without error; a files page answers what Depot does."""
    async with httpx.AsyncClient(timeout=30) as client:
        for comparison in runs:
            depot = await answer(client, comparison.depot)
            baseline = await answer(client, comparison.baseline)
            if "files" in depot["data"] and depot != baseline:
                raise RuntimeError(f"the asyncpg page differs from Depot's:\n{baseline}\n{depot}")


# ----------------------------------------------------------------------- round trips


async def count_trips(proxy: WireCounter, client: httpx.AsyncClient, target: Target) -> Trips:
    for _ in range(COUNT_WARMUP):
        await answer(client, target)
    mark = len(proxy.trips)
    for _ in range(COUNT_SAMPLES):
        last = len(proxy.trips)
        await answer(client, target)
    # Give a late COMMIT or ROLLBACK (after the response was sent) time to arrive.
    await asyncio.sleep(0.2)
    return Trips((len(proxy.trips) - mark) / COUNT_SAMPLES, proxy.trips[last:])


async def round_trips(
    workdir: Path, database_url: str, runs: list[Comparison], loaded: Stack, baseline_url: str
) -> dict[str, tuple[Trips, Trips]]:
    """Round trips of each comparison's two sides, through a second Depot and baseline.

    The second Depot shares the first's settings (its secret key and public
    URL included, so the bench's tokens hold) but reaches the database through
    the proxy.
    """
    server = make_url(database_url)
    proxy = WireCounter(server.host or "127.0.0.1", server.port or 5432)
    port = await proxy.start()
    proxied = server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    depot_port, baseline_port = free_port(), free_port()
    # The same public URL too: access tokens name it as their issuer.
    env = dict(loaded.env, DEPOT_DATABASE_URL=proxied)
    stack = Stack(workdir, env, depot_port)
    baselines: Process | None = None
    counted: dict[str, tuple[Trips, Trips]] = {}
    try:
        await asyncio.to_thread(stack.start_serve)
        baselines = await asyncio.to_thread(
            start_baselines, workdir, baseline_port, proxied, "counted-baselines.log"
        )
        async with httpx.AsyncClient(timeout=30) as client:
            for comparison in runs:
                sides = []
                for target, url, own in (
                    (comparison.depot, loaded.url, stack.url),
                    (comparison.baseline, baseline_url, f"http://127.0.0.1:{baseline_port}"),
                ):
                    moved = Target(
                        target.name, target.url.replace(url, own), target.body, target.headers
                    )
                    sides.append(await count_trips(proxy, client, moved))
                counted[comparison.label] = (sides[0], sides[1])
    finally:
        stack.stop()
        if baselines is not None:
            baselines.stop()
        await proxy.stop()
    return counted


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Load:
    """One wrk run: requests per second, and the serving process's CPU per request."""

    rate: float
    cpu_per_request: float


async def wrk(
    target: Target, args: argparse.Namespace, seconds: float, workdir: Path, pid: int
) -> Load:
    """What wrk reaches on the target, and what process ``pid`` (the one serving it) spent
    on each request; any failed request fails the bench."""
    script = workdir / f"{re.sub(r'[^a-z0-9]+', '-', target.name.lower())}.lua"
    script.write_text(target.script(), encoding="utf-8")
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        target.url,
    ]
    cpu_before = cpu_seconds(pid)
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = (await process.communicate())[0].decode()
    cpu = cpu_seconds(pid) - cpu_before
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if process.returncode != 0 or rate is None or count is None or ".lua:" in output:
        raise RuntimeError(f"wrk failed on {target.name}:\n{output}")
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if failed is not None:
        raise RuntimeError(f"{target.name}: {failed.group(1)} responses were not 2xx:\n{output}")
    if "Socket errors" in output:
        progress(f"  {target.name}: {output.strip().splitlines()[-3]}")
    return Load(float(rate.group(1)), cpu / max(int(count.group(1)), 1))


async def measure(
    runs: list[Comparison], args: argparse.Namespace, workdir: Path, pids: dict[str, int]
) -> None:
    """The rounds; ``pids``: the process serving each base URL, whose CPU time is read."""

    def pid(target: Target) -> int:
        return pids[target.url.split("/", 3)[2]]

    targets = {t.name: t for c in runs for t in (c.depot, c.baseline)}
    progress(f"warming up {len(targets)} targets ({WARMUP_S} s each)")
    for target in targets.values():
        await wrk(target, args, WARMUP_S, workdir, pid(target))
    for round_ in range(args.rounds):
        progress(f"round {round_ + 1}/{args.rounds}")
        for comparison in runs:
            order = [comparison.depot, comparison.baseline]
            if round_ % 2:
                order.reverse()  # A B, then B A: drift over a round weighs on both sides
            loads = {t.name: await wrk(t, args, args.seconds, workdir, pid(t)) for t in order}
            depot, baseline = loads[comparison.depot.name], loads[comparison.baseline.name]
            comparison.depot_rps.append(depot.rate)
            comparison.baseline_rps.append(baseline.rate)
            comparison.ratios.append(depot.rate / baseline.rate)
            comparison.depot_cpu.append(depot.cpu_per_request)
            comparison.baseline_cpu.append(baseline.cpu_per_request)


# ---------------------------------------------------------------------------- report


def report(
    runs: list[Comparison],
    trips: dict[str, tuple[Trips, Trips]],
    args: argparse.Namespace,
    encoder: str,
    notes: list[str],
) -> str:
    rows = [["request / baseline", "Depot req/s", "baseline req/s", "min", "median", "max"]]
    cpu_rows = [["request / baseline", "Depot CPU/req", "baseline CPU/req", "min", "median", "max"]]
    for c in runs:
        rows.append(
            [
                c.label,
                f"{statistics.median(c.depot_rps):,.0f}",
                f"{statistics.median(c.baseline_rps):,.0f}",
                times(min(c.ratios)),
                times(statistics.median(c.ratios)),
                times(max(c.ratios)),
            ]
        )
        cpu_rows.append(
            [
                c.label,
                f"{statistics.median(c.depot_cpu) * 1e6:,.0f} µs",
                f"{statistics.median(c.baseline_cpu) * 1e6:,.0f} µs",
                times(min(c.cpu_ratios)),
                times(statistics.median(c.cpu_ratios)),
                times(max(c.cpu_ratios)),
            ]
        )
    lines = [
        f"HTTP throughput: wrk -t{args.threads} -c{args.connections}, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per side; "
        "ratio = Depot / baseline in the same round",
        "",
        *table(rows),
        "",
        "CPU per request of the serving process (user + system, /proc), same rounds; "
        "ratio = baseline CPU / Depot CPU, read like the one above (0.95x: 5 % more CPU). "
        "Steadier than req/s on a shared machine.",
        "",
        *table(cpu_rows),
    ]
    if trips:
        trip_rows = [
            ["SQL round trips per request", "Depot", "besides BEGIN/COMMIT/ping", "baseline"]
        ]
        details: list[str] = []
        for c in runs:
            if c.label in trips:
                depot, baseline = trips[c.label]
                trip_rows.append(
                    [
                        c.label,
                        f"{depot.per_request:g}",
                        str(depot.work),
                        f"{baseline.per_request:g}",
                    ]
                )
                for name, side in ((c.depot.name, depot), (c.baseline.name, baseline)):
                    line = f"  {name}: {side.summary()}"
                    if side.statements and line not in details:
                        details.append(line)
        lines += ["", *table(trip_rows), *details]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    lines += [
        "",
        *notes,
        f"baseline JSON encoder: {encoder}; load average at start "
        + " ".join(f"{x:.2f}" for x in args.load_average),
        (wrk_version.stdout or wrk_version.stderr).strip().splitlines()[0],
        environment(
            "strawberry-graphql", "graphql-core", "starlette", "uvicorn", "sqlalchemy", "asyncpg"
        ),
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- run


@asynccontextmanager
async def database(postgres_url: str | None, workdir: Path) -> AsyncIterator[str | None]:
    if postgres_url is None:
        yield None
        return
    async with throwaway_postgres(postgres_url) as url:
        yield url


async def run(args: argparse.Namespace, postgres_url: str | None) -> str:
    notes: list[str] = []
    requests = list(args.requests)
    if postgres_url is None and "files" in requests:
        requests.remove("files")
        notes.append("files page skipped: no PostgreSQL (--database-url, DEPOT_TEST_POSTGRES_URL)")
    with tempfile.TemporaryDirectory(prefix="depot-bench-http-") as tmp:
        workdir = Path(tmp)
        async with database(postgres_url, workdir) as url:
            depot_db = url or f"sqlite:///{workdir / 'depot.db'}"
            notes.append(f"Depot on {'PostgreSQL' if url else 'SQLite'}, uvicorn, one process")
            port, baseline_port = free_port(), free_port()
            stack = Stack(workdir, depot_environment(workdir, port, depot_db), port)
            # The same Depot without metrics (same secret, so the bench's tokens hold).
            unmetered = Stack(workdir, dict(stack.env, DEPOT_METRICS_ENABLED="false"), free_port())
            # The same Depot exporting every trace to the baselines' sink.
            traced_env = dict(
                stack.env,
                OTEL_TRACES_EXPORTER="otlp",
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{baseline_port}",
                OTEL_TRACES_SAMPLER="always_on",
            )
            traced = Stack(workdir, traced_env, free_port())
            baselines: Process | None = None
            try:
                progress("starting depot serve and the baselines")
                await asyncio.to_thread(stack.start_serve)
                if "metrics" in requests:
                    await asyncio.to_thread(unmetered.start_serve)
                if "tracing" in requests:
                    await asyncio.to_thread(traced.start_serve)
                baselines = await asyncio.to_thread(
                    start_baselines, workdir, baseline_port, url, "baselines.log"
                )
                baseline_url = f"http://127.0.0.1:{baseline_port}"
                async with httpx.AsyncClient() as client:
                    encoder = str((await client.get(f"{baseline_url}/healthz")).json()["encoder"])
                progress(f"seeding an account and {args.files} files")
                seeded = await seed(stack.url, args.files if "files" in requests else 0)
                runs = comparisons(
                    stack.url,
                    baseline_url,
                    seeded,
                    requests,
                    args.files,
                    unmetered.url,
                    traced.url,
                )
                await check(runs)
                trips: dict[str, tuple[Trips, Trips]] = {}
                if url is not None:
                    progress("counting SQL round trips through a proxy")
                    trips = await round_trips(workdir, url, runs, stack, baseline_url)
                servers = [stack, unmetered, traced]
                pids = {
                    f"127.0.0.1:{server.port}": server.serve.pid
                    for server in servers
                    if server.serve is not None
                }
                pids[f"127.0.0.1:{baseline_port}"] = baselines.pid
                await measure(runs, args, workdir, pids)
                await check(runs)  # still answering correctly after the load
            finally:
                stack.stop()
                unmetered.stop()
                traced.stop()
                if baselines is not None:
                    baselines.stop()
    return report(runs, trips, args, encoder, notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--seconds", type=float, default=5, help="seconds per side per round (5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    parser.add_argument(
        "--requests",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=list(REQUESTS),
        help=f"comma-separated, of {','.join(REQUESTS)} (all)",
    )
    parser.add_argument("--files", type=int, default=50, help="files seeded and paged (50)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DEPOT_TEST_POSTGRES_URL"),
        help="a PostgreSQL server to create a throwaway database on "
        "(default: DEPOT_TEST_POSTGRES_URL; none: SQLite, no files page)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.requests) - set(REQUESTS)
    if unknown:
        parser.error(f"unknown requests {sorted(unknown)}; choose from {','.join(REQUESTS)}")
    if not 1 <= args.files <= 100:
        parser.error("--files must be 1..100 (a page holds at most 100)")
    if args.rounds < 1 or args.seconds <= 0 or args.connections < args.threads:
        parser.error("need --rounds >= 1, --seconds > 0 and --connections >= --threads")
    if shutil.which("wrk") is None:
        raise SystemExit(WRK_MISSING)
    args.load_average = os.getloadavg()
    print(asyncio.run(run(args, args.database_url)))


if __name__ == "__main__":
    main()
