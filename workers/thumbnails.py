"""``thumbnails``: resized copies of an image, a PDF page or a video frame, one new
file per size asked for.

Each size is the longest side of its thumbnail; a picture is never enlarged,
so a size beyond it keeps its dimensions. ``photos/cat.jpg`` at 256 as WebP
becomes ``photos/cat@256.webp``; without a format, thumbnails keep the
source's (PNG, JPEG, WebP or AVIF), HEIC photos, PDFs and videos give JPEG,
and other images (GIF, BMP) PNG. ``page`` picks a PDF's page (the first by
default), ``atSeconds`` a video's frame (by default a tenth of the way in). A
path already in use fails the whole job, and what it made so far is removed
(with a format asked for, before any decoding).
See :mod:`workers.images` and :mod:`workers.visuals` for what is read and how
safely; the decoding and encoding run in a decoder process of their own
(:mod:`workers.decoders`), within ``DEPOT_MEDIA_PICTURE_SECONDS``. A file
whose probed metadata is already beyond a bound (``workers.media_limits``) is
refused at start.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

from core.errors import BadUserInput
from core.models import File
from core.settings import Settings
from workers.context import JobContext
from workers.decoders import run_isolated
from workers.images import (
    EXTENSIONS,
    ImageFormat,
    default_format,
    encode,
    ensure_paths_free,
    resized,
    stem_of,
    store,
    target_size,
)
from workers.kind import Kind
from workers.media_limits import MediaLimits, known_excess
from workers.params import Doc, FileId, load
from workers.scratch import scratch_directory
from workers.visuals import decode_visual

MAX_SIZES: Final = 10
MAX_SIDE: Final = 4096
# A week of video: beyond any file a job would read.
MAX_AT_SECONDS: Final = 7 * 24 * 3600
# The share of the progress bar that decoding and encoding (in a decoder process) stand for.
DECODED: Final = 0.8


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


@dataclass(frozen=True)
class _Made:
    """What a decoder process made: the thumbnails' format and each one's size, in order."""

    format: ImageFormat
    width: int
    height: int
    sizes: list[tuple[int, int]]


def _make(source: Path, name: str, limits: MediaLimits, params: Params, scratch: Path) -> _Made:
    """Decode the picture and encode each thumbnail to ``scratch/<index>.<extension>``.

    Runs in a decoder process (``workers.decoders``).
    """
    picture = decode_visual(
        source,
        name,
        limits,
        fit=max(params.sizes),
        page=params.page,
        at_seconds=params.at_seconds,
    )
    output_format = params.format or default_format(picture.format)
    sizes = []
    for index, size in enumerate(params.sizes):
        target = target_size(picture.width, picture.height, size)
        out = scratch / f"{index}.{EXTENSIONS[output_format]}"
        encode(resized(picture, target), output_format, out, quality=None, icc=picture.icc_profile)
        sizes.append(target)
    return _Made(output_format, picture.width, picture.height, sizes)


def check_file(params: Params, file: File, settings: Settings) -> None:
    if excess := known_excess(file, MediaLimits.of(settings)):
        raise BadUserInput(excess, field="fileId")


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    params = load(Params, ctx.params)
    sizes, asked = params.sizes, params.format
    if asked is not None:
        await ensure_paths_free(ctx, [output_path(file.path, size, asked) for size in sizes])
    await ctx.progress(0.0, f"Reading {file.name}")
    limits = MediaLimits.of(ctx.settings)
    with scratch_directory("thumbnails") as scratch:
        async with ctx.spool(file) as spooled:
            made = await run_isolated(
                functools.partial(_make, spooled, file.path, limits, params, scratch),
                name=file.path,
                seconds=ctx.settings.media_picture_seconds,
                setting="DEPOT_MEDIA_PICTURE_SECONDS",
                memory_mb=ctx.settings.media_memory_limit_mb,
            )
        # Without an asked format the paths are known only now; not checked here: the
        # outputs' rows are written when the job ends, and a taken path fails it then
        # (core.jobs.finish), as early a check would, for one transaction less.
        paths = [output_path(file.path, size, made.format) for size in sizes]
        await ctx.progress(DECODED, f"Read {file.name} ({made.width}x{made.height})")
        for index, (path, size) in enumerate(zip(paths, made.sizes, strict=True)):
            out = scratch / f"{index}.{EXTENSIONS[made.format]}"
            await store(ctx, out, path, size, derived_from=file)
            await ctx.progress(DECODED + (1 - DECODED) * (index + 1) / len(sizes), f"Made {path}")


KIND = Kind(
    name="thumbnails",
    params=Params,
    run=run,
    check=check,
    check_file=check_file,
    time_limit_seconds=300,
    max_attempts=3,
    reads=("image/*", "application/pdf", "video/*"),
    makes=("image/*",),
)
