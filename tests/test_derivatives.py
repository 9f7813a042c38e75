"""Derived files follow their source: a thumbnail of a conversion of an upload is
trashed, restored and purged with it, and says where it came from."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.settings import Settings
from tests.conftest import make_settings
from tests.support import (
    USAGE,
    graphql,
    leftover_objects,
    output_nodes,
    run_job,
    signed_in,
    upload_file,
)

pytestmark = pytest.mark.anyio

TREE = """
query Tree($id: ID!) {
  file(id: $id) {
    path trashedAt derivedFrom { id }
    derivatives(first: 10) { totalCount edges { node { id path trashedAt derivedFrom { id } } } }
  }
}
"""
DELETE = "mutation D($id: ID!) { deleteFile(id: $id) { id trashedAt } }"
RESTORE = "mutation R($id: ID!) { restoreFile(id: $id) { id trashedAt } }"
PURGE = "mutation P($id: ID!) { purgeFile(id: $id) }"
LIVE = "query { files(first: 50) { edges { node { path } } } }"


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, overrides: dict[str, Any]) -> Settings:
    return make_settings(
        tmp_path,
        database_url=database_url,
        storage_url=(tmp_path / "files").as_uri(),
        **overrides,
    )


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def tree(client: httpx.AsyncClient, headers: dict[str, str], file_id: str) -> dict[str, Any]:
    body = await graphql(client, TREE, {"id": file_id}, headers=headers)
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["file"]
    return found


async def live_paths(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    body = await graphql(client, LIVE, headers=headers)
    return sorted(edge["node"]["path"] for edge in body["data"]["files"]["edges"])


async def three_generations(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """An upload, its WebP conversion, and a thumbnail of that conversion."""
    source = await upload_file(client, headers, "cat.png", png())
    converted = await run_job(
        client, headers, {"convert": {"fileId": source["id"], "format": "WEBP"}}
    )
    [webp] = output_nodes(converted)
    thumbs = await run_job(client, headers, {"thumbnails": {"fileId": webp["id"], "sizes": [16]}})
    [thumb] = output_nodes(thumbs)
    return source, webp, thumb


async def test_derived_files_know_their_source_and_follow_it(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    _, headers = await signed_in(client)
    source, webp, thumb = await three_generations(client, headers)
    found = await tree(client, headers, source["id"])
    assert found["derivedFrom"] is None
    assert [e["node"]["path"] for e in found["derivatives"]["edges"]] == ["cat.webp"]
    assert found["derivatives"]["edges"][0]["node"]["derivedFrom"] == {"id": source["id"]}
    assert (await tree(client, headers, thumb["id"]))["derivedFrom"] == {"id": webp["id"]}

    unrelated = await upload_file(client, headers, "dog.png", png())
    body = await graphql(client, DELETE, {"id": source["id"]}, headers=headers)
    assert "errors" not in body, body
    assert await live_paths(client, headers) == ["dog.png"], "the whole tree went to the trash"
    body = await graphql(client, RESTORE, {"id": source["id"]}, headers=headers)
    assert "errors" not in body, body
    assert await live_paths(client, headers) == ["cat.png", "cat.webp", "cat@16.webp", "dog.png"]

    body = await graphql(client, PURGE, {"id": source["id"]}, headers=headers)
    assert "errors" not in body, body
    assert await live_paths(client, headers) == ["dog.png"]
    usage = (await graphql(client, USAGE, headers=headers))["data"]["me"]["usage"]
    assert usage["fileCount"] == 1
    assert usage["usedBytes"] == unrelated["size"], "the derivatives' bytes are released too"
    assert len(leftover_objects(settings)) == 1


async def test_a_derivative_whose_path_was_taken_stays_in_the_trash(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(client)
    source, webp, _ = await three_generations(client, headers)
    await graphql(client, DELETE, {"id": source["id"]}, headers=headers)
    await upload_file(client, headers, "cat.webp", b"someone else now")
    body = await graphql(client, RESTORE, {"id": source["id"]}, headers=headers)
    assert "errors" not in body, body
    # The conversion stays in the trash, and so does the thumbnail made from it.
    assert await live_paths(client, headers) == ["cat.png", "cat.webp"]
    assert (await tree(client, headers, webp["id"]))["trashedAt"] is not None


@pytest.mark.parametrize("overrides", [{"derivatives_follow_source": False}])
async def test_derivatives_can_be_left_alone(client: httpx.AsyncClient) -> None:
    _, headers = await signed_in(client)
    source, _, _ = await three_generations(client, headers)
    await graphql(client, DELETE, {"id": source["id"]}, headers=headers)
    assert await live_paths(client, headers) == ["cat.webp", "cat@16.webp"]
    await graphql(client, PURGE, {"id": source["id"]}, headers=headers)
    assert await live_paths(client, headers) == ["cat.webp", "cat@16.webp"]
