"""GraphQL over WebSocket through a real ``depot serve``: uvicorn with Depot's protocol.

``tests/test_websocket.py`` drives the app in process; here the socket goes
through uvicorn and ``api.wsprotocol``, which keeps a socket's ASGI events in a
mailbox and its "the transport takes more" flag in a lighter object than
uvicorn's: events must still arrive in order, and a client that stops reading
must still get everything once it reads again.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from core.settings import Settings
from tests.conftest import make_settings
from tests.processes import depot_serve, free_port
from tests.support import PASSWORD

pytestmark = pytest.mark.anyio

TIMEOUT_S = 20
REGISTER = "mutation ($i: RegisterInput!) { register(input: $i) { accessToken } }"
# About 100 KiB of JSON per answer.
INTROSPECTION = (
    "{ __schema { types { name description fields(includeDeprecated: true) "
    "{ name description args { name description } type { name kind ofType { name } } } } } }"
)


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[str]:
    settings: Settings = make_settings(tmp_path, database_url=database_url)
    port = free_port()
    with depot_serve(
        settings, tmp_path / "depot.log", port, env={"DEPOT_GRAPHQL_INTROSPECTION": "true"}
    ):
        yield f"127.0.0.1:{port}"


def _token(address: str) -> str:
    variables = {"i": {"email": "ada@example.com", "password": PASSWORD, "displayName": "Ada"}}
    answer = httpx.post(
        f"http://{address}/graphql", json={"query": REGISTER, "variables": variables}
    )
    token: str = answer.json()["data"]["register"]["accessToken"]
    return token


async def _open(address: str, token: str, sock: socket.socket | None = None) -> ClientConnection:
    ws = await connect(
        f"ws://{address}/graphql",
        subprotocols=[Subprotocol("graphql-transport-ws")],
        sock=sock,
        max_size=None,
        ping_interval=None,
    )
    await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
    assert await _receive(ws) == {"type": "connection_ack"}
    return ws


async def _receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    return message


async def _subscribe(ws: ClientConnection, id_: str, query: str) -> None:
    await ws.send(json.dumps({"type": "subscribe", "id": id_, "payload": {"query": query}}))


async def test_operations_answer_in_order_through_depot_serve(served: str) -> None:
    ws = await _open(served, f"Bearer {_token(served)}")
    try:
        for turn in range(20):
            await _subscribe(ws, f"q{turn}", "{ me { email } }")
            assert await _receive(ws) == {
                "id": f"q{turn}",
                "type": "next",
                "payload": {"data": {"me": {"email": "ada@example.com"}}},
            }
            assert await _receive(ws) == {"id": f"q{turn}", "type": "complete"}
    finally:
        await ws.close()


async def test_a_client_that_stops_reading_gets_everything_later(served: str) -> None:
    # A small receive window: the server's writes back up until uvicorn pauses them.
    sock = socket.create_connection(tuple(served.split(":")))  # type: ignore[arg-type]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    ws = await _open(served, f"Bearer {_token(served)}", sock)
    try:
        count = 30
        for turn in range(count):
            await _subscribe(ws, f"i{turn}", INTROSPECTION)
        await asyncio.sleep(1)  # not reading: about 3 MiB waits on the server's side
        answered = completed = 0
        while completed < count:
            message = await _receive(ws)
            if message["type"] == "next":
                assert message["payload"]["data"]["__schema"]["types"]
                answered += 1
            else:
                assert message["type"] == "complete", message
                completed += 1
        assert answered == count
    finally:
        await ws.close()
