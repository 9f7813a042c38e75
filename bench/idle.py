"""What an idle Depot costs: CPU seconds per second and Redis commands per second.

Starts ``depot serve`` and ``depot worker`` over Redis (``--redis-url``, else
``DEPOT_TEST_REDIS_URL``; with ``--embedded`` only ``depot serve``, which then
runs jobs in its own threads) and a SQLite file, runs one ``verify`` job so that
every thread and connection is warm, waits ``--settle`` seconds, then watches
the quiet stack for ``--seconds``: each process's CPU time (``/proc``, user +
system, every thread) and Redis's ``INFO commandstats`` calls by command.
Nothing else may use that Redis database's server meanwhile (the command
counts are the server's). Linux only.

```console
$ .venv/bin/python -m bench.idle --redis-url redis://127.0.0.1:6379/9
```
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import redis

from bench import harness, redis_claim
from bench.client import Api, socket
from bench.jobs import jobs_env, start_verify, until_final, upload


def _calls(url: str) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    connection = redis.Redis.from_url(url)
    try:
        stats = connection.info("commandstats")
    finally:
        connection.close()
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


async def _one_job(url: str, ws_url: str) -> str:
    """One ``verify`` job, followed to its end: every thread and connection warm; the
    user's id."""
    api = Api(url)
    try:
        account = await api.register("idle@bench.example")
        job_id = await start_verify(api, account, await upload(api, account, "idle.bin"))
        async with socket(ws_url, account) as ws:
            if await until_final(ws, "idle", job_id) != "SUCCEEDED":
                raise RuntimeError("the warm-up job did not succeed")
        return account.user_id
    finally:
        await api.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=os.environ.get("DEPOT_TEST_REDIS_URL"))
    parser.add_argument(
        "--embedded", action="store_true", help="no Redis: depot serve runs the job itself"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    redis_url: str | None = None if args.embedded else args.redis_url
    if not args.embedded and not redis_url:
        raise SystemExit("give --redis-url (or DEPOT_TEST_REDIS_URL), or --embedded")
    known = redis_claim.claim_redis(redis_url) if redis_url else set()
    with tempfile.TemporaryDirectory(prefix="depot-idle-") as workdir:
        root = Path(workdir)
        port = harness.free_port()
        env = jobs_env(root, f"sqlite:///{root / 'depot.db'}", redis_url or "", args.threads, port)
        if not redis_url:
            del env["DEPOT_REDIS_URL"]
        stack = harness.Stack(root, env, port)
        users: list[str] = []
        try:
            processes = {"depot serve": stack.start_serve()}
            if redis_url:
                processes["depot worker"] = stack.start_worker()
            users.append(asyncio.run(_one_job(stack.url, stack.ws_url)))
            time.sleep(args.settle)
            before = {name: harness.cpu_seconds(p.pid) for name, p in processes.items()}
            calls_before = _calls(redis_url) if redis_url else {}
            started = time.monotonic()
            time.sleep(args.seconds)
            elapsed = time.monotonic() - started
            after = {name: harness.cpu_seconds(p.pid) for name, p in processes.items()}
            calls_after = _calls(redis_url) if redis_url else {}
        finally:
            stack.stop()
            if redis_url:
                redis_claim.release_redis(redis_url, known, users)
    load = os.getloadavg()[0]
    print(f"idle for {elapsed:.1f} s, load average {load:.1f}")
    for name in processes:
        print(
            f"{name:>14}: {1000 * (after[name] - before[name]) / elapsed:6.1f} ms of CPU per second"
        )
    if not redis_url:
        return
    deltas = {
        name: calls - calls_before.get(name, 0)
        for name, calls in calls_after.items()
        if calls - calls_before.get(name, 0) > 0 and name != "info"
    }
    total = sum(deltas.values())
    print(f"{'Redis':>14}: {total / elapsed:6.1f} commands per second")
    for name, count in sorted(deltas.items(), key=lambda item: -item[1]):
        print(f"{'':>16}{name}: {count / elapsed:.1f}/s")


if __name__ == "__main__":
    main()
