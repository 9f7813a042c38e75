"""Jobs through GraphQL, in-process and with a real ``depot worker`` over Redis.

Starting, idempotency, visibility, events and their cursors, cancelling,
retrying, and the links between files and jobs. The kinds' own work is
tested in test_jobs_images.py and test_jobs_archives.py.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import anyio
import httpx
import pytest
from dramatiq.worker import ConsumerThread, WorkerThread
from sqlmodel import select

from core.db import create_engine, create_sessionmaker
from core.eventlog import Entry, MemoryEventLog, RedisEventLog
from core.models import File, Job
from core.settings import Settings
from schema.ids import decode_id
from tests.support import (
    FINAL_STATUSES,
    JOB_TIMEOUT_S,
    collect_job_events,
    get_job,
    graphql,
    many_entries_zip,
    next_message,
    only_error,
    run_job,
    signed_in,
    start_job,
    subscribe,
    subscriber,
    try_start_job,
    upload_file,
    wait_for_job,
    write_object,
)
from tests.test_files import counting_statements

pytestmark = pytest.mark.anyio

JOB_EVENTS = (
    "subscription Events($id: ID!, $after: String) "
    "{ jobEvents(jobId: $id, after: $after) { cursor jobId status progress message at } }"
)


async def _storage_key(settings: Settings, file_id: str) -> str:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as db:
            file = await db.get(File, decode_id(file_id)[1])
            assert file is not None
            return file.storage_key
    finally:
        await engine.dispose()


async def _job_rows(settings: Settings) -> list[Job]:
    engine = create_engine(settings)
    try:
        async with create_sessionmaker(engine)() as db:
            return list(await db.exec(select(Job)))
    finally:
        await engine.dispose()


# -- the happy path and its events ------------------------------------------------


async def test_a_job_runs_and_its_events_stream_in_order(jobs_client: httpx.AsyncClient) -> None:
    token, headers = await signed_in(jobs_client)
    data = b"depot " * 200_000
    file = await upload_file(jobs_client, headers, "data/a.bin", data)
    job = await start_job(jobs_client, headers, {"verify": {"fileId": file["id"]}})
    assert job["status"] == "QUEUED"
    assert job["attempts"] == 0
    assert [i["id"] for i in job["inputs"]] == [file["id"]]
    async with subscriber(jobs_client, token) as ws:
        events = await collect_job_events(ws, "1", job["id"])
    assert events[0]["status"] == "RUNNING"
    assert events[-1]["status"] == "SUCCEEDED"
    assert events[-1]["progress"] == 1.0
    assert {e["jobId"] for e in events} == {job["id"]}
    cursors = [tuple(map(int, e["cursor"].split("-"))) for e in events]
    assert cursors == sorted(set(cursors)), "cursors grow, without duplicates"
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    done = await get_job(jobs_client, headers, job["id"])
    assert done["status"] == "SUCCEEDED"
    assert done["attempts"] == 1
    assert done["startedAt"] is not None
    assert done["finishedAt"] >= done["startedAt"]


async def test_a_late_subscriber_gets_the_final_event_at_once(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    file = await upload_file(jobs_client, headers, "a.bin", b"abc")
    job = await run_job(jobs_client, headers, {"verify": {"fileId": file["id"]}})
    assert job["status"] == "SUCCEEDED"
    async with subscriber(jobs_client, token) as ws:
        everything = await collect_job_events(ws, "1", job["id"])
        last = everything[-1]
        assert last["status"] == "SUCCEEDED"
        # From the last cursor there is nothing more: the final state once more, then complete.
        again = await collect_job_events(ws, "2", job["id"], after=last["cursor"])
    assert [e["status"] for e in again] in ([], ["SUCCEEDED"])


# Enough entries that the job still runs when the second socket resumes (replay, then
# live) and reports progress for over a second; each entry costs a row and an object.
ENTRIES = 200


async def test_reconnecting_with_a_cursor_misses_nothing_and_repeats_nothing(
    jobs_client: httpx.AsyncClient,
) -> None:
    token, headers = await signed_in(jobs_client)
    archive = await upload_file(jobs_client, headers, "many.zip", many_entries_zip(ENTRIES))
    job = await start_job(
        jobs_client, headers, {"extract": {"fileId": archive["id"], "path": "out"}}
    )
    seen: list[dict[str, Any]] = []
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", JOB_EVENTS, {"id": job["id"], "after": None})
        while len(seen) < 3:
            message = await next_message(ws)
            assert message["type"] == "next", message
            seen.append(message["payload"]["data"]["jobEvents"])
    # The socket is gone; the job goes on. A new one resumes from the last cursor.
    # Until it has made progress no open socket saw.
    with anyio.fail_after(JOB_TIMEOUT_S):
        while True:
            now = await get_job(jobs_client, headers, job["id"])
            if now["progress"] > seen[-1]["progress"] or now["status"] in FINAL_STATUSES:
                break
            await anyio.sleep(0.02)
    async with subscriber(jobs_client, token) as ws:
        rest = await collect_job_events(ws, "1", job["id"], after=seen[-1]["cursor"])
    async with subscriber(jobs_client, token) as ws:
        everything = await collect_job_events(ws, "1", job["id"])
    assert [e["cursor"] for e in seen + rest] == [e["cursor"] for e in everything]
    assert everything[-1]["status"] == "SUCCEEDED", await get_job(jobs_client, headers, job["id"])
    # Each entry reports progress; events are coalesced to ~10 a second.
    done = await get_job(jobs_client, headers, job["id"])
    running = datetime.fromisoformat(done["finishedAt"]) - datetime.fromisoformat(done["startedAt"])
    progress_events = [e for e in everything if e["status"] == "RUNNING"]
    assert 2 <= len(progress_events) <= running.total_seconds() * 10 + 3


# -- idempotency and visibility ----------------------------------------------------


async def test_the_same_idempotency_key_returns_the_same_job(
    jobs_client: httpx.AsyncClient, jobs_settings: Settings
) -> None:
    _, ada = await signed_in(jobs_client)
    _, bob = await signed_in(jobs_client, "bob@example.com")
    ada_file = await upload_file(jobs_client, ada, "a.bin", b"a")
    bob_file = await upload_file(jobs_client, bob, "b.bin", b"b")
    first = await start_job(jobs_client, ada, {"verify": {"fileId": ada_file["id"]}}, key="k-1")
    second = await start_job(jobs_client, ada, {"verify": {"fileId": ada_file["id"]}}, key="k-1")
    assert second["id"] == first["id"]
    # The key is per user: Bob's k-1 is his own job.
    bobs = await start_job(jobs_client, bob, {"verify": {"fileId": bob_file["id"]}}, key="k-1")
    assert bobs["id"] != first["id"]
    # Concurrent retries of one request still make one job.
    ids: list[str] = []

    async def again() -> None:
        job = await start_job(jobs_client, ada, {"verify": {"fileId": ada_file["id"]}}, key="k-2")
        ids.append(job["id"])

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(again)
    assert len(set(ids)) == 1
    assert len(await _job_rows(jobs_settings)) == 3
    for job_id in {first["id"], bobs["id"], ids[0]}:
        headers = bob if job_id == bobs["id"] else ada
        assert (await wait_for_job(jobs_client, headers, job_id))["status"] == "SUCCEEDED"


async def test_another_users_job_does_not_exist_for_them(jobs_client: httpx.AsyncClient) -> None:
    _, ada = await signed_in(jobs_client)
    bob_token, bob = await signed_in(jobs_client, "bob@example.com")
    file = await upload_file(jobs_client, ada, "a.bin", b"a")
    job = await run_job(jobs_client, ada, {"verify": {"fileId": file["id"]}})
    made_up = job["id"][:-4] + ("AAAA" if not job["id"].endswith("AAAA") else "BBBB")
    for job_id in (job["id"], made_up):
        for query in (
            "query Q($id: ID!) { job(id: $id) { id } }",
            "mutation M($id: ID!) { cancelJob(id: $id) { id } }",
            "mutation M($id: ID!) { retryJob(id: $id) { id } }",
        ):
            body = await graphql(jobs_client, query, {"id": job_id}, headers=bob)
            assert only_error(body)["extensions"]["code"] in ("NOT_FOUND", "BAD_USER_INPUT")
    body = await graphql(jobs_client, "query { jobs { totalCount } }", headers=bob)
    assert body["data"]["jobs"]["totalCount"] == 0
    # Bob cannot start a job on Ada's file either.
    body = await try_start_job(jobs_client, bob, {"verify": {"fileId": file["id"]}})
    assert only_error(body)["extensions"]["code"] == "NOT_FOUND"
    async with subscriber(jobs_client, bob_token) as ws:
        await subscribe(ws, "1", JOB_EVENTS, {"id": job["id"], "after": None})
        message = await next_message(ws)
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_bad_job_input_is_refused_clearly(jobs_client: httpx.AsyncClient) -> None:
    token, headers = await signed_in(jobs_client)
    file = await upload_file(jobs_client, headers, "a.bin", b"a")
    both = {"verify": {"fileId": file["id"]}, "extract": {"fileId": file["id"], "path": "x"}}
    body = await try_start_job(jobs_client, headers, both)
    assert ("errors" in body and "data" not in body) or body.get("data") is None
    body = await try_start_job(jobs_client, headers, {"verify": {"fileId": "garbage"}})
    assert only_error(body)["extensions"]["code"] in ("BAD_USER_INPUT", "NOT_FOUND")
    body = await try_start_job(jobs_client, headers, {"verify": {"fileId": file["id"]}}, key="")
    assert only_error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "idempotencyKey"}
    await graphql(
        jobs_client,
        "mutation D($id: ID!) { deleteFile(id: $id) { id } }",
        {"id": file["id"]},
        headers=headers,
    )
    body = await try_start_job(jobs_client, headers, {"verify": {"fileId": file["id"]}})
    assert only_error(body)["extensions"]["code"] == "CONFLICT"
    job = await run_job(
        jobs_client,
        headers,
        {"verify": {"fileId": (await upload_file(jobs_client, headers, "b", b"b"))["id"]}},
    )
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", JOB_EVENTS, {"id": job["id"], "after": "not-a-cursor"})
        message = await next_message(ws)
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"


# -- failing, retrying, cancelling ---------------------------------------------------


async def test_a_corrupt_file_fails_verify_and_a_retry_is_a_new_attempt(
    jobs_client: httpx.AsyncClient, jobs_settings: Settings
) -> None:
    _, headers = await signed_in(jobs_client)
    data = b"the original bytes"
    file = await upload_file(jobs_client, headers, "a.txt", data)
    key = await _storage_key(jobs_settings, file["id"])
    write_object(jobs_settings, key, b"the damaged bytes!")
    failed = await run_job(jobs_client, headers, {"verify": {"fileId": file["id"]}})
    assert failed["status"] == "FAILED"
    assert "corrupt" in failed["error"]
    assert failed["attempts"] == 1, "bad data is not retried"
    query = "query F($id: ID!) { file(id: $id) { metadata } }"
    body = await graphql(jobs_client, query, {"id": file["id"]}, headers=headers)
    assert body["data"]["file"]["metadata"]["corrupt"] is True
    # Only a failed or cancelled job can be retried.
    retry = "mutation R($id: ID!) { retryJob(id: $id) { id status attempts error } }"
    write_object(jobs_settings, key, data)
    body = await graphql(jobs_client, retry, {"id": failed["id"]}, headers=headers)
    assert body["data"]["retryJob"]["status"] == "QUEUED"
    assert body["data"]["retryJob"]["error"] is None
    done = await wait_for_job(jobs_client, headers, failed["id"])
    assert done["status"] == "SUCCEEDED"
    assert done["attempts"] == 2
    body = await graphql(jobs_client, retry, {"id": failed["id"]}, headers=headers)
    assert only_error(body)["extensions"]["code"] == "CONFLICT"
    body = await graphql(jobs_client, query, {"id": file["id"]}, headers=headers)
    assert body["data"]["file"]["metadata"]["corrupt"] is False


async def test_a_retry_stands_when_the_bus_fails_after_it(
    jobs_client: httpx.AsyncClient, jobs_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, headers = await signed_in(jobs_client)
    data = b"the original bytes"
    file = await upload_file(jobs_client, headers, "a.txt", data)
    key = await _storage_key(jobs_settings, file["id"])
    write_object(jobs_settings, key, b"the damaged bytes!")
    failed = await run_job(jobs_client, headers, {"verify": {"fileId": file["id"]}})
    assert failed["status"] == "FAILED"
    write_object(jobs_settings, key, data)

    async def broken(*_args: Any, **_kwargs: Any) -> Entry:
        raise RuntimeError("the bus is broken")

    # On the classes: they reach the app's log, built inside its lifespan.
    monkeypatch.setattr(MemoryEventLog, "append", broken)
    monkeypatch.setattr(RedisEventLog, "append", broken)
    retry = "mutation R($id: ID!) { retryJob(id: $id) { id status attempts error } }"
    body = await graphql(jobs_client, retry, {"id": failed["id"]}, headers=headers)
    assert "errors" not in body, body
    assert body["data"]["retryJob"]["status"] == "QUEUED"
    done = await wait_for_job(jobs_client, headers, failed["id"])
    assert (done["status"], done["attempts"]) == ("SUCCEEDED", 2)


async def test_cancelling_queued_and_running_jobs(
    jobs_client: httpx.AsyncClient, jobs_settings: Settings
) -> None:
    _, headers = await signed_in(jobs_client)
    archive = await upload_file(jobs_client, headers, "many.zip", many_entries_zip(3000))
    cancel = "mutation C($id: ID!) { cancelJob(id: $id) { id status startedAt attempts } }"
    # More jobs than the user may run at once: the last ones wait, queued.
    limit = jobs_settings.max_running_jobs_per_user
    started = [
        await start_job(
            jobs_client, headers, {"extract": {"fileId": archive["id"], "path": f"out{i}"}}
        )
        for i in range(limit + 1)
    ]
    for job in started[:limit]:
        await wait_for_job(jobs_client, headers, job["id"], statuses=("RUNNING",))
    waiting = started[limit]
    assert (await get_job(jobs_client, headers, waiting["id"]))["status"] == "QUEUED"
    body = await graphql(jobs_client, cancel, {"id": waiting["id"]}, headers=headers)
    assert body["data"]["cancelJob"]["status"] == "CANCELLED"
    # A running job stops at its next step, and what it made so far goes.
    for job in started[:limit]:
        await graphql(jobs_client, cancel, {"id": job["id"]}, headers=headers)
    for job in started:
        ended = await wait_for_job(jobs_client, headers, job["id"])
        assert ended["status"] == "CANCELLED", ended
        assert ended["outputs"]["totalCount"] == 0
    assert (await get_job(jobs_client, headers, waiting["id"]))["attempts"] == 0
    body = await graphql(jobs_client, "query { files { totalCount } }", headers=headers)
    assert body["data"]["files"]["totalCount"] == 1, "only the archive is left"
    body = await graphql(jobs_client, cancel, {"id": waiting["id"]}, headers=headers)
    assert body["data"]["cancelJob"]["status"] == "CANCELLED", "cancelling again changes nothing"


# -- files and jobs ------------------------------------------------------------------


async def test_files_and_jobs_link_both_ways(jobs_client: httpx.AsyncClient) -> None:
    _, headers = await signed_in(jobs_client)
    archive = await upload_file(jobs_client, headers, "two.zip", many_entries_zip(2))
    job = await run_job(jobs_client, headers, {"extract": {"fileId": archive["id"], "path": "x"}})
    assert job["status"] == "SUCCEEDED", job
    assert job["outputs"]["totalCount"] == 2
    query = """
      query F($id: ID!) {
        file(id: $id) { jobs { totalCount edges { node { id kind } } } producedBy { id } }
      }"""
    body = await graphql(jobs_client, query, {"id": archive["id"]}, headers=headers)
    assert body["data"]["file"]["producedBy"] is None
    assert [e["node"]["id"] for e in body["data"]["file"]["jobs"]["edges"]] == [job["id"]]
    output = job["outputs"]["edges"][0]["node"]
    body = await graphql(jobs_client, query, {"id": output["id"]}, headers=headers)
    assert body["data"]["file"]["producedBy"] == {"id": job["id"]}
    body = await graphql(
        jobs_client,
        "query { jobs(filter: {status: SUCCEEDED, kind: EXTRACT}) { totalCount } "
        "me { jobs { totalCount } } }",
        headers=headers,
    )
    assert body["data"]["jobs"]["totalCount"] == 1
    assert body["data"]["me"]["jobs"]["totalCount"] == 1
    body = await graphql(
        jobs_client, "query { jobs(filter: {status: FAILED}) { totalCount } }", headers=headers
    )
    assert body["data"]["jobs"]["totalCount"] == 0


# The query walks every hop at once on purpose, far past what the default cost
# limit admits (Job.inputs counts as an archive's 1,000 files).
@pytest.mark.settings(graphql_max_cost=2_000_000)
async def test_job_hops_cost_the_same_statements_for_one_or_many(
    jobs_client: httpx.AsyncClient, jobs_settings: Settings
) -> None:
    _, headers = await signed_in(jobs_client)
    query = """
      query { files(first: 50) { edges { node {
        id producedBy { id inputs { id } outputs { totalCount } }
        jobs { totalCount edges { node { id inputs { id } outputs { edges { node { id } } } } } }
      } } } }"""

    async def statements() -> int:
        with counting_statements(jobs_settings) as sent:
            body = await graphql(jobs_client, query, headers=headers)
        assert "errors" not in body, body
        return len(sent)

    archive = await upload_file(jobs_client, headers, "a.zip", many_entries_zip(1))
    await run_job(jobs_client, headers, {"extract": {"fileId": archive["id"], "path": "a"}})
    few = await statements()
    for i in range(5):
        more = await upload_file(jobs_client, headers, f"m{i}.zip", many_entries_zip(3))
        await run_job(jobs_client, headers, {"extract": {"fileId": more["id"], "path": f"m{i}"}})
    many = await statements()
    assert many == few


async def test_my_events_tell_of_jobs_and_files(jobs_client: httpx.AsyncClient) -> None:
    token, headers = await signed_in(jobs_client)
    archive = await upload_file(jobs_client, headers, "two.zip", many_entries_zip(2))
    query = "subscription { myEvents { cursor type jobId fileId path status } }"
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", query, {})
        await anyio.sleep(0.2)  # the subscription is live before anything happens
        job = await start_job(
            jobs_client, headers, {"extract": {"fileId": archive["id"], "path": "x"}}
        )
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "JOB_STATUS" and e["status"] == "SUCCEEDED" for e in seen):
            message = await next_message(ws)
            seen.append(message["payload"]["data"]["myEvents"])
        await graphql(
            jobs_client,
            "mutation D($id: ID!) { deleteFile(id: $id) { id } }",
            {"id": archive["id"]},
            headers=headers,
        )
        deleted = (await next_message(ws))["payload"]["data"]["myEvents"]
    statuses = [e["status"] for e in seen if e["type"] == "JOB_STATUS"]
    assert statuses[0] == "RUNNING"
    assert statuses[-1] == "SUCCEEDED"
    created = sorted(e["path"] for e in seen if e["type"] == "FILE_CREATED")
    assert created == ["x/entry-00000.txt", "x/entry-00001.txt"]
    assert {e["jobId"] for e in seen} == {job["id"]}
    assert deleted["type"] == "FILE_DELETED"
    assert deleted["fileId"] == archive["id"]


# -- the embedded worker ------------------------------------------------------------


def _dramatiq_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, WorkerThread | ConsumerThread)]


async def test_the_embedded_worker_starts_with_the_first_job(client: httpx.AsyncClient) -> None:
    # An app that runs no job (most tests) never starts the worker's threads.
    _, headers = await signed_in(client)
    file = await upload_file(client, headers, "a.bin", b"abc")
    assert _dramatiq_threads() == []
    job = await run_job(client, headers, {"verify": {"fileId": file["id"]}})
    assert job["status"] == "SUCCEEDED"
    assert _dramatiq_threads() != []


def _reads_webhooks(statement: str) -> bool:
    return statement.lstrip().upper().startswith("SELECT") and "FROM webhook" in statement


async def test_a_job_of_an_owner_without_webhooks_ends_without_reading_them(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The UPDATE that ends a job also says whether its owner has webhooks
    (core.webhooks.any_enabled): most have none, and then no SELECT looks for them."""
    _, headers = await signed_in(client)
    file = await upload_file(client, headers, "a.bin", b"abc")
    with counting_statements(settings) as sent:
        job = await run_job(client, headers, {"verify": {"fileId": file["id"]}})
    assert job["status"] == "SUCCEEDED"
    assert any(s.lstrip().startswith("UPDATE job") for s in sent)
    assert [s for s in sent if _reads_webhooks(s)] == []


async def test_an_upload_is_told_on_my_events(jobs_client: httpx.AsyncClient) -> None:
    token, headers = await signed_in(jobs_client)
    query = "subscription { myEvents { type fileId path jobId } }"
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", query, {})
        await anyio.sleep(0.2)  # the subscription is live before anything happens
        uploaded = await upload_file(jobs_client, headers, "notes/a.txt", b"words\n")
        told = (await next_message(ws))["payload"]["data"]["myEvents"]
    assert told == {
        "type": "FILE_CREATED",
        "fileId": uploaded["id"],
        "path": "notes/a.txt",
        "jobId": None,
    }
