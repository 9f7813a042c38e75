"""One trace from ``startJob`` through the worker's attempt to the job's last event.

Real processes export over OTLP/HTTP to a real receiver on loopback (the
protocol's protobuf, decoded with ``opentelemetry-proto``): ``depot serve``
alone (in-process jobs), and ``depot serve`` with a ``depot worker`` over Redis.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import make_settings
from tests.processes import (
    depot_serve,
    depot_worker,
    free_port,
    in_background,
    redis_server,
    start_together,
)
from tests.support import (
    collect_job_events,
    graphql,
    signed_in,
    subscriber,
    upload_file,
)

pytestmark = pytest.mark.anyio

START_VERIFY = "mutation StartVerify($input: JobInput!) { startJob(input: $input) { id traceId } }"
TRACED_EVENTS = (
    "subscription Events($id: ID!, $after: String) "
    "{ jobEvents(jobId: $id, after: $after) { cursor status traceId } }"
)
JOB = "query Job($id: ID!) { job(id: $id) { status traceId } }"
DOWNLOAD_URL = "query Url($id: ID!) { file(id: $id) { downloadUrl } }"
SPANS_TIMEOUT_S = 20
# Span.SpanKind in OTLP's protobuf.
OTLP_SERVER = 2
OTLP_CONSUMER = 5
APP_ORIGIN = "https://app.example.com"


@dataclass(frozen=True)
class Span:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.take(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                name=span.name,
                                service=resource.get("service.name", ""),
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                            )
                        )

    def wait_for(self, name: str, trace_id: str) -> Span:
        deadline = time.monotonic() + SPANS_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._lock:
                for span in self.spans:
                    if span.name == name and span.trace_id == trace_id:
                        return span
            time.sleep(0.05)
        names = sorted({(s.name, s.trace_id) for s in self.spans})
        pytest.fail(f"no span {name!r} in trace {trace_id}; got {names}")

    def spans_now(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def in_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@contextmanager
def otlp_receiver() -> Iterator[_Receiver]:
    receiver = _Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.shutdown()
        receiver.server_close()


def otel_env(receiver: _Receiver) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


@asynccontextmanager
async def _traced_job(
    client: httpx.AsyncClient, receiver: _Receiver
) -> AsyncIterator[tuple[dict[str, Any], list[dict[str, Any]], Span, Span]]:
    """Start a ``verify`` job, follow it to the end; (job, its events, startJob's span,
    the attempt's span)."""
    token, headers = await signed_in(client)
    uploaded = await upload_file(client, headers, "a.bin", b"checked bytes")
    body = await graphql(
        client, START_VERIFY, {"input": {"verify": {"fileId": uploaded["id"]}}}, headers=headers
    )
    assert "errors" not in body, body
    started = body["data"]["startJob"]
    trace_id = started["traceId"]
    assert trace_id is not None, started
    assert len(trace_id) == 32, started
    async with subscriber(client, token) as ws:
        events = await collect_job_events(ws, "1", started["id"], query=TRACED_EVENTS)
    job = (await graphql(client, JOB, {"id": started["id"]}, headers=headers))["data"]["job"]
    assert job["status"] == "SUCCEEDED", job
    operation = await anyio.to_thread.run_sync(receiver.wait_for, "mutation StartVerify", trace_id)
    attempt = await anyio.to_thread.run_sync(receiver.wait_for, "job verify", trace_id)
    yield job, events, operation, attempt


def _assert_one_trace(
    receiver: _Receiver,
    job: dict[str, Any],
    events: list[dict[str, Any]],
    operation: Span,
    attempt: Span,
) -> None:
    trace_id = job["traceId"]
    assert operation.service == "depot-api"
    assert operation.attributes["graphql.operation.type"] == "mutation"
    assert attempt.parent_id == operation.span_id, "the attempt continues startJob's span"
    assert attempt.attributes["depot.job.kind"] == "verify"
    assert attempt.attributes["depot.job.outcome"] == "succeeded"
    spans = receiver.in_trace(trace_id)
    [server] = [s for s in spans if s.span_id == operation.parent_id]
    assert server.name == "POST /graphql", server
    assert server.kind == OTLP_SERVER, server
    assert server.attributes["http.route"] == "/graphql", server
    assert server.attributes["http.response.status_code"] == 200, server
    sql = [s for s in spans if s.parent_id == attempt.span_id and s.service == attempt.service]
    assert any("db.system" in s.attributes or "db.system.name" in s.attributes for s in sql), (
        "the attempt's SQL nests under it"
    )
    assert [e["traceId"] for e in events] == [trace_id] * len(events)
    assert events[-1]["status"] == "SUCCEEDED"
    # A trace starts only at a request or an attempt: no trace of one SQL
    # statement or Redis command (a listener's read, a heartbeat) of its own.
    roots = [s for s in receiver.spans_now() if not s.parent_id]
    assert {s.kind for s in roots} <= {OTLP_SERVER, OTLP_CONSUMER}, roots


async def test_one_trace_from_start_job_to_the_last_event_in_process(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path, storage_url=(tmp_path / "files").as_uri(), cors_origins=[APP_ORIGIN]
    )
    with otlp_receiver() as receiver:
        async with (
            in_background(
                depot_serve(settings, tmp_path / "serve.log", port, env=otel_env(receiver))
            ) as api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
            _traced_job(client, receiver) as (job, events, operation, attempt),
        ):
            _assert_one_trace(receiver, job, events, operation, attempt)
            assert attempt.service == "depot-api", "in-process jobs"

            # A caller that sampled its trace out: its id goes on, nothing is exported.
            _, headers = await signed_in(client, "mary@example.com")
            unsampled = "4bf92f3577b34da6a3ce929d0e0e4736"
            uploaded = await upload_file(client, headers, "c.bin", b"unsampled bytes")
            body = await graphql(
                client,
                START_VERIFY,
                {"input": {"verify": {"fileId": uploaded["id"]}}},
                headers={**headers, "traceparent": f"00-{unsampled}-00f067aa0ba902b7-00"},
            )
            assert body["data"]["startJob"]["traceId"] == unsampled, body

            # A download's signed token stays out of the span, as out of the log.
            _, headers = await signed_in(client, "grace@example.com")
            uploaded = await upload_file(client, headers, "b.bin", b"bytes")
            body = await graphql(client, DOWNLOAD_URL, {"id": uploaded["id"]}, headers=headers)
            url = body["data"]["file"]["downloadUrl"]
            # The process was given DEPOT_PUBLIC_BASE_URL (localhost:8000): its path, here.
            assert (await client.get(urlsplit(url).path)).status_code == 200
            secret = url.rpartition("/")[2]
            download = await anyio.to_thread.run_sync(_wait_for_download, receiver, "GET")
            assert download.name == "GET /files/download/<redacted>"
            assert not [v for v in download.attributes.values() if secret in str(v)]
            # A preflight too, which the CORS middleware answers before the router runs.
            preflight = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET"}
            assert (await client.options(urlsplit(url).path, headers=preflight)).is_success
            answered = await anyio.to_thread.run_sync(_wait_for_download, receiver, "OPTIONS")
            assert answered.name == "OPTIONS /files/download/<redacted>"
            assert not [v for v in answered.attributes.values() if secret in str(v)]
            # Exported in order: the unsampled request came before these.
            assert receiver.in_trace(unsampled) == []
            log = api.output()
        assert f"trace_id={job['traceId']}" in log, "log lines carry the trace id"


def _wait_for_download(receiver: _Receiver, method: str) -> Span:
    deadline = time.monotonic() + SPANS_TIMEOUT_S
    while time.monotonic() < deadline:
        found = [s for s in receiver.spans if s.name.startswith(f"{method} /files/download")]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail("no download span")


@pytest.mark.redis
async def test_the_trace_goes_through_the_queue_to_a_worker(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(in_background(redis_server(tmp_path / "redis")))
        settings = make_settings(
            tmp_path,
            database_url=database_url,
            redis_url=redis.url,
            storage_url=(tmp_path / "files").as_uri(),
        )
        receiver = stack.enter_context(otlp_receiver())
        env = otel_env(receiver)
        await start_together(
            stack,
            depot_serve(settings, tmp_path / "serve.log", port, env=env),
            depot_worker(settings, tmp_path / "worker.log", env=env),
        )
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        )
        job, events, operation, attempt = await stack.enter_async_context(
            _traced_job(client, receiver)
        )
        _assert_one_trace(receiver, job, events, operation, attempt)
        assert attempt.service == "depot-worker"
        # The attempt's announcements to Redis nest under it, named by command only.
        redis_spans = [
            s
            for s in receiver.in_trace(job["traceId"])
            if s.parent_id == attempt.span_id and s.attributes.get("db.system.name") == "redis"
        ]
        assert redis_spans, "the attempt's Redis commands nest under it"
        assert all(s.name == s.attributes["db.operation.name"] for s in redis_spans)
        assert all(s.name.isupper() and " " not in s.name for s in redis_spans)


async def test_s3_calls_nest_under_the_request(tmp_path: Path, s3_url: str) -> None:
    port = free_port()
    settings = make_settings(tmp_path, storage_url=s3_url)
    with otlp_receiver() as receiver:
        async with (
            in_background(
                depot_serve(settings, tmp_path / "serve.log", port, env=otel_env(receiver))
            ),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            _, headers = await signed_in(client)
            await upload_file(client, headers, "a.bin", b"bytes for S3")
            s3 = await anyio.to_thread.run_sync(_wait_for_s3, receiver)
    by_id = {s.span_id: s for s in receiver.in_trace(s3.trace_id)}
    parent = by_id[s3.parent_id]
    while parent.parent_id:
        parent = by_id[parent.parent_id]
    assert (parent.name, parent.kind) == ("POST /graphql", OTLP_SERVER), parent
    assert s3.attributes["rpc.service"] == "S3", s3


def _wait_for_s3(receiver: _Receiver) -> Span:
    deadline = time.monotonic() + SPANS_TIMEOUT_S
    while time.monotonic() < deadline:
        found = [s for s in receiver.spans_now() if s.name.startswith("S3.") and s.parent_id]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"no S3 span; got {sorted({s.name for s in receiver.spans_now()})}")


async def test_a_ratio_sampler_samples_that_share_of_requests(tmp_path: Path) -> None:
    """At ``parentbased_traceidratio`` 0.5 about half the requests are traced, whole:
    each root's lot is drawn once, before the SDK is asked
    (``core.trace_sampling.QuickDrops``), not once there and again in the SDK
    (a quarter), nor never or always."""
    port = free_port()
    settings = make_settings(tmp_path, storage_url=(tmp_path / "files").as_uri())
    with otlp_receiver() as receiver:
        env = {**otel_env(receiver), **otel_env_ratio(0.5)}
        async with (
            in_background(depot_serve(settings, tmp_path / "serve.log", port, env=env)),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            for _ in range(RATIO_REQUESTS):
                body = await graphql(client, "query Typename { __typename }")
                assert "errors" not in body, body
            # Exported in order: once this caller-sampled trace is in, so are the others.
            last = "0af7651916cd43dd8448eb211c80319c"
            await graphql(
                client,
                "query Typename { __typename }",
                headers={"traceparent": f"00-{last}-b7ad6b7169203331-01"},
            )
            await anyio.to_thread.run_sync(receiver.wait_for, "query Typename", last)
    spans = [s for s in receiver.spans_now() if s.trace_id != last]
    servers = {s.span_id: s for s in spans if s.kind == OTLP_SERVER and not s.parent_id}
    operations = [s for s in spans if s.name == "query Typename"]
    # Binomial(200, 0.5): 100 ± 7; drawn twice it would be 50 ± 6.
    assert 70 <= len(servers) <= 130, len(servers)
    assert sorted(s.parent_id for s in operations) == sorted(servers), "whole traces"
    assert all(s.attributes["http.route"] == "/graphql" for s in servers.values())


RATIO_REQUESTS = 200


async def test_a_trace_the_ratio_drops_keeps_its_id_and_exports_nothing(tmp_path: Path) -> None:
    """At ratio 0 a request's span is made without the SDK; its trace id still goes to
    the job, its attempt and its events, and nothing of it is exported. A caller's
    sampled trace is still followed."""
    port = free_port()
    settings = make_settings(tmp_path, storage_url=(tmp_path / "files").as_uri())
    with otlp_receiver() as receiver:
        env = {**otel_env(receiver), **otel_env_ratio(0.0)}
        async with (
            in_background(depot_serve(settings, tmp_path / "serve.log", port, env=env)) as api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ):
            token, headers = await signed_in(client)
            uploaded = await upload_file(client, headers, "a.bin", b"checked bytes")
            body = await graphql(
                client,
                START_VERIFY,
                {"input": {"verify": {"fileId": uploaded["id"]}}},
                headers=headers,
            )
            started = body["data"]["startJob"]
            trace_id = started["traceId"]
            assert trace_id is not None, started
            assert len(trace_id) == 32, started
            assert trace_id != "0" * 32
            async with subscriber(client, token) as ws:
                events = await collect_job_events(ws, "1", started["id"], query=TRACED_EVENTS)
            assert events[-1]["status"] == "SUCCEEDED", events
            assert [e["traceId"] for e in events] == [trace_id] * len(events)
            job = (await graphql(client, JOB, {"id": started["id"]}, headers=headers))["data"]
            assert job["job"]["traceId"] == trace_id

            # A caller that sampled its trace in: followed, whatever the ratio.
            sampled = "0af7651916cd43dd8448eb211c80319c"
            body = await graphql(
                client,
                "query Me { me { id } }",
                headers={**headers, "traceparent": f"00-{sampled}-b7ad6b7169203331-01"},
            )
            assert "errors" not in body, body
            await anyio.to_thread.run_sync(receiver.wait_for, "query Me", sampled)
            # Exported in order: the job's trace, had it been, came before this one.
            assert receiver.in_trace(trace_id) == []
            assert {s.trace_id for s in receiver.spans_now()} == {sampled}
            log = api.output()
        assert f"trace_id={trace_id}" in log, "log lines carry the dropped trace's id"


def otel_env_ratio(ratio: float) -> dict[str, str]:
    return {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }
