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
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}


@pytest.mark.redis
async def test_readyz_checks_redis(tmp_path: Path) -> None:
    redis_url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    async with serve_app(make_settings(tmp_path, redis_url=redis_url)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "storage": "ok", "redis": "ok"},
    }


async def test_readyz_reports_unreachable_redis_without_its_url(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path, redis_url=CLOSED_PORT_REDIS)) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "storage": "ok", "redis": "unavailable"},
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
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "unavailable", "storage": "ok"},
    }
    # Answered within the probe's timeout, plus some slack for a slow machine.
    assert elapsed < PROBE_TIMEOUT_S + 2


async def test_readyz_checks_local_storage_can_take_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the storage directory should be")
    settings = make_settings(tmp_path, storage_url=(blocker / "storage").as_uri())
    async with serve_app(settings) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "storage": "unavailable"},
    }
    assert "not-a-directory" not in response.text


async def test_readyz_checks_the_s3_bucket(tmp_path: Path, s3_url: str) -> None:
    async with serve_app(make_settings(tmp_path, storage_url=s3_url)) as client:
        ready = await client.get("/readyz")
    missing_bucket = s3_url.replace("s3://", "s3://no-such-bucket-", 1)
    async with serve_app(make_settings(tmp_path, storage_url=missing_bucket)) as client:
        unready = await client.get("/readyz")
    assert (ready.status_code, ready.json()["checks"]["storage"]) == (200, "ok")
    assert (unready.status_code, unready.json()["checks"]["storage"]) == (503, "unavailable")
