"""tus against a real ``depot serve``: the stock tus-js-client, and connections cut mid-request.

``e2e/tus/upload.mjs`` (tus-js-client from ``e2e/node_modules``, run by Node)
uploads a file made here, cutting the connection at 30 % and at 90 % and
resuming from the offset the server reports; the file Depot keeps must be
those bytes exactly. Raw sockets check what a cut keeps: what arrived, unless
the request carried a checksum. Each runs on local storage and S3, SQLite and
PostgreSQL. Without Node or ``npm ci --prefix e2e`` the client test skips
locally and fails in CI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from core.settings import Settings
from tests.conftest import make_settings, on_local_and_s3
from tests.processes import depot_serve, free_port
from tests.support import REGISTER, leftover_objects, read_object

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "e2e" / "tus" / "upload.mjs"
CLIENT = ROOT / "e2e" / "node_modules" / "tus-js-client" / "package.json"
MiB = 1024 * 1024
FILES = "query { files { edges { node { path size sha256 storageKey: id } } } }"
UPLOADS = "query { uploads { edges { node { path offset length } } } }"


def _node() -> str:
    """Node and tus-js-client, or skip (locally) / fail (CI) saying how to get them."""
    node = shutil.which("node")
    if node is not None and CLIENT.is_file():
        return node
    message = "tus-js-client needs Node 20 and `npm ci --prefix e2e`"
    if os.environ.get("CI"):
        pytest.fail(f"{message}, but CI must run the tus client test")
    pytest.skip(message)


class Server:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=30)

    def graphql(self, query: str, variables: dict[str, object] | None = None) -> dict[str, object]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables or {}})
        body: dict[str, object] = response.json()
        assert "errors" not in body, body
        data = body["data"]
        assert isinstance(data, dict)
        return data

    def register(self) -> str:
        variables = {
            "input": {
                "email": "ada@example.com",
                "password": "correct horse battery staple",
                "displayName": "Ada",
            }
        }
        token: str = self.graphql(REGISTER, variables)["register"]["accessToken"]  # type: ignore[index]
        self.client.headers["authorization"] = f"Bearer {token}"
        return token

    def files(self) -> list[dict[str, object]]:
        return [edge["node"] for edge in self.graphql(FILES)["files"]["edges"]]  # type: ignore[index]

    def uploads(self) -> list[dict[str, object]]:
        return [edge["node"] for edge in self.graphql(UPLOADS)["uploads"]["edges"]]  # type: ignore[index]


@pytest.fixture
async def server(tmp_path: Path, database_url: str, file_storage_url: str) -> AsyncIterator[Server]:
    """A real ``depot serve``; the tests talk to it with blocking clients, nothing else
    runs on their event loop."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        tmp_path, database_url=database_url, storage_url=file_storage_url, public_base_url=url
    )
    with depot_serve(settings, tmp_path / "serve.log", port):
        server = Server(settings, url)
        try:
            yield server
        finally:
            server.client.close()


@on_local_and_s3
async def test_tus_js_client_resumes_after_the_connection_is_cut_at_30_and_90_percent(
    server: Server, tmp_path: Path
) -> None:
    node = _node()
    token = server.register()
    # Not a multiple of S3's part size: the staged tail and the last part both matter.
    data = random.Random(13).randbytes(16 * MiB + 12345)  # noqa: S311 - test bytes
    source = tmp_path / "holiday.bin"
    source.write_bytes(data)
    with anyio.fail_after(120):
        done = await anyio.run_process(
            [
                node,
                str(SCRIPT),
                f"{server.url}/files/tus/",
                token,
                str(source),
                "trips/holiday.bin",
            ],
            check=False,
            cwd=ROOT / "e2e",
        )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    first, second, last = report["attempts"]
    assert 0.3 * len(data) <= first["cutAt"] < 0.3 * len(data) + MiB
    assert 0.9 * len(data) <= second["cutAt"] < 0.9 * len(data) + MiB
    assert last["done"] is True
    # Each resume started from what the server had kept of the cut request, not from 0.
    offsets = report["patchOffsets"]
    assert offsets[0] == 0
    resumed = [offset for offset in offsets[1:] if offset > 0]
    assert len(resumed) >= 2, report
    assert 0 < resumed[0] <= first["cutAt"] < resumed[-1] <= second["cutAt"], report
    [file] = server.files()
    assert file["path"] == "trips/holiday.bin"
    assert file["size"] == len(data)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert server.uploads() == []
    [key] = leftover_objects(server.settings)  # the file's object; nothing staged left
    assert read_object(server.settings, key) == data


def _cut_patch(server: Server, location: str, data: bytes, send: int, **headers: str) -> None:
    """A PATCH declaring all of ``data`` that sends ``send`` bytes, then drops the connection.

    The bytes go in pieces with a pause after them, as from a real network, so
    the server has read them before it sees the client go away (uvicorn drops
    what it buffered but had not handed over yet).
    """
    url = httpx.URL(location)
    lines = [
        f"PATCH {url.raw_path.decode()} HTTP/1.1",
        f"Host: {url.host}:{url.port}",
        f"Authorization: {server.client.headers['authorization']}",
        "Tus-Resumable: 1.0.0",
        "Content-Type: application/offset+octet-stream",
        "Upload-Offset: 0",
        f"Content-Length: {len(data)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    assert url.port is not None
    with socket.create_connection((url.host, url.port)) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for at in range(0, send, 256 * 1024):
            connection.sendall(data[at : min(at + 256 * 1024, send)])
            time.sleep(0.003)
        time.sleep(0.5)


def _patch_when_free(server: Server, location: str, offset: int, body: bytes) -> httpx.Response:
    """PATCH at ``offset`` once the cut request's handler has let the upload go (423 until)."""
    deadline = time.monotonic() + 20
    while True:
        response = server.client.patch(
            location,
            headers={
                "Tus-Resumable": "1.0.0",
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(offset),
            },
            content=body,
        )
        if response.status_code != 423 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def _offset(server: Server, location: str) -> int:
    response = server.client.head(location, headers={"Tus-Resumable": "1.0.0"})
    assert response.status_code == 200, response.text
    return int(response.headers["upload-offset"])


def _create(server: Server, length: int) -> str:
    response = server.client.post(
        "/files/tus/",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(length),
            "Upload-Metadata": "filename " + base64.b64encode(b"cut.bin").decode(),
        },
    )
    assert response.status_code == 201, response.text
    return response.headers["location"]


@on_local_and_s3
async def test_a_cut_request_keeps_what_arrived_unless_it_carried_a_checksum(
    server: Server,
) -> None:
    server.register()
    data = random.Random(14).randbytes(10 * MiB)  # noqa: S311 - test bytes
    location = _create(server, len(data))
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    _cut_patch(server, location, data, 6 * MiB, **{"Upload-Checksum": f"sha256 {digest}"})
    # A checksum covers the whole request: none of it was kept (an empty PATCH at 0 fits).
    assert _patch_when_free(server, location, 0, b"").status_code == 204
    assert _offset(server, location) == 0
    _cut_patch(server, location, data, 6 * MiB)
    assert _patch_when_free(server, location, 0, b"").status_code == 409  # it moved on
    kept = _offset(server, location)
    assert 0 < kept <= 6 * MiB
    assert server.files() == []  # no half-written file
    response = _patch_when_free(server, location, kept, data[kept:])
    assert response.status_code == 204, response.text
    [file] = server.files()
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
