"""Helpers shared by the tests: services, GraphQL calls."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

STRONG_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def require_service(env_var: str, what: str) -> str:
    """The URL of a service the test needs: skip without it locally, fail in CI."""
    url = os.environ.get(env_var)
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail(f"{env_var} is not set, but CI must run the {what} tests")
    pytest.skip(f"{what} is not available; set {env_var} to run this test")


async def graphql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST a GraphQL operation and return the decoded response body."""
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error_codes(body: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in body.get("errors", [])]
