"""A tiny GraphQL client for the benchmarks: HTTP, multipart uploads, graphql-transport-ws.

Deliberately small and strict: a bench that gets an error back has measured
the wrong thing, so :func:`data` raises on any GraphQL error (``bench.login``,
which expects some, reads :func:`body` instead). Nothing here knows a bench's
operations beyond signing up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, cast

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.harness import TIMEOUT_S

# The benchmark accounts' own throwaway credentials.
PASSWORD: Final = "benchmark passphrase 7f3a9c"  # noqa: S105
# What a browser sends with a multipart request (Depot's CSRF rule for them).
CSRF: Final = {"x-depot-csrf": "1"}
PROTOCOL: Final = [Subprotocol("graphql-transport-ws")]
REGISTER: Final = (
    "mutation Register($input: RegisterInput!) "
    "{ register(input: $input) { accessToken user { id } } }"
)


def payload(query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of a GraphQL request (and a WebSocket ``subscribe``'s payload)."""
    return {"query": query, "variables": variables or {}}


def body(response: httpx.Response) -> dict[str, Any]:
    """A GraphQL response's JSON body, errors and all; the HTTP status must be 2xx."""
    response.raise_for_status()
    return cast(dict[str, Any], response.json())


def data(response: httpx.Response) -> dict[str, Any]:
    """A GraphQL response's ``data``; raises on any error."""
    result = body(response)
    if result.get("errors"):
        raise RuntimeError(f"GraphQL errors: {result['errors']}")
    return cast(dict[str, Any], result["data"])


def graphql(client: httpx.Client, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """One GraphQL request over a blocking client; its ``data`` (see :func:`data`)."""
    return data(client.post("/graphql", json=payload(query, variables)))


def multipart(query: str, variables: dict[str, Any], file_variable: str = "file") -> dict[str, str]:
    """The form fields of a multipart request (GraphQL multipart request spec).

    The file goes in part ``"0"``, mapped to ``variables.<file_variable>``:
    ``client.post("/graphql", data=multipart(...), files={"0": ...}, headers=CSRF)``.
    """
    operations = payload(query, {**variables, file_variable: None})
    return {
        "operations": json.dumps(operations),
        "map": json.dumps({"0": [f"variables.{file_variable}"]}),
    }


def registration(email: str) -> dict[str, Any]:
    """``register``'s variables for a bench account."""
    return {"input": {"email": email, "password": PASSWORD, "displayName": "Bench"}}


@dataclass(frozen=True)
class Account:
    """A signed-up bench user: its access token and global id."""

    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @classmethod
    def registered(cls, result: dict[str, Any]) -> Account:
        """From :data:`REGISTER`'s ``data``."""
        return cls(result["register"]["accessToken"], result["register"]["user"]["id"])


class Api:
    """GraphQL over HTTP to one ``depot serve``, async; every call insists on success."""

    def __init__(self, url: str) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.client = httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S, limits=limits)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self, query: str, variables: dict[str, Any], account: Account | None = None
    ) -> dict[str, Any]:
        headers = account.headers if account is not None else None
        return data(
            await self.client.post("/graphql", json=payload(query, variables), headers=headers)
        )

    async def register(self, email: str) -> Account:
        return Account.registered(await self.call(REGISTER, registration(email)))

    async def upload(
        self, account: Account, query: str, variables: dict[str, Any], content: bytes
    ) -> dict[str, Any]:
        """One multipart request carrying ``content`` as the ``file`` variable."""
        response = await self.client.post(
            "/graphql",
            data=multipart(query, variables),
            files={"0": ("bench.txt", content, "text/plain")},
            headers={**CSRF, **account.headers},
        )
        return data(response)


# ----------------------------------------------------------------- graphql-transport-ws


async def open_socket(url: str, account: Account) -> ClientConnection:
    """A graphql-transport-ws connection, acknowledged; compression on, as browsers ask."""
    ws = await connect(url, subprotocols=PROTOCOL, open_timeout=TIMEOUT_S, ping_interval=None)
    await send(ws, {"type": "connection_init", "payload": account.headers})
    ack = await receive(ws)
    if ack.get("type") != "connection_ack":
        raise RuntimeError(f"connection refused: {ack}")
    return ws


@asynccontextmanager
async def socket(url: str, account: Account) -> AsyncIterator[ClientConnection]:
    """:func:`open_socket`, closed on exit."""
    ws = await open_socket(url, account)
    try:
        yield ws
    finally:
        await ws.close()


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def subscribe(
    ws: ClientConnection, id_: str, query: str, variables: dict[str, Any] | None = None
) -> None:
    await send(ws, {"type": "subscribe", "id": id_, "payload": payload(query, variables)})


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a ping (pings are answered); an ``error`` raises."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        if message.get("type") == "ping":
            await send(ws, {"type": "pong"})
            continue
        if message.get("type") == "error":
            raise RuntimeError(f"subscription {message.get('id')} failed: {message}")
        return message


def event(message: dict[str, Any], field_name: str) -> dict[str, Any]:
    """The ``field_name`` result of a ``next`` message; raises on its errors."""
    if message.get("payload", {}).get("errors"):
        raise RuntimeError(f"subscription {message.get('id')} failed: {message}")
    result: dict[str, Any] = message["payload"]["data"][field_name]
    return result
