"""Request ids: taken from ``X-Request-ID`` when plain, else generated; echoed and logged."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import httpx
import pytest

from core.settings import Settings
from tests.conftest import serve_app

pytestmark = pytest.mark.anyio

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def _access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [record for record in records if record["logger"] == "depot.access"]


async def test_valid_incoming_id_is_echoed(client: httpx.AsyncClient) -> None:
    incoming = "req-42.retry:1_A"
    response = await client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming


async def test_missing_id_is_generated(client: httpx.AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["X-Request-ID"]
    second = (await client.get("/healthz")).headers["X-Request-ID"]
    assert GENERATED_ID.fullmatch(first)
    assert first != second


@pytest.mark.parametrize(
    "incoming",
    [
        b"x" * 129,
        b"two words",
        "caf\u00e9".encode(),
        b"line\nbreak",
        b"bell\x07",
        b"",
    ],
    ids=["too-long", "space", "non-ascii", "newline", "control", "empty"],
)
async def test_invalid_incoming_id_is_replaced(client: httpx.AsyncClient, incoming: bytes) -> None:
    response = await client.get("/healthz", headers={b"X-Request-ID": incoming})
    assert GENERATED_ID.fullmatch(response.headers["X-Request-ID"])


async def test_longest_valid_id_is_kept(client: httpx.AsyncClient) -> None:
    incoming = "x" * 128
    response = await client.get("/healthz", headers={"X-Request-ID": incoming})
    assert response.headers["X-Request-ID"] == incoming


async def test_access_line_carries_the_request_id(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    await client.get("/healthz", headers={"X-Request-ID": "first"})
    await client.get("/no-such-page", params={"q": "1"}, headers={"X-Request-ID": "second"})
    lines = _access_lines(log_stream)
    assert [line["request_id"] for line in lines] == ["first", "second"]
    for line, (path, status) in zip(
        lines, [("/healthz", 200), ("/no-such-page", 404)], strict=True
    ):
        assert line["event"] == "request"
        assert line["level"] == "info"
        assert (line["method"], line["path"], line["status"]) == ("GET", path, status)
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] >= 0


async def test_access_line_has_the_generated_id(
    client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    response = await client.post("/graphql", json={"query": "{ __typename }"})
    [line] = _access_lines(log_stream)
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert (line["method"], line["path"], line["status"]) == ("POST", "/graphql", 200)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/files/download/"), ("PUT", "/files/upload/")],
    ids=["download", "upload"],
)
async def test_access_line_hides_the_token_of_a_signed_link(
    client: httpx.AsyncClient, log_stream: io.StringIO, method: str, path: str
) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJ1L3NlY3JldC1rZXkifQ.c2lnbmF0dXJl"
    await client.request(method, path + token, content=b"")
    [line] = _access_lines(log_stream)
    assert line["path"] == path + "<redacted>"
    # Nothing the server logged carries it (the test's own HTTP client logs its URL).
    server_lines = [raw for raw in log_stream.getvalue().splitlines() if '"httpx"' not in raw]
    assert not [raw for raw in server_lines if token in raw]


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/files/upload/"), ("GET", "/files/download/"), ("GET", "/files/variant/")],
    ids=["upload", "download", "variant"],
)
async def test_a_preflight_does_not_log_the_token_of_a_signed_link(
    settings: Settings, log_stream: io.StringIO, method: str, path: str
) -> None:
    """The CORS middleware answers a preflight before the router records the path's token."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJrZXkiOiJ1L3NlY3JldC1rZXkifQ.c2lnbmF0dXJl"
    origin = "https://app.example.com"
    cors = settings.model_copy(update={"cors_origins": [origin]})
    async with serve_app(cors) as client:
        response = await client.options(
            path + token, headers={"Origin": origin, "Access-Control-Request-Method": method}
        )
    assert response.status_code == 200
    [line] = _access_lines(log_stream)
    assert (line["method"], line["path"]) == ("OPTIONS", path + "<redacted>")
    server_lines = [raw for raw in log_stream.getvalue().splitlines() if '"httpx"' not in raw]
    assert not [raw for raw in server_lines if token in raw]
