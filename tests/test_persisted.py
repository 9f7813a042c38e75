"""Persisted documents: Apollo's automatic persisted queries and trusted documents.

Each request is what Apollo's ``PersistedQueryLink``, GraphQL Code Generator's
client preset or a GraphQL-over-HTTP client sends, over HTTP (POST and GET)
and WebSocket, against the embedded memory store and against Redis.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import strawberry.schema.schema
from graphql import validate
from httpx_ws import aconnect_ws
from redis.asyncio import Redis

from api.app import create_app
from api.persisted import ManifestError
from core.settings import SettingsError, load_settings
from tests.conftest import make_settings, serve_app
from tests.support import (
    CSRF_HEADER,
    REGISTER,
    UPLOAD_FILE,
    assert_error,
    bearer,
    next_message,
    register,
    require_service,
    subscriber,
)
from tests.test_metrics import delta, scrape

pytestmark = pytest.mark.anyio

NO_CACHE = "private, no-cache, must-revalidate"
ME = "query Me { me { id } }"
EVENTS = "subscription Events { myEvents { __typename } }"


def sha256(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def unique_query() -> str:
    """A document no other test has registered or validated (stores and caches are shared)."""
    return f"query Unique {{ t{uuid.uuid4().hex}: __typename }}"


def apq(document: str) -> dict[str, Any]:
    """``extensions`` as Apollo's PersistedQueryLink sends them."""
    return {"persistedQuery": {"version": 1, "sha256Hash": sha256(document)}}


async def post(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post("/graphql", json=body, headers=headers)


async def get(client: httpx.AsyncClient, **params: Any) -> httpx.Response:
    """A GET as Apollo's link sends it with ``useGETForHashedQueries``: JSON in parameters."""
    encoded = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
    return await client.get(
        "/graphql",
        params=encoded,
        headers={"accept": "application/graphql-response+json,application/json;q=0.9"},
    )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(make_settings(tmp_path)) as client:
        yield client


# -- automatic persisted queries over HTTP ----------------------------------------


@pytest.mark.parametrize("accept", ["application/json", "application/graphql-response+json"])
async def test_an_unknown_hash_is_not_found_as_apollo_server_answers(
    client: httpx.AsyncClient, accept: str
) -> None:
    response = await post(
        client, {"extensions": apq(unique_query()), "operationName": "Unique"}, {"accept": accept}
    )

    # Status 200 and this exact message and code: what Apollo's link retries on.
    assert response.status_code == 200
    assert response.headers["cache-control"] == NO_CACHE
    assert response.headers["content-type"] == accept
    error = assert_error(response.json(), "PERSISTED_QUERY_NOT_FOUND")
    assert error["message"] == "PersistedQueryNotFound"
    assert "data" not in response.json()


async def test_the_link_flow_registers_then_runs_by_hash(client: httpx.AsyncClient) -> None:
    query = unique_query()
    alias = query.split()[3].rstrip(":")
    missing = await post(client, {"extensions": apq(query)})
    assert_error(missing.json(), "PERSISTED_QUERY_NOT_FOUND")

    registered = await post(client, {"query": query, "extensions": apq(query)})
    assert registered.json() == {"data": {alias: "Query"}}

    by_hash = await post(client, {"extensions": apq(query), "variables": {}})
    assert by_hash.status_code == 200
    assert by_hash.json() == {"data": {alias: "Query"}}


async def test_a_get_by_hash_runs_a_registered_query(client: httpx.AsyncClient) -> None:
    query = unique_query()
    alias = query.split()[3].rstrip(":")
    assert_error((await get(client, extensions=apq(query))).json(), "PERSISTED_QUERY_NOT_FOUND")
    await post(client, {"query": query, "extensions": apq(query)})

    response = await get(client, extensions=apq(query), variables={}, operationName="Unique")

    assert response.status_code == 200, response.text
    assert response.json() == {"data": {alias: "Query"}}


async def test_a_get_by_hash_with_curls_accept_is_a_query_not_graphiql(
    client: httpx.AsyncClient,
) -> None:
    query = unique_query()
    await post(client, {"query": query, "extensions": apq(query)})

    response = await client.get(
        "/graphql", params={"extensions": json.dumps(apq(query))}, headers={"accept": "*/*"}
    )

    assert response.headers["content-type"] == "application/json"
    assert "data" in response.json()


async def test_a_mutation_by_hash_over_get_stays_refused(client: httpx.AsyncClient) -> None:
    mutation = f'mutation Out {{ logout(refreshToken: "{uuid.uuid4().hex}") }}'
    registered = await post(client, {"query": mutation, "extensions": apq(mutation)})
    assert "data" in registered.json(), registered.json()

    response = await get(client, extensions=apq(mutation))

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert_error(response.json(), "METHOD_NOT_ALLOWED")


async def test_a_wrong_hash_is_refused_and_not_registered(client: httpx.AsyncClient) -> None:
    query, other = unique_query(), unique_query()

    response = await post(client, {"query": query, "extensions": apq(other)})

    assert response.status_code == 400
    assert_error(response.json(), "PERSISTED_QUERY_HASH_MISMATCH")
    missing = await post(client, {"extensions": apq(other)})
    assert_error(missing.json(), "PERSISTED_QUERY_NOT_FOUND")


async def test_a_document_that_does_not_validate_is_not_registered(
    client: httpx.AsyncClient,
) -> None:
    query = f"query Bad {{ nope{uuid.uuid4().hex} }}"

    refused = await post(client, {"query": query, "extensions": apq(query)})
    assert_error(refused.json(), "GRAPHQL_VALIDATION_FAILED")

    missing = await post(client, {"extensions": apq(query)})
    assert_error(missing.json(), "PERSISTED_QUERY_NOT_FOUND")


@pytest.mark.parametrize(
    "persisted",
    [
        {"version": 2, "sha256Hash": "ab"},
        {"version": 1},
        "not an object",
        {"version": 1, "sha256Hash": 7},
    ],
)
async def test_a_malformed_persisted_query_extension_is_a_bad_request(
    client: httpx.AsyncClient, persisted: object
) -> None:
    response = await post(client, {"extensions": {"persistedQuery": persisted}})

    assert response.status_code == 400
    assert_error(response.json(), "BAD_REQUEST")


async def test_persisted_queries_turned_off_are_not_supported(tmp_path: Path) -> None:
    query = unique_query()
    async with serve_app(make_settings(tmp_path, persisted_queries=False)) as client:
        for body in ({"extensions": apq(query)}, {"query": query, "extensions": apq(query)}):
            response = await post(client, body)
            assert response.status_code == 200
            assert response.headers["cache-control"] == NO_CACHE
            error = assert_error(response.json(), "PERSISTED_QUERY_NOT_SUPPORTED")
            assert error["message"] == "PersistedQueryNotSupported"
        # Apollo's link then drops the extension: plain queries still run.
        plain = await post(client, {"query": query})
        assert "data" in plain.json()


async def test_the_memory_store_forgets_the_least_recently_used(tmp_path: Path) -> None:
    # 64 KiB of room; each document is some 30 KiB (one long string, one token).
    def big(n: int) -> str:
        return f'query Big{n} {{ node(id: "{"x" * 30_000}{uuid.uuid4().hex}") {{ id }} }}'

    first, second, third = big(1), big(2), big(3)
    settings = make_settings(tmp_path, persisted_queries_memory_bytes=64 * 1024)
    async with serve_app(settings) as client:
        for query in (first, second):
            body = (await post(client, {"query": query, "extensions": apq(query)})).json()
            assert body["data"] == {"node": None}, body
        # Using `first` makes `second` the least recently used.
        assert "data" in (await post(client, {"extensions": apq(first)})).json()
        await post(client, {"query": third, "extensions": apq(third)})

        assert "data" in (await post(client, {"extensions": apq(first)})).json()
        assert "data" in (await post(client, {"extensions": apq(third)})).json()
        gone = await post(client, {"extensions": apq(second)})
        assert_error(gone.json(), "PERSISTED_QUERY_NOT_FOUND")


async def test_a_persisted_document_is_validated_once(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The validation cache (keyed by the document) hits for documents sent by hash."""
    validated: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        validated.append(args[1])
        return validate(*args, **kwargs)

    monkeypatch.setattr(strawberry.schema.schema, "validate", counting)
    query = unique_query()
    await post(client, {"query": query, "extensions": apq(query)})
    for _ in range(3):
        assert "data" in (await post(client, {"extensions": apq(query)})).json()

    assert len(validated) == 1


async def upload(
    client: httpx.AsyncClient, token: str, operations: dict[str, Any]
) -> dict[str, Any]:
    """A multipart upload as apollo-upload-client sends it behind Apollo's persisted link."""
    response = await client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"1": ["variables.file"]})},
        files={"1": ("cat.txt", b"meow", "text/plain")},
        headers={**CSRF_HEADER, **bearer(token)},
    )
    body: dict[str, Any] = response.json()
    return body


async def test_an_upload_runs_by_hash(client: httpx.AsyncClient) -> None:
    token = (await register(client))["accessToken"]
    variables = {"file": None, "path": None}

    missing = await upload(client, token, {"extensions": apq(UPLOAD_FILE), "variables": variables})
    assert_error(missing, "PERSISTED_QUERY_NOT_FOUND")
    sent = {"query": UPLOAD_FILE, "extensions": apq(UPLOAD_FILE), "variables": variables}
    assert (await upload(client, token, sent))["data"]["uploadFile"]["size"] == 4

    variables["path"] = "again.txt"
    by_hash = await upload(client, token, {"extensions": apq(UPLOAD_FILE), "variables": variables})
    assert by_hash["data"]["uploadFile"]["path"] == "again.txt", by_hash


# -- the Redis store ---------------------------------------------------------------


@pytest.mark.redis
async def test_redis_shares_registrations_between_replicas(tmp_path: Path) -> None:
    url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    prefix = f"apqtest-{uuid.uuid4().hex[:8]}"
    query = unique_query()
    one = make_settings(tmp_path / "one", redis_url=url, redis_prefix=prefix)
    two = make_settings(
        tmp_path / "two", redis_url=url, redis_prefix=prefix, persisted_queries_ttl_seconds=600
    )
    redis = Redis.from_url(url)
    try:
        async with serve_app(one) as first, serve_app(two) as second:
            await post(first, {"query": query, "extensions": apq(query)})
            assert "data" in (await post(second, {"extensions": apq(query)})).json()

            await post(second, {"query": ME, "extensions": apq(ME)})
            assert "data" in (await post(first, {"extensions": apq(ME)})).json()

        assert await redis.get(f"{prefix}:apq:{sha256(query)}") == query.encode()
        assert 0 < await redis.ttl(f"{prefix}:apq:{sha256(ME)}") <= 600
        assert 600 < await redis.ttl(f"{prefix}:apq:{sha256(query)}") <= 24 * 3600
    finally:
        keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


@pytest.mark.redis
async def test_another_prefix_does_not_see_the_registration(tmp_path: Path) -> None:
    url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    prefixes = [f"apqtest-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    query = unique_query()
    redis = Redis.from_url(url)
    try:
        async with (
            serve_app(make_settings(tmp_path / "a", redis_url=url, redis_prefix=prefixes[0])) as a,
            serve_app(make_settings(tmp_path / "b", redis_url=url, redis_prefix=prefixes[1])) as b,
        ):
            await post(a, {"query": query, "extensions": apq(query)})
            assert_error(
                (await post(b, {"extensions": apq(query)})).json(), "PERSISTED_QUERY_NOT_FOUND"
            )
    finally:
        for prefix in prefixes:
            keys = [key async for key in redis.scan_iter(f"{prefix}:*")]
            if keys:
                await redis.delete(*keys)
        await redis.aclose()


# -- trusted documents ---------------------------------------------------------------

# `register` too: a trusted-only app runs nothing else, sign-up included.
TRUSTED = {"Me": ME, "Events": EVENTS, "Register": REGISTER}


def codegen_manifest(path: Path) -> Path:
    """``persisted-documents.json`` as GraphQL Code Generator's client preset writes it."""
    path.write_text(json.dumps({sha256(body): body for body in TRUSTED.values()}))
    return path


def apollo_manifest(path: Path) -> Path:
    """What ``@apollo/generate-persisted-query-manifest`` writes."""
    operations = [
        {"id": sha256(body), "name": name, "type": body.split()[0], "body": body}
        for name, body in TRUSTED.items()
    ]
    path.write_text(
        json.dumps(
            {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
        )
    )
    return path


@pytest.fixture(params=[codegen_manifest, apollo_manifest], ids=["codegen", "apollo"])
def manifest(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path: Path = request.param(tmp_path / "manifest.json")
    return path


@pytest.fixture(params=[False, True], ids=["open", "trusted-only"])
async def trusted_client(
    request: pytest.FixtureRequest, tmp_path: Path, manifest: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        tmp_path, trusted_documents=manifest, trusted_documents_only=request.param
    )
    async with serve_app(settings) as client:
        yield client


@pytest.mark.parametrize("document_id", [sha256(ME), f"sha256:{sha256(ME)}"])
async def test_a_trusted_document_runs_by_document_id(
    trusted_client: httpx.AsyncClient, document_id: str
) -> None:
    token = (await register(trusted_client))["accessToken"]

    by_post = await post(trusted_client, {"documentId": document_id}, bearer(token))
    by_get = await trusted_client.get(
        "/graphql", params={"documentId": document_id}, headers=bearer(token)
    )

    for response in (by_post, by_get):
        assert response.status_code == 200, response.text
        assert response.json()["data"]["me"]["id"]


async def test_a_trusted_upload_runs_by_document_id(tmp_path: Path) -> None:
    path = tmp_path / "persisted-documents.json"
    path.write_text(json.dumps({sha256(body): body for body in (REGISTER, UPLOAD_FILE)}))
    settings = make_settings(tmp_path, trusted_documents=path, trusted_documents_only=True)
    async with serve_app(settings) as client:
        token = (await register(client))["accessToken"]
        operations = {"documentId": sha256(UPLOAD_FILE), "variables": {"file": None, "path": None}}
        assert (await upload(client, token, operations))["data"]["uploadFile"]["size"] == 4


async def test_a_trusted_document_runs_by_apollo_hash(trusted_client: httpx.AsyncClient) -> None:
    response = await post(trusted_client, {"extensions": apq(ME)})

    assert response.json() == {"data": {"me": None}}


async def test_a_trusted_id_names_its_document_whatever_text_comes_with_it(
    trusted_client: httpx.AsyncClient,
) -> None:
    # GraphQLWsLink (and any link after Apollo's) sends its own print of the
    # document beside the id a code generator computed from another print.
    reprinted = "query Me {\n  me {\n    id\n  }\n}"

    response = await post(trusted_client, {"query": reprinted, "extensions": apq(ME)})

    assert response.json() == {"data": {"me": None}}


async def test_manifest_ids_need_not_be_hashes(tmp_path: Path) -> None:
    operations = [{"id": "me-v1", "name": "Me", "type": "query", "body": ME}]
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps(
            {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
        )
    )
    settings = make_settings(tmp_path, trusted_documents=path, trusted_documents_only=True)
    async with serve_app(settings) as client:
        for body in (
            {"documentId": "me-v1"},
            {"documentId": f"sha256:{sha256(ME)}"},
            {"extensions": apq(ME)},
        ):
            assert (await post(client, body)).json() == {"data": {"me": None}}, body


async def test_an_unknown_document_id_is_not_found(trusted_client: httpx.AsyncClient) -> None:
    response = await post(trusted_client, {"documentId": sha256(unique_query())})

    assert response.status_code == 200
    assert_error(response.json(), "PERSISTED_QUERY_NOT_FOUND")


async def test_a_query_sent_runs_whatever_document_id_says(
    trusted_client: httpx.AsyncClient,
) -> None:
    # `documentId` is read only when `query` is missing (the body is decoded once).
    response = await post(trusted_client, {"documentId": sha256(EVENTS), "query": ME})

    assert response.json() == {"data": {"me": None}}


async def test_a_malformed_document_id_is_a_bad_request(trusted_client: httpx.AsyncClient) -> None:
    for document_id in (7, "", "x" * 300):
        response = await post(trusted_client, {"documentId": document_id})
        assert response.status_code == 400
        assert_error(response.json(), "BAD_REQUEST")


async def test_trusted_only_refuses_any_other_document(tmp_path: Path, manifest: Path) -> None:
    settings = make_settings(tmp_path, trusted_documents=manifest, trusted_documents_only=True)
    query = unique_query()
    async with serve_app(settings) as client:
        # Sent whole, by Apollo's registration, or by an unknown hash: none runs.
        whole = await post(client, {"query": query})
        registration = await post(client, {"query": query, "extensions": apq(query)})
        for response in (whole, registration):
            assert response.status_code == 403
            assert_error(response.json(), "PERSISTED_QUERY_NOT_IN_LIST")
        assert_error(
            (await post(client, {"extensions": apq(query)})).json(), "PERSISTED_QUERY_NOT_FOUND"
        )
        # A trusted document's own text still runs, as Apollo Client sends it after a miss.
        assert (await post(client, {"query": ME})).json() == {"data": {"me": None}}
        assert (await post(client, {"query": ME, "extensions": apq(ME)})).json() == {
            "data": {"me": None}
        }


async def test_without_trusted_only_other_documents_still_run(
    tmp_path: Path, manifest: Path
) -> None:
    settings = make_settings(tmp_path, trusted_documents=manifest)
    query = unique_query()
    async with serve_app(settings) as client:
        assert "data" in (await post(client, {"query": query})).json()
        await post(client, {"query": query, "extensions": apq(query)})
        assert "data" in (await post(client, {"extensions": apq(query)})).json()


async def test_metrics_name_trusted_operations_only(tmp_path: Path, manifest: Path) -> None:
    async with serve_app(make_settings(tmp_path, trusted_documents=manifest)) as client:
        before = await scrape(client)
        await post(client, {"documentId": sha256(ME)})
        await post(client, {"query": ME})
        # Registered by anyone, so not a bounded set of names: anonymous.
        query = unique_query()
        await post(client, {"query": query, "extensions": apq(query)})
        await post(client, {"extensions": apq(query), "operationName": "Unique"})
        after = await scrape(client)

    counted = "depot_graphql_operations_total"
    assert delta(after, before, counted, operation="Me", type="query") == 2
    assert delta(after, before, counted, operation="anonymous", type="query") == 2


def test_a_blank_manifest_setting_means_none() -> None:
    assert load_settings(_env_file=None, trusted_documents=" ").trusted_documents is None


def test_trusted_only_without_a_manifest_stops_at_start() -> None:
    with pytest.raises(SettingsError, match="DEPOT_TRUSTED_DOCUMENTS_ONLY needs DEPOT_TRUSTED"):
        load_settings(_env_file=None, trusted_documents_only=True)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("{", "not JSON"),
        ('{"a": 1}', "expected"),
        ('{"format": "apollo-persisted-query-manifest", "version": 2}', "version 1"),
        (
            '{"format": "apollo-persisted-query-manifest", "version": 1, "operations": [{}]}',
            "operations",
        ),
        ('{"abc": "query {"}', "does not parse"),
    ],
)
def test_a_broken_manifest_stops_the_app_naming_it(
    tmp_path: Path, content: str, complaint: str
) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(content)

    with pytest.raises(ManifestError, match=complaint) as raised:
        create_app(make_settings(tmp_path, trusted_documents=path))
    assert f"DEPOT_TRUSTED_DOCUMENTS={path}" in str(raised.value)


def test_a_missing_manifest_stops_the_app(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read it"):
        create_app(make_settings(tmp_path, trusted_documents=tmp_path / "nowhere.json"))


# -- over WebSocket ------------------------------------------------------------------


async def test_a_registered_query_runs_by_hash_over_websocket(client: httpx.AsyncClient) -> None:
    token = (await register(client))["accessToken"]
    query = unique_query()
    alias = query.split()[3].rstrip(":")
    await post(client, {"query": query, "extensions": apq(query)})

    async with subscriber(client, token) as ws:
        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"extensions": apq(query)}})
        message = await next_message(ws)
        assert message == {"id": "1", "type": "next", "payload": {"data": {alias: "Query"}}}
        assert await next_message(ws) == {"id": "1", "type": "complete"}

        unknown = unique_query()
        await ws.send_json(
            {"type": "subscribe", "id": "2", "payload": {"extensions": apq(unknown)}}
        )
        refused = await next_message(ws)
        assert refused["type"] == "error"
        assert refused["payload"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
        # The socket stays open for the next operation.
        await ws.send_json(
            {"type": "subscribe", "id": "3", "payload": {"query": query, "extensions": apq(query)}}
        )
        assert (await next_message(ws))["type"] == "next"


async def test_trusted_only_holds_over_websocket(tmp_path: Path, manifest: Path) -> None:
    settings = make_settings(
        tmp_path, trusted_documents=manifest, trusted_documents_only=True, graphql_ws_legacy=True
    )
    async with serve_app(settings) as client:
        token = (await register(client))["accessToken"]
        async with subscriber(client, token) as ws:
            await ws.send_json(
                {"type": "subscribe", "id": "1", "payload": {"query": "{ __typename }"}}
            )
            refused = await next_message(ws)
            assert refused["id"] == "1"
            assert refused["type"] == "error"
            assert refused["payload"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"

            await ws.send_json(
                {"type": "subscribe", "id": "2", "payload": {"documentId": sha256(ME)}}
            )
            message = await next_message(ws)
            assert message["type"] == "next"
            assert message["payload"]["data"]["me"]["id"]
            assert await next_message(ws) == {"id": "2", "type": "complete"}
            # A trusted subscription starts: the next answer is the refusal of the one after it.
            await ws.send_json({"type": "subscribe", "id": "3", "payload": {"query": EVENTS}})
            await ws.send_json({"type": "subscribe", "id": "4", "payload": {"query": ME + " "}})
            refused = await next_message(ws)
            assert (refused["id"], refused["type"]) == ("4", "error")
            await ws.send_json({"type": "complete", "id": "3"})

        # The legacy protocol is held to the same list.
        async with aconnect_ws("/graphql", client, subprotocols=["graphql-ws"]) as legacy:
            await legacy.send_json({"type": "connection_init", "payload": bearer(token)})
            assert (await next_message(legacy))["type"] == "connection_ack"
            await legacy.send_json(
                {"type": "start", "id": "1", "payload": {"query": "{ __typename }"}}
            )
            refused = await next_message(legacy)
            assert refused["type"] == "error"
            assert refused["payload"]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"
