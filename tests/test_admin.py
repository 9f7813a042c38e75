"""Admins: made with ``depot create-admin``, then listing and changing every account."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner, Result

from api.cli import main
from core.settings import Settings
from schema.ids import encode_id
from tests.relay import all_pages, nodes_of
from tests.support import (
    PASSWORD,
    STRONG_SECRET,
    assert_error,
    bearer,
    graphql,
    me,
    refresh,
    register,
    sign_in,
    try_login,
)

pytestmark = pytest.mark.anyio

ADMIN_EMAIL = "root@example.com"
ADMIN_PASSWORD = "admin passphrase for tests"

USER = "id email role isActive usage { quotaBytes }"
USERS = f"""
query Users($first: Int, $after: String, $filter: UserFilter) {{
  users(first: $first, after: $after, filter: $filter) {{
    edges {{ cursor node {{ {USER} }} }}
    pageInfo {{ hasNextPage endCursor }}
    totalCount
  }}
}}"""
SET_ROLE = (
    f"mutation SetRole($id: ID!, $role: Role!) {{ setUserRole(id: $id, role: $role) {{ {USER} }} }}"
)
SET_ACTIVE = (
    f"mutation SetActive($id: ID!, $active: Boolean!) "
    f"{{ setUserActive(id: $id, active: $active) {{ {USER} }} }}"
)
SET_QUOTA = (
    f"mutation SetQuota($id: ID!, $quota: BigInt!) "
    f"{{ setUserQuota(id: $id, quotaBytes: $quota) {{ {USER} }} }}"
)
NODE = "query Node($id: ID!) { node(id: $id) { id ... on User { email } } }"
QUOTA = "query Quota { me { usage { quotaBytes } } }"
CREATE_TOKEN = 'mutation CreateToken { createAccessToken(name: "script") { token } }'

# Each admin mutation with the variables it needs besides `id`.
MUTATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "setUserRole": (SET_ROLE, {"role": "ADMIN"}),
    "setUserActive": (SET_ACTIVE, {"active": True}),
    "setUserQuota": (SET_QUOTA, {"quota": 1024}),
}
ADMIN_ONLY: dict[str, tuple[str, dict[str, Any]]] = {"users": (USERS, {}), **MUTATIONS}


# -- the CLI ----------------------------------------------------------------------


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for ``depot`` to use the same database as the app under test."""
    return {
        "DEPOT_DATABASE_URL": settings.database_url,
        "DEPOT_VAR_DIR": str(settings.var_dir),
        "DEPOT_SECRET_KEY": STRONG_SECRET,
        "DEPOT_PASSWORD_HASH_MEMORY_KIB": str(settings.password_hash_memory_kib),
        "DEPOT_PASSWORD_HASH_ITERATIONS": str(settings.password_hash_iterations),
        **extra,
    }


async def create_admin(
    settings: Settings, email: str, *, password: str | None = ADMIN_PASSWORD, input: str = ""
) -> Result:
    """``depot create-admin --email EMAIL``, with DEPOT_ADMIN_PASSWORD unless ``password`` is None.

    The CLI calls ``asyncio.run`` itself, so it runs in a worker thread.
    """
    env = cli_env(settings, **({"DEPOT_ADMIN_PASSWORD": password} if password else {}))
    runner = CliRunner()
    return await anyio.to_thread.run_sync(
        lambda: runner.invoke(
            main, ["create-admin", "--email", email], env=env, input=input, catch_exceptions=False
        )
    )


@pytest.fixture
async def admin(client: httpx.AsyncClient, settings: Settings) -> dict[str, str]:
    """Headers of an admin made by the CLI and signed in through GraphQL."""
    result = await create_admin(settings, ADMIN_EMAIL)
    assert result.exit_code == 0, result.output
    return bearer((await sign_in(client, ADMIN_EMAIL, ADMIN_PASSWORD))["accessToken"])


# -- helpers ----------------------------------------------------------------------


async def new_user(client: httpx.AsyncClient, email: str) -> dict[str, Any]:
    """Register ``email``; return its ``AuthPayload`` (tokens and ``user { id }``)."""
    return await register(client, email=email, display_name=email.partition("@")[0])


async def ok(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    headers: dict[str, str],
) -> dict[str, Any]:
    """The ``data`` of an operation that must succeed."""
    body = await graphql(client, query, variables, headers=headers)
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def quota_of(client: httpx.AsyncClient, user: dict[str, Any]) -> int:
    """The quota a user sees for themselves (``user`` is their ``AuthPayload``)."""
    data = await ok(client, QUOTA, headers=bearer(user["accessToken"]))
    quota: int = data["me"]["usage"]["quotaBytes"]
    return quota


async def emails_listed(
    client: httpx.AsyncClient, admin: dict[str, str], filter: dict[str, Any] | None = None
) -> list[str]:
    pages = await all_pages(
        client, USERS, "users", first=3, headers=admin, variables={"filter": filter}
    )
    return [node["email"] for node in nodes_of(pages)]


# -- listing users ----------------------------------------------------------------


async def test_users_page_oldest_first_without_gaps_or_duplicates(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    others = [f"user{i}@example.com" for i in range(6)]
    for email in others:
        await new_user(client, email)
    pages = await all_pages(client, USERS, "users", first=3, headers=admin)
    assert [len(page["edges"]) for page in pages] == [3, 3, 1]
    assert [page["pageInfo"]["hasNextPage"] for page in pages] == [True, True, False]
    assert [node["email"] for node in nodes_of(pages)] == [ADMIN_EMAIL, *others]


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"emailContains": "ADA@"}, ["ada@example.com"]),
        ({"emailContains": "under_"}, ["under_score@example.com"]),
        ({"emailContains": "r%c"}, ["per%cent@example.com"]),
        ({"emailContains": "nobody"}, []),
        ({"role": "ADMIN"}, [ADMIN_EMAIL]),
        ({"isActive": False}, ["gone@example.com"]),
        (
            {"emailContains": "score", "role": "USER", "isActive": True},
            ["under_score@example.com", "underxscore@example.com"],
        ),
    ],
)
async def test_users_filter(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    filter: dict[str, Any],
    expected: list[str],
) -> None:
    for email in (
        "ada@example.com",
        "under_score@example.com",
        "underxscore@example.com",
        "per%cent@example.com",
        "percent@example.com",
    ):
        await new_user(client, email)
    gone = await new_user(client, "gone@example.com")
    await ok(client, SET_ACTIVE, {"id": gone["user"]["id"], "active": False}, headers=admin)

    assert await emails_listed(client, admin, filter) == expected


async def test_an_overlong_email_search_is_bad_user_input(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    body = await graphql(client, USERS, {"filter": {"emailContains": "a%" * 25_000}}, headers=admin)
    assert_error(body, "BAD_USER_INPUT", field="filter.emailContains")


# -- changing users ---------------------------------------------------------------


async def test_set_user_role_promotes_and_demotes_at_once(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    ada = await new_user(client, "ada@example.com")
    ada_id, as_ada = ada["user"]["id"], bearer(ada["accessToken"])
    assert_error(await graphql(client, USERS, headers=as_ada), "FORBIDDEN")

    promoted = await ok(client, SET_ROLE, {"id": ada_id, "role": "ADMIN"}, headers=admin)
    assert promoted["setUserRole"]["role"] == "ADMIN"
    assert ADMIN_EMAIL in await emails_listed(client, as_ada)

    demoted = await ok(client, SET_ROLE, {"id": ada_id, "role": "USER"}, headers=admin)
    assert demoted["setUserRole"]["role"] == "USER"
    assert_error(await graphql(client, USERS, headers=as_ada), "FORBIDDEN")


async def test_deactivated_user_is_locked_out_until_reactivated(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    ada = await new_user(client, "ada@example.com")
    ada_id, as_ada = ada["user"]["id"], bearer(ada["accessToken"])
    personal = (await ok(client, CREATE_TOKEN, headers=as_ada))["createAccessToken"]["token"]

    result = await ok(client, SET_ACTIVE, {"id": ada_id, "active": False}, headers=admin)
    assert result["setUserActive"]["isActive"] is False
    for token in (ada["accessToken"], personal):
        assert_error(await me(client, token), "UNAUTHENTICATED")
    assert_error(await refresh(client, ada["refreshToken"]), "UNAUTHENTICATED")
    locked = assert_error(await try_login(client, "ada@example.com", PASSWORD), "UNAUTHENTICATED")
    assert "deactivated" in locked["message"]

    await ok(client, SET_ACTIVE, {"id": ada_id, "active": True}, headers=admin)
    again = await sign_in(client, "ada@example.com", PASSWORD)
    assert (await me(client, again["accessToken"]))["data"]["me"]["email"] == "ada@example.com"


@pytest.mark.parametrize("quota", [0, 5 * 2**30, 2**53 - 1])
async def test_set_user_quota_takes_big_integers(
    client: httpx.AsyncClient, admin: dict[str, str], quota: int
) -> None:
    ada = await new_user(client, "ada@example.com")
    changed = await ok(client, SET_QUOTA, {"id": ada["user"]["id"], "quota": quota}, headers=admin)
    assert changed["setUserQuota"]["usage"]["quotaBytes"] == quota
    assert await quota_of(client, ada) == quota


async def test_negative_quota_is_bad_user_input(
    client: httpx.AsyncClient, admin: dict[str, str], settings: Settings
) -> None:
    ada = await new_user(client, "ada@example.com")
    body = await graphql(client, SET_QUOTA, {"id": ada["user"]["id"], "quota": -1}, headers=admin)
    assert_error(body, "BAD_USER_INPUT", field="quotaBytes")
    assert await quota_of(client, ada) == settings.default_quota_bytes


@pytest.mark.parametrize(
    ("query", "variables"),
    [(SET_ROLE, {"role": "USER"}), (SET_ACTIVE, {"active": False})],
    ids=["demote", "deactivate"],
)
async def test_admin_cannot_demote_or_deactivate_themselves(
    client: httpx.AsyncClient, admin: dict[str, str], query: str, variables: dict[str, Any]
) -> None:
    own_id = (await ok(client, "query Me { me { id } }", headers=admin))["me"]["id"]
    body = await graphql(client, query, {"id": own_id, **variables}, headers=admin)
    assert_error(body, "BAD_USER_INPUT", field="id")
    assert await emails_listed(client, admin, {"role": "ADMIN", "isActive": True}) == [ADMIN_EMAIL]


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("not-an-id", "BAD_USER_INPUT"),
        (encode_id("AccessToken", uuid.uuid4()), "BAD_USER_INPUT"),
        (encode_id("User", uuid.uuid4()), "NOT_FOUND"),
    ],
    ids=["malformed", "wrong-type", "unknown-user"],
)
async def test_user_ids_are_checked(
    client: httpx.AsyncClient, admin: dict[str, str], mutation: str, target: str, code: str
) -> None:
    query, variables = MUTATIONS[mutation]
    body = await graphql(client, query, {"id": target, **variables}, headers=admin)
    assert body["data"] is None
    expected = {"field": "id"} if code == "BAD_USER_INPUT" else {}
    assert assert_error(body, code, **expected)["path"] == [mutation]


async def test_admins_see_other_users_through_node_and_users_do_not(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    ada = await new_user(client, "ada@example.com")
    bob = await new_user(client, "bob@example.com")
    ada_id = ada["user"]["id"]

    async def node_as(headers: dict[str, str]) -> Any:
        return (await ok(client, NODE, {"id": ada_id}, headers=headers))["node"]

    expected = {"id": ada_id, "email": "ada@example.com"}
    assert await node_as(admin) == expected
    assert await node_as(bearer(ada["accessToken"])) == expected
    assert await node_as(bearer(bob["accessToken"])) is None
    assert await node_as({}) is None


@pytest.mark.parametrize("operation", ADMIN_ONLY)
async def test_admin_operations_need_an_admin(client: httpx.AsyncClient, operation: str) -> None:
    ada = await new_user(client, "ada@example.com")
    query, extra = ADMIN_ONLY[operation]
    variables = {"id": ada["user"]["id"], **extra}  # `users` ignores the id
    as_user = await graphql(client, query, variables, headers=bearer(ada["accessToken"]))
    assert_error(as_user, "FORBIDDEN")
    assert_error(await graphql(client, query, variables), "UNAUTHENTICATED")
    assert (await me(client, ada["accessToken"]))["data"]["me"]["role"] == "USER"


# -- depot create-admin -----------------------------------------------------------


async def test_create_admin_prompts_twice_for_the_password(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    typed = "typed at the prompt twice"
    result = await create_admin(settings, "boss@example.com", password=None, input=f"{typed}\n" * 2)
    assert result.exit_code == 0, result.output
    assert "Password: " in result.output
    assert "Repeat for confirmation: " in result.output
    assert typed not in result.output
    assert result.stdout.strip().endswith("Admin boss@example.com created.")

    signed_in = await sign_in(client, "boss@example.com", typed)
    assert signed_in["user"]["role"] == "ADMIN"
    assert await emails_listed(client, bearer(signed_in["accessToken"])) == ["boss@example.com"]


async def test_create_admin_promotes_an_existing_user_keeping_the_password(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    await new_user(client, "ada@example.com")
    result = await create_admin(settings, "Ada@Example.com", password="ignored for existing users")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ada@example.com is now an admin (password unchanged)."

    assert (await sign_in(client, "ada@example.com", PASSWORD))["user"]["role"] == "ADMIN"
    wrong = await try_login(client, "ada@example.com", "ignored for existing users")
    assert_error(wrong, "UNAUTHENTICATED")


@pytest.mark.parametrize("weak", ["short", "password123"])
async def test_create_admin_refuses_a_weak_password(
    client: httpx.AsyncClient, settings: Settings, weak: str
) -> None:
    result = await create_admin(settings, "boss@example.com", password=weak)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("✗ ")
    assert "assword" in line
    assert_error(await try_login(client, "boss@example.com", weak), "UNAUTHENTICATED")


def test_help_lists_create_admin() -> None:
    result = CliRunner().invoke(main, ["--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "  create-admin " in result.stdout
