"""Accounts over GraphQL: registration, sign-in, sessions, profile and password."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import make_settings, serve_app
from tests.support import (
    ME,
    PASSWORD,
    assert_error,
    bearer,
    expired,
    graphql,
    me,
    only_error,
    refresh,
    register,
    sign_in,
    stored_user,
    try_login,
    try_register,
    update_user,
)

pytestmark = pytest.mark.anyio

NEW_PASSWORD = "a brand new passphrase"
LOGOUT = "mutation Logout($token: String!) { logout(refreshToken: $token) }"
LOGOUT_EVERYWHERE = "mutation LogoutEverywhere { logoutEverywhere }"
UPDATE_PROFILE = (
    "mutation UpdateProfile($name: String!) { updateProfile(displayName: $name) { displayName } }"
)
CHANGE_PASSWORD = (
    "mutation ChangePassword($current: String!, $new: String!) "
    "{ changePassword(currentPassword: $current, newPassword: $new) }"
)
NODE = "query Node($id: ID!) { node(id: $id) { id } }"


async def _me_email(client: httpx.AsyncClient, token: str) -> str:
    """The signed-in user's email; fails unless ``token`` is accepted."""
    body = await me(client, token)
    assert "errors" not in body, body
    email: str = body["data"]["me"]["email"]
    return email


async def _assert_refused(client: httpx.AsyncClient, session: dict[str, Any]) -> None:
    """Neither the access token nor the refresh token of ``session`` works any more."""
    assert_error(await me(client, session["accessToken"]), "UNAUTHENTICATED")
    assert_error(await refresh(client, session["refreshToken"]), "UNAUTHENTICATED")


async def _change_password(
    client: httpx.AsyncClient, token: str, current: str, new: str
) -> dict[str, Any]:
    return await graphql(
        client, CHANGE_PASSWORD, {"current": current, "new": new}, headers=bearer(token)
    )


async def _update_profile(client: httpx.AsyncClient, token: str, name: str) -> dict[str, Any]:
    return await graphql(client, UPDATE_PROFILE, {"name": name}, headers=bearer(token))


# -- registration and sign-in -----------------------------------------------------


async def test_register_signs_the_new_user_in(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    ada = await register(client)
    assert ada["user"]["email"] == "ada@example.com"
    assert ada["user"]["displayName"] == "Ada"
    assert ada["user"]["role"] == "USER"
    assert ada["refreshToken"].startswith("dpr_")
    expires = datetime.fromisoformat(ada["accessTokenExpiresAt"])
    assert before + timedelta(minutes=14) < expires <= datetime.now(UTC) + timedelta(minutes=15)
    assert (await me(client, ada["accessToken"]))["data"]["me"] == ada["user"]


async def test_login_opens_a_session_of_its_own(client: httpx.AsyncClient) -> None:
    registered = await register(client)
    signed_in = await sign_in(client)
    assert signed_in["user"] == registered["user"]
    assert signed_in["refreshToken"] != registered["refreshToken"]
    assert await _me_email(client, signed_in["accessToken"]) == "ada@example.com"


@pytest.mark.parametrize("typed", ["ada@example.com", "ADA@EXAMPLE.COM", "  Ada@example.Com\t"])
async def test_email_is_trimmed_and_lowercased(
    client: httpx.AsyncClient, engine: AsyncEngine, typed: str
) -> None:
    ada = await register(client, email=" Ada@Example.COM ")
    assert ada["user"]["email"] == "ada@example.com"
    assert (await stored_user(engine, "ada@example.com")).email == "ada@example.com"
    assert (await sign_in(client, email=typed))["user"]["id"] == ada["user"]["id"]


async def test_a_taken_email_in_another_case_is_a_conflict(client: httpx.AsyncClient) -> None:
    await register(client)
    body = await try_register(client, email="ADA@example.com", display_name="Impostor")
    assert_error(body, "CONFLICT")
    assert body["data"] is None


@pytest.mark.parametrize(
    "email", ["", "ada", "ada@", "@example.com", "ada@@example.com", "ada @example.com"]
)
async def test_an_invalid_email_is_bad_user_input(client: httpx.AsyncClient, email: str) -> None:
    assert_error(await try_register(client, email=email), "BAD_USER_INPUT", field="email")


@pytest.mark.parametrize(
    "password",
    ["seven77", "password1", "qwertyuiop", "PassWord1", "x" * 1025],
    ids=["seven-characters", "common", "common-too", "common-in-another-case", "1025-characters"],
)
async def test_password_rules(client: httpx.AsyncClient, password: str) -> None:
    body = await try_register(client, password=password)
    assert_error(body, "BAD_USER_INPUT", field="password")


@pytest.mark.parametrize("length", [8, 1024])
async def test_password_length_limits_are_inclusive(client: httpx.AsyncClient, length: int) -> None:
    password = ("Zq7-" * 256)[:length]
    await register(client, password=password)
    session = await sign_in(client, password=password)
    assert await _me_email(client, session["accessToken"]) == "ada@example.com"


async def test_wrong_password_and_unknown_email_get_the_same_answer(
    client: httpx.AsyncClient,
) -> None:
    await register(client)
    wrong_password = await try_login(client, "ada@example.com", "not the password")
    unknown_email = await try_login(client, "nobody@example.com", PASSWORD)
    assert wrong_password == unknown_email
    assert_error(wrong_password, "UNAUTHENTICATED")
    assert wrong_password["data"] is None


async def test_a_deactivated_account_cannot_sign_in(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await register(client)
    await update_user(engine, "ada@example.com", is_active=False)
    assert_error(await try_login(client, "ada@example.com", PASSWORD), "UNAUTHENTICATED")
    await update_user(engine, "ada@example.com", is_active=True)
    await sign_in(client)


async def test_sign_in_upgrades_an_outdated_password_hash(
    client: httpx.AsyncClient, engine: AsyncEngine, tmp_path: Path, database_url: str
) -> None:
    await register(client)  # the suite's settings hash with 2 iterations
    assert ",t=2," in (await stored_user(engine, "ada@example.com")).password_hash
    stronger = make_settings(tmp_path, database_url=database_url, password_hash_iterations=3)
    async with serve_app(stronger) as upgraded:
        assert_error(
            await try_login(upgraded, "ada@example.com", "wrong!wrong!"), "UNAUTHENTICATED"
        )
        assert ",t=2," in (await stored_user(engine, "ada@example.com")).password_hash
        await sign_in(upgraded)
        password_hash = (await stored_user(engine, "ada@example.com")).password_hash
        assert password_hash.startswith("$argon2id$")
        assert ",t=3," in password_hash
        await sign_in(upgraded)  # the new hash verifies
    await sign_in(client)  # and so it does for the old settings


# -- me and other users ---------------------------------------------------------------


async def test_me_is_null_when_signed_out(client: httpx.AsyncClient) -> None:
    await register(client)
    assert await me(client) == {"data": {"me": None}}


async def test_an_expired_token_says_so(client: httpx.AsyncClient) -> None:
    token = expired((await register(client))["accessToken"])
    assert "expired" in only_error(await me(client, token))["message"]


@pytest.mark.parametrize("scheme", ["Basic", "Token", ""])
async def test_only_the_bearer_scheme_is_accepted(client: httpx.AsyncClient, scheme: str) -> None:
    token = (await register(client))["accessToken"]
    body = await graphql(client, ME, headers={"authorization": f"{scheme} {token}"})
    assert_error(body, "UNAUTHENTICATED")


async def test_another_users_id_is_null(client: httpx.AsyncClient) -> None:
    ada = await register(client)
    bob = await register(client, email="bob@example.com", display_name="Bob")
    body = await graphql(
        client, NODE, {"id": ada["user"]["id"]}, headers=bearer(bob["accessToken"])
    )
    assert body == {"data": {"node": None}}


# -- sessions ----------------------------------------------------------------------------


async def test_refresh_rotates_the_refresh_token(client: httpx.AsyncClient) -> None:
    ada = await register(client)
    body = await refresh(client, ada["refreshToken"])
    assert "errors" not in body, body
    rotated = body["data"]["refreshSession"]
    assert rotated["user"] == ada["user"]
    assert rotated["refreshToken"] != ada["refreshToken"]
    assert rotated["accessToken"] != ada["accessToken"]
    assert await _me_email(client, rotated["accessToken"]) == "ada@example.com"
    assert_error(await refresh(client, ada["refreshToken"]), "UNAUTHENTICATED")


async def test_an_unknown_refresh_token_is_refused(client: httpx.AsyncClient) -> None:
    await register(client)
    assert_error(await refresh(client, "dpr_" + "A" * 43), "UNAUTHENTICATED")


async def test_logout_ends_that_session_only(client: httpx.AsyncClient) -> None:
    ada = await register(client)
    other = await sign_in(client)
    body = await graphql(client, LOGOUT, {"token": ada["refreshToken"]})
    assert body == {"data": {"logout": True}}
    await _assert_refused(client, ada)
    assert await _me_email(client, other["accessToken"]) == "ada@example.com"


async def test_logout_with_an_unknown_token_is_false(client: httpx.AsyncClient) -> None:
    assert await graphql(client, LOGOUT, {"token": "dpr_nothing"}) == {"data": {"logout": False}}


async def test_logout_everywhere_ends_every_session(client: httpx.AsyncClient) -> None:
    sessions = [await register(client), await sign_in(client), await sign_in(client)]
    bob = await register(client, email="bob@example.com", display_name="Bob")
    body = await graphql(client, LOGOUT_EVERYWHERE, headers=bearer(sessions[1]["accessToken"]))
    assert body == {"data": {"logoutEverywhere": True}}
    for session in sessions:
        await _assert_refused(client, session)
    assert await _me_email(client, bob["accessToken"]) == "bob@example.com"
    await sign_in(client)  # a fresh sign-in still works


async def test_logout_everywhere_needs_a_signed_in_user(client: httpx.AsyncClient) -> None:
    assert_error(await graphql(client, LOGOUT_EVERYWHERE), "UNAUTHENTICATED")


# -- profile ---------------------------------------------------------------------------------


async def test_update_profile_changes_the_display_name(client: httpx.AsyncClient) -> None:
    token = (await register(client))["accessToken"]
    body = await _update_profile(client, token, "  Ada Lovelace ")
    assert body == {"data": {"updateProfile": {"displayName": "Ada Lovelace"}}}
    assert (await me(client, token))["data"]["me"]["displayName"] == "Ada Lovelace"


async def test_update_profile_accepts_100_characters(client: httpx.AsyncClient) -> None:
    token = (await register(client))["accessToken"]
    body = await _update_profile(client, token, "é" * 100)
    assert body == {"data": {"updateProfile": {"displayName": "é" * 100}}}


@pytest.mark.parametrize(
    "name",
    ["", "   ", "x" * 101, "Ada\nLovelace", "Ada\tLovelace", "Ada\x00", "Ada\x7f"],
    ids=["empty", "blank", "101-characters", "newline", "tab", "nul", "delete"],
)
async def test_update_profile_rejects_bad_names(client: httpx.AsyncClient, name: str) -> None:
    token = (await register(client))["accessToken"]
    body = await _update_profile(client, token, name)
    assert_error(body, "BAD_USER_INPUT", field="displayName")
    assert (await me(client, token))["data"]["me"]["displayName"] == "Ada"


async def test_update_profile_needs_a_signed_in_user(client: httpx.AsyncClient) -> None:
    body = await graphql(client, UPDATE_PROFILE, {"name": "Nobody"})
    assert_error(body, "UNAUTHENTICATED")


# -- password --------------------------------------------------------------------------------


async def test_change_password_ends_every_other_session(client: httpx.AsyncClient) -> None:
    current = await register(client)
    others = [await sign_in(client), await sign_in(client)]
    body = await _change_password(client, current["accessToken"], PASSWORD, NEW_PASSWORD)
    assert body == {"data": {"changePassword": True}}
    for other in others:
        await _assert_refused(client, other)
    assert await _me_email(client, current["accessToken"]) == "ada@example.com"
    assert "errors" not in await refresh(client, current["refreshToken"])
    assert_error(await try_login(client, "ada@example.com", PASSWORD), "UNAUTHENTICATED")
    await sign_in(client, password=NEW_PASSWORD)


async def test_change_password_with_a_wrong_current_password(client: httpx.AsyncClient) -> None:
    ada = await register(client)
    body = await _change_password(client, ada["accessToken"], "not the password", NEW_PASSWORD)
    assert_error(body, "UNAUTHENTICATED")
    await sign_in(client)
    assert_error(await try_login(client, "ada@example.com", NEW_PASSWORD), "UNAUTHENTICATED")


@pytest.mark.parametrize("new", ["short", "password1", "y" * 1025])
async def test_change_password_to_a_weak_one(client: httpx.AsyncClient, new: str) -> None:
    ada = await register(client)
    body = await _change_password(client, ada["accessToken"], PASSWORD, new)
    assert_error(body, "BAD_USER_INPUT", field="newPassword")
    await sign_in(client)


async def test_change_password_needs_a_signed_in_user(client: httpx.AsyncClient) -> None:
    body = await graphql(client, CHANGE_PASSWORD, {"current": PASSWORD, "new": NEW_PASSWORD})
    assert_error(body, "UNAUTHENTICATED")
