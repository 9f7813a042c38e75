"""CORS: a page on a listed origin can use every route a browser calls.

GraphQL (GET and POST), a download link (GET and HEAD) and a direct-upload
ticket (PUT), each through a real preflight where a browser sends one, and the
response headers such a page reads exposed to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings, serve_app
from tests.test_direct_uploads import (
    PNG,
    create_upload,
    put_bytes,
    sha256,
    signed_in,
    try_complete_upload,
)

pytestmark = pytest.mark.anyio

APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
EXPOSED = {
    "content-disposition",
    "etag",
    "content-length",
    "content-range",
    "accept-ranges",
    "x-request-id",
    "location",
    "tus-resumable",
    "upload-offset",
    "upload-length",
}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(make_settings(tmp_path, cors_origins=[APP_ORIGIN])) as client:
        yield client


async def _preflight(
    client: httpx.AsyncClient, url: str, method: str, origin: str = APP_ORIGIN
) -> httpx.Response:
    return await client.options(
        url,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "content-type, authorization",
        },
    )


def _allowed_methods(response: httpx.Response) -> set[str]:
    methods = response.headers.get("access-control-allow-methods", "")
    return {method.strip() for method in methods.split(",")}


def _exposed(response: httpx.Response) -> set[str]:
    headers = response.headers.get("access-control-expose-headers", "")
    return {header.strip().lower() for header in headers.split(",")}


async def test_a_direct_upload_passes_its_preflight_and_its_put(
    client: httpx.AsyncClient,
) -> None:
    ada = await signed_in(client)
    ticket = await create_upload(client, ada, path="/a.png", size=len(PNG), sha256=sha256(PNG))
    assert ticket["method"] == "PUT"

    preflight = await _preflight(client, ticket["url"], "PUT")
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "PUT" in _allowed_methods(preflight)

    ticket["headers"] = {**ticket["headers"], "Origin": APP_ORIGIN}
    put = await put_bytes(client, ticket, PNG)
    assert put.is_success, put.text
    assert put.headers["access-control-allow-origin"] == APP_ORIGIN
    assert _exposed(put) >= EXPOSED
    body = await try_complete_upload(client, ada, ticket["id"])
    assert "errors" not in body, body


async def test_a_download_link_can_be_read_cross_origin(client: httpx.AsyncClient) -> None:
    ada = await signed_in(client)
    ticket = await create_upload(client, ada, path="/a.png", size=len(PNG), sha256=sha256(PNG))
    assert (await put_bytes(client, ticket, PNG)).is_success
    file = (await try_complete_upload(client, ada, ticket["id"]))["data"]["completeUpload"]

    # A Range header is not CORS-safelisted for every value: the browser asks first.
    for method in ("GET", "HEAD"):
        preflight = await _preflight(client, file["downloadUrl"], method)
        assert preflight.status_code == 200
        assert method in _allowed_methods(preflight)
    download = await client.get(file["downloadUrl"], headers={"origin": APP_ORIGIN})
    assert download.status_code == 200
    assert download.content == PNG
    assert download.headers["access-control-allow-origin"] == APP_ORIGIN
    assert _exposed(download) >= EXPOSED


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_graphql_passes_its_preflight(client: httpx.AsyncClient, method: str) -> None:
    preflight = await _preflight(client, "/graphql", method)
    assert preflight.status_code == 200
    assert method in _allowed_methods(preflight)
    response = await client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"origin": APP_ORIGIN}
    )
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "x-request-id" in _exposed(response)


async def test_an_unlisted_origin_fails_the_preflight(client: httpx.AsyncClient) -> None:
    preflight = await _preflight(client, "/graphql", "POST", origin=OTHER_ORIGIN)
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


async def test_methods_no_route_takes_are_not_allowed(client: httpx.AsyncClient) -> None:
    preflight = await _preflight(client, "/graphql", "TRACE")
    assert preflight.status_code == 400
    assert "TRACE" not in _allowed_methods(preflight)
