"""Webhooks through GraphQL, delivered to a real HTTP receiver on loopback.

The receiver is a small HTTP/1.1 server on the test's event loop; Depot
reaches it from its embedded worker threads or from a real ``depot worker``
over Redis, on both databases. Signatures are checked with the Standard
Webhooks reference verifier (``standardwebhooks``). Retries, timeouts and
polling are settings, made short here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from core.settings import Settings
from tests.conftest import make_settings, serve_app
from tests.support import (
    assert_error,
    get_job,
    graphql,
    many_entries_zip,
    next_message,
    run_job,
    signed_in,
    start_job,
    subscribe,
    subscriber,
    upload_file,
)
from tests.test_metrics import delta, scrape

pytestmark = pytest.mark.anyio

# Quick enough for tests, slow enough to tell a retry from a Retry-After.
FAST = {
    "webhook_poll_seconds": 0.05,
    "webhook_timeout_seconds": 1.0,
    "webhook_retry_base_seconds": 0.1,
    "webhook_retry_max_seconds": 1.0,
}
WAIT_S = 20

# A real `depot worker` costs seconds to start: the tests of what differs between the
# modes (who dispatches, who delivers and retries, who announces) run in both, the
# rest embedded.
embedded_only = pytest.mark.parametrize("jobs_mode", ["embedded"])

CREATE = """
mutation Create($input: CreateWebhookInput!) {
  createWebhook(input: $input) { secret webhook { id url events enabled } }
}"""
DELIVERIES = """
query Deliveries($first: Int) {
  webhooks { edges { node { id enabled disabledAt
    deliveries(first: $first) { totalCount edges { node {
      id messageId eventType attempt status statusCode durationMs responseExcerpt error nextRetryAt
    } } }
  } } }
}"""
REDELIVER = """
mutation Again($id: ID!) { redeliverWebhook(deliveryId: $id) { id messageId attempt status } }"""


@dataclass
class Reply:
    status: int = 204
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 that answers with ``replies`` in turn (then 204)."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Received] = []
        self.port = 0
        self._arrived = asyncio.Condition()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hooks/depot"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()  # the request line
            headers: dict[str, str] = {}
            while (line := await reader.readline()) != b"\r\n":
                if not line:
                    return  # closed before its headers ended: no request, as for any server
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            async with self._arrived:
                self.requests.append(Received(headers, body, time.monotonic()))
                self._arrived.notify_all()
            reply = self.replies.pop(0) if self.replies else Reply()
            await asyncio.sleep(reply.delay)
            extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            writer.write(
                f"HTTP/1.1 {reply.status} Whatever\r\ncontent-length: {len(reply.body)}\r\n"
                f"connection: close\r\n{extra}\r\n".encode()
                + reply.body
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up (a timeout): as a real receiver would see it
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()

    async def wait_for(self, count: int) -> list[Received]:
        """The requests so far, once there are ``count``."""
        with anyio.fail_after(WAIT_S):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver().running() as running:
        yield running


async def create_webhook(
    client: httpx.AsyncClient, headers: dict[str, str], url: str, events: list[str]
) -> dict[str, Any]:
    body = await graphql(client, CREATE, {"input": {"url": url, "events": events}}, headers=headers)
    assert "errors" not in body, body
    created: dict[str, Any] = body["data"]["createWebhook"]
    return created


async def deliveries(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = await graphql(client, DELIVERIES, {"first": 50}, headers=headers)
    assert "errors" not in body, body
    hook = body["data"]["webhooks"]["edges"][0]["node"]
    return [edge["node"] for edge in hook["deliveries"]["edges"]]


async def settled(
    client: httpx.AsyncClient, headers: dict[str, str], count: int
) -> list[dict[str, Any]]:
    """The webhook's attempts once ``count`` of them have ended (newest first)."""
    with anyio.fail_after(WAIT_S):
        while True:
            found = await deliveries(client, headers)
            if sum(d["status"] != "PENDING" for d in found) >= count:
                return found
            await anyio.sleep(0.05)


def verified(secret: str, request: Received) -> dict[str, Any]:
    """The payload, once the reference verifier has accepted its signature."""
    payload: dict[str, Any] = Verifier(secret).verify(request.body, request.headers)
    return payload


# -- delivery, signatures, retries ---------------------------------------------------


@pytest.mark.settings(**FAST)
async def test_events_are_delivered_signed_as_standard_webhooks(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, headers = await signed_in(jobs_client)
    created = await create_webhook(
        jobs_client,
        headers,
        receiver.url(),
        ["JOB_SUCCEEDED", "JOB_FAILED", "FILE_CREATED", "FILE_DELETED"],
    )
    secret = created["secret"]
    assert secret.startswith("whsec_")
    file = await upload_file(jobs_client, headers, "a.txt", b"hello webhooks")
    (first,) = await receiver.wait_for(1)
    payload = verified(secret, first)
    assert payload["type"] == "FILE_CREATED"
    assert payload["data"]["file"]["id"] == file["id"]
    assert payload["data"]["file"]["path"] == "a.txt"
    assert first.headers["content-type"] == "application/json"

    job = await run_job(jobs_client, headers, {"verify": {"fileId": file["id"]}})
    assert job["status"] == "SUCCEEDED"
    requests = await receiver.wait_for(2)
    payload = verified(secret, requests[1])
    assert payload["type"] == "JOB_SUCCEEDED"
    assert payload["data"]["job"]["id"] == job["id"]
    assert payload["data"]["job"]["status"] == "SUCCEEDED"

    body = await graphql(
        jobs_client,
        "mutation ($id: ID!) { deleteFile(id: $id) { id } }",
        {"id": file["id"]},
        headers=headers,
    )
    assert "errors" not in body, body
    requests = await receiver.wait_for(3)
    assert verified(secret, requests[2])["type"] == "FILE_DELETED"

    # Not an archive: the job fails at once.
    other = await upload_file(jobs_client, headers, "b.txt", b"not a zip")
    failed = await run_job(jobs_client, headers, {"extract": {"fileId": other["id"], "path": "x"}})
    assert failed["status"] == "FAILED"
    requests = await receiver.wait_for(5)
    assert [verified(secret, r)["type"] for r in requests[3:]] == ["FILE_CREATED", "JOB_FAILED"]
    assert verified(secret, requests[4])["data"]["job"]["error"] == failed["error"]

    # Each event is its own message; a tampered body fails the reference verifier.
    assert len({r.headers["webhook-id"] for r in requests}) == 5
    with pytest.raises(Exception, match="signature"):
        Verifier(secret).verify(requests[2].body + b" ", requests[2].headers)
    found = await settled(jobs_client, headers, 5)
    assert {(d["status"], d["statusCode"], d["attempt"]) for d in found} == {("SUCCEEDED", 204, 1)}


@embedded_only
@pytest.mark.settings(**FAST)
async def test_a_500_and_a_timeout_are_retried_with_the_same_webhook_id(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, headers = await signed_in(jobs_client)
    secret = (await create_webhook(jobs_client, headers, receiver.url(), ["FILE_CREATED"]))[
        "secret"
    ]
    receiver.replies = [Reply(500, b"boom"), Reply(204, delay=3.0), Reply(200, b"thanks")]
    await upload_file(jobs_client, headers, "b.txt", b"again and again")
    requests = await receiver.wait_for(3)
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    for request in requests:
        assert verified(secret, request)["type"] == "FILE_CREATED"
    third, second, first = await settled(jobs_client, headers, 3)
    assert (first["attempt"], first["status"], first["statusCode"]) == (1, "FAILED", 500)
    assert first["responseExcerpt"] == "boom"
    assert first["nextRetryAt"] is not None
    assert (second["attempt"], second["status"], second["statusCode"]) == (2, "FAILED", None)
    assert "1 s" in second["error"]
    assert second["durationMs"] >= 900
    assert (third["attempt"], third["status"], third["statusCode"]) == (3, "SUCCEEDED", 200)
    assert third["nextRetryAt"] is None
    await anyio.sleep(0.5)
    assert len(receiver.requests) == 3, "nothing after the success"


@embedded_only
@pytest.mark.settings(**FAST)
async def test_a_400_is_not_retried(jobs_client: httpx.AsyncClient, receiver: Receiver) -> None:
    _, headers = await signed_in(jobs_client)
    await create_webhook(jobs_client, headers, receiver.url(), ["FILE_CREATED"])
    receiver.replies = [Reply(400, b"no thanks")]
    before = await scrape(jobs_client)
    await upload_file(jobs_client, headers, "c.txt", b"refused")
    await receiver.wait_for(1)
    (only,) = await settled(jobs_client, headers, 1)
    assert (only["status"], only["statusCode"], only["nextRetryAt"]) == ("FAILED", 400, None)
    await anyio.sleep(1.0)  # ten base backoffs
    assert len(receiver.requests) == 1
    counted = delta(await scrape(jobs_client), before, "depot_webhook_attempts_total")
    assert counted == 1


@embedded_only
@pytest.mark.settings(**FAST)
async def test_redirects_are_not_followed_and_answers_are_cut_short(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, headers = await signed_in(jobs_client)
    await create_webhook(jobs_client, headers, receiver.url(), ["FILE_CREATED"])
    receiver.replies = [
        Reply(307, headers={"location": receiver.url() + "/elsewhere"}),
        Reply(200, b"x" * 1_000_000),
    ]
    await upload_file(jobs_client, headers, "r.txt", b"moved?")
    (moved,) = await settled(jobs_client, headers, 1)
    assert (moved["status"], moved["statusCode"], moved["nextRetryAt"]) == ("FAILED", 307, None)
    await upload_file(jobs_client, headers, "s.txt", b"long answer")
    big, _ = await settled(jobs_client, headers, 2)
    assert (big["status"], big["statusCode"]) == ("SUCCEEDED", 200)
    assert big["responseExcerpt"] == "x" * 1024
    assert len(receiver.requests) == 2, "the redirect was not followed"


@embedded_only
@pytest.mark.settings(
    # A timeout as long as the wait: an attempt that timed out on a loaded machine would
    # be retried after the 60 s backoff, not the receiver's second.
    **{
        **FAST,
        "webhook_timeout_seconds": 10.0,
        "webhook_retry_base_seconds": 60,
        "webhook_retry_max_seconds": 3600,
    }
)
async def test_retry_after_is_honoured(jobs_client: httpx.AsyncClient, receiver: Receiver) -> None:
    _, headers = await signed_in(jobs_client)
    await create_webhook(jobs_client, headers, receiver.url(), ["FILE_CREATED"])
    receiver.replies = [Reply(429, headers={"retry-after": "1"})]
    await upload_file(jobs_client, headers, "d.txt", b"later")
    first, second = await receiver.wait_for(2)
    # The receiver's second, not the 60 s backoff.
    assert 0.9 <= second.at - first.at < 10
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


@embedded_only
@pytest.mark.settings(**{**FAST, "webhook_retry_window_seconds": 2.0})
async def test_a_delivery_still_failing_when_its_window_closes_is_marked_failed(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, headers = await signed_in(jobs_client)
    await create_webhook(jobs_client, headers, receiver.url(), ["FILE_CREATED"])
    receiver.replies = [Reply(503)] * 50
    await upload_file(jobs_client, headers, "e.txt", b"down")
    with anyio.fail_after(WAIT_S):
        while True:
            found = await deliveries(jobs_client, headers)
            if found and found[0]["status"] == "FAILED" and found[0]["nextRetryAt"] is None:
                break
            await anyio.sleep(0.05)
    assert len(found) >= 2
    assert all(d["status"] == "FAILED" and d["statusCode"] == 503 for d in found)
    assert all(d["nextRetryAt"] is not None for d in found[1:])


@embedded_only
@pytest.mark.settings(**FAST)
async def test_a_delivery_is_sent_again_with_the_same_webhook_id(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, headers = await signed_in(jobs_client)
    created = await create_webhook(jobs_client, headers, receiver.url(), ["FILE_CREATED"])
    secret, hook_id = created["secret"], created["webhook"]["id"]
    await upload_file(jobs_client, headers, "f.txt", b"once more")
    (done,) = await settled(jobs_client, headers, 1)
    body = await graphql(jobs_client, REDELIVER, {"id": done["id"]}, headers=headers)
    assert "errors" not in body, body
    again = body["data"]["redeliverWebhook"]
    assert (again["messageId"], again["attempt"]) == (done["messageId"], 1)
    first, second = await receiver.wait_for(2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == done["messageId"]
    assert verified(secret, second) == verified(secret, first)
    # After a rotation, attempts are signed with the new secret only.
    body = await graphql(
        jobs_client,
        "mutation ($id: ID!) { rotateWebhookSecret(id: $id) { secret } }",
        {"id": hook_id},
        headers=headers,
    )
    rotated = body["data"]["rotateWebhookSecret"]["secret"]
    await graphql(jobs_client, REDELIVER, {"id": done["id"]}, headers=headers)
    third = (await receiver.wait_for(3))[2]
    assert verified(rotated, third) == verified(secret, first)
    with pytest.raises(Exception, match="signature"):
        verified(secret, third)
    # Another user's delivery is not found.
    _, other = await signed_in(jobs_client, "eve@example.com")
    body = await graphql(jobs_client, REDELIVER, {"id": done["id"]}, headers=other)
    assert_error(body, "NOT_FOUND")


@embedded_only
@pytest.mark.settings(**{**FAST, "max_running_jobs_per_user": 1})
async def test_cancelled_jobs_are_delivered_whoever_cancels_them(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, headers = await signed_in(jobs_client)
    secret = (await create_webhook(jobs_client, headers, receiver.url(), ["JOB_CANCELLED"]))[
        "secret"
    ]
    archive = await upload_file(jobs_client, headers, "many.zip", many_entries_zip(3000))
    running = await start_job(
        jobs_client, headers, {"extract": {"fileId": archive["id"], "path": "x"}}
    )
    with anyio.fail_after(WAIT_S):
        while True:
            if (await get_job(jobs_client, headers, running["id"]))["status"] == "RUNNING":
                break
            await anyio.sleep(0.02)
    # The owner is at the running limit: this one waits, queued, and is cancelled by the API.
    queued = await start_job(jobs_client, headers, {"verify": {"fileId": archive["id"]}})
    cancel = "mutation ($id: ID!) { cancelJob(id: $id) { status } }"
    body = await graphql(jobs_client, cancel, {"id": queued["id"]}, headers=headers)
    assert body["data"]["cancelJob"]["status"] == "CANCELLED"
    # A running one is cancelled by its worker.
    await graphql(jobs_client, cancel, {"id": running["id"]}, headers=headers)
    requests = await receiver.wait_for(2)
    told = {verified(secret, r)["data"]["job"]["id"] for r in requests}
    assert told == {queued["id"], running["id"]}
    assert {verified(secret, r)["type"] for r in requests} == {"JOB_CANCELLED"}


@pytest.mark.settings(**FAST)
async def test_a_pipeline_is_delivered_when_it_ends_as_its_steps_are(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    _, headers = await signed_in(jobs_client)
    secret = (await create_webhook(jobs_client, headers, receiver.url(), ["JOB_SUCCEEDED"]))[
        "secret"
    ]
    file = await upload_file(jobs_client, headers, "a.txt", b"hello pipelines")
    steps = [
        {"name": "first", "run": {"verify": {}}},
        {"name": "second", "use": ["first"], "run": {"verify": {}}},
    ]
    pipeline = await run_job(
        jobs_client, headers, {"pipeline": {"fileIds": [file["id"]], "steps": steps}}
    )
    assert pipeline["status"] == "SUCCEEDED"
    requests = await receiver.wait_for(3)
    jobs = [verified(secret, r)["data"]["job"] for r in requests]
    assert sorted(job["kind"] for job in jobs) == ["PIPELINE", "VERIFY", "VERIFY"]
    (told,) = [job for job in jobs if job["kind"] == "PIPELINE"]
    assert told["id"] == pipeline["id"]
    assert told["status"] == "SUCCEEDED"


@pytest.mark.settings(**{**FAST, "webhook_disable_after_seconds": 0.5})
async def test_a_webhook_failing_too_long_is_disabled_and_its_owner_told(
    jobs_client: httpx.AsyncClient, receiver: Receiver
) -> None:
    token, headers = await signed_in(jobs_client)
    created = await create_webhook(jobs_client, headers, receiver.url(), ["FILE_CREATED"])
    receiver.replies = [Reply(500)] * 100
    async with subscriber(jobs_client, token) as ws:
        await subscribe(ws, "1", "subscription { myEvents { type webhookId message } }", {})
        await anyio.sleep(0.2)  # subscribed before anything happens
        await upload_file(jobs_client, headers, "g.txt", b"nobody listens")
        with anyio.fail_after(WAIT_S):
            while True:
                event = (await next_message(ws))["payload"]["data"]["myEvents"]
                if event["type"] == "WEBHOOK_DISABLED":
                    break
    assert event["webhookId"] == created["webhook"]["id"]
    body = await graphql(jobs_client, DELIVERIES, {"first": 1}, headers=headers)
    hook = body["data"]["webhooks"]["edges"][0]["node"]
    assert hook["enabled"] is False
    assert hook["disabledAt"] is not None
    count = len(receiver.requests)
    await anyio.sleep(0.5)
    assert len(receiver.requests) == count, "a disabled webhook is not called"


# -- safety --------------------------------------------------------------------------

REFUSED = [
    "http://127.0.0.1/hook",
    "http://localhost/hook",  # a name that resolves to loopback
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
]


@pytest.fixture
def closed_settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url=database_url, webhook_allow_private_networks=False, **FAST
    )


async def test_private_and_metadata_addresses_are_refused_when_not_allowed(
    closed_settings: Settings,
) -> None:
    async with serve_app(closed_settings) as client:
        _, headers = await signed_in(client)
        for url in REFUSED:
            body = await graphql(
                client,
                CREATE,
                {"input": {"url": url, "events": ["FILE_CREATED"]}},
                headers=headers,
            )
            assert_error(body, "BAD_USER_INPUT", field="url")
            assert "DEPOT_WEBHOOK_ALLOW_PRIVATE_NETWORKS" in body["errors"][0]["message"], url
        body = await graphql(client, "{ webhooks { totalCount } }", headers=headers)
    assert body["data"]["webhooks"]["totalCount"] == 0


async def test_a_url_that_was_allowed_is_checked_again_at_every_delivery(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    # Saved while private networks were allowed, delivered after they no longer are:
    # as when a public name is pointed at 127.0.0.1 after the check (DNS rebinding).
    opened = make_settings(tmp_path, database_url=database_url, **FAST)
    async with serve_app(opened) as client:
        token = (await signed_in(client))[0]
        headers = {"authorization": f"Bearer {token}"}
        await create_webhook(client, headers, receiver.url("localhost"), ["FILE_CREATED"])
    closed = make_settings(
        tmp_path, database_url=database_url, webhook_allow_private_networks=False, **FAST
    )
    async with serve_app(closed) as client:
        await upload_file(client, headers, "h.txt", b"not for loopback")
        (refused,) = await settled(client, headers, 1)
    assert refused["status"] == "FAILED"
    assert refused["statusCode"] is None
    assert "127.0.0.1" in refused["error"] or "::1" in refused["error"]
    assert refused["nextRetryAt"] is None
    assert receiver.requests == []


async def test_production_wants_https(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        environment="production",
        webhook_allow_private_networks=True,
    )
    async with serve_app(settings) as client:
        _, headers = await signed_in(client)
        plain = {"url": "http://localhost:8443/hook", "events": ["JOB_FAILED"]}
        body = await graphql(client, CREATE, {"input": plain}, headers=headers)
        assert_error(body, "BAD_USER_INPUT", field="url")
        assert "https" in body["errors"][0]["message"]
        secure = {**plain, "url": "https://localhost:8443/hook"}
        body = await graphql(client, CREATE, {"input": secure}, headers=headers)
    assert "errors" not in body, body


# -- the owner's side ----------------------------------------------------------------


async def test_webhooks_are_listed_changed_rotated_and_deleted_by_their_owner(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(client)
    created = await create_webhook(
        client, headers, "http://127.0.0.1:9/hook", ["JOB_FAILED", "JOB_FAILED", "FILE_CREATED"]
    )
    hook = created["webhook"]
    assert hook["events"] == ["JOB_FAILED", "FILE_CREATED"]
    update = """mutation ($id: ID!, $input: UpdateWebhookInput!) {
      updateWebhook(id: $id, input: $input) { id events enabled } }"""
    body = await graphql(
        client, update, {"id": hook["id"], "input": {"events": ["JOB_CANCELLED"]}}, headers=headers
    )
    assert body["data"]["updateWebhook"]["events"] == ["JOB_CANCELLED"]
    body = await graphql(
        client, update, {"id": hook["id"], "input": {"events": []}}, headers=headers
    )
    assert_error(body, "BAD_USER_INPUT", field="events")
    rotate = "mutation ($id: ID!) { rotateWebhookSecret(id: $id) { secret webhook { id } } }"
    body = await graphql(client, rotate, {"id": hook["id"]}, headers=headers)
    assert body["data"]["rotateWebhookSecret"]["secret"] not in (created["secret"], None)
    # Another user sees nothing of it.
    _, other = await signed_in(client, "eve@example.com")
    body = await graphql(client, rotate, {"id": hook["id"]}, headers=other)
    assert_error(body, "NOT_FOUND")
    body = await graphql(client, "{ webhooks { totalCount } }", headers=other)
    assert body["data"]["webhooks"]["totalCount"] == 0
    delete = "mutation ($id: ID!) { deleteWebhook(id: $id) { id } }"
    body = await graphql(client, delete, {"id": hook["id"]}, headers=headers)
    assert body["data"]["deleteWebhook"]["id"] == hook["id"]
    body = await graphql(client, "{ webhooks { totalCount } }", headers=headers)
    assert body["data"]["webhooks"]["totalCount"] == 0
    assert json.dumps(body).count("whsec_") == 0
