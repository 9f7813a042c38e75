"""Rate limits on costly actions (core.ratelimit.ActionLimiter), met through GraphQL over HTTP.

Each limit is set small here; every test client shares one address
(127.0.0.1), so per-address limits are met by two users. Aliases count:
each field occurrence is one action.
"""

from __future__ import annotations

import gc
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, serve_app
from tests.support import (
    CSRF_HEADER,
    PASSWORD,
    bearer,
    graphql,
    only_error,
    refresh,
    register,
    require_service,
    try_register,
    upload_file,
)

pytestmark = pytest.mark.anyio

WINDOW_S = 60
CREATE_UPLOAD = "mutation ($input: CreateUploadInput!) { createUpload(input: $input) { id } }"
CREATE_TOKEN = 'mutation { createAccessToken(name: "script") { token } }'
CHANGE_PASSWORD = (
    "mutation ($current: String!, $new: String!) "
    "{ changePassword(currentPassword: $current, newPassword: $new) }"
)
VERIFY = "startJob(input: {verify: {fileId: $file}}) { id }"
THREE_JOBS = f"mutation ($file: ID!) {{ a: {VERIFY} b: {VERIFY} c: {VERIFY} }}"
RETRY = "mutation ($id: ID!) { retryJob(id: $id) { id } }"
JOBS = "{ jobs { totalCount edges { node { id } } } }"
LOGOUT = "mutation ($token: String!) { logout(refreshToken: $token) }"


def _assert_limited(body: dict[str, Any]) -> None:
    error = only_error(body)
    assert error["extensions"]["code"] == "RATE_LIMITED", body
    assert 0 < error["extensions"]["retryAfter"] <= WINDOW_S, body


def _codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]


async def _user(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    payload = await register(client, email=f"{name}@example.com", display_name=name)
    return bearer(payload["accessToken"])


# -- register ---------------------------------------------------------------------------


async def test_registrations_are_limited_per_address(tmp_path: Path) -> None:
    async with serve_app(make_settings(tmp_path, register_limit_per_address="2/minute")) as client:
        await register(client, email="ada@example.com")
        await register(client, email="bob@example.com")
        _assert_limited(await try_register(client, email="cyd@example.com"))


# -- uploads ----------------------------------------------------------------------------


async def _two_aliased_uploads(client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    """One multipart request with two `uploadFile` fields (aliases)."""
    query = (
        "mutation ($f0: Upload!, $f1: Upload!) "
        '{ a: uploadFile(file: $f0, path: "a.txt") { id } '
        'b: uploadFile(file: $f1, path: "b.txt") { id } }'
    )
    operations = {"query": query, "variables": {"f0": None, "f1": None}}
    response = await client.post(
        "/graphql",
        data={
            "operations": json.dumps(operations),
            "map": json.dumps({"0": ["variables.f0"], "1": ["variables.f1"]}),
        },
        files={"0": ("a.txt", b"a", "text/plain"), "1": ("b.txt", b"b", "text/plain")},
        headers={**CSRF_HEADER, **headers},
    )
    return response.json()


async def test_uploads_are_limited_per_user_and_aliases_count(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, upload_limit_per_user="2/minute")
    async with serve_app(settings) as client:
        ada = await _user(client, "ada")
        body = await _two_aliased_uploads(client, ada)
        assert "errors" not in body, body
        # A direct-upload ticket is an upload too.
        ticket = {"input": {"path": "c.txt", "size": 1}}
        _assert_limited(await graphql(client, CREATE_UPLOAD, ticket, headers=ada))
        # Another user has uploads of their own.
        await upload_file(client, await _user(client, "bob"), "b.txt", b"b")


async def test_uploads_are_limited_per_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, upload_limit_per_address="2/minute")
    async with serve_app(settings) as client:
        ticket = {"input": {"path": "c.txt", "size": 1}}
        ada, bob = await _user(client, "ada"), await _user(client, "bob")
        assert "errors" not in await graphql(client, CREATE_UPLOAD, ticket, headers=ada)
        await upload_file(client, bob, "b.txt", b"b")
        _assert_limited(await graphql(client, CREATE_UPLOAD, ticket, headers=ada))


# -- jobs -------------------------------------------------------------------------------


async def test_started_jobs_are_limited_per_user_and_aliases_count(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, job_limit_per_user="2/minute")
    async with serve_app(settings) as client:
        ada = await _user(client, "ada")
        file = await upload_file(client, ada, "a.txt", b"a")
        body = await graphql(client, THREE_JOBS, {"file": file["id"]}, headers=ada)
        _assert_limited(body)
        assert only_error(body)["path"] == ["c"]
        started = await graphql(client, JOBS, headers=ada)
        assert started["data"]["jobs"]["totalCount"] == 2, started
        # retryJob starts an attempt too, and counts in the same window.
        job_id = started["data"]["jobs"]["edges"][0]["node"]["id"]
        _assert_limited(await graphql(client, RETRY, {"id": job_id}, headers=ada))


async def test_started_jobs_are_limited_per_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, job_limit_per_address="2/minute")
    async with serve_app(settings) as client:
        ada, bob = await _user(client, "ada"), await _user(client, "bob")
        file = await upload_file(client, ada, "a.txt", b"a")
        one = f"mutation ($file: ID!) {{ {VERIFY} }}"
        assert "errors" not in await graphql(client, one, {"file": file["id"]}, headers=ada)
        assert "errors" not in await graphql(client, one, {"file": file["id"]}, headers=ada)
        # Bob's job would be refused for his file just the same: the address is spent.
        _assert_limited(await graphql(client, one, {"file": file["id"]}, headers=bob))


# -- access tokens ----------------------------------------------------------------------


async def test_created_access_tokens_are_limited_per_user(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, access_token_limit_per_user="2/minute")
    async with serve_app(settings) as client:
        ada = await _user(client, "ada")
        for _ in range(2):
            assert "errors" not in await graphql(client, CREATE_TOKEN, headers=ada)
        _assert_limited(await graphql(client, CREATE_TOKEN, headers=ada))
        bob = await _user(client, "bob")
        assert "errors" not in await graphql(client, CREATE_TOKEN, headers=bob)


async def test_created_access_tokens_are_limited_per_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, access_token_limit_per_address="2/minute")
    async with serve_app(settings) as client:
        ada, bob = await _user(client, "ada"), await _user(client, "bob")
        assert "errors" not in await graphql(client, CREATE_TOKEN, headers=ada)
        assert "errors" not in await graphql(client, CREATE_TOKEN, headers=bob)
        _assert_limited(await graphql(client, CREATE_TOKEN, headers=ada))


# -- refused refreshes ------------------------------------------------------------------


async def test_refused_refreshes_are_limited_per_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, refresh_failure_limit_per_address="3/minute")
    async with serve_app(settings) as client:
        ada = await register(client)
        # Refreshes that succeed do not count.
        token = ada["refreshToken"]
        for _ in range(4):
            body = await refresh(client, token)
            assert "errors" not in body, body
            token = body["data"]["refreshSession"]["refreshToken"]
        for _ in range(3):
            assert _codes(await refresh(client, f"dpr_guess-{uuid.uuid4().hex}")) == [
                "UNAUTHENTICATED"
            ]
        # Guessing is over for this address, even with the right token.
        _assert_limited(await refresh(client, token))


async def test_logouts_with_unknown_refresh_tokens_count_as_guesses(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, refresh_failure_limit_per_address="2/minute")
    async with serve_app(settings) as client:
        ada = await register(client)
        for _ in range(2):
            body = await graphql(client, LOGOUT, {"token": f"dpr_guess-{uuid.uuid4().hex}"})
            assert body == {"data": {"logout": False}}
        _assert_limited(await graphql(client, LOGOUT, {"token": ada["refreshToken"]}))


# -- wrong current passwords ------------------------------------------------------------


async def _change(client: httpx.AsyncClient, headers: dict[str, str], current: str) -> Any:
    variables = {"current": current, "new": "a brand new passphrase"}
    return await graphql(client, CHANGE_PASSWORD, variables, headers=headers)


async def test_wrong_current_passwords_are_limited_per_user(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, password_failure_limit_per_user="2/minute")
    async with serve_app(settings) as client:
        ada = await _user(client, "ada")
        for _ in range(2):
            assert _codes(await _change(client, ada, "not it")) == ["UNAUTHENTICATED"]
        # Refused before the hash is even computed, the right password included.
        _assert_limited(await _change(client, ada, PASSWORD))
        bob = await _user(client, "bob")
        assert (await _change(client, bob, PASSWORD))["data"] == {"changePassword": True}


async def test_wrong_current_passwords_are_limited_per_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, password_failure_limit_per_address="2/minute")
    async with serve_app(settings) as client:
        ada, bob = await _user(client, "ada"), await _user(client, "bob")
        assert _codes(await _change(client, ada, "not it")) == ["UNAUTHENTICATED"]
        assert _codes(await _change(client, bob, "not it")) == ["UNAUTHENTICATED"]
        _assert_limited(await _change(client, bob, PASSWORD))


async def test_a_right_current_password_does_not_count(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, password_failure_limit_per_user="1/minute")
    async with serve_app(settings) as client:
        ada = await _user(client, "ada")
        assert (await _change(client, ada, PASSWORD))["data"] == {"changePassword": True}
        variables = {"current": "a brand new passphrase", "new": PASSWORD}
        body = await graphql(client, CHANGE_PASSWORD, variables, headers=ada)
        assert body["data"] == {"changePassword": True}, body


# -- shared by replicas through Redis ---------------------------------------------------


async def test_limits_are_shared_by_replicas_through_redis(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        redis_url=require_service("DEPOT_TEST_REDIS_URL", "Redis"),
        upload_limit_per_user="2/minute",
    )
    ticket = {"input": {"path": "c.txt", "size": 1}}
    async with serve_app(settings) as client:
        ada = await _user(client, f"ada-{uuid.uuid4().hex}")
        for _ in range(2):
            assert "errors" not in await graphql(client, CREATE_UPLOAD, ticket, headers=ada)
    # A second replica on the same Redis counts on from there.
    async with serve_app(settings) as replica:
        _assert_limited(await graphql(replica, CREATE_UPLOAD, ticket, headers=ada))
    # A Redis connection the apps left open warns now, in this test, not in a later one.
    gc.collect()
