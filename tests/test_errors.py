"""Error mapping and masking: ``extensions.code`` for expected errors, nothing else for bugs.

A tiny schema whose one field raises whatever it is asked to runs through
Depot's error extension directly, then through the real GraphQL view (HTTP and
WebSocket, on a real database so a WebSocket can sign in) behind the
request-id middleware; the last tests ask the real app.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import strawberry
from httpx_ws import aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from limits.aio.storage import MemoryStorage
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from api.files import RouteLinks
from api.graphql import GraphQLView
from api.middleware import RequestIdMiddleware
from api.websocket import OpenSockets
from core import access_tokens, migrate, users
from core.db import SharedSession, create_engine, create_sessionmaker
from core.errors import (
    BadUserInput,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
)
from core.eventlog import MemoryEventLog
from core.links import LinkSigner
from core.ratelimit import ActionLimiter, LoginLimiter
from core.settings import Settings
from core.signins import SignIns
from schema import _Schema
from schema.ids import encode_id
from schema.limits import Limits
from schema.operation import OperationRules
from storage import open_storage
from tests.conftest import make_settings, started
from tests.support import PASSWORD, WS_TIMEOUT_S, bearer, graphql, register
from workers.broker import sender

pytestmark = pytest.mark.anyio

SECRET = "secret detail"
FAIL = "query Fail($kind: String!) { fail(kind: $kind) }"
_RAISES: dict[str, Callable[[], Exception]] = {
    "unauthenticated": lambda: Unauthenticated("Sign in to see your files."),
    "forbidden": lambda: Forbidden("Only admins may do this."),
    "not_found": lambda: NotFound("No file has this id."),
    "bad_user_input": lambda: BadUserInput("Paths may not end with '/'.", field="path"),
    "bad_user_input_anywhere": lambda: BadUserInput("Pick one input."),
    "conflict": lambda: Conflict("A file already has this path."),
    "quota_exceeded": lambda: QuotaExceeded("This upload would exceed your quota."),
    "rate_limited": lambda: RateLimited("Too many attempts.", retry_after=30),
    "bug": lambda: RuntimeError(SECRET),
}


@strawberry.type
class _Query:
    @strawberry.field
    def fail(self, kind: str) -> str | None:
        raise _RAISES[kind]()


# Depot's one extension, on a schema of its own with the default limits.
RULES = OperationRules.build(
    limits=Limits(max_depth=10, max_aliases=15, max_directives=20),
    max_tokens=1000,
    max_cost=5000,
    introspection=True,
    suggestions=True,
    metrics=False,
    traced=False,
)
SCHEMA = _Schema(rules=RULES, query=_Query)


def _tiny_app(settings: Settings, engine: AsyncEngine) -> Starlette:
    view = GraphQLView(SCHEMA, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        # The view puts these into every context; the database signs WebSockets in.
        sessionmaker = create_sessionmaker(engine)
        events = MemoryEventLog()
        signins = SignIns(
            events,
            sessionmaker,
            cache_seconds=settings.sign_in_cache_seconds,
            recheck_seconds=settings.ws_auth_recheck_seconds,
        )
        yield {
            "sessionmaker": sessionmaker,
            "redis": None,
            "login_limiter": LoginLimiter(MemoryStorage(), "1/second", "1/second"),
            "action_limiter": ActionLimiter(MemoryStorage(), {}),
            "sockets": OpenSockets(per_user=10, per_address=10),
            "storage": open_storage(settings.storage_url),
            "links": RouteLinks(LinkSigner(settings.secret), str(settings.public_base_url)),
            "events": events,
            "signins": signins,
            # Jobs are never sent here: a broker nobody consumes from will do.
            "jobs": sender(settings),
        }
        await signins.aclose()

    return Starlette(
        routes=[Route("/graphql", view), WebSocketRoute("/graphql", view)],
        middleware=[Middleware(RequestIdMiddleware)],
        lifespan=lifespan,
    )


@pytest.fixture
def tiny_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def tiny_engine(tiny_settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(tiny_settings)
    try:
        await migrate.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def tiny_client(
    tiny_settings: Settings, tiny_engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    async with started(_tiny_app(tiny_settings, tiny_engine)) as app:
        transport = ASGIWebSocketTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://depot.test") as client:
            yield client


async def _personal_token(settings: Settings, engine: AsyncEngine) -> str:
    """A personal access token of a new user, straight from the core functions."""
    async with create_sessionmaker(engine)() as db:
        user = await users.create_user(
            db, settings, email="ada@example.com", password=PASSWORD, display_name="Ada"
        )
        _, secret = await access_tokens.create_access_token(db, settings, user, "errors", None)
        await db.commit()
    return secret


async def _fail_over_http(
    client: httpx.AsyncClient, kind: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    response = await client.post(
        "/graphql", json={"query": FAIL, "variables": {"kind": kind}}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response


# -- the error codes themselves -----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "extensions"),
    [
        ("unauthenticated", {"code": "UNAUTHENTICATED"}),
        ("forbidden", {"code": "FORBIDDEN"}),
        ("not_found", {"code": "NOT_FOUND"}),
        ("bad_user_input", {"code": "BAD_USER_INPUT", "field": "path"}),
        ("bad_user_input_anywhere", {"code": "BAD_USER_INPUT"}),
        ("conflict", {"code": "CONFLICT"}),
        ("quota_exceeded", {"code": "QUOTA_EXCEEDED"}),
        ("rate_limited", {"code": "RATE_LIMITED", "retryAfter": 30}),
    ],
)
async def test_depot_errors_keep_their_message_and_gain_a_code(
    kind: str, extensions: dict[str, object]
) -> None:
    result = await SCHEMA.execute(
        FAIL,
        variable_values={"kind": kind},
        context_value=SimpleNamespace(request_id="r1", db=SharedSession(None)),  # type: ignore[arg-type]
    )
    assert result.data == {"fail": None}
    assert result.errors is not None
    [error] = result.errors
    assert error.message == str(_RAISES[kind]())
    assert error.path == ["fail"]
    assert error.extensions == extensions


# -- through the HTTP view ------------------------------------------------------


async def test_depot_error_passes_the_view_unmasked(tiny_client: httpx.AsyncClient) -> None:
    response = await _fail_over_http(tiny_client, "rate_limited")
    [error] = response.json()["errors"]
    assert error["message"] == "Too many attempts."
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 30}


async def test_unexpected_error_is_masked_and_logged(
    tiny_client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    response = await _fail_over_http(tiny_client, "bug", headers={"X-Request-ID": "req-bug-1"})
    assert SECRET not in response.text
    body = response.json()
    assert body["data"] == {"fail": None}
    [error] = body["errors"]
    assert error["message"] == "Internal server error (request id req-bug-1)"
    assert error["path"] == ["fail"]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": "req-bug-1"}
    # Logged once, with its traceback and the request id the client was given.
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    [record] = [record for record in records if SECRET in json.dumps(record)]
    assert record["event"] == "unexpected error in GraphQL operation"
    assert record["level"] == "error"
    assert record["request_id"] == "req-bug-1"
    assert f"RuntimeError: {SECRET}" in record["exception"]
    assert "Traceback" in record["exception"]


async def test_masked_error_names_the_generated_request_id(
    tiny_client: httpx.AsyncClient,
) -> None:
    response = await _fail_over_http(tiny_client, "bug")
    request_id = response.headers["X-Request-ID"]
    [error] = response.json()["errors"]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    assert request_id in error["message"]


# -- through the WebSocket view ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "extensions"),
    [
        ("not_found", {"code": "NOT_FOUND"}),
        ("bug", {"code": "INTERNAL_SERVER_ERROR", "requestId": "req-ws-1"}),
    ],
)
async def test_errors_over_websocket_are_coded_and_masked(
    tiny_client: httpx.AsyncClient,
    tiny_settings: Settings,
    tiny_engine: AsyncEngine,
    kind: str,
    extensions: dict[str, object],
) -> None:
    token = await _personal_token(tiny_settings, tiny_engine)
    headers = {"X-Request-ID": "req-ws-1"}
    async with aconnect_ws(
        "/graphql", tiny_client, subprotocols=["graphql-transport-ws"], headers=headers
    ) as ws:
        await ws.send_json({"type": "connection_init", "payload": bearer(token)})
        assert await ws.receive_json(timeout=WS_TIMEOUT_S) == {"type": "connection_ack"}
        payload = {"query": FAIL, "variables": {"kind": kind}}
        await ws.send_json({"type": "subscribe", "id": "1", "payload": payload})
        message = await ws.receive_json(timeout=WS_TIMEOUT_S)
    assert SECRET not in json.dumps(message)
    assert message["type"] == "next"
    [error] = message["payload"]["errors"]
    assert error.get("extensions") == extensions, error


# -- the real app ---------------------------------------------------------------


NODE = "query Node($id: ID!) { node(id: $id) { id } }"


async def test_malformed_id_is_bad_user_input(client: httpx.AsyncClient) -> None:
    body = await graphql(client, NODE, {"id": "garbage"})
    assert body["data"] == {"node": None}
    [error] = body["errors"]
    assert error["message"] == "'garbage' is not a valid id"
    assert error["extensions"] == {"code": "BAD_USER_INPUT", "field": "id"}


async def test_unknown_type_in_a_well_formed_id_is_null(client: httpx.AsyncClient) -> None:
    body = await graphql(client, NODE, {"id": encode_id("Spaceship", uuid.uuid4())})
    assert body == {"data": {"node": None}}


async def test_a_users_id_is_null_when_signed_out(client: httpx.AsyncClient) -> None:
    ada = await register(client)
    user_id = ada["user"]["id"]
    body = await graphql(client, NODE, {"id": user_id}, headers=bearer(ada["accessToken"]))
    assert body == {"data": {"node": {"id": user_id}}}
    assert await graphql(client, NODE, {"id": user_id}) == {"data": {"node": None}}


async def test_me_is_null_when_signed_out(client: httpx.AsyncClient) -> None:
    assert await graphql(client, "{ me { id email } }") == {"data": {"me": None}}
