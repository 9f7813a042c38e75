"""``/metrics``: what an operator scrapes, after real traffic, and who may scrape it.

Metric families are process-wide (prometheus-client's own registry), and
these tests run many apps in one process, so each test compares a scrape
after its traffic with one before it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.metrics import scrape as metrics_scrape
from core.settings import Settings
from schema.ids import encode_id
from tests.conftest import make_settings, serve_app
from tests.processes import depot, depot_serve, free_port, in_background, redis_server
from tests.support import (
    JOB_EVENTS,
    bearer,
    get_job,
    graphql,
    many_entries_zip,
    next_message,
    require_service,
    signed_in,
    start_job,
    storage_root,
    subscribe,
    subscriber,
    upload_file,
    wait_for_job,
)

pytestmark = pytest.mark.anyio

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

METRICS_TOKEN = "metrics-token-0123456789abcdef"


def parse(text: str) -> Series:
    """A scrape as ``{(sample name, labels): value}``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: httpx.AsyncClient, headers: Mapping[str, str] | None = None) -> Series:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(series: Series, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0 when absent (not yet incremented)."""
    return series.get((name, frozenset(labels.items())), 0.0)


def total(series: Series, name: str, **labels: str) -> float:
    """The sum of every sample ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in series.items() if n == name and wanted <= found)


def delta(after: Series, before: Series, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


# As the parser names them: a counter without its `_total`.
FAMILIES = {
    "depot_http_requests",
    "depot_http_request_duration_seconds",
    "depot_graphql_operations",
    "depot_graphql_operation_duration_seconds",
    "depot_websocket_connections",
    "depot_subscriptions",
    "depot_upload_bytes",
    "depot_jobs_started",
    "depot_jobs_finished",
    "depot_job_duration_seconds",
    "depot_job_queue_wait_seconds",
    "depot_job_attempts",
    "depot_job_takeovers",
    "depot_jobs_queued",
    "depot_jobs_running",
    "depot_event_publish_failures",
    "depot_database_connections_in_use",
    "depot_webhook_attempts",
}
TYPENAME = {"query": "{ __typename }"}
CANCEL = "mutation C($id: ID!) { cancelJob(id: $id) { id } }"
DOWNLOAD_URL = "query File($id: ID!) { file(id: $id) { downloadUrl } }"
FILES = "{ files(first: 5) { totalCount edges { node { id path } } } }"
STALE_S = 1.0
WAIT_S = 30


async def test_a_scrape_after_traffic_has_every_family(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, storage_url=(tmp_path / "storage").as_uri(), job_heartbeat_seconds=0.2
    )
    async with serve_app(settings) as client:
        before = await scrape(client)
        token, headers = await signed_in(client)
        assert (await client.post("/graphql", json=TYPENAME)).status_code == 200
        assert (await client.get("/no/such/path")).status_code == 404
        await client.post("/graphql", json={"query": "{ files { totalCount } }"})  # signed out
        await client.post("/graphql", json={"query": "{ me { "})  # GRAPHQL_PARSE_FAILED
        file = await upload_file(client, headers, "a.txt", b"hello metrics\n" * 100)
        body = await graphql(client, DOWNLOAD_URL, {"id": file["id"]}, headers=headers)
        link = httpx.URL(body["data"]["file"]["downloadUrl"])
        assert (await client.get(link.path)).status_code == 200
        async with subscriber(client, token) as ws:
            await subscribe(ws, "mine", "subscription { myEvents { __typename } }", {})
            job = await start_job(client, headers, {"verify": {"fileId": file["id"]}})
            await subscribe(ws, "job", JOB_EVENTS, {"id": job["id"], "after": None})
            heard: dict[str, list[str]] = {"mine": [], "job": []}
            while not (heard["job"][-1:] == ["complete"] and heard["mine"]):
                message = await next_message(ws)
                heard[message["id"]].append(message["type"])
            during = await scrape(client)  # `myEvents` runs, `jobEvents` has completed
            gone = encode_id("Job", uuid.uuid4())
            await subscribe(ws, "gone", JOB_EVENTS, {"id": gone, "after": None})
            while (refused := await next_message(ws))["id"] != "gone":
                pass  # `myEvents` may still speak
            assert refused["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        await wait_for_job(client, headers, job["id"])
        response = await client.get("/metrics")
        after = parse(response.text)

    # Every family is declared, whether or not it has counted anything yet.
    declared = {family.name for family in text_string_to_metric_families(response.text)}
    assert not FAMILIES - declared, "families missing from the scrape"

    # HTTP: by route template, method and status; never a raw path or a token.
    assert delta(after, before, "depot_http_requests_total", route="/graphql", status="200") >= 5
    assert delta(after, before, "depot_http_requests_total", route="unmatched", status="404") == 1
    download = {"route": "/files/download/{token}", "method": "GET", "status": "200"}
    assert delta(after, before, "depot_http_requests_total", **download) == 1
    assert delta(after, before, "depot_http_request_duration_seconds_count", **download) == 1
    assert delta(after, before, "depot_http_request_duration_seconds_sum", **download) > 0
    assert link.path.rsplit("/", 1)[-1] not in response.text
    assert "/no/such/path" not in response.text

    # GraphQL: anonymous operations by type and outcome; subscriptions while they run.
    ok_query = {"operation": "anonymous", "type": "query", "outcome": "ok"}
    assert delta(after, before, "depot_graphql_operations_total", **ok_query) >= 2
    assert delta(after, before, "depot_graphql_operations_total", type="mutation") >= 3
    assert delta(after, before, "depot_graphql_operations_total", type="subscription") >= 1
    # Failed operations by their code, over HTTP and over the socket.
    refused = {"type": "query", "outcome": "UNAUTHENTICATED"}
    assert delta(after, before, "depot_graphql_operations_total", **refused) == 1
    unparsed = {"type": "unknown", "outcome": "GRAPHQL_PARSE_FAILED"}
    assert delta(after, before, "depot_graphql_operations_total", **unparsed) == 1
    missing = {"type": "subscription", "outcome": "NOT_FOUND"}
    assert delta(after, before, "depot_graphql_operations_total", **missing) == 1
    timed = {"operation": "anonymous", "type": "query"}
    assert delta(after, before, "depot_graphql_operation_duration_seconds_count", **timed) >= 2
    assert value(during, "depot_websocket_connections") >= 1
    assert value(during, "depot_subscriptions") >= 1
    assert value(after, "depot_websocket_connections") == value(
        before, "depot_websocket_connections"
    )
    assert value(after, "depot_subscriptions") == value(before, "depot_subscriptions")

    # Uploads, by method.
    assert delta(after, before, "depot_upload_bytes_total", method="multipart") == 1400

    # Jobs: started, attempts, finished with their status, durations, gauges at scrape time.
    assert delta(after, before, "depot_jobs_started_total", kind="verify") == 1
    assert delta(after, before, "depot_job_attempts_total", kind="verify") == 1
    assert delta(after, before, "depot_job_takeovers_total", kind="verify") == 0
    finished = {"kind": "verify", "status": "succeeded"}
    assert delta(after, before, "depot_jobs_finished_total", **finished) == 1
    assert delta(after, before, "depot_job_duration_seconds_count", kind="verify") == 1
    assert delta(after, before, "depot_job_queue_wait_seconds_count", kind="verify") == 1
    wait_s = delta(after, before, "depot_job_queue_wait_seconds_sum", kind="verify")
    assert 0 <= wait_s < 30
    assert total(after, "depot_jobs_running", kind="verify") == 0

    # The rest: failures only when they happen.
    # Every connection checked out for the traffic was checked in again.
    assert ("depot_database_connections_in_use", frozenset()) in after
    pool = "depot_database_connections_in_use"
    assert value(after, pool) == value(before, pool) >= 0
    assert delta(after, before, "depot_event_publish_failures_total") == 0


@pytest.mark.settings(max_running_jobs_per_user=1)
@pytest.mark.parametrize("jobs_mode", ["embedded"], indirect=True)
async def test_job_gauges_count_what_the_database_holds(jobs_client: httpx.AsyncClient) -> None:
    client = jobs_client
    _, headers = await signed_in(client)
    archive = await upload_file(client, headers, "big.zip", many_entries_zip(3000))
    small = await upload_file(client, headers, "a.txt", b"x")
    long = await start_job(client, headers, {"extract": {"fileId": archive["id"], "path": "out"}})
    await wait_for_job(client, headers, long["id"], statuses=("RUNNING",))
    # Its owner may run one job at a time: this one waits, queued.
    waiting = await start_job(client, headers, {"verify": {"fileId": small["id"]}})
    before = series = await scrape(client)
    assert value(series, "depot_jobs_running", kind="extract") == 1
    assert value(series, "depot_jobs_queued", kind="verify") == 1
    assert total(series, "depot_jobs_queued") == 1
    assert total(series, "depot_jobs_running") == 1
    for job in (waiting, long):
        await graphql(client, CANCEL, {"id": job["id"]}, headers=headers)
    for job in (long, waiting):
        assert (await wait_for_job(client, headers, job["id"]))["status"] == "CANCELLED"
    after = await scrape(client)
    assert total(after, "depot_jobs_queued") == total(after, "depot_jobs_running") == 0
    # One cancelled queued (by the API), one cancelled running (by its worker).
    assert delta(after, before, "depot_jobs_finished_total", status="cancelled") == 2


async def test_a_job_whose_server_was_killed_is_counted_as_a_takeover(tmp_path: Path) -> None:
    """A ``depot serve`` killed mid-job; the next app on its database takes the job over."""
    settings = make_settings(
        tmp_path,
        storage_url=(tmp_path / "storage").as_uri(),
        job_heartbeat_seconds=0.2,
        job_stale_seconds=STALE_S,
    )
    port = free_port()
    async with (
        in_background(depot_serve(settings, tmp_path / "serve.log", port)) as first,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        _, headers = await signed_in(client)
        archive = await upload_file(client, headers, "big.zip", many_entries_zip(3000))
        job = await start_job(client, headers, {"extract": {"fileId": archive["id"], "path": "o"}})
        await wait_for_job(client, headers, job["id"], statuses=("RUNNING",))
        await anyio.to_thread.run_sync(first.kill)
    await anyio.sleep(STALE_S)  # its heartbeat is stale now
    # This process's registry, before an app in it takes the job over at its start.
    before = parse(metrics_scrape().decode())
    async with serve_app(settings) as client:
        with anyio.fail_after(WAIT_S):
            while True:
                if (await get_job(client, headers, job["id"]))["attempts"] == 2:
                    break
                await anyio.sleep(0.05)
        after = await scrape(client)
        await graphql(client, CANCEL, {"id": job["id"]}, headers=headers)
        assert (await wait_for_job(client, headers, job["id"]))["status"] == "CANCELLED"
    assert delta(after, before, "depot_job_takeovers_total", kind="extract") == 1
    assert delta(after, before, "depot_job_attempts_total", kind="extract") == 1
    # The second attempt is no new start, and waited in no queue.
    assert delta(after, before, "depot_jobs_started_total", kind="extract") == 0
    assert delta(after, before, "depot_job_queue_wait_seconds_count", kind="extract") == 0
    assert value(after, "depot_jobs_running", kind="extract") == 1


async def test_connections_in_use_are_seen_while_requests_run(tmp_path: Path) -> None:
    pool = "depot_database_connections_in_use"
    async with serve_app(make_settings(tmp_path)) as client:
        _, headers = await signed_in(client)
        idle = value(await scrape(client), pool)
        seen: list[float] = []
        for _ in range(20):
            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(functools.partial(graphql, client, FILES, headers=headers))
                # The requests are under way, each holding its session's connection
                # while it waits on the database.
                await anyio.lowlevel.checkpoint()
                seen.append(value(await scrape(client), pool) - idle)
            if max(seen) > 0:
                break
        assert 0 < max(seen) <= 8 + 1, seen  # the requests' and at most the scrape's own
        assert value(await scrape(client), pool) == idle


async def test_labels_stay_bounded_whatever_clients_send(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path)) as client:
        before = await scrape(client)
        for i in range(1000):
            name = f"Op{uuid.uuid4().hex}{i}"
            await client.post("/graphql", json={"query": f"query {name} {{ __typename }}"})
            await client.request(f"X{i % 50}", f"/files/download/secret-{i}")
            await client.get(f"/random/{uuid.uuid4().hex}")
        after = await scrape(client)
    new = {key for key in after if key not in before}
    assert len(after) - len(before) == len(new)
    # A handful of routes x methods x statuses, times the histogram's buckets: not 1,000s.
    assert len(new) < 120, sorted(new)[:20]
    assert all("Op" not in v and "secret" not in v for _, labels in new for _, v in labels)
    assert delta(after, before, "depot_graphql_operations_total", operation="anonymous") == 1000
    assert delta(after, before, "depot_http_requests_total", method="OTHER") == 1000


async def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path, metrics_enabled=False)) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.post("/graphql", json=TYPENAME)).status_code == 200


# -- who may scrape ----------------------------------------------------------------------


def _production(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    return make_settings(tmp_path, environment="production", database_url=database_url, **overrides)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_production_without_a_token_has_no_metrics(tmp_path: Path, database_url: str) -> None:
    async with serve_app(_production(tmp_path, database_url)) as client:
        response = await client.get("/metrics")
        assert response.status_code == 404
        assert "depot_" not in response.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_production_answers_only_the_metrics_token(tmp_path: Path, database_url: str) -> None:
    settings = _production(tmp_path, database_url, metrics_token=METRICS_TOKEN)
    async with serve_app(settings) as client:
        for headers in ({}, bearer("wrong"), {"Authorization": METRICS_TOKEN}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "depot_" not in refused.text
        series = await scrape(client, bearer(METRICS_TOKEN))
        assert total(series, "depot_http_requests_total", route="/metrics", status="401") >= 3


async def test_development_is_open_unless_a_token_is_set(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path)) as client:
        assert (await client.get("/metrics")).status_code == 200
    async with serve_app(make_settings(tmp_path, metrics_token=METRICS_TOKEN)) as client:
        assert (await client.get("/metrics")).status_code == 401
        assert (await client.get("/metrics", headers=bearer(METRICS_TOKEN))).status_code == 200


# -- depot worker and depot scheduler ------------------------------------------------------


def _scrape_port(port: int) -> Series:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


@pytest.mark.redis
# The job gauges' query runs on both databases in test_job_gauges_count_what_the_database_holds
# (and in test_serve_workers, scraped from depot serve --workers 2); here, what the ports serve.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_worker_and_scheduler_serve_metrics_on_their_port(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        redis_url=require_service("DEPOT_TEST_REDIS_URL", "Redis"),
        storage_url=storage_root(tmp_path).as_uri(),
        job_heartbeat_seconds=0.2,
    )
    scheduler_port, worker_port = free_port(), free_port()
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(serve_app(settings))
        scheduler = ["scheduler", "--metrics-port", str(scheduler_port)]
        await stack.enter_async_context(
            in_background(depot(scheduler, settings, tmp_path / "scheduler.log", ready="scheduled"))
        )
        _, headers = await signed_in(client)
        file = await upload_file(client, headers, "a.txt", b"hello\n")
        # No worker yet: the job waits, and the scheduler's scrape counts it in the database.
        job = await start_job(client, headers, {"verify": {"fileId": file["id"]}})
        series = await anyio.to_thread.run_sync(_scrape_port, scheduler_port)
        assert value(series, "depot_jobs_queued", kind="verify") == 1
        assert ("depot_database_connections_in_use", frozenset()) in series

        worker = ["worker", "--metrics-port", str(worker_port)]
        await stack.enter_async_context(
            in_background(depot(worker, settings, tmp_path / "worker.log", ready="worker running"))
        )
        assert (await wait_for_job(client, headers, job["id"]))["status"] == "SUCCEEDED"
        series = await anyio.to_thread.run_sync(_scrape_port, worker_port)
        # A fresh process: what it counted is this one job.
        assert value(series, "depot_jobs_started_total", kind="verify") == 1
        assert value(series, "depot_job_attempts_total", kind="verify") == 1
        finished = {"kind": "verify", "status": "succeeded"}
        assert value(series, "depot_jobs_finished_total", **finished) == 1
        assert value(series, "depot_job_duration_seconds_count", kind="verify") == 1
        assert value(series, "depot_job_queue_wait_seconds_count", kind="verify") == 1
        assert total(series, "depot_jobs_queued") == total(series, "depot_jobs_running") == 0
        assert "depot_http_requests_total" not in {name for name, _ in series}


@pytest.mark.redis
async def test_events_the_bus_cannot_take_are_counted(tmp_path: Path, database_url: str) -> None:
    """Redis stopped: a request's announcement fails at once (a request does not wait)."""
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(in_background(redis_server(tmp_path / "redis")))
        settings = make_settings(tmp_path, database_url=database_url, redis_url=redis.url)
        client = await stack.enter_async_context(serve_app(settings))
        _, headers = await signed_in(client)
        file = await upload_file(client, headers, "a.txt", b"x")
        before = await scrape(client)
        await anyio.to_thread.run_sync(redis.stop)
        delete = "mutation D($id: ID!) { deleteFile(id: $id) { id } }"
        body = await graphql(client, delete, {"id": file["id"]}, headers=headers)
        assert "errors" not in body, body  # the change stands; only the news is lost
        after = await scrape(client)
        failures = "depot_event_publish_failures_total"
        assert delta(after, before, failures, type="FILE_DELETED") == 1
