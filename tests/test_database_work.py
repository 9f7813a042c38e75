"""The request path's database work: few statements, one session, dead connections survived.

A page of files or ``me`` costs a few statements, on every database.

Counted with SQLAlchemy's ``before_cursor_execute`` on every engine of the
process while one request runs: every statement Depot sends, but not the
``BEGIN``/``COMMIT``/``ROLLBACK`` the drivers send by themselves (the
issue's "besides BEGIN/COMMIT"). On PostgreSQL those are counted too, on the
wire, by ``bench.http``'s proxy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from httpx_ws import aconnect_ws
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import Pool

from bench.pg_wire import WireCounter, is_bookkeeping, verb
from tests.conftest import make_settings, serve_app
from tests.support import bearer, graphql, register, upload_file

pytestmark = pytest.mark.anyio

FILES = (
    "query { files(first: 50) "
    "{ totalCount edges { node { id path size contentType owner { email } } } } }"
)
ME = "{ me { id email } }"
MY_EVENTS = "subscription { myEvents { type } }"
# Sign-in, the total, the page; the owner is the signed-in user (the target: 4).
FILES_PAGE_MAX = 3
ME_MAX = 1  # the session and its user, in one statement


@contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL statements any engine of this process executes while the block runs."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


async def _counted(client: httpx.AsyncClient, query: str, headers: dict[str, str]) -> list[str]:
    with statements() as seen:
        body = await graphql(client, query, headers=headers)
    assert "errors" not in body, body
    return seen


async def test_files_page_costs_the_same_few_statements_for_one_file_or_many(
    client: httpx.AsyncClient,
) -> None:
    headers = bearer((await register(client))["accessToken"])
    await upload_file(client, headers, "/0.txt", b"0")
    await _counted(client, FILES, headers)  # warm: first connections, statement caches
    one = await _counted(client, FILES, headers)
    for number in range(1, 12):
        await upload_file(client, headers, f"/{number}.txt", b"x")
    body = await graphql(client, FILES, headers=headers)
    edges = body["data"]["files"]["edges"]
    assert len(edges) == 12
    assert {edge["node"]["owner"]["email"] for edge in edges} == {"ada@example.com"}
    many = await _counted(client, FILES, headers)
    assert len(one) <= FILES_PAGE_MAX, one
    assert len(many) == len(one), many


async def test_me_with_an_access_token_costs_one_statement(client: httpx.AsyncClient) -> None:
    headers = bearer((await register(client))["accessToken"])
    await _counted(client, ME, headers)
    seen = await _counted(client, ME, headers)
    assert len(seen) <= ME_MAX, seen


async def test_signed_out_me_costs_no_statement(client: httpx.AsyncClient) -> None:
    await _counted(client, ME, {})
    assert await _counted(client, ME, {}) == []


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_requests_survive_the_server_ending_every_connection(
    client: httpx.AsyncClient, database_url: str, log_stream: io.StringIO
) -> None:
    """No ping per checkout: a dead connection is found on use, and the read retried."""
    headers = bearer((await register(client))["accessToken"])
    await upload_file(client, headers, "/a.txt", b"a")
    # Several connections in the pool, so the next request surely gets a dead one.
    for _ in range(3):
        await graphql(client, FILES, headers=headers)
    url = make_url(database_url)
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            url.database,
        )
    finally:
        await admin.close()
    assert ended >= 1
    body = await graphql(client, FILES, headers=headers)
    assert "errors" not in body, body
    assert body["data"]["files"]["totalCount"] == 1
    assert "errors" not in await graphql(client, ME, headers=headers)
    # Found by the request's first read, which ran again: not by luck of the pool.
    events = [json.loads(line)["event"] for line in log_stream.getvalue().splitlines()]
    assert "database connection lost; reading again on a new one" in events


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_on_postgresql_a_query_begins_no_transaction_and_a_mutation_commits_its_own(
    database_url: str, tmp_path: Path
) -> None:
    """Every round trip, counted on the wire: a query's reads are all it sends."""
    url = make_url(database_url)
    proxy = WireCounter(url.host or "127.0.0.1", url.port or 5432)
    port = await proxy.start()
    through_proxy = url.set(host="127.0.0.1", port=port).render_as_string(False)
    try:
        async with serve_app(make_settings(tmp_path, database_url=through_proxy)) as client:
            headers = bearer((await register(client))["accessToken"])
            await upload_file(client, headers, "/a.txt", b"a")

            async def trips(query: str) -> list[str]:
                for _ in range(3):  # warm: connections, prepared statements
                    body = await graphql(client, query, headers=headers)
                    assert "errors" not in body, body
                mark = len(proxy.trips)
                assert "errors" not in await graphql(client, query, headers=headers)
                return proxy.trips[mark:]

            me, files = await trips(ME), await trips(FILES)
            update = await trips('mutation { updateProfile(displayName: "Ada L.") { id } }')
    finally:
        await proxy.stop()
    assert len(me) == ME_MAX, me
    assert len(files) == FILES_PAGE_MAX, files
    assert not any(is_bookkeeping(sql) for sql in me + files), me + files
    # Sign-in still reads outside; the mutation's own work is one transaction.
    assert [verb(sql) for sql in update] == ["SELECT", "BEGIN", "SELECT", "UPDATE", "COMMIT"]


@contextmanager
def checked_out() -> Iterator[list[int]]:
    """How many pooled connections, of any engine of this process, are checked out: [n]."""
    count = [0]

    def checkout(*_args: Any) -> None:
        count[0] += 1

    def checkin(*_args: Any) -> None:
        count[0] -= 1

    event.listen(Pool, "checkout", checkout)
    event.listen(Pool, "checkin", checkin)
    try:
        yield count
    finally:
        event.remove(Pool, "checkout", checkout)
        event.remove(Pool, "checkin", checkin)


async def test_a_websocket_holds_no_connection_while_its_subscription_waits(
    client: httpx.AsyncClient,
) -> None:
    headers = bearer((await register(client))["accessToken"])
    with checked_out() as count:
        async with aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as ws:
            await ws.send_json({"type": "connection_init", "payload": headers})
            assert (await ws.receive_json())["type"] == "connection_ack"
            await ws.send_json(
                {"id": "events", "type": "subscribe", "payload": {"query": MY_EVENTS}}
            )
            # A query on the same socket, while the subscription waits for events.
            await ws.send_json({"id": "page", "type": "subscribe", "payload": {"query": FILES}})
            answer = await ws.receive_json()
            assert answer["id"] == "page", answer
            assert answer["payload"]["data"]["files"]["totalCount"] == 0
            assert (await ws.receive_json()) == {"id": "page", "type": "complete"}
            assert count == [0]


async def test_a_mutation_answers_with_the_rows_it_changed(client: httpx.AsyncClient) -> None:
    """A page in a mutation's answer reads its owner as the mutation left it, not at sign-in."""
    headers = bearer((await register(client))["accessToken"])
    await upload_file(client, headers, "/a.txt", b"a")
    body = await graphql(
        client,
        'mutation { updateProfile(displayName: "Ada L.") '
        "{ displayName files { edges { node { owner { displayName } } } } } }",
        headers=headers,
    )
    assert "errors" not in body, body
    profile = body["data"]["updateProfile"]
    assert profile["displayName"] == "Ada L."
    assert profile["files"]["edges"][0]["node"]["owner"]["displayName"] == "Ada L."
