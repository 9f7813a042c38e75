"""Maintenance: ``depot scheduler`` as a real process, beside the API, against one Redis.

State is set up through GraphQL; time passes by moving timestamps back in the
database (``trashed_at`` a month ago), which is setup, not a stand-in. Each
scheduler writes JSON logs to a file, where its runs are counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from core.db import create_engine, create_sessionmaker
from core.eventlog import MemoryEventLog
from core.migrate import prepare_schema
from core.models import File, Job, JobKind, Upload
from core.settings import Settings
from core.time import utcnow
from storage import open_storage
from tests.conftest import make_settings, on_local_and_s3, serve_app
from tests.support import (
    STRONG_SECRET,
    bearer,
    graphql,
    leftover_objects,
    next_message,
    register,
    require_service,
    start_job,
    storage_root,
    subscribe,
    subscriber,
    update_user,
    upload_file,
    used_bytes,
    wait_for_job,
    write_object,
)
from tests.test_direct_uploads import COMPLETE_UPLOAD, create_upload, put_bytes
from workers.broker import queue_name
from workers.maintenance import run_all
from workers.scheduler import lock_key

pytestmark = pytest.mark.anyio

DEPOT = Path(sys.executable).parent / "depot"
INTERVAL_S = 0.5
RUN_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
DELETE = "mutation Delete($id: ID!) { deleteFile(id: $id) { id } }"
MY_EVENTS = "subscription { myEvents { type fileId path } }"


# ----------------------------------------------------------------- fixtures


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis database, emptied, so no queue or lock of an earlier test is left.

    It is this test run's own (each xdist worker has its own: see conftest's
    ``pytest_configure``), so emptying it touches nobody else.
    """
    url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    yield url
    with redis.Redis.from_url(url) as client:
        for pattern in (lock_key("depot"), "dramatiq:*", "depot:*"):
            for key in client.scan_iter(match=pattern):
                client.delete(key)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, file_storage_url: str, redis_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url=database_url, storage_url=file_storage_url, redis_url=redis_url
    )


# ----------------------------------------------------------------- processes


@dataclass
class Process:
    """A ``depot`` subprocess whose JSON log lines go to a file."""

    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.records() if record.get("event") == event]

    def runs(self) -> list[dict[str, Any]]:
        """Each finished maintenance run, with the count of every task."""
        return self.logged("maintenance finished")

    def stop(self) -> None:
        """SIGTERM, as Docker and Kubernetes stop a container; it must exit cleanly."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"it ignored SIGTERM for {STOP_TIMEOUT_S} s:\n{self.output()}")
        assert code == 0, self.output()


def _environment(settings: Settings, **variables: str) -> dict[str, str]:
    """Only what ``settings`` says (plus PATH, HOME, the test S3 credentials, and
    PYTHONPATH so that a git worktree runs its own code)."""
    return {
        **{name: value for name, value in os.environ.items() if name.startswith("AWS_")},
        **{name: value for name, value in os.environ.items() if name == "PYTHONPATH"},
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(settings.var_dir)),
        "DEPOT_VAR_DIR": str(settings.var_dir),
        "DEPOT_DATABASE_URL": settings.database_url,
        "DEPOT_STORAGE_URL": settings.storage_url,
        "DEPOT_REDIS_URL": settings.redis_url or "",
        "DEPOT_SECRET_KEY": STRONG_SECRET,
        "DEPOT_LOG_FORMAT": "json",
        "DEPOT_MAINTENANCE_INTERVAL_SECONDS": str(INTERVAL_S),
        **variables,
    }


@contextlib.contextmanager
def depot(settings: Settings, *command: str, name: str, **variables: str) -> Iterator[Process]:
    """Run ``depot <command>`` with ``settings``; killed afterwards if still running."""
    log = settings.var_dir.parent / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        popen = subprocess.Popen(
            [str(DEPOT), *command],
            env=_environment(settings, **variables),
            cwd=settings.var_dir.parent,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Process(popen, log)
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait(timeout=STOP_TIMEOUT_S)


def scheduler(
    settings: Settings, name: str = "scheduler", **variables: str
) -> contextlib.AbstractContextManager[Process]:
    return depot(settings, "scheduler", name=name, **variables)


async def wait_for_runs(process: Process, count: int) -> list[dict[str, Any]]:
    with anyio.fail_after(RUN_TIMEOUT_S):
        while len(runs := process.runs()) < count:
            if process.popen.poll() is not None:
                pytest.fail(f"it exited with {process.popen.returncode}:\n{process.output()}")
            await anyio.sleep(0.05)
    return runs


async def until(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    """Wait for ``condition`` to hold, checking it every few milliseconds."""
    with anyio.fail_after(RUN_TIMEOUT_S):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await anyio.sleep(0.05)


async def run_once(settings: Settings, **variables: str) -> Process:
    """Start ``depot scheduler``, let it finish one run, stop it with SIGTERM."""
    with scheduler(settings, **variables) as process:
        await wait_for_runs(process, 1)
        process.stop()
        return process


# ----------------------------------------------------------------- database setup


async def move_back(engine: AsyncEngine, model: Any, path: str, **values: datetime) -> None:
    """Set timestamps of the row of ``model`` (File or Upload) at ``path``: time passing."""
    async with engine.begin() as connection:
        result = await connection.execute(
            update(model).where(col(model.path) == path).values(**values)
        )
    assert result.rowcount == 1, path


async def rows(engine: AsyncEngine, model: Any) -> dict[str, Any]:
    """The rows of ``model`` (File or Upload) by path, read behind the API's back."""
    async with create_sessionmaker(engine)() as db:
        return {row.path: row for row in (await db.exec(select(model))).all()}


def days_ago(days: float) -> datetime:
    return utcnow() - timedelta(days=days)


async def signed_in(client: httpx.AsyncClient, email: str = "ada@example.com") -> dict[str, str]:
    return bearer((await register(client, email=email))["accessToken"])


async def trash(client: httpx.AsyncClient, headers: dict[str, str], file_id: str) -> None:
    body = await graphql(client, DELETE, {"id": file_id}, headers=headers)
    assert "errors" not in body, body


# ----------------------------------------------------------------- tasks


async def test_old_trash_is_purged_and_its_owner_told(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    token = (await register(client))["accessToken"]
    headers = bearer(token)
    old = await upload_file(client, headers, "old.txt", b"o" * 100)
    recent = await upload_file(client, headers, "recent.txt", b"r" * 30)
    await upload_file(client, headers, "live.txt", b"l" * 7)
    await trash(client, headers, old["id"])
    await move_back(engine, File, "old.txt", trashed_at=days_ago(31))
    keys = {path: row.storage_key for path, row in (await rows(engine, File)).items()}
    async with subscriber(client, token) as ws:
        await subscribe(ws, "1", MY_EVENTS, {})
        # Trashing a file is itself an event: once it arrives, the subscription is live.
        await trash(client, headers, recent["id"])
        await move_back(engine, File, "recent.txt", trashed_at=days_ago(29))
        marker = await next_message(ws)
        assert marker["payload"]["data"]["myEvents"]["path"] == "recent.txt"
        process = await run_once(settings)
        purged = await next_message(ws)
    assert purged["payload"]["data"]["myEvents"] == {
        "type": "FILE_DELETED",
        "fileId": old["id"],
        "path": "old.txt",
    }
    assert process.runs()[0]["purge_trash"] == 1
    assert set(await rows(engine, File)) == {"recent.txt", "live.txt"}
    left = leftover_objects(settings)
    assert keys["old.txt"] not in left
    assert {keys["recent.txt"], keys["live.txt"]} <= set(left)
    assert await used_bytes(client, headers) == 37


@on_local_and_s3
async def test_tickets_end_and_stray_objects_go(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    headers = await signed_in(client)
    abandoned = await create_upload(client, headers, path="abandoned.bin", size=10)
    assert (await put_bytes(client, abandoned, b"a" * 10)).status_code < 300
    for path, size in (("done-long-ago.bin", 5), ("done-now.bin", 6)):
        ticket = await create_upload(client, headers, path=path, size=size)
        assert (await put_bytes(client, ticket, b"d" * size)).status_code < 300
        body = await graphql(client, COMPLETE_UPLOAD, {"id": ticket["id"]}, headers=headers)
        assert "errors" not in body, body
    assert await used_bytes(client, headers) == 21
    lifetime = timedelta(minutes=settings.upload_url_minutes)
    now = utcnow()
    await move_back(engine, Upload, "abandoned.bin", expires_at=now - timedelta(seconds=1))
    await move_back(
        engine,
        Upload,
        "done-long-ago.bin",
        created_at=now - lifetime * 2,
        completed_at=now - lifetime - timedelta(minutes=1),
        expires_at=now - lifetime,
    )
    tickets = await rows(engine, Upload)
    # Late PUTs to presigned URLs (which outlive their ticket) after each ticket ended.
    for path in ("done-long-ago.bin", "done-now.bin"):
        write_object(settings, tickets[path].storage_key, b"late")

    process = await run_once(settings)

    assert process.runs()[0]["expire_tickets"] == 2  # one ended, one forgotten
    assert await used_bytes(client, headers) == 11
    after = await rows(engine, Upload)
    assert set(after) == {"abandoned.bin", "done-now.bin"}
    assert after["abandoned.bin"].completed_at is not None
    left = leftover_objects(settings)
    assert tickets["abandoned.bin"].storage_key not in left
    assert tickets["done-long-ago.bin"].storage_key not in left
    # Its URL may still be used: the next runs remove what it leaves.
    assert tickets["done-now.bin"].storage_key in left
    assert set(await rows(engine, File)) == {"done-long-ago.bin", "done-now.bin"}


async def test_wrong_usage_is_recounted(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine
) -> None:
    ada = await signed_in(client)
    bob = await signed_in(client, "bob@example.com")
    await upload_file(client, ada, "kept.txt", b"k" * 10)
    trashed = await upload_file(client, ada, "trashed.txt", b"t" * 5)
    await trash(client, ada, trashed["id"])
    await create_upload(client, ada, path="open.bin", size=20)
    await upload_file(client, bob, "bob.txt", b"b" * 3)
    await update_user(engine, "ada@example.com", used_bytes=999)

    # One run only notices (an upload in flight looks the same); the next one,
    # finding the very same difference, corrects it.
    with scheduler(settings) as process:
        await wait_for_runs(process, 1)
        assert await used_bytes(client, ada) == 999
        await wait_for_runs(process, 2)
        process.stop()

    assert await used_bytes(client, ada) == 35
    assert await used_bytes(client, bob) == 3
    [recounted] = process.logged("usage recounted")
    assert (recounted["was"], recounted["now"]) == (999, 35)
    assert [run["recount_usage"] for run in process.runs()[:2]] == [0, 1]


async def test_a_job_whose_message_was_lost_is_sent_again_and_runs(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine, redis_url: str
) -> None:
    headers = await signed_in(client)
    file = await upload_file(client, headers, "a.bin", b"x" * 1000)
    job = await start_job(client, headers, {"verify": {"fileId": file["id"]}})
    # The message is lost (Redis lost it, or the send after the commit failed).
    with redis.Redis.from_url(redis_url) as queues:
        keys = list(queues.scan_iter(match=f"dramatiq:{queue_name(settings.redis_prefix)}*"))
        assert keys, "the job's message never reached Redis"
        queues.delete(*keys)
    async with engine.begin() as connection:
        await connection.execute(update(Job).values(sent_at=None))

    # Both start at once: a message the scheduler sends before the worker listens
    # waits for it in Redis's queue.
    with depot(settings, "worker", name="worker") as worker, scheduler(settings) as process:
        await until(lambda: "Depot worker running" in worker.output())
        await wait_for_runs(process, 2)
        process.stop()
        try:
            done = await wait_for_job(client, headers, job["id"])
        except TimeoutError:
            pytest.fail(f"the job did not finish:\n{worker.output()}")
        worker.stop()
    assert done["status"] == "SUCCEEDED", done
    [resent] = process.logged("stuck jobs re-sent")
    assert resent["job_ids"] == [str(await only_job_id(engine))]
    # Only once: the job counts as sent until it waited too long again.
    resends = [run["resend_stuck_jobs"] for run in process.runs()]
    assert resends == [1] + [0] * (len(resends) - 1)


async def only_job_id(engine: AsyncEngine) -> uuid.UUID:
    async with create_sessionmaker(engine)() as db:
        return (await db.exec(select(col(Job.id)))).one()


# ----------------------------------------------------------------- schedulers


async def migrated(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a SQLite database with its schema in place, as the API would leave it."""
    settings = make_settings(tmp_path, storage_url=storage_root(tmp_path).as_uri(), **overrides)
    engine = create_engine(settings)
    try:
        await prepare_schema(engine, production=False)
    finally:
        await engine.dispose()
    return settings


async def test_two_schedulers_on_one_redis_take_turns_not_intervals(
    tmp_path: Path, redis_url: str
) -> None:
    # Migrated beforehand: two processes starting at once must not both migrate it.
    settings = await migrated(tmp_path, redis_url=redis_url)
    with scheduler(settings, "first") as first, scheduler(settings, "second") as second:
        await until(lambda: len(first.runs()) + len(second.runs()) >= 6)
        # One of them holds the lock and does every run; the other skips.
        leader, follower = (first, second) if first.runs() else (second, first)
        assert follower.runs() == []
        # Runs keep to the interval's cadence: one started late (a loaded machine) makes
        # the next gap short, so the mean gap is what says one run per interval.
        runs = times(leader)
        mean_gap = (runs[-1] - runs[0]).total_seconds() / (len(runs) - 1)
        assert mean_gap > INTERVAL_S * 0.7, runs
        # A stopping leader gives the lock up: the other takes over at its next run.
        leader.stop()
        await wait_for_runs(follower, 2)
        follower.stop()
    assert times(follower)[0] > times(leader)[-1]


def times(process: Process) -> list[datetime]:
    return [datetime.fromisoformat(run["timestamp"]) for run in process.runs()]


async def test_a_scheduler_without_redis_keeps_trying_and_stops_cleanly(tmp_path: Path) -> None:
    settings = await migrated(tmp_path, redis_url="redis://127.0.0.1:1/0")
    with scheduler(settings) as process:
        with anyio.fail_after(RUN_TIMEOUT_S):
            while len(process.logged("maintenance lock unreachable")) < 2:
                assert process.popen.poll() is None, process.output()
                await anyio.sleep(0.05)
        process.stop()
    assert process.runs() == []


def test_depot_scheduler_needs_redis(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    result = subprocess.run(
        [str(DEPOT), "scheduler"],
        env={**_environment(settings), "DEPOT_REDIS_URL": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S,
        check=False,
    )
    assert result.returncode != 0
    assert "DEPOT_REDIS_URL" in result.stderr


# ----------------------------------------------------------------- in the API process


async def test_the_api_runs_maintenance_itself_without_redis(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=storage_root(tmp_path).as_uri(),
        maintenance_interval_seconds=0.2,
    )
    async with serve_app(settings) as client:
        headers = await signed_in(client)
        old = await upload_file(client, headers, "old.txt", b"o" * 10)
        await upload_file(client, headers, "live.txt", b"l" * 3)
        await trash(client, headers, old["id"])
        engine = create_engine(settings)
        try:
            await move_back(engine, File, "old.txt", trashed_at=days_ago(31))
            # The row goes first, then the bytes.
            await until(lambda: only_live_files(engine, settings))
        finally:
            await engine.dispose()
        assert await used_bytes(client, headers) == 3


async def only_live_files(engine: AsyncEngine, settings: Settings) -> bool:
    live = set(await rows(engine, File)) == {"live.txt"}
    return live and len(leftover_objects(settings)) == 1


async def test_one_failing_task_does_not_stop_the_others(
    client: httpx.AsyncClient, settings: Settings, engine: AsyncEngine, log_stream: io.StringIO
) -> None:
    headers = await signed_in(client)
    old = await upload_file(client, headers, "old.txt", b"o" * 10)
    await trash(client, headers, old["id"])
    await move_back(engine, File, "old.txt", trashed_at=days_ago(31))
    await create_upload(client, headers, path="open.bin", size=20)
    # A broken table: both tasks that read tickets fail.
    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE upload RENAME TO upload_broken"))
    storage = open_storage(settings.storage_url)
    sent: list[uuid.UUID] = []

    async def send(job_id: uuid.UUID, kind: JobKind) -> None:
        sent.append(job_id)

    try:
        done = await run_all(create_sessionmaker(engine), storage, MemoryEventLog(), settings, send)
    finally:
        await storage.aclose()
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE upload_broken RENAME TO upload"))
    assert done == {
        "purge_trash": 1,
        "expire_resumable_uploads": 0,
        "resend_stuck_jobs": 0,
        "advance_pipelines": 0,
        "prune_events": 0,
        "storage_warnings": 0,
    }
    assert await used_bytes(client, headers) == 20
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    failed = [r["task"] for r in records if r["event"] == "maintenance task failed"]
    assert failed == ["expire_tickets", "recount_usage"]
    assert sent == []
