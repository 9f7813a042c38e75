"""Jobs when real processes die: a worker killed mid-job, the API restarted under a
subscriber, two API replicas on one Redis, and Redis itself going away.

Every part is real: ``depot worker``, ``depot scheduler`` and ``depot serve``
as processes, a ``redis-server`` of each test's own (its queue, event streams
and maintenance lock meet no other test's, and it can be stopped), SQLite or
PostgreSQL, and storage in a local directory every process reaches. The slow
job is an ``extract`` of a zip with many small entries: each becomes a file,
so it runs for seconds and leaves outputs behind at any moment.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketNetworkError
from sqlalchemy import update
from sqlmodel import col, select

from core.db import create_engine, create_sessionmaker
from core.models import File, Job
from core.settings import Settings
from core.time import utcnow
from schema.ids import decode_id
from tests.conftest import make_settings, serve_app
from tests.processes import (
    RedisServer,
    depot_scheduler,
    depot_serve,
    depot_worker,
    free_port,
    in_background,
    redis_server,
    start_together,
)
from tests.support import (
    JOB_EVENTS,
    collect_job_events,
    graphql,
    leftover_objects,
    many_entries_zip,
    next_message,
    signed_in,
    start_job,
    storage_root,
    subscribe,
    subscriber,
    upload_file,
    used_bytes,
    wait_for_job,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

# Long enough that a kill or a stop lands mid-job on a fast machine: after the
# MADE_BEFORE_KILL outputs the test waits for, over 250 are left (a stop's
# 0.2 s grace takes many more now that an entry costs no transaction: its row is
# written with the job's success); each entry more is one more for the next
# worker to make again.
ENTRIES = 300
# Outputs the first attempt has made when its worker is killed.
MADE_BEFORE_KILL = 40
WAIT_S = 40
PROGRESS = "query P($id: ID!) { job(id: $id) { status attempts progress outputs { totalCount } } }"
MY_EVENTS = "subscription { myEvents { cursor type fileId jobId status } }"
DELETE = "mutation D($id: ID!) { deleteFile(id: $id) { id } }"


def fault_settings(tmp_path: Path, database_url: str, redis_url: str, **overrides: Any) -> Settings:
    """Quick heartbeats and maintenance, storage that every process reaches."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "storage_url": storage_root(tmp_path).as_uri(),
        "job_heartbeat_seconds": 0.2,
        "job_stale_seconds": 2,
        "job_resend_after_seconds": 2,
        "maintenance_interval_seconds": 0.5,
        **overrides,
    }
    return make_settings(tmp_path, **values)


@asynccontextmanager
async def private_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with in_background(redis_server(tmp_path / "redis")) as server:
        yield server


async def _progress(
    client: httpx.AsyncClient, headers: dict[str, str], job_id: str
) -> dict[str, Any]:
    body = await graphql(client, PROGRESS, {"id": job_id}, headers=headers)
    assert "errors" not in body, body
    job: dict[str, Any] = body["data"]["job"]
    return job


async def _wait_until(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    job_id: str,
    condition: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """Poll the job (status, attempts, progress, output count) until ``condition`` holds."""
    with anyio.fail_after(WAIT_S):
        while not condition(job := await _progress(client, headers, job_id)):
            assert job["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"), job
            await anyio.sleep(0.02)
    return job


async def _extract_under_way(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    """An ``extract`` of ``ENTRIES`` entries, once it has stored ``MADE_BEFORE_KILL`` of them
    (their rows are written when the job succeeds; its progress counts the bytes)."""
    archive = await upload_file(client, headers, "many.zip", many_entries_zip(ENTRIES))
    job = await start_job(client, headers, {"extract": {"fileId": archive["id"], "path": "out"}})
    await _wait_until(
        client,
        headers,
        job["id"],
        lambda j: j["status"] == "RUNNING" and j["progress"] >= MADE_BEFORE_KILL / ENTRIES,
    )
    return job


def _key(global_id: str) -> uuid.UUID:
    return decode_id(global_id)[1]


async def _rows(settings: Settings) -> list[File]:
    """Every ``file`` row, read behind the API's back."""
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as db:
            return list(await db.exec(select(File)))
    finally:
        await engine.dispose()


async def _set_max_attempts(settings: Settings, job_id: uuid.UUID, value: int) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(Job).where(col(Job.id) == job_id).values(max_attempts=value)
            )
    finally:
        await engine.dispose()


async def _all_events(client: httpx.AsyncClient, token: str, job_id: str) -> list[dict[str, Any]]:
    """The job's whole event list, from a subscription that starts at the beginning."""
    async with subscriber(client, token) as ws:
        return await collect_job_events(ws, "all", job_id)


def _assert_one_final_status(events: list[dict[str, Any]], status: str) -> None:
    finals = [e["status"] for e in events if e["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")]
    assert finals == [status], [e["status"] for e in events]
    assert events[-1]["status"] == status
    cursors = [tuple(map(int, e["cursor"].split("-"))) for e in events]
    assert cursors == sorted(set(cursors)), "cursors grow, without duplicates"


async def _assert_storage_matches_rows(
    client: httpx.AsyncClient, headers: dict[str, str], settings: Settings
) -> list[File]:
    """No object without a row, no row without an object, usage exactly the files' sizes.

    Exactly, with no recount by maintenance: a job's output rows and the quota
    their bytes take are written together with its success (``core.jobs.finish``),
    so a worker SIGKILLed mid-job leaves neither reserved bytes nor rows.
    """
    rows = await _rows(settings)
    expected = sum(f.size for f in rows)
    assert await used_bytes(client, headers) == expected
    objects, keys = set(leftover_objects(settings)), {f.storage_key for f in rows}
    assert sorted(keys - objects) == [], "file rows whose object is missing"
    assert sorted(objects - keys) == [], "objects that no file row names"
    return rows


# -- a worker killed mid-job ---------------------------------------------------------


async def test_a_job_whose_worker_is_killed_is_taken_over_and_ends_once(
    tmp_path: Path, database_url: str
) -> None:
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(private_redis(tmp_path))
        settings = fault_settings(tmp_path, database_url, redis.url)
        client, worker_a = await start_together(
            stack, serve_app(settings), depot_worker(settings, tmp_path / "worker-a.log")
        )
        token, headers = await signed_in(client)
        job = await _extract_under_way(client, headers)
        await anyio.to_thread.run_sync(worker_a.kill)
        assert [f.path for f in await _rows(settings)] == ["many.zip"], "no output row yet"
        staged = [k for k in leftover_objects(settings) if f"/j/{_key(job['id']).hex}/" in k]
        assert MADE_BEFORE_KILL - 1 <= len(staged) < ENTRIES, "killed mid-job"

        # Maintenance sends the job again once its heartbeat is stale; B takes it over.
        scheduler = await stack.enter_async_context(
            in_background(depot_scheduler(settings, tmp_path / "scheduler.log"))
        )
        await stack.enter_async_context(
            in_background(depot_worker(settings, tmp_path / "worker-b.log"))
        )
        await _wait_until(client, headers, job["id"], lambda j: j["attempts"] == 2)
        # From here on no recount of usage papers over a mistake in the accounting.
        await anyio.to_thread.run_sync(scheduler.stop)
        done = await wait_for_job(client, headers, job["id"], seconds=WAIT_S)

        assert done["status"] == "SUCCEEDED", done
        assert done["attempts"] == 2
        assert done["outputs"]["totalCount"] == ENTRIES
        _assert_one_final_status(await _all_events(client, token, job["id"]), "SUCCEEDED")
        rows = await _rows(settings)
        outputs = sorted(f.path for f in rows if f.produced_by_job_id == _key(job["id"]))
        assert outputs == [f"out/entry-{i:05}.txt" for i in range(ENTRIES)]
        assert len(rows) == ENTRIES + 1, "the archive and its entries, nothing else"
        await _assert_storage_matches_rows(client, headers, settings)


async def test_a_job_out_of_attempts_when_its_worker_dies_fails_saying_so(
    tmp_path: Path, database_url: str
) -> None:
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(private_redis(tmp_path))
        settings = fault_settings(tmp_path, database_url, redis.url)
        client, worker_a = await start_together(
            stack, serve_app(settings), depot_worker(settings, tmp_path / "worker-a.log")
        )
        token, headers = await signed_in(client)
        job = await _extract_under_way(client, headers)
        # This attempt is the job's last one.
        await _set_max_attempts(settings, _key(job["id"]), 1)
        await anyio.to_thread.run_sync(worker_a.kill)

        await start_together(
            stack,
            depot_scheduler(settings, tmp_path / "scheduler.log"),
            depot_worker(settings, tmp_path / "worker-b.log"),
        )
        done = await wait_for_job(client, headers, job["id"], seconds=WAIT_S)

        assert done["status"] == "FAILED", done
        assert "worker" in done["error"], done["error"]
        assert done["attempts"] == 1
        assert done["outputs"]["totalCount"] == 0
        # No recount needed: the dead attempt's outputs had no rows and reserved nothing.
        rows = await _assert_storage_matches_rows(client, headers, settings)
        assert [f.path for f in rows] == ["many.zip"], "the partial outputs are gone"
        _assert_one_final_status(await _all_events(client, token, job["id"]), "FAILED")


# -- a worker stopped mid-job -------------------------------------------------------


async def test_a_stopping_worker_hands_its_job_back_to_the_queue_at_once(
    tmp_path: Path, database_url: str
) -> None:
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(private_redis(tmp_path))
        # No takeover of a stale job for ten minutes: only the hand-back explains
        # another worker running it now.
        settings = fault_settings(
            tmp_path,
            database_url,
            redis.url,
            worker_stop_grace_seconds=0.2,
            job_stale_seconds=600,
            job_resend_after_seconds=600,
        )
        client, worker_a = await start_together(
            stack, serve_app(settings), depot_worker(settings, tmp_path / "worker-a.log")
        )
        token, headers = await signed_in(client)
        job = await _extract_under_way(client, headers)
        assert await anyio.to_thread.run_sync(worker_a.stop) == 0
        assert "job interrupted: its worker is stopping" in worker_a.output()
        assert "unhandled exception" not in worker_a.output(), "a hand-back is no error"
        handed_back = await _progress(client, headers, job["id"])
        assert handed_back["status"] == "QUEUED", handed_back
        assert handed_back["attempts"] == 0, "the interrupted attempt is not counted"
        assert handed_back["outputs"]["totalCount"] == 0, "its partial outputs are gone"

        await stack.enter_async_context(
            in_background(depot_worker(settings, tmp_path / "worker-b.log"))
        )
        done = await wait_for_job(client, headers, job["id"], seconds=WAIT_S)
        assert done["status"] == "SUCCEEDED", done
        assert done["attempts"] == 1
        assert done["outputs"]["totalCount"] == ENTRIES
        await _assert_storage_matches_rows(client, headers, settings)
        events = await _all_events(client, token, job["id"])
        assert "QUEUED" in [e["status"] for e in events]
        _assert_one_final_status(events, "SUCCEEDED")


# -- the API restarted under a subscriber ------------------------------------------

# Enough entries that the job outlives stopping and starting ``depot serve``: on a
# quiet machine the restart takes about two thirds of their time.
RESTART_ENTRIES = 900


async def _read_until_gone(ws: AsyncWebSocketSession) -> list[dict[str, Any]]:
    """Events the server still sends on ``ws`` until it closes the connection,
    which it must do as a service restart (1012), so the client reconnects."""
    events: list[dict[str, Any]] = []
    while True:
        try:
            message = await next_message(ws)
        except WebSocketDisconnect as closed:
            code = closed.code
            break
        assert message["type"] == "next", f"the job ended before the API stopped: {message}"
        events.append(message["payload"]["data"]["jobEvents"])
    assert code == 1012, f"closed with {code}, not as a service restart"
    return events


async def test_a_subscriber_resumes_from_its_cursor_when_the_api_restarts(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(private_redis(tmp_path))
        settings = fault_settings(tmp_path, database_url, redis.url)
        seen: list[dict[str, Any]] = []
        # The database is a migrated copy already: both start at once, neither migrates.
        # The worker outlives this API process, which the test stops itself.
        api, _ = await start_together(
            stack,
            depot_serve(settings, tmp_path / "serve-1.log", port),
            depot_worker(settings, tmp_path / "worker.log"),
        )
        async with httpx.AsyncClient(base_url=base_url) as client:
            token, headers = await signed_in(client)
            archive = await upload_file(
                client, headers, "many.zip", many_entries_zip(RESTART_ENTRIES)
            )
            job = await start_job(
                client, headers, {"extract": {"fileId": archive["id"], "path": "out"}}
            )
            try:
                async with subscriber(client, token) as ws:
                    await subscribe(ws, "1", JOB_EVENTS, {"id": job["id"], "after": None})
                    while len(seen) < 3:
                        message = await next_message(ws)
                        assert message["type"] == "next", message
                        seen.append(message["payload"]["data"]["jobEvents"])
                    # SIGTERM while subscribed: what the server still sends counts as seen.
                    async with anyio.create_task_group() as group:
                        group.start_soon(anyio.to_thread.run_sync, api.stop)
                        seen.extend(await _read_until_gone(ws))
            except (WebSocketDisconnect, WebSocketNetworkError):
                pass  # closing a socket the server already closed
        down_at = utcnow()

        async with (
            in_background(depot_serve(settings, tmp_path / "serve-2.log", port)),
            httpx.AsyncClient(base_url=base_url) as client,
        ):
            async with subscriber(client, token) as ws:
                rest = await collect_job_events(ws, "2", job["id"], after=seen[-1]["cursor"])
            everything = await _all_events(client, token, job["id"])
            done = await wait_for_job(client, headers, job["id"], seconds=WAIT_S)

    assert done["status"] == "SUCCEEDED", done
    assert datetime.fromisoformat(done["finishedAt"]) > down_at, "the job outlived the API"
    assert [e["cursor"] for e in seen + rest] == [e["cursor"] for e in everything]
    assert len(seen) >= 3
    assert rest, "events after the restart"
    _assert_one_final_status(everything, "SUCCEEDED")


# -- two API replicas, one Redis ---------------------------------------------------


async def test_events_reach_a_subscriber_on_another_api_instance(
    tmp_path: Path, database_url: str
) -> None:
    entries = 20
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(private_redis(tmp_path))
        settings = fault_settings(tmp_path, database_url, redis.url)
        a = await stack.enter_async_context(serve_app(settings))
        b = await stack.enter_async_context(serve_app(settings))
        token, headers = await signed_in(b)
        archive = await upload_file(b, headers, "some.zip", many_entries_zip(entries))
        # No worker yet: the job waits, queued, while A's subscriptions start.
        job = await start_job(b, headers, {"extract": {"fileId": archive["id"], "path": "out"}})
        ws = await stack.enter_async_context(subscriber(a, token))
        await subscribe(ws, "mine", MY_EVENTS, {})
        await subscribe(ws, "job", JOB_EVENTS, {"id": job["id"], "after": None})
        await anyio.sleep(0.2)
        assert (await _progress(a, headers, job["id"]))["status"] == "QUEUED"
        await stack.enter_async_context(
            in_background(depot_worker(settings, tmp_path / "worker.log"))
        )

        # Every event of the job is written by the worker after A subscribed: all arrive live.
        job_events: list[dict[str, Any]] = []
        mine: list[dict[str, Any]] = []

        def created() -> set[str]:
            return {e["fileId"] for e in mine if e["type"] == "FILE_CREATED"}

        def job_done() -> bool:
            return any(e["type"] == "JOB_STATUS" and e["status"] == "SUCCEEDED" for e in mine)

        completed = False
        with anyio.fail_after(WAIT_S):
            while not completed or len(created()) < entries or not job_done():
                message = await next_message(ws)
                if message["type"] == "complete":
                    assert message["id"] == "job", message
                    completed = True
                    continue
                assert message["type"] == "next", message
                data = message["payload"]["data"]
                if message["id"] == "mine":
                    mine.append(data["myEvents"])
                else:
                    job_events.append(data["jobEvents"])
            # A deletion through B reaches A's subscriber too.
            body = await graphql(b, DELETE, {"id": archive["id"]}, headers=headers)
            assert "errors" not in body, body
            while not any(e["type"] == "FILE_DELETED" for e in mine):
                message = await next_message(ws)
                assert (message["id"], message["type"]) == ("mine", "next"), message
                mine.append(message["payload"]["data"]["myEvents"])

        everything = await _all_events(b, token, job["id"])
        assert [e["cursor"] for e in job_events] == [e["cursor"] for e in everything]
        assert job_events[0]["status"] == "RUNNING"
        _assert_one_final_status(job_events, "SUCCEEDED")
        done = await wait_for_job(b, headers, job["id"])
        assert created() == {node["node"]["id"] for node in done["outputs"]["edges"]}
        statuses = [e["status"] for e in mine if e["type"] == "JOB_STATUS"]
        assert (statuses[0], statuses[-1]) == ("RUNNING", "SUCCEEDED"), statuses
        deleted = [e for e in mine if e["type"] == "FILE_DELETED"]
        assert [e["fileId"] for e in deleted] == [archive["id"]]


# -- Redis stops for a few seconds --------------------------------------------------

OUTAGE_S = 3
OUTAGE_ENTRIES = 150


async def test_jobs_go_on_and_nothing_is_lost_when_redis_stops_for_a_while(
    tmp_path: Path, database_url: str
) -> None:
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(private_redis(tmp_path))
        settings = fault_settings(
            tmp_path,
            database_url,
            redis.url,
            job_resend_after_seconds=1,
            job_stale_seconds=3,
            # One job at a time, two messages fetched: the rest wait in Redis's queue.
            worker_threads=1,
        )
        client, _, _ = await start_together(
            stack,
            serve_app(settings),
            depot_worker(settings, tmp_path / "worker.log"),
            depot_scheduler(settings, tmp_path / "scheduler.log"),
        )
        token, headers = await signed_in(client)
        archive = await upload_file(client, headers, "many.zip", many_entries_zip(OUTAGE_ENTRIES))
        extract = await start_job(
            client, headers, {"extract": {"fileId": archive["id"], "path": "out"}}
        )
        verifies = [
            await start_job(client, headers, {"verify": {"fileId": archive["id"]}})
            for _ in range(3)
        ]
        ws = await stack.enter_async_context(subscriber(client, token))
        await subscribe(ws, "1", JOB_EVENTS, {"id": extract["id"], "after": None})
        message = await next_message(ws)
        assert message["type"] == "next", message
        seen = [message["payload"]["data"]["jobEvents"]]
        await _wait_until(
            client, headers, extract["id"], lambda j: j["progress"] >= 10 / OUTAGE_ENTRIES
        )
        for job in verifies:
            assert (await _progress(client, headers, job["id"]))["status"] == "QUEUED"

        await anyio.to_thread.run_sync(redis.stop)
        # A job started while Redis is away is kept in the database, and sent later.
        late = await start_job(client, headers, {"verify": {"fileId": archive["id"]}})
        await anyio.sleep(OUTAGE_S)
        # Back, empty: the queued messages and the event streams are gone.
        await anyio.to_thread.run_sync(redis.start)

        with anyio.fail_after(WAIT_S):
            while True:
                message = await next_message(ws)
                if message["type"] == "complete":
                    break
                assert message["type"] == "next", message
                assert "errors" not in message["payload"], message
                seen.append(message["payload"]["data"]["jobEvents"])
        jobs = [await wait_for_job(client, headers, j["id"]) for j in [extract, *verifies, late]]

        assert [(j["status"], j["attempts"]) for j in jobs] == [("SUCCEEDED", 1)] * 5, jobs
        assert seen[-1]["status"] == "SUCCEEDED", seen
        cursors = [tuple(map(int, e["cursor"].split("-"))) for e in seen]
        assert cursors == sorted(set(cursors)), "no event twice, none out of order"
        assert jobs[0]["outputs"]["totalCount"] == OUTAGE_ENTRIES
        rows = await _rows(settings)
        assert len(rows) == 1 + OUTAGE_ENTRIES
