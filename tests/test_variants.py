"""On-the-fly image variants: ``File.imageUrl`` renders once, then serves the stored file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.settings import Settings
from schema.ids import decode_id
from tests.conftest import make_settings
from tests.media import BLUE, RED, pdf
from tests.support import (
    assert_error,
    follow,
    graphql,
    leftover_objects,
    signed_in,
    upload_file,
)

pytestmark = pytest.mark.anyio

IMAGE_URL = """
query V($id: ID!, $w: Int, $h: Int, $fit: ImageFit!, $format: ImageFormat!) {
  file(id: $id) { imageUrl(width: $w, height: $h, fit: $fit, format: $format) }
}
"""
DELETE = "mutation D($id: ID!) { deleteFile(id: $id) { id } }"
FILES = "query { files(first: 20) { edges { node { path derivedFrom { path } } } } }"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, file_storage_url: str) -> Settings:
    return make_settings(tmp_path, database_url=database_url, storage_url=file_storage_url)


def halves() -> bytes:
    """400x200: red on the left, blue on the right."""
    image = Image.new("RGB", (400, 200), RED)
    image.paste(Image.new("RGB", (200, 200), BLUE), (200, 0))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


async def image_url(
    client: httpx.AsyncClient, headers: dict[str, str], file_id: str, **args: Any
) -> dict[str, Any]:
    variables = {"id": file_id, "fit": "CONTAIN", "format": "WEBP", **args}
    body: dict[str, Any] = await graphql(client, IMAGE_URL, variables, headers=headers)
    return body


def near(pixel: Any, colour: tuple[int, ...], tolerance: int = 48) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


def opened(response: httpx.Response) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image.convert("RGB")


@pytest.mark.parametrize("file_storage_url", ["local", "s3"], indirect=True)
async def test_a_variant_is_rendered_once_then_served_with_its_etag(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    _, headers = await signed_in(client)
    source = await upload_file(client, headers, "photos/wide.png", halves())
    body = await image_url(client, headers, source["id"], w=100)
    assert "errors" not in body, body
    url = body["data"]["file"]["imageUrl"]

    first = await follow(client, "GET", url)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/webp"
    image = opened(first)
    assert image.size == (100, 50)
    assert near(image.getpixel((5, 25)), RED)
    assert near(image.getpixel((95, 25)), BLUE)
    stored = leftover_objects(settings)
    assert len(stored) == 2, "the source and its variant"

    again = await follow(client, "GET", url)
    assert again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]
    assert leftover_objects(settings) == stored, "served from the stored variant"
    if not settings.storage_url.startswith("s3"):  # S3 serves it itself, after a redirect
        assert first.headers["cache-control"] == "private, max-age=31536000, immutable"
        revalidated = await client.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert revalidated.status_code == 304
    listed = (await graphql(client, FILES, headers=headers))["data"]["files"]["edges"]
    [variant] = [e["node"] for e in listed if e["node"]["derivedFrom"]]
    assert variant == {
        "path": f".variants/{decode_id(source['id'])[1]}/100x-contain.webp",
        "derivedFrom": {"path": "photos/wide.png"},
    }


async def test_cover_fill_and_contain_meet_the_box(client: httpx.AsyncClient) -> None:
    _, headers = await signed_in(client)
    source = await upload_file(client, headers, "wide.png", halves())
    sizes = {"COVER": (50, 50), "FILL": (40, 40), "CONTAIN": (50, 25)}
    for fit, size in sizes.items():
        body = await image_url(
            client,
            headers,
            source["id"],
            w=size[0],
            h=50 if fit != "FILL" else 40,
            fit=fit,
            format="PNG",
        )
        assert "errors" not in body, body
        response = await follow(client, "GET", body["data"]["file"]["imageUrl"])
        image = opened(response)
        assert image.size == size, fit
        # Cropped to the centre (COVER) or squeezed: red stays left, blue right.
        assert near(image.getpixel((2, image.height // 2)), RED), fit
        assert near(image.getpixel((image.width - 3, image.height // 2)), BLUE), fit


async def test_a_pdf_variant_is_its_first_page_and_text_has_none(
    client: httpx.AsyncClient,
) -> None:
    _, headers = await signed_in(client)
    document = await upload_file(client, headers, "doc.pdf", pdf(RED, BLUE))
    body = await image_url(client, headers, document["id"], h=80, format="JPEG")
    response = await follow(client, "GET", body["data"]["file"]["imageUrl"])
    assert response.status_code == 200, response.text
    image = opened(response)
    assert image.height == 80
    assert near(image.getpixel((image.width // 2, 40)), RED)
    text = await upload_file(client, headers, "notes.txt", b"just words\n")
    assert (await image_url(client, headers, text["id"], w=10))["data"]["file"]["imageUrl"] is None


async def test_variants_are_bounded_and_die_with_their_source(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    _, headers = await signed_in(client)
    source = await upload_file(client, headers, "wide.png", halves())
    assert_error(
        await image_url(client, headers, source["id"], w=5000), "BAD_USER_INPUT", field="width"
    )
    assert_error(await image_url(client, headers, source["id"]), "BAD_USER_INPUT", field="width")
    url = (await image_url(client, headers, source["id"], w=64))["data"]["file"]["imageUrl"]
    assert (await follow(client, "GET", url)).status_code == 200
    tampered = url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB")
    assert (await client.get(tampered)).status_code == 403
    await graphql(client, DELETE, {"id": source["id"]}, headers=headers)
    assert (await client.get(url)).status_code == 410
    listed = (await graphql(client, FILES, headers=headers))["data"]["files"]["edges"]
    assert listed == [], "the variant went to the trash with its source"
