"""Fixtures: one app and client per database backend, each test on a fresh database.

A fresh database is a copy of one migrated once per session (per xdist worker),
so hundreds of tests do not each run every migration; on PostgreSQL one copy
per xdist worker is emptied between tests instead of copied again
(:class:`ReusedPostgresDatabase`). ``make test`` runs the
suite on every core, each worker with a Redis database of its own.

Async tests run under AnyIO's pytest plugin (``pytestmark = pytest.mark.anyio``):
it sets fixtures up and tears them down in the test's own task, which the
cancel scopes of asgi-lifespan and httpx-ws require.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg
import boto3
import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from httpx_ws.transport import ASGIWebSocketTransport
from sqlalchemy import func, or_
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from starlette.types import ASGIApp, Receive, Scope, Send

from api.app import create_app
from core.db import create_engine
from core.logging import configure_logging
from core.migrate import upgrade
from core.models import DeliveryStatus, Job, JobStatus, WebhookDelivery
from core.settings import Settings
from tests.processes import (
    DepotProcess,
    answers_http,
    depot_worker,
    free_port,
    settings_env,
    start_together,
    wait_until_ready,
)
from tests.support import STRONG_SECRET, require_service, storage_root

T = TypeVar("T")


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


def pytest_configure(config: pytest.Config) -> None:
    """Give each xdist worker a Redis database of its own.

    Dramatiq's queue and the maintenance lock have fixed names, so two workers
    sharing a database would take each other's jobs; a database per worker
    keeps them apart. (Pub/Sub channels are global to a Redis server, but
    every event names a stream by a random UUID, so a worker never hears
    another's.)
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    url = os.environ.get("DEPOT_TEST_REDIS_URL")
    if worker is None or not url:
        return
    number = int(urlsplit(url).path.strip("/") or 0) + 1 + int(worker.removeprefix("gw"))
    if number > 15:
        raise pytest.UsageError(
            f"xdist worker {worker} needs Redis database {number}, beyond 15: "
            "point DEPOT_TEST_REDIS_URL at a lower database or run fewer workers"
        )
    os.environ["DEPOT_TEST_REDIS_URL"] = urlsplit(url)._replace(path=f"/{number}").geturl()


SLOW_TESTS = Path(__file__).with_name("slow_tests.txt")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests ``slow_tests.txt`` names first, slowest first; the rest keep their order.

    xdist's worksteal hands each worker a share of the collection and lets an
    idle one take the back half of another's queue: a 40 s test collected last
    would run alone on one core at the end while the others wait. First, the
    short tests fill the gaps around it. An entry is a test id, or a file for all
    of its tests (a module whose fixtures are shared stays together); a name
    that no longer matches only loses its place.
    """
    entries = [
        line.strip()
        for line in SLOW_TESTS.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    rank = {entry: index for index, entry in enumerate(entries)}
    modules: dict[str, int] = {}
    # Tests that can share a worker (:class:`SharedWorker`) keep together: a group
    # moves up as far as the first of its tests the list names.
    groups: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        module = item.nodeid.partition("::")[0]
        modules.setdefault(module, index)
        group = _shared_worker_group(item)
        if group is not None:
            own = rank.get(item.nodeid, rank.get(module, len(rank)))
            groups[module, group] = min(own, groups.get((module, group), len(rank)))

    def place(item: pytest.Item) -> tuple[int, int, str]:
        # Within a module, the tests that can share a worker come last, side by
        # side, those configured alike together.
        module = item.nodeid.partition("::")[0]
        group = _shared_worker_group(item)
        own = rank.get(item.nodeid, rank.get(module, len(rank)))
        return (
            own if group is None else groups[module, group],
            modules[module],
            "" if group is None else f"~{group}",
        )

    items.sort(key=place)


def _run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on an event loop of its own, off the test's (session fixtures are sync)."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, main()).result()


async def _migrate(database_url: str, directory: Path) -> None:
    engine = create_engine(make_settings(directory, database_url=database_url))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; tests get a copy of it."""
    directory = tmp_path_factory.mktemp("sqlite-template")
    path = directory / "template.db"
    _run_async(lambda: _migrate(f"sqlite:///{path}", directory))
    # Disposing the engine checkpointed the WAL: the one file holds the whole database.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def _postgres_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL database migrated to head once per session (and xdist worker).

    ``CREATE DATABASE … TEMPLATE`` copies it, which is much cheaper than
    running every migration again; nobody may be connected to it meanwhile,
    so each xdist worker has its own.
    """
    template = postgres_database()
    url = _run_async(template.__aenter__)
    try:
        _run_async(lambda: _migrate(url, tmp_path_factory.mktemp("postgres-template")))
        yield template.name
    finally:
        _run_async(template.drop)


@pytest.fixture(scope="session")
def _postgres_reused(_postgres_template: str) -> Iterator[ReusedPostgresDatabase]:
    """The one copy of the template this session (xdist worker) hands to test after test."""
    reused = ReusedPostgresDatabase(_postgres_template)
    try:
        yield reused
    finally:
        _run_async(reused.drop)


class ReusedSqliteDatabase:
    """One copy of the SQLite template, emptied between the tests that share a worker.

    Their worker (:class:`SharedWorker`) keeps its database open from test to
    test, so the file stays and its rows go: every table's (foreign keys are off
    on a connection of Python's sqlite3 unless asked for) and the
    ``AUTOINCREMENT`` counters. A schema that differs from the template's (the
    text of every table, index and trigger in ``sqlite_master``, and the
    migration revision) gets a new copy under a new name instead.
    """

    _FINGERPRINT = (
        "SELECT group_concat(type || name || coalesce(sql, ''), '|')"
        " FROM (SELECT * FROM sqlite_master ORDER BY name)"
    )

    def __init__(self, template: Path, directory: Path) -> None:
        self.template = template
        self.directory = directory
        self.path: Path | None = None
        self.fingerprint = self._read(template, self._FINGERPRINT)

    def checkout(self) -> str:
        """The copy's URL, as a fresh copy of the template would be."""
        if self.path is None or not self._empty(self.path):
            self.path = self.directory / f"depot-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(self.template, self.path)
        return f"sqlite:///{self.path}"

    def _empty(self, path: Path) -> bool:
        with contextlib.closing(sqlite3.connect(path)) as connection, connection:
            if self._query(connection, self._FINGERPRINT) != self.fingerprint:
                return False
            tables = [
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%' AND name <> 'alembic_version'"
                )
            ]
            for table in tables:
                connection.execute(f'DELETE FROM "{table}"')  # noqa: S608 - sqlite_master's names
            if connection.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
            ).fetchone():
                connection.execute("DELETE FROM sqlite_sequence")
        return True

    @classmethod
    def _read(cls, path: Path, query: str) -> object:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            return cls._query(connection, query)

    @staticmethod
    def _query(connection: sqlite3.Connection, query: str) -> object:
        fingerprint = connection.execute(query).fetchone()[0]
        revision = connection.execute("SELECT group_concat(version_num) FROM alembic_version")
        return (fingerprint, revision.fetchone()[0])


@pytest.fixture(scope="session")
def _sqlite_reused(
    _sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> ReusedSqliteDatabase:
    return ReusedSqliteDatabase(_sqlite_template, tmp_path_factory.mktemp("sqlite-reused"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to a database of each kind, migrated to head; each test sees it as new.

    Each is a copy of a database migrated once per session, so the app's own
    start finds its schema current; on PostgreSQL the copy is reused, emptied
    between tests (:class:`ReusedPostgresDatabase`). Tests marked
    ``empty_database`` (those about migrating) get a really empty one instead.
    """
    empty = request.node.get_closest_marker("empty_database") is not None
    if request.param == "sqlite" and not empty and _shared_worker_group(request.node) is not None:
        # A test that may share its worker (SharedWorker) needs the worker's database.
        reused_file: ReusedSqliteDatabase = request.getfixturevalue("_sqlite_reused")
        yield reused_file.checkout()
        return
    if request.param == "sqlite":
        path = tmp_path / "depot.db"
        if not empty:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    require_service("DEPOT_TEST_POSTGRES_URL", "PostgreSQL")
    if empty:
        async with postgres_database() as url:
            yield url
        return
    reused: ReusedPostgresDatabase = request.getfixturevalue("_postgres_reused")
    yield await reused.checkout()


# The schema as a checksum: every relation (tables, indexes, sequences, views), column,
# constraint and trigger outside the system schemas, and the migration revision. Equal
# checksums mean a test left the schema as the template has it. ~3 ms.
_SCHEMA_FINGERPRINT = """
SELECT md5(concat_ws('|',
  (SELECT string_agg(format('%s.%s.%s:%s:%s:%s', n.nspname, c.relname, c.relkind,
                            a.attname, a.atttypid, a.attnotnull), ','
                     ORDER BY n.nspname, c.relname, a.attnum)
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')),
  (SELECT string_agg(format('%s:%s', conrelid::regclass, pg_get_constraintdef(oid)), ','
                     ORDER BY conrelid::regclass::text, conname)
     FROM pg_constraint WHERE connamespace = 'public'::regnamespace),
  (SELECT string_agg(format('%s:%s', tgrelid::regclass, tgname), ',' ORDER BY tgname)
     FROM pg_trigger WHERE NOT tgisinternal),
  (SELECT string_agg(version_num, ',') FROM alembic_version)))
"""


class ReusedPostgresDatabase:
    """One copy of the migrated template per xdist worker, emptied between tests.

    Copying the template (``CREATE DATABASE … TEMPLATE``) took 0.16 to 0.26 s per
    test on a quiet machine, ~120 s of the suite's setup over ~700 PostgreSQL
    tests (0.75 s under this machine's load of 9, against 0.09 s to empty
    one). A pool of copies made ahead in a thread would hide that wait behind
    the previous test but still make the server copy every relation's files
    on the disk and cores the tests share. Emptying is less work: end the
    backends a test left in a transaction or holding a lock (their sessions,
    locks and advisory locks go with them; an idle one, a pool's spare
    connection, shows a test nothing), then delete the rows of just the tables that hold
    some (:func:`_delete_rows`), and restart every sequence.

    A test must still see what a fresh copy holds, so the copy is dropped and
    made again whenever emptying cannot promise that: a backend that will not
    end, a prepared transaction, or a schema whose fingerprint
    (:data:`_SCHEMA_FINGERPRINT`: relations, columns, constraints, triggers,
    the migration revision) differs from the template's, say after a test
    renamed a table and failed before renaming it back. Migrations add no
    rows (0010's UPDATE touches an empty table), so empty tables are the
    template's content.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.database: postgres_database | None = None
        self.url = ""
        self.fingerprint: str | None = None
        self.tables: list[str] = []

    async def checkout(self) -> str:
        """The copy's URL, as a fresh copy of the template would be."""
        if self.database is not None and await self._empty():
            return self.url
        await self.drop()
        self.database = postgres_database(template=self.template)
        self.url = await self.database.__aenter__()
        if self.fingerprint is None:
            connection = await asyncpg.connect(_plain(self.url))
            try:
                self.fingerprint = await connection.fetchval(_SCHEMA_FINGERPRINT)
                self.tables = [
                    row["tablename"]
                    for row in await connection.fetch(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                        " AND tablename <> 'alembic_version' ORDER BY tablename"
                    )
                ]
            finally:
                await connection.close()
        return self.url

    async def _empty(self) -> bool:
        """Reset the copy to the template's state; False if only a new copy can."""
        connection = await asyncpg.connect(_plain(self.url))
        try:
            # pg_terminate_backend with a timeout waits until the backend has gone. An
            # idle backend holding no lock keeps nothing a test could see, and may be
            # a worker's pooled connection that the next test uses (SharedWorker).
            ended = await connection.fetchval(
                "SELECT coalesce(bool_and(pg_terminate_backend(pid, 5000)), true)"
                " FROM pg_stat_activity AS a"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND (state IS DISTINCT FROM 'idle'"
                "      OR EXISTS (SELECT FROM pg_locks AS l WHERE l.pid = a.pid))"
            )
            prepared = await connection.fetchval(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"
            )
            if (
                not ended
                or prepared
                or (await connection.fetchval(_SCHEMA_FINGERPRINT) != self.fingerprint)
            ):
                return False
            quoted = [f'"{table}"' for table in self.tables]
            holding = " UNION ALL ".join(
                # The names come from pg_tables, quoted: nothing from a test.
                f"SELECT {index} FROM (SELECT 1 FROM {table} LIMIT 1) AS t{index}"  # noqa: S608
                for index, table in enumerate(quoted)
            )
            dirty = [quoted[row[0]] for row in await connection.fetch(holding)]
            if dirty:
                await _delete_rows(connection, dirty)
            sequences = await connection.fetch(
                "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences"
                " WHERE schemaname = 'public'"
            )
            for (sequence,) in sequences:
                await connection.execute(f"ALTER SEQUENCE {sequence} RESTART")
            return True
        finally:
            await connection.close()

    async def drop(self) -> None:
        if self.database is not None:
            await self.database.drop()
            self.database = None


async def _delete_rows(connection: asyncpg.Connection, tables: list[str]) -> None:
    """Empty ``tables``: DELETE with foreign-key triggers off, else TRUNCATE.

    A test leaves a few rows; deleting them took 2 ms where ``TRUNCATE``, which
    gives every table and index new files, took 40-60 ms. Turning the
    foreign-key triggers off (``session_replication_role``, a superuser's
    right, as the test server's role has) lets the tables go in any order;
    every table with rows is in ``tables``, so none is left pointing nowhere.
    """
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            for table in tables:
                await connection.execute(f"DELETE FROM {table}")  # noqa: S608 - pg_tables' names
    except asyncpg.InsufficientPrivilegeError:
        await connection.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


class postgres_database:  # noqa: N801 - used like a function
    """``async with postgres_database() as url``: a throwaway PostgreSQL database.

    Empty, or a copy of the database named ``template``.
    """

    def __init__(self, *, template: str | None = None) -> None:
        self.admin_url = require_service("DEPOT_TEST_POSTGRES_URL", "PostgreSQL")
        self.name = f"depot_test_{uuid.uuid4().hex[:16]}"
        self.template = template

    async def __aenter__(self) -> str:
        admin = await asyncpg.connect(_plain(self.admin_url))
        copy = "" if self.template is None else f' TEMPLATE "{self.template}"'
        try:
            await admin.execute(f'CREATE DATABASE "{self.name}"{copy}')
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


_PER_ADDRESS_LIMITS = (
    "register_limit_per_address",
    "upload_limit_per_address",
    "job_limit_per_address",
    "access_token_limit_per_address",
    "refresh_failure_limit_per_address",
    "password_failure_limit_per_address",
    "password_reset_limit_per_address",
    "verification_mail_limit_per_address",
)


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "var_dir": tmp_path / "var",
        "secret_key": STRONG_SECRET,
        # OWASP's minimum Argon2id cost: the production default would slow the suite.
        "password_hash_memory_kib": 19456,
        "password_hash_iterations": 2,
        # Tests about files choose their backend; the rest need none in particular.
        "storage_url": "memory://",
        # The webhook dispatcher's look for due deliveries is a query every poll: the
        # tests that count statements must not see it. Webhook tests poll quickly.
        "webhook_poll_seconds": 60,
        # No verification mail at each registration: its actor's work would run beside
        # every test's (statements counted, worker threads started). tests/test_mail.py
        # turns it on.
        "email_verification": False,
        # Tests change users' rows behind the API's back (tests.support.update_user) and
        # expect the next request to see it: no sign-in cache, but in the tests of it.
        "sign_in_cache_seconds": 0,
        # Redis outlives a test and every test client has one address (127.0.0.1): its
        # per-address counters would add up over the whole run. Tests of a limit set it.
        **(
            dict.fromkeys(_PER_ADDRESS_LIMITS, "1000000/hour") if overrides.get("redis_url") else {}
        ),
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
    port = free_port()
    endpoint_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_ready(process, answers_http(f"{endpoint_url}/", None), "moto's S3 server")
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


def _shared_worker_group(item: pytest.Item | None) -> str | None:
    """How a test that may share a ``depot worker`` configures it, or None if it may not.

    Tests of ``jobs_client`` in Redis mode: their database is one copy per xdist
    worker (:class:`ReusedPostgresDatabase`, :class:`ReusedSqliteDatabase`), so
    their workers' settings differ only by ``@pytest.mark.settings``. The tests of
    webhook deliveries too: those that failed sharing one at a load of 25 met a
    worker started again, on the session's one log, taken as running while it
    still imported (:meth:`tests.processes.DepotProcess.wait_for_output`), and a
    receiver that counted a cut connection as a request (``tests/test_webhooks.py``).
    """
    callspec = getattr(item, "callspec", None)
    if (
        item is None
        or callspec is None
        or "jobs_client" not in getattr(item, "fixturenames", ())
        or callspec.params.get("jobs_mode") != "redis"
    ):
        return None
    marker = item.get_closest_marker("settings")
    overrides: dict[str, object] = {} if marker is None else marker.kwargs
    return f"{callspec.params.get('database_url')} {sorted(overrides.items())!r}"


class SharedWorker:
    """The one ``depot worker`` that consecutive job tests configured alike share.

    Starting a worker cost each Redis job test ~1.5 s of CPU, most of it Python
    importing Depot. A worker is kept only while it is idle between tests: no job
    queued or running and no webhook delivery due (:meth:`idle`), its test passed,
    and the next test is configured alike (``pytest_runtest_teardown``). Otherwise
    it is stopped with SIGTERM, as a test's own worker is. Only one runs at a time
    in an xdist worker: two would take each other's jobs from the queue of their
    Redis database, and each dispatches the webhook deliveries of the database.
    """

    def __init__(self) -> None:
        self._env: dict[str, str] | None = None
        self._running: contextlib.AbstractContextManager[DepotProcess] | None = None
        self._process: DepotProcess | None = None

    @contextlib.contextmanager
    def serving(self, settings: Settings, log: Path) -> Iterator[DepotProcess]:
        """The worker for ``settings``, started unless it runs already; it stays after."""
        env = settings_env(settings)
        if self._process is None or self._env != env or self._process.process.poll() is not None:
            self.stop()
            running = depot_worker(settings, log)
            self._process = running.__enter__()
            self._running, self._env = running, env
        yield self._process

    def stop(self) -> None:
        running, self._running, self._process, self._env = self._running, None, None, None
        if running is not None:
            running.__exit__(None, None, None)

    async def idle(self, settings: Settings) -> bool:
        """No job queued or running, and no webhook delivery pending or to be retried."""
        engine = create_engine(settings)
        try:
            async with engine.connect() as connection:
                busy = await connection.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(col(Job.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                )
                due = await connection.scalar(
                    select(func.count())
                    .select_from(WebhookDelivery)
                    .where(
                        or_(
                            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                            col(WebhookDelivery.next_retry_at).is_not(None),
                        )
                    )
                )
        finally:
            await engine.dispose()
        return not busy and not due


_SHARED_WORKER = pytest.StashKey[SharedWorker]()
_PASSED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def shared_worker(request: pytest.FixtureRequest) -> Iterator[SharedWorker]:
    worker = SharedWorker()
    request.config.stash[_SHARED_WORKER] = worker
    try:
        yield worker
    finally:
        worker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Stop the shared worker after a test unless the next one can use it as it is."""
    result = yield
    worker = item.config.stash.get(_SHARED_WORKER, None)
    group = _shared_worker_group(item)
    if worker is not None and (group is None or _shared_worker_group(nextitem) != group):
        worker.stop()
    return result


@pytest.fixture
def jobs_settings(
    jobs_mode: str,
    tmp_path: Path,
    database_url: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Settings for the job tests: quick heartbeats, storage both processes can reach.

    A test that may share its worker (:class:`SharedWorker`) keeps its files, and
    the app its ``var`` directory, in one directory of the session's, as the
    worker's settings must be the same from test to test.
    """
    directory = tmp_path
    if _shared_worker_group(request.node) is not None:
        directory = tmp_path_factory.getbasetemp() / "shared-worker"
        directory.mkdir(exist_ok=True)
    overrides: dict[str, object] = {
        "database_url": database_url,
        "storage_url": (directory / "storage").as_uri(),
        "job_heartbeat_seconds": 0.2,
        "job_stale_seconds": 3,
        # As many as run at once, so a user at the limit has every job running.
        "worker_threads": 2,
        "max_running_jobs_per_user": 2,
    }
    if jobs_mode == "redis":
        overrides["redis_url"] = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    marker = request.node.get_closest_marker("settings")
    if marker is not None:
        overrides.update(marker.kwargs)
    return make_settings(directory, **overrides)


@pytest.fixture
async def jobs_client(
    jobs_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose jobs run in-process, or in a real ``depot worker`` against Redis."""
    if jobs_settings.redis_url is None:
        async with serve_app(jobs_settings) as client:
            yield client
        return
    # The worker process imports Depot while the app starts: one wait, not two. The
    # database is migrated already (a template's copy), so neither migrates it.
    if _shared_worker_group(request.node) is None:
        async with AsyncExitStack() as stack:
            client, _ = await start_together(
                stack,
                serve_app(jobs_settings),
                depot_worker(jobs_settings, tmp_path / "worker.log"),
            )
            yield client
        return
    shared: SharedWorker = request.getfixturevalue("shared_worker")
    log = Path(jobs_settings.var_dir).parent / "worker.log"
    async with AsyncExitStack() as stack:
        client, _ = await start_together(
            stack, serve_app(jobs_settings), shared.serving(jobs_settings, log)
        )
        yield client
    if not (request.node.stash.get(_PASSED, False) and await shared.idle(jobs_settings)):
        await anyio.to_thread.run_sync(shared.stop)
