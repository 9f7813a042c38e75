"""GraphQL over HTTP, held to the spec: methods, media types, status codes."""

from __future__ import annotations

import io
import json

import httpx
import pytest

from tests.support import error_codes

pytestmark = pytest.mark.anyio

GRAPHQL_RESPONSE = "application/graphql-response+json"


async def test_get_query(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "{ __typename }"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_post_json_query_with_variables(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        json={
            "query": "query Q($skip: Boolean!) { __typename @skip(if: $skip) me { id } }",
            "variables": {"skip": False},
            "operationName": "Q",
        },
    )
    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query", "me": None}}


async def test_graphql_response_json_is_negotiated(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"accept": f"{GRAPHQL_RESPONSE}, application/json;q=0.9"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == GRAPHQL_RESPONSE


async def test_json_preferred_by_weight(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"accept": f"{GRAPHQL_RESPONSE};q=0.5, application/json"},
    )
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("{ __typename ", "GRAPHQL_PARSE_FAILED"),
        ("{ noSuchField }", "GRAPHQL_VALIDATION_FAILED"),
    ],
)
async def test_request_errors_are_400_in_graphql_response_mode(
    client: httpx.AsyncClient, query: str, code: str
) -> None:
    response = await client.post(
        "/graphql", json={"query": query}, headers={"accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    body = response.json()
    assert "data" not in body
    assert error_codes(body) == [code]


async def test_request_errors_are_200_in_legacy_json_mode(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": "{ noSuchField }"}, headers={"accept": "application/json"}
    )
    assert response.status_code == 200
    assert error_codes(response.json()) == ["GRAPHQL_VALIDATION_FAILED"]


async def test_bad_variables_are_a_request_error(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        json={"query": "query ($id: ID!) { node(id: $id) { id } }", "variables": {}},
        headers={"accept": GRAPHQL_RESPONSE},
    )
    assert response.status_code == 400
    assert "data" not in response.json()


async def test_several_operations_need_an_operation_name(client: httpx.AsyncClient) -> None:
    document = "query A { __typename } query B { me { id } }"
    response = await client.post(
        "/graphql", json={"query": document}, headers={"accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400
    assert error_codes(response.json()) == ["GRAPHQL_VALIDATION_FAILED"]
    named = await client.post("/graphql", json={"query": document, "operationName": "B"})
    assert named.json() == {"data": {"me": None}}


async def test_execution_errors_keep_status_200(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql",
        json={"query": '{ node(id: "not-an-id") { id } }'},
        headers={"accept": GRAPHQL_RESPONSE},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == {"node": None}
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "id"}


async def test_mutation_over_get_is_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql", params={"query": "mutation { anything }"})
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_codes(response.json()) == ["METHOD_NOT_ALLOWED"]


async def test_other_methods_are_405(client: httpx.AsyncClient) -> None:
    response = await client.put("/graphql", json={"query": "{ __typename }"})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert error_codes(response.json()) == ["METHOD_NOT_ALLOWED"]


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert error_codes(body) == ["BAD_REQUEST"]
    assert "JSON" in body["errors"][0]["message"]


@pytest.mark.parametrize("payload", [{}, {"query": None}, {"variables": {}}])
async def test_missing_query_is_400(client: httpx.AsyncClient, payload: dict[str, object]) -> None:
    response = await client.post("/graphql", json=payload)
    assert response.status_code == 400
    assert error_codes(response.json()) == ["BAD_REQUEST"]


@pytest.mark.parametrize(
    "payload",
    [{"query": 42}, {"query": "{ __typename }", "variables": [1]}, ["not", "an", "object"]],
)
async def test_malformed_request_parameters_are_400(
    client: httpx.AsyncClient, payload: object
) -> None:
    response = await client.post("/graphql", json=payload)
    assert response.status_code == 400
    assert error_codes(response.json()) == ["BAD_REQUEST"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_is_415(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/graphql", content=b'{"query": "{ __typename }"}', headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert error_codes(response.json()) == ["UNSUPPORTED_MEDIA_TYPE"]


async def test_unacceptable_accept_is_406(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"accept": "image/png"}
    )
    assert response.status_code == 406
    assert error_codes(response.json()) == ["NOT_ACCEPTABLE"]


async def test_browser_gets_graphiql(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/graphql", headers={"accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()


async def test_root_redirects_to_graphiql(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code in (302, 307)
    assert response.headers["location"] == "/graphql"


async def test_huge_documents_are_refused(client: httpx.AsyncClient) -> None:
    # The default limit is 5,000 tokens; each alias below is three.
    query = "{ " + " ".join(f"a{i}: __typename" for i in range(2000)) + " }"
    response = await client.post(
        "/graphql", json={"query": query}, headers={"accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400
    body = response.json()
    assert error_codes(body) == ["GRAPHQL_PARSE_FAILED"]
    assert "tokens" in body["errors"][0]["message"]


_DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("method", "content", "params"),
    [
        ("POST", '{"query": "{ __typename }", "variables": {"a": ' + _DEEP + "}}", None),
        ("POST", '{"query": "{ __typename }", "extensions": {"a": ' + _DEEP + "}}", None),
        ("POST", _DEEP, None),
        ("GET", None, {"query": "{ __typename }", "variables": '{"a": ' + _DEEP + "}"}),
    ],
    ids=["variables", "extensions", "body", "get-variables"],
)
async def test_json_nested_too_deeply_is_a_bad_request(
    client: httpx.AsyncClient,
    log_stream: io.StringIO,
    method: str,
    content: str | None,
    params: dict[str, str] | None,
) -> None:
    response = await client.request(
        method,
        "/graphql",
        content=content,
        params=params,
        headers={"content-type": "application/json", "accept": GRAPHQL_RESPONSE},
    )
    assert response.status_code == 400
    assert error_codes(response.json()) == ["BAD_REQUEST"]
    # The access line, and nothing louder.
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [r["level"] for r in records if r["logger"].startswith("depot")] == ["info"]


async def test_a_subscription_over_http_is_refused_with_a_code(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Strawberry would run it as a query and fail inside the resolver (a 500 with a
    traceback, for anyone); it belongs on the WebSocket."""
    query = {"query": "subscription { myEvents { cursor } }"}
    response = await client.post("/graphql", json=query)
    assert response.status_code == 200
    assert error_codes(response.json()) == ["GRAPHQL_VALIDATION_FAILED"]
    assert "WebSocket" in response.json()["errors"][0]["message"]
    strict = await client.post(
        "/graphql", json=query, headers={"Accept": "application/graphql-response+json"}
    )
    assert strict.status_code == 400
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
