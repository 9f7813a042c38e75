"""``thumbnails``: resized copies of an image, a PDF page or a video frame, one new
file per size asked for.

Each size is the longest side of its thumbnail; a picture is never enlarged,
so a size beyond it keeps its dimensions. ``photos/cat.jpg`` at 256 as WebP
becomes ``photos/cat@256.webp``; without a format, thumbnails keep the
source's (PNG, JPEG, WebP or AVIF), HEIC photos, PDFs and videos give JPEG,
and other images (GIF, BMP) PNG. ``page`` picks a PDF's page (the first by
default), ``atSeconds`` a video's frame (by default a tenth of the way in). A
path already in use fails the whole job, and what it made so far is removed.
See :mod:`workers.images` and :mod:`workers.visuals` for what is read and how
safely.
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
from workers.images import (
    EXTENSIONS,
    ImageFormat,
    default_format,
    ensure_paths_free,
    resized,
    stem_of,
    store,
    target_size,
)
from workers.kind import Kind
from workers.params import Doc, FileId, load
from workers.visuals import decode_visual

MAX_SIZES: Final = 10
MAX_SIDE: Final = 4096
# A week of video: beyond any file a job would read.
MAX_AT_SECONDS: Final = 7 * 24 * 3600
# The share of the progress bar that reading and decoding the source stands for.
DECODED: Final = 0.2


@dataclass(frozen=True)
class Params:
    """Resized copies of an image, one file per size."""

    file_id: FileId
    sizes: Annotated[list[int], Doc("Longest side of each thumbnail, in pixels.")]
    format: Annotated[
        ImageFormat | None,
        Doc("Default: the image's own format when jobs can write it; JPEG for HEIC, PDF, video."),
    ] = None
    page: Annotated[int | None, Doc("A PDF's page, from 1. Default: the first.")] = None
    at_seconds: Annotated[
        float | None, Doc("A video's frame, in seconds from the start. Default: a tenth of it.")
    ] = None


def check(params: Params, settings: Settings) -> Params:
    sizes = params.sizes
    if not 1 <= len(sizes) <= MAX_SIZES:
        raise BadUserInput(f"sizes must list 1 to {MAX_SIZES} sizes.", field="sizes")
    if not all(1 <= size <= MAX_SIDE for size in sizes):
        raise BadUserInput(
            f"Each size is a thumbnail's longest side, from 1 to {MAX_SIDE} pixels.",
            field="sizes",
        )
    if len(set(sizes)) != len(sizes):
        raise BadUserInput("sizes lists a size twice.", field="sizes")
    if params.page is not None and params.page < 1:
        raise BadUserInput("page counts from 1.", field="page")
    if params.at_seconds is not None and not 0 <= params.at_seconds <= MAX_AT_SECONDS:
        raise BadUserInput(
            f"atSeconds is a time from 0 to {MAX_AT_SECONDS} seconds.", field="atSeconds"
        )
    return params


def output_path(source_path: str, size: int, output_format: ImageFormat) -> str:
    """Where a thumbnail goes: ``a/cat.jpg`` at 256 → ``a/cat@256.jpg``."""
    return f"{stem_of(source_path)}@{size}.{EXTENSIONS[output_format]}"


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    params = load(Params, ctx.params)
    sizes, asked = params.sizes, params.format
    if asked is not None:
        await ensure_paths_free(ctx, [output_path(file.path, size, asked) for size in sizes])
    await ctx.progress(0.0, f"Reading {file.name}")
    max_pixels = ctx.settings.image_max_pixels
    async with ctx.spool(file) as spooled:
        source = await anyio.to_thread.run_sync(
            lambda: decode_visual(
                spooled,
                file.path,
                max_pixels,
                fit=max(sizes),
                page=params.page,
                at_seconds=params.at_seconds,
            )
        )
    output_format = asked or default_format(source.format)
    paths = [output_path(file.path, size, output_format) for size in sizes]
    if asked is None:
        await ensure_paths_free(ctx, paths)
    await ctx.progress(DECODED, f"Read {file.name} ({source.width}x{source.height})")
    with tempfile.TemporaryDirectory(prefix="depot-thumbnails-") as scratch:
        for done, (size, path) in enumerate(zip(sizes, paths, strict=True), start=1):
            target = target_size(source.width, source.height, size)
            image = await anyio.to_thread.run_sync(resized, source, target)
            await store(
                ctx,
                image,
                path,
                output_format,
                Path(scratch),
                quality=None,
                icc=source.icc_profile,
                derived_from=file,
            )
            await ctx.progress(DECODED + (1 - DECODED) * done / len(sizes), f"Made {path}")


KIND = Kind(
    name="thumbnails",
    params=Params,
    run=run,
    check=check,
    time_limit_seconds=300,
    max_attempts=3,
)
