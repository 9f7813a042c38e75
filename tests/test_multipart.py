"""The GraphQL multipart request transport: CSRF, malformed requests, part order, streaming.

Requests are built by hand here, to send what a well-behaved client would not;
the last tests drive the ASGI app with a raw ``receive`` to pause or cut the
body halfway. Storage is a local directory, so leftovers show on disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws.transport import ASGIWebSocketTransport
from starlette.types import ASGIApp, Message

from api.app import create_app
from core.db import create_engine
from core.settings import Settings
from tests.conftest import make_settings, started
from tests.support import (
    CSRF_HEADER,
    UPLOAD_FILE,
    assert_error,
    assert_nothing_left,
    bearer,
    graphql,
    register,
    storage_root,
    stored_objects,
    update_user,
    upload_file,
)

pytestmark = pytest.mark.anyio

BOUNDARY = "depot-test-boundary"
TWO_UPLOADS = (
    "mutation ($a: Upload!, $b: Upload!) { "
    'a: uploadFile(file: $a, path: "a") { size sha256 } '
    'b: uploadFile(file: $b, path: "b") { size sha256 } }'
)

Part = tuple[str, str | None, bytes]  # form field name, filename (None: not a file), content


def multipart(parts: list[Part]) -> bytes:
    """A multipart/form-data body with ``parts``, in order."""
    body = bytearray()
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return bytes(body)


def upload_parts(
    operations: dict[str, Any], file_map: dict[str, list[str]], files: list[tuple[str, bytes]]
) -> list[Part]:
    return [
        ("operations", None, json.dumps(operations).encode()),
        ("map", None, json.dumps(file_map).encode()),
        *[(name, f"{name}.bin", content) for name, content in files],
    ]


def one_upload(path: str = "f") -> dict[str, Any]:
    return {"query": UPLOAD_FILE, "variables": {"file": None, "path": path}}


HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", **CSRF_HEADER}


async def post(
    client: httpx.AsyncClient, auth: dict[str, str], parts: list[Part], **headers: str
) -> httpx.Response:
    return await client.post(
        "/graphql", content=multipart(parts), headers={**HEADERS, **auth, **headers}
    )


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url=database_url, storage_url=storage_root(tmp_path).as_uri()
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[ASGIApp]:
    """The started app, for tests that speak raw ASGI to it."""
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


# -- CSRF -------------------------------------------------------------------------


async def test_multipart_without_csrf_header_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", b"data")])
    response = await client.post(
        "/graphql",
        content=multipart(parts),
        headers={"content-type": HEADERS["content-type"], **auth},
    )

    assert response.status_code == 400
    error = assert_error(response.json(), "BAD_REQUEST")
    assert "x-depot-csrf: 1" in error["message"]
    assert "Apollo-Require-Preflight: true" in error["message"]
    await assert_nothing_left(client, auth, settings)


# The headers Apollo Server accepts as CSRF proof: what Apollo's own clients send.
@pytest.mark.parametrize(
    "header", [("apollo-require-preflight", "true"), ("x-apollo-operation-name", "Upload")]
)
async def test_apollo_preflight_headers_are_accepted(
    client: httpx.AsyncClient, auth: dict[str, str], header: tuple[str, str]
) -> None:
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", b"data")])
    response = await client.post(
        "/graphql",
        content=multipart(parts),
        headers={"content-type": HEADERS["content-type"], header[0]: header[1], **auth},
    )

    assert response.json()["data"]["uploadFile"]["size"] == 4


async def test_an_empty_csrf_header_proves_nothing(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    # As in Apollo Server: a form cannot set the header at all, but an empty one is no proof.
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", b"data")])
    response = await client.post(
        "/graphql",
        content=multipart(parts),
        headers={"content-type": HEADERS["content-type"], "x-apollo-operation-name": "", **auth},
    )

    assert response.status_code == 400
    assert "X-Apollo-Operation-Name" in assert_error(response.json(), "BAD_REQUEST")["message"]


# -- malformed requests -------------------------------------------------------------


async def test_missing_file_part_is_a_bad_request(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [])

    response = await post(client, auth, parts)

    error = assert_error(response.json(), "BAD_REQUEST")
    assert "map entry '0' has no file part" in error["message"]
    await assert_nothing_left(client, auth, settings)


async def test_file_part_not_in_map_is_a_bad_request(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", b"data"), ("1", b"extra")])

    response = await post(client, auth, parts)

    error = assert_error(response.json(), "BAD_REQUEST")
    assert "part '1' is not in `map`" in error["message"]
    await assert_nothing_left(client, auth, settings)


async def test_file_part_sent_twice_is_a_bad_request(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", b"one"), ("0", b"two")])

    response = await post(client, auth, parts)

    error = assert_error(response.json(), "BAD_REQUEST")
    assert "part '0' was sent twice" in error["message"]
    await assert_nothing_left(client, auth, settings)


@pytest.mark.parametrize(
    ("operations", "file_map", "message"),
    [
        (one_upload(), {"0": ["variables.nope"]}, "names 'variables.nope', which is not in"),
        (one_upload(), {"0": ["query.x"]}, "names 'query.x', which is not in"),
        (one_upload(), {"0": "variables.file"}, "The `map` field must be a JSON object"),
        (one_upload(), [], "The `map` field must be a JSON object"),
        ("not an object", {"0": ["variables.file"]}, "The `operations` field must be"),
    ],
    ids=["not-in-variables", "into-a-string", "not-a-list", "map-not-object", "ops-not-object"],
)
async def test_bad_map_is_refused_before_execution(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    operations: Any,
    file_map: Any,
    message: str,
) -> None:
    parts = upload_parts(operations, file_map, [("0", b"data")])

    response = await post(client, auth, parts)

    assert response.status_code == 400
    error = assert_error(response.json(), "BAD_REQUEST")
    assert message in error["message"]
    await assert_nothing_left(client, auth, settings)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([("operations", None, b"{nope")], "The `operations` field must be JSON"),
        (
            [("operations", None, json.dumps(one_upload()).encode()), ("map", None, b"[")],
            "The `map` field must be JSON",
        ),
        ([("map", None, b"{}"), ("operations", None, b"{}")], "starts with the `operations`"),
        ([("0", "f.bin", b"data")], "starts with the `operations`"),
        ([], "needs the `operations` and `map` fields"),
    ],
    # An `operations` field over the limit is a 413: tests/test_bodies.py.
    ids=["ops-json", "map-json", "map-first", "file-first", "no-fields"],
)
async def test_malformed_form_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], parts: list[Part], message: str
) -> None:
    response = await post(client, auth, parts)

    assert response.status_code == 400
    error = assert_error(response.json(), "BAD_REQUEST")
    assert message in error["message"]


async def test_body_without_closing_boundary_is_refused(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    parts = upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", b"data")])
    body = multipart(parts).removesuffix(f"--{BOUNDARY}--\r\n".encode())

    response = await client.post("/graphql", content=body, headers={**HEADERS, **auth})

    error = assert_error(response.json(), "BAD_REQUEST")
    assert "closing boundary" in error["message"]
    await assert_nothing_left(client, auth, settings)


async def test_missing_boundary_is_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.post(
        "/graphql",
        content=b"x",
        headers={"content-type": "multipart/form-data", **CSRF_HEADER, **auth},
    )

    assert response.status_code == 400
    assert "boundary" in assert_error(response.json(), "BAD_REQUEST")["message"]


async def test_upload_variable_sent_as_json_is_bad_user_input(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    body = await graphql(client, UPLOAD_FILE, {"file": "not a file", "path": "a"}, headers=auth)

    assert "multipart" in assert_error(body, "BAD_USER_INPUT", field="file")["message"]


# -- several files ------------------------------------------------------------------


@pytest.mark.parametrize("order", ["ab", "ba"])
async def test_two_files_for_two_mutations_in_either_order(
    client: httpx.AsyncClient, auth: dict[str, str], tmp_path: Path, order: str
) -> None:
    # Larger than the in-memory spool and the stream buffer, so parts that
    # arrive before their reader are spooled to disk.
    files = {"a": b"A" * (3 * 1024 * 1024 + 7), "b": b"B" * (2 * 1024 * 1024 + 3)}
    operations = {"query": TWO_UPLOADS, "variables": {"a": None, "b": None}}
    parts = upload_parts(
        operations,
        {"a": ["variables.a"], "b": ["variables.b"]},
        [(name, files[name]) for name in order],
    )

    response = await post(client, auth, parts)

    body = response.json()
    assert "errors" not in body, body
    for name, content in files.items():
        assert body["data"][name] == {
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
    assert len(stored_objects(storage_root(tmp_path))) == 2


async def test_a_file_nobody_reads_does_not_stall_the_request(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    # The first mutation is refused before it reads its file: the parser,
    # waiting for a reader of part "a", must not hold the answer back.
    operations = {
        "query": TWO_UPLOADS.replace('path: "a"', 'path: "../a"'),
        "variables": {"a": None, "b": None},
    }
    parts = upload_parts(
        operations,
        {"a": ["variables.a"], "b": ["variables.b"]},
        [("a", b"a" * 2_000_000), ("b", b"b" * 10)],
    )

    with anyio.fail_after(20):
        body = (await post(client, auth, parts)).json()

    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    await assert_nothing_left(client, auth, settings)


# -- streaming and disconnects ----------------------------------------------------------


def raw_request(auth: dict[str, str], length: int) -> dict[str, Any]:
    headers = {**HEADERS, **auth, "content-length": str(length), "host": "depot.test"}
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("depot.test", 80),
    }


async def drive(
    app: ASGIApp,
    scope: dict[str, Any],
    body: bytes,
    *,
    cut_at: int | None = None,
    pause_at: int | None = None,
    resume_when: Callable[[], Awaitable[None]] | None = None,
) -> list[Message]:
    """Send ``body`` in 64 KiB pieces: disconnect at ``cut_at``, or pause at ``pause_at``.

    At ``pause_at`` the client sends nothing more until ``resume_when()`` returns.
    """
    sent: list[Message] = []
    offset = 0
    paused = False
    answered = anyio.Event()

    async def receive() -> Message:
        nonlocal offset, paused
        if cut_at is not None and offset >= cut_at:
            return {"type": "http.disconnect"}
        if offset >= len(body):
            # After the whole body, a client waits for the answer.
            await answered.wait()
            return {"type": "http.disconnect"}
        if offset == pause_at and not paused and resume_when is not None:
            paused = True
            await resume_when()
        end = min(offset + 64 * 1024, len(body))
        for stop in (pause_at, cut_at):
            if stop is not None and offset < stop:
                end = min(end, stop)
        piece, offset = body[offset:end], end
        return {"type": "http.request", "body": piece, "more_body": offset < len(body)}

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(20):
        await app(scope, receive, send)
    answered.set()
    return sent


def response_body(messages: list[Message]) -> dict[str, Any]:
    chunks = [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]
    decoded: dict[str, Any] = json.loads(b"".join(chunks))
    return decoded


@pytest.mark.parametrize("cut_fraction", [0.0, 0.5, 0.999])
async def test_client_that_disconnects_halfway_leaves_nothing(
    app: ASGIApp,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    cut_fraction: float,
) -> None:
    content = bytes(range(256)) * 8192  # 2 MiB
    body = multipart(upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", content)]))
    head = body.index(content)
    cut_at = head + int(len(content) * cut_fraction)

    messages = await drive(app, raw_request(auth, len(body)), body, cut_at=cut_at)

    error = assert_error(response_body(messages), "BAD_REQUEST")
    assert "disconnected" in error["message"]
    await assert_nothing_left(client, auth, settings)


async def test_bytes_reach_storage_before_the_body_has_arrived(
    app: ASGIApp, client: httpx.AsyncClient, auth: dict[str, str], tmp_path: Path
) -> None:
    content = b"s" * (4 * 1024 * 1024)
    body = multipart(upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", content)]))
    pause_at = body.index(content) + 3 * 1024 * 1024

    async def written_to_storage() -> None:
        # Local storage writes in 1 MiB blocks to a temporary file: some of
        # them must be on disk while the rest of the body is still to come.
        with anyio.fail_after(10):
            # The disk sends no events: poll it.
            while not any(p.stat().st_size > 0 for p in stored_objects(storage_root(tmp_path))):  # noqa: ASYNC110
                await anyio.sleep(0.01)

    messages = await drive(
        app,
        raw_request(auth, len(body)),
        body,
        pause_at=pause_at,
        resume_when=written_to_storage,
    )

    file = response_body(messages)["data"]["uploadFile"]
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    [stored] = stored_objects(storage_root(tmp_path))
    assert stored.stat().st_size == len(content)


async def test_over_quota_upload_is_answered_before_the_body_ends(
    app: ASGIApp,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    engine = create_engine(settings)
    try:
        await update_user(engine, "ada@example.com", quota_bytes=1024 * 1024)
    finally:
        await engine.dispose()
    content = b"x" * (20 * 1024 * 1024)
    body = multipart(upload_parts(one_upload(), {"0": ["variables.file"]}, [("0", content)]))

    # The client never sends the second half: the answer must not need it.
    messages = await drive(
        app,
        raw_request(auth, len(body)),
        body,
        pause_at=body.index(content) + len(content) // 2,
        resume_when=anyio.sleep_forever,
    )

    assert_error(response_body(messages), "QUOTA_EXCEEDED")
    await assert_nothing_left(client, auth, settings)
    assert (await upload_file(client, auth, "small", b"x" * 1024 * 1024))["size"] == 1024 * 1024
