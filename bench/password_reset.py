"""``requestPasswordReset`` for an address with an account and one without: the same time?

Each request is the mutation POSTed to ``/graphql`` of the real app,
in-process (httpx's ASGITransport, lifespan started), on a temporary SQLite
database, in development without SMTP (mails go to a temporary outbox). The
two kinds alternate, in a rotating order, so drift affects them alike; the
first round warms up. The ratio of the medians should be about 1.0, or the
answer reveals which addresses have accounts. By construction the request
does the same for both (count the address, hand the actor a message; no SQL):
the difference, if any, is the actor's work, which the embedded mode runs in
this process's threads, beside the requests (``depot worker`` runs it apart).

Run from the repository root: ``.venv/bin/python -m bench.password_reset [--count N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from api.app import create_app
from bench import login
from bench.client import REGISTER, body, payload, registration
from bench.report import environment, percentile, table, times
from core.logging import configure_logging
from core.settings import Settings

EMAIL = "bench@example.com"
UNKNOWN_EMAIL = "nobody@example.com"
ASK = "mutation Ask($email: String!) { requestPasswordReset(email: $email) }"
KINDS = {"account": EMAIL, "no account": UNKNOWN_EMAIL}


def bench_settings(var_dir: Path) -> Settings:
    """The login bench's settings (OWASP's minimum Argon2id cost), with resets unlimited."""
    return login.bench_settings(var_dir, login.OWASP_MINIMUM).model_copy(
        update={
            "password_reset_limit_per_account": login.NO_LIMIT,
            "password_reset_limit_per_address": login.NO_LIMIT,
        }
    )


async def ask(client: httpx.AsyncClient, email: str) -> float:
    """Seconds one ``requestPasswordReset`` takes; it must answer ``true``."""
    started = time.perf_counter()
    answer = body(await client.post("/graphql", json=payload(ASK, {"email": email})))
    elapsed = time.perf_counter() - started
    assert answer == {"data": {"requestPasswordReset": True}}, answer
    return elapsed


async def measure(count: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    kinds = list(KINDS)
    with tempfile.TemporaryDirectory(prefix="depot-bench-") as var_dir:
        async with LifespanManager(create_app(bench_settings(Path(var_dir)))) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                registered = body(
                    await client.post("/graphql", json=payload(REGISTER, registration(EMAIL)))
                )
                assert "errors" not in registered, registered
                for turn in range(count + 1):
                    for kind in kinds[turn % 2 :] + kinds[: turn % 2]:
                        seconds = await ask(client, KINDS[kind])
                        if turn:
                            samples[kind].append(seconds)
    return samples


def report(samples: dict[str, list[float]], count: int) -> str:
    rows = [["address", "median", "p95"]]
    for kind, values in samples.items():
        rows.append(
            [
                kind,
                f"{statistics.median(values) * 1000:.2f} ms",
                f"{percentile(values, 95) * 1000:.2f} ms",
            ]
        )
    known, unknown = (statistics.median(samples[kind]) for kind in KINDS)
    return "\n".join(
        [
            f"requestPasswordReset: {count} of each kind, POST /graphql in-process "
            "(httpx ASGITransport, SQLite, development outbox)",
            environment(),
            "",
            *table(rows),
            "",
            f"median, no account / account: {times(unknown / known)}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200, help="requests of each kind")
    args = parser.parse_args(argv)
    if args.count < 2:
        parser.error("--count must be at least 2")
    configure_logging("WARNING", json=False)
    print(report(asyncio.run(measure(args.count)), args.count))


if __name__ == "__main__":
    main()
