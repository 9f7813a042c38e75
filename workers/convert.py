"""``convert``: an image re-encoded as PNG, JPEG, WebP or AVIF, upright and full size.

``photos/cat.png`` to WebP becomes ``photos/cat.webp``. Converting to the
format the path already names (re-encoding a JPEG at another quality, or to
apply its EXIF orientation) writes ``photos/cat (converted).jpg`` beside it.
A path already in use fails the job. ``quality`` (1..100, default 85) applies
to JPEG, WebP and AVIF only. HEIC and AVIF photos are read too. See
:mod:`workers.images` for what is read and how.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import anyio

from core.errors import BadUserInput
from core.settings import Settings
from workers.context import JobContext
from workers.images import EXTENSIONS, LOSSY, ImageFormat, decode, ensure_paths_free, stem_of, store
from workers.kind import Kind
from workers.params import Doc, FileId, load

# The share of the progress bar that reading and decoding the source stands for.
DECODED: Final = 0.5


@dataclass(frozen=True)
class Params:
    """An image in another format."""

    file_id: FileId
    format: ImageFormat
    quality: Annotated[int | None, Doc("1-100, JPEG, WebP and AVIF.")] = None


def check(params: Params, settings: Settings) -> Params:
    if params.quality is not None:
        if params.format not in LOSSY:
            raise BadUserInput("quality applies to jpeg, webp and avif only.", field="quality")
        if not 1 <= params.quality <= 100:
            raise BadUserInput("quality must be from 1 to 100.", field="quality")
    return params


def output_path(source_path: str, output_format: ImageFormat) -> str:
    """``a/cat.png`` → ``a/cat.webp``; the same path again → ``a/cat (converted).png``."""
    stem, extension = stem_of(source_path), EXTENSIONS[output_format]
    converted = f"{stem}.{extension}"
    return f"{stem} (converted).{extension}" if converted == source_path else converted


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    params = load(Params, ctx.params)
    output_format = params.format
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
            quality=params.quality,
            icc=source.icc_profile,
            derived_from=file,
        )
    await ctx.progress(1.0, f"Made {path}")


KIND = Kind(
    name="convert",
    params=Params,
    run=run,
    check=check,
    time_limit_seconds=300,
    max_attempts=3,
)
