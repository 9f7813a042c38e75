"""Sign-in latency through the real GraphQL path, against bare Argon2id verification.

Each sign-in is a ``login`` mutation POSTed to ``/graphql`` of the real app,
in-process (httpx's ASGITransport, lifespan started), on a temporary SQLite
database. Beside it, in the same run, the baseline: ``PasswordHasher.verify``
alone with the same parameters. Both are measured at the production default
Argon2id cost (read from :class:`core.settings.Settings`) and at OWASP's
minimum. Unknown-email and wrong-password sign-ins are timed too: their ratio
should be about 1.0, or sign-in reveals which accounts exist.

Run from the repository root: ``.venv/bin/python -m bench.login [--count N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from argon2 import PasswordHasher
from asgi_lifespan import LifespanManager

from api.app import create_app
from core.logging import configure_logging
from core.passwords import hasher
from core.settings import Settings

EMAIL = "bench@example.com"
UNKNOWN_EMAIL = "nobody@example.com"
# The benchmark account's own throwaway credentials.
PASSWORD = "benchmark passphrase 7f3a9c"  # noqa: S105
WRONG_PASSWORD = "benchmark passphrase 0000000"  # noqa: S105
REGISTER = "mutation Register($input: RegisterInput!) { register(input: $input) { accessToken } }"
LOGIN = "mutation Login($input: LoginInput!) { login(input: $input) { accessToken } }"
# Failed sign-ins are the point here, so the brute-force limits must not kick in.
NO_LIMIT = "1000000/minute"


@dataclass(frozen=True)
class Cost:
    """Argon2id parameters, as Depot's settings name them."""

    label: str
    memory_kib: int
    iterations: int

    def __str__(self) -> str:
        return f"{self.label} (m={self.memory_kib} KiB, t={self.iterations})"


def production_cost() -> Cost:
    fields = Settings.model_fields
    memory = fields["password_hash_memory_kib"].default
    iterations = fields["password_hash_iterations"].default
    assert isinstance(memory, int)
    assert isinstance(iterations, int)
    return Cost("production default", memory, iterations)


OWASP_MINIMUM = Cost("OWASP minimum", 19456, 2)


@dataclass(frozen=True)
class Attempt:
    email: str
    password: str
    succeeds: bool


ATTEMPTS = {
    "login": Attempt(EMAIL, PASSWORD, succeeds=True),
    "wrong password": Attempt(EMAIL, WRONG_PASSWORD, succeeds=False),
    "unknown email": Attempt(UNKNOWN_EMAIL, PASSWORD, succeeds=False),
}
VERIFY = "bare verify"


def bench_settings(var_dir: Path, cost: Cost) -> Settings:
    return Settings(
        _env_file=None,
        environment="development",
        var_dir=var_dir,
        database_url=f"sqlite:///{var_dir / 'depot.db'}",
        redis_url=None,
        secret_key=secrets.token_urlsafe(48),
        password_hash_memory_kib=cost.memory_kib,
        password_hash_iterations=cost.iterations,
        login_limit_per_account=NO_LIMIT,
        login_limit_per_address=NO_LIMIT,
    )


async def post(client: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def sign_in(client: httpx.AsyncClient, attempt: Attempt) -> float:
    """Seconds one ``login`` takes; fails loudly if its outcome is not the expected one."""
    variables = {"input": {"email": attempt.email, "password": attempt.password}}
    started = time.perf_counter()
    body = await post(client, LOGIN, variables)
    elapsed = time.perf_counter() - started
    if attempt.succeeds:
        assert body.get("data", {}).get("login"), body
    else:
        codes = [error["extensions"]["code"] for error in body.get("errors", [])]
        assert codes == ["UNAUTHENTICATED"], body
    return elapsed


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


async def measure(cost: Cost, count: int) -> dict[str, list[float]]:
    """``count`` timings of each kind of sign-in and of bare verification, interleaved.

    Each round runs every kind once, in a rotating order, so that drift (CPU
    frequency, neighbours) affects them alike. The first round warms up.
    """
    reference = hasher(cost.memory_kib, cost.iterations)
    bare = PasswordHasher(
        time_cost=cost.iterations, memory_cost=cost.memory_kib, parallelism=reference.parallelism
    )
    stored = bare.hash(PASSWORD)
    kinds = [*ATTEMPTS, VERIFY]
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="depot-bench-") as var_dir:
        app = create_app(bench_settings(Path(var_dir), cost))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                account = {"email": EMAIL, "password": PASSWORD, "displayName": "Bench"}
                registered = await post(client, REGISTER, {"input": account})
                assert "errors" not in registered, registered
                for turn in range(count + 1):
                    for kind in kinds[turn % len(kinds) :] + kinds[: turn % len(kinds)]:
                        if kind == VERIFY:
                            seconds = timed(lambda: bare.verify(stored, PASSWORD))
                        else:
                            seconds = await sign_in(client, ATTEMPTS[kind])
                        if turn:
                            samples[kind].append(seconds)
    return samples


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def p95_ms(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18] * 1000


def table(rows: list[list[str]]) -> list[str]:
    """Rows as aligned text: the first column to the left, the others to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def report(results: dict[Cost, dict[str, list[float]]], count: int) -> str:
    rows = [
        [
            "Argon2id cost",
            "login median",
            "login p95",
            "verify median",
            "login/verify",
            "unknown/wrong",
        ]
    ]
    for cost, samples in results.items():
        login, verify = median_ms(samples["login"]), median_ms(samples[VERIFY])
        unknown, wrong = median_ms(samples["unknown email"]), median_ms(samples["wrong password"])
        rows.append(
            [
                str(cost),
                f"{login:.1f} ms",
                f"{p95_ms(samples['login']):.1f} ms",
                f"{verify:.1f} ms",
                f"{login / verify:.2f}x",
                f"{unknown / wrong:.2f}x",
            ]
        )
    production, owasp = (median_ms(samples["login"]) for samples in results.values())
    return "\n".join(
        [
            f"Depot sign-in: {count} of each kind (login, wrong password, unknown email) per "
            "cost, POST /graphql in-process (httpx ASGITransport, SQLite)",
            f"Python {platform.python_version()}, argon2-cffi {version('argon2-cffi')}, "
            f"{platform.machine()}, {os.cpu_count()} CPUs",
            "",
            *table(rows),
            "",
            f"login median, production default / OWASP minimum: {production / owasp:.2f}x",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--count", type=int, default=30, help="sign-ins of each kind per cost (default 30)"
    )
    args = parser.parse_args(argv)
    if args.count < 2:
        parser.error("--count must be at least 2")
    # The app logs every request at INFO; that output would bury the report.
    configure_logging("WARNING", json=False)
    results = {
        cost: asyncio.run(measure(cost, args.count)) for cost in (production_cost(), OWASP_MINIMUM)
    }
    print(report(results, args.count))


if __name__ == "__main__":
    main()
