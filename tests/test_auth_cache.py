"""The sign-in cache (core.signins): no SQL for a credential verified a moment ago, and
every change to a credential or an account ends its cached sign-ins — at once in the
process that made it, within seconds (not the TTL) in another one on the same Redis.

Each change goes through GraphQL; only the mailed tokens of a reset and an address
change are made in the database, since the mail is not what is tested here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import create_sessionmaker
from core.email_tokens import issue
from core.models import Role, TokenPurpose
from core.settings import Settings
from schema.ids import decode_id_of
from tests.conftest import make_settings, serve_app
from tests.support import (
    PASSWORD,
    assert_error,
    bearer,
    graphql,
    register,
    require_service,
    sign_in,
    update_user,
)
from tests.test_database_work import statements

pytestmark = pytest.mark.anyio

# Far longer than any wait below: a refusal seen in time came from the change, not the TTL.
TTL_S = 60.0
ANNOUNCED_S = 5.0
ME = "query { me { id email role } }"
ADMIN_QUERY = "query { users(first: 1) { totalCount } }"
CREATE_TOKEN = (
    "mutation Create($name: String!) { createAccessToken(name: $name) "
    "{ token accessToken { id } } }"
)
REVOKE_TOKEN = "mutation Revoke($id: ID!) { revokeAccessToken(id: $id) { id } }"
LOGOUT = "mutation Logout($token: String!) { logout(refreshToken: $token) }"
LOGOUT_EVERYWHERE = "mutation { logoutEverywhere }"
CHANGE_PASSWORD = (
    "mutation Change($current: String!, $new: String!) "
    "{ changePassword(currentPassword: $current, newPassword: $new) }"
)
RESET = (
    "mutation Reset($token: String!, $password: String!) "
    "{ resetPassword(token: $token, newPassword: $password) { accessToken } }"
)
VERIFY = "mutation Verify($token: String!) { verifyEmail(token: $token) }"
SET_ACTIVE = (
    "mutation Set($id: ID!, $active: Boolean!) { setUserActive(id: $id, active: $active) { id } }"
)
SET_ROLE = "mutation Set($id: ID!, $role: Role!) { setUserRole(id: $id, role: $role) { id } }"
NEW_PASSWORD = "a brand new passphrase"


async def ok(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], headers: dict[str, str]
) -> dict[str, Any]:
    body = await graphql(client, query, variables, headers=headers)
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def cached(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    """``me`` once it is answered from the cache, without SQL (the first sign-in of a
    user starts their watch; one after it is cached)."""
    for _ in range(50):
        with statements() as seen:
            me = (await ok(client, ME, {}, headers))["me"]
        if not seen:
            assert me is not None
            return dict(me)
        await anyio.sleep(0.01)
    raise AssertionError(f"never answered from the sign-in cache: {seen}")


async def refused(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert_error(await graphql(client, ME, headers=headers), "UNAUTHENTICATED")


async def refused_soon(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Refused within ``ANNOUNCED_S``: the announcement, not the TTL, ended the entry."""
    with anyio.fail_after(ANNOUNCED_S):
        for _ in range(1000):
            if "errors" in await graphql(client, ME, headers=headers):
                break
            await anyio.sleep(0.05)
    await refused(client, headers)


@dataclass
class Case:
    """A signed-up user, and the app through which a path makes its change."""

    engine: AsyncEngine
    changer: httpx.AsyncClient
    account: dict[str, Any]
    token_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.account["accessToken"])

    @property
    def user_id(self) -> str:
        return str(self.account["user"]["id"])


async def mailed_token(case: Case, purpose: TokenPurpose, email: str) -> str:
    """What a reset or verification mail would carry, issued as the mail actor does."""
    key = decode_id_of("User", case.user_id)
    async with create_sessionmaker(case.engine)() as db:
        secret = await issue(db, key, purpose, email, timedelta(hours=1))
        await db.commit()
    return secret


async def _admin(case: Case) -> dict[str, str]:
    admin = await register(case.changer, email="root@example.com")
    # Before the admin's first request: no cached copy of them to outlive it.
    await update_user(case.engine, "root@example.com", role=Role.ADMIN)
    return bearer(admin["accessToken"])


# -- the revocation paths: each makes its change through `case.changer`.


async def by_logout(case: Case) -> None:
    await ok(case.changer, LOGOUT, {"token": case.account["refreshToken"]}, {})


async def by_logout_everywhere(case: Case) -> None:
    await ok(case.changer, LOGOUT_EVERYWHERE, {}, case.headers)


async def by_password_change(case: Case) -> None:
    # From another session of the same user: the victim's session ends, the changer's stays.
    other = await sign_in(case.changer, case.account["user"]["email"], PASSWORD)
    variables = {"current": PASSWORD, "new": NEW_PASSWORD}
    await ok(case.changer, CHANGE_PASSWORD, variables, bearer(other["accessToken"]))


async def by_password_reset(case: Case) -> None:
    email = case.account["user"]["email"]
    token = await mailed_token(case, TokenPurpose.RESET, email)
    await ok(case.changer, RESET, {"token": token, "password": NEW_PASSWORD}, {})


async def by_deactivation(case: Case) -> None:
    admin = await _admin(case)
    await ok(case.changer, SET_ACTIVE, {"id": case.user_id, "active": False}, admin)


async def by_token_revocation(case: Case) -> None:
    # The victim is a personal access token here (see `victim_headers`).
    await ok(case.changer, REVOKE_TOKEN, {"id": case.token_id}, case.headers)


REVOKING: dict[str, Callable[[Case], Awaitable[None]]] = {
    "logout": by_logout,
    "logoutEverywhere": by_logout_everywhere,
    "changePassword": by_password_change,
    "resetPassword": by_password_reset,
    "setUserActive": by_deactivation,
    "revokeAccessToken": by_token_revocation,
}


async def victim_headers(client: httpx.AsyncClient, case: Case, path: str) -> dict[str, str]:
    """The credential whose cached sign-in the change must end."""
    if path != "revokeAccessToken":
        return case.headers
    created = (await ok(client, CREATE_TOKEN, {"name": "ci"}, case.headers))["createAccessToken"]
    case.token_id = created["accessToken"]["id"]
    return bearer(created["token"])


def cache_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path, database_url=database_url, sign_in_cache_seconds=TTL_S, **overrides
    )


@pytest.fixture
async def client(tmp_path: Path, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(cache_settings(tmp_path, database_url)) as client:
        yield client


@pytest.fixture
async def two_apps(
    tmp_path: Path, database_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two API instances on one database and one Redis, each with its own cache."""
    redis_url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    settings = cache_settings(tmp_path, database_url, redis_url=redis_url)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(serve_app(settings))
        b = await stack.enter_async_context(serve_app(settings))
        yield a, b


async def test_a_cached_sign_in_runs_no_sql(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    ada = await register(client)
    me = await cached(client, bearer(ada["accessToken"]))
    assert me == {"id": ada["user"]["id"], "email": "ada@example.com", "role": "USER"}
    # A personal access token too, by its hash.
    created = await ok(client, CREATE_TOKEN, {"name": "ci"}, bearer(ada["accessToken"]))
    assert (await cached(client, bearer(created["createAccessToken"]["token"])))["id"] == me["id"]
    # Usage is read from the row, never from the cached copy.
    await update_user(engine, "ada@example.com", used_bytes=123)
    body = await ok(client, "{ me { usage { usedBytes } } }", {}, bearer(ada["accessToken"]))
    assert int(body["me"]["usage"]["usedBytes"]) == 123


@pytest.mark.parametrize("path", list(REVOKING))
async def test_the_next_request_after_a_revocation_is_refused(
    client: httpx.AsyncClient, engine: AsyncEngine, path: str
) -> None:
    case = Case(engine, client, await register(client))
    headers = await victim_headers(client, case, path)
    await cached(client, headers)
    await REVOKING[path](case)
    await refused(client, headers)


@pytest.mark.redis
@pytest.mark.parametrize("path", list(REVOKING))
async def test_another_instance_refuses_within_seconds_not_the_ttl(
    two_apps: tuple[httpx.AsyncClient, httpx.AsyncClient], engine: AsyncEngine, path: str
) -> None:
    a, b = two_apps
    case = Case(engine, a, await register(a))
    headers = await victim_headers(a, case, path)
    await cached(b, headers)
    await REVOKING[path](case)
    await refused_soon(b, headers)


async def test_a_role_change_and_an_address_change_show_at_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    case = Case(engine, client, await register(client))
    assert (await cached(client, case.headers))["role"] == "USER"
    admin = await _admin(case)
    await ok(client, SET_ROLE, {"id": case.user_id, "role": "ADMIN"}, admin)
    assert (await ok(client, ME, {}, case.headers))["me"]["role"] == "ADMIN"
    await ok(client, ADMIN_QUERY, {}, case.headers)  # and may do what admins do

    assert (await cached(client, case.headers))["email"] == "ada@example.com"
    token = await mailed_token(case, TokenPurpose.VERIFY, "ada@new.example")
    await ok(client, VERIFY, {"token": token}, {})
    assert (await ok(client, ME, {}, case.headers))["me"]["email"] == "ada@new.example"


@pytest.mark.redis
async def test_a_role_change_reaches_another_instance_within_seconds(
    two_apps: tuple[httpx.AsyncClient, httpx.AsyncClient], engine: AsyncEngine
) -> None:
    a, b = two_apps
    case = Case(engine, a, await register(a))
    await cached(b, case.headers)
    assert_error(await graphql(b, ADMIN_QUERY, headers=case.headers), "FORBIDDEN")
    admin = await _admin(case)
    await ok(a, SET_ROLE, {"id": case.user_id, "role": "ADMIN"}, admin)
    with anyio.fail_after(ANNOUNCED_S):
        for _ in range(1000):
            if "errors" not in await graphql(b, ADMIN_QUERY, headers=case.headers):
                break
            await anyio.sleep(0.05)
