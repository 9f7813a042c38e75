"""Security headers: on every response, kept where a route set its own."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from tests.conftest import make_settings, serve_app
from tests.support import bearer, register

pytestmark = pytest.mark.anyio

EVERYWHERE = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "frame-ancestors 'none'",
}


async def test_every_response_refuses_sniffing_framing_and_referrers(
    client: httpx.AsyncClient,
) -> None:
    for response in (
        await client.get("/healthz"),
        await client.post("/graphql", json={"query": "{ __typename }"}),
        await client.get("/no-such-page"),
    ):
        assert {name: response.headers.get(name) for name in EVERYWHERE} == EVERYWHERE
        assert "strict-transport-security" not in response.headers


async def test_a_credentialed_answer_is_never_cached(client: httpx.AsyncClient) -> None:
    auth = await register(client)
    signed_in = await client.post(
        "/graphql", json={"query": "{ me { id } }"}, headers=bearer(auth["accessToken"])
    )
    anonymous = await client.post("/graphql", json={"query": "{ __typename }"})
    assert signed_in.headers["cache-control"] == "no-store"
    assert "cache-control" not in anonymous.headers


async def test_https_deployments_send_hsts(tmp_path: Path, settings: Settings) -> None:
    https = make_settings(
        tmp_path, database_url=settings.database_url, public_base_url="https://files.example.com"
    )
    async with serve_app(https) as client:
        response = await client.get("/healthz")
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
