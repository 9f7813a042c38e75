"""SQL round trips per job on the wire: a ``verify`` job, and a three-step pipeline.

::

    $ .venv/bin/python -m bench.job_trips --redis-url redis://127.0.0.1:6379/9

Real processes, as ``bench.jobs`` starts them (``depot serve`` and one
``depot worker`` on a throwaway PostgreSQL database of ``--database-url``,
else ``DEPOT_TEST_POSTGRES_URL``; Redis of ``--redis-url``, the bench's
alone), each reaching PostgreSQL through its own :class:`~bench.pg_wire.WireCounter`.
After ``--warmup`` jobs of each kind, ``--jobs`` verify jobs and
``--pipelines`` pipelines (verify → convert → thumbnails of a small PNG, as
``bench.jobs`` 2c) run one at a time, each started and followed with
``jobEvents`` to its end; the round trips each process made meanwhile are
counted per job, with the transactions (``COMMIT``) and the statements by
their first word. Uploads are outside the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import Counter
from pathlib import Path

from sqlalchemy.engine import make_url

from bench import redis_claim
from bench.client import Api, socket
from bench.harness import Stack, free_port, progress, throwaway_postgres
from bench.jobs import as_pipeline, jobs_env, start_verify, until_final, upload
from bench.pg_wire import WireCounter, verb


def _through(database_url: str, port: int) -> str:
    """``database_url`` pointed at a proxy on 127.0.0.1:``port``."""
    url = make_url(database_url).set(host="127.0.0.1", port=port)
    return url.render_as_string(hide_password=False)


def _per_job(trips: list[str], jobs: int) -> str:
    counts = Counter(verb(sql) or "(ping)" for sql in trips)
    parts = ", ".join(f"{word} {n / jobs:.1f}" for word, n in counts.most_common())
    return f"{len(trips) / jobs:.1f} round trips ({parts})"


def _last(label: str, proxies: dict[str, WireCounter], marks: dict[str, int]) -> list[str]:
    """The last counted job's round trips, process by process, in the order sent."""
    shown = []
    for n, proxy in proxies.items():
        shown.append(f"  the last {label}, {n}:")
        shown.extend(f"    {' '.join(sql.split())[:150]}" for sql in proxy.trips[marks[n] :])
    return shown


async def run(args: argparse.Namespace, postgres_url: str) -> str:
    known = redis_claim.claim_redis(args.redis_url)
    lines = []
    with tempfile.TemporaryDirectory(prefix="depot-bench-") as name:
        workdir = Path(name)
        async with throwaway_postgres(postgres_url) as database_url:
            server = make_url(database_url)
            proxies = {
                "serve": WireCounter(server.host or "127.0.0.1", server.port or 5432),
                "worker": WireCounter(server.host or "127.0.0.1", server.port or 5432),
            }
            ports = {name: await proxy.start() for name, proxy in proxies.items()}
            port = free_port()
            env = jobs_env(workdir, _through(database_url, ports["serve"]), args.redis_url, 2, port)
            stack = Stack(workdir, env, port)
            users: list[str] = []
            try:
                await asyncio.to_thread(stack.start_serve)
                stack.env = {**env, "DEPOT_DATABASE_URL": _through(database_url, ports["worker"])}
                await asyncio.to_thread(stack.start_worker)
                api = Api(stack.url)
                try:
                    account = await api.register("trips@example.com")
                    users.append(account.user_id)
                    file_id = await upload(api, account, "bench/trips.txt")
                    async with socket(stack.ws_url, account) as ws:

                        async def verify(turn: int) -> None:
                            job_id = await start_verify(api, account, file_id)
                            await until_final(ws, f"v{turn}", job_id)

                        async def pipeline(turn: int) -> None:
                            await as_pipeline(api, ws, account, turn)

                        for label, one, count in (
                            ("verify job", verify, args.jobs),
                            ("3-step pipeline", pipeline, args.pipelines),
                        ):
                            progress(f"{label}: {args.warmup} for warm-up, {count} counted…")
                            for turn in range(args.warmup):
                                await one(-1 - turn)
                            counted: dict[str, list[str]] = {n: [] for n in proxies}
                            for turn in range(count):
                                marks = {n: len(p.trips) for n, p in proxies.items()}
                                await one(turn)
                                # The final event can come before the worker is done
                                # with its last round trips: let it settle.
                                await asyncio.sleep(0.2)
                                for n, proxy in proxies.items():
                                    counted[n].extend(proxy.trips[marks[n] :])
                            for n, trips in counted.items():
                                lines.append(f"{label}, {n}: {_per_job(trips, count)}")
                            if args.show:
                                lines.extend(_last(label, proxies, marks))
                finally:
                    await api.aclose()
            finally:
                stack.stop()
                for proxy in proxies.values():
                    await proxy.stop()
                redis_claim.release_redis(args.redis_url, known, users)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10, help="verify jobs counted (10)")
    parser.add_argument("--pipelines", type=int, default=5, help="pipelines counted (5)")
    parser.add_argument("--warmup", type=int, default=3, help="of each, not counted (3)")
    parser.add_argument(
        "--show", action="store_true", help="list the last counted job's statements per process"
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("DEPOT_TEST_REDIS_URL"),
        help="a Redis database no other Depot uses (default: $DEPOT_TEST_REDIS_URL)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DEPOT_TEST_POSTGRES_URL"),
        help="a PostgreSQL server (default: $DEPOT_TEST_POSTGRES_URL)",
    )
    args = parser.parse_args(argv)
    if not args.redis_url or not args.database_url:
        parser.error("give --redis-url and --database-url (or their DEPOT_TEST_* variables)")
    print(asyncio.run(run(args, args.database_url)))


if __name__ == "__main__":
    main()
