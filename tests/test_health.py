"""``/healthz`` and ``/readyz``: liveness, and readiness of each configured service."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from core.probes import PROBE_TIMEOUT_S
from tests.conftest import make_settings, postgres_database, serve_app
from tests.support import require_service

pytestmark = pytest.mark.anyio

# A password and a closed port: the probe fails at once, and the URL must not leak.
CLOSED_PORT_REDIS = "redis://:redis-s3cret@127.0.0.1:1/0"


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    # Without DEPOT_REDIS_URL there is no Redis to check.
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


@pytest.mark.redis
async def test_readyz_checks_redis(tmp_path: Path) -> None:
    redis_url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    async with serve_app(make_settings(tmp_path, redis_url=redis_url)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


async def test_readyz_reports_unreachable_redis_without_its_url(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path, redis_url=CLOSED_PORT_REDIS)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "redis": "unavailable"},
    }
    for secret in ("s3cret", "127.0.0.1", "redis://"):
        assert secret not in response.text


@pytest.mark.postgres
async def test_readyz_notices_a_lost_database(tmp_path: Path) -> None:
    database = postgres_database()
    async with database as url, serve_app(make_settings(tmp_path, database_url=url)) as client:
        assert (await client.get("/readyz")).status_code == 200
        await database.drop()
        started = time.monotonic()
        response = await client.get("/readyz")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "unavailable"}}
    # Answered within the probe's timeout, plus some slack for a slow machine.
    assert elapsed < PROBE_TIMEOUT_S + 2
