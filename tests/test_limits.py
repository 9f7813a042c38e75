"""What one operation may ask for: cost, depth, aliases, directives, errors (schema.limits).

Each limit is met through the public surface: a refused operation answers 400
(``application/graphql-response+json``) with a code, before any resolver runs.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import get_introspection_query
from httpx_ws import aconnect_ws

from schema.ids import encode_id
from tests.conftest import make_settings, serve_app
from tests.support import bearer, error_codes, register

pytestmark = pytest.mark.anyio

GRAPHQL_RESPONSE = "application/graphql-response+json"

# The repro: files → jobs → inputs → jobs, 11 levels of fields, under
# the depth limit; a user with 30 files and 10 jobs got 6.2 MB after 4.2 s.
WALK = (
    "{ files { edges { node { jobs { edges { node { inputs { jobs { edges { node "
    "{ id kind status progress message createdAt } } } } } } } } } } }"
)


def _chain(length: int) -> str:
    """An operation spreading a chain of ``length`` fragments, each in the next."""
    fragments = "".join(f"fragment F{i} on Query {{ ...F{i + 1} }}\n" for i in range(length))
    return "{ ...F0 }\n" + fragments + f"fragment F{length} on Query {{ __typename }}"


async def _post(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"accept": GRAPHQL_RESPONSE},
    )


async def _refused(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The one error of a request refused before execution (400, no data)."""
    response = await _post(client, query, variables)
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    assert "data" not in body, body
    [error] = body["errors"]
    return dict(error)


@pytest.fixture
async def lenient_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose token limit lets big documents reach the other limits."""
    async with serve_app(make_settings(tmp_path, graphql_max_tokens=100_000)) as client:
        yield client


# -- cost ---------------------------------------------------------------------


async def test_the_walk_through_files_jobs_and_inputs_is_too_complex(
    client: httpx.AsyncClient,
) -> None:
    assert len(WALK) < 170
    error = await _refused(client, WALK)
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert error["extensions"]["maxCost"] == 5000
    assert error["extensions"]["cost"] > 5000
    assert "DEPOT_GRAPHQL_MAX_COST" in error["message"]


async def test_cost_is_refused_before_any_resolver_runs(client: httpx.AsyncClient) -> None:
    # A mutation over the limit registers nobody.
    mutation = (
        'mutation { register(input: {email: "x@example.com", password: "correct horse '
        'battery staple", displayName: "X"}) { user { files(first: 100) { edges { node '
        "{ jobs(first: 100) { edges { node { id } } } } } } } } }"
    )
    error = await _refused(client, mutation)
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    signed_in = await register(client, email="x@example.com")
    assert signed_in["user"]["email"] == "x@example.com"


async def test_cost_follows_first_from_the_variables(client: httpx.AsyncClient) -> None:
    token = (await register(client))["accessToken"]
    query = """query Pages($n: Int) {
      files(first: $n) { edges { node { ...Jobs } } }
    }
    fragment Jobs on File { jobs(first: $n) { totalCount edges { node { id } } } }"""

    small = await client.post(
        "/graphql", json={"query": query, "variables": {"n": 10}}, headers=bearer(token)
    )
    assert small.json() == {"data": {"files": {"edges": []}}}

    # 1 + 100 * (edge 1 + node 1 + jobs 1 + totalCount 1 + 100 * (edge 1 + node 1)).
    error = await _refused(client, query, {"n": 100})
    assert error["extensions"] == {"code": "QUERY_TOO_COMPLEX", "cost": 20401, "maxCost": 5000}


async def test_an_absent_first_counts_as_the_default_page(client: httpx.AsyncClient) -> None:
    # 1 + 20 * (edge 1 + node 1 + 1,000 inputs * 1): a job page with its inputs
    # (an archive's most).
    error = await _refused(client, "{ jobs { edges { node { inputs { id } } } } }")
    assert error["extensions"] == {"code": "QUERY_TOO_COMPLEX", "cost": 20041, "maxCost": 5000}


PIPELINE_VIEW = """query P($id: ID!) { job(id: $id) { id status steps { name status
  job { id status inputs { id } outputs { totalCount edges { node { id path } } } } } } }"""


async def test_a_pipelines_natural_view_fits_the_default_cost(client: httpx.AsyncClient) -> None:
    token = (await register(client))["accessToken"]
    missing = encode_id("Job", uuid.UUID(int=0))
    response = await client.post(
        "/graphql",
        json={"query": PIPELINE_VIEW, "variables": {"id": missing}},
        headers=bearer(token),
    )
    assert error_codes(response.json()) == ["NOT_FOUND"], response.text
    # A step's inputs count as their share of core.pipelines.MAX_STEP_INPUTS; the
    # pipeline's own inputs, reached from each step, still count as 1,000 each.
    error = await _refused(
        client, '{ job(id: "x") { steps { job { pipeline { inputs { id } } } } } }'
    )
    assert error["extensions"] == {"code": "QUERY_TOO_COMPLEX", "cost": 32097, "maxCost": 5000}


async def test_introspection_passes_every_limit(client: httpx.AsyncClient) -> None:
    # What GraphiQL sends, with every option it may turn on.
    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
    )
    response = await _post(client, query)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["__schema"]["queryType"]["name"] == "Query"


async def test_nested_introspection_is_refused(client: httpx.AsyncClient) -> None:
    # Not counted in depth or cost: graphql-core's MaxIntrospectionDepthRule bounds it.
    query = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }"
    response = await _post(client, query)
    assert response.status_code == 400
    assert set(error_codes(response.json())) == {"GRAPHQL_VALIDATION_FAILED"}
    assert "Maximum introspection depth exceeded" in response.text


# -- depth, aliases, directives -----------------------------------------------


async def test_depth_over_the_limit_is_refused(client: httpx.AsyncClient) -> None:
    # me 0, files 1, edges 2, node 3, owner 4, … id 12.
    hop = "files { edges { node { owner { "
    deep = "{ me { " + hop * 2 + "files { edges { node { id" + " }" * 13
    error = await _refused(client, deep)
    assert error["message"] == "'anonymous' exceeds maximum operation depth of 10"
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}


async def test_aliases_over_the_limit_are_refused(client: httpx.AsyncClient) -> None:
    fifteen = " ".join(f"a{i}: __typename" for i in range(15))
    assert (await _post(client, f"{{ {fifteen} }}")).status_code == 200

    # Counted where a fragment is spread: 8 aliases spread twice are 16.
    query = (
        "{ ...Eight ... on Query { ...Eight } }\n"
        "fragment Eight on Query { " + " ".join(f"b{i}: __typename" for i in range(8)) + " }"
    )
    error = await _refused(client, query)
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    assert "16 aliases" in error["message"]
    assert "DEPOT_GRAPHQL_MAX_ALIASES" in error["message"]


async def test_directives_over_the_limit_are_refused(client: httpx.AsyncClient) -> None:
    on = "@include(if: true)"
    aliased = " ".join(f"a{i}: __typename {on}" for i in range(14))
    user = " ".join(f"{name} {on}" for name in ("id", "email", "displayName", "role", "isActive"))
    twenty = f"{aliased} me {on} {{ {user} }}"
    assert (await _post(client, f"{{ {twenty} }}")).status_code == 200

    error = await _refused(client, f"{{ {twenty} __typename @skip(if: false) }}")
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    assert "21 directives" in error["message"]


@pytest.mark.parametrize("alias", ["a: ", ""])
async def test_overlapping_fields_are_refused_before_the_quadratic_check(
    client: httpx.AsyncClient, lenient_client: httpx.AsyncClient, alias: str
) -> None:
    # 450 fields of one response name with different arguments: graphql-core
    # compares every pair (1.8 s of CPU aliased; 4.4 s without aliases).
    def query(offset: int) -> str:  # a new document each time: no cache helps
        fields = (f"{alias}files(first: {offset + i}) {{ totalCount }}" for i in range(450))
        return "{ " + " ".join(fields) + " }"

    for app in (client, lenient_client):
        spent = []
        # The least of three, so another thread's CPU (a test's worker) does not count.
        for offset in range(3):
            started = time.process_time()
            response = await _post(app, query(offset * 1000))
            spent.append(time.process_time() - started)
            assert response.status_code == 400
            assert error_codes(response.json()) in (
                ["GRAPHQL_PARSE_FAILED"],  # the default token limit
                ["GRAPHQL_VALIDATION_FAILED"],
            )
        assert min(spent) < 0.3, spent
    [error] = (await _post(lenient_client, query(0))).json()["errors"]
    assert "DEPOT_GRAPHQL_MAX_ALIASES" in error["message"]


# -- a chain of fragments ---------------------------------------------------------


async def test_a_chain_of_fragments_is_refused_over_http_in_one_log_line(
    client: httpx.AsyncClient, lenient_client: httpx.AsyncClient, log_stream: io.StringIO
) -> None:
    # 300 fragments are more tokens than the default allows; past that limit,
    # the depth limit refuses them (Strawberry's recursed until it crashed).
    assert error_codes((await _post(client, _chain(300))).json()) == ["GRAPHQL_PARSE_FAILED"]
    log_stream.seek(0)
    log_stream.truncate()
    error = await _refused(lenient_client, _chain(300))
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    assert "nests fragments 301 deep" in error["message"]
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    server = [record for record in records if record.get("logger") != "httpx"]
    assert [record["event"] for record in server] == ["request"]  # the access line only


async def test_a_chain_of_fragments_is_an_error_message_over_websocket(
    lenient_client: httpx.AsyncClient,
) -> None:
    token = (await register(lenient_client))["accessToken"]
    async with aconnect_ws("/graphql", lenient_client, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send_json({"type": "connection_init", "payload": bearer(token)})
        assert await ws.receive_json(timeout=5) == {"type": "connection_ack"}
        await ws.send_json({"type": "subscribe", "id": "c", "payload": {"query": _chain(300)}})
        message = await ws.receive_json(timeout=5)
        assert (message["id"], message["type"]) == ("c", "error"), message
        [error] = message["payload"]
        assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
        assert "fragments" in error["message"]


async def test_cost_is_refused_over_websocket(client: httpx.AsyncClient) -> None:
    token = (await register(client))["accessToken"]
    async with aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send_json({"type": "connection_init", "payload": bearer(token)})
        assert await ws.receive_json(timeout=5) == {"type": "connection_ack"}
        await ws.send_json({"type": "subscribe", "id": "w", "payload": {"query": WALK}})
        message = await ws.receive_json(timeout=5)
        assert (message["id"], message["type"]) == ("w", "error"), message
        [error] = message["payload"]
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"


# -- errors ---------------------------------------------------------------------


async def test_an_echoed_input_is_cut_short(lenient_client: httpx.AsyncClient) -> None:
    huge = "x" * 100_000
    query = f'{{ files(filter: {{trashed: "{huge}"}}) {{ totalCount }} }}'
    error = await _refused(lenient_client, query)
    assert error["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"}
    assert error["message"].startswith("Boolean cannot represent a non boolean value")
    assert len(error["message"]) <= 1000


async def test_a_response_carries_at_most_twenty_errors(client: httpx.AsyncClient) -> None:
    response = await _post(client, "{ " + " ".join(f"f{i}" for i in range(150)) + " }")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert len(errors) == 21
    assert errors[-1]["message"].endswith("more errors left out.")
    assert {error["extensions"]["code"] for error in errors} == {"GRAPHQL_VALIDATION_FAILED"}
