"""Introspection, GraphiQL and "Did you mean …?": on in development, off in production.

Each is a setting (``DEPOT_GRAPHQL_INTROSPECTION``, ``DEPOT_GRAPHIQL``,
``DEPOT_GRAPHQL_SUGGESTIONS``) whose default follows ``DEPOT_ENVIRONMENT``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import aconnect_ws

from core.settings import load_settings
from schema import build_schema
from tests.conftest import make_settings, serve_app
from tests.support import STRONG_SECRET, error_codes, register
from tests.test_validation_cache import _context, _count_validations

pytestmark = pytest.mark.anyio

AIDS = ("graphiql", "graphql_introspection", "graphql_suggestions")
INTROSPECTION = "{ __schema { queryType { name } } }"
TYPE_INTROSPECTION = '{ __type(name: "File") { name } }'
# `me` exists: graphql-core suggests it for the misspelt field.
MISSPELT = "{ mee { id } }"
BROWSER_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(("environment", "on"), [("development", True), ("production", False)])
def test_defaults_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: str, on: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEPOT_ENVIRONMENT", environment)
    monkeypatch.setenv("DEPOT_SECRET_KEY", STRONG_SECRET)
    settings = load_settings(_env_file=None, var_dir=tmp_path / "var")
    assert {aid: getattr(settings, aid) for aid in AIDS} == dict.fromkeys(AIDS, on)


@pytest.mark.parametrize("aid", AIDS)
def test_production_may_turn_each_back_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, aid: str
) -> None:
    monkeypatch.setenv(f"DEPOT_{aid.upper()}", "true")
    settings = load_settings(
        _env_file=None, environment="production", secret_key=STRONG_SECRET, var_dir=tmp_path
    )
    assert getattr(settings, aid) is True


@asynccontextmanager
async def _production(tmp_path: Path, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A production app, on a migrated database as production requires."""
    settings = make_settings(tmp_path, environment="production", database_url=database_url)
    async with serve_app(settings) as client:
        yield client


async def _post(client: httpx.AsyncClient, query: str) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query})
    body: dict[str, Any] = response.json()
    return body


async def test_production_hides_the_schema(tmp_path: Path, database_url: str) -> None:
    async with _production(tmp_path, database_url) as client:
        for query in (INTROSPECTION, TYPE_INTROSPECTION):
            body = await _post(client, query)
            # One error per introspection field (`__schema`, then `queryType`).
            assert set(error_codes(body)) == {"GRAPHQL_VALIDATION_FAILED"}, body
            assert "introspection has been disabled" in body["errors"][0]["message"]
        # __typename is not introspection of the schema: clients (Apollo's cache) need it.
        assert await _post(client, "{ __typename }") == {"data": {"__typename": "Query"}}

        misspelt = await _post(client, MISSPELT)
        assert error_codes(misspelt) == ["GRAPHQL_VALIDATION_FAILED"]
        assert misspelt["errors"][0]["message"] == "Cannot query field 'mee' on type 'Query'."

        ide = await client.get("/graphql", headers={"accept": BROWSER_ACCEPT})
        assert ide.status_code == 404
        assert ide.headers["content-type"] == "application/json"
        assert error_codes(ide.json()) == ["NOT_FOUND"]


async def test_development_shows_the_schema(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path)) as client:
        body = await _post(client, INTROSPECTION)
        assert body == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
        misspelt = await _post(client, MISSPELT)
        assert "Did you mean 'me'?" in misspelt["errors"][0]["message"]
        ide = await client.get("/graphql", headers={"accept": BROWSER_ACCEPT})
        assert ide.status_code == 200


@pytest.mark.parametrize(
    ("query", "variables", "message"),
    [
        ("{ me { emial } }", None, "Cannot query field 'emial' on type 'User'."),
        (
            "{ files(firts: 1) { totalCount } }",
            None,
            "Unknown argument 'firts' on field 'Query.files'.",
        ),
        ("query ($f: FileFiltr) { files(filter: $f) { totalCount } }", None, "Unknown type"),
        (
            "query ($f: FileFilter) { files(filter: $f) { totalCount } }",
            {"f": {"nameContain": "x"}},
            "not to include unknown field 'nameContain'. Found: ",
        ),
    ],
    ids=["field", "argument", "type", "variable-field"],
)
async def test_suggestions_off_leave_the_rest_of_the_message(
    tmp_path: Path, query: str, variables: dict[str, Any] | None, message: str
) -> None:
    settings = make_settings(tmp_path, graphql_suggestions=False)
    async with serve_app(settings) as client:
        response = await client.post("/graphql", json={"query": query, "variables": variables})
        body = response.json()
    [error] = body["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert message in error["message"]
    assert "Did you mean" not in error["message"]


async def test_suggestions_off_over_websocket_too(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, graphql_suggestions=False, graphql_introspection=False)
    async with serve_app(settings) as client:
        token = (await register(client))["accessToken"]
        async with aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as ws:
            init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}
            await ws.send_json(init)
            assert (await ws.receive_json(timeout=5))["type"] == "connection_ack"
            for id_, query in (("misspelt", MISSPELT), ("schema", INTROSPECTION)):
                await ws.send_json({"type": "subscribe", "id": id_, "payload": {"query": query}})
                message = await ws.receive_json(timeout=5)
                assert (message["id"], message["type"]) == (id_, "error")
                for error in message["payload"]:
                    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
                    assert "Did you mean" not in error["message"]


async def test_introspection_off_keeps_the_validation_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rule is one fixed class: a repeated document is validated once, refused each time."""
    schema = build_schema(introspection=False)
    validations = _count_validations(monkeypatch)
    # Unique, so no earlier test has filled the shared cache with it.
    query = f"{{ s{uuid.uuid4().hex}: __schema {{ queryType {{ name }} }} }}"

    for _ in range(3):
        result = await schema.execute(query, context_value=_context())
        assert result.errors is not None
        assert "introspection" in result.errors[0].message.lower()

    assert len(validations) == 1
