"""Personal access tokens: shown once, used as bearer tokens, listed, revoked, expired."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from core.models import Credential
from core.settings import Settings
from core.time import utcnow
from schema.ids import decode_id_of, encode_id
from tests.conftest import make_settings, serve_app
from tests.relay import all_pages, nodes_of
from tests.support import (
    ME,
    PASSWORD,
    assert_error,
    bearer,
    graphql,
    me,
    register,
    update_user,
)

pytestmark = pytest.mark.anyio

TOKEN = "id name createdAt lastUsedAt expiresAt"
CREATE = f"""
mutation Create($name: String!, $days: Int) {{
  createAccessToken(name: $name, expiresInDays: $days) {{ token accessToken {{ {TOKEN} }} }}
}}"""
LIST = f"""
query List($first: Int, $after: String) {{
  accessTokens(first: $first, after: $after) {{
    edges {{ cursor node {{ {TOKEN} }} }}
    pageInfo {{ hasNextPage endCursor }}
    totalCount
  }}
}}"""
REVOKE = "mutation Revoke($id: ID!) { revokeAccessToken(id: $id) { id name } }"
NODE = "query Node($id: ID!) { node(id: $id) { id ... on AccessToken { name } } }"
LOGOUT_EVERYWHERE = "mutation LogoutEverywhere { logoutEverywhere }"


async def signed_in(client: httpx.AsyncClient, email: str) -> dict[str, str]:
    """Register ``email`` and return headers carrying its session's access token."""
    return bearer((await register(client, email=email))["accessToken"])


@pytest.fixture
async def ada(client: httpx.AsyncClient) -> dict[str, str]:
    return await signed_in(client, "ada@example.com")


async def create_token(
    client: httpx.AsyncClient, headers: dict[str, str], name: str = "ci", days: int | None = None
) -> dict[str, Any]:
    """Create a token and return ``{token, accessToken}``."""
    body = await graphql(client, CREATE, {"name": name, "days": days}, headers=headers)
    assert "errors" not in body, body
    created: dict[str, Any] = body["data"]["createAccessToken"]
    return created


async def email_of(client: httpx.AsyncClient, secret: str) -> str:
    """Who ``secret`` signs in as; fails if it is refused."""
    body = await me(client, secret)
    assert "errors" not in body, body
    email: str = body["data"]["me"]["email"]
    return email


async def assert_refused(client: httpx.AsyncClient, secret: str, reason: str) -> None:
    error = assert_error(await me(client, secret), "UNAUTHENTICATED")
    assert reason in error["message"]


async def token_list(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    body = await graphql(client, LIST, headers=headers)
    assert "errors" not in body, body
    listed: dict[str, Any] = body["data"]["accessTokens"]
    return listed


def listed_names(listed: dict[str, Any]) -> list[str]:
    return [edge["node"]["name"] for edge in listed["edges"]]


async def expire(engine: AsyncEngine, token_id: str) -> None:
    """Move a token's expiry into the past, behind the API's back."""
    async with engine.begin() as connection:
        await connection.execute(
            update(Credential)
            .where(col(Credential.id) == decode_id_of("AccessToken", token_id))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def cursor_of(*parts: object) -> str:
    """A cursor in the server's own encoding (oldest-first tag, then the key), hand-made."""
    raw = json.dumps(["CREATED_AT", "ASC", *parts]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- creating and using -----------------------------------------------------------


@pytest.mark.parametrize("days", [None, 1, 366])
async def test_create_shows_the_secret_once_with_its_metadata(
    client: httpx.AsyncClient, ada: dict[str, str], days: int | None
) -> None:
    created = await create_token(client, ada, name="  deploy bot  ", days=days)
    secret, token = created["token"], created["accessToken"]
    assert secret.startswith("dpt_")
    assert len(secret) >= 40
    assert token["name"] == "deploy bot"
    assert token["lastUsedAt"] is None
    assert abs(when(token["createdAt"]) - utcnow()) < timedelta(minutes=1)
    # No lifetime given: the default (DEPOT_PERSONAL_TOKEN_DEFAULT_DAYS); none is forever.
    lifetime = when(token["expiresAt"]) - when(token["createdAt"])
    assert abs(lifetime - timedelta(days=days or 90)) < timedelta(seconds=1)


async def test_each_token_has_its_own_secret(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    first, second = [await create_token(client, ada, name=name) for name in ("a", "b")]
    assert first["token"] != second["token"]
    assert first["accessToken"]["id"] != second["accessToken"]["id"]


async def test_token_signs_in_and_records_its_use_without_exposing_the_secret(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    secret = (await create_token(client, ada))["token"]
    assert await email_of(client, secret) == "ada@example.com"

    response = await client.post("/graphql", json={"query": LIST}, headers=ada)
    [token] = [edge["node"] for edge in response.json()["data"]["accessTokens"]["edges"]]
    assert token["lastUsedAt"] is not None
    assert abs(when(token["lastUsedAt"]) - utcnow()) < timedelta(minutes=1)
    assert secret not in response.text
    assert secret.removeprefix("dpt_") not in response.text
    assert hashlib.sha256(secret.encode()).hexdigest() not in response.text


async def test_the_token_itself_can_list_tokens(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    secret = (await create_token(client, ada, name="script"))["token"]
    assert listed_names(await token_list(client, bearer(secret))) == ["script"]


@pytest.mark.parametrize("operation", [LIST, CREATE])
async def test_tokens_need_a_signed_in_user(client: httpx.AsyncClient, operation: str) -> None:
    assert_error(await graphql(client, operation, {"name": "x"}), "UNAUTHENTICATED")


@pytest.mark.parametrize(
    ("name", "days", "field"),
    [
        ("", None, "name"),
        ("   ", None, "name"),
        ("x" * 101, None, "name"),
        ("ok", 0, "expiresInDays"),
        ("ok", -1, "expiresInDays"),
        ("ok", 367, "expiresInDays"),
    ],
)
async def test_bad_input_is_refused_and_creates_nothing(
    client: httpx.AsyncClient, ada: dict[str, str], name: str, days: int | None, field: str
) -> None:
    body = await graphql(client, CREATE, {"name": name, "days": days}, headers=ada)
    assert_error(body, "BAD_USER_INPUT", field=field)
    assert (await token_list(client, ada))["totalCount"] == 0


async def test_a_100_character_name_is_accepted(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    created = await create_token(client, ada, name="x" * 100)
    assert created["accessToken"]["name"] == "x" * 100


# -- listing ----------------------------------------------------------------------


async def test_tokens_page_oldest_first_without_gaps_or_duplicates(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    names = [f"token {i}" for i in range(5)]
    for name in names:
        await create_token(client, ada, name=name)
    pages = await all_pages(client, LIST, "accessTokens", first=2, headers=ada)
    assert [len(page["edges"]) for page in pages] == [2, 2, 1]
    assert [page["pageInfo"]["hasNextPage"] for page in pages] == [True, True, False]
    assert [node["name"] for node in nodes_of(pages)] == names


async def test_tokens_are_private_to_their_owner(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    await create_token(client, ada)
    bob = await signed_in(client, "bob@example.com")
    assert await token_list(client, bob) == {
        "edges": [],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
        "totalCount": 0,
    }


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"first": -1}, "first"),
        ({"first": 101}, "first"),
        ({"after": "garbage"}, "after"),
        ({"after": ""}, "after"),
        ({"after": cursor_of(1, 2)}, "after"),
        ({"after": cursor_of("2025-01-01T00:00:00+00:00", "not-a-uuid")}, "after"),
        ({"after": cursor_of("yesterday", uuid.uuid4().hex)}, "after"),
    ],
)
async def test_bad_page_arguments_are_bad_user_input(
    client: httpx.AsyncClient, ada: dict[str, str], arguments: dict[str, Any], field: str
) -> None:
    await create_token(client, ada)
    body = await graphql(client, LIST, arguments, headers=ada)
    assert_error(body, "BAD_USER_INPUT", field=field)


async def test_cursor_without_a_time_zone_is_bad_user_input(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    # The server's cursors carry UTC offsets; a naive one is hand-made and ambiguous.
    await create_token(client, ada)
    naive = cursor_of("2025-01-01T00:00:00", uuid.uuid4().hex)
    body = await graphql(client, LIST, {"after": naive}, headers=ada)
    assert_error(body, "BAD_USER_INPUT", field="after")


async def test_cursor_time_is_an_instant_whatever_its_offset(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    for name in ("a", "b", "c"):
        await create_token(client, ada, name=name)
    first = await graphql(client, LIST, {"first": 1}, headers=ada)
    cursor = first["data"]["accessTokens"]["pageInfo"]["endCursor"]
    *_, created_at, key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    elsewhere = when(created_at).astimezone(timezone(timedelta(hours=5))).isoformat()

    pages = [
        await graphql(client, LIST, {"after": after}, headers=ada)
        for after in (cursor, cursor_of(elsewhere, key))
    ]
    assert [listed_names(page["data"]["accessTokens"]) for page in pages] == [["b", "c"]] * 2


# -- revoking ---------------------------------------------------------------------


async def test_revoked_token_stops_at_once_and_leaves_the_list(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    doomed, kept = [await create_token(client, ada, name=name) for name in ("doomed", "kept")]
    assert await email_of(client, doomed["token"]) == "ada@example.com"

    doomed_id = doomed["accessToken"]["id"]
    body = await graphql(client, REVOKE, {"id": doomed_id}, headers=ada)
    assert body == {"data": {"revokeAccessToken": {"id": doomed_id, "name": "doomed"}}}

    await assert_refused(client, doomed["token"], "revoked")
    assert await email_of(client, kept["token"]) == "ada@example.com"
    listed = await token_list(client, ada)
    assert (listed_names(listed), listed["totalCount"]) == (["kept"], 1)
    again = await graphql(client, REVOKE, {"id": doomed_id}, headers=ada)
    assert_error(again, "NOT_FOUND")


async def test_another_users_token_is_not_found_exactly_like_a_made_up_one(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    adas = await create_token(client, ada)
    bob = await signed_in(client, "bob@example.com")

    async def revoke_as_bob(token_id: str) -> dict[str, Any]:
        body = await graphql(client, REVOKE, {"id": token_id}, headers=bob)
        assert body["data"] is None
        [error] = body["errors"]
        return {"message": error["message"], "extensions": error["extensions"]}

    theirs = await revoke_as_bob(adas["accessToken"]["id"])
    made_up = await revoke_as_bob(encode_id("AccessToken", uuid.uuid4()))
    assert theirs == made_up
    assert theirs["extensions"] == {"code": "NOT_FOUND"}
    assert await email_of(client, adas["token"]) == "ada@example.com"


async def test_node_resolves_only_your_own_token(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    token_id = (await create_token(client, ada, name="mine"))["accessToken"]["id"]
    bob = await signed_in(client, "bob@example.com")

    async def node_as(headers: dict[str, str]) -> dict[str, Any]:
        return await graphql(client, NODE, {"id": token_id}, headers=headers)

    assert await node_as(ada) == {"data": {"node": {"id": token_id, "name": "mine"}}}
    assert await node_as(bob) == {"data": {"node": None}}
    assert await node_as({}) == {"data": {"node": None}}


# -- when a token stops working ---------------------------------------------------


async def test_expired_token_is_refused(
    client: httpx.AsyncClient, ada: dict[str, str], engine: AsyncEngine
) -> None:
    created = await create_token(client, ada, days=1)
    assert await email_of(client, created["token"]) == "ada@example.com"
    await expire(engine, created["accessToken"]["id"])
    await assert_refused(client, created["token"], "expired")


async def test_token_of_a_deactivated_user_stops_working(
    client: httpx.AsyncClient, ada: dict[str, str], engine: AsyncEngine
) -> None:
    secret = (await create_token(client, ada))["token"]
    await update_user(engine, "ada@example.com", is_active=False)
    await assert_refused(client, secret, "deactivated")


@pytest.mark.parametrize("secret", ["dpt_", "dpt_unknown", "dpt_" + "A" * 43])
async def test_unknown_token_is_refused(client: httpx.AsyncClient, secret: str) -> None:
    await assert_refused(client, secret, "invalid")


async def test_logout_everywhere_revokes_personal_tokens(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    # Signing out everywhere is account recovery: a token minted by a thief ends too.
    secret = (await create_token(client, ada))["token"]
    assert await graphql(client, LOGOUT_EVERYWHERE, headers=ada) == {
        "data": {"logoutEverywhere": True}
    }
    assert_error(await graphql(client, ME, headers=ada), "UNAUTHENTICATED")
    await assert_refused(client, secret, "revoked")


CHANGE_PASSWORD = (
    "mutation ($current: String!, $new: String!) "
    "{ changePassword(currentPassword: $current, newPassword: $new) }"
)


async def test_a_password_change_revokes_personal_tokens(
    client: httpx.AsyncClient, ada: dict[str, str]
) -> None:
    secret = (await create_token(client, ada))["token"]
    changed = await graphql(
        client, CHANGE_PASSWORD, {"current": PASSWORD, "new": "a new horse battery"}, headers=ada
    )
    assert changed == {"data": {"changePassword": True}}
    await assert_refused(client, secret, "revoked")
    # The session that changed the password goes on.
    assert await graphql(client, "{ me { email } }", headers=ada) == {
        "data": {"me": {"email": "ada@example.com"}}
    }


@pytest.mark.parametrize(
    ("operation", "variables"),
    [
        (CREATE, {"name": "another"}),
        (CHANGE_PASSWORD, {"current": PASSWORD, "new": "a new horse battery"}),
        (LOGOUT_EVERYWHERE, {}),
    ],
    ids=["create-token", "change-password", "logout-everywhere"],
)
async def test_a_personal_token_cannot_take_over_its_account(
    client: httpx.AsyncClient, ada: dict[str, str], operation: str, variables: dict[str, Any]
) -> None:
    secret = (await create_token(client, ada))["token"]
    body = await graphql(client, operation, variables, headers=bearer(secret))
    error = assert_error(body, "FORBIDDEN")
    assert "Sign in with your password" in error["message"]
    # Nothing changed: the token, the session and the password all still work.
    assert await email_of(client, secret) == "ada@example.com"
    assert "errors" not in await graphql(client, ME, headers=ada)
    assert listed_names(await token_list(client, ada)) == ["ci"]


async def test_a_user_holds_a_bounded_number_of_tokens(tmp_path: Path, settings: Settings) -> None:
    capped = make_settings(tmp_path, database_url=settings.database_url, personal_tokens_per_user=2)
    async with serve_app(capped) as client:
        headers = await signed_in(client, "ada@example.com")
        first = await create_token(client, headers, name="one")
        await create_token(client, headers, name="two")
        body = await graphql(client, CREATE, {"name": "three"}, headers=headers)
        assert "the most allowed" in assert_error(body, "CONFLICT")["message"]
        await graphql(client, REVOKE, {"id": first["accessToken"]["id"]}, headers=headers)
        assert (await create_token(client, headers, name="three"))["token"]
