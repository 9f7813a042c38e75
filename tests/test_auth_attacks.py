"""Attacks on sign-in: forged tokens, stolen refresh tokens, brute force, odd input.

Forged access tokens start from a real one and change one thing, so each is
refused for that one reason: a token re-signed with nothing changed is
accepted (the first test).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hmac
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from core.settings import Settings
from tests.conftest import make_settings, serve_app, started
from tests.support import (
    PASSWORD,
    STRONG_SECRET,
    assert_error,
    bearer,
    expired,
    graphql,
    me,
    only_error,
    refresh,
    register,
    require_service,
    resigned,
    sign_in,
    stored_user,
    try_login,
    try_register,
    update_user,
)

pytestmark = pytest.mark.anyio

OTHER_SECRET = "another-secret-9876543210-zyxwvutsrqponmlkjihgfedcba"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _handmade(token: str, alg: str, digest: str | None) -> str:
    """``token``'s claims under a header claiming ``alg``, made by hand.

    Signed with HMAC-``digest`` and the right secret; unsigned without ``digest``.
    """
    claims = jwt.decode(token, options={"verify_signature": False})
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    signature = b""
    if digest is not None:
        signature = hmac.new(STRONG_SECRET.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


async def _user_id(client: httpx.AsyncClient, token: str) -> str:
    body = await me(client, token)
    assert "errors" not in body, body
    user_id: str = body["data"]["me"]["id"]
    return user_id


# -- forged access tokens --------------------------------------------------------------


async def test_a_resigned_token_with_unchanged_claims_is_accepted(
    client: httpx.AsyncClient,
) -> None:
    ada = await register(client)
    assert await _user_id(client, resigned(ada["accessToken"])) == ada["user"]["id"]
    # The hand-made signature is right too: only a refused `alg` can fail the tests below.
    handmade = _handmade(ada["accessToken"], "HS256", "sha256")
    assert await _user_id(client, handmade) == ada["user"]["id"]


def _in(seconds: int) -> int:
    return int(time.time()) + seconds


FORGERIES: dict[str, Callable[[str], str]] = {
    "garbage": lambda token: "garbage",
    "truncated": lambda token: token[:-2],
    "alg-none": lambda token: _handmade(token, "none", None),
    "alg-None": lambda token: _handmade(token, "None", None),
    "other-secret": lambda token: resigned(token, key=OTHER_SECRET),
    "wrong-audience": lambda token: resigned(token, aud="someone-else"),
    "audience-list": lambda token: resigned(token, aud=["someone-else"]),
    "wrong-issuer": lambda token: resigned(token, iss="https://evil.example.net/"),
    "expired": lambda token: expired(token),
    "expired-beyond-leeway": lambda token: resigned(token, exp=_in(-15)),
    "issued-in-the-future": lambda token: resigned(token, iat=_in(3600), exp=_in(4500)),
    "no-sid": lambda token: resigned(token, sid=None),
    "no-jti": lambda token: resigned(token, jti=None),
    "no-exp": lambda token: resigned(token, exp=None),
    "no-sub": lambda token: resigned(token, sub=None),
    "sub-not-a-uuid": lambda token: resigned(token, sub="admin"),
    "sid-of-no-session": lambda token: resigned(token, sid=str(uuid.uuid4())),
    "hs512": lambda token: _handmade(token, "HS512", "sha512"),
    "rs256-signed-with-hmac": lambda token: _handmade(token, "RS256", "sha256"),
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
async def test_a_forged_access_token_is_refused(
    client: httpx.AsyncClient, forge: Callable[[str], str]
) -> None:
    token = forge((await register(client))["accessToken"])
    body = await me(client, token)
    assert_error(body, "UNAUTHENTICATED")
    assert body["data"] == {"me": None}


async def test_a_token_within_the_clock_leeway_is_accepted(client: httpx.AsyncClient) -> None:
    ada = await register(client)
    token = resigned(ada["accessToken"], exp=_in(-3))
    assert await _user_id(client, token) == ada["user"]["id"]


# -- stolen refresh tokens -------------------------------------------------------------


async def test_a_replayed_refresh_token_revokes_the_whole_session(
    client: httpx.AsyncClient,
) -> None:
    stolen = await register(client)
    rotated = (await refresh(client, stolen["refreshToken"]))["data"]["refreshSession"]
    other_session = await sign_in(client)

    assert_error(await refresh(client, stolen["refreshToken"]), "UNAUTHENTICATED")
    assert_error(await refresh(client, rotated["refreshToken"]), "UNAUTHENTICATED")
    for token in (rotated["accessToken"], stolen["accessToken"]):
        assert_error(await me(client, token), "UNAUTHENTICATED")
    # Only that family ends: the user's other session is untouched.
    assert await _user_id(client, other_session["accessToken"]) == stolen["user"]["id"]


RACERS = 4


async def test_concurrent_refreshes_with_one_token_succeed_at_most_once(
    client: httpx.AsyncClient,
) -> None:
    token = (await register(client))["refreshToken"]
    bodies: list[dict[str, Any]] = []

    async def race() -> None:
        bodies.append(await refresh(client, token))

    async with anyio.create_task_group() as group:
        for _ in range(RACERS):
            group.start_soon(race)
    won = [body for body in bodies if "errors" not in body]
    assert len(won) <= 1, bodies
    for body in bodies:
        if body not in won:
            assert_error(body, "UNAUTHENTICATED")


async def test_deactivation_ends_live_tokens_at_once(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    ada = await register(client)
    await _user_id(client, ada["accessToken"])
    await update_user(engine, "ada@example.com", is_active=False)
    assert_error(await me(client, ada["accessToken"]), "UNAUTHENTICATED")
    assert_error(await refresh(client, ada["refreshToken"]), "UNAUTHENTICATED")


# -- admin fields ----------------------------------------------------------------------

ADMIN_ONLY = {
    "users": "query Users { users { totalCount edges { node { email } } } }",
    "setUserRole": "mutation Op($id: ID!) { setUserRole(id: $id, role: ADMIN) { role } }",
    "setUserActive": "mutation Op($id: ID!) { setUserActive(id: $id, active: false) { id } }",
    "setUserQuota": "mutation Op($id: ID!) { setUserQuota(id: $id, quotaBytes: 1) { id } }",
}


async def _call_admin_field(
    client: httpx.AsyncClient, field: str, user_id: str, token: str | None
) -> dict[str, Any]:
    query = ADMIN_ONLY[field]
    variables = {"id": user_id} if "$id" in query else None
    return await graphql(client, query, variables, headers=bearer(token) if token else None)


@pytest.mark.parametrize("field", ADMIN_ONLY)
async def test_admin_fields_are_forbidden_to_users(
    client: httpx.AsyncClient, engine: AsyncEngine, field: str
) -> None:
    ada = await register(client)
    body = await _call_admin_field(client, field, ada["user"]["id"], ada["accessToken"])
    assert_error(body, "FORBIDDEN")
    assert body["data"] is None
    user = await stored_user(engine, "ada@example.com")
    assert (user.role.value, user.is_active, user.quota_bytes) == ("user", True, 10 * 1024**3)


@pytest.mark.parametrize("field", ADMIN_ONLY)
async def test_admin_fields_need_a_signed_in_user(client: httpx.AsyncClient, field: str) -> None:
    ada = await register(client)
    body = await _call_admin_field(client, field, ada["user"]["id"], None)
    assert_error(body, "UNAUTHENTICATED")


# -- odd input -------------------------------------------------------------------------


async def test_sql_in_an_email_is_invalid_input_and_harmless(client: httpx.AsyncClient) -> None:
    injection = "'; DROP TABLE user; --@example.com"
    assert_error(await try_register(client, email=injection), "BAD_USER_INPUT", field="email")
    assert_error(await try_login(client, injection, PASSWORD), "UNAUTHENTICATED")
    ada = await register(client)
    assert await _user_id(client, ada["accessToken"]) == ada["user"]["id"]


async def test_quotes_in_emails_and_names_are_stored_literally(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    email, name = "o'brien+x@example.com", 'Robert\'); DROP TABLE "user"; --'
    registered = await register(client, email=email, display_name=name)
    assert (registered["user"]["email"], registered["user"]["displayName"]) == (email, name)
    stored = await stored_user(engine, email)
    assert (stored.email, stored.display_name) == (email, name)
    assert (await sign_in(client, email=email))["user"] == registered["user"]


@pytest.mark.parametrize(
    "typed",
    [
        "ada@bücher.example",
        "ADA@BÜCHER.EXAMPLE",
        "ada@xn--bcher-kva.example",
        "ada@bu\u0308cher.example",
    ],
    ids=["unicode", "unicode-upper-case", "punycode", "decomposed"],
)
async def test_an_internationalised_domain(client: httpx.AsyncClient, typed: str) -> None:
    registered = await register(client, email=typed)
    assert registered["user"]["email"] == "ada@bücher.example"
    # Whatever form the address was registered in signs in, and takes it.
    await sign_in(client, email=typed)
    await sign_in(client, email="ada@bücher.example")
    assert_error(await try_register(client, email="ada@xn--bcher-kva.example"), "CONFLICT")


async def test_a_unicode_display_name_is_stored_as_given_in_nfc(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    decomposed, composed = "Zoe\u0308 🦄 שלום عالم", "Zoë 🦄 שלום عالم"
    registered = await register(client, display_name=decomposed)
    assert registered["user"]["displayName"] == composed
    assert (await stored_user(engine, "ada@example.com")).display_name == composed


@pytest.mark.parametrize(
    "invisible",
    ["\u202e", "\x00", "\u2066", "\u200f", "\u061c", "\x85"],
    ids=["RLO", "NUL", "LRI", "RLM", "ALM", "NEL"],
)
async def test_invisible_controls_in_a_display_name_are_refused(
    client: httpx.AsyncClient, invisible: str
) -> None:
    body = await try_register(client, display_name=f"Ada{invisible}gnp.exe")
    assert_error(body, "BAD_USER_INPUT", field="displayName")


HUGE_PASSWORD = "Zq7-" * 2500


async def test_a_huge_password_is_refused_at_registration(client: httpx.AsyncClient) -> None:
    body = await try_register(client, password=HUGE_PASSWORD)
    assert_error(body, "BAD_USER_INPUT", field="password")


async def test_a_huge_password_fails_sign_in_quickly(client: httpx.AsyncClient) -> None:
    # The first 1,024 characters are the real password: no silent truncation.
    await register(client, password=HUGE_PASSWORD[:1024])
    started = time.perf_counter()
    body = await try_login(client, "ada@example.com", HUGE_PASSWORD)
    assert time.perf_counter() - started < 2
    assert_error(body, "UNAUTHENTICATED")
    await sign_in(client, password=HUGE_PASSWORD[:1024])


async def test_a_nul_in_a_login_email_is_a_plain_refusal(client: httpx.AsyncClient) -> None:
    await register(client)
    assert_error(await try_login(client, "ada@example.com\x00", PASSWORD), "UNAUTHENTICATED")


# -- brute force -----------------------------------------------------------------------


async def _fail_logins(client: httpx.AsyncClient, emails: list[str]) -> None:
    for email in emails:
        assert_error(await try_login(client, email, "not the password"), "UNAUTHENTICATED")


def _assert_rate_limited(body: dict[str, Any], window_s: int) -> None:
    error = only_error(body)
    assert error["extensions"]["code"] == "RATE_LIMITED", body
    assert 0 < error["extensions"]["retryAfter"] <= window_s


async def _assert_account_limit(client: httpx.AsyncClient, ada: str, bob: str) -> None:
    """With 3 failures allowed per account and address, this address may no longer try
    ``ada``, and may still try ``bob``."""
    await register(client, email=ada)
    await register(client, email=bob, display_name="Bob")
    # Three failures, one in another case: it is the same account.
    await _fail_logins(client, [ada, ada, f"  {ada.upper()}"])
    _assert_rate_limited(await try_login(client, ada, PASSWORD), window_s=60)
    await sign_in(client, email=bob)


async def test_failed_logins_are_limited_per_account(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_limit_per_account_and_address="3/minute")
    async with serve_app(settings) as client:
        await _assert_account_limit(client, "ada@example.com", "bob@example.com")


async def test_failed_logins_are_limited_per_account_in_redis(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        redis_url=require_service("DEPOT_TEST_REDIS_URL", "Redis"),
        login_limit_per_account_and_address="3/minute",
        # Redis outlives the test, and every test client has one address: a limit
        # of its own keeps this test's failures out of every other counter.
        login_limit_per_address="1000003/hour",
    )
    run = uuid.uuid4().hex
    async with serve_app(settings) as client:
        await _assert_account_limit(client, f"ada-{run}@example.com", f"bob-{run}@example.com")
    # A second replica sharing the Redis store sees the same lockout.
    async with serve_app(settings) as replica:
        body = await try_login(replica, f"ada-{run}@example.com", PASSWORD)
        _assert_rate_limited(body, window_s=60)
    # A Redis connection the apps left open warns now, in this test, not in a later one.
    gc.collect()


async def test_failed_logins_are_limited_per_address(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, login_limit_per_address="3/minute")
    async with serve_app(settings) as client:
        await register(client)
        await _fail_logins(client, [f"nobody-{n}@example.com" for n in range(3)])
        _assert_rate_limited(await try_login(client, "ada@example.com", PASSWORD), window_s=60)


@asynccontextmanager
async def _from_addresses(
    settings: Settings, *addresses: str
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One started app, and a client for it from each of ``addresses``."""
    async with started(create_app(settings)) as app, contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app, client=(address, 40000)),
                    base_url="http://depot.test",
                )
            )
            for address in addresses
        ]
        yield clients


async def test_failures_from_elsewhere_slow_the_owner_down_but_never_lock_them_out(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path,
        login_limit_per_account_and_address="3/minute",
        login_slowdown_per_account="2/minute",
        login_max_delay_seconds=0.5,
    )
    async with _from_addresses(settings, "198.51.100.7", "203.0.113.9") as (attacker, owner):
        await register(owner)
        await _fail_logins(attacker, ["ada@example.com"] * 3)
        # The guessing address is done with this account, even with the right password ...
        _assert_rate_limited(await try_login(attacker, "ada@example.com", PASSWORD), 60)
        # ... while the owner, elsewhere, signs in: slowed down (0.25 s, doubled once).
        started_at = time.perf_counter()
        await sign_in(owner)
        assert time.perf_counter() - started_at >= 0.5
        # A wrong password of the owner's own is no lockout either.
        assert_error(await try_login(owner, "ada@example.com", "typo"), "UNAUTHENTICATED")
        await sign_in(owner)


SAMPLES = 5


async def _median_logins_s(
    client: httpx.AsyncClient, attempts: list[tuple[str, str]]
) -> list[float]:
    """Each failing ``(email, password)``'s median time, the attempts interleaved.

    One of each per round, the order flipped every round, so a burst of load
    from the rest of the suite weighs on every side alike.
    """
    durations: list[list[float]] = [[] for _ in attempts]
    for round_ in range(SAMPLES):
        order = list(enumerate(attempts))
        for index, (email, password) in order if round_ % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            assert_error(await try_login(client, email, password), "UNAUTHENTICATED")
            durations[index].append(time.perf_counter() - started)
    return [statistics.median(times) for times in durations]


async def test_unknown_email_takes_as_long_as_a_wrong_password(
    client: httpx.AsyncClient,
) -> None:
    await register(client)
    await _fail_logins(client, ["nobody@example.com", "ada@example.com"])  # warm up
    unknown, wrong = await _median_logins_s(
        client, [("nobody@example.com", PASSWORD), ("ada@example.com", "not the password")]
    )
    assert 0.5 < unknown / wrong < 2, (unknown, wrong)


# -- credential fields once per operation ------------------------------------------


def _aliased(field: str, arguments: str, selection: str, count: int) -> str:
    return (
        "mutation { "
        + " ".join(
            f"a{n}: {field}({arguments.replace('<n>', str(n))}) {selection}" for n in range(count)
        )
        + " }"
    )


async def _post(client: httpx.AsyncClient, document: str) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": document},
        headers={"accept": "application/graphql-response+json"},
    )


async def test_aliased_logins_are_refused_before_any_password_is_hashed(
    client: httpx.AsyncClient,
) -> None:
    await register(client, "ada@example.com")
    document = _aliased(
        "login",
        f'input: {{email: "ada@example.com", password: "{PASSWORD}"}}',
        "{ accessToken }",
        10,
    )
    started = time.perf_counter()
    response = await _post(client, document)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400
    error = only_error(response.json())
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "`login` only once" in error["message"]
    assert "data" not in response.json()
    # Refused before execution: not ten Argon2id hashes' worth of time.
    assert elapsed < 2


async def test_aliased_registrations_make_no_account(client: httpx.AsyncClient) -> None:
    document = _aliased(
        "register",
        'input: {email: "mallory<n>@example.com", password: "' + PASSWORD + '", displayName: "M"}',
        "{ accessToken }",
        20,
    )
    response = await _post(client, document)
    assert response.status_code == 400
    for n in (0, 19):
        body = await graphql(
            client,
            "mutation ($input: LoginInput!) { login(input: $input) { accessToken } }",
            {"input": {"email": f"mallory{n}@example.com", "password": PASSWORD}},
        )
        assert_error(body, "UNAUTHENTICATED")


async def test_fragments_do_not_hide_a_second_credential_field(
    client: httpx.AsyncClient,
) -> None:
    login = f'login(input: {{email: "ada@example.com", password: "{PASSWORD}"}})'
    document = (
        "mutation { ...A ... on Mutation { b: " + login + " { accessToken } } }"
        " fragment A on Mutation { a: " + login + " { accessToken } }"
    )
    response = await _post(client, document)
    assert response.status_code == 400
    assert "`login` only once" in only_error(response.json())["message"]


async def test_different_credential_fields_may_share_an_operation(
    client: httpx.AsyncClient,
) -> None:
    document = (
        'mutation { register(input: {email: "ada@example.com", password: "'
        + PASSWORD
        + '", displayName: "Ada"}) { accessToken } '
        'logout(refreshToken: "dpr_unknown") }'
    )
    body = (await _post(client, document)).json()
    assert "errors" not in body, body
    assert body["data"]["logout"] is False
