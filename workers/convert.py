"""``convert``: an image re-encoded as PNG, JPEG or WebP, upright and full size.

``photos/cat.png`` to WebP becomes ``photos/cat.webp``. Converting to the
format the path already names (re-encoding a JPEG at another quality, or to
apply its EXIF orientation) writes ``photos/cat (converted).jpg`` beside it.
A path already in use fails the job. ``quality`` (1..100, default 85) applies
to JPEG and WebP only. See :mod:`workers.images` for what is read and how.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any, Final

import anyio

from core.errors import BadUserInput
from core.models import JobKind
from core.settings import Settings
from workers.context import JobContext
from workers.images import EXTENSIONS, decode, ensure_paths_free, format_param, stem_of, store
from workers.kind import Kind
from workers.params import file_id

LOSSY: Final = ("jpeg", "webp")
# The share of the progress bar that reading and decoding the source stands for.
DECODED: Final = 0.5


def check(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    source = file_id(params, "fileId")
    output_format = format_param(params.get("format"))
    if output_format is None:
        raise BadUserInput("format must be png, jpeg or webp.", field="format")
    quality = params.get("quality")
    if quality is not None:
        if output_format not in LOSSY:
            raise BadUserInput("quality applies to jpeg and webp only.", field="quality")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise BadUserInput("quality must be from 1 to 100.", field="quality")
    return {"fileId": str(source), "format": output_format, "quality": quality}


def inputs(params: dict[str, Any]) -> list[uuid.UUID]:
    return [uuid.UUID(params["fileId"])]


def output_path(source_path: str, output_format: str) -> str:
    """``a/cat.png`` → ``a/cat.webp``; the same path again → ``a/cat (converted).png``."""
    stem, extension = stem_of(source_path), EXTENSIONS[output_format]
    converted = f"{stem}.{extension}"
    return f"{stem} (converted).{extension}" if converted == source_path else converted


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    output_format: str = ctx.params["format"]
    path = output_path(file.path, output_format)
    await ensure_paths_free(ctx, [path])
    await ctx.progress(0.0, f"Reading {file.name}")
    max_pixels = ctx.settings.image_max_pixels
    async with ctx.spool(file) as spooled:
        source = await anyio.to_thread.run_sync(lambda: decode(spooled, file.path, max_pixels))
    await ctx.progress(DECODED, f"Read {file.name} ({source.width}x{source.height})")
    with tempfile.TemporaryDirectory(prefix="depot-convert-") as scratch:
        await store(
            ctx,
            source.image,
            path,
            output_format,
            Path(scratch),
            quality=ctx.params.get("quality"),
            icc=source.icc_profile,
        )
    await ctx.progress(1.0, f"Made {path}")


KIND = Kind(
    name=JobKind.CONVERT,
    check=check,
    inputs=inputs,
    run=run,
    time_limit_seconds=300,
    max_attempts=3,
)
