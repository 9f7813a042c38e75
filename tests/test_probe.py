"""Every upload gets ``metadata`` from its headers: images, PDFs, videos; nothing for the rest.

Through both ways in: a multipart ``uploadFile`` and a direct upload (ticket,
PUT, ``completeUpload``). The files are made here (``tests.media``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from core.settings import Settings
from tests.conftest import make_settings
from tests.media import BLUE, RED, heic, pdf, video
from tests.support import graphql, signed_in, upload_file
from tests.test_direct_uploads import direct_upload

pytestmark = pytest.mark.anyio

METADATA = "query M($id: ID!) { file(id: $id) { metadata } }"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(
        tmp_path, database_url=database_url, storage_url=(tmp_path / "files").as_uri()
    )


def encoded(image: Image.Image, image_format: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **options)
    return out.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.new("RGB", (40, 20), RED), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 6), colour) for colour in (RED, BLUE, RED)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


async def metadata_of(
    client: httpx.AsyncClient, headers: dict[str, str], file: dict[str, Any]
) -> dict[str, Any]:
    body = await graphql(client, METADATA, {"id": file["id"]}, headers=headers)
    assert "errors" not in body, body
    found: dict[str, Any] = body["data"]["file"]["metadata"]
    return found


@pytest.mark.parametrize("way", ["multipart", "direct"])
async def test_uploads_get_what_their_headers_say(
    client: httpx.AsyncClient, tmp_path: Path, way: str
) -> None:
    _, headers = await signed_in(client)
    files = {
        "a.png": encoded(Image.new("RGBA", (64, 48), BLUE), "PNG"),
        "b.jpg": rotated_jpeg(),
        "c.gif": animated_gif(),
        "d.heic": heic((30, 20), RED),
        "e.pdf": pdf(RED, BLUE, RED, size=(300, 400)),
        "f.mp4": video(tmp_path / "clip.mp4", seconds=4, fps=10, size=(160, 120)),
        "g.txt": b"plain words\n",
        "h.png": encoded(Image.new("RGB", (8, 8)), "PNG")[:30],  # a damaged header
    }
    found: dict[str, dict[str, Any]] = {}
    for path, data in files.items():
        if way == "multipart":
            uploaded = await upload_file(client, headers, path, data)
        else:
            uploaded = await direct_upload(client, headers, path, data)
        found[path] = await metadata_of(client, headers, uploaded)

    assert found["a.png"] == {"width": 64, "height": 48, "animated": False}
    # As stored; the orientation says how to show it.
    assert found["b.jpg"] == {"width": 40, "height": 20, "orientation": 6, "animated": False}
    assert found["c.gif"] == {"width": 8, "height": 6, "animated": True}
    assert found["d.heic"]["width"] == 30, found["d.heic"]
    assert found["d.heic"]["height"] == 20, found["d.heic"]
    assert found["e.pdf"] == {
        "pageCount": 3,
        "pageWidth": 300.0,
        "pageHeight": 400.0,
        "encrypted": False,
    }
    clip = found["f.mp4"]
    assert (clip["width"], clip["height"], clip["videoCodec"]) == (160, 120, "h264"), clip
    assert clip["frameRate"] == 10.0, clip
    assert 3.5 <= clip["duration"] <= 4.5, clip
    assert "audioCodec" not in clip
    assert found["g.txt"] == {}
    assert found["h.png"] == {}


async def test_a_large_file_is_probed_from_its_ends_only(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A PNG header in front of 5 MiB: the probe reads the header, and the upload's
    memory stays bounded (the middle is never kept)."""
    _, headers = await signed_in(client)
    png = encoded(Image.new("RGB", (16, 16), RED), "PNG")
    uploaded = await upload_file(client, headers, "big.png", png + os.urandom(5 * 1024 * 1024))
    assert await metadata_of(client, headers, uploaded) == {
        "width": 16,
        "height": 16,
        "animated": False,
    }
