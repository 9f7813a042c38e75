"""``convert``: an image re-encoded as PNG, JPEG, WebP or AVIF, upright and full size.

``photos/cat.png`` to WebP becomes ``photos/cat.webp``. Converting to the
format the path already names (re-encoding a JPEG at another quality, or to
apply its EXIF orientation) writes ``photos/cat (converted).jpg`` beside it.
A path already in use fails the job. ``quality`` (1..100, default 85) applies
to JPEG, WebP and AVIF only. HEIC and AVIF photos are read too. See
:mod:`workers.images` for what is read and how; decoding and encoding run in
a decoder process (:mod:`workers.decoders`) within
``DEPOT_MEDIA_PICTURE_SECONDS``.
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
    LOSSY,
    ImageFormat,
    decode,
    encode,
    ensure_paths_free,
    stem_of,
    store,
)
from workers.kind import Kind
from workers.media_limits import MediaLimits, known_excess
from workers.params import Doc, FileId, load
from workers.scratch import scratch_directory

# The share of the progress bar that decoding and encoding (in a decoder process) stand for.
DECODED: Final = 0.8


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


def _make(
    source: Path, name: str, limits: MediaLimits, params: Params, out: Path
) -> tuple[int, int]:
    """Decode the image and encode it into ``out``; its size. Runs in a decoder process."""
    picture = decode(source, name, limits.image_pixels)
    encode(picture.image, params.format, out, quality=params.quality, icc=picture.icc_profile)
    return picture.image.size


def check_file(params: Params, file: File, settings: Settings) -> None:
    if excess := known_excess(file, MediaLimits.of(settings)):
        raise BadUserInput(excess, field="fileId")


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    params = load(Params, ctx.params)
    path = output_path(file.path, params.format)
    await ensure_paths_free(ctx, [path])
    await ctx.progress(0.0, f"Reading {file.name}")
    limits = MediaLimits.of(ctx.settings)
    with scratch_directory("convert") as scratch:
        out = scratch / f"output.{EXTENSIONS[params.format]}"
        async with ctx.spool(file) as spooled:
            size = await run_isolated(
                functools.partial(_make, spooled, file.path, limits, params, out),
                name=file.path,
                seconds=ctx.settings.media_picture_seconds,
                setting="DEPOT_MEDIA_PICTURE_SECONDS",
                memory_mb=ctx.settings.media_memory_limit_mb,
            )
        await ctx.progress(DECODED, f"Read {file.name} ({size[0]}x{size[1]})")
        await store(ctx, out, path, size, derived_from=file)
    await ctx.progress(1.0, f"Made {path}")


KIND = Kind(
    name="convert",
    params=Params,
    run=run,
    check=check,
    check_file=check_file,
    time_limit_seconds=300,
    max_attempts=3,
    reads=("image/*",),
    makes=("image/*",),
    makes_one=True,
)
