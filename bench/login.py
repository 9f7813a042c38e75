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
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from argon2 import PasswordHasher
from asgi_lifespan import LifespanManager

from api.app import create_app
from bench.client import PASSWORD, REGISTER, body, payload, registration
from bench.report import environment, percentile, table, times
from core.logging import configure_logging
from core.passwords import hasher
from core.settings import Settings

EMAIL = "bench@example.com"
UNKNOWN_EMAIL = "nobody@example.com"
WRONG_PASSWORD = "benchmark passphrase 0000000"  # noqa: S105
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
        login_limit_per_account_and_address=NO_LIMIT,
        login_slowdown_per_account=NO_LIMIT,
        login_limit_per_address=NO_LIMIT,
    )


async def post(client: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    return body(await client.post("/graphql", json=payload(query, variables)))


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
                registered = await post(client, REGISTER, registration(EMAIL))
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
    return percentile(samples, 95) * 1000


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
                times(login / verify),
                times(unknown / wrong),
            ]
        )
    production, owasp = (median_ms(samples["login"]) for samples in results.values())
    return "\n".join(
        [
            f"Depot sign-in: {count} of each kind (login, wrong password, unknown email) per "
            "cost, POST /graphql in-process (httpx ASGITransport, SQLite)",
            environment("argon2-cffi"),
            "",
            *table(rows),
            "",
            f"login median, production default / OWASP minimum: {times(production / owasp)}",
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
