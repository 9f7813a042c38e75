"""The image jobs through GraphQL: ``thumbnails`` and ``convert`` on real images made here.

Every image is drawn with Pillow in the test (a JPEG with an EXIF rotation,
a PNG with transparency, a palette GIF); the broken ones are written by hand
(a truncated PNG, text, a TIFF, a PNG header claiming a huge size over a few
bytes of data). Outputs are downloaded through their ``downloadUrl`` and
opened with Pillow. Files live in a local directory, so a failed job can be
shown to leave no object behind.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from core.settings import Settings
from tests.conftest import make_settings
from tests.media import png_claiming
from tests.support import (
    USAGE,
    assert_error,
    bearer,
    follow,
    graphql,
    leftover_objects,
    output_nodes,
    register,
    run_job,
    try_start_job,
    update_user,
    upload_file,
)

pytestmark = pytest.mark.anyio

FILE = (
    "query File($id: ID!) "
    "{ file(id: $id) { path size contentType metadata downloadUrl producedBy { id } } }"
)
ORIENTATION = 0x0112
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (``@pytest.mark.parametrize("overrides", [...])``)."""
    return {}


@pytest.fixture
def settings(
    tmp_path: Path, database_url: str, file_storage_url: str, overrides: dict[str, Any]
) -> Settings:
    return make_settings(
        tmp_path, database_url=database_url, storage_url=file_storage_url, **overrides
    )


# -- images, made here ----------------------------------------------------------------


def encoded(image: Image.Image, image_format: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **options)
    return out.getvalue()


def halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...]) -> Image.Image:
    """An image whose left half is ``left`` and right half ``right`` (orientation shows)."""
    mode = "RGBA" if len(left) == 4 else "RGB"
    image = Image.new(mode, size, left)
    image.paste(Image.new(mode, (size[0] - size[0] // 2, size[1]), right), (size[0] // 2, 0))
    return image


def jpeg(size: tuple[int, int], *, orientation: int | None = None) -> bytes:
    """A JPEG, red on the left and blue on the right as stored, optionally EXIF-rotated."""
    options: dict[str, Any] = {"quality": 95}
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    return encoded(halves(size, RED, BLUE), "JPEG", **options)


def noise_png(size: tuple[int, int]) -> bytes:
    """A PNG of random pixels: it barely compresses, so its thumbnails are large too."""
    pixels = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    return encoded(pixels, "PNG")


# -- helpers ------------------------------------------------------------------------------


async def sign_up(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await register(client))["accessToken"])


async def downloaded(
    client: httpx.AsyncClient, headers: dict[str, str], file_id: str
) -> tuple[dict[str, Any], Image.Image]:
    """The output's ``File`` fields and its bytes (fetched from ``downloadUrl``) as an image."""
    body = await graphql(client, FILE, {"id": file_id}, headers=headers)
    assert "errors" not in body, body
    file: dict[str, Any] = body["data"]["file"]
    response = await follow(client, "GET", file["downloadUrl"])
    assert response.status_code == 200, response.text
    assert len(response.content) == file["size"]
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return file, image


async def usage(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, int]:
    body = await graphql(client, USAGE, headers=headers)
    assert "errors" not in body, body
    found: dict[str, int] = body["data"]["me"]["usage"]
    return found


def assert_failed(job: dict[str, Any], *phrases: str) -> None:
    """The job failed on its first attempt (bad input is never retried), made nothing, said why."""
    assert job["status"] == "FAILED", job
    assert job["attempts"] == 1, job
    assert job["outputs"]["totalCount"] == 0, job
    for phrase in phrases:
        assert phrase in job["error"], job


# -- thumbnails ---------------------------------------------------------------------------


async def test_thumbnails_are_new_files_of_each_size_never_enlarged(
    client: httpx.AsyncClient,
) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "photos/cat.jpg", jpeg((640, 480)))
    job = await run_job(
        client,
        headers,
        {"thumbnails": {"fileId": source["id"], "sizes": [256, 64, 1000], "format": "WEBP"}},
    )
    assert job["status"] == "SUCCEEDED", job
    assert job["progress"] == 1.0
    outputs = output_nodes(job)
    assert [output["path"] for output in outputs] == [
        "photos/cat@256.webp",
        "photos/cat@64.webp",
        "photos/cat@1000.webp",
    ]
    # 1000 is beyond the image: that thumbnail keeps the original size.
    for output, size in zip(outputs, [(256, 192), (64, 48), (640, 480)], strict=True):
        assert output["contentType"] == "image/webp"
        assert output["metadata"] == {"width": size[0], "height": size[1]}
        file, image = await downloaded(client, headers, output["id"])
        assert (image.format, image.size) == ("WEBP", size)
        assert file["producedBy"] == {"id": job["id"]}
        # Resized, not cropped: red stays left and blue right.
        assert _near(image.convert("RGB").getpixel((2, size[1] // 2)), RED)
        assert _near(image.convert("RGB").getpixel((size[0] - 3, size[1] // 2)), BLUE)
    assert (await usage(client, headers))["fileCount"] == 4


async def test_thumbnails_turn_a_photo_upright_and_keep_its_format(
    client: httpx.AsyncClient,
) -> None:
    headers = await sign_up(client)
    # Stored 400x200 with red on the left; EXIF 6 says "turn a quarter clockwise to view".
    source = await upload_file(client, headers, "IMG_1.JPG", jpeg((400, 200), orientation=6))
    job = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [100]}})
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert (output["path"], output["contentType"]) == ("IMG_1@100.jpg", "image/jpeg")
    assert output["metadata"] == {"width": 50, "height": 100}
    _, image = await downloaded(client, headers, output["id"])
    assert (image.format, image.size) == ("JPEG", (50, 100))
    # Upright: what was the left (red) is now the top; no orientation is left to apply twice.
    assert _near(image.getpixel((25, 5)), RED)
    assert _near(image.getpixel((25, 94)), BLUE)
    assert ORIENTATION not in image.getexif()


async def test_thumbnails_of_a_gif_are_png(client: httpx.AsyncClient) -> None:
    headers = await sign_up(client)
    palette = halves((60, 30), RED, BLUE).convert("P")
    source = await upload_file(client, headers, "art/flag.gif", encoded(palette, "GIF"))
    job = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [20]}})
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert (output["path"], output["contentType"]) == ("art/flag@20.png", "image/png")
    _, image = await downloaded(client, headers, output["id"])
    assert (image.format, image.size, image.mode) == ("PNG", (20, 10), "RGB")
    assert _near(image.getpixel((1, 5)), RED)


@pytest.mark.parametrize(
    "sizes",
    [[], [0], [4097], [64, 64], list(range(1, 12))],
    ids=["none", "zero", "too-large", "twice", "eleven"],
)
async def test_thumbnail_sizes_are_checked(client: httpx.AsyncClient, sizes: list[int]) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "a.png", noise_png((8, 8)))
    body = await try_start_job(
        client, headers, {"thumbnails": {"fileId": source["id"], "sizes": sizes}}
    )
    assert_error(body, "BAD_USER_INPUT", field="sizes")


async def test_a_taken_output_path_fails_the_whole_job(client: httpx.AsyncClient) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "cat.png", noise_png((40, 40)))
    await upload_file(client, headers, "cat@20.png", b"already here")
    job = await run_job(
        client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [30, 20, 10]}}
    )
    assert_failed(job, "'cat@20.png'", "already exists")
    assert (await usage(client, headers))["fileCount"] == 2


# -- convert ----------------------------------------------------------------------------


async def test_convert_flattens_transparency_for_jpeg_and_keeps_it_for_webp(
    client: httpx.AsyncClient,
) -> None:
    headers = await sign_up(client)
    logo = halves((80, 40), (0, 0, 0, 0), (*BLUE, 255))
    source = await upload_file(client, headers, "brand/logo.png", encoded(logo, "PNG"))
    as_jpeg = await run_job(
        client, headers, {"convert": {"fileId": source["id"], "format": "JPEG", "quality": 70}}
    )
    assert as_jpeg["status"] == "SUCCEEDED", as_jpeg
    [output] = output_nodes(as_jpeg)
    assert (output["path"], output["contentType"]) == ("brand/logo.jpg", "image/jpeg")
    assert output["metadata"] == {"width": 80, "height": 40}
    _, image = await downloaded(client, headers, output["id"])
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (80, 40))
    # Transparent pixels are laid on white, not on black.
    assert _near(image.getpixel((5, 20)), WHITE)
    assert _near(image.getpixel((75, 20)), BLUE)

    as_webp = await run_job(
        client, headers, {"convert": {"fileId": source["id"], "format": "WEBP"}}
    )
    [output] = output_nodes(as_webp)
    assert (output["path"], output["contentType"]) == ("brand/logo.webp", "image/webp")
    _, image = await downloaded(client, headers, output["id"])
    assert (image.format, image.mode) == ("WEBP", "RGBA")
    assert image.getpixel((5, 20))[3] == 0


async def test_converting_to_the_same_format_writes_a_converted_copy(
    client: httpx.AsyncClient,
) -> None:
    headers = await sign_up(client)
    photo = jpeg((64, 32), orientation=8)
    source = await upload_file(client, headers, "p/photo.jpg", photo)
    job = await run_job(client, headers, {"convert": {"fileId": source["id"], "format": "JPEG"}})
    assert job["status"] == "SUCCEEDED", job
    [output] = output_nodes(job)
    assert output["path"] == "p/photo (converted).jpg"
    # The copy is upright: a quarter turn swapped its sides.
    assert output["metadata"] == {"width": 32, "height": 64}
    again = await run_job(client, headers, {"convert": {"fileId": source["id"], "format": "JPEG"}})
    assert_failed(again, "'p/photo (converted).jpg'", "already exists")


@pytest.mark.parametrize(
    "params",
    [
        {"format": "PNG", "quality": 80},
        {"format": "JPEG", "quality": 0},
        {"format": "WEBP", "quality": 101},
    ],
    ids=["png-has-no-quality", "zero", "over-100"],
)
async def test_convert_quality_is_checked(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "a.png", noise_png((8, 8)))
    body = await try_start_job(client, headers, {"convert": {"fileId": source["id"], **params}})
    assert_error(body, "BAD_USER_INPUT", field="quality")


# -- what cannot be read ----------------------------------------------------------------


async def test_what_is_not_a_readable_image_fails_at_once_leaving_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await sign_up(client)
    whole = noise_png((64, 64))
    bad = {
        "truncated.png": (whole[: len(whole) // 2], "damaged or truncated"),
        "notes.png": (
            b"Not a picture, just some text.\n",
            "not a PNG, JPEG, WebP, GIF, BMP, HEIC or AVIF",
        ),
        "scan.tiff": (encoded(Image.new("RGB", (8, 8)), "TIFF"), "not a PNG, JPEG"),
    }
    sources = {
        path: await upload_file(client, headers, path, data) for path, (data, _) in bad.items()
    }
    before = await usage(client, headers)
    for path, (_, reason) in bad.items():
        file_id = sources[path]["id"]
        thumbnails = {"thumbnails": {"fileId": file_id, "sizes": [16]}}
        for job_input in (thumbnails, {"convert": {"fileId": file_id, "format": "PNG"}}):
            job = await run_job(client, headers, job_input)
            assert_failed(job, f"{path!r} is not an image Depot can read", reason)
    assert await usage(client, headers) == before
    assert len(leftover_objects(settings)) == len(bad)


@pytest.mark.parametrize("overrides", [{"image_max_pixels": 10_000}])
async def test_images_over_the_pixel_limit_fail_before_decoding(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = await sign_up(client)
    real = await upload_file(client, headers, "real.png", noise_png((120, 100)))
    # Headers alone: had they been decoded, these would fail as truncated instead.
    # The probe makes nothing of them (truncated; a bomb), so they fail in the decoder.
    claiming = await upload_file(client, headers, "claims.png", png_claiming(3000, 3000))
    bomb = await upload_file(client, headers, "bomb.png", png_claiming(100_000, 100_000))
    # The probe saw the real one's size: refused at start, no job made.
    body = await try_start_job(
        client, headers, {"thumbnails": {"fileId": real["id"], "sizes": [8]}}
    )
    assert_error(body, "BAD_USER_INPUT", field="fileId")
    assert (
        "'real.png' is 120x100 pixels, more than the 10000 pixels" in body["errors"][0]["message"]
    )
    job = await run_job(client, headers, {"convert": {"fileId": claiming["id"], "format": "PNG"}})
    assert_failed(job, "'claims.png' is 3000x3000 pixels", "DEPOT_IMAGE_MAX_PIXELS")
    job = await run_job(client, headers, {"thumbnails": {"fileId": bomb["id"], "sizes": [8]}})
    assert_failed(job, "'bomb.png' is too large to decode safely", "decompression bomb")
    assert len(leftover_objects(settings)) == 3


# -- quota ------------------------------------------------------------------------------


async def test_outputs_count_against_the_quota(
    client: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    headers = await sign_up(client)
    source = await upload_file(client, headers, "noise.png", noise_png((96, 96)))
    # Room for 2 KB more: the first thumbnail (as large as the noisy source) does not fit.
    await update_user(engine, "ada@example.com", quota_bytes=source["size"] + 2000)
    before = await usage(client, headers)
    assert before["usedBytes"] == source["size"]
    job = await run_job(
        client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [96, 48]}}
    )
    assert_failed(job, "quota")
    assert await usage(client, headers) == before
    assert len(leftover_objects(settings)) == 1
    # A thumbnail that fits is made, and counted.
    small = await run_job(client, headers, {"thumbnails": {"fileId": source["id"], "sizes": [4]}})
    assert small["status"] == "SUCCEEDED", small
    [output] = output_nodes(small)
    after = await usage(client, headers)
    assert after["usedBytes"] == source["size"] + output["size"]
    assert after["fileCount"] == 2


def _near(pixel: Any, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    """Whether ``pixel`` is ``colour`` give or take lossy compression."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))
