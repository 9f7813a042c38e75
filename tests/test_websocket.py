"""GraphQL over WebSocket: graphql-transport-ws, the legacy protocol, origin checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws

from tests.conftest import make_settings, serve_app

pytestmark = pytest.mark.anyio

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
# Long enough for a slow CI machine, short enough that a silent server fails the test.
TIMEOUT_S = 5


@asynccontextmanager
async def _connect(
    client: httpx.AsyncClient, protocol: str = TRANSPORT_WS, *, origin: str | None = None
) -> AsyncIterator[AsyncWebSocketSession]:
    headers = {"origin": origin} if origin else {}
    async with aconnect_ws("/graphql", client, subprotocols=[protocol], headers=headers) as ws:
        yield ws


async def _receive(ws: AsyncWebSocketSession) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=TIMEOUT_S)
    return message


async def _acknowledged(ws: AsyncWebSocketSession) -> None:
    await ws.send_json({"type": "connection_init"})
    assert await _receive(ws) == {"type": "connection_ack"}


async def _subscribe(ws: AsyncWebSocketSession, id_: str, query: str) -> None:
    await ws.send_json({"type": "subscribe", "id": id_, "payload": {"query": query}})


# -- graphql-transport-ws -----------------------------------------------------


async def test_connection_init_is_acknowledged(client: httpx.AsyncClient) -> None:
    async with _connect(client) as ws:
        assert ws.subprotocol == TRANSPORT_WS
        await ws.send_json({"type": "connection_init"})
        assert await _receive(ws) == {"type": "connection_ack"}


async def test_query_streams_next_then_complete(client: httpx.AsyncClient) -> None:
    async with _connect(client) as ws:
        await _acknowledged(ws)
        await _subscribe(ws, "q1", "{ __typename me { id } }")
        assert await _receive(ws) == {
            "id": "q1",
            "type": "next",
            "payload": {"data": {"__typename": "Query", "me": None}},
        }
        assert await _receive(ws) == {"id": "q1", "type": "complete"}


async def test_invalid_operation_is_an_error_message(client: httpx.AsyncClient) -> None:
    async with _connect(client) as ws:
        await _acknowledged(ws)
        await _subscribe(ws, "bad", "{ noSuchField }")
        message = await _receive(ws)
        assert (message["id"], message["type"]) == ("bad", "error")
        codes = [error.get("extensions", {}).get("code") for error in message["payload"]]
        assert codes == ["GRAPHQL_VALIDATION_FAILED"], message
        # The connection survives a bad operation.
        await ws.send_json({"type": "ping"})
        assert await _receive(ws) == {"type": "pong"}


async def test_ping_gets_pong(client: httpx.AsyncClient) -> None:
    async with _connect(client) as ws:
        await _acknowledged(ws)
        await ws.send_json({"type": "ping"})
        assert await _receive(ws) == {"type": "pong"}


# -- the legacy graphql-ws protocol ---------------------------------------------


async def test_legacy_protocol_is_refused_by_default(client: httpx.AsyncClient) -> None:
    # The handshake completes without a subprotocol, then the server closes.
    async with _connect(client, LEGACY_WS) as ws:
        assert ws.subprotocol is None
        with pytest.raises(WebSocketDisconnect) as closed:
            await _receive(ws)
    assert (closed.value.code, closed.value.reason) == (4406, "Subprotocol not acceptable")


async def test_legacy_protocol_when_enabled(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, graphql_ws_legacy=True)
    async with serve_app(settings) as client, _connect(client, LEGACY_WS) as ws:
        assert ws.subprotocol == LEGACY_WS
        await ws.send_json({"type": "connection_init"})
        assert await _receive(ws) == {"type": "connection_ack"}


# -- origins ------------------------------------------------------------------------


async def test_same_origin_browser_is_accepted(client: httpx.AsyncClient) -> None:
    async with _connect(client, origin="http://depot.test") as ws:
        await _acknowledged(ws)


@pytest.mark.parametrize("cors_origins", [[], [APP_ORIGIN]], ids=["none-listed", "other-listed"])
async def test_cross_origin_browser_is_refused(tmp_path: Path, cors_origins: list[str]) -> None:
    settings = make_settings(tmp_path, cors_origins=cors_origins)
    async with serve_app(settings) as client:
        # Closed before the handshake is accepted: uvicorn answers it with HTTP 403.
        with pytest.raises(WebSocketDisconnect) as refused:
            async with _connect(client, origin=OTHER_ORIGIN):
                pass
    assert refused.value.code == 1008  # policy violation


async def test_listed_origin_is_accepted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, cors_origins=[APP_ORIGIN])
    async with serve_app(settings) as client, _connect(client, origin=APP_ORIGIN) as ws:
        await _acknowledged(ws)
