"""Fixtures: one app and client per database backend, each test on a fresh database.

Async tests run under AnyIO's pytest plugin (``pytestmark = pytest.mark.anyio``):
it sets fixtures up and tears them down in the test's own task, which the
cancel scopes of asgi-lifespan and httpx-ws require.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import boto3
import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from httpx_ws.transport import ASGIWebSocketTransport
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from api.app import create_app
from core.db import create_engine
from core.logging import configure_logging
from core.settings import Settings
from tests.processes import depot_worker
from tests.support import STRONG_SECRET, require_service, storage_root


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DEPOT_* variable or .env file from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("DEPOT_") and not name.startswith("DEPOT_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to an empty database of each kind; PostgreSQL gets a database per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'depot.db'}"
        return
    async with postgres_database() as url:
        yield url


class postgres_database:  # noqa: N801 - used like a function
    """``async with postgres_database() as url``: a throwaway PostgreSQL database."""

    def __init__(self) -> None:
        self.admin_url = require_service("DEPOT_TEST_POSTGRES_URL", "PostgreSQL")
        self.name = f"depot_test_{uuid.uuid4().hex[:16]}"

    async def __aenter__(self) -> str:
        admin = await asyncpg.connect(_plain(self.admin_url))
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()
        return make_url(self.admin_url).set(database=self.name).render_as_string(False)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.drop()

    async def drop(self) -> None:
        """Drop the database now, even with clients connected to it."""
        admin = await asyncpg.connect(_plain(self.admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()


def _plain(url: str) -> str:
    """asyncpg takes postgresql:// URLs without SQLAlchemy's driver suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(False)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "var_dir": tmp_path / "var",
        "secret_key": STRONG_SECRET,
        # OWASP's minimum Argon2id cost: the production default would slow the suite.
        "password_hash_memory_kib": 19456,
        "password_hash_iterations": 2,
        # Tests about files choose their backend; the rest need none in particular.
        "storage_url": "memory://",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url=database_url)


def state_per_request(app: ASGIApp) -> ASGIApp:
    """Give each request its own copy of the lifespan state, as ASGI servers must.

    asgi-lifespan hands every request the one dict the lifespan filled, so
    values a request stores in ``request.state`` would leak into concurrent
    requests; uvicorn copies it per request, and so does this.
    """

    async def copied(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "state" in scope:
            scope = {**scope, "state": dict(scope["state"])}
        await app(scope, receive, send)

    return copied


@asynccontextmanager
async def started(app: ASGIApp) -> AsyncIterator[ASGIApp]:
    """``app`` with its lifespan running, served like uvicorn would (state per request)."""
    # Start-up migrates and starts the in-process workers: generous limits for a busy CI machine.
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        yield state_per_request(manager.app)


@asynccontextmanager
async def serve_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A started app for ``settings`` and an HTTP and WebSocket client for it."""
    async with started(create_app(settings)) as app:
        transport = ASGIWebSocketTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://depot.test") as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(settings) as client:
        yield client


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()


# Loggers whose state configure_logging changes.
_LOGGER_NAMES = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Log records as JSON lines into a buffer; the logging setup is restored afterwards."""
    loggers = [logging.getLogger(name) for name in _LOGGER_NAMES]
    saved = [(logger.level, logger.propagate, logger.disabled) for logger in loggers]
    structlog_config = structlog.get_config()
    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    ours = logging.getLogger().handlers[:]
    yield stream
    for handler in ours:
        logging.getLogger().removeHandler(handler)
    for logger, (level, propagate, disabled) in zip(loggers, saved, strict=True):
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled
    structlog.configure(**structlog_config)


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint for tests: moto's server, on loopback."""

    endpoint_url: str
    region: str = "us-east-1"

    def storage_url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint_url={self.endpoint_url}&region={self.region}"


_AWS_TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "depot-test",
    "AWS_SECRET_ACCESS_KEY": "depot-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No profile, session token or config file from the developer's machine.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}

_AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server as a subprocess for the session, with test credentials in the env."""
    if importlib.util.find_spec("moto.server") is None:
        if os.environ.get("CI"):
            pytest.fail("moto[server] is not installed, but CI must run the S3 tests")
        pytest.skip("moto[server] is not installed; pip install 'moto[server]' to run S3 tests")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_answering(endpoint_url, process)
        with pytest.MonkeyPatch.context() as patch:
            for name in (
                "AWS_PROFILE",
                "AWS_SESSION_TOKEN",
                "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3",
            ):
                patch.delenv(name, raising=False)
            for name, value in _AWS_TEST_ENVIRONMENT.items():
                patch.setenv(name, value)
            yield S3Server(endpoint_url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_answering(endpoint_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"moto's S3 server exited with {process.returncode}")
        try:
            httpx.get(f"{endpoint_url}/", timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
        else:
            return
    pytest.fail(f"moto's S3 server did not answer at {endpoint_url} within 30 s")


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the test S3 server, as a ``DEPOT_STORAGE_URL``."""
    bucket = f"depot-test-{uuid.uuid4().hex[:16]}"
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=s3_server.region)
    try:
        s3.create_bucket(Bucket=bucket)
    finally:
        s3.close()
    return s3_server.storage_url(bucket)


@pytest.fixture
def file_storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a file test keeps its bytes: a local directory, or a fresh S3 bucket.

    Local unless a test asks for both with ``on_local_and_s3`` (or for
    ``"memory"`` by indirect parametrization); the bucket is requested only
    for S3, so tests on local storage never start moto.
    """
    kind = getattr(request, "param", "local")
    if kind == "s3":
        url: str = request.getfixturevalue("s3_url")
        return url
    if kind == "memory":
        return "memory://"
    assert kind == "local", kind
    return storage_root(tmp_path).as_uri()


on_local_and_s3 = pytest.mark.parametrize("file_storage_url", ["local", "s3"], indirect=True)
"""Run a test whose outcome depends on the storage backend on a directory and on S3."""


# -- jobs ---------------------------------------------------------------------------


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def jobs_mode(request: pytest.FixtureRequest) -> str:
    """How jobs run: in the API's own threads, or in a ``depot worker`` process over Redis."""
    mode: str = request.param
    return mode


@pytest.fixture
def jobs_settings(
    jobs_mode: str, tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> Settings:
    """Settings for the job tests: quick heartbeats, storage both processes can reach."""
    overrides: dict[str, object] = {
        "database_url": database_url,
        "storage_url": (tmp_path / "storage").as_uri(),
        "job_heartbeat_seconds": 0.2,
        "job_stale_seconds": 3,
        # As many as run at once, so a user at the limit has every job running.
        "worker_threads": 2,
        "max_running_jobs_per_user": 2,
    }
    if jobs_mode == "redis":
        overrides["redis_url"] = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    return make_settings(tmp_path, **overrides)


@pytest.fixture
async def jobs_client(jobs_settings: Settings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose jobs run in-process, or in a real ``depot worker`` against Redis."""
    if jobs_settings.redis_url is None:
        async with serve_app(jobs_settings) as client:
            yield client
        return
    with depot_worker(jobs_settings, tmp_path / "worker.log"):
        async with serve_app(jobs_settings) as client:
            yield client
