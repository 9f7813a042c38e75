"""Helpers for Relay connections: follow ``endCursor`` to the end, check the pages agree."""

from __future__ import annotations

from typing import Any

import httpx

from tests.support import graphql

MAX_PAGES = 50


async def all_pages(
    client: httpx.AsyncClient,
    query: str,
    field: str,
    *,
    first: int,
    headers: dict[str, str],
    variables: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every page of connection ``field``, ``first`` at a time, following ``endCursor``.

    ``query`` must take ``$first: Int`` and ``$after: String``.
    """
    pages: list[dict[str, Any]] = []
    after: str | None = None
    while len(pages) < MAX_PAGES:
        body = await graphql(
            client, query, {**(variables or {}), "first": first, "after": after}, headers=headers
        )
        assert "errors" not in body, body
        page: dict[str, Any] = body["data"][field]
        pages.append(page)
        if not page["pageInfo"]["hasNextPage"]:
            return pages
        after = page["pageInfo"]["endCursor"]
    raise AssertionError(f"{field} still had a next page after {MAX_PAGES} pages")


def nodes_of(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The nodes of ``pages`` in order, after checking cursors, endCursor and totalCount."""
    edges = [edge for page in pages for edge in page["edges"]]
    cursors = [edge["cursor"] for edge in edges]
    assert len(set(cursors)) == len(cursors), f"a cursor repeats: {cursors}"
    for page in pages:
        last = page["edges"][-1]["cursor"] if page["edges"] else None
        assert page["pageInfo"]["endCursor"] == last
        assert page["totalCount"] == len(edges), "totalCount differs from the rows paged over"
    nodes = [edge["node"] for edge in edges]
    ids = [node["id"] for node in nodes]
    assert len(set(ids)) == len(ids), f"a node appears twice: {ids}"
    return nodes
