"""Large GraphQL answers are gzip-compressed for clients that ask; bytes and sockets never are."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from httpx_ws import aconnect_ws

from core.settings import Settings
from tests.conftest import make_settings, serve_app
from tests.support import bearer, graphql, register, upload_file

pytestmark = pytest.mark.anyio

LARGE = "{ __schema { types { name description fields { name description } } } }"  # ~30 kB
SMALL = "{ __typename }"
GZIP = {"accept-encoding": "gzip"}
# Compresses well, and is larger than any threshold below: a download gzip would shrink.
TEXT = b"Depot keeps files and the work done on them. " * 400


async def _post(
    client: httpx.AsyncClient, query: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    response = await client.post("/graphql", json={"query": query}, headers=headers)
    assert response.status_code == 200, response.text
    return response


async def test_a_large_answer_is_gzipped_for_a_client_that_accepts_it(
    client: httpx.AsyncClient,
) -> None:
    response = await _post(client, LARGE, GZIP)  # httpx decodes it
    assert response.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in response.headers["vary"].lower()
    assert "errors" not in response.json()
    # On the wire: gzip of the very JSON, a fraction of its size.
    raw = await _raw_body(client, LARGE)
    assert gzip.decompress(raw) == response.content
    assert len(raw) < len(response.content) / 3


async def _raw_body(client: httpx.AsyncClient, query: str) -> bytes:
    """The body as sent, before httpx decodes it."""
    async with client.stream("POST", "/graphql", json={"query": query}, headers=GZIP) as response:
        return b"".join([chunk async for chunk in response.aiter_raw()])


async def test_small_answers_and_clients_that_do_not_ask_get_plain_json(
    client: httpx.AsyncClient,
) -> None:
    small = await _post(client, SMALL, GZIP)
    assert "content-encoding" not in small.headers
    assert small.json() == {"data": {"__typename": "Query"}}
    identity = await _post(client, LARGE, {"accept-encoding": "identity"})
    assert "content-encoding" not in identity.headers
    assert "errors" not in identity.json()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=(tmp_path / "storage").resolve().as_uri(),
        gzip_min_bytes=256,
    )


async def test_downloads_whole_or_ranged_are_never_compressed(client: httpx.AsyncClient) -> None:
    headers = bearer((await register(client))["accessToken"])
    await upload_file(client, headers, "/notes.txt", TEXT, content_type="text/plain")
    body = await graphql(client, "{ files { edges { node { downloadUrl } } } }", headers=headers)
    url = body["data"]["files"]["edges"][0]["node"]["downloadUrl"]
    whole = await client.get(url, headers=GZIP)
    assert whole.status_code == 200
    assert "content-encoding" not in whole.headers
    assert whole.content == TEXT
    ranged = await client.get(url, headers={**GZIP, "range": "bytes=0-999"})
    assert ranged.status_code == 206
    assert "content-encoding" not in ranged.headers
    assert ranged.content == TEXT[:1000]


async def test_websocket_answers_are_plain_json_frames(client: httpx.AsyncClient) -> None:
    signed_in = bearer((await register(client))["accessToken"])
    protocols = ["graphql-transport-ws"]
    # A copy: httpx-ws adds its upgrade headers to the dict it is given.
    async with aconnect_ws("/graphql", client, subprotocols=protocols, headers=dict(GZIP)) as ws:
        await ws.send_json({"type": "connection_init", "payload": signed_in})
        assert (await ws.receive_json())["type"] == "connection_ack"
        await ws.send_json({"id": "1", "type": "subscribe", "payload": {"query": LARGE}})
        message = await ws.receive_json()
    assert message["type"] == "next"
    assert "errors" not in message["payload"]


@pytest.fixture
async def uncompressed(tmp_path: Path, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path / "off", database_url=database_url, gzip_min_bytes=0)
    async with serve_app(settings) as client:
        yield client


async def test_zero_turns_compression_off(uncompressed: httpx.AsyncClient) -> None:
    response = await _post(uncompressed, LARGE, GZIP)
    assert "content-encoding" not in response.headers
    assert "errors" not in response.json()
