"""Bounded request bodies: too large (413), too slow (408), spooled past the quota.

Most tests speak raw ASGI to the started app, so they can count how much of
a body the server read and hold a client silent halfway; the header limits
and the declared-length refusal are checked on a real ``depot serve`` over a
socket, where uvicorn's own parser is the one at work.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from httpx_ws import WebSocketDisconnect, connect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from starlette.types import ASGIApp, Message

from api.app import create_app
from core.db import create_engine
from core.settings import Settings
from tests.conftest import make_settings, started
from tests.processes import depot_serve, free_port
from tests.support import (
    assert_error,
    assert_nothing_left,
    bearer,
    leftover_objects,
    register,
    storage_root,
    update_user,
    upload_file,
)
from tests.test_direct_uploads import create_upload
from tests.test_multipart import HEADERS, TWO_UPLOADS, multipart, one_upload, upload_parts

pytestmark = pytest.mark.anyio

LIMIT = 64 * 1024
SILENCE_S = 0.5
PIECE = 16 * 1024
ANSWER_WITHIN_S = 10
ENDLESS = 64 * 1024 * 1024  # "never ends", as far as a test can tell


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=storage_root(tmp_path).as_uri(),
        max_request_bytes=LIMIT,
        body_timeout_seconds=SILENCE_S,
        max_upload_files=3,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[ASGIApp]:
    async with started(create_app(settings)) as started_app:
        yield started_app


@pytest.fixture
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = ASGIWebSocketTransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://depot.test") as client:
        yield client


@pytest.fixture
async def auth(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await register(client))["accessToken"])


class Client:
    """A raw ASGI client that sends ``body`` in pieces, then (if ``stall``) falls silent."""

    def __init__(
        self, body: bytes, *, stall: bool, endless: bool = False, pause_s: float = 0.0
    ) -> None:
        self.body = body
        self.stall = stall
        self.endless = endless
        self.pause_s = pause_s
        self.received = 0
        self.messages: list[Message] = []

    async def receive(self) -> Message:
        # A checkpoint, as a real socket read is: the answer's deadline can interrupt it.
        await anyio.lowlevel.checkpoint()
        if self.pause_s:
            await anyio.sleep(self.pause_s)
        if self.endless and self.received < ENDLESS:
            self.received += PIECE
            return {"type": "http.request", "body": b" " * PIECE, "more_body": True}
        if self.received < len(self.body):
            piece = self.body[self.received : self.received + PIECE]
            self.received += len(piece)
            return {"type": "http.request", "body": piece, "more_body": True}
        if self.stall:
            await anyio.sleep_forever()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    def json(self) -> dict[str, Any]:
        chunks = [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]
        decoded: dict[str, Any] = json.loads(b"".join(chunks))
        return decoded


def scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {"host": "depot.test", **headers}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("depot.test", 80),
    }


async def run(app: ASGIApp, request: dict[str, Any], client: Client) -> Client:
    with anyio.fail_after(ANSWER_WITHIN_S):
        await app(request, client.receive, client.send)
    return client


JSON_HEADERS = {"content-type": "application/json"}


# -- request size -------------------------------------------------------------------


async def test_declared_length_over_the_limit_is_refused_unread(app: ASGIApp) -> None:
    client = Client(b"{}", stall=True)
    headers = {**JSON_HEADERS, "content-length": str(300 * 1024 * 1024)}

    await run(app, scope("POST", "/graphql", headers), client)

    assert client.status == 413
    assert_error(client.json(), "PAYLOAD_TOO_LARGE")
    assert client.received == 0


async def test_received_bytes_over_the_limit_are_refused_at_once(app: ASGIApp) -> None:
    # No Content-Length (chunked): the bytes themselves pass the limit, and go on and on.
    client = Client(b"", stall=False, endless=True)

    await run(app, scope("POST", "/graphql", JSON_HEADERS), client)

    assert client.status == 413
    error = assert_error(client.json(), "PAYLOAD_TOO_LARGE")
    assert "DEPOT_MAX_REQUEST_BYTES" in error["message"]
    assert client.received <= LIMIT + PIECE


async def test_a_million_ids_are_refused_before_parsing(tmp_path: Path, database_url: str) -> None:
    # At the default limit: the list is refused by its size, never decoded.
    settings = make_settings(tmp_path, database_url=database_url)
    ids = [f"RmlsZTo{n:08d}" for n in range(1_000_000)]
    query = "query ($ids: [ID!]!) { nodes(ids: $ids) { id } }"
    body = json.dumps({"query": query, "variables": {"ids": ids}}).encode()
    del ids
    async with started(create_app(settings)) as app:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://depot.test") as client:
            # What the request allocates, not how long it takes: decoding the list would
            # hold a million strings (some 70 MiB), more than the body's own 18 MiB.
            tracemalloc.start()
            try:
                headers = {"content-type": "application/json"}
                response = await client.post("/graphql", content=body, headers=headers)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()

    assert response.status_code == 413
    assert_error(response.json(), "PAYLOAD_TOO_LARGE")
    assert peak < len(body), f"refusing {len(body)} bytes allocated {peak} bytes"


async def test_multipart_operations_over_the_limit(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    parts = [("operations", None, b" " * (LIMIT + 1))]
    response = await client.post("/graphql", content=multipart(parts), headers={**HEADERS, **auth})

    assert response.status_code == 413
    error = assert_error(response.json(), "PAYLOAD_TOO_LARGE")
    assert f"at most {LIMIT} bytes" in error["message"]


async def test_multipart_map_over_the_limit(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    parts = [
        ("operations", None, json.dumps(one_upload()).encode()),
        ("map", None, b" " * (LIMIT + 1)),
    ]
    response = await client.post("/graphql", content=multipart(parts), headers={**HEADERS, **auth})

    assert response.status_code == 413
    assert_error(response.json(), "PAYLOAD_TOO_LARGE")


async def test_multipart_with_too_many_files_in_map(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    operations = {"query": TWO_UPLOADS, "variables": {"a": None, "b": None}}
    file_map = {str(n): ["variables.a"] for n in range(4)}
    parts = upload_parts(operations, file_map, [(str(n), b"x") for n in range(4)])

    response = await client.post("/graphql", content=multipart(parts), headers={**HEADERS, **auth})

    assert response.status_code == 413
    error = assert_error(response.json(), "PAYLOAD_TOO_LARGE")
    assert "DEPOT_MAX_UPLOAD_FILES" in error["message"]
    await assert_nothing_left(client, auth, settings)


async def test_multipart_with_too_many_parts(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    # Parts that `map` does not name still count: the parser stops at the limit.
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", b"x")])
    parts += [(f"extra{n}", "x.bin", b"x") for n in range(10)]

    response = await client.post("/graphql", content=multipart(parts), headers={**HEADERS, **auth})

    assert response.status_code == 413
    assert_error(response.json(), "PAYLOAD_TOO_LARGE")
    await assert_nothing_left(client, auth, settings)


# -- silent bodies ------------------------------------------------------------------


async def test_silent_json_body_times_out(app: ASGIApp) -> None:
    body = json.dumps({"query": "{ __typename }"}).encode()
    client = Client(body[:10], stall=True)
    headers = {**JSON_HEADERS, "content-length": str(len(body))}

    await run(app, scope("POST", "/graphql", headers), client)

    assert client.status == 408
    error = assert_error(client.json(), "REQUEST_TIMEOUT")
    assert "DEPOT_BODY_TIMEOUT_SECONDS" in error["message"]


async def test_a_slow_json_body_that_keeps_arriving_is_answered(app: ASGIApp) -> None:
    # Four messages (three pieces and the end), each after most of the silence allowed:
    # the body takes longer than the bound, but is never silent for that long.
    body = json.dumps({"query": "{ __typename }"}).encode() + b" " * (2 * PIECE + 10)
    client = Client(body, stall=False, pause_s=SILENCE_S * 0.6)
    headers = {**JSON_HEADERS, "content-length": str(len(body))}

    started_at = time.monotonic()
    await run(app, scope("POST", "/graphql", headers), client)

    assert time.monotonic() - started_at > SILENCE_S
    assert client.status == 200
    assert client.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize("silent_in", ["operations", "file"])
async def test_silent_multipart_upload_times_out_and_leaves_nothing(
    app: ASGIApp,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    settings: Settings,
    silent_in: str,
) -> None:
    content = b"u" * (3 * 1024 * 1024)
    body = multipart(upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", content)]))
    stop = 20 if silent_in == "operations" else body.index(content) + len(content) // 2
    raw = Client(body[:stop], stall=True)
    headers = {**HEADERS, **auth, "content-length": str(len(body))}

    await run(app, scope("POST", "/graphql", headers), raw)

    assert raw.status == 408
    assert_error(raw.json(), "REQUEST_TIMEOUT")
    await assert_nothing_left(client, auth, settings)


async def test_silent_direct_upload_times_out_and_stores_nothing(
    app: ASGIApp, client: httpx.AsyncClient, auth: dict[str, str], settings: Settings
) -> None:
    size = 2 * 1024 * 1024
    ticket = await create_upload(client, auth, path="slow", size=size)
    url = httpx.URL(ticket["url"])
    raw = Client(b"p" * (size // 2), stall=True)
    headers = {**ticket["headers"], "content-length": str(size)}

    await run(app, scope("PUT", url.path, headers), raw)

    assert raw.status == 408
    assert "DEPOT_BODY_TIMEOUT_SECONDS" in raw.json()["error"]
    assert leftover_objects(settings) == []


# -- spooled parts ------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["quota", "max_upload_bytes"])
async def test_spooled_part_is_refused_at_the_quota(
    tmp_path: Path, database_url: str, limit: str
) -> None:
    # Part b arrives while the resolver waits for part a, so b is spooled; the
    # client never sends the rest of b, so only a refusal at once answers.
    mib = 1024 * 1024
    values: dict[str, object] = {"max_upload_bytes": mib} if limit == "max_upload_bytes" else {}
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=storage_root(tmp_path).as_uri(),
        **values,
    )
    async with started(create_app(settings)) as app:
        transport = ASGIWebSocketTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://depot.test") as client:
            auth = bearer((await register(client))["accessToken"])
            if limit == "quota":
                engine = create_engine(settings)
                try:
                    await update_user(engine, "ada@example.com", quota_bytes=mib)
                finally:
                    await engine.dispose()
            b = b"b" * (20 * mib)
            operations = {"query": TWO_UPLOADS, "variables": {"a": None, "b": None}}
            parts = upload_parts(
                operations, {"a": ["variables.a"], "b": ["variables.b"]}, [("b", b), ("a", b"a")]
            )
            body = multipart(parts)
            raw = Client(body[: body.index(b) + 4 * mib], stall=True)
            headers = {**HEADERS, **auth, "content-length": str(len(body))}

            await run(app, scope("POST", "/graphql", headers), raw)

            assert raw.json()["errors"][0]["extensions"]["code"] == "QUOTA_EXCEEDED"
            assert raw.received < body.index(b) + 2 * mib
            await assert_nothing_left(client, auth, settings)
            assert (await upload_file(client, auth, "fits", b"x" * 1000))["size"] == 1000


# -- a real server: headers and declared lengths ------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    directory = tmp_path_factory.mktemp("bodies")
    settings = make_settings(directory)
    port = free_port()
    with depot_serve(settings, directory / "depot.log", port):
        yield port


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` (possibly incomplete), and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_serve_refuses_a_declared_length_without_the_body(served: int) -> None:
    request = (
        b"POST /graphql HTTP/1.1\r\nHost: depot\r\nContent-Type: application/json\r\n"
        b"Content-Length: 314572800\r\n\r\n"
    )
    answer = exchange(served, request)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"PAYLOAD_TOO_LARGE" in answer


@pytest.mark.parametrize("headers", ["one huge", "very many"])
def test_serve_caps_header_size_and_count(served: int, headers: str) -> None:
    if headers == "one huge":
        extra = b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n"
    else:
        extra = b"".join(b"X-H%d: 1\r\n" % n for n in range(20_000))
    request = b"GET /healthz HTTP/1.1\r\nHost: depot\r\n" + extra + b"\r\n"
    with socket.create_connection(("127.0.0.1", served), timeout=5) as sock:
        # Refused before the end of the headers is as good.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert httpx.get(f"http://127.0.0.1:{served}/healthz").status_code == 200


def test_serve_still_upgrades_websockets(served: int) -> None:
    # The h11 server (chosen for its header bound) hands /graphql sockets over
    # as before: the protocol runs, and refuses an anonymous connection_init.
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{served}") as client,
        connect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as ws,
    ):
        ws.send_json({"type": "connection_init", "payload": {}})
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json(timeout=5)
    assert closed.value.code == 4401
