"""GraphQL over WebSocket: sign-in in connection_init, the legacy protocol, origin checks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws

from core.db import create_engine
from core.models import Role
from core.tokens import CLOCK_SKEW
from tests.conftest import make_settings, serve_app
from tests.support import (
    PASSWORD,
    bearer,
    expired,
    graphql,
    register,
    require_service,
    resigned,
    sign_in,
    update_user,
)

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


async def _token(client: httpx.AsyncClient) -> str:
    """An access token for a newly registered user."""
    return str((await register(client))["accessToken"])


def _init(token: str) -> dict[str, Any]:
    return {"type": "connection_init", "payload": bearer(token)}


async def _acknowledged(ws: AsyncWebSocketSession, token: str) -> None:
    await ws.send_json(_init(token))
    assert await _receive(ws) == {"type": "connection_ack"}


async def _closed(ws: AsyncWebSocketSession) -> tuple[int, str]:
    """Wait for the server to close the socket; its close code and reason."""
    with pytest.raises(WebSocketDisconnect) as closed:
        await _receive(ws)
    return closed.value.code, closed.value.reason


async def _subscribe(ws: AsyncWebSocketSession, id_: str, query: str) -> None:
    await ws.send_json({"type": "subscribe", "id": id_, "payload": {"query": query}})


# -- graphql-transport-ws -----------------------------------------------------


async def test_connection_init_is_acknowledged(client: httpx.AsyncClient) -> None:
    token = await _token(client)
    async with _connect(client) as ws:
        assert ws.subprotocol == TRANSPORT_WS
        await ws.send_json(_init(token))
        assert await _receive(ws) == {"type": "connection_ack"}


async def test_query_streams_next_then_complete(client: httpx.AsyncClient) -> None:
    token = await _token(client)
    async with _connect(client) as ws:
        await _acknowledged(ws, token)
        await _subscribe(ws, "q1", "{ __typename me { email } }")
        assert await _receive(ws) == {
            "id": "q1",
            "type": "next",
            "payload": {"data": {"__typename": "Query", "me": {"email": "ada@example.com"}}},
        }
        assert await _receive(ws) == {"id": "q1", "type": "complete"}


async def test_personal_access_token_signs_a_socket_in(client: httpx.AsyncClient) -> None:
    body = await graphql(
        client,
        'mutation Create { createAccessToken(name: "ws") { token } }',
        headers=bearer(await _token(client)),
    )
    personal = body["data"]["createAccessToken"]["token"]
    async with _connect(client) as ws:
        await _acknowledged(ws, personal)
        await _subscribe(ws, "q1", "{ me { email } }")
        message = await _receive(ws)
    assert message["payload"] == {"data": {"me": {"email": "ada@example.com"}}}


@pytest.mark.parametrize(
    "payload",
    [None, {}, {"authorization": ""}],
    ids=["no-payload", "empty", "blank"],
)
async def test_missing_authorization_closes_with_4401(
    client: httpx.AsyncClient, payload: dict[str, str] | None
) -> None:
    init: dict[str, Any] = {"type": "connection_init"}
    if payload is not None:
        init["payload"] = payload
    async with _connect(client) as ws:
        await ws.send_json(init)
        code, _ = await _closed(ws)
    assert code == 4401


OTHER_SECRET = "another-secret-0123456789-abcdefghijklmnop"


@pytest.mark.parametrize(
    "spoil",
    [
        lambda token: "not-a-token",
        expired,
        lambda token: resigned(token, key=OTHER_SECRET),
        lambda token: "dpt_" + "A" * 43,
    ],
    ids=["garbage", "expired", "forged", "unknown-personal-token"],
)
async def test_refused_authorization_closes_with_4403(
    client: httpx.AsyncClient, spoil: Callable[[str], str]
) -> None:
    token = spoil(await _token(client))
    async with _connect(client) as ws:
        await ws.send_json(_init(token))
        code, _ = await _closed(ws)
    assert code == 4403


async def test_authorization_that_is_not_a_string_closes_with_4403(
    client: httpx.AsyncClient,
) -> None:
    async with _connect(client) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"authorization": ["Bearer"]}})
        code, _ = await _closed(ws)
    assert code == 4403


async def test_subscribe_before_connection_init_closes_with_4401(
    client: httpx.AsyncClient,
) -> None:
    async with _connect(client) as ws:
        await _subscribe(ws, "q1", "{ me { email } }")
        code, _ = await _closed(ws)
    assert code == 4401


async def test_invalid_operation_is_an_error_message(client: httpx.AsyncClient) -> None:
    token = await _token(client)
    async with _connect(client) as ws:
        await _acknowledged(ws, token)
        await _subscribe(ws, "bad", "{ noSuchField }")
        message = await _receive(ws)
        assert (message["id"], message["type"]) == ("bad", "error")
        codes = [error.get("extensions", {}).get("code") for error in message["payload"]]
        assert codes == ["GRAPHQL_VALIDATION_FAILED"], message
        # The connection survives a bad operation.
        await ws.send_json({"type": "ping"})
        assert await _receive(ws) == {"type": "pong"}


async def test_ping_gets_pong(client: httpx.AsyncClient) -> None:
    token = await _token(client)
    async with _connect(client) as ws:
        await _acknowledged(ws, token)
        await ws.send_json({"type": "ping"})
        assert await _receive(ws) == {"type": "pong"}


# -- the legacy graphql-ws protocol ---------------------------------------------


async def test_legacy_protocol_is_refused_by_default(client: httpx.AsyncClient) -> None:
    # The handshake completes without a subprotocol, then the server closes.
    async with _connect(client, LEGACY_WS) as ws:
        assert ws.subprotocol is None
        assert await _closed(ws) == (4406, "Subprotocol not acceptable")


@asynccontextmanager
async def _legacy(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An app that speaks the legacy protocol too, and a user's access token."""
    async with serve_app(make_settings(tmp_path, graphql_ws_legacy=True)) as client:
        yield client, await _token(client)


async def test_legacy_protocol_when_enabled(tmp_path: Path) -> None:
    async with _legacy(tmp_path) as (client, token), _connect(client, LEGACY_WS) as ws:
        assert ws.subprotocol == LEGACY_WS
        await ws.send_json(_init(token))
        assert await _receive(ws) == {"type": "connection_ack"}


@pytest.mark.parametrize("payload", [{}, bearer("not-a-token")], ids=["missing", "refused"])
async def test_legacy_protocol_needs_a_token_too(tmp_path: Path, payload: dict[str, str]) -> None:
    async with _legacy(tmp_path) as (client, _), _connect(client, LEGACY_WS) as ws:
        await ws.send_json({"type": "connection_init", "payload": payload})
        assert (await _receive(ws))["type"] == "connection_error"
        code, _ = await _closed(ws)
    assert code == 1011


# -- payload shapes: GraphiQL's headers pane and header-mirroring clients ------------

PAYLOAD_SHAPES = {
    "GraphiQL": lambda token: {"Authorization": f"Bearer {token}"},
    "upper-case": lambda token: {"AUTHORIZATION": f"Bearer {token}"},
    "headers": lambda token: {"headers": {"Authorization": f"Bearer {token}"}},
    "headers-mixed-case": lambda token: {"headers": {"aUtHoRiZaTiOn": f"Bearer {token}"}},
}


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize("shape", list(PAYLOAD_SHAPES))
async def test_authorization_in_any_case_and_shape_signs_in(
    tmp_path: Path, protocol: str, shape: str
) -> None:
    async with _legacy(tmp_path) as (client, token), _connect(client, protocol) as ws:
        payload = PAYLOAD_SHAPES[shape](token)
        await ws.send_json({"type": "connection_init", "payload": payload})
        # Both protocols refuse a socket they could not sign in (see above).
        assert await _receive(ws) == {"type": "connection_ack"}
        if protocol == TRANSPORT_WS:  # the legacy one runs subscriptions only
            await _still_answers(ws, "q1")


@pytest.mark.parametrize(
    "payload",
    [{"headers": {}}, {"headers": "Authorization: Bearer x"}, {"Authorization": ""}],
    ids=["empty-headers", "headers-not-an-object", "blank"],
)
async def test_no_authorization_in_either_shape_closes_with_4401(
    client: httpx.AsyncClient, payload: dict[str, Any]
) -> None:
    async with _connect(client) as ws:
        await ws.send_json({"type": "connection_init", "payload": payload})
        code, _ = await _closed(ws)
    assert code == 4401


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_refused_authorization_in_headers_is_refused(tmp_path: Path, protocol: str) -> None:
    async with _legacy(tmp_path) as (client, _), _connect(client, protocol) as ws:
        payload = {"headers": {"Authorization": "Bearer not-a-token"}}
        await ws.send_json({"type": "connection_init", "payload": payload})
        if protocol == LEGACY_WS:
            assert (await _receive(ws))["type"] == "connection_error"
        code, _ = await _closed(ws)
    assert code == (4403 if protocol == TRANSPORT_WS else 1011)


# -- credentials that end while a socket is open ----------------------------------

# Rechecks this often in these tests; TIMEOUT_S leaves room for many rechecks.
RECHECK_S = 0.1
LOGOUT_EVERYWHERE = "mutation { logoutEverywhere }"
CREATE_TOKEN = 'mutation { createAccessToken(name: "ws") { token accessToken { id } } }'
REVOKE_TOKEN = "mutation ($id: ID!) { revokeAccessToken(id: $id) { id } }"


@pytest.fixture
async def watched(tmp_path: Path, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose sockets recheck their credential every RECHECK_S seconds."""
    settings = make_settings(tmp_path, database_url=database_url, ws_auth_recheck_seconds=RECHECK_S)
    async with serve_app(settings) as client:
        yield client


async def _still_answers(ws: AsyncWebSocketSession, id_: str) -> None:
    await _subscribe(ws, id_, "{ me { email } }")
    assert (await _receive(ws))["payload"] == {"data": {"me": {"email": "ada@example.com"}}}
    assert await _receive(ws) == {"id": id_, "type": "complete"}


async def test_a_live_credential_keeps_its_socket(watched: httpx.AsyncClient) -> None:
    token = await _token(watched)
    async with _connect(watched) as ws:
        await _acknowledged(ws, token)
        await anyio.sleep(RECHECK_S * 5)
        await _still_answers(ws, "q1")


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_ending_every_session_closes_the_socket(
    tmp_path: Path, database_url: str, protocol: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        ws_auth_recheck_seconds=RECHECK_S,
        graphql_ws_legacy=True,
    )
    async with serve_app(settings) as client:
        token = await _token(client)
        async with _connect(client, protocol) as ws:
            await _acknowledged(ws, token)
            ended = await graphql(client, LOGOUT_EVERYWHERE, headers=bearer(token))
            assert ended == {"data": {"logoutEverywhere": True}}
            assert await _closed(ws) == (4403, "Forbidden: The session has ended; sign in again.")


async def test_another_session_ending_leaves_the_socket_open(
    watched: httpx.AsyncClient,
) -> None:
    token = await _token(watched)
    other = await sign_in(watched)
    async with _connect(watched) as ws:
        await _acknowledged(ws, token)
        logout = "mutation ($token: String!) { logout(refreshToken: $token) }"
        body = await graphql(watched, logout, {"token": other["refreshToken"]})
        assert body == {"data": {"logout": True}}
        await anyio.sleep(RECHECK_S * 5)
        await _still_answers(ws, "q1")


async def test_deactivating_the_user_closes_the_socket(
    watched: httpx.AsyncClient, tmp_path: Path, database_url: str
) -> None:
    token = await _token(watched)
    async with _connect(watched) as ws:
        await _acknowledged(ws, token)
        engine = create_engine(make_settings(tmp_path, database_url=database_url))
        try:
            await update_user(engine, "ada@example.com", is_active=False)
        finally:
            await engine.dispose()
        assert await _closed(ws) == (4403, "Forbidden: This account has been deactivated.")


async def test_revoking_a_personal_access_token_closes_its_socket(
    watched: httpx.AsyncClient,
) -> None:
    owner = bearer(await _token(watched))
    created = (await graphql(watched, CREATE_TOKEN, headers=owner))["data"]["createAccessToken"]
    async with _connect(watched) as ws:
        await _acknowledged(ws, created["token"])
        revoked = await graphql(
            watched, REVOKE_TOKEN, {"id": created["accessToken"]["id"]}, headers=owner
        )
        assert "errors" not in revoked, revoked
        assert await _closed(ws) == (4403, "Forbidden: The access token has been revoked.")


# -- revocations pushed through the event bus ----------------------------------------

CHANGE_PASSWORD = (
    "mutation ($new: String!) "
    f'{{ changePassword(currentPassword: "{PASSWORD}", newPassword: $new) }}'
)
LOGOUT = "mutation ($token: String!) { logout(refreshToken: $token) }"
SET_ACTIVE = "mutation ($id: ID!) { setUserActive(id: $id, active: false) { isActive } }"
ENDED = (4403, "Forbidden: The session has ended; sign in again.")


@pytest.fixture
async def pushed(tmp_path: Path, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose sockets poll their credential only hourly: only a pushed event is fast."""
    settings = make_settings(tmp_path, database_url=database_url, ws_auth_recheck_seconds=3600)
    async with serve_app(settings) as client:
        yield client


async def test_logging_out_everywhere_closes_the_socket_at_once(
    pushed: httpx.AsyncClient,
) -> None:
    token = await _token(pushed)
    async with _connect(pushed) as ws:
        await _acknowledged(ws, token)
        assert "errors" not in await graphql(pushed, LOGOUT_EVERYWHERE, headers=bearer(token))
        assert await _closed(ws) == ENDED


async def test_changing_the_password_closes_other_sessions_sockets_at_once(
    pushed: httpx.AsyncClient,
) -> None:
    token = await _token(pushed)
    other = await sign_in(pushed)
    async with _connect(pushed) as ws, _connect(pushed) as kept:
        await _acknowledged(ws, token)
        await _acknowledged(kept, other["accessToken"])
        variables = {"new": "a brand new passphrase"}
        changed = await graphql(
            pushed, CHANGE_PASSWORD, variables, headers=bearer(other["accessToken"])
        )
        assert changed == {"data": {"changePassword": True}}
        assert await _closed(ws) == ENDED
        # The session that changed the password keeps its socket.
        await _still_answers(kept, "q1")


async def test_logging_a_session_out_closes_its_socket_at_once(
    pushed: httpx.AsyncClient,
) -> None:
    ada = await register(pushed)
    other = await sign_in(pushed)
    async with _connect(pushed) as ws, _connect(pushed) as kept:
        await _acknowledged(ws, ada["accessToken"])
        await _acknowledged(kept, other["accessToken"])
        ended = await graphql(pushed, LOGOUT, {"token": ada["refreshToken"]})
        assert ended == {"data": {"logout": True}}
        assert await _closed(ws) == ENDED
        await _still_answers(kept, "q1")


async def test_revoking_a_personal_access_token_closes_its_socket_at_once(
    pushed: httpx.AsyncClient,
) -> None:
    owner = bearer(await _token(pushed))
    created = (await graphql(pushed, CREATE_TOKEN, headers=owner))["data"]["createAccessToken"]
    async with _connect(pushed) as ws:
        await _acknowledged(ws, created["token"])
        revoked = await graphql(
            pushed, REVOKE_TOKEN, {"id": created["accessToken"]["id"]}, headers=owner
        )
        assert "errors" not in revoked, revoked
        assert await _closed(ws) == (4403, "Forbidden: The access token has been revoked.")


async def test_deactivating_a_user_closes_their_socket_at_once(
    pushed: httpx.AsyncClient, tmp_path: Path, database_url: str
) -> None:
    ada = await register(pushed)
    root = await register(pushed, email="root@example.com", display_name="Root")
    engine = create_engine(make_settings(tmp_path, database_url=database_url))
    try:
        await update_user(engine, "root@example.com", role=Role.ADMIN)
    finally:
        await engine.dispose()
    async with _connect(pushed) as ws:
        await _acknowledged(ws, ada["accessToken"])
        body = await graphql(
            pushed, SET_ACTIVE, {"id": ada["user"]["id"]}, headers=bearer(root["accessToken"])
        )
        assert body == {"data": {"setUserActive": {"isActive": False}}}, body
        assert await _closed(ws) == (4403, "Forbidden: This account has been deactivated.")


async def test_a_revocation_on_one_replica_closes_a_socket_on_another(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        redis_url=require_service("DEPOT_TEST_REDIS_URL", "Redis"),
        # Installations on one Redis hear only their own events.
        redis_prefix=f"ws-{uuid.uuid4().hex[:12]}",
        ws_auth_recheck_seconds=3600,
    )
    async with serve_app(settings) as one, serve_app(settings) as two:
        token = await _token(one)
        async with _connect(one) as ws:
            await _acknowledged(ws, token)
            assert "errors" not in await graphql(two, LOGOUT_EVERYWHERE, headers=bearer(token))
            assert await _closed(ws) == ENDED
    # A Redis connection the apps left open warns now, in this test, not in a later one.
    gc.collect()


# -- caps on open sockets -----------------------------------------------------------


async def _open(ws: AsyncWebSocketSession) -> None:
    """Wait until the server handles ``ws`` (it answers a ping), so it holds its place."""
    await ws.send_json({"type": "ping"})
    assert await _receive(ws) == {"type": "pong"}


async def _eventually_acknowledged(client: httpx.AsyncClient, token: str) -> None:
    """A socket for ``token`` is acknowledged once closed sockets gave their places back."""
    with anyio.fail_after(TIMEOUT_S):
        while True:
            async with _connect(client) as ws:
                await ws.send_json(_init(token))
                with contextlib.suppress(WebSocketDisconnect):
                    if await _receive(ws) == {"type": "connection_ack"}:
                        return
            await anyio.sleep(0.05)


async def test_open_sockets_are_capped_per_address(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path, ws_connections_per_address=2)) as client:
        token = await _token(client)
        async with _connect(client) as one, _connect(client) as two:
            await _open(one)
            await _open(two)
            async with _connect(client) as three:
                assert await _closed(three) == (
                    4429,
                    "Too many open WebSockets from this address; close one first.",
                )
        await _eventually_acknowledged(client, token)


async def test_open_sockets_are_capped_per_user(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path, ws_connections_per_user=1)) as client:
        ada = await _token(client)
        bob = (await register(client, email="bob@example.com", display_name="Bob"))["accessToken"]
        async with _connect(client) as first:
            await _acknowledged(first, ada)
            async with _connect(client) as second:
                await second.send_json(_init(ada))
                assert await _closed(second) == (
                    4429,
                    "Too many open WebSockets for this user; close one first.",
                )
            async with _connect(client) as bobs:
                await _acknowledged(bobs, bob)
            # The refused socket took no place: the first still answers.
            await _still_answers(first, "q1")
        await _eventually_acknowledged(client, ada)


# -- origins ------------------------------------------------------------------------


async def test_same_origin_browser_is_accepted(client: httpx.AsyncClient) -> None:
    token = await _token(client)
    async with _connect(client, origin="http://depot.test") as ws:
        await _acknowledged(ws, token)


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
    async with serve_app(settings) as client:
        token = await _token(client)
        async with _connect(client, origin=APP_ORIGIN) as ws:
            await _acknowledged(ws, token)


async def _silent_until_closed(ws: AsyncWebSocketSession) -> None:
    """Wait, however long, for the server to close ``ws``; no message may come first."""
    while True:
        with contextlib.suppress(TimeoutError):
            await ws.receive_json(timeout=TIMEOUT_S)
            pytest.fail("the socket received a message instead of closing")


async def test_a_socket_ends_when_its_access_token_expires(pushed: httpx.AsyncClient) -> None:
    # A token whose ``exp`` has passed but which the clock leeway every check allows
    # still accepts for two to three more seconds (not the leeway's ten and more);
    # the poll is an hour away, so only the watch's wake-up at expiry can close it.
    leeway = int(CLOCK_SKEW.total_seconds())
    token = resigned(await _token(pushed), exp=int(time.time()) - leeway + 3)
    async with _connect(pushed) as ws:
        await _acknowledged(ws, token)
        await _still_answers(ws, "q1")
        with pytest.raises(WebSocketDisconnect) as closed, anyio.fail_after(30):
            await _silent_until_closed(ws)
        code, reason = closed.value.code, closed.value.reason
    assert code == 4403
    assert reason == "Forbidden: The access token has expired; refresh the session."


async def test_a_message_nested_too_deeply_closes_the_socket_as_unreadable(
    client: httpx.AsyncClient,
) -> None:
    token = await _token(client)
    async with _connect(client) as ws:
        await _acknowledged(ws, token)
        deep = "[" * 5000 + "]" * 5000
        await ws.send_text('{"type": "subscribe", "id": "q1", "payload": ' + deep + "}")
        code, _ = await _closed(ws)
    assert code == 4400


# -- one credentials watch per user and process (core.signins) --------------------

WATCH_TASK = "depot-credentials-watch"


def _watches() -> int:
    """The credentials watches running on this loop (the app's, in-process)."""
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == WATCH_TASK and not t.done())


async def test_a_users_sockets_share_one_watch_that_closes_them_all(
    pushed: httpx.AsyncClient,
) -> None:
    token = await _token(pushed)
    async with _connect(pushed) as a, _connect(pushed) as b, _connect(pushed) as c:
        for ws in (a, b, c):
            await _acknowledged(ws, token)
        assert _watches() == 1, "one task and one listener for the user, not one per socket"
        assert "errors" not in await graphql(pushed, LOGOUT_EVERYWHERE, headers=bearer(token))
        for ws in (a, b, c):
            assert await _closed(ws) == ENDED
    with anyio.fail_after(TIMEOUT_S):
        for _ in range(10_000):
            if not _watches():
                break  # gone with the user's last socket
            await anyio.sleep(0.01)
